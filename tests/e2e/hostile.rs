//! Servers that misbehave as a whole program: each gets a clear verdict
//! within a bounded time (the HANG_GUARD of every checker run), and nothing
//! they started survives the checker.

use crate::support::*;

const FIXTURE: &str = "broken_server";

/// Every bug of `broken_server` that a lesson fails: `(bug, lesson, step,
/// cause_id)`, the lesson that catches it, the step it fails at and the
/// cause it plants (`None`: a death that no cause explains, or a server
/// that never came up, whose verdict the start of the run gives without an
/// id). `eat-memory` is in its own test (it needs a lower RSS limit), and
/// so is `setsid-child` (its parent exits while its child serves: whether
/// `start` sees that exit, with its cause, or the run's end does, is a
/// matter of timing); `flood-output`, `ignore-sigterm`, `fork-keeps-port`
/// and `spin` pass.
#[rustfmt::skip]
pub(crate) const PLANTED: &[Planted] = &[
    ("never-listen", "w02-l16", "start", None),
    ("exit-after-first-client", "w01-l01", "start", Some("start.exits-after-a-client")),
    ("crash-mid-run", "w02-l16", "stress", None),
    ("hang", "w02-l16", "stress", Some("stress.stopped-answering")),
    ("merge-frames", "w02-l16", "stress", Some("stress.framing")),
    ("corrupt-byte", "w02-l16", "stress", Some("stress.framing")),
    ("panic-on-empty-frame", "w01-l02", "frames", None),
    ("abort-on-first-frame", "w01-l02", "frames", None),
    ("wrong-port-line", "w01-l01", "start", None),
    ("bind-no-accept", "w01-l01", "echo", Some("echo.never-accepted")),
    ("accept-no-read", "w01-l01", "echo", Some("echo.no-echo")),
    ("exit-at-once", "w01-l01", "start", None),
    // w01-l01's mistakes (tests in first_lesson.rs).
    ("spin-on-eof", "w01-l01", "echo", Some("echo.stuck-on-closed-client")),
    ("echo-whole-buffer", "w01-l01", "echo", Some("echo.wrong-bytes")),
    ("write-ignores-count", "w01-l01", "echo", Some("echo.short-write")),
    ("panic-on-client-error", "w01-l01", "echo", Some("echo.client-error-ends-the-server")),
];

#[test]
fn every_hostile_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in the output, and leaves nothing behind.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, expected)
}

#[test]
fn a_server_that_never_listens_gets_a_clear_verdict() {
    fixture_fails_at(
        "w02-l16",
        "never-listen",
        "start",
        &["no `listening on <ip>:<port>` line on stdout within 10 s"],
    );
}

#[test]
fn a_server_that_crashes_mid_run_is_reported_with_its_exit_and_output() {
    fixture_fails_at(
        "w02-l16",
        "crash-mid-run",
        "stress",
        &[
            "the server exited (killed by SIGABRT)",
            "[server:stderr] simulated crash after 700 frames",
        ],
    );
}

#[test]
fn a_crash_that_clients_see_as_a_closed_connection_is_named_as_the_thing_to_fix() {
    // The frames probe fails on what its client saw (the connection ended
    // before the echo); the report must add that the server died, and how,
    // not leave the student to find it among the quoted output.
    for round in 0..3 {
        let tag = format!("hostile-abort-{round}");
        let (output, stdout) = run_checker(&[
            "w01-l02",
            "--exec",
            &fixture_exec("abort-on-first-frame", &tag),
        ]);
        assert_eq!(exit_code(&output), 1, "{stdout}");
        assert!(
            stdout.contains("FAILED w01-l02 at step `frames`"),
            "{stdout}"
        );
        // The death is the verdict, first on the FAIL line; no cause read
        // from the clients' symptoms is offered beside it.
        assert!(
            stdout.contains("FAIL: the server exited (killed by SIGABRT); what the clients saw: "),
            "round {round}:\n{stdout}"
        );
        assert!(
            !stdout.contains("likely cause:"),
            "round {round}:\n{stdout}"
        );
        assert!(
            stdout.contains("[server:stderr] simulated crash on the first frame"),
            "round {round}:\n{stdout}"
        );
        assert_nothing_left(&tag);
    }
}

