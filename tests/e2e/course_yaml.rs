use crate::support::*;

fn checker_with_course(yaml: &str, lesson: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("course.yaml");
    std::fs::write(&path, yaml).expect("writing course.yaml");
    let output = checker()
        .args([
            "--course",
            path.to_str().expect("utf-8 path"),
            lesson,
            "--solution",
        ])
        .output()
        .expect("running the checker");
    (
        exit_code(&output),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn real_course() -> String {
    let text = std::fs::read_to_string(workspace_root().join("course.yaml")).expect("course.yaml");
    // Absolute crate paths, so the copy in a temp dir still finds the crates.
    let root = workspace_root().display().to_string();
    text.replace("stub: lessons/", &format!("stub: {root}/lessons/"))
        .replace(
            "solution: solutions/",
            &format!("solution: {root}/solutions/"),
        )
}

#[test]
fn the_real_course_loads() {
    let (code, stderr) = checker_with_course(&real_course(), "w99-l99");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no lesson `w99-l99`"), "{stderr}");
}

#[test]
fn a_misspelt_step_parameter_names_file_lesson_and_field() {
    let yaml = real_course().replace("runs: 3}", "runz: 3}");
    assert_ne!(yaml, real_course(), "the test's edit must apply");
    let (code, stderr) = checker_with_course(&yaml, "w02-l16");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("course.yaml"), "{stderr}");
    assert!(stderr.contains("lesson w02-l16"), "{stderr}");
    assert!(stderr.contains("stress.runz"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[test]
fn an_order_that_disagrees_with_the_id_is_rejected() {
    let yaml = real_course().replace("order: 16", "order: 17");
    let (code, stderr) = checker_with_course(&yaml, "w02-l16");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lesson w02-l16, field `order`"), "{stderr}");
}

#[test]
fn a_proof_regex_that_does_not_compile_is_rejected_at_load() {
    let yaml = real_course().replace("- \"50 clients\"", "- \"50 (clients\"");
    let (code, stderr) = checker_with_course(&yaml, "w02-l16");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("lesson w02-l16, field `proof.regex_patterns[0]`"),
        "{stderr}"
    );
}

/// The checker's exit code and stderr with w02-l16's stress step pointing
/// at `hint` (written as YAML) instead of hint 1.
fn w02_l16_stress_hint(hint: &str) -> (i32, String) {
    let yaml = real_course().replace(
        "runs: 3}\n        hint: 1\n",
        &format!("runs: 3}}\n        hint: {hint}\n"),
    );
    assert_ne!(yaml, real_course(), "the test's edit must apply");
    checker_with_course(&yaml, "w02-l16")
}

#[test]
fn a_hint_number_past_the_lessons_hints_is_rejected() {
    let (code, stderr) = w02_l16_stress_hint("[1, 9]");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("lesson w02-l16, field `verify[2].hint`"),
        "{stderr}"
    );
    assert!(stderr.contains("hint 9 does not exist"), "{stderr}");
}

/// The checker's exit code and stderr with w02-l16's `causes:` map
/// holding `entry` (one `id: hints` line) besides its own.
fn w02_l16_with_cause(entry: &str) -> (i32, String) {
    let yaml = real_course().replace(
        "    causes:\n      stress.framing: [1, 3]\n",
        &format!("    causes:\n      {entry}\n      stress.framing: [1, 3]\n"),
    );
    assert_ne!(yaml, real_course(), "the test's edit must apply");
    checker_with_course(&yaml, "w02-l16")
}

#[test]
fn a_cause_no_step_gives_is_rejected_in_a_causes_map() {
    // A misspelt id would never be diagnosed, so its hints never quoted.
    let (code, stderr) = w02_l16_with_cause("stress.framming: 3");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("lesson w02-l16, field `causes.stress.framming`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no step gives the cause `stress.framming`"),
        "{stderr}"
    );
}

#[test]
fn a_hint_number_past_the_lessons_hints_is_rejected_in_a_causes_map() {
    let (code, stderr) = w02_l16_with_cause("stress.unclassified: [1, 9]");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("lesson w02-l16, field `causes.stress.unclassified`"),
        "{stderr}"
    );
    assert!(stderr.contains("hint 9 does not exist"), "{stderr}");
}

#[test]
fn a_hint_that_is_not_a_number_names_the_field() {
    let (code, stderr) = w02_l16_stress_hint("ladder");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lesson w02-l16"), "{stderr}");
    assert!(stderr.contains("verify[2]"), "{stderr}");
}

#[test]
fn a_missing_lesson_folder_is_rejected() {
    let yaml = real_course().replace("lessons/w01-l01\n", "lessons/w01-l01-gone\n");
    let (code, stderr) = checker_with_course(&yaml, "w01-l01");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lesson w01-l01, field `stub`"), "{stderr}");
}

