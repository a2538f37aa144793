//! w04-l24..l26: the `loops` probe (N event loops across cores), the
//! `http`, `http_process`, `http_idle_cpu` and `http_load` probes (and
//! siege) and the `broadcast`, `broadcast_process` and
//! `broadcast_idle_cpu` probes,
//! against the solution, the stub and broken production servers
//! (src/bin/broken_production_server.rs).

use crate::support::*;

const FIXTURE: &str = "broken_production_server";

#[test]
fn w04_l24_solution_passes_with_its_proof_lines() {
    lesson_solution_passes(
        "w04-l24",
        &[
            "loops: --threads 2:",
            "every loop busy under load (each at least 12.5 % of the server's CPU)",
            "loops: throughput in the same run, 64 connections for 3000 ms each: 1 loop ",
            "stress run 1/1: 50 clients, 5000 frames, 0 failures",
        ],
    );
}

#[test]
fn w04_l24_stub_fails_at_the_loops_step() {
    lesson_stub_fails_at("w04-l24", "loops");
}

#[test]
fn a_correct_multi_loop_server_passes_w04_l24() {
    track_fixture_passes(FIXTURE, "w04-l24", "none");
}

#[test]
fn one_thread_serving_every_listener_fails_the_loops_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l24",
        "one-loop-does-all",
        "loops",
        &[
            "of the 2 busiest threads used at least 12.5 % of the server's CPU",
            "one loop does all the work",
            "CPU per thread from /proc/",
        ],
    );
}

/// Every w04-l25 bug of the fixture: `(bug, lesson, step, cause_id)`, the
/// step it fails at and the cause it plants. (w04-l24 and w04-l26 have no
/// rows yet: their tests assert the messages only.)
#[rustfmt::skip]
const PLANTED: &[Planted] = &[
    ("keepalive-broken", "w04-l25", "http", Some("http.closed-before-response")),
    ("no-content-length", "w04-l25", "http", Some("http.no-content-length")),
    ("405-without-allow", "w04-l25", "http", Some("http.405-without-allow")),
    ("http10-keeps-open", "w04-l25", "http", Some("http.http10-kept-open")),
    ("head-404-body", "w04-l25", "http", Some("http.head-with-body")),
    ("no-head-limit", "w04-l25", "http", Some("http.no-head-limit")),
    ("head-limit-after-end", "w04-l25", "http", Some("http.head-limit-waits-for-the-end")),
    ("head-limit-too-small", "w04-l25", "http", Some("http.head-limit-too-small")),
    ("head-limit-exclusive", "w04-l25", "http", Some("http.head-limit-too-small")),
    ("case-sensitive-connection", "w04-l25", "http", Some("http.connection-header-case")),
    ("body-parsed-as-request", "w04-l25", "http", Some("http.body-parsed-as-request")),
    ("body-split-lost", "w04-l25", "http", Some("http.body-split-lost")),
    ("pipelining-one-per-read", "w04-l25", "http", Some("http.pipelined-unanswered")),
    ("connection-close-ignored", "w04-l25", "http", Some("http.not-closed-after-close")),
    ("dotdot-escapes", "w04-l25", "http", Some("http.path-leaves-the-root")),
    ("dot-segment-refused", "w04-l25", "http", Some("http.dot-segment-refused")),
    ("bad-head-closed-silently", "w04-l25", "http", Some("http.closed-without-400")),
    ("content-length-not-a-number-ignored", "w04-l25", "http", Some("http.bad-content-length-accepted")),
    ("content-length-first-wins", "w04-l25", "http", Some("http.bad-content-length-accepted")),
    ("target-without-slash-served", "w04-l25", "http", Some("http.malformed-request-accepted")),
    ("http-thread-per-request", "w04-l25", "http_process", Some("http_process.thread-per-request")),
    ("http-thread-per-connection", "w04-l25", "http_process", Some("http_process.thread-per-connection")),
    ("http-spins-idle", "w04-l25", "http_idle_cpu", Some("http_idle_cpu.spins")),
];

#[test]
fn every_w04_l25_fixture_bug_gets_the_cause_it_plants() {
    every_planted_cause_is_given(FIXTURE, PLANTED, &[]);
}

/// Runs w04-l25 against the fixture with `bug` (the run its row of
/// `PLANTED` shares); asserts it fails at `step` with its planted cause and
/// every one of `expected` in its text.
fn l25_fails_at(bug: &str, step: &str, expected: &[&str]) -> String {
    planted_fails_at(FIXTURE, PLANTED, "w04-l25", bug, step, expected)
}

