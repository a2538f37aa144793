//! `checker validate` and golden transcripts: what students see for a
//! passing run (the solution) and a failing run (the stub) of every lesson,
//! stored in tests/golden/ with everything machine-dependent normalised. A
//! change in what students see is then a reviewed diff. Refresh after a
//! deliberate change with
//!   GOLDEN_RECORD=1 cargo test --test e2e golden
//! and read the diff before committing it.

use crate::support::*;

/// Masks what differs between runs and machines: paths, numbers (ports,
/// pids, timings, hashes, counts), the server's own output and the
/// evidence lines whose number and order depend on scheduling.
fn normalise(transcript: &str) -> String {
    let root = workspace_root().display().to_string();
    let number = regex::Regex::new(r"[0-9a-f]{16}|\d+(\.\d+)?").unwrap();
    let mut lines: Vec<String> = Vec::new();
    for line in transcript.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('│')
            || trimmed.starts_with("machine:")
            || trimmed.contains("connection attempts were refused and retried")
            || trimmed.starts_with("building ")
            || trimmed.starts_with("note: the server reached a `todo!()`")
        {
            continue;
        }
        let line = line.replace(&root, "<ROOT>");
        lines.push(number.replace_all(&line, "N").to_string());
    }
    lines.join("\n") + "\n"
}

/// `checker validate` over the whole course (every solution passes, every
/// stub fails, every lesson's content is sound), keeping each run's text
/// transcript; then each transcript is compared with its golden file.
#[test]
fn the_course_validates_and_every_transcript_matches_its_golden_file() {
    let record = std::env::var_os("GOLDEN_RECORD").is_some();
    let validated = validated();
    let table = &validated.table;
    assert_eq!(validated.code, 0, "checker validate:\n{table}");
    assert!(table.contains("the course is sound"), "{table}");
    let transcripts = &validated.dir;

    let golden_dir = workspace_root().join("tests/golden");
    let mut differences = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(transcripts.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for name in &names {
        let actual = normalise(&std::fs::read_to_string(transcripts.path().join(name)).unwrap());
        let path = golden_dir.join(name);
        if record {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            let diff = similar::TextDiff::from_lines(&expected, &actual)
                .unified_diff()
                .header("golden", "this run")
                .to_string();
            differences.push(format!("{}:\n{diff}", path.display()));
        }
    }
    // A golden file for a lesson that no longer exists is stale.
    for entry in std::fs::read_dir(&golden_dir).into_iter().flatten() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if !names.contains(&name) {
            differences.push(format!("tests/golden/{name}: no such lesson run any more"));
        }
    }
    assert!(
        differences.is_empty(),
        "transcripts differ from tests/golden (GOLDEN_RECORD=1 refreshes them after a deliberate change):\n{}",
        differences.join("\n")
    );
}
