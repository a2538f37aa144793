//! cargo-mutants, used only to generate mutants: the pinned version
//! (installed when missing), `--list --json --diff` on a copy of a
//! solution, the filter to a lesson's gap functions, applying one mutant's
//! diff to the copy, and the functions that differ between stub and
//! solution (the `gaps:` lists of course.yaml were written from those).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::process::{run_bounded, Ended};

/// The cargo-mutants every committed result was generated with (part of
/// the results' key). `checker mutants` installs it when cargo has no
/// `mutants` subcommand, and refuses another version.
pub const CARGO_MUTANTS_VERSION: &str = "27.1.0";
/// `cargo install` compiles cargo-mutants from source: minutes, not hours.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// Listing parses the sources, it runs nothing.
const LIST_TIMEOUT: Duration = Duration::from_secs(120);

/// One mutant as `cargo mutants --list --json --diff` describes it (fields
/// this module does not read are ignored, so newer listings still load).
#[derive(Debug, Clone, Deserialize)]
pub struct ListedMutant {
    pub name: String,
    pub file: String,
    pub function: Option<ListedFunction>,
    pub genre: String,
    #[serde(default)]
    pub diff: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedFunction {
    pub function_name: String,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Span {
    pub start: LineCol,
    pub end: LineCol,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The installed cargo-mutants' version, `None` when cargo has no `mutants`.
fn installed_version() -> Option<String> {
    let mut command = Command::new(cargo());
    command.args(["mutants", "--version"]);
    let run = run_bounded(&mut command, Duration::from_secs(60)).ok()?;
    if !matches!(run.ended, Ended::Exited(0)) {
        return None;
    }
    run.stdout
        .split_whitespace()
        .nth(1)
        .map(|version| version.trim().to_string())
}

/// The pinned cargo-mutants is there, or is installed now.
pub fn ensure_installed() -> Result<()> {
    match installed_version() {
        Some(version) if version == CARGO_MUTANTS_VERSION => Ok(()),
        Some(version) => bail!(
            "cargo-mutants {version} is installed but the committed results are keyed to {CARGO_MUTANTS_VERSION}: \
             cargo install cargo-mutants --version {CARGO_MUTANTS_VERSION} --locked --force"
        ),
        None => {
            println!(
                "cargo-mutants is missing: cargo install cargo-mutants --version {CARGO_MUTANTS_VERSION} --locked"
            );
            let mut command = Command::new(cargo());
            command.args([
                "install",
                "cargo-mutants",
                "--version",
                CARGO_MUTANTS_VERSION,
                "--locked",
            ]);
            let run = run_bounded(&mut command, INSTALL_TIMEOUT)?;
            if !matches!(run.ended, Ended::Exited(0)) {
                bail!(
                    "cargo install cargo-mutants failed ({}):\n{}",
                    run.ended,
                    tail(&run.stderr, 20)
                );
            }
            match installed_version() {
                Some(version) if version == CARGO_MUTANTS_VERSION => Ok(()),
                other => bail!(
                    "after cargo install, `cargo mutants --version` says {other:?}, not {CARGO_MUTANTS_VERSION}"
                ),
            }
        }
    }
}

/// Every mutant cargo-mutants generates for the crate at `dir`, with
/// `config` (the course's mutants.toml: error values) and the diffs.
pub fn list(dir: &Path, config: &Path) -> Result<Vec<ListedMutant>> {
    let mut command = Command::new(cargo());
    command
        .args(["mutants", "--list", "--json", "--diff", "--config"])
        .arg(config)
        .arg("--dir")
        .arg(dir)
        .current_dir(dir);
    let run = run_bounded(&mut command, LIST_TIMEOUT)?;
    if !matches!(run.ended, Ended::Exited(0)) {
        bail!(
            "cargo mutants --list in {} failed ({}):\n{}",
            dir.display(),
            run.ended,
            tail(&run.stderr, 20)
        );
    }
    serde_json::from_str(&run.stdout).with_context(|| {
        format!(
            "reading the mutants cargo-mutants listed for {}",
            dir.display()
        )
    })
}

/// Whether `gap` (as course.yaml writes it: `fn_name` or `Type::method`)
/// names the function cargo-mutants calls `function_name`. Trait methods,
/// which cargo-mutants names `<impl Trait for Type>::method`, are matched
/// by `Type::method` too.
pub fn gap_matches(gap: &str, function_name: &str) -> bool {
    if gap == function_name {
        return true;
    }
    let Some(rest) = function_name.strip_prefix("<impl ") else {
        return false;
    };
    let Some((impl_of, method)) = rest.rsplit_once(">::") else {
        return false;
    };
    let self_type = impl_of.rsplit(" for ").next().unwrap_or(impl_of).trim();
    let self_type = self_type.split('<').next().unwrap_or(self_type);
    gap == format!("{self_type}::{method}")
}

/// The mutants whose function is one of `gaps`; the rest are out of scope.
pub fn in_gaps<'a>(
    gaps: &[String],
    mutants: &'a [ListedMutant],
) -> (Vec<&'a ListedMutant>, Vec<&'a ListedMutant>) {
    mutants.iter().partition(|mutant| {
        mutant
            .function
            .as_ref()
            .is_some_and(|f| gaps.iter().any(|gap| gap_matches(gap, &f.function_name)))
    })
}

/// The mutants that change a line the stub does not have (a marked
/// region's solution lines); the rest are out of scope.
pub fn in_regions<'a>(
    regions: &[crate::stubs::Region],
    mutants: &'a [ListedMutant],
) -> (Vec<&'a ListedMutant>, Vec<&'a ListedMutant>) {
    mutants.iter().partition(|mutant| {
        let line = mutant_line(&mutant.name);
        regions.iter().any(|r| {
            r.file == mutant.file
                && line.is_some_and(|l| l > r.line && l <= r.line + r.solution.len())
        })
    })
}

/// The line a mutant's name starts with (`src/main.rs:160:9: replace …`).
fn mutant_line(name: &str) -> Option<usize> {
    name.split(':').nth(1)?.parse().ok()
}

/// Gaps no listed mutant belongs to: a typo (no such function in the
/// crate's sources) is an error; a function cargo-mutants makes no mutant
/// of (`new`, an empty body) is a note.
pub fn unmatched_gaps(
    gaps: &[String],
    mutants: &[ListedMutant],
    sources: &str,
) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut without_mutants = Vec::new();
    for gap in gaps {
        let matched = mutants.iter().any(|m| {
            m.function
                .as_ref()
                .is_some_and(|f| gap_matches(gap, &f.function_name))
        });
        if matched {
            continue;
        }
        let last = gap.rsplit("::").next().unwrap_or(gap);
        let defined = regex::Regex::new(&format!(r"\bfn\s+{}\b", regex::escape(last)))
            .map(|re| re.is_match(sources))
            .unwrap_or(false);
        if defined {
            without_mutants.push(gap.clone());
        } else {
            missing.push(gap.clone());
        }
    }
    (missing, without_mutants)
}

