//! The blocking track, w01-l02..l04: each solution passes with a proof that
//! grades, each stub fails, and each of the `frames`, `oversize`,
//! `concurrency` and `pool` probes fails a blocking server with exactly the
//! bug it exists to catch (`broken_blocking_server --bug ...`).

use crate::support::*;

/// `--exec` for a broken blocking server, tagged for `assert_nothing_left`.
fn blocking_fixture(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_blocking_server").display()
    )
}

const FIXTURE: &str = "broken_blocking_server";

/// Every bug of the fixture: `(bug, lesson, step, cause_id)`, the lesson
/// that catches it, the step it fails at and the cause it plants.
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("one-read-per-frame", "w01-l02", "frames", Some("frames.split-read")),
    ("empty-frame-closes", "w01-l02", "frames", Some("frames.empty-frame")),
    ("oversize-echoed", "w01-l02", "oversize", Some("oversize.echoed")),
    ("oversize-exits", "w01-l02", "oversize", Some("oversize.error-ends-the-server")),
    ("oversize-silent", "w01-l02", "oversize", Some("oversize.not-logged")),
    ("limit-exclusive", "w01-l02", "frames", Some("frames.large-frame")),
    ("prefix-little-endian", "w01-l02", "frames", Some("frames.prefix-byte-order")),
    ("one-at-a-time", "w01-l03", "concurrency", Some("concurrency.one-at-a-time")),
    ("one-thread-multiplexed", "w01-l03", "concurrency", Some("concurrency.too-few-threads")),
    ("ignores-workers", "w01-l04", "pool", Some("pool.too-many-at-once")),
    ("drops-queued", "w01-l04", "pool", Some("pool.clients-lost")),
    ("lock-held-while-serving", "w01-l04", "concurrency", Some("pool.lock-held-while-serving")),
    ("drops-before-workers-start", "w01-l04", "frames", Some("pool.drops-unserved")),
];

#[test]
fn every_blocking_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs `lesson` against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in the output, and leaves nothing behind.
fn fixture_fails_at(lesson: &str, bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, lesson, bug, step, expected)
}

/// The solution passes and prints `proof_lines`. Exit 0 also means its
/// proof block matched every one of the lesson's `proof.regex_patterns`:
/// a pass whose proof does not grade is a course bug, exit 2.
fn solution_passes_and_grades(lesson: &str, proof_lines: &[&str]) {
    lesson_solution_passes(lesson, proof_lines);
}

fn stub_fails_at_its_todo(lesson: &str) {
    let stdout = lesson_stub_fails_at(lesson, "start");
    assert!(stdout.contains("a `todo!()` of the stub"), "{stdout}");
}

// --- w01-l02: length-prefixed frames ---

#[test]
fn w01_l02_solution_passes_with_frames_and_oversize_in_its_proof() {
    solution_passes_and_grades(
        "w01-l02",
        &[
            "frames: 1 byte per write, split length prefixes, empty, 64 pipelined in one write, 64 KiB — 73 frames echoed exactly",
            "oversize: a frame of 1001 bytes (--max-frame 1000) closed that connection unechoed, was logged, and the next client was served",
            "unit_tests: the crate's own tests, 6 passed, 0 failed",
        ],
    );
}

#[test]
fn w01_l02_stub_fails() {
    stub_fails_at_its_todo("w01-l02");
}

#[test]
fn one_read_per_frame_fails_the_byte_at_a_time_case() {
    fixture_fails_at(
        "w01-l02",
        "one-read-per-frame",
        "frames",
        &[
            "1 byte per write: the echo differs from what was sent",
            "likely cause: one read() is not one frame",
            "first difference at byte",
        ],
    );
}

#[test]
fn an_empty_frame_taken_for_end_of_file_fails_the_empty_frame_case() {
    fixture_fails_at(
        "w01-l02",
        "empty-frame-closes",
        "frames",
        &[
            "empty frame: the server closed the connection before echoing every frame",
            "frame 1 of 2 (a frame of 0 payload bytes",
            "likely cause: L = 0 is a valid frame",
        ],
    );
}

#[test]
fn an_echoed_oversize_frame_fails_oversize() {
    fixture_fails_at(
        "w01-l02",
        "oversize-echoed",
        "oversize",
        &["bytes of a frame declaring 1001 bytes (over --max-frame 1000)"],
    );
}

#[test]
fn a_server_that_exits_on_oversize_fails_oversize_with_its_exit() {
    fixture_fails_at(
        "w01-l02",
        "oversize-exits",
        "oversize",
        &[
            "the server exited (exit code 1) after a frame over --max-frame",
            "[server:stderr] frame of 1001 bytes exceeds --max-frame 1000; exiting",
        ],
    );
}

