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

const FIXTURE: &str = "broken_final_server";

/// Every bug of the fixture that a lesson fails: `(bug, lesson, step,
/// cause_id)`, the lesson that catches it, the step it fails at and the
/// cause it plants. (`et-out-once` is correct; `small-backlog` passes
/// w03-l20 too: its 10,000 connects get through a backlog of 128, slowly.)
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("epollout-always-armed", "w03-l19", "idle_cpu", Some("idle_cpu.spins")),
    ("drop-partial-write", "w03-l19", "slow_reader", Some("slow_reader.bytes-lost")),
    ("cap-1024", "w03-l20", "c10k", Some("c10k.accept-fails-at-the-fd-limit")),
    ("buffer-per-connection", "w03-l20", "c10k", Some("c10k.memory-per-connection")),
    ("level-triggered-listener", "w03-l20", "fd_exhaustion", Some("fd_exhaustion.spins-at-the-fd-limit")),
    ("fake-stats", "w03-l21", "stats", Some("stats.wrong-connection-counts")),
    ("no-stats", "w03-l21", "stats", Some("stats.no-lines")),
    ("exit-on-signal", "w03-l22", "shutdown", Some("shutdown.pending-echoes-lost")),
    ("reset-on-close", "w03-l22", "shutdown", Some("shutdown.reset-on-close")),
    ("shutdown-drops-unread-input", "w03-l22", "shutdown", Some("shutdown.unread-input-lost")),
    ("no-grace-bound", "w03-l22", "shutdown", Some("shutdown.no-grace-bound")),
    ("errors-not-counted", "w03-l22", "shutdown", Some("shutdown.errors-count")),
    ("second-signal-spins", "w03-l22", "shutdown", Some("shutdown.second-signal-spins")),
    ("eintr-is-fatal", "w03-l22", "shutdown", Some("shutdown.eintr-ends-the-loop")),
    ("no-signal-handling", "w03-l22", "shutdown", Some("shutdown.no-signal-handler")),
    ("lines-on-stderr", "w03-l22", "shutdown", Some("shutdown.lines-missing")),
    ("closing-count-late", "w03-l22", "shutdown", Some("shutdown.closing-count")),
    ("requests-miss-the-shutdown", "w03-l22", "shutdown", Some("shutdown.requests-count")),
    ("every-close-an-error", "w03-l22", "shutdown", Some("shutdown.errors-count")),
    ("shutdown-polls", "w03-l22", "shutdown", Some("shutdown.polls-while-pending")),
    ("close-at-end", "w03-l22", "shutdown", Some("shutdown.closes-late")),
    ("gives-up-at-once", "w03-l22", "shutdown", Some("shutdown.pending-echoes-lost")),
    ("shutdown-failures-not-counted", "w03-l22", "shutdown", Some("shutdown.errors-count")),
];

#[test]
fn every_final_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &["w03-l20"]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause,
/// and returns the run's steps as text.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, &[])
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
    assert!(
        stdout.contains("KiB per connection (bound 8 KiB)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "fd_exhaustion: a hard limit of 256 open files and 300 clients: the server survived"
        ),
        "{stdout}"
    );
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
fn a_64_kib_buffer_per_connection_fails_the_c10k_memory_bound() {
    let _alone = c10k_alone();
    let stdout = fixture_fails_at("w03-l20", "buffer-per-connection", "c10k");
    assert!(
        stdout.contains("KiB per connection, over the bound of 8 KiB"),
        "{stdout}"
    );
    assert!(
        stdout.contains("an idle connection should hold no buffer memory"),
        "{stdout}"
    );
}