/// `original` with one mutant's unified diff applied. Every context and
/// removed line must match, or the diff is refused (the copy is not the
/// tree cargo-mutants listed).
pub fn apply_diff(original: &str, diff: &str) -> Result<String> {
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    let mut out: Vec<String> = Vec::new();
    let mut next = 0; // index into `lines` of the first line not yet copied
    let mut hunks = 0;
    let mut diff_lines = diff.lines().peekable();
    while let Some(line) = diff_lines.next() {
        let Some(header) = line.strip_prefix("@@ -") else {
            continue;
        };
        hunks += 1;
        let old_start: usize = header
            .split([',', ' '])
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("a hunk header cargo-mutants wrote: `{line}`"))?;
        let mut old: Vec<&str> = Vec::new();
        let mut new: Vec<&str> = Vec::new();
        while let Some(body) = diff_lines.peek() {
            if body.starts_with("@@ ") {
                break;
            }
            let body = diff_lines.next().unwrap_or_default();
            if let Some(text) = body.strip_prefix(' ') {
                old.push(text);
                new.push(text);
            } else if let Some(text) = body.strip_prefix('-') {
                old.push(text);
            } else if let Some(text) = body.strip_prefix('+') {
                new.push(text);
            } else if body.is_empty() {
                // An empty context line whose leading space was trimmed.
                old.push("");
                new.push("");
            }
            // `\ No newline at end of file` and the like carry no line.
        }
        // `-N,0` (nothing removed) means after line N; else from line N.
        let from = if old.is_empty() {
            old_start
        } else {
            old_start.saturating_sub(1)
        };
        if from < next {
            bail!("the diff's hunks at line {old_start} overlap or are out of order");
        }
        if from + old.len() > lines.len() {
            bail!("the diff's hunk at line {old_start} runs past the end of the file");
        }
        for (offset, expected) in old.iter().enumerate() {
            let actual = lines[from + offset].trim_end_matches('\n');
            let actual = actual.strip_suffix('\r').unwrap_or(actual);
            if actual != *expected {
                bail!(
                    "the diff does not apply at line {}: the file has `{actual}`, the diff expects `{expected}`",
                    from + offset + 1
                );
            }
        }
        out.extend(lines[next..from].iter().map(|l| l.to_string()));
        out.extend(new.iter().map(|l| format!("{l}\n")));
        next = from + old.len();
    }
    if hunks == 0 {
        bail!("the mutant's diff has no hunk");
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    let mut text = out.concat();
    if !original.ends_with('\n') && next >= lines.len() && text.ends_with('\n') {
        text.pop();
    }
    if text == original {
        bail!("the mutant's diff changes nothing");
    }
    Ok(text)
}

