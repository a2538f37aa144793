use crate::support::*;

#[test]
fn w01_l01_solution_passes() {
    let (output, stdout) = run_checker(&["w01-l01", "--solution", "--seed", "7"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("echo: 3 clients in turn, 18 frames echoed exactly"),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS w01-l01"), "{stdout}");
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
