//! The robustness lessons, w02-l12..: each solution passes, each stub fails
//! at its lesson's own step, and each probe fails a poll server with exactly
//! the bug it exists to catch (`broken_robust_server --bug ...`).

use crate::support::*;

/// `--exec` for a broken robust server, tagged for `assert_nothing_left`.
fn robust_fixture(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_robust_server").display()
    )
}

/// Runs `lesson` against the fixture with `bug`; asserts it fails at `step`
/// with every one of `expected` in the output, and leaves nothing behind.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str, expected: &[&str]) {
    track_fixture_fails_at("broken_robust_server", lesson, bug, step, expected);
}

const FIXTURE: &str = "broken_robust_server";

/// Every server bug of the fixture: `(bug, lesson, step, cause_id)`, the
/// lesson that catches it, the step it fails at and the cause it plants.
/// (Its `client-*` modes are clients, judged by w02-l15's `client` step.)
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("no-backpressure", "w02-l12", "backpressure", Some("backpressure.unbounded-buffering")),
    ("never-resume", "w02-l12", "backpressure", Some("backpressure.never-resumes")),
    ("die-on-bad-input", "w02-l13", "bad_input", Some("bad_input.error-ends-the-server")),
    ("silent-close", "w02-l13", "bad_input", Some("bad_input.not-logged")),
    ("max-frame-rejected", "w02-l13", "bad_input", None),
    ("header-alone-waits", "w02-l13", "bad_input", None),
    ("no-idle-timeout", "w02-l14", "idle_timeout", Some("idle_timeout.not-closed")),
    ("timeout-from-connect", "w02-l14", "idle_timeout", Some("idle_timeout.active-client-closed")),
    ("busy-wait-deadline", "w02-l14", "idle_timeout", Some("idle_timeout.spins")),
];

#[test]
fn every_robust_server_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in the output, and leaves nothing behind.
fn planted_fails(lesson: &str, bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, expected)
}

fn fixture_passes(lesson: &str) {
    fixture_passes_as(lesson, "none");
}