#[test]
fn w04_l25_solution_passes_with_its_seed_report_figures() {
    lesson_solution_passes(
        "w04-l25",
        &[
            "http: 24 cases: GET and HEAD with Content-Length and Content-Type, 404 (HEAD without a body), 400, 405 with Allow,",
            "heads over 8192 bytes refused, bodies dropped, a Content-Length that is not one number refused",
            "http_process: at most 1 thread(s), 0 child processes, with 8 keep-alive connections idle and under a GET load of 4 clients",
            "http_idle_cpu: under 200 ms of CPU in 2000 ms with 10 keep-alive connections idle and one half-sent request",
            "Availability:            100.00 %",
            "Longest transaction:",
            "http_load: 25 keep-alive users for 5000 ms:",
            "availability 100.00 %, 0 failed",
            "http_load: server RSS ",
        ],
    );
}

/// The stub's first request reaches `serve`'s todo!(): the http step fails
/// with the panic on its FAIL line.
#[test]
fn w04_l25_stub_fails_at_the_http_step_in_serve() {
    let stdout = lesson_stub_fails_at("w04-l25", "http");
    assert!(
        stdout.contains("not yet implemented: gap `serve`"),
        "the FAIL line does not quote serve's todo!():\n{stdout}"
    );
}

#[test]
fn a_correct_http_server_passes_w04_l25() {
    track_fixture_passes(FIXTURE, "w04-l25", "none");
}

#[test]
fn closing_after_every_response_fails_the_http_step() {
    l25_fails_at(
        "keepalive-broken",
        "http",
        &[
            "the server closed the connection without a response",
            "keep the connection open after each response",
        ],
    );
}

#[test]
fn responses_without_content_length_fail_the_http_step() {
    l25_fails_at(
        "no-content-length",
        "http",
        &[
            "a response without Content-Length",
            "every response needs `Content-Length: <body bytes>`",
        ],
    );
}

#[test]
fn a_405_without_allow_fails_the_http_step() {
    l25_fails_at(
        "405-without-allow",
        "http",
        &[
            "DELETE /notes.txt: a 405 without an `Allow` header",
            "a 405 response must say which methods are served: `Allow: GET, HEAD`",
        ],
    );
}

#[test]
fn an_http10_request_kept_open_fails_the_http_step() {
    l25_fails_at(
        "http10-keeps-open",
        "http",
        &[
            "GET /notes.txt HTTP/1.0, without `Connection: keep-alive`: the connection was still open 2 s after the response",
            "HTTP/1.0 closes the connection after each response unless the request says `Connection: keep-alive`",
        ],
    );
}

#[test]
fn a_body_after_the_404_of_a_head_request_fails_the_http_step() {
    l25_fails_at(
        "head-404-body",
        "http",
        &[
            "HEAD /missing.html: 10 bytes followed the 404's head",
            "the answer to HEAD is a head only, whatever its status",
        ],
    );
}

#[test]
fn no_limit_on_the_request_head_fails_the_http_step() {
    l25_fails_at(
        "no-head-limit",
        "http",
        &[
            "a whole request head of 8193 bytes (the limit is 8192): status line \"HTTP/1.1 200 OK\", expected 400",
            "a request head longer than 8192 bytes is answered `400 Bad Request` and the connection closed",
        ],
    );
}

#[test]
fn a_head_limit_checked_only_once_the_head_ends_fails_the_http_step() {
    l25_fails_at(
        "head-limit-after-end",
        "http",
        &[
            "a request head that never ends (16384 bytes sent): no whole response in time",
            "without waiting for its end: once 8192 bytes hold no blank line, the head is too long",
        ],
    );
}

#[test]
fn a_head_limit_under_8_kib_fails_the_http_step() {
    l25_fails_at(
        "head-limit-too-small",
        "http",
        &[
            "a request head of exactly 8192 bytes (the limit): status line \"HTTP/1.1 400 Bad Request\", expected 200",
            "a request head of up to 8192 bytes is served",
        ],
    );
}

#[test]
fn a_head_of_exactly_8_kib_refused_fails_the_http_step() {
    l25_fails_at(
        "head-limit-exclusive",
        "http",
        &[
            "a request head of exactly 8192 bytes (the limit): status line \"HTTP/1.1 400 Bad Request\", expected 200",
            "request line, headers and the blank line together",
        ],
    );
}

#[test]
fn a_case_sensitive_connection_header_fails_the_http_step() {
    l25_fails_at(
        "case-sensitive-connection",
        "http",
        &[
            "GET with `connection: close` (the header name in lower case): the connection was still open 2 s after the response",
            "header names are case-insensitive",
        ],
    );
}

