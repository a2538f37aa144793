//! The poll track, w02-l05..l08: each solution passes, each stub fails at
//! its lesson's own step, and each probe fails a poll server with exactly
//! the bug it exists to catch (`broken_poll_server --bug ...`).

use crate::support::*;

/// `--exec` for a broken poll server, tagged for `assert_nothing_left`.
fn poll_fixture(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_poll_server").display()
    )
}

const FIXTURE: &str = "broken_poll_server";

/// Every bug of the fixture: `(bug, lesson, step, cause_id)`, the lesson
/// that catches it, the step it fails at and the cause it plants.
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("sequential", "w02-l05", "hold", Some("hold.one-at-a-time")),
    ("blocking-sockets", "w02-l05", "hold", Some("hold.blocking-sockets")),
    ("two-threads", "w02-l05", "process", Some("process.extra-threads")),
    ("stall-on-partial", "w02-l06", "stalled_client", Some("stalled_client.blocks-on-partial-frame")),
    ("busy-loop", "w02-l06", "idle_cpu", Some("idle_cpu.spins")),
    ("busy-loop", "w02-l05", "idle_cpu", Some("idle_cpu.spins")),
    ("logs-would-block", "w02-l05", "hold", Some("hold.logs-while-idle")),
    ("blocking-listener", "w02-l05", "hold", Some("hold.stuck-in-a-blocking-call")),
    ("would-block-closes", "w02-l05", "hold", Some("hold.closed-held")),
    ("reset-ends-the-server", "w02-l05", "hold", Some("hold.reset-ends-the-server")),
    ("accept-retries-errors", "w02-l05", "fd_exhaustion", Some("fd_exhaustion.accept-retried-forever")),
    ("one-frame-per-read", "w02-l07", "frames", Some("frames.pipelined")),
    ("drop-partial-write", "w02-l08", "slow_reader", Some("slow_reader.bytes-lost")),
    ("no-pollout", "w02-l08", "slow_reader", Some("slow_reader.echo-stalled")),
    ("retries-write-errors", "w02-l08", "broken_pipes", Some("broken_pipes.retries-failed-write")),
    ("retries-write-errors", "w02-l11", "broken_pipes", Some("broken_pipes.retries-failed-write")),
    ("pollout-always", "w02-l08", "idle_cpu", Some("idle_cpu.spins")),
];

#[test]
fn every_poll_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in the output, and leaves nothing behind.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, expected)
}

fn solution_passes(lesson: &str, proof_lines: &[&str]) {
    lesson_solution_passes(lesson, proof_lines);
}

fn stub_fails_at(lesson: &str, step: &str) {
    lesson_stub_fails_at(lesson, step);
}

