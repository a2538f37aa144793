//! One source of truth between a lesson's stub and its solution: the stub is
//! generated from the solution's marked regions (`checker stubs --write`),
//! and `checker validate` fails when a committed stub differs from what the
//! solution generates.
//!
//! The markers are comments, so the solution's code is the code that ships:
//!
//! ```text
//! fn echo_client(stream: &mut TcpStream) -> io::Result<u64> {
//!     // BEGIN GAP echo_client
//!     …the solution's body…
//!     // END GAP
//! }
//! ```
//!
//! In the stub, a `GAP` region becomes `todo!("<name>: …")`. A region may
//! carry the stub's own text after a `// STUB` line, each line commented out
//! in the solution (`// todo!()` becomes `todo!()`); `BEGIN SOLUTION` marks a
//! region that is not a gap (a header comment, a planted bug's fix). In
//! Cargo.toml the markers start with `#`, and the package is renamed from
//! `<id>-solution` to `<id>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::course::{Course, Lesson};

/// A marked region of a solution file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The gap function's name, or `None` for a `BEGIN SOLUTION` region.
    pub gap: Option<String>,
    /// The solution file, relative to the crate, and the marker's line (1-based).
    pub file: String,
    pub line: usize,
    /// What the student does not get: the solution's lines inside the region.
    pub solution: Vec<String>,
    /// What the student gets instead, when the region says (`// STUB`).
    pub stub: Option<Vec<String>>,
}

/// A lesson's stub, as its solution generates it.
pub struct GeneratedStub {
    /// Path relative to the crate → contents.
    pub files: BTreeMap<PathBuf, String>,
    pub regions: Vec<Region>,
}

impl GeneratedStub {
    /// The code lines the student writes, per gap (see [`code_lines`]); the
    /// `BEGIN SOLUTION` regions count under `""`.
    pub fn lines_by_gap(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for region in self.regions.iter().filter(|r| r.is_code()) {
            *counts
                .entry(region.gap.clone().unwrap_or_default())
                .or_insert(0) += code_lines(&region.solution);
        }
        counts
    }

    /// The code lines the student writes in all.
    pub fn lines(&self) -> usize {
        self.lines_by_gap().values().sum()
    }

