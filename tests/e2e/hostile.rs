//! Servers that misbehave as a whole program: each gets a clear verdict
//! within a bounded time, and nothing they started survives the checker.

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
