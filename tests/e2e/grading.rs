//! `checker grade`: pasted proofs, good and bad, one paste or a class.

use std::path::Path;

use crate::support::*;

/// A student's own w01-l01: the solution with a comment changed, in a
/// repository laid out like the course (`lessons/w01-l01`).
fn student_repo(dir: &Path) -> std::path::PathBuf {
    let crate_dir = dir.join("lessons/w01-l01");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    let solution = workspace_root().join("solutions/w01-l01");
    let manifest = std::fs::read_to_string(solution.join("Cargo.toml")).unwrap();
    // A crate outside the workspace must say so, or cargo looks for one above it.
    let manifest = manifest.replace("w01-l01-solution", "w01-l01") + "\n[workspace]\n";
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    let main = std::fs::read_to_string(solution.join("src/main.rs")).unwrap();
    std::fs::write(
        crate_dir.join("src/main.rs"),
        format!("// my own work\n{main}"),
    )
    .unwrap();
    crate_dir
}

fn checker_output(args: &[&str]) -> String {
    let (_, stdout) = run_checker(args);
    stdout
}

fn proof_of(run_output: &str) -> String {
    let start = run_output.find("----- BEGIN PROOF").expect("a proof block");
    let end = run_output.find("----- END PROOF").expect("an end line");
    let end = end
        + run_output[end..]
            .find('\n')
            .unwrap_or(run_output.len() - end);
    run_output[start..end].to_string()
}

fn grade(args: &[&str]) -> (i32, String) {
    let mut all = vec!["grade"];
    all.extend_from_slice(args);
    let (output, stdout) = run_checker(&all);
    (exit_code(&output), stdout)
}

#[test]
fn a_class_of_pastes_is_graded_in_every_format_with_bad_pastes_caught() {
    let repo = tempfile::tempdir().unwrap();
    let crate_dir = student_repo(repo.path());
    let passing = proof_of(&checker_output(&[
        "w01-l01",
        "--path",
        crate_dir.to_str().unwrap(),
        "--seed",
        "3",
    ]));
    let failing = proof_of(&checker_output(&["w01-l01", "--seed", "3"]));
    let reference = proof_of(&checker_output(&["w01-l01", "--solution", "--seed", "3"]));

    let class = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| std::fs::write(class.path().join(name), text).unwrap();
    let quoted: String = passing.lines().map(|l| format!(">  {l}\r\n")).collect();
    write(
        "alice.txt",
        format!("Hi! here is my run:\r\n```\r\n{quoted}```\r\nthanks\r\n"),
    );
    write("bob.txt", failing.clone());
    write(
        "carol.txt",
        passing
            .replace("18 frames echoed", "18 frames  echoed")
            .replace("checked:", "checked: (mine)"),
    );
    let cut: String = passing.lines().take(3).collect::<Vec<_>>().join("\n");
    write("dave.txt", cut);
    write("erin.txt", reference);
    write("frank.txt", String::new());
    std::fs::write(
        class.path().join("grace.bin"),
        [0u8, 159, 146, 150, 255, 0, 1],
    )
    .unwrap();
    write("heidi.txt", passing.replace("w01-l01", "w09-l99"));
    write(
        "ivan.txt",
        format!("{failing}\nsorry, fixed it:\n{passing}"),
    );

    let (code, table) = grade(&[class.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{table}");
    let row = |student: &str| {
        table
            .lines()
            .find(|l| l.starts_with(student))
            .unwrap_or_else(|| panic!("no row for {student}:\n{table}"))
            .to_string()
    };
    assert!(
        row("alice").contains("passed") && row("alice").trim_end().ends_with("75"),
        "{table}"
    );
    assert!(row("bob").contains("FAILED"), "{table}");
    assert!(row("carol").contains("FLAGGED"), "{table}");
    assert!(table.contains("carol w01-l01: edited"), "{table}");
    assert!(
        row("dave").contains("MALFORMED") && table.contains("truncated block"),
        "{table}"
    );
    assert!(
        row("erin").contains("FLAGGED")
            && table.contains("erin w01-l01: the checked code is the shipped reference solution"),
        "{table}"
    );
    assert!(table.contains("frank -: the paste is empty"), "{table}");
    assert!(table.contains("grace -: no proof block found"), "{table}");
    assert!(
        table.contains("heidi w09-l99: unknown lesson id"),
        "{table}"
    );
    assert!(
        row("ivan").contains("passed") && table.contains("2 blocks for w01-l01"),
        "{table}"
    );

    let (_, json) = grade(&["--format", "json", class.path().to_str().unwrap()]);
    let document: serde_json::Value = serde_json::from_str(&json).expect("JSON parses");
    assert_eq!(document["xp"]["alice"], 75, "{json}");
    let (_, junit) = grade(&["--format", "junit", class.path().to_str().unwrap()]);
    let xml = roxmltree::Document::parse(&junit).expect("JUnit is well-formed XML");
    assert_eq!(xml.root_element().tag_name().name(), "testsuites");
    let (_, csv) = grade(&["--format", "csv", class.path().to_str().unwrap()]);
    assert!(csv.starts_with("student,lesson,status,xp,reasons"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("alice,w01-l01,passed,75")),
        "{csv}"
    );

    // Graded after the course changed the lesson's patterns: said, and
    // graded with today's patterns.
    let changed = tempfile::tempdir().unwrap();
    let changed_course = changed.path().join("course.yaml");
    let yaml = course_with_absolute_paths().replace(
        "- \"echo: 3 clients in turn, 18 frames echoed exactly\"",
        "- \"echo: 4 clients in turn\"",
    );
    assert_ne!(
        yaml,
        course_with_absolute_paths(),
        "the test's edit must apply"
    );
    std::fs::write(&changed_course, yaml).unwrap();
    let alice = class.path().join("alice.txt");
    let (code, out) = grade(&[
        "--course",
        changed_course.to_str().unwrap(),
        alice.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the run used another version of course.yaml"),
        "{out}"
    );
    assert!(
        out.contains("the proof pattern `echo: 4 clients in turn` does not match"),
        "{out}"
    );

    // The same paste against the student's repository: hash matches, re-run agrees...
    let alice = class.path().join("alice.txt");
    let (code, out) = grade(&[
        "--repo",
        repo.path().to_str().unwrap(),
        "--rerun",
        alice.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    // ...until the repository's code is not the code that was checked.
    std::fs::write(crate_dir.join("src/extra.rs"), "// added later\n").unwrap();
    let (code, out) = grade(&[
        "--repo",
        repo.path().to_str().unwrap(),
        alice.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the proof is of other code"), "{out}");
}

#[test]
fn the_classroom_template_has_one_test_per_lesson_worth_its_xp() {
    let (output, stdout) = run_checker(&[
        "classroom",
        "--repo-url",
        "https://example.org/course.git",
        "--tag",
        "v1",
    ]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    let document: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let tests = document["tests"].as_array().expect("tests");
    let (_, list) = run_checker(&["list"]);
    let lessons: Vec<&str> = list.lines().filter(|l| l.starts_with('w')).collect();
    assert_eq!(tests.len(), lessons.len(), "{stdout}");
    let first = &tests[0];
    assert_eq!(first["points"], 75);
    assert!(first["run"]
        .as_str()
        .unwrap()
        .contains("--course /tmp/course/course.yaml w01-l01 --path lessons/w01-l01"));
    assert!(first["setup"]
        .as_str()
        .unwrap()
        .contains("--branch v1 https://example.org/course.git"));
}