    /// The solution's code the student does not get, for the dictation lint.
    pub fn hidden_code(&self) -> String {
        self.regions
            .iter()
            .filter(|r| r.is_code())
            .flat_map(|r| r.solution.iter())
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Region {
    /// Rust code, not the manifest's description.
    pub fn is_code(&self) -> bool {
        self.file.ends_with(".rs")
    }
}

/// Generates `lesson`'s stub from its solution crate (nothing is written).
pub fn generate(course: &Course, lesson: &Lesson) -> Result<GeneratedStub> {
    let solution = course.solution_dir(lesson);
    let mut files = BTreeMap::new();
    let mut regions = Vec::new();
    for relative in crate_files(&solution)? {
        let path = solution.join(&relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let label = format!("{}/{}", lesson.solution.display(), relative.display());
        let marker = if relative.extension().is_some_and(|e| e == "toml") {
            "#"
        } else {
            "//"
        };
        let (mut stub, found) = cut(&label, &text, marker, &relative)?;
        if relative == Path::new("Cargo.toml") {
            stub = rename_package(&label, &stub, &lesson.id)?;
        } else {
            stub = rustfmt(&label, &stub)?;
        }
        regions.extend(found);
        files.insert(relative, stub);
    }
    for gap in regions.iter().filter_map(|r| r.gap.as_deref()) {
        if !lesson.gaps.iter().any(|g| gap_name(g) == gap) {
            bail!(
                "{}: a `BEGIN GAP {gap}` region, but `{gap}` is not in the lesson's `gaps:` in course.yaml",
                lesson.solution.display()
            );
        }
    }
    Ok(GeneratedStub { files, regions })
}

/// `Type::method` names its region by `method`.
fn gap_name(gap: &str) -> &str {
    gap.rsplit("::").next().unwrap_or(gap)
}

/// `checker stubs [--write] [<id>…]`: a line per lesson with its gaps' code
/// lines and its floor; with `--write` the stubs are regenerated, without
/// it a stub that differs is reported and the exit code is 1.
pub fn command(course: &Course, ids: &[String], write_them: bool) -> Result<u8> {
    for id in ids {
        course.lesson_or_suggest(id)?;
    }
    let mut differing = 0;
    println!(
        "{:<9} {:>5} {:>5}  {:<9} gaps",
        "lesson", "lines", "floor", "stub"
    );
    for lesson in course
        .lessons
        .iter()
        .filter(|l| ids.is_empty() || ids.contains(&l.id))
    {
        let generated = generate(course, lesson)?;
        let status = if write_them {
            if write(course, lesson)?.is_empty() {
                "unchanged"
            } else {
                "written"
            }
        } else if drift(course, lesson)?.is_empty() {
            "generated"
        } else {
            differing += 1;
            "DIFFERS"
        };
        let per_gap: Vec<String> = generated
            .lines_by_gap()
            .iter()
            .filter(|(gap, n)| !gap.is_empty() || **n > 0)
            .map(|(gap, n)| {
                let name = if gap.is_empty() {
                    "outside gaps"
                } else {
                    gap.as_str()
                };
                format!("{name} {n}")
            })
            .collect();
        println!(
            "{:<9} {:>5} {:>5}  {:<9} {}",
            lesson.id,
            generated.lines(),
            lesson
                .floor_lines()
                .map_or("-".to_string(), |f| f.to_string()),
            status,
            per_gap.join(", ")
        );
    }
    if differing > 0 {
        println!("{differing} stub(s) differ from their solutions: `checker stubs --write` regenerates them");
        return Ok(crate::cli::EXIT_FAIL);
    }
    Ok(crate::cli::EXIT_PASS)
}

/// Writes `lesson`'s generated stub files; returns the ones that changed.
pub fn write(course: &Course, lesson: &Lesson) -> Result<Vec<PathBuf>> {
    let generated = generate(course, lesson)?;
    let stub_dir = course.stub_dir(lesson);
    let mut changed = Vec::new();
    for (relative, text) in &generated.files {
        let path = stub_dir.join(relative);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// How the committed stub differs from the generated one (empty: it is
/// generated). Files only the stub has (its README) are the stub's own.
pub fn drift(course: &Course, lesson: &Lesson) -> Result<Vec<String>> {
    let generated = generate(course, lesson)?;
    let stub_dir = course.stub_dir(lesson);
    let mut problems = Vec::new();
    for (relative, text) in &generated.files {
        let path = stub_dir.join(relative);
        match std::fs::read_to_string(&path) {
            Ok(committed) if &committed == text => {}
            Ok(committed) => {
                let line = committed
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| committed.lines().count().min(text.lines().count()))
                    + 1;
                problems.push(format!(
                    "{}: differs from what {} generates (first at line {line}); `checker stubs --write {}` regenerates it",
                    path.display(),
                    lesson.solution.display(),
                    lesson.id
                ));
            }
            Err(_) => problems.push(format!(
                "{}: missing; `checker stubs --write {}` generates it",
                path.display(),
                lesson.id
            )),
        }
    }
    for relative in crate_files(&stub_dir)? {
        if !generated.files.contains_key(&relative) {
            problems.push(format!(
                "{}: the solution has no such file, so no stub can be generated for it",
                stub_dir.join(&relative).display()
            ));
        }
    }
    Ok(problems)
}

/// The files a crate is made of: Cargo.toml and every file under src/.
fn crate_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("Cargo.toml")];
    let mut pending = vec![dir.join("src")];
    while let Some(next) = pending.pop() {
        let entries =
            std::fs::read_dir(&next).with_context(|| format!("listing {}", next.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                files.push(relative.to_path_buf());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Marker lines, as written after the comment leader (`//` or `#`).
enum Marker<'a> {
    BeginGap(&'a str),
    BeginSolution,
    Stub,
    EndGap,
    EndSolution,
}

fn marker<'a>(line: &'a str, leader: &str) -> Option<Marker<'a>> {
    let rest = line.trim().strip_prefix(leader)?.trim();
    Some(match rest {
        "BEGIN SOLUTION" => Marker::BeginSolution,
        "STUB" => Marker::Stub,
        "END GAP" => Marker::EndGap,
        "END SOLUTION" => Marker::EndSolution,
        _ => Marker::BeginGap(rest.strip_prefix("BEGIN GAP ")?.trim()),
    })
}

/// Cuts one solution file into its stub text and its regions. Errors name
/// the file and line.
fn cut(label: &str, text: &str, leader: &str, relative: &Path) -> Result<(String, Vec<Region>)> {
    struct Open {
        region: Region,
        indent: String,
        in_stub: bool,
    }
    let mut out = String::new();
    let mut regions = Vec::new();
    let mut open: Option<Open> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let at = || format!("{label}:{number}");
        match (marker(line, leader), open.as_mut()) {
            (Some(Marker::BeginGap(_) | Marker::BeginSolution), Some(_)) => {
                bail!(
                    "{}: a region begins inside another (regions do not nest)",
                    at()
                )
            }
            (Some(begin @ (Marker::BeginGap(_) | Marker::BeginSolution)), None) => {
                let gap = match begin {
                    Marker::BeginGap(name) if is_identifier(name) => Some(name.to_string()),
                    Marker::BeginGap(name) => {
                        bail!(
                            "{}: `BEGIN GAP {name}`: a gap is named by its function",
                            at()
                        )
                    }
                    _ => None,
                };
                let indent = line[..line.len() - line.trim_start().len()].to_string();
                open = Some(Open {
                    region: Region {
                        gap,
                        file: relative.display().to_string(),
                        line: number,
                        solution: Vec::new(),
                        stub: None,
                    },
                    indent,
                    in_stub: false,
                });
            }
            (Some(Marker::Stub), Some(o)) if !o.in_stub => {
                o.in_stub = true;
                o.region.stub = Some(Vec::new());
            }
            (Some(Marker::Stub), _) => {
                bail!("{}: `STUB` outside a region, or twice in one", at())
            }
            (Some(end @ (Marker::EndGap | Marker::EndSolution)), Some(o)) => {
                let closes_gap = matches!(end, Marker::EndGap);
                if closes_gap != o.region.gap.is_some() {
                    bail!(
                        "{}: this END does not match the BEGIN at line {}",
                        at(),
                        o.region.line
                    );
                }
                let Open { region, indent, .. } = open.take().expect("matched Some");
                match (&region.stub, &region.gap) {
                    (Some(lines), _) => {
                        for l in lines {
                            out.push_str(l);
                            out.push('\n');
                        }
                    }
                    (None, Some(name)) => out.push_str(&format!(
                        "{indent}todo!(\"gap `{name}`: write it to the contract in its doc comment\")\n"
                    )),
                    (None, None) => {}
                }
                regions.push(region);
            }
            (Some(Marker::EndGap | Marker::EndSolution), None) => {
                bail!("{}: END without a BEGIN", at())
            }
            (None, Some(o)) if o.in_stub => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let Some(rest) = line.trim_start().strip_prefix(leader) else {
                    bail!(
                        "{}: after `STUB`, every line is the stub's text commented out with `{leader} `",
                        at()
                    );
                };
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                o.region
                    .stub
                    .as_mut()
                    .expect("in_stub")
                    .push(if rest.is_empty() {
                        String::new()
                    } else {
                        format!("{indent}{rest}")
                    });
            }
            (None, Some(o)) => o.region.solution.push(line.to_string()),
            (None, None) => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(o) = open {
        bail!(
            "{label}:{}: this region is never closed with END",
            o.region.line
        );
    }
    Ok((out, regions))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The stub's package is `<id>`, the solution's `<id>-solution`.
fn rename_package(label: &str, manifest: &str, id: &str) -> Result<String> {
    let solution_name = format!("name = \"{id}-solution\"");
    if !manifest.lines().any(|l| l.trim() == solution_name) {
        bail!("{label}: expected the line `{solution_name}`");
    }
    Ok(manifest
        .lines()
        .map(|l| {
            if l.trim() == solution_name {
                format!("name = \"{id}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// The stub is formatted as `cargo fmt` would, so `cargo fmt --check` and
/// the generated text agree.
fn rustfmt(label: &str, text: &str) -> Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running rustfmt (install it with `rustup component add rustfmt`)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .context("writing to rustfmt")?;
    let output = child.wait_with_output().context("waiting for rustfmt")?;
    if !output.status.success() {
        bail!(
            "{label}: the generated stub does not parse: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("rustfmt printed non-UTF-8")
}

/// The code lines among `lines`: not blank, not a comment, not punctuation
/// alone (`}`, `});`), and not part of a statement that only logs
/// (`eprintln!`, `println!`).
pub fn code_lines(lines: &[String]) -> usize {
    let mut count = 0;
    let mut in_log = false;
    for line in lines {
        let trimmed = line.trim();
        if in_log {
            in_log = !ends_statement(trimmed);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        if !trimmed.chars().any(|c| c.is_alphanumeric()) {
            continue;
        }
        if trimmed.starts_with("eprintln!") || trimmed.starts_with("println!") {
            in_log = !ends_statement(trimmed);
            continue;
        }
        count += 1;
    }
    count
}

/// A logging statement ends at `;` (or `,` as a match arm's value).
fn ends_statement(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or(line).trim_end();
    code.ends_with(';') || code.ends_with("),") || code.ends_with('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub_of(text: &str) -> Result<(String, Vec<Region>)> {
        cut("sol/src/main.rs", text, "//", Path::new("src/main.rs"))
    }

    #[test]
    fn a_gap_becomes_a_todo_naming_it() {
        let (stub, regions) = stub_of(
            "fn echo() {\n    // BEGIN GAP echo\n    let a = 1;\n    // note\n    eprintln!(\n        \"x\"\n    );\n    }\n    // END GAP\n}\n",
        )
        .unwrap();
        assert_eq!(
            stub,
            "fn echo() {\n    todo!(\"gap `echo`: write it to the contract in its doc comment\")\n}\n"
        );
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].gap.as_deref(), Some("echo"));
        assert_eq!(code_lines(&regions[0].solution), 1);
    }

    #[test]
    fn stub_text_is_uncommented_at_its_own_indent() {
        let (stub, regions) = stub_of(
            "a\n// BEGIN SOLUTION\nfixed();\n// STUB\n//     planted();\n//\n// // TODO: find it\n// END SOLUTION\nb\n",
        )
        .unwrap();
        assert_eq!(stub, "a\n    planted();\n\n// TODO: find it\nb\n");
        assert_eq!(regions[0].gap, None);
        assert_eq!(regions[0].solution, vec!["fixed();".to_string()]);
    }

    #[test]
    fn malformed_regions_name_the_line() {
        let cases = [
            (
                "// BEGIN SOLUTION\n// BEGIN GAP echo\n",
                ":2: a region begins inside",
            ),
            ("x\n// END GAP\n", ":2: END without a BEGIN"),
            (
                "// BEGIN GAP echo\n// END SOLUTION\n",
                ":2: this END does not match",
            ),
            (
                "\n// BEGIN GAP echo\nx\n",
                ":2: this region is never closed",
            ),
            (
                "// BEGIN SOLUTION\n// STUB\nplain\n// END SOLUTION\n",
                ":3: after `STUB`",
            ),
            (
                "// BEGIN GAP two words\n// END GAP\n",
                ":1: `BEGIN GAP two words`",
            ),
        ];
        for (text, expected) in cases {
            let error = stub_of(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn code_lines_skip_comments_blanks_punctuation_and_logs() {
        let lines: Vec<String> = [
            "",
            "// why",
            "let n = 1;",
            "});",
            "}",
            "eprintln!(\"{peer}: closed\");",
            "Err(e) => eprintln!(\"x\"),",
            "println!(",
            "    \"a {}\",",
            "    b",
            ");",
            "return Ok(n);",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `Err(e) => eprintln!` is a match arm: the pattern is code.
        assert_eq!(code_lines(&lines), 3);
    }

    #[test]
    fn the_package_is_renamed() {
        let manifest = "[package]\nname = \"w09-l99-solution\"\nversion = \"0.1.0\"\n";
        assert_eq!(
            rename_package("Cargo.toml", manifest, "w09-l99").unwrap(),
            "[package]\nname = \"w09-l99\"\nversion = \"0.1.0\"\n"
        );
        assert!(rename_package("Cargo.toml", "[package]\n", "w09-l99").is_err());
    }
}
