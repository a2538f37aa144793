//! Servers that misbehave as a whole program: each gets a clear verdict
//! within a bounded time (the HANG_GUARD of every checker run), and nothing
//! they started survives the checker.

use crate::support::*;

#[test]
fn a_server_that_never_listens_gets_a_clear_verdict() {
    let tag = "hostile-never-listen";
    let (output, stdout) = run_checker(&["w02-l16", "--exec", &fixture_exec("never-listen", tag)]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w02-l16 at step `start`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no `listening on <ip>:<port>` line on stdout within 10 s"),
        "{stdout}"
    );
    assert_nothing_left(tag);
}

#[test]
fn a_server_that_crashes_mid_run_is_reported_with_its_exit_and_output() {
    let tag = "hostile-crash";
    let (output, stdout) = run_checker(&[
        "w02-l16",
        "--exec",
        &fixture_exec("crash-mid-run", tag),
        "--seed",
        "3",
    ]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w02-l16 at step `stress`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the server exited (killed by SIGABRT)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[server:stderr] simulated crash after 700 frames"),
        "{stdout}"
    );
    assert_nothing_left(tag);
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
    let tag = "hostile-hang";
    let (output, stdout) = run_checker(&["w02-l16", "--exec", &fixture_exec("hang", tag)]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w02-l16 at step `stress`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("likely cause: the server stopped answering"),
        "{stdout}"
    );
    assert_nothing_left(tag);
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
    let tag = "hostile-wrong-port";
    let (code, stdout) = w01_against("wrong-port-line", tag);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w01-l01 at step `start`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("but nothing accepts connections at"),
        "{stdout}"
    );
    assert_nothing_left(tag);
}

#[test]
fn a_server_that_never_accepts_fails_by_echo_timeout() {
    let tag = "hostile-no-accept";
    let (code, stdout) = w01_against("bind-no-accept", tag);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED w01-l01 at step `echo`"), "{stdout}");
    assert!(stdout.contains("no complete echo within 5 s"), "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_server_that_accepts_but_never_reads_fails_by_echo_timeout() {
    let tag = "hostile-no-read";
    let (code, stdout) = w01_against("accept-no-read", tag);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("no complete echo within 5 s"), "{stdout}");
    assert_nothing_left(tag);
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
    let tag = "hostile-exit";
    let (code, stdout) = w01_against("exit-at-once", tag);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("exited (exit code 0) before printing `listening on"),
        "{stdout}"
    );
    assert_nothing_left(tag);
}

#[test]
fn a_server_eating_memory_is_stopped_by_the_rss_watchdog() {
    let tag = "hostile-memory";
    // A lower limit than the default 2 GiB, so the fixture reaches it fast.
    let output = checker()
        .env("CHECKER_RSS_LIMIT_MIB", "300")
        .args(["w02-l16", "--exec", &fixture_exec("eat-memory", tag)])
        .output()
        .expect("running the checker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(stdout.contains("memory (RSS) reached"), "{stdout}");
    assert!(stdout.contains("past the 300 MiB limit"), "{stdout}");
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
