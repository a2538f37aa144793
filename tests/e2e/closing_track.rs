//! The closing track, w02-l09..l11: each solution passes, each stub fails at
//! its lesson's own step, and each probe (`disconnects`, `fd_leak`,
//! `capacity`, `broken_pipes`) fails a poll server with exactly the bug it
//! exists to catch (`broken_closing_server --bug ...`).

use crate::support::*;

const FIXTURE: &str = "broken_closing_server";

/// Every bug of the fixture: `(bug, lesson, step, cause_id)`, the lesson
/// that catches it, the step it fails at and the cause it plants.
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("unwrap-read", "w02-l09", "disconnects", Some("disconnects.reset-ends-the-server")),
    ("drop-on-eof", "w02-l09", "disconnects", Some("disconnects.half-close-drops-echoes")),
    ("leak-fds", "w02-l09", "fd_leak", Some("fd_leak.sockets-kept")),
    ("no-limit", "w02-l10", "capacity", Some("capacity.no-limit")),
    ("stop-after-refuse", "w02-l10", "capacity", Some("capacity.over-the-limit-not-closed")),
    ("no-recovery", "w02-l10", "capacity", Some("capacity.never-comes-back")),
    ("accept-retries-emfile", "w02-l10", "fd_exhaustion", Some("fd_exhaustion.accept-retried-forever")),
    ("emfile-stops-accepting", "w02-l10", "fd_exhaustion", Some("fd_exhaustion.never-recovers")),
    ("exit-on-emfile", "w02-l10", "fd_exhaustion", Some("fd_exhaustion.dies-at-the-fd-limit")),
    ("unwrap-write", "w02-l11", "broken_pipes", Some("broken_pipes.error-ends-the-server")),
];

#[test]
fn every_closing_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in the output, and leaves nothing behind.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, expected)
}

// w02-l09 — Closing cleanly.

#[test]
fn w02_l09_solution_passes_and_proves_half_close_and_no_fd_leak() {
    lesson_solution_passes(
        "w02-l09",
        &[
            "disconnects: reset and close mid-frame survived, 8192 KiB echoed in full after a half-close",
            "fd_leak: 1000 connect/close cycles, open fds",
            "process: 1 thread(s), 0 child processes",
        ],
    );
}

#[test]
fn w02_l09_stub_fails_the_disconnects_probe() {
    lesson_stub_fails_at("w02-l09", "disconnects");
}

#[test]
fn a_correct_closing_server_passes_w02_l09() {
    track_fixture_passes(FIXTURE, "w02-l09", "none");
}

#[test]
fn a_reset_that_unwraps_a_read_error_fails_disconnects() {
    fixture_fails_at(
        "w02-l09",
        "unwrap-read",
        "disconnects",
        &["the server died after a client's reset mid-frame"],
    );
}

#[test]
fn closing_at_eof_with_echoes_pending_fails_the_half_close_case() {
    fixture_fails_at(
        "w02-l09",
        "drop-on-eof",
        "disconnects",
        &["half-close: sent 512 frames", "then the connection closed"],
    );
}

#[test]
fn a_server_that_keeps_closed_sockets_fails_fd_leak_with_the_counts() {
    fixture_fails_at(
        "w02-l09",
        "leak-fds",
        "fd_leak",
        &["open fds after 1000 clients connected and closed"],
    );
}

// w02-l10 — Capacity: --max-clients.

#[test]
fn w02_l10_solution_passes_and_proves_refusal_and_recovery() {
    lesson_solution_passes(
        "w02-l10",
        &[
            "capacity: --max-clients 5, 3 over the limit refused, 2 newcomers served after 2 left",
            "fd_exhaustion: a hard limit of 256 open files and 300 clients: the server survived",
            "stress run 1/1: 50 clients, 5000 frames, 0 failures",
        ],
    );
}

#[test]
fn w02_l10_stub_fails_the_capacity_probe() {
    lesson_stub_fails_at("w02-l10", "capacity");
}

#[test]
fn a_correct_closing_server_passes_w02_l10() {
    track_fixture_passes(FIXTURE, "w02-l10", "none");
}

#[test]
fn a_server_that_ignores_the_limit_fails_capacity() {
    fixture_fails_at(
        "w02-l10",
        "no-limit",
        "capacity",
        &["client 6 was echoed while 5 clients were held (--max-clients 5)"],
    );
}

#[test]
fn a_server_that_stops_accepting_after_a_refusal_fails_capacity() {
    fixture_fails_at(
        "w02-l10",
        "stop-after-refuse",
        "capacity",
        &["over the limit of 5", "expected EOF before any echo"],
    );
}

#[test]
fn a_server_that_never_gets_its_capacity_back_fails_the_recovery_check() {
    fixture_fails_at(
        "w02-l10",
        "no-recovery",
        "capacity",
        &["after 2 of the 5 held clients left, newcomer 1 was never served"],
    );
}

#[test]
fn an_accept_loop_that_retries_emfile_at_once_fails_fd_exhaustion() {
    fixture_fails_at(
        "w02-l10",
        "accept-retries-emfile",
        "fd_exhaustion",
        &[
            "out of file descriptors, the server stopped serving its clients",
            "accept() failed with EMFILE and was called again at once",
            "connections waiting (/proc/",
        ],
    );
}

#[test]
fn a_server_that_never_watches_its_listener_again_after_emfile_fails_fd_exhaustion() {
    fixture_fails_at(
        "w02-l10",
        "emfile-stops-accepting",
        "fd_exhaustion",
        &[
            "after 100 held clients left, freeing their file descriptors, not everyone was served",
            "clients that waited in the accept queue",
        ],
    );
}

#[test]
fn a_server_ended_by_emfile_fails_fd_exhaustion() {
    fixture_fails_at(
        "w02-l10",
        "exit-on-emfile",
        "fd_exhaustion",
        &[
            "the server exited",
            "accept() failing with EMFILE (no file descriptor left) or ENFILE must not end the server",
        ],
    );
}

// w02-l11 — Broken pipes.

#[test]
fn w02_l11_solution_passes_and_proves_500_resets_survived() {
    lesson_solution_passes(
        "w02-l11",
        &[
            "broken_pipes: 500 clients reset mid-echo, the server survived and echoed the next client",
            "stress run 1/1: 50 clients, 5000 frames, 0 failures",
        ],
    );
}

#[test]
fn w02_l11_stub_fails_the_broken_pipes_probe() {
    lesson_stub_fails_at("w02-l11", "broken_pipes");
}

#[test]
fn a_correct_closing_server_passes_w02_l11() {
    track_fixture_passes(FIXTURE, "w02-l11", "none");
}

#[test]
fn an_unwrap_on_a_failed_write_fails_broken_pipes() {
    fixture_fails_at(
        "w02-l11",
        "unwrap-write",
        "broken_pipes",
        &["the server died", "write failed"],
    );
}
