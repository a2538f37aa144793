//! w03-l17 and w03-l18: the epoll lessons and their probes (`epoll`,
//! `burst`, `connect_burst`), each shown to fail a server with exactly its
//! bug (src/bin/broken_epoll_server.rs).

use crate::support::*;

fn epoll_fixture(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_epoll_server").display()
    )
}

const FIXTURE: &str = "broken_epoll_server";

/// Every bug of the fixture: `(bug, lesson, step, cause_id)`, the lesson
/// that catches it, the step it fails at and the cause it plants.
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("poll-with-decoy-epoll", "w03-l17", "epoll", Some("epoll.waits-in-poll")),
    ("two-threads", "w03-l17", "epoll", Some("epoll.extra-threads")),
    ("level-triggered", "w03-l18", "epoll", Some("epoll.not-edge-triggered")),
    ("one-read-per-event", "w03-l18", "burst", Some("burst.read-stall")),
    ("accept-once", "w03-l18", "connect_burst", Some("connect_burst.accept-stall")),
    ("modify-drops-et", "w03-l18", "epoll", Some("epoll.modify-drops-et")),
    ("reset-kills-server", "w03-l18", "epoll", Some("epoll.reset-ends-the-server")),
    ("reset-retries-forever", "w03-l18", "epoll", Some("epoll.reset-starves-others")),
    ("read-error-ignored", "w03-l18", "epoll", Some("epoll.reset-left-open")),
    ("logs-would-block", "w03-l18", "connect_burst", Some("connect_burst.logs-would-block")),
    ("stop-after-short-read", "w03-l18", "disconnects", Some("disconnects.eof-behind-a-frame-missed")),
    ("stop-after-short-read", "w02-l09", "disconnects", Some("disconnects.eof-behind-a-frame-missed")),
];

#[test]
fn every_epoll_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause,
/// and returns the run's steps as text.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, &[])
}

