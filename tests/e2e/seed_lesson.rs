use crate::support::*;

#[test]
fn w02_l16_solution_passes_three_runs_and_its_proof_matches_the_course_regexes() {
    let (output, stdout) = run_checker(&["w02-l16", "--solution", "--seed", "1234"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    for run in 1..=3 {
        let line = format!("stress run {run}/3: 50 clients, 5000 frames, 0 failures");
        assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("----- BEGIN PROOF w02-l16 -----"),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS w02-l16"), "{stdout}");
    assert!(stdout.contains("----- END PROOF w02-l16 -----"), "{stdout}");
    // The proof block alone must satisfy the seed's regexes from course.yaml.
    let block = stdout
        .split("----- BEGIN PROOF w02-l16 -----")
        .nth(1)
        .and_then(|rest| rest.split("----- END PROOF w02-l16 -----").next())
        .expect("a proof block");
    for pattern in ["50 clients", "0 failures|5000.*pass"] {
        assert!(
            regex::Regex::new(pattern).unwrap().is_match(block),
            "{pattern} in {block}"
        );
    }
}

#[test]
fn w02_l16_stub_fails_the_stress_step_and_names_the_failing_frames() {
    let (output, stdout) = run_checker(&["w02-l16", "--seed", "1234"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w02-l16 at step `stress`"),
        "{stdout}"
    );
    assert!(
        regex::Regex::new(r"client \d+, frame \d+")
            .unwrap()
            .is_match(&stdout),
        "the failure should name a client and a frame:\n{stdout}"
    );
    assert!(stdout.contains("result: FAIL w02-l16"), "{stdout}");
    assert!(!stdout.contains("result: PASS"), "{stdout}");
    // course.yaml points the stress step at hint 1: quoted word for word.
    let course = std::fs::read_to_string(workspace_root().join("course.yaml")).unwrap();
    let ladder = course
        .lines()
        .find(|l| l.contains("Climb the ladder from 1x1"))
        .expect("w02-l16's first hint");
    let ladder = ladder.trim().trim_start_matches("- ").trim_matches('\'');
    assert!(
        stdout.contains(&format!("hint 1/5: {ladder}")),
        "the failing step should quote the hint that applies:\n{stdout}"
    );
}

#[test]
fn json_format_carries_the_hints_of_a_failing_step() {
    let (output, stdout) = run_checker(&["w02-l16", "--seed", "7", "--format", "json"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    let document: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    let stress = document["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "stress")
        .expect("a stress step");
    assert_eq!(stress["status"], "fail", "{stress}");
    assert_eq!(stress["hints"][0]["number"], 1, "{stress}");
    assert_eq!(stress["hints"][0]["of"], 5, "{stress}");
    assert!(
        stress["hints"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Climb the ladder")),
        "{stress}"
    );
}

#[test]
fn a_byte_echo_server_nobody_here_wrote_passes_via_exec() {
    let which = std::process::Command::new("socat").arg("-V").output();
    assert!(
        which.map(|o| o.status.success()).unwrap_or(false),
        "socat is required (test.sh installs it: apt-get install -y socat)"
    );
    let (output, stdout) = run_checker(&[
        "w02-l16",
        "--exec",
        "socat TCP-LISTEN:{port},reuseaddr,fork EXEC:cat",
        "--seed",
        "99",
    ]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("stress run 3/3: 50 clients, 5000 frames, 0 failures"),
        "{stdout}"
    );
    assert!(stdout.contains("checked: exec `socat"), "{stdout}");
}

#[test]
fn a_server_that_merges_pipelined_frames_fails_the_seed_lesson() {
    let tag = "seed-lesson-merge";
    let exec = fixture_exec("merge-frames", tag);
    let (output, stdout) = run_checker(&["w02-l16", "--exec", &exec, "--seed", "5"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(stdout.contains("likely cause: framing"), "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn json_format_reports_every_step_with_name_status_seconds_message_figures() {
    let (output, stdout) = run_checker(&["w01-l01", "--solution", "--format", "json"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    let document: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(document["passed"], true);
    let steps = document["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    for step in steps {
        for key in ["name", "status", "seconds", "message", "figures"] {
            assert!(step.get(key).is_some(), "{key} missing in {step}");
        }
    }
}

#[test]
fn junit_file_has_a_test_case_per_step_and_the_failure_with_its_cause_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w02-l16.xml");
    let (output, stdout) = run_checker(&[
        "w02-l16",
        "--seed",
        "8",
        "--junit",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    let text = std::fs::read_to_string(&path).expect("the JUnit file was written");
    let xml = roxmltree::Document::parse(&text).expect("JUnit is well-formed XML");
    let cases: Vec<_> = xml
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let names: Vec<&str> = cases.iter().filter_map(|c| c.attribute("name")).collect();
    assert_eq!(names, ["1 build", "2 start", "3 stress"], "{text}");
    let failure = cases[2]
        .children()
        .find(|n| n.has_tag_name("failure"))
        .expect("the stress step failed");
    assert!(
        failure
            .attribute("message")
            .is_some_and(|m| m.contains("stress run 1/3")),
        "{text}"
    );
    let body = failure.text().unwrap_or_default();
    assert!(body.contains("likely cause:"), "{text}");
    assert!(body.contains("hint 1/5: Climb the ladder"), "{text}");
    assert!(cases[..2]
        .iter()
        .all(|c| !c.children().any(|n| n.has_tag_name("failure"))));
}