#[test]
fn a_thread_that_panics_is_the_verdict_even_when_the_process_lives_on() {
    // The empty-frame case kills only that client's thread: the process
    // serves on, and its client merely saw a closed connection. The panic,
    // with its thread, file:line and message, is what the FAIL line says.
    let panic = regex::Regex::new(
        r"^a thread of the server panicked: thread '[^']+' panicked at src/bin/broken_server\.rs:\d+:\d+: an empty frame has no payload to echo; what the clients saw: ",
    )
    .unwrap();
    for round in 0..3 {
        let tag = format!("hostile-thread-panic-{round}");
        let (output, stdout) = run_checker(&[
            "w01-l02",
            "--exec",
            &fixture_exec("panic-on-empty-frame", &tag),
            "--format",
            "json",
        ]);
        assert_eq!(exit_code(&output), 1, "{stdout}");
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        let failed = json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|step| step["status"] == "fail")
            .expect("a failed step");
        assert_eq!(failed["name"], "frames", "{stdout}");
        let message = failed["message"].as_str().unwrap();
        assert!(panic.is_match(message), "round {round}: {message}");
        assert!(failed.get("cause").is_none(), "round {round}: {stdout}");
        assert_nothing_left(&tag);
    }
}

#[test]
fn a_server_that_hangs_fails_by_timeout_not_by_hanging_the_checker() {
    fixture_fails_at(
        "w02-l16",
        "hang",
        "stress",
        &["likely cause: the server stopped answering"],
    );
}

/// Runs w01-l01 against a hostile fixture; returns (exit code, stdout).
fn w01_against(bug: &str, tag: &str) -> (i32, String) {
    let (output, stdout) =
        run_checker(&["w01-l01", "--exec", &fixture_exec(bug, tag), "--seed", "1"]);
    (exit_code(&output), stdout)
}

#[test]
fn a_server_flooding_its_output_is_still_judged_and_its_output_is_capped() {
    let tag = "hostile-flood";
    let (code, stdout) = w01_against("flood-output", tag);
    assert_eq!(code, 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_listening_line_for_a_port_nobody_serves_fails_at_start() {
    fixture_fails_at(
        "w01-l01",
        "wrong-port-line",
        "start",
        &["but nothing accepts connections at"],
    );
}

#[test]
fn a_server_that_never_accepts_fails_by_echo_timeout() {
    // The connection waits in the listen queue: the cause says so, not
    // "write back what you read".
    fixture_fails_at(
        "w01-l01",
        "bind-no-accept",
        "echo",
        &[
            "no complete echo within 5 s",
            "likely cause: the server never accepted the connection",
        ],
    );
}

#[test]
fn a_server_that_accepts_but_never_reads_fails_by_echo_timeout() {
    fixture_fails_at(
        "w01-l01",
        "accept-no-read",
        "echo",
        &["no complete echo within 5 s"],
    );
}

#[test]
fn a_server_ignoring_sigterm_is_killed_with_sigkill() {
    let tag = "hostile-ignore-term";
    let (code, stdout) = w01_against("ignore-sigterm", tag);
    assert_eq!(code, 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_forked_child_holding_the_port_is_killed_with_its_parent() {
    let tag = "hostile-fork";
    let (code, stdout) = w01_against("fork-keeps-port", tag);
    assert_eq!(code, 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_child_that_left_the_session_with_setsid_is_found_and_killed() {
    let tag = "hostile-setsid";
    let (code, stdout) = w01_against("setsid-child", tag);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("the server exited (exit code 0)"),
        "{stdout}"
    );
    assert_nothing_left(tag);
}

#[test]
fn a_server_that_exits_at_once_fails_at_start() {
    fixture_fails_at(
        "w01-l01",
        "exit-at-once",
        "start",
        &["exited (exit code 0) before printing `listening on"],
    );
}

#[test]
fn a_server_eating_memory_is_stopped_by_the_rss_watchdog() {
    let tag = "hostile-memory";
    // A lower limit than the default 2 GiB, so the fixture reaches it fast.
    let output = checker()
        .env("CHECKER_RSS_LIMIT_MIB", "300")
        .args([
            "w02-l16",
            "--exec",
            &fixture_exec("eat-memory", tag),
            "--format",
            "json",
        ])
        .output()
        .expect("running the checker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    let text = steps_as_text(&stdout);
    assert!(text.contains("memory (RSS) reached"), "{text}");
    assert!(text.contains("past the 300 MiB limit"), "{text}");
    // The death is the verdict: no cause read from the clients stays.
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let failed = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["status"] == "fail")
        .expect("a failed step");
    assert!(failed.get("cause_id").is_none(), "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_spinning_server_gets_its_verdict_and_is_stopped() {
    let tag = "hostile-spin";
    let (code, stdout) = w01_against("spin", tag);
    assert_eq!(
        code, 0,
        "w01-l01 has no CPU probe: a spinning but correct echo passes\n{stdout}"
    );
    assert_nothing_left(tag);
}
