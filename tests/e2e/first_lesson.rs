use crate::support::*;

#[test]
fn w01_l01_solution_passes() {
    let (output, stdout) = run_checker(&["w01-l01", "--solution", "--seed", "7"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    for line in [
        "echo: 3 clients in turn, 18 frames echoed exactly",
        "echo: a client reset its connection after its echo; the clients after it were served",
        "echoed exactly while the server was stopped and continued 30 times",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(stdout.contains("result: PASS w01-l01"), "{stdout}");
}

/// w01-l01 against one of its mistakes in `broken_server` (the run its row
/// of hostile.rs's `PLANTED` shares): fails at `step` with the planted
/// cause and every one of `expected` in the output.
fn w01_l01_mistake_fails_at(bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(
        "broken_server",
        crate::hostile::PLANTED,
        "w01-l01",
        bug,
        step,
        expected,
    )
}

#[test]
fn a_read_of_0_taken_for_no_data_yet_is_a_server_stuck_on_a_closed_client() {
    // It spins on the closed connection: the next client waits in the
    // accept queue, and the server still holds the closed one.
    w01_l01_mistake_fails_at(
        "spin-on-eof",
        "echo",
        &[
            "no complete echo within 5 s",
            "likely cause: the server is still busy with an earlier client, which had closed its side",
            "still holds an earlier one that its client closed (CLOSE_WAIT",
        ],
    );
}

#[test]
fn echoing_the_whole_buffer_instead_of_the_bytes_read_is_wrong_bytes() {
    w01_l01_mistake_fails_at(
        "echo-whole-buffer",
        "echo",
        &[
            "the echo differs from what was sent",
            "likely cause: the server must send back exactly the bytes it received",
        ],
    );
}

#[test]
fn a_short_write_whose_rest_is_dropped_is_a_hole_in_the_echo() {
    // Clients that read each echo never see a short write; the client that
    // sends megabytes before reading, with the server stopped and
    // continued mid-write, does.
    let text = w01_l01_mistake_fails_at(
        "write-ignores-count",
        "echo",
        &[
            "the client that sends before reading: the echo has a hole",
            "never came back",
            "likely cause: a write that took only part of its buffer (a short write",
            "are missing from the echo; what follows them came back",
        ],
    );
    assert!(
        text.contains("[echo]\nFAIL: the client that sends before reading"),
        "{text}"
    );
}

#[test]
fn a_client_error_that_panics_the_accept_loop_is_the_verdict_with_its_cause() {
    // The resetting client's read fails with ECONNRESET and the fixture's
    // accept loop unwraps it: the death is the verdict, and the cause that
    // explains it stays.
    w01_l01_mistake_fails_at(
        "panic-on-client-error",
        "echo",
        &[
            "after a client reset its connection, client 2",
            "the server exited (exit code 101)",
            "serving a client failed",
            "likely cause: one client's error ended the whole server",
        ],
    );
}

#[test]
fn w01_l01_stub_fails_at_start_where_its_todo_panics() {
    let (output, stdout) = run_checker(&["w01-l01", "--seed", "7"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w01-l01 at step `start`"),
        "{stdout}"
    );
    assert!(stdout.contains("a `todo!()` of the stub"), "{stdout}");
    assert!(stdout.contains("result: FAIL w01-l01"), "{stdout}");
}

#[test]
fn a_server_that_exits_after_its_first_client_is_caught() {
    let tag = "first-lesson-exit-after-first";
    let exec = fixture_exec("exit-after-first-client", tag);
    let (output, stdout) = run_checker(&["w01-l01", "--exec", &exec]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    // The start step's own probe connection is its first client.
    assert!(
        stdout.contains("FAILED w01-l01 at step `start`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the server exited (exit code 0) right after a client connected"),
        "{stdout}"
    );
    assert_nothing_left(tag);
}

#[test]
fn a_server_that_never_echoes_fails_showing_what_was_sent_and_what_came_back() {
    let tag = "first-lesson-hang";
    let exec = fixture_exec("hang", tag);
    let (output, stdout) = run_checker(&["w01-l01", "--exec", &exec]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(stdout.contains("no complete echo within 5 s"), "{stdout}");
    assert!(stdout.contains("first difference at byte 0"), "{stdout}");
    assert_nothing_left(tag);
}