/// `lesson` passes against the fixture in mode `bug` (a correct one).
fn fixture_passes_as(lesson: &str, bug: &str) {
    let tag = format!("robust-track-{lesson}-{bug}");
    let (output, stdout) = run_checker(&[lesson, "--exec", &robust_fixture(bug, &tag)]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(
        stdout.contains(&format!("result: PASS {lesson}")),
        "{stdout}"
    );
    assert_nothing_left(&tag);
}

fn solution_passes(lesson: &str, proof_lines: &[&str]) {
    lesson_solution_passes(lesson, proof_lines);
}

fn stub_fails_at(lesson: &str, step: &str) {
    lesson_stub_fails_at(lesson, step);
}

#[test]
fn w02_l12_solution_passes_with_bounded_rss_proof() {
    solution_passes(
        "w02-l12",
        &[
            "backpressure: 64 MiB echoed in order to a client reading after 3000 ms, server RSS grew under 32 MiB",
            "process: 1 thread(s), 0 child processes",
        ],
    );
}

#[test]
fn w02_l12_stub_fails_the_backpressure_probe() {
    stub_fails_at("w02-l12", "backpressure");
}

#[test]
fn a_correct_robust_server_passes_w02_l12() {
    fixture_passes("w02-l12");
}

#[test]
fn backpressure_probe_fails_a_server_that_buffers_without_bound() {
    planted_fails(
        "w02-l12",
        "no-backpressure",
        "backpressure",
        &[
            "the server's RSS grew by",
            "leave POLLIN out of its interest",
        ],
    );
}

#[test]
fn backpressure_probe_fails_a_server_that_never_resumes_reading() {
    planted_fails(
        "w02-l12",
        "never-resume",
        "backpressure",
        &["the echo stopped coming", "resume reading"],
    );
}

#[test]
fn w02_l13_solution_passes_with_bad_input_proof() {
    solution_passes(
        "w02-l13",
        &[
            "bad_input: oversize and garbage closed and logged, 20 idle connects survived, a well-behaved client echoed 5 of 5",
            "process: 1 thread(s), 0 child processes",
        ],
    );
}

#[test]
fn w02_l13_stub_fails_the_bad_input_probe() {
    stub_fails_at("w02-l13", "bad_input");
}

#[test]
fn a_correct_robust_server_passes_w02_l13() {
    fixture_passes("w02-l13");
}

#[test]
fn bad_input_probe_fails_a_server_that_dies_on_an_oversize_header() {
    planted_fails(
        "w02-l13",
        "die-on-bad-input",
        "bad_input",
        &[
            "the server died after the oversize client",
            "never end the server",
        ],
    );
}

#[test]
fn bad_input_probe_fails_a_server_that_closes_bad_clients_silently() {
    planted_fails(
        "w02-l13",
        "silent-close",
        "bad_input",
        &[
            "oversize: the connection was closed, but nothing was written to stderr",
            "worth a log line",
        ],
    );
}

#[test]
fn w02_l14_solution_passes_with_idle_timeout_proof() {
    solution_passes(
        "w02-l14",
        &[
            "idle_timeout: --idle-timeout 2: 4 idle clients closed 1500-4000 ms after their last traffic",
            "process: 1 thread(s), 0 child processes",
        ],
    );
}

#[test]
fn w02_l14_stub_fails_the_idle_timeout_probe() {
    stub_fails_at("w02-l14", "idle_timeout");
}

#[test]
fn a_correct_robust_server_passes_w02_l14() {
    fixture_passes("w02-l14");
}

#[test]
fn idle_timeout_probe_fails_a_server_that_never_closes_idle_clients() {
    planted_fails(
        "w02-l14",
        "no-idle-timeout",
        "idle_timeout",
        &["was still open", "poll() must wake at the nearest deadline"],
    );
}

#[test]
fn idle_timeout_probe_fails_a_server_that_closes_active_clients() {
    planted_fails(
        "w02-l14",
        "timeout-from-connect",
        "idle_timeout",
        &["active client, frame", "not from its connect"],
    );
}

#[test]
fn idle_timeout_probe_fails_a_server_that_busy_waits_for_deadlines() {
    planted_fails(
        "w02-l14",
        "busy-wait-deadline",
        "idle_timeout",
        &["ms of CPU in", "never 0"],
    );
}

#[test]
fn w02_l15_solution_passes_against_all_three_servers() {
    solution_passes(
        "w02-l15",
        &["client: 20 clients x 50 frames verified against a correct server, a corrupted frame named, 5 refused connects retried"],
    );
}

#[test]
fn w02_l15_stub_fails_the_client_probe() {
    stub_fails_at("w02-l15", "client");
}

#[test]
fn a_correct_fixture_client_passes_w02_l15() {
    fixture_passes_as("w02-l15", "client");
}

#[test]
fn client_probe_fails_a_client_that_never_compares_echoes() {
    fixture_fails_at(
        "w02-l15",
        "client-counts-only",
        "client",
        &["it exited 0 (success)", "compare every echoed byte"],
    );
}

#[test]
fn client_probe_fails_a_client_that_names_the_wrong_frame() {
    fixture_fails_at(
        "w02-l15",
        "client-wrong-frame",
        "client",
        &[
            "no line with `expected` names frame",
            "frames are counted from 0 on each connection",
            "naming the client and frame",
        ],
    );
}

/// The payload's text is a help, not part of the interface: a correct
/// client whose payloads are random bytes (some empty) and whose clients
/// count from 1 passes. The checker knows which connection and frame it
/// corrupted.
#[test]
fn a_correct_client_with_random_payloads_passes_w02_l15() {
    fixture_passes_as("w02-l15", "client-random-payloads");
}

#[test]
fn client_probe_fails_a_client_with_random_payloads_that_names_the_wrong_frame() {
    fixture_fails_at(
        "w02-l15",
        "client-random-wrong-frame",
        "client",
        &[
            "no line with `expected` names frame",
            "the client named frame",
            "the checker's server corrupted connection",
        ],
    );
}

/// When the payload says whose it is (`client C frame F`), the line must
/// name that client.
#[test]
fn client_probe_fails_a_client_whose_line_names_another_client_than_its_payload() {
    fixture_fails_at(
        "w02-l15",
        "client-wrong-client",
        "client",
        &["a line with `expected` names frame", "whose payload it was"],
    );
}

/// One byte wrong, the length intact: exactly one failure, the frames
/// after it still verified.
#[test]
fn client_probe_fails_a_client_that_counts_the_frames_after_a_mismatch_as_failed() {
    fixture_fails_at(
        "w02-l15",
        "client-stops-at-mismatch",
        "client",
        &[
            "exactly 1 frame was corrupted",
            "go on verifying the frames after it",
        ],
    );
}

#[test]
fn client_probe_fails_a_client_that_does_not_retry_refused_connects() {
    fixture_fails_at(
        "w02-l15",
        "client-no-retry",
        "client",
        &["closed the first 5 connections at once", "connect again"],
    );
}

/// A refusal retried at once hammers a server at capacity: the waits
/// between attempts must be 50 ms, doubling.
#[test]
fn client_probe_fails_a_client_that_retries_without_backoff() {
    fixture_fails_at(
        "w02-l15",
        "client-no-backoff",
        "client",
        &[
            "closed every connection at once",
            "before retry 1",
            "50 ms before the first, doubling",
        ],
    );
}

/// A server that never stops refusing: the client gives up after its 8
/// attempts and counts every frame failed.
#[test]
fn client_probe_fails_a_client_that_retries_without_end() {
    fixture_fails_at(
        "w02-l15",
        "client-retries-forever",
        "client",
        &[
            "closed every connection at once",
            "make at most CONNECT_ATTEMPTS (8)",
        ],
    );
}

/// A connect refused by the kernel (nothing listening yet) is retried like
/// an accept-then-close.
#[test]
fn client_probe_fails_a_client_that_does_not_retry_a_refused_connect() {
    fixture_fails_at(
        "w02-l15",
        "client-no-connect-retry",
        "client",
        &[
            "a port nothing listens on",
            "it gave up after",
            "retried like a refusal",
        ],
    );
}

/// A connection lost after 3 echoes: that frame and every later one fail.
#[test]
fn client_probe_fails_a_client_that_counts_a_lost_connection_as_one_failure() {
    fixture_fails_at(
        "w02-l15",
        "client-lost-counts-one",
        "client",
        &[
            "closed each connection after 3 echoes",
            "`4 clients, 40 frames, 28 failures`",
            "every later frame of that client failed",
        ],
    );
}

/// L = max_frame is valid: only L > max_frame is bad input.
#[test]
fn bad_input_probe_fails_a_server_that_rejects_a_frame_of_exactly_max_frame() {
    planted_fails(
        "w02-l13",
        "max-frame-rejected",
        "bad_input",
        &[
            "a frame of exactly --max-frame bytes",
            "closed the connection",
            "only L > max_frame is bad input",
        ],
    );
}

/// An empty frame is its 4 header bytes alone: echoed at once.
#[test]
fn bad_input_probe_fails_a_server_that_waits_past_a_lone_header() {
    planted_fails(
        "w02-l13",
        "header-alone-waits",
        "bad_input",
        &[
            "an empty frame (4 header bytes, nothing after)",
            "0 of 4 bytes echoed within 5 s",
        ],
    );
}
