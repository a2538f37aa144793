//! w04-l23: the `perf` step, the audit beside the reference solution, one
//! probe per cost: req/s and user-space CPU per request over interleaved
//! loadtests, fds and RSS across them, a long pipelined burst, idle
//! connections after a burst each, system calls per request (ptrace). Each
//! failure shown with a server that has exactly that bug
//! (src/bin/broken_perf_server.rs, whose `none` is the tuned server); the
//! untouched w03-l22 server, which carries all four costs, fails too.

use crate::support::*;

#[test]
fn w04_l23_solution_passes_with_every_perf_proof_line() {
    lesson_solution_passes(
        "w04-l23",
        &[
            "perf: 100 connections, best of 3 interleaved runs of 1.5 s each: reference ",
            "perf: user-space CPU per request over those runs: reference ",
            "perf: after 3 loadtests open fds ",
            "perf: a 4096 KiB pipelined burst of frames with 16-byte payloads, best of 3 interleaved: reference ",
            "perf: 16 connections, each after a 4096 KiB burst (sent before reading its echo), open and idle for 500 ms: RSS ",
            "perf: system calls per request, traced over 16 connections × 200 rounds of one 64-byte frame each: reference ",
            "result: PASS w04-l23",
        ],
    );
}

#[test]
fn w04_l23_stub_fails_at_the_perf_step() {
    lesson_stub_fails_at("w04-l23", "perf");
}

#[test]
fn a_correct_tuned_fixture_passes_the_perf_lesson() {
    let stdout = track_fixture_passes("broken_perf_server", "w04-l23", "none");
    assert!(stdout.contains("result: PASS w04-l23"), "{stdout}");
}

/// The lesson's starting point changes nothing and must not pass.
#[test]
fn the_w03_l22_server_with_all_four_costs_fails_the_audit() {
    let server = workspace_root().join("solutions/w03-l22");
    let (output, stdout) = run_checker(&[
        "w04-l23",
        "--path",
        server.to_str().expect("utf-8 path"),
        "--seed",
        "7",
    ]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(stdout.contains("FAILED w04-l23 at step `perf`"), "{stdout}");
    assert!(!stdout.contains("result: PASS"), "{stdout}");
}

#[test]
fn a_millisecond_sleep_per_frame_fails_the_perf_step_with_both_rates() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "sleep-per-frame",
        "perf",
        &[
            "too slow beside the reference in the same run: reference ",
            "at least 0.50 needed",
            "profile it under load",
        ],
    );
}

#[test]
fn corrupted_echoes_under_load_fail_the_perf_step() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "corrupt-some-echoes",
        "perf",
        &[
            "FAIL: load run 1: ",
            "every request must be echoed whole and in order under load",
        ],
    );
}

/// Cost 1: a 64 KiB buffer zeroed on every event.
#[test]
fn a_zeroed_read_buffer_per_event_fails_the_perf_step_on_user_cpu_per_request() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "zeroed-read-buffer",
        "perf",
        &[
            "FAIL: your server's own code (user space, outside the kernel) costs too much CPU per request",
            "2.5× the reference's + 0.05 µs)",
            "a buffer zeroed per read",
            "hint 1/6: Measure before you change anything",
        ],
    );
}

/// Cost 2: every event drained until a read fails with EAGAIN.
#[test]
fn reading_until_eagain_fails_the_perf_step_on_system_calls_per_request() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "read-until-eagain",
        "perf",
        &[
            "FAIL: more system calls per request than the reference, counted over 16 connections × 200 rounds",
            "1.25× the reference's",
            "reads per request fail with EAGAIN",
            "register EPOLLRDHUP",
            "yours per request: recvfrom 2.00 (1.00 failing with EAGAIN)",
            "hint 6/6: Count system calls per request",
        ],
    );
}

/// Cost 3: each frame drained from the front of the input buffer.
#[test]
fn a_drain_per_frame_fails_the_perf_step_on_the_pipelined_burst() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "drain-per-frame",
        "perf",
        &[
            "FAIL: a 4096 KiB pipelined burst of frames with 16-byte payloads on one connection takes far longer than on the reference",
            "10× the reference's + 50 ms",
            "in its own code (user space)",
            "O(N²) bytes moved",
            "hint 2/6: Keep a cursor into `inbuf`",
        ],
    );
}

/// Cost 4: buffers keep the capacity a burst grew them to.
#[test]
fn buffers_that_never_shrink_fail_the_perf_step_on_idle_connections() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "keep-buffers",
        "perf",
        &[
            "FAIL: idle connections keep the memory their bursts grew: 16 connections",
            "at most +16384 KiB",
            "kept per idle connection",
            "hint 4/6: `Vec::clear` keeps the capacity",
        ],
    );
}

#[test]
fn an_fd_kept_per_connection_fails_the_perf_step_on_growing_fds() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "leak-fd",
        "perf",
        &["open fds grow from run to run", "TcpStream is dropped"],
    );
}

#[test]
fn state_kept_after_each_close_fails_the_perf_step_on_growing_rss() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "keep-closed-state",
        "perf",
        &[
            "RSS grows from run to run",
            "at most 16384 KiB over the first allowed",
            "per-connection state never removed",
        ],
    );
}

/// The final server stops reading after a short read unless the event
/// carries EPOLLRDHUP. If that rule lost a queued FIN, a half-closed or
/// reset client would be held forever; if it lost bytes, an echo would
/// stall. The earlier lessons' probes for exactly those cases (disconnects,
/// fd leaks, bursts, shutdown with pending echoes) must all pass on it.
#[test]
fn the_final_server_passes_the_earlier_lessons_probes_for_closes_bursts_and_shutdown() {
    let _alone = machine_to_myself();
    let solution = workspace_root().join("solutions/w04-l23");
    for lesson in ["w02-l09", "w03-l18", "w03-l20", "w03-l22"] {
        let (output, stdout) = run_checker(&[
            lesson,
            "--path",
            solution.to_str().expect("utf-8 path"),
            "--seed",
            "11",
        ]);
        assert_eq!(exit_code(&output), 0, "{stdout}");
        assert!(stdout.contains(&format!("PASSED {lesson}")), "{stdout}");
    }
}