#[test]
fn an_oversize_frame_closed_without_a_log_line_fails_oversize() {
    fixture_fails_at(
        "w01-l02",
        "oversize-silent",
        "oversize",
        &["the server wrote nothing to stderr about it"],
    );
}

#[test]
fn a_limit_taken_as_exclusive_fails_the_frame_of_exactly_max_frame() {
    fixture_fails_at(
        "w01-l02",
        "limit-exclusive",
        "frames",
        &[
            "64 KiB frame: the server",
            "likely cause: a frame of exactly --max-frame bytes (65536 by default) is allowed",
        ],
    );
}

#[test]
fn an_echo_with_little_endian_prefixes_is_told_its_byte_order() {
    fixture_fails_at(
        "w01-l02",
        "prefix-little-endian",
        "frames",
        &[
            "1 byte per write: the echo differs from what was sent",
            "likely cause: every payload came back right, but each length prefix byte-reversed",
            "hint 5/5",
        ],
    );
}

/// `checker w01-l02 --path` on a copy of its solution with `from` replaced
/// by `to` in src/main.rs: a crate of its own in a temporary directory (its
/// own package name, built in `target/e2e-crates` so its binary never
/// replaces the solution's).
fn w01_l02_solution_changed(from: &str, to: &str) -> (std::process::Output, String) {
    let solution = workspace_root().join("solutions/w01-l02");
    let copy = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(copy.path().join("src")).unwrap();
    let main = std::fs::read_to_string(solution.join("src/main.rs")).unwrap();
    assert_eq!(
        main.matches(from).count(),
        1,
        "`{from}` once in the solution"
    );
    std::fs::write(copy.path().join("src/main.rs"), main.replace(from, to)).unwrap();
    let manifest = std::fs::read_to_string(solution.join("Cargo.toml"))
        .unwrap()
        .replace(
            "name = \"w01-l02-solution\"",
            "name = \"w01-l02-contract-bug\"",
        );
    std::fs::write(copy.path().join("Cargo.toml"), manifest + "\n[workspace]\n").unwrap();
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        copy.path().join("Cargo.lock"),
    )
    .unwrap();
    let _shared = machine_shared();
    let output = checker()
        .args(["w01-l02", "--path"])
        .arg(copy.path())
        .args(["--seed", "7"])
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/e2e-crates"),
        )
        .output()
        .expect("running the checker");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (output, stdout)
}