#[test]
fn a_correct_poll_server_passes_w02_l05() {
    let tag = "poll-track-none-l05";
    let (output, stdout) = run_checker(&["w02-l05", "--exec", &poll_fixture("none", tag)]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn w02_l05_solution_passes_and_proves_100_held_nonblocking_on_one_thread() {
    solution_passes(
        "w02-l05",
        &[
            "hold: 100 connections held at once, 100 echoed while all were open",
            "all O_NONBLOCK",
            "hold: connection 1 reset, the other 99 echoed again",
            "process: 1 thread(s), 0 child processes",
        ],
    );
}

/// The stub's `serve` is a `todo!()` reached right after the listening
/// line: the first server step fails with the panic.
#[test]
fn w02_l05_stub_fails_at_start_with_the_todo_panic() {
    let stdout = lesson_stub_fails_at("w02-l05", "start");
    assert!(stdout.contains("gap `serve`"), "{stdout}");
}

/// A listener left blocking: the accept loop sleeps after the last queued
/// client, and no held connection is ever read.
#[test]
fn hold_probe_fails_a_server_whose_listener_blocks() {
    fixture_fails_at(
        "w02-l05",
        "blocking-listener",
        "hold",
        &["(0 echoed)", "stuck in a blocking call"],
    );
}

/// A read's WouldBlock taken for an error closes every connection at its
/// first visit with nothing to read: before its client sends (the held
/// connection sees EOF) or, on a loaded machine where the frame came
/// first, right after its echo (the fd count finds it gone, the client its
/// EOF). Either way the cause is a closed held connection.
#[test]
fn hold_probe_fails_a_server_that_closes_on_would_block() {
    fixture_fails_at(
        "w02-l05",
        "would-block-closes",
        "hold",
        &["the server closed", "should be holding"],
    );
}

/// One client's reset let out of the loop ends the server: the reset case
/// of hold makes the death its verdict, and the reset its cause.
#[test]
fn hold_reset_case_fails_a_server_that_a_reset_ends() {
    fixture_fails_at(
        "w02-l05",
        "reset-ends-the-server",
        "hold",
        &[
            "the server exited",
            "once connection 1 had reset",
            "close that connection, keep serving the others",
        ],
    );
}

/// An accept loop that retries EMFILE at once never gets back to the
/// clients it holds (w02-l05's `accept_clients` pitfall).
#[test]
fn fd_exhaustion_fails_a_poll_server_that_retries_accept_errors() {
    fixture_fails_at(
        "w02-l05",
        "accept-retries-errors",
        "fd_exhaustion",
        &["accept() failed with EMFILE and was called again at once"],
    );
}

/// w02-l05 has no poll(): its spin is told as a loop that never naps, not
/// as a poll() timeout.
#[test]
fn w02_l05_idle_cpu_cause_speaks_of_the_nap() {
    let text = fixture_fails_at(
        "w02-l05",
        "busy-loop",
        "idle_cpu",
        &["the loop spins while nothing happens", "short nap"],
    );
    assert!(!text.contains("no timeout (-1)"), "{text}");
}

#[test]
fn hold_probe_fails_a_server_that_serves_one_client_at_a_time() {
    fixture_fails_at(
        "w02-l05",
        "sequential",
        "hold",
        &[
            "while all 100 connections were held",
            "one client at a time",
        ],
    );
}

#[test]
fn hold_probe_fails_a_poll_server_whose_client_sockets_block() {
    fixture_fails_at(
        "w02-l05",
        "blocking-sockets",
        "hold",
        &[
            "client sockets of the server are blocking (no O_NONBLOCK)",
            "set_nonblocking(true)",
        ],
    );
}

#[test]
fn process_probe_fails_a_poll_server_with_a_second_thread() {
    fixture_fails_at(
        "w02-l05",
        "two-threads",
        "process",
        &["the server has 2 threads", "expected exactly 1"],
    );
}

#[test]
fn w02_l06_solution_passes_with_its_stall_and_idle_cpu_proof() {
    solution_passes(
        "w02-l06",
        &[
            "stalled_client: 50 frames echoed to 5 clients while one was stalled mid-frame",
            "idle_cpu: under 200 ms of CPU in 2000 ms with 10 idle connections",
        ],
    );
}

#[test]
fn w02_l06_stub_fails_the_stalled_client_probe() {
    stub_fails_at("w02-l06", "stalled_client");
}

#[test]
fn stalled_client_probe_fails_a_server_that_blocks_on_half_a_frame() {
    fixture_fails_at(
        "w02-l06",
        "stall-on-partial",
        "stalled_client",
        &[
            "while another client was stalled mid-frame",
            "never block on one socket",
        ],
    );
}

#[test]
fn idle_cpu_probe_fails_a_poll_loop_with_timeout_zero() {
    fixture_fails_at(
        "w02-l06",
        "busy-loop",
        "idle_cpu",
        &[
            "the idle server used",
            "the event loop spins while nothing happens",
        ],
    );
}

#[test]
fn w02_l07_solution_passes_every_framing_case() {
    solution_passes(
        "w02-l07",
        &["frames: 1 byte per write, split length prefixes, empty, 64 pipelined in one write"],
    );
}

#[test]
fn w02_l07_stub_fails_the_frames_probe() {
    stub_fails_at("w02-l07", "frames");
}

#[test]
fn frames_probe_fails_a_poll_server_that_echoes_one_frame_per_read() {
    fixture_fails_at(
        "w02-l07",
        "one-frame-per-read",
        "frames",
        &[
            "pipelined in one write",
            "several frames can arrive in one read()",
        ],
    );
}

#[test]
fn w02_l08_solution_passes_the_slow_reader() {
    solution_passes(
        "w02-l08",
        &["echoed in order to a client reading after 1000 ms, 30 frames to 3 others meanwhile"],
    );
}

#[test]
fn w02_l08_stub_fails_the_slow_reader_probe() {
    stub_fails_at("w02-l08", "slow_reader");
}

#[test]
fn slow_reader_probe_fails_a_server_that_ignores_the_count_write_returns() {
    fixture_fails_at(
        "w02-l08",
        "drop-partial-write",
        "slow_reader",
        &[
            "slow client:",
            "keep whatever it did not take in the connection's write buffer",
            "ask poll() for POLLOUT while that buffer is not empty",
        ],
    );
}

/// A write error retried as if it were EINTR: clients that send a frame
/// and reset while the server is stopped make the echo's write the call
/// that fails, and the server spins on EPIPE, serving no one.
#[test]
fn broken_pipes_probe_fails_a_server_that_retries_write_errors() {
    let failed = track_fixture_fails_as(
        FIXTURE,
        "w02-l08",
        "retries-write-errors",
        "broken_pipes",
        Some("broken_pipes.retries-failed-write"),
    );
    let text = failed.to_string();
    assert!(text.contains("reset"), "{failed}");
    assert!(text.contains("answers no one"), "{failed}");
    assert!(text.contains("on every retry"), "{failed}");
    assert_eq!(quoted_hints(&failed), vec![5], "{failed}");
}

/// The hint numbers a failure quotes.
fn quoted_hints(failed: &serde_json::Value) -> Vec<u64> {
    failed["hints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["number"].as_u64())
        .collect()
}

/// A wrong `interest()` (w02-l08's first gap) is told so by the hint on
/// interest, not by those on the given write loop: an interest without
/// POLLOUT stalls the slow reader's echo (one more frame from the client
/// makes it go on where it stopped), one with POLLOUT at all times spins.
#[test]
fn an_interest_without_pollout_is_given_the_interest_hint_at_slow_reader() {
    let failed = track_fixture_fails_as(
        FIXTURE,
        "w02-l08",
        "no-pollout",
        "slow_reader",
        Some("slow_reader.echo-stalled"),
    );
    let hints = quoted_hints(&failed);
    assert!(hints.contains(&1), "{failed}");
    assert!(!hints.contains(&2) && !hints.contains(&3), "{failed}");
    let evidence = failed["evidence"].to_string();
    assert!(
        evidence.contains("the echo went on where it had stopped"),
        "{failed}"
    );
}

#[test]
fn an_interest_with_pollout_at_all_times_is_given_the_interest_hint_at_idle_cpu() {
    let failed = track_fixture_fails_as(
        FIXTURE,
        "w02-l08",
        "pollout-always",
        "idle_cpu",
        Some("idle_cpu.spins"),
    );
    assert_eq!(quoted_hints(&failed), vec![1], "{failed}");
}

/// What write() did not take, dropped: the hints on the write loop, and
/// the evidence says the rest was dropped, not kept.
#[test]
fn a_dropped_partial_write_is_given_the_write_loop_hints() {
    let failed = track_fixture_fails_as(
        FIXTURE,
        "w02-l08",
        "drop-partial-write",
        "slow_reader",
        Some("slow_reader.bytes-lost"),
    );
    let hints = quoted_hints(&failed);
    assert!(hints.contains(&3) && !hints.contains(&1), "{failed}");
}