/// `checker validate w01-l01` on a copy of the course edited by `edit`.
fn validate_edited(edit: impl Fn(String) -> String) -> (i32, String) {
    // Inside the workspace: validate builds the fixture servers of the
    // lesson's pitfalls from the course's directory.
    let targets = workspace_root().join("target");
    std::fs::create_dir_all(&targets).expect("target dir");
    let dir = tempfile::tempdir_in(&targets).expect("temp dir");
    let path = dir.path().join("course.yaml");
    let yaml = edit(real_course());
    assert_ne!(yaml, real_course(), "the test's edit must apply");
    std::fs::write(&path, yaml).expect("writing course.yaml");
    let output = checker()
        // Crates outside the workspace: compiled dependencies reused, and
        // binaries kept apart from every other test's.
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/validate-tests"),
        )
        .args([
            "--course",
            path.to_str().expect("utf-8 path"),
            "validate",
            "w01-l01",
            "--seed",
            "5",
        ])
        .output()
        .expect("running the checker");
    (
        exit_code(&output),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn validate_names_a_lesson_whose_solution_fails() {
    let root = workspace_root().display().to_string();
    let (code, out) = validate_edited(|yaml| {
        yaml.replace(
            &format!("solution: {root}/solutions/w01-l01\n"),
            &format!("solution: {root}/lessons/w01-l01\n"),
        )
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("w01-l01: the reference solution fails at step"),
        "{out}"
    );
}

#[test]
fn validate_names_a_stub_failure_that_points_at_no_hint() {
    // w01-l01 with every `hint:` taken off its steps.
    let (code, out) = validate_edited(|yaml| {
        let start = yaml.find("  - id: w01-l01").expect("w01-l01");
        let end = yaml.find("  - id: w01-l02").expect("w01-l02");
        let lesson: String = yaml[start..end]
            .lines()
            .filter(|line| !line.trim_start().starts_with("hint:"))
            .map(|line| format!("{line}\n"))
            .collect();
        format!("{}{lesson}{}", &yaml[..start], &yaml[end..])
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO-HINT"), "{out}");
    assert!(
        regex::Regex::new(r"w01-l01: the stub fails at step `\w+`, which names no hint")
            .unwrap()
            .is_match(&out),
        "{out}"
    );
}

#[test]
fn validate_names_a_lesson_whose_stub_passes() {
    // A "stub" that is really the solution: its crate, the lesson's README.
    let root = workspace_root().display().to_string();
    let finished = tempfile::tempdir().unwrap();
    let stub = finished.path().join("w01-l01");
    std::fs::create_dir_all(stub.join("src")).unwrap();
    let manifest =
        std::fs::read_to_string(workspace_root().join("solutions/w01-l01/Cargo.toml")).unwrap();
    std::fs::write(
        stub.join("Cargo.toml"),
        format!("{manifest}\n[workspace]\n"),
    )
    .unwrap();
    std::fs::copy(
        workspace_root().join("solutions/w01-l01/src/main.rs"),
        stub.join("src/main.rs"),
    )
    .unwrap();
    std::fs::copy(
        workspace_root().join("lessons/w01-l01/README.md"),
        stub.join("README.md"),
    )
    .unwrap();
    let stub_path = stub.display().to_string();
    let (code, out) = validate_edited(|yaml| {
        yaml.replace(
            &format!("stub: {root}/lessons/w01-l01\n"),
            &format!("stub: {stub_path}\n"),
        )
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("w01-l01: the stub passes its lesson: its checks cannot fail"),
        "{out}"
    );
}

/// The course with `field` added to w01-l01, in place of the lesson's own
/// field of that name (`floor:`, `pitfalls:`).
fn w01_l01_with(field: &str) -> (i32, String) {
    let course = real_course();
    let start = course.find("  - id: w01-l01").expect("w01-l01");
    let end = course.find("  - id: w01-l02").expect("w01-l02");
    let name = field.trim_start().split(':').next().unwrap_or_default();
    let mut lesson = String::new();
    let mut skipping = false;
    for line in course[start..end].lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 4 {
            skipping = line.trim_start().starts_with(&format!("{name}:"));
        }
        if !skipping {
            lesson.push_str(line);
            lesson.push('\n');
        }
    }
    let lesson = lesson.replace(
        "    gaps: [accept_loop, echo_client]\n",
        &format!("    gaps: [accept_loop, echo_client]\n{field}"),
    );
    let yaml = format!("{}{lesson}{}", &course[..start], &course[end..]);
    assert_ne!(yaml, real_course(), "the test's edit must apply");
    checker_with_course(&yaml, "w01-l01")
}

#[test]
fn a_pitfall_names_a_gap_a_fixture_a_step_and_a_cause_or_is_rejected() {
    let pitfall = |gap: &str, fixture: &str, step: &str, cause: &str| {
        format!("    pitfalls:\n      - {{gap: {gap}, text: 'x', fixture: '{fixture}', step: {step}, cause: {cause}}}\n")
    };
    let cases = [
        (
            pitfall("main", "broken_server bug", "echo", "echo.reset"),
            "field `pitfalls[0].gap`",
        ),
        (
            pitfall("echo_client", "broken_server", "echo", "echo.reset"),
            "field `pitfalls[0].fixture`",
        ),
        (
            pitfall("echo_client", "broken_server bug", "frames", "echo.reset"),
            "field `pitfalls[0].step`",
        ),
        (
            pitfall("echo_client", "broken_server bug", "echo", "echo.resett"),
            "field `pitfalls[0].cause`",
        ),
    ];
    for (field, expected) in cases {
        let (code, stderr) = w01_l01_with(&field);
        assert_eq!(code, 2, "{field}: {stderr}");
        assert!(stderr.contains("lesson w01-l01"), "{stderr}");
        assert!(stderr.contains(expected), "{field}: {stderr}");
    }
}

#[test]
fn a_floor_under_twelve_or_without_a_reason_is_rejected() {
    let (code, stderr) = w01_l01_with("    floor: {lines: 11, reason: small}\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("field `floor.lines`"), "{stderr}");
    let (code, stderr) = w01_l01_with("    floor: {lines: 15, reason: ' '}\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("field `floor.reason`"), "{stderr}");
}