/// What differs between a stub and its solution, per function.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    /// Functions (cargo-mutants' names) with a changed line, in source order.
    pub functions: Vec<String>,
    /// Changed lines of the solution inside no function cargo-mutants
    /// lists (constants, types, `new`, code without mutants), as
    /// `file:first-last`.
    pub outside: Vec<String>,
}

/// The functions of the solution whose lines differ from the stub's.
/// `files` holds (path, stub text or None when the stub lacks the file,
/// solution text); `listed` is cargo-mutants' listing of the solution,
/// whose function spans say which lines belong to which function.
pub fn differing_functions(
    files: &[(String, Option<String>, String)],
    listed: &[ListedMutant],
) -> Differences {
    let mut result = Differences::default();
    let mut seen = BTreeSet::new();
    for (path, stub, solution) in files {
        let mut spans: Vec<(&str, Span)> = listed
            .iter()
            .filter(|m| &m.file == path)
            .filter_map(|m| m.function.as_ref())
            .map(|f| (f.function_name.as_str(), f.span))
            .collect();
        spans.sort_by_key(|(_, span)| (span.start.line, span.end.line));
        spans.dedup();
        let changed = changed_solution_lines(stub.as_deref().unwrap_or(""), solution);
        let mut outside: Vec<usize> = Vec::new();
        let mut in_file: Vec<(usize, &str)> = Vec::new();
        for line in changed {
            // The innermost function holding the line.
            let holder = spans
                .iter()
                .filter(|(_, s)| s.start.line <= line && line <= s.end.line)
                .min_by_key(|(_, s)| s.end.line - s.start.line);
            match holder {
                Some((name, span)) => {
                    if seen.insert(name.to_string()) {
                        in_file.push((span.start.line, name));
                    }
                }
                None => outside.push(line),
            }
        }
        in_file.sort();
        result
            .functions
            .extend(in_file.into_iter().map(|(_, n)| n.to_string()));
        result
            .outside
            .extend(line_ranges(&outside).into_iter().map(|(a, b)| {
                if a == b {
                    format!("{path}:{a}")
                } else {
                    format!("{path}:{a}-{b}")
                }
            }));
    }
    result
}

/// The solution's lines (numbered from 1) that are not the stub's: those
/// inserted or replaced, and for a deletion the lines on both sides of it.
fn changed_solution_lines(stub: &str, solution: &str) -> Vec<usize> {
    use similar::DiffTag;
    let diff = similar::TextDiff::from_lines(stub, solution);
    let mut lines = BTreeSet::new();
    for op in diff.ops() {
        let (tag, _old, new) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => {}
            DiffTag::Insert | DiffTag::Replace => lines.extend(new.start + 1..=new.end),
            DiffTag::Delete => {
                if new.start > 0 {
                    lines.insert(new.start);
                }
                lines.insert(new.start + 1);
            }
        }
    }
    let count = solution.lines().count();
    lines.into_iter().filter(|&l| l <= count).collect()
}