#[test]
fn a_body_parsed_as_the_next_request_fails_the_http_step() {
    l25_fails_at(
        "body-parsed-as-request",
        "http",
        &[
            "the second response carries notes.txt: the POST's body was answered as a request",
            "a request's body (Content-Length bytes after its head, whatever the method) is dropped",
        ],
    );
}

#[test]
fn the_rest_of_a_body_in_a_later_read_parsed_as_a_request_fails_the_http_step() {
    l25_fails_at(
        "body-split-lost",
        "http",
        &[
            "GET /notes.txt after the body: status line \"HTTP/1.1 400 Bad Request\"",
            "came in a second write, right before this GET",
            "a body may arrive over several reads: drop what has come, and remember how much is still to come",
        ],
    );
}

#[test]
fn one_request_answered_per_read_fails_the_http_step() {
    l25_fails_at(
        "pipelining-one-per-read",
        "http",
        &[
            "pipelined response 2 of 3 (notes.txt): no whole response in time",
            "one read may hold several requests: answer each, in order, before waiting again",
        ],
    );
}

#[test]
fn a_connection_kept_after_connection_close_fails_the_http_step() {
    l25_fails_at(
        "connection-close-ignored",
        "http",
        &[
            "GET with `Connection: close`: the connection was still open 2 s after the response",
            "after a request with `Connection: close`, close the connection once the response is written",
        ],
    );
}

#[test]
fn a_target_glued_to_the_root_with_its_dotdot_fails_the_http_step() {
    l25_fails_at(
        "dotdot-escapes",
        "http",
        &[
            "GET /../secret.txt (secret.txt lies beside the root): status line \"HTTP/1.1 200 OK\", and the body holds secret.txt",
            "a `..` segment climbs out of the document root",
        ],
    );
}

#[test]
fn a_dot_segment_refused_fails_the_http_step() {
    l25_fails_at(
        "dot-segment-refused",
        "http",
        &[
            "GET /./notes.txt (a `.` segment): status line \"HTTP/1.1 404 Not Found\", expected 200 with notes.txt",
            "a `.` segment names the directory it is in",
        ],
    );
}

#[test]
fn closing_an_unframed_request_without_its_400_fails_the_http_step() {
    l25_fails_at(
        "bad-head-closed-silently",
        "http",
        &[
            "a whole request head of 8193 bytes (the limit is 8192): the server closed the connection without a response",
            "answer 400 before closing",
        ],
    );
}

#[test]
fn a_content_length_that_is_not_a_number_taken_as_0_fails_the_http_step() {
    l25_fails_at(
        "content-length-not-a-number-ignored",
        "http",
        &[
            "GET /notes.txt with `Content-Length: twelve`: status line \"HTTP/1.1 200 OK\", expected 400",
            "a request whose Content-Length is not one number cannot be framed",
        ],
    );
}

#[test]
fn the_first_of_two_disagreeing_content_lengths_taken_fails_the_http_step() {
    l25_fails_at(
        "content-length-first-wins",
        "http",
        &[
            "GET /notes.txt with two Content-Length headers that disagree (4 and 6, then 6 body bytes): status line \"HTTP/1.1 200 OK\", expected 400",
            "two Content-Length headers with different values are not one number",
        ],
    );
}

#[test]
fn a_target_without_its_slash_served_fails_the_http_step() {
    l25_fails_at(
        "target-without-slash-served",
        "http",
        &[
            "a request target without its leading `/` (`GET notes.txt HTTP/1.1`): status line \"HTTP/1.1 200 OK\", expected 400 (or 404)",
            "a request target is a path beginning with `/`",
        ],
    );
}

#[test]
fn a_thread_per_http_request_fails_the_http_process_step() {
    l25_fails_at(
        "http-thread-per-request",
        "http_process",
        &[
            "with 4 clients sending GET requests back to back for 1500 ms (at most 1 with its connections idle); at most 1 allowed",
            "a thread per request",
            "readings above 1)",
        ],
    );
}

#[test]
fn a_thread_per_http_connection_fails_the_http_process_step() {
    l25_fails_at(
        "http-thread-per-connection",
        "http_process",
        &[
            "the server had 9 threads with 8 keep-alive connections open and idle; at most 1 allowed",
            "a thread per connection",
        ],
    );
}

#[test]
fn an_http_loop_that_spins_while_idle_fails_the_http_idle_cpu_step() {
    l25_fails_at(
        "http-spins-idle",
        "http_idle_cpu",
        &[
            "with 10 keep-alive connections idle and one half-sent request (bound: 200 ms",
            "the event loop spins while nothing happens",
        ],
    );
}