#[test]
fn a_level_triggered_listener_that_spins_out_of_fds_fails_fd_exhaustion() {
    let _alone = c10k_alone();
    let stdout = fixture_fails_at("w03-l20", "level-triggered-listener", "fd_exhaustion");
    assert!(
        stdout.contains("out of file descriptors, with")
            && stdout.contains("the server never slept: it was running or waiting for a CPU"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a level-triggered epoll_wait() returns at once, forever"),
        "{stdout}"
    );
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
        for line in [
            format!("shutdown: {signal} with 1000 connections open and echoes pending: exit 0 within 2000 ms"),
            format!("shutdown: {signal} with frames unread in 200 sockets of the stopped server: exit 0 within 2000 ms, all echoed, every client saw EOF, final stats 600 requests, 0 errors"),
            format!("shutdown: {signal} with 2 clients that never read and 1 that reset: exit 0 within 2000 ms, 20 reading clients echoed and saw EOF within 500 ms, final stats 3 errors"),
            format!("shutdown: a second {signal} during the shutdown: exit 0 within 2000 ms, at most 200 ms of CPU until the exit"),
        ] {
            assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
        }
    }
    assert!(
        stdout.contains("every client saw EOF, final stats"),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS w03-l22"), "{stdout}");
}

/// The w04-l23 reference carries the same shutdown (and the same signalfd
/// registration): a second signal must not make it spin either.
#[test]
fn w04_l23_solution_passes_the_shutdown_cases() {
    let solution = workspace_root().join("solutions/w04-l23");
    let (output, stdout) = run_checker(&[
        "w03-l22",
        "--path",
        solution.to_str().expect("utf-8 path"),
        "--seed",
        "5",
    ]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("shutdown: a second SIGINT during the shutdown"),
        "{stdout}"
    );
}

/// The stub's first gap runs first of all in `main`: its todo!() ends
/// the server before it listens, and the FAIL line says so.
#[test]
fn w03_l22_stub_fails_at_the_shutdown_step_on_its_first_gap() {
    let (output, stdout) = run_checker(&["w03-l22", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l22 at step `shutdown`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gap `open_signal_fd`: write it to the contract in its doc comment"),
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
    assert!(stdout.contains("SO_LINGER 0 or unread input"), "{stdout}");
}

#[test]
fn a_shutdown_that_never_reads_what_is_waiting_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "shutdown-drops-unread-input", "shutdown");
    // Case 1 reads nothing new after the signal: it passes; case 2 does not.
    assert!(stdout.contains("case: 2/4"), "{stdout}");
    assert!(
        stdout.contains("did not get back the frames that waited unread in the server's socket when it handled SIGINT"),
        "{stdout}"
    );
    // The fixture's loop takes the ready sockets in order: only those sent
    // while the signal was pending (after it in the ready list) are lost.
    assert!(
        stdout.contains("0 of the 100 that sent them before the signal, 100 of the 100 that sent them while it was pending"),
        "{stdout}"
    );
    // Its FIN (shutdown(Write)) reaches the clients before the reset that
    // close() sends for the unread input: they see EOF, and lose the frames.
    assert!(
        stdout.contains("0 connections ended with a reset"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read every connection once more before closing it"),
        "{stdout}"
    );
}

#[test]
fn a_shutdown_without_a_grace_bound_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "no-grace-bound", "shutdown");
    assert!(stdout.contains("case: 3/4"), "{stdout}");
    assert!(
        stdout.contains("the server was still running")
            && stdout.contains("held by 2 clients that never read their echoes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write pending output only for a grace period"),
        "{stdout}"
    );
}

#[test]
fn final_stats_without_the_abandoned_clients_fail_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "errors-not-counted", "shutdown");
    assert!(stdout.contains("case: 3/4"), "{stdout}");
    assert!(
        stdout.contains("0 errors` after SIGINT, not 3 errors: 2 clients never read and still had echoes unsent when the grace period ended, 1 reset during the shutdown"),
        "{stdout}"
    );
    assert!(
        stdout.contains("E counts the connections closed because of a failure"),
        "{stdout}"
    );
}

#[test]
fn a_signalfd_left_unread_in_the_epoll_set_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "second-signal-spins", "shutdown");
    // The same shutdown with one signal passes (case 3); the second spins.
    assert!(stdout.contains("case: 4/4"), "{stdout}");
    assert!(
        stdout.contains("after a second SIGINT during the shutdown the server used"),
        "{stdout}"
    );
    assert!(stdout.contains("its loop spins"), "{stdout}");
    assert!(stdout.contains("read it until EAGAIN"), "{stdout}");
}