fn line_ranges(lines: &[usize]) -> Vec<(usize, usize)> {
    let mut sorted = lines.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for line in sorted {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == line => *end = line,
            _ => ranges.push((line, line)),
        }
    }
    ranges
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutant(name: &str, function: Option<&str>) -> ListedMutant {
        ListedMutant {
            name: name.into(),
            file: "src/main.rs".into(),
            function: function.map(|f| ListedFunction {
                function_name: f.into(),
                span: Span {
                    start: LineCol { line: 1, column: 1 },
                    end: LineCol { line: 2, column: 1 },
                },
            }),
            genre: "FnValue".into(),
            diff: String::new(),
        }
    }

    #[test]
    fn the_region_filter_keeps_the_mutants_of_the_regions_solution_lines() {
        let region = crate::stubs::Region {
            gap: None,
            file: "src/main.rs".into(),
            line: 10, // the BEGIN marker; the solution's lines are 11 and 12
            solution: vec!["a".into(), "b".into()],
            stub: Some(vec!["c".into()]),
        };
        let listed = vec![
            mutant("src/main.rs:10:5: replace x", None),
            mutant("src/main.rs:11:5: replace x", None),
            mutant("src/main.rs:12:9: replace x", None),
            mutant("src/main.rs:13:5: replace x", None),
        ];
        let (inside, outside) = in_regions(&[region], &listed);
        let names =
            |v: &[&ListedMutant]| v.iter().map(|m| mutant_line(&m.name)).collect::<Vec<_>>();
        assert_eq!(names(&inside), vec![Some(11), Some(12)]);
        assert_eq!(names(&outside), vec![Some(10), Some(13)]);
    }

    #[test]
    fn the_gap_filter_keeps_only_the_named_functions_and_methods() {
        let listed = vec![
            mutant("a", Some("echo_client")),
            mutant("b", Some("accept_loop")),
            mutant("c", Some("Conn::next_frame")),
            mutant("d", Some("Conn::serve")),
            mutant("e", None), // a constant
            mutant("f", Some("<impl Display for Conn>::fmt")),
            mutant("g", Some("main")),
        ];
        let gaps: Vec<String> = ["echo_client", "Conn::next_frame", "Conn::fmt"]
            .map(String::from)
            .to_vec();
        let (kept, out) = in_gaps(&gaps, &listed);
        let kept: Vec<&str> = kept.iter().map(|m| m.name.as_str()).collect();
        let out: Vec<&str> = out.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(kept, ["a", "c", "f"]);
        assert_eq!(out, ["b", "d", "e", "g"]);
        // A method's bare name is not the method.
        assert!(!gap_matches("next_frame", "Conn::next_frame"));
        assert!(gap_matches("Pool::get", "<impl Source for Pool<T>>::get"));
    }

    #[test]
    fn a_gap_naming_no_function_is_told_apart_from_one_without_mutants() {
        let listed = vec![mutant("a", Some("echo_client"))];
        let gaps: Vec<String> = ["echo_client", "Conn::new", "ech_client"]
            .map(String::from)
            .to_vec();
        let sources = "fn echo_client() {}\nimpl Conn { fn new() -> Self { Conn } }\n";
        let (missing, quiet) = unmatched_gaps(&gaps, &listed, sources);
        assert_eq!(missing, ["ech_client"]);
        assert_eq!(quiet, ["Conn::new"]);
    }

    #[test]
    fn a_mutants_diff_applies_and_a_stale_one_is_refused() {
        let original = "fn f() -> u32 {\n    let x = 2;\n    x * 3\n}\n";
        let diff = "--- src/main.rs\n+++ replace * with +\n@@ -1,4 +1,4 @@\n fn f() -> u32 {\n     let x = 2;\n-    x * 3\n+    x + /* ~ changed by cargo-mutants ~ */ 3\n }\n";
        let mutated = apply_diff(original, diff).unwrap();
        assert_eq!(
            mutated,
            "fn f() -> u32 {\n    let x = 2;\n    x + /* ~ changed by cargo-mutants ~ */ 3\n}\n"
        );
        let stale = original.replace("let x = 2", "let x = 5");
        let err = apply_diff(&stale, diff).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(apply_diff(original, "no hunks here").is_err());
    }

    #[test]
    fn changed_lines_map_to_the_innermost_function() {
        let stub = "const A: u32 = 1;\nfn a() {\n    todo!()\n}\nfn b() {\n    same();\n}\n";
        let solution =
            "const A: u32 = 2;\nfn a() {\n    work();\n    more();\n}\nfn b() {\n    same();\n}\n";
        let span = |a, b| Span {
            start: LineCol { line: a, column: 1 },
            end: LineCol { line: b, column: 1 },
        };
        let mut listed = vec![mutant("1", Some("a")), mutant("2", Some("b"))];
        listed[0].function.as_mut().unwrap().span = span(2, 5);
        listed[1].function.as_mut().unwrap().span = span(6, 8);
        let files = vec![(
            "src/main.rs".to_string(),
            Some(stub.into()),
            solution.into(),
        )];
        let found = differing_functions(&files, &listed);
        assert_eq!(found.functions, ["a"]);
        assert_eq!(found.outside, ["src/main.rs:1"]);
    }
}
