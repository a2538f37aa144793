//! The course's content, checked without running anything: each lesson's
//! README has its five sections and the hints course.yaml has; each stub
//! has its `// TODO:`; a gaps-style stub is its solution with gaps, nothing
//! else (one source of truth: the two cannot drift apart).

use std::path::Path;

use crate::course::{Course, Lesson, StubStyle};

/// The sections every lesson README has, in this order.
pub const README_SECTIONS: [&str; 6] = [
    "Concept",
    "Task",
    "Pitfalls",
    "Hints",
    "Verify",
    "Done When",
];

/// A lesson's README sections: `Pitfalls` comes with the rewrite (a lesson
/// still `rewrite_pending` and without pitfalls has none yet).
pub fn readme_sections(lesson: &Lesson) -> Vec<&'static str> {
    README_SECTIONS
        .iter()
        .copied()
        .filter(|s| *s != "Pitfalls" || has_pitfalls_section(lesson))
        .collect()
}

fn has_pitfalls_section(lesson: &Lesson) -> bool {
    lesson.rewrite_pending.is_none() || !lesson.pitfalls.is_empty()
}

/// Every problem found in one lesson's content (empty: sound).
pub fn lesson_problems(course: &Course, lesson: &Lesson) -> Vec<String> {
    let mut problems = Vec::new();
    readme_problems(course, lesson, &mut problems);
    let stub = course.stub_dir(lesson);
    let solution = course.solution_dir(lesson);
    package_name_problems(&stub, &lesson.id, &mut problems);
    package_name_problems(&solution, &format!("{}-solution", lesson.id), &mut problems);
    let stub_files = rust_files(&stub.join("src"));
    if !stub_files
        .iter()
        .any(|(_, text)| text.contains("// TODO") || text.contains("todo!("))
    {
        problems.push(format!(
            "{}: no `todo!(` or `// TODO` in src/: a stub tells the student where to start",
            stub.display()
        ));
    }
    match crate::stubs::drift(course, lesson) {
        Ok(drift) => problems.extend(drift),
        Err(e) => problems.push(format!("{e:#}")),
    }
    if lesson.stub_style == StubStyle::Gaps {
        stub_text_problems(course, lesson, &mut problems);
    }
    problems
}

/// What the rewrite of the lessons (issues 14 and 15) holds every lesson to:
/// its gaps hold at least its floor of code lines, and no text a student
/// reads before writing them dictates their code. A lesson still marked
/// `rewrite_pending` shows these as warnings.
pub fn rewrite_findings(course: &Course, lesson: &Lesson) -> Vec<String> {
    let Ok(generated) = crate::stubs::generate(course, lesson) else {
        return Vec::new(); // lesson_problems reports why
    };
    let mut findings = Vec::new();
    if let Some(floor) = lesson.floor_lines() {
        if generated.lines() < floor {
            findings.push(format!(
                "its gaps hold {} code lines, under its floor of {floor} (`checker stubs {}` counts them)",
                generated.lines(),
                lesson.id
            ));
        }
    }
    for gap in &lesson.gaps {
        if !lesson.pitfalls.iter().any(|p| &p.gap == gap) {
            findings.push(format!(
                "`{gap}` has no pitfall: name the mistake a student makes in it, and the fixture that shows the checker failing it"
            ));
        }
        let name = gap.rsplit("::").next().unwrap_or(gap);
        if !generated
            .regions
            .iter()
            .any(|r| r.gap.as_deref() == Some(name))
        {
            findings.push(format!(
                "`{gap}` is in `gaps:` but the solution has no `BEGIN GAP {name}` region"
            ));
        }
    }
    let readme = std::fs::read_to_string(course.readme_path(lesson)).unwrap_or_default();
    let task = section(&readme, "Task");
    for gap in &lesson.gaps {
        let name = gap.rsplit("::").next().unwrap_or(gap);
        if !task.contains(&format!("`{name}`")) && !task.contains(&format!("`{gap}`")) {
            findings.push(format!(
                "the README's Task does not name `{name}`: it names each function the student writes, with its contract"
            ));
        }
    }
    let stub_text: Vec<(String, String)> = generated
        .files
        .iter()
        .filter(|(path, _)| path.extension().is_some_and(|e| e == "rs"))
        .map(|(path, text)| {
            (
                format!("{}/{}", lesson.stub.display(), path.display()),
                crate::dictation::code_prose(text),
            )
        })
        .collect();
    let readme_label = format!("{}/README.md", lesson.stub.display());
    let sections: Vec<(String, String)> = ["Concept", "Task", "Pitfalls"]
        .iter()
        .map(|name| (format!("{readme_label}, {name}"), section(&readme, name)))
        .collect();
    let hints = lesson.hints.len().saturating_sub(1);
    let mut prose: Vec<crate::dictation::Prose> = stub_text
        .iter()
        .chain(&sections)
        .map(|(place, text)| crate::dictation::Prose {
            place: place.clone(),
            text,
        })
        .collect();
    prose.extend(lesson.hints[..hints].iter().enumerate().map(|(i, text)| {
        crate::dictation::Prose {
            place: format!("course.yaml, hint {}", i + 1),
            text,
        }
    }));
    findings.extend(crate::dictation::findings(&generated.hidden_code(), &prose));
    findings
}