#[test]
fn a_shutdown_loop_that_polls_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "shutdown-polls", "shutdown");
    assert!(stdout.contains("case: 3/4"), "{stdout}");
    assert!(
        stdout.contains("it does not sleep while it waits"),
        "{stdout}"
    );
}

#[test]
fn closing_finished_connections_only_at_the_end_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "close-at-end", "shutdown");
    assert!(stdout.contains("case: 3/4"), "{stdout}");
    assert!(
        stdout.contains("the 20 clients that read had their echo at once but saw EOF only up to"),
        "{stdout}"
    );
    assert!(
        stdout.contains("close each connection as soon as its last echo is written"),
        "{stdout}"
    );
}

#[test]
fn a_shutdown_that_gives_up_at_once_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "gives-up-at-once", "shutdown");
    // The echoes waiting in the server at the signal, more than the
    // kernel's buffers hold, are what one pass of writes cannot deliver.
    assert!(stdout.contains("case: 1/4"), "{stdout}");
    assert!(
        stdout.contains("did not get back every frame they sent before SIGINT"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write out every connection's pending output"),
        "{stdout}"
    );
}

#[test]
fn a_reset_during_the_shutdown_left_out_of_the_errors_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "shutdown-failures-not-counted", "shutdown");
    assert!(stdout.contains("case: 3/4"), "{stdout}");
    assert!(
        stdout.contains("2 errors` after SIGINT, not 3 errors"),
        "{stdout}"
    );
    assert!(
        stdout.contains("an I/O error (a reset, a broken pipe)"),
        "{stdout}"
    );
}

#[test]
fn the_correct_final_fixture_passes_w03_l22() {
    fixture_passes("w03-l22", "none");
}

#[test]
fn a_server_killed_by_the_signal_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "no-signal-handling", "shutdown");
    assert!(
        stdout.contains("the server ended (killed by SIGINT) after SIGINT, not with exit status 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("without a handler SIGINT kills the process on the spot"),
        "{stdout}"
    );
}

#[test]
fn an_eintr_that_ends_the_loop_fails_the_shutdown_step_once_stopped_and_continued() {
    let stdout = fixture_fails_at("w03-l22", "eintr-is-fatal", "shutdown");
    assert!(stdout.contains("case: 2/4"), "{stdout}");
    assert!(
        stdout.contains("(exit code 1) after SIGINT, not with exit status 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Linux makes epoll_wait fail with EINTR even without a signal handler"),
        "{stdout}"
    );
}

#[test]
fn shutdown_lines_on_stderr_fail_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "lines-on-stderr", "shutdown");
    assert!(
        stdout.contains("no line matching `Received SIGINT, shutting down...` on stdout"),
        "{stdout}"
    );
}

#[test]
fn a_closing_count_taken_too_late_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "closing-count-late", "shutdown");
    assert!(
        stdout.contains("while the checker held 1000 open"),
        "{stdout}"
    );
}

#[test]
fn final_stats_without_the_frames_echoed_in_the_shutdown_fail_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "requests-miss-the-shutdown", "shutdown");
    // Case 1's frames were all echoed before the signal; case 2's second
    // half arrives while the signal is pending, so only the shutdown echoes it.
    assert!(stdout.contains("case: 2/4"), "{stdout}");
    assert!(
        stdout.contains("the server says 400 requests served; the checker sent 600 frames"),
        "{stdout}"
    );
}

#[test]
fn counting_every_closed_connection_as_an_error_fails_the_shutdown_step() {
    let stdout = fixture_fails_at("w03-l22", "every-close-an-error", "shutdown");
    assert!(
        stdout
            .contains("1000 errors` after SIGINT, not 0 errors: every client read all its echoes"),
        "{stdout}"
    );
}
