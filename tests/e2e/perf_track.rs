//! w04-l23: the `perf` step (req/s beside the reference solution in the
//! same run, fds and RSS across three loadtests); each failure shown with a
//! server that has exactly that bug (src/bin/broken_perf_server.rs). The
//! slow fixture sleeps 1 ms per frame, hundreds of times slower than the
//! reference, so the verdict holds on a noisy machine.

use crate::support::*;

#[test]
fn w04_l23_solution_passes_with_both_perf_proof_lines() {
    lesson_solution_passes(
        "w04-l23",
        &[
            "perf: 100 connections, best of 3 interleaved runs of 1.5 s each: reference ",
            "perf: after 3 loadtests open fds ",
            "result: PASS w04-l23",
        ],
    );
}

#[test]
fn w04_l23_stub_fails_at_the_perf_step() {
    lesson_stub_fails_at("w04-l23", "perf");
}

#[test]
fn a_correct_fixture_passes_the_perf_lesson() {
    let stdout = track_fixture_passes("broken_perf_server", "w04-l23", "none");
    assert!(stdout.contains("result: PASS w04-l23"), "{stdout}");
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
fn an_fd_kept_per_connection_fails_the_perf_step_on_growing_fds() {
    track_fixture_fails_at(
        "broken_perf_server",
        "w04-l23",
        "leak-fd",
        "perf",
        &["open fds grow from run to run", "TcpStream is dropped"],
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
        assert_eq!(exit_code(&output), 0, "{lesson}:\n{stdout}");
        assert!(stdout.contains(&format!("PASSED {lesson}")), "{stdout}");
    }
}