/// A README section's text, without its heading (empty when absent).
fn section(readme: &str, name: &str) -> String {
    let heading = format!("## {name}");
    readme
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn readme_problems(course: &Course, lesson: &Lesson, problems: &mut Vec<String>) {
    let path = course.readme_path(lesson);
    let Ok(text) = std::fs::read_to_string(&path) else {
        problems.push(format!("{}: cannot be read", path.display()));
        return;
    };
    let title = format!("# {}", lesson.title);
    if text.lines().find(|l| l.starts_with("# ")) != Some(title.as_str()) {
        problems.push(format!(
            "{}: the first heading must be `{title}` (the title in course.yaml)",
            path.display()
        ));
    }
    let sections: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    let expected = readme_sections(lesson);
    if sections != expected {
        problems.push(format!(
            "{}: sections are [{}]; they must be exactly [{}]",
            path.display(),
            sections.join(", "),
            expected.join(", ")
        ));
    }
    if has_pitfalls_section(lesson)
        && section(&text, "Pitfalls").trim() != crate::pitfalls::readme_section(lesson).trim()
    {
        problems.push(format!(
            "{}: the `## Pitfalls` section differs from course.yaml's `pitfalls:` for {} (rewrite it with `checker readmes`)",
            path.display(),
            lesson.id
        ));
    }
    match checker_runs_block(&text) {
        None => problems.push(format!(
            "{}: the `## Verify` section lacks the generated list of what the checker runs (write it with `checker readmes`)",
            path.display()
        )),
        Some(block) if block != what_the_checker_runs(lesson) => problems.push(format!(
            "{}: the list of what the checker runs differs from course.yaml's steps for {} (rewrite it with `checker readmes`)",
            path.display(),
            lesson.id
        )),
        Some(_) => {}
    }
    if section(&text, "Hints").trim() != hints_section(lesson).trim() {
        problems.push(format!(
            "{}: the `## Hints` section differs from course.yaml's hints for {} (rewrite it with `checker readmes`)",
            path.display(),
            lesson.id
        ));
    }
}

/// The README's `## Hints` body: each hint folded, so a student opens them
/// one at a time, as `checker hint` gives them.
pub fn hints_section(lesson: &Lesson) -> String {
    let mut text = format!(
        "<!-- generated from course.yaml's `hints:` by `checker readmes`: change them there, not here -->\n\nTry without them first. `checker hint {}` shows the next one; each below opens on a click.\n",
        lesson.id
    );
    for (i, hint) in lesson.hints.iter().enumerate() {
        text.push_str(&format!(
            "\n<details><summary>Hint {} of {}</summary>\n\n{hint}\n\n</details>\n",
            i + 1,
            lesson.hints.len()
        ));
    }
    text
}

/// `readme` with its `## Pitfalls` section rendered from course.yaml,
/// added before `## Hints` when it has none.
fn with_pitfalls_section(
    path: &std::path::Path,
    readme: &str,
    lesson: &Lesson,
) -> anyhow::Result<String> {
    with_section(
        path,
        readme,
        "Pitfalls",
        &crate::pitfalls::readme_section(lesson),
        "Hints",
    )
}

/// `readme` with section `name`'s body replaced by `body`; a missing
/// section is added before the section `before`.
fn with_section(
    path: &std::path::Path,
    readme: &str,
    name: &str,
    body: &str,
    before: &str,
) -> anyhow::Result<String> {
    let lines: Vec<&str> = readme.lines().collect();
    let heading = |name: &str| lines.iter().position(|l| l.trim() == format!("## {name}"));
    let (start, end) = match heading(name) {
        Some(at) => {
            let end = lines[at + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map_or(lines.len(), |n| at + 1 + n);
            (at, end)
        }
        None => {
            let Some(at) = heading(before) else {
                anyhow::bail!(
                    "{}: no `## {before}` section to put `## {name}` before",
                    path.display()
                );
            };
            (at, at)
        }
    };
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.push(format!("## {name}"));
    out.push(String::new());
    out.extend(body.lines().map(str::to_string));
    out.push(String::new());
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// Where the generated list of steps begins and ends in a README.
const RUNS_BEGIN: &str =
    "<!-- generated from course.yaml by `checker readmes`: change the steps there, not here -->";
const RUNS_END: &str = "<!-- end of the generated list -->";

/// "What the checker runs": the lesson's verify steps, each as its one-line
/// summary, so the README says what is checked and nothing else.
pub fn what_the_checker_runs(lesson: &Lesson) -> String {
    let mut text = format!("### What the checker runs\n\n{RUNS_BEGIN}\n");
    for (i, step) in lesson.verify.iter().enumerate() {
        text.push_str(&format!(
            "{}. `{}`: {}\n",
            i + 1,
            step.name(),
            step.summary()
        ));
    }
    text.push_str("\nThe steps run in this order; the first that fails ends the run, and its failure quotes what was sent, what came back, the likely cause and the hints that apply.\n");
    text.push_str(RUNS_END);
    text
}

/// The generated block of a README, from its heading to its end marker.
fn checker_runs_block(readme: &str) -> Option<&str> {
    let start = readme.find("### What the checker runs")?;
    let end = readme[start..].find(RUNS_END)? + start + RUNS_END.len();
    Some(&readme[start..end])
}

/// Writes (or rewrites) the generated block at the end of each README's
/// `## Verify` section. Returns the READMEs it changed.
pub fn write_checker_runs(course: &Course) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut changed = Vec::new();
    for lesson in &course.lessons {
        let path = course.readme_path(lesson);
        let original = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let text = if has_pitfalls_section(lesson) {
            with_pitfalls_section(&path, &original, lesson)?
        } else {
            original.clone()
        };
        let text = with_section(&path, &text, "Hints", &hints_section(lesson), "Verify")?;
        let block = what_the_checker_runs(lesson);
        let updated = match checker_runs_block(&text) {
            Some(old) => text.replacen(old, &block, 1),
            None => {
                let Some(at) = text.find("\n## Done When") else {
                    anyhow::bail!(
                        "{}: no `## Done When` section to put the list before",
                        path.display()
                    );
                };
                format!(
                    "{}\n{block}\n{}",
                    text[..at].trim_end_matches('\n').to_string() + "\n",
                    &text[at..]
                )
            }
        };
        if updated != original {
            std::fs::write(&path, &updated)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            changed.push(path);
        }
    }
    Ok(changed)
}

fn package_name_problems(crate_dir: &Path, expected: &str, problems: &mut Vec<String>) {
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("name"))
        .and_then(|rest| rest.split('"').nth(1));
    if name != Some(expected) {
        problems.push(format!(
            "{}: package name must be `{expected}`",
            manifest.display()
        ));
    }
    if text.contains("workspace = true") {
        problems.push(format!(
            "{}: no `workspace = true` inheritance: a lesson crate must build when copied out",
            manifest.display()
        ));
    }
}

/// A gaps-style stub gives the student the solution minus its gaps: a
/// region's stub text holds only comments, blank lines and `todo!()`.
fn stub_text_problems(course: &Course, lesson: &Lesson, problems: &mut Vec<String>) {
    let Ok(generated) = crate::stubs::generate(course, lesson) else {
        return;
    };
    for region in generated.regions.iter().filter(|r| r.is_code()) {
        let code = region.stub.iter().flatten().map(|l| l.trim()).find(|l| {
            !(l.is_empty() || l.starts_with("//") || l.contains("todo!(") || l.starts_with('#'))
        });
        if let Some(code) = code {
            problems.push(format!(
                "{}/{}:{}: the stub's text holds code (`{code}`); in a gaps-style lesson it holds only comments, blank lines and todo!()",
                lesson.solution.display(),
                region.file,
                region.line
            ));
        }
    }
}

/// `(path relative to src, text)` of every .rs file, sorted.
fn rust_files(src: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    collect(src, src, &mut found);
    found.sort();
    found
}

fn collect(root: &Path, dir: &Path, found: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            found.push((relative, std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pitfalls_section_is_rendered_before_the_hints_and_replaced_in_place() {
        let mut lesson: Lesson = serde_yaml::from_str(
            "id: w09-l99\ntitle: T\norder: 1\npart: w09\nduration_minutes: 1\nxp: 1\nkind: lesson\nstub: s\nsolution: o\ngaps: [f]\npitfalls: [{gap: f, text: 'one read is one frame', fixture: b bug, step: frames, cause: c}]\nhints: [h]\nverify: []\nproof: {type: paste, instructions: i, regex_patterns: []}\n",
        )
        .expect("test lesson");
        let path = std::path::Path::new("README.md");
        let readme = "# T\n## Concept\nc\n## Task\nt\n## Hints\n- h\n";
        let once = with_pitfalls_section(path, readme, &lesson).unwrap();
        assert!(once.contains("## Task\nt\n## Pitfalls\n\n<!--"), "{once}");
        assert!(
            once.contains("- In `f`: one read is one frame\n\n## Hints"),
            "{once}"
        );
        lesson.pitfalls[0].text = "changed".into();
        let twice = with_pitfalls_section(path, &once, &lesson).unwrap();
        assert_eq!(twice.matches("## Pitfalls").count(), 1, "{twice}");
        assert!(twice.contains("- In `f`: changed\n") && !twice.contains("one read"));
        assert_eq!(
            section(&twice, "Pitfalls").trim(),
            crate::pitfalls::readme_section(&lesson).trim()
        );
    }

    #[test]
    fn the_hints_are_folded_one_by_one_and_rewritten_in_place() {
        let lesson: Lesson = serde_yaml::from_str(
            "id: w09-l99\ntitle: T\norder: 1\npart: w09\nduration_minutes: 1\nxp: 1\nkind: lesson\nstub: s\nsolution: o\nhints: [first, second]\nverify: []\nproof: {type: paste, instructions: i, regex_patterns: []}\n",
        )
        .expect("test lesson");
        let readme = "# T\n## Hints\n\n- first\n- second\n\n## Verify\nv\n";
        let path = std::path::Path::new("README.md");
        let body = hints_section(&lesson);
        let once = with_section(path, readme, "Hints", &body, "Verify").unwrap();
        assert!(
            once.contains("<details><summary>Hint 1 of 2</summary>\n\nfirst\n\n</details>"),
            "{once}"
        );
        assert!(!once.contains("- first"), "{once}");
        assert_eq!(
            with_section(path, &once, "Hints", &body, "Verify").unwrap(),
            once
        );
        assert_eq!(section(&once, "Hints").trim(), body.trim());
    }
}
