//! w03-l19..l22: partial writes, C10K, live statistics and graceful
//! shutdown; each probe shown to fail a server with exactly its bug
//! (src/bin/broken_final_server.rs).

use crate::support::*;

fn final_fixture(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_final_server").display()
    )
}

/// The 10,000-connection runs take the machine's ports, file descriptors
/// and CPU: they run alone, never beside any other test (support.rs).
fn c10k_alone() -> Alone {
    machine_to_myself()
}

/// Runs `lesson` against the fixture with `bug`; returns the stdout of a
/// run that must fail (exit 1) at `step`.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str) -> String {
    track_fixture_fails_at("broken_final_server", lesson, bug, step, &[])
}

/// Runs `lesson` against the fixture with `bug`, which must pass.
fn fixture_passes(lesson: &str, bug: &str) -> String {
    let tag = format!("final-track-{lesson}-{bug}-pass");
    let exec = final_fixture(bug, &tag);
    let (output, stdout) = run_checker(&[lesson, "--exec", &exec, "--seed", "3"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(&tag);
    stdout
}

#[test]
fn w03_l19_solution_passes_with_its_proof_lines() {
    let (output, stdout) = run_checker(&["w03-l19", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    for line in [
        "KiB echoed in order to a client reading after 1000 ms",
        "with 100 idle connections",
        "epoll: 5 client sockets registered with EPOLLET",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(stdout.contains("result: PASS w03-l19"), "{stdout}");
}

#[test]
fn w03_l19_stub_fails_at_the_slow_reader_step() {
    let (output, stdout) = run_checker(&["w03-l19", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l19 at step `slow_reader`"),
        "{stdout}"
    );
}

#[test]
fn dropping_what_write_did_not_take_fails_the_slow_reader_step() {
    let stdout = fixture_fails_at("w03-l19", "drop-partial-write", "slow_reader");
    assert!(stdout.contains("slow client:"), "{stdout}");
    assert!(stdout.contains("keep whatever it did not take"), "{stdout}");
    // An epoll lesson: the cause speaks epoll, not poll.
    assert!(
        stdout.contains("ask epoll_wait() for EPOLLOUT while that buffer is not empty"),
        "{stdout}"
    );
}

#[test]
fn level_triggered_epollout_left_armed_fails_the_idle_cpu_step() {
    let stdout = fixture_fails_at("w03-l19", "epollout-always-armed", "idle_cpu");
    assert!(stdout.contains("the idle server used"), "{stdout}");
    assert!(
        stdout.contains("100 connections open and silent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("don't ask for EPOLLOUT when there is nothing to write"),
        "{stdout}"
    );
}

#[test]
fn edge_triggered_epollout_registered_once_passes_w03_l19() {
    fixture_passes("w03-l19", "et-out-once");
}

#[test]
fn the_correct_final_fixture_passes_w03_l19() {
    fixture_passes("w03-l19", "none");
}

#[test]
fn w03_l20_solution_holds_10000_connections_and_reports_rss_per_connection() {
    let _alone = c10k_alone();
    let (output, stdout) = run_checker(&["w03-l20", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("c10k: 10000 connections held at once on 1 thread, every one echoed (started with a soft limit of 1024 open files)"),
        "{stdout}"
    );
    assert!(stdout.contains("KiB per connection"), "{stdout}");
    assert!(stdout.contains("result: PASS w03-l20"), "{stdout}");
}

#[test]
fn w03_l20_stub_fails_at_the_c10k_step() {
    let _alone = c10k_alone();
    let (output, stdout) = run_checker(&["w03-l20", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(stdout.contains("FAILED w03-l20 at step `c10k`"), "{stdout}");
}

#[test]
fn a_server_left_at_1024_open_files_fails_the_c10k_step() {
    let _alone = c10k_alone();
    let stdout = fixture_fails_at("w03-l20", "cap-1024", "c10k");
    assert!(stdout.contains("of those got their echo"), "{stdout}");
    assert!(stdout.contains("EMFILE"), "{stdout}");
}

#[test]
fn w03_l21_solution_passes_with_its_proof_lines() {
    let (output, stdout) = run_checker(&["w03-l21", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("lines over 4 seeded load phases: well-formed, active connections exact, requests/sec and MB/sec within ±25 % of the load driven"),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS w03-l21"), "{stdout}");
}

#[test]
fn w03_l21_stub_fails_at_the_stats_step() {
    let (output, stdout) = run_checker(&["w03-l21", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l21 at step `stats`"),
        "{stdout}"
    );
}

#[test]
fn fixed_numbers_in_the_stats_lines_fail_the_stats_step() {
    let stdout = fixture_fails_at("w03-l21", "fake-stats", "stats");
    assert!(
        stdout.contains("while the checker held exactly"),
        "{stdout}"
    );
}

#[test]
fn no_stats_lines_fail_the_stats_step() {
    let stdout = fixture_fails_at("w03-l21", "no-stats", "stats");
    assert!(
        stdout.contains("no `Connections:` and `Requests:` lines to judge"),
        "{stdout}"
    );
}

#[test]
fn the_correct_final_fixture_passes_w03_l21() {
    fixture_passes("w03-l21", "none");
}

#[test]
fn w03_l22_solution_shuts_down_gracefully_on_both_signals() {
    let (output, stdout) = run_checker(&["w03-l22", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    for signal in ["SIGINT", "SIGTERM"] {
        let line = format!(
            "shutdown: {signal} with 1000 connections open and echoes pending: exit 0 within 2000 ms"
        );
        assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
    }
    assert!(stdout.contains("every client saw EOF"), "{stdout}");
    assert!(stdout.contains("result: PASS w03-l22"), "{stdout}");
}

#[test]
fn w03_l22_stub_fails_at_the_shutdown_step() {
    let (output, stdout) = run_checker(&["w03-l22", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l22 at step `shutdown`"),
        "{stdout}"
    );
}

#[test]
fn exiting_on_the_signal_without_flushing_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "exit-on-signal", "shutdown");
    assert!(
        stdout.contains("did not get back every frame they sent before SIGINT"),
        "{stdout}"
    );
}

#[test]
fn closing_with_a_reset_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "reset-on-close", "shutdown");
    assert!(stdout.contains("ended with a reset"), "{stdout}");
}

#[test]
fn the_correct_final_fixture_passes_w03_l22() {
    fixture_passes("w03-l22", "none");
}