#[test]
fn a_clean_goodbye_read_as_an_error_passes_the_wire_and_fails_the_contract_tests() {
    // Over the wire the connection closes the same way either way: only
    // the crate's own tests see that `Ok(None)` became `UnexpectedEof`.
    let (output, stdout) = w01_l02_solution_changed(
        "Ok(0) if filled == 0 => return Ok(None),",
        "Ok(0) if filled == usize::MAX => return Ok(None),",
    );
    assert_eq!(exit_code(&output), 1, "{stdout}");
    for expected in [
        "frames: 1 byte per write, split length prefixes",
        "oversize: a frame of 1001 bytes",
        "FAILED w01-l02 at step `unit_tests`",
        "1 of the crate's tests failed (5 passed): tests::frames_split_one_byte_per_read_come_out_whole",
        "called `Result::unwrap()` on an `Err` value",
        "UnexpectedEof",
        "hint 2/5",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}

#[test]
fn an_interrupted_read_returned_as_an_error_fails_the_contract_tests() {
    // No client can make a blocking read fail with EINTR: the contract test
    // with a reader that is interrupted once is what sees it.
    let (output, stdout) = w01_l02_solution_changed(
        "Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,",
        "",
    );
    assert_eq!(exit_code(&output), 1, "{stdout}");
    assert!(
        stdout.contains("FAILED w01-l02 at step `unit_tests`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tests::an_interrupted_read_is_read_again"),
        "{stdout}"
    );
}

// --- w01-l03: thread per connection ---

#[test]
fn w01_l03_solution_passes_reporting_threads_and_rss_per_connection() {
    solution_passes_and_grades(
        "w01-l03",
        &[
            "concurrency: 100 clients held open at once, each echoed while the others were idle; ",
            " per connection), RSS ",
            "stress run 1/1: 50 clients, 5000 frames, 0 failures",
        ],
    );
}

#[test]
fn w01_l03_stub_fails() {
    stub_fails_at_its_todo("w01-l03");
}

#[test]
fn a_correct_thread_per_connection_server_passes_w01_l03() {
    let tag = "blocking-track-none-l03";
    let (output, stdout) = run_checker(&["w01-l03", "--exec", &blocking_fixture("none", tag)]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_one_at_a_time_server_fails_concurrency_by_timeout() {
    fixture_fails_at(
        "w01-l03",
        "one-at-a-time",
        "concurrency",
        &[
            "client 2 got no echo within 3 s while 1 other client(s) were connected and idle",
            "likely cause: the server serves one client at a time",
        ],
    );
}

#[test]
fn clients_served_by_fewer_threads_than_clients_fail_the_thread_count() {
    fixture_fails_at(
        "w01-l03",
        "one-thread-multiplexed",
        "concurrency",
        &["100 clients held open and echoed, but the server has only 1 thread(s)"],
    );
}

// --- w01-l04: a bounded pool ---

#[test]
fn w01_l04_solution_passes_showing_the_starvation_figures() {
    solution_passes_and_grades(
        "w01-l04",
        &["pool: 10 workers, 200 clients, at most 10 served at once, longest wait "],
    );
}

#[test]
fn w01_l04_stub_fails() {
    stub_fails_at_its_todo("w01-l04");
}

#[test]
fn a_correct_pool_passes_w01_l04() {
    let tag = "blocking-track-none-l04";
    let (output, stdout) = run_checker(&["w01-l04", "--exec", &blocking_fixture("none", tag)]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert!(stdout.contains(", 0 lost"), "{stdout}");
    assert_nothing_left(tag);
}

#[test]
fn a_server_ignoring_workers_serves_too_many_at_once_and_fails_pool() {
    let stdout = fixture_fails_at(
        "w01-l04",
        "ignores-workers",
        "pool",
        &["likely cause: at most N = 10 clients may be served at once"],
    );
    // How many a thread per connection serves at once depends on how fast
    // the 200 connects get through a loaded machine (a full accept queue
    // delays some by a SYN retry): any count above the 10 workers is the bug.
    let served = regex::Regex::new(r"(\d+) clients were served at once with --workers 10")
        .unwrap()
        .captures(&stdout)
        .unwrap_or_else(|| panic!("no count of clients served at once in:\n{stdout}"))[1]
        .parse::<usize>()
        .unwrap();
    assert!(served > 10, "{stdout}");
}

/// The hint course.yaml maps to a cause, quoted by the failure.
fn quotes_hint(failed: &serde_json::Value, number: u64) -> bool {
    failed["hints"]
        .as_array()
        .is_some_and(|hints| hints.iter().any(|h| h["number"] == number))
}

#[test]
fn a_pool_whose_workers_keep_the_lock_while_serving_is_told_so() {
    // Ten workers exist, yet the second client waits while the first is
    // held: the diagnosis is the lock, not "give each client a thread".
    let failed = track_fixture_fails_with_cause(
        "broken_blocking_server",
        "w01-l04",
        "lock-held-while-serving",
        "concurrency",
        "pool.lock-held-while-serving",
    );
    let cause = failed["cause"].as_str().unwrap();
    assert!(
        cause.contains("the queue's lock is held while serving"),
        "{cause}"
    );
    assert!(!cause.contains("its own thread"), "{cause}");
    assert!(quotes_hint(&failed, 2), "{failed}");
}

#[test]
fn a_thread_per_connection_lesson_keeps_its_own_diagnosis_for_one_at_a_time() {
    let failed = track_fixture_fails_with_cause(
        "broken_blocking_server",
        "w01-l03",
        "one-at-a-time",
        "concurrency",
        "concurrency.one-at-a-time",
    );
    assert!(
        failed["cause"].as_str().unwrap().contains("its own thread"),
        "{failed}"
    );
}

#[test]
fn a_pool_that_closes_clients_before_a_worker_takes_them_is_told_so_at_frames() {
    // Its workers are not ready when the first client comes: the frames
    // probe sees a closed connection; the pool probe behind it shows the
    // pool dropping a client it cannot hand over, not a framing bug.
    let failed = track_fixture_fails_with_cause(
        "broken_blocking_server",
        "w01-l04",
        "drops-before-workers-start",
        "frames",
        "pool.drops-unserved",
    );
    let cause = failed["cause"].as_str().unwrap();
    assert!(
        cause.contains("The pool drops the clients it cannot serve now"),
        "{cause}"
    );
    assert!(quotes_hint(&failed, 3), "{failed}");
}

#[test]
fn a_pool_that_drops_queued_clients_fails_pool_counting_the_lost() {
    fixture_fails_at(
        "w01-l04",
        "drops-queued",
        "pool",
        &["clients were lost: closed or reset by the server before any echo"],
    );
}