/// The lesson's Verify section: siege in benchmark mode, 25 users, against
/// the reference solution. Fails (never skips) when siege is missing.
#[test]
fn siege_reports_full_availability_against_the_w04_l25_solution() {
    use std::io::BufRead;
    let which = std::process::Command::new("sh")
        .args(["-c", "command -v siege"])
        .output()
        .expect("sh runs");
    assert!(
        which.status.success(),
        "siege is required (test.sh installs it: apt-get install -y siege)"
    );
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "w04-l25-solution"])
        .current_dir(workspace_root())
        .status()
        .expect("cargo runs");
    assert!(built.success(), "building w04-l25-solution failed");
    let root = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        root.path().join("index.html"),
        "<h1>siege</h1>\n".repeat(50),
    )
    .expect("index.html written");
    let binary = workspace_root().join("target/release/w04-l25-solution");
    let mut server = std::process::Command::new(&binary)
        .args(["--port", "0", "--root"])
        .arg(root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the solution starts");
    let mut first = String::new();
    let stdout = server.stdout.take().expect("piped stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a listening line");
    let addr = first.trim().trim_start_matches("listening on ").to_string();
    let url = format!("http://{addr}/index.html");
    // -r (repetitions per user) rather than -t: some siege 4.0 builds hang
    // at the end of a -t run.
    let output = std::process::Command::new("timeout")
        .args(["120", "siege", "-b", "-c", "25", "-r", "200", &url])
        .output()
        .expect("siege runs");
    let _ = server.kill();
    let _ = server.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let figure = |name: &str| -> Option<f64> {
        let re = regex::Regex::new(&format!(r#"(?i)"?{name}"?:\s*([0-9.]+)"#)).unwrap();
        re.captures(&text)?.get(1)?.as_str().parse().ok()
    };
    assert_eq!(
        figure("availability"),
        Some(100.0),
        "siege availability not 100 %:\n{text}"
    );
    assert_eq!(
        figure("failed[_ ]transactions"),
        Some(0.0),
        "siege saw failed transactions:\n{text}"
    );
    assert_eq!(
        figure("transactions"),
        Some(5000.0),
        "siege did not complete 25 x 200 transactions:\n{text}"
    );
}

#[test]
fn w04_l26_solution_passes_every_tier_and_drops_the_slow_subscriber() {
    lesson_solution_passes(
        "w04-l26",
        &[
            "broadcast: 500 subscribers: connection success 100.0 % (500/500), delivery 100.0 % (4990/4990 codes), none back to the sender",
            "the other got every byte, the stalled one was disconnected",
            "broadcast_process: at most 1 thread(s), 0 child processes, with 8 subscribers idle and while frames were broadcast to them",
            "broadcast_idle_cpu: under 200 ms of CPU in 2000 ms with 10 clients connected and idle",
        ],
    );
}

#[test]
fn w04_l26_stub_fails_at_the_broadcast_step() {
    lesson_stub_fails_at("w04-l26", "broadcast");
}

#[test]
fn a_correct_broadcast_server_passes_w04_l26() {
    track_fixture_passes(FIXTURE, "w04-l26", "broadcast-none");
}

#[test]
fn a_blocking_write_to_a_slow_subscriber_fails_the_broadcast_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l26",
        "slow-subscriber-stalls",
        "broadcast",
        &[
            "a reading subscriber got only",
            "one subscriber that never reads stalled the others",
        ],
    );
}

#[test]
fn sending_a_frame_back_to_its_sender_fails_the_broadcast_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l26",
        "echo-to-sender",
        "broadcast",
        &["the publisher received", "skip the sender's own connection"],
    );
}

#[test]
fn a_thread_per_subscriber_fails_the_broadcast_process_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l26",
        "broadcast-thread-per-connection",
        "broadcast_process",
        &[
            "threads with 8 subscribers and a publisher connected and idle; at most 1 allowed",
            "a thread per connection",
        ],
    );
}

#[test]
fn a_thread_per_fan_out_fails_the_broadcast_process_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l26",
        "broadcast-thread-per-frame",
        "broadcast_process",
        &[
            "1024-byte frames broadcast to 8 subscribers for 1500 ms (at most 1 with its connections idle); at most 1 allowed",
            "a thread per frame",
        ],
    );
}

#[test]
fn a_broadcast_loop_that_spins_while_idle_fails_the_broadcast_idle_cpu_step() {
    track_fixture_fails_at(
        FIXTURE,
        "w04-l26",
        "broadcast-spins-idle",
        "broadcast_idle_cpu",
        &[
            "with 10 clients connected and idle (bound: 200 ms",
            "the event loop spins while nothing happens",
        ],
    );
}