#[test]
fn w03_l17_solution_passes_with_its_proof_lines() {
    let (output, stdout) = run_checker(&["w03-l17", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains("epoll: 1 thread, idle in epoll_wait with 5 connections open"),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS w03-l17"), "{stdout}");
}

#[test]
fn w03_l17_stub_fails_at_the_epoll_step() {
    let (output, stdout) = run_checker(&["w03-l17", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l17 at step `epoll`"),
        "{stdout}"
    );
}

#[test]
fn a_decoy_epoll_beside_a_poll_loop_fails_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l17", "poll-with-decoy-epoll", "epoll");
    assert!(stdout.contains("still waits in poll"), "{stdout}");
}

#[test]
fn a_second_thread_fails_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l17", "two-threads", "epoll");
    assert!(stdout.contains("runs 2 threads"), "{stdout}");
}

#[test]
fn a_correct_level_triggered_server_passes_w03_l17() {
    let tag = "epoll-track-l17-level";
    let exec = epoll_fixture("level-triggered", tag);
    let (output, stdout) = run_checker(&["w03-l17", "--exec", &exec, "--seed", "3"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn w03_l18_solution_passes_with_its_proof_lines() {
    let (output, stdout) = run_checker(&["w03-l18", "--solution", "--seed", "1"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    for line in [
        "epoll: 5 client sockets registered with EPOLLET",
        "epoll: EPOLLET kept on every client registration while a slow reader's echoes backed up and after; a client reset mid-echo survived",
        "epoll: a client reset with echoes pending and one reset mid-frame: both connections closed, the others still served",
        "burst: 256 frames (256 KiB) in one write, all echoed",
        "connect_burst: 500 clients connected at once, all echoed",
        "disconnects: 50 clients sent a frame with EOF right behind it: each echoed, then closed",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    // The readings went on while the solution armed and disarmed EPOLLOUT,
    // and both reset clients' connections were seen closed.
    for text in [
        "backing up (EPOLLOUT armed), draining, drained (EPOLLOUT disarmed)",
        "2 reset connection(s) closed in the server",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
    assert!(stdout.contains("result: PASS w03-l18"), "{stdout}");
}

#[test]
fn w03_l18_stub_fails_at_its_first_step_connect_burst() {
    // connect_burst runs first (see course.yaml): the stub's todo!() in
    // accept_clients kills the server at its first connection.
    let (output, stdout) = run_checker(&["w03-l18", "--seed", "1"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w03-l18 at step `connect_burst`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not yet implemented: gap `accept_clients`"),
        "{stdout}"
    );
}

#[test]
fn a_level_triggered_server_fails_w03_l18_at_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l18", "level-triggered", "epoll");
    assert!(stdout.contains("lack EPOLLET"), "{stdout}");
}

#[test]
fn one_read_per_edge_triggered_event_fails_the_burst_step() {
    let stdout = fixture_fails_at("w03-l18", "one-read-per-event", "burst");
    assert!(stdout.contains("read until WouldBlock"), "{stdout}");
}

#[test]
fn an_edge_triggered_listener_accepting_once_per_event_fails_the_connect_burst_step() {
    let stdout = fixture_fails_at("w03-l18", "accept-once", "connect_burst");
    assert!(stdout.contains("accept until WouldBlock"), "{stdout}");
}

#[test]
fn a_correct_edge_triggered_fixture_passes_w03_l18() {
    let tag = "epoll-track-l18-none";
    let exec = epoll_fixture("none", tag);
    let (output, stdout) = run_checker(&["w03-l18", "--exec", &exec, "--seed", "3"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(tag);
}

/// A short read empties the queue of bytes but may leave a FIN behind them,
/// and edge-triggered epoll reports no new edge for it: a server that stops
/// after the short read never closes such a client.
#[test]
fn stopping_after_a_short_read_misses_a_queued_eof_and_fails_the_disconnects_step() {
    let stdout = fixture_fails_at("w02-l09", "stop-after-short-read", "disconnects");
    assert!(
        stdout.contains("sent one frame with EOF right behind it"),
        "{stdout}"
    );
    assert!(stdout.contains("did not close the connection"), "{stdout}");
}

#[test]
fn an_edge_triggered_server_that_drains_to_wouldblock_passes_the_disconnects_step() {
    let stdout = track_fixture_passes("broken_epoll_server", "w02-l09", "none");
    assert!(
        stdout.contains("disconnects: 50 clients sent a frame with EOF right behind it"),
        "{stdout}"
    );
}

/// The idle clients never make the server change a registration: only a
/// client whose echoes back up does (EPOLLOUT armed, then disarmed), and
/// the modify that does it must keep EPOLLET.
#[test]
fn a_modify_without_epollet_fails_w03_l18_at_the_epoll_step_naming_the_fd_and_events() {
    let stdout = fixture_fails_at("w03-l18", "modify-drops-et", "epoll");
    for text in [
        "while the slow reader's 8177 KiB of echoes back up: 1 of 6 client registrations lack EPOLLET",
        "(the slow reader) in epoll fd",
        "(EPOLLIN|EPOLLOUT|EPOLLERR|EPOLLHUP)",
        "carried EPOLLET at an earlier reading and lost it when its registration changed",
        "Put EPOLLET in every epoll.modify",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
    let fd_and_events =
        regex::Regex::new(r"client fd \d+ \(the slow reader\) in epoll fd \d+: events 0x1d ")
            .unwrap();
    assert!(fd_and_events.is_match(&stdout), "{stdout}");
}

/// mio's style: EPOLLIN|EPOLLOUT|EPOLLET registered once and never
/// modified is correct. The check is EPOLLET at every reading, not that a
/// modify happened.
#[test]
fn an_edge_triggered_server_registering_epollout_once_passes_w03_l18() {
    let stdout = track_fixture_passes("broken_final_server", "w03-l18", "et-out-once");
    assert!(stdout.contains("drained (EPOLLOUT kept)"), "{stdout}");
}

#[test]
fn a_server_whose_error_arm_unwraps_a_reset_fails_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l18", "reset-kills-server", "epoll");
    for text in [
        "the server died after a client reset with its echoes pending",
        "exit code 101",
        "never unwrap() it",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
}

#[test]
fn an_error_arm_that_retries_a_reset_clients_write_forever_fails_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l18", "reset-retries-forever", "epoll");
    for text in [
        "after a client reset with its echoes pending, client 1 of the 6 still connected",
        "0 bytes came back within 5 s",
        "starves every other client",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
}

/// Only the read reports a reset that comes with nothing pending: an error
/// arm that takes it for WouldBlock keeps the dead socket open (the client
/// that reset with echoes pending is still closed, by the failed write).
#[test]
fn a_read_error_taken_for_wouldblock_leaves_a_reset_client_open_and_fails_the_epoll_step() {
    let stdout = fixture_fails_at("w03-l18", "read-error-ignored", "epoll");
    for text in [
        "3000 ms after the client that had sent half a frame reset its connection (an RST), the server still holds it open: fd ",
        "only the read reports this reset",
        "a file descriptor leaked per client that resets",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
}

/// w03-l18 runs the disconnects step for the drain's other end: a FIN
/// queued right behind the last frame brings no new edge.
#[test]
fn stopping_after_a_short_read_fails_w03_l18_at_the_disconnects_step() {
    let stdout = fixture_fails_at("w03-l18", "stop-after-short-read", "disconnects");
    assert!(stdout.contains("did not close the connection"), "{stdout}");
}

/// Every drain ends with WouldBlock: a server that logs it as an error
/// writes a line per wake-up of the listener.
#[test]
fn logging_the_wouldblock_that_ends_an_accept_drain_fails_the_connect_burst_step() {
    let stdout = fixture_fails_at("w03-l18", "logs-would-block", "connect_burst");
    for text in [
        "all 500 clients were echoed, but the server logged WouldBlock (EAGAIN) as an error",
        "accept failed: Resource temporarily unavailable (os error 11)",
        "return without logging",
    ] {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
}
