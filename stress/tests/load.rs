//! The load generator (`stress::load` and the `loadtest` binary) against
//! small in-process servers on 127.0.0.1, correct and broken. These are
//! correctness tests: counts and exit statuses, never speed.
#![cfg(target_os = "linux")]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use stress::frame::{self, DEFAULT_MAX_FRAME};
mod common;
use common::{echo_frames, TestServer};

use stress::load::LoadProgress;
use stress::{run_load, run_load_with_progress, LoadConfig, LoadReport, LoadStop};

/// Echoes frames, but flips one payload byte of every `every`-th frame on
/// each connection (frames counted from 1, the warm-up included).
fn corrupting(every: usize) -> impl Fn(usize, TcpStream) + Send + Sync + 'static {
    move |_, mut stream| {
        let mut count = 0;
        while let Ok(Some(mut payload)) = frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
            count += 1;
            if count % every == 0 {
                if let Some(last) = payload.last_mut() {
                    *last ^= 0xff;
                }
            }
            if frame::write_frame(&mut stream, &payload).is_err() {
                return;
            }
        }
    }
}

/// Serves the first `served` connections it accepts; accepts every later
/// one and closes it at once (a server at its connection limit).
fn serving_only(served: usize) -> impl Fn(usize, TcpStream) + Send + Sync + 'static {
    move |index, stream| {
        if index < served {
            echo_frames(index, stream);
        } else {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn config(addr: SocketAddr, connections: usize, stop: LoadStop) -> LoadConfig {
    LoadConfig {
        timeout: Duration::from_secs(30),
        ..LoadConfig::new(addr, connections, stop)
    }
}

fn show(report: &LoadReport) {
    eprintln!("{}", report.render_text());
}

#[test]
fn correct_server_verifies_every_request() {
    let server = TestServer::start(echo_frames);
    let report = run_load(&config(server.addr, 20, LoadStop::Requests(2000))).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.connections, 20);
    assert_eq!(report.connections_succeeded, 20);
    assert_eq!(report.connection_success_rate(), 1.0);
    assert_eq!(report.requests_planned, Some(2000));
    assert_eq!(report.requests_sent, 2000);
    assert_eq!(report.requests_verified, 2000);
    assert_eq!(report.errors(), 0);
    assert_eq!(report.latency.count, 2000);
    assert!(report.latency.p50 <= report.latency.p99);
    assert!(report.latency.p99 <= report.latency.p999);
    assert!(report.latency.p999 <= report.latency.max);
    assert!(!report.latency.max.is_zero());
    assert!(report.error_details.is_empty());
    assert!(!report.timed_out);
    let text = report.render_text();
    for line in [
        "Connections: 20",
        "Requests: 2000",
        "Concurrency: 20",
        "Total time: ",
        "Requests/sec: ",
        "Avg latency: ",
        "P50 latency: ",
        "P99 latency: ",
        "P99.9 latency: ",
        "Max latency: ",
        "Errors: 0",
        "Connection success rate: 100.00% (20 of 20",
        "Generator CPU: ",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn byte_stream_echo_and_large_frames_pass() {
    // Echoing bytes as they come is a correct frame echo; frames larger
    // than a socket buffer need the partial-write path.
    let server = TestServer::start(|_, stream| {
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        let mut writer = stream;
        let _ = io::copy(&mut reader, &mut writer);
    });
    let cfg = LoadConfig {
        payload_size: 1 << 20,
        ..config(server.addr, 4, LoadStop::Requests(20))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.requests_verified, 20);
}

#[test]
fn fewer_requests_than_connections_still_proves_every_connection() {
    let server = TestServer::start(echo_frames);
    let report = run_load(&config(server.addr, 10, LoadStop::Requests(3))).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.requests_verified, 3);
    assert_eq!(report.connections_succeeded, 10);
}

#[test]
fn corrupted_echoes_are_counted_as_errors() {
    let server = TestServer::start(corrupting(4));
    let report = run_load(&config(server.addr, 5, LoadStop::Requests(100))).unwrap();
    show(&report);
    assert!(!report.passed());
    // Each connection sends a warm-up and about 20 requests; every 4th
    // frame is corrupted.
    assert!(report.mismatches >= 15, "{} mismatches", report.mismatches);
    assert_eq!(report.errors(), report.mismatches);
    assert_eq!(report.requests_sent, 100);
    assert_eq!(report.requests_verified + report.mismatches, 100);
    assert_eq!(report.connections_succeeded, 5);
    let detail = &report.error_details[0];
    assert!(detail.contains("echo differs at byte"), "{detail}");
}

#[test]
fn every_frame_corrupted_fails_even_the_warm_up() {
    let server = TestServer::start(corrupting(1));
    let report = run_load(&config(server.addr, 3, LoadStop::Requests(30))).unwrap();
    show(&report);
    assert!(!report.passed());
    assert_eq!(report.requests_verified, 0);
    assert_eq!(report.mismatches, 33);
    assert!(report.error_details[0].contains("warm-up"));
}

#[test]
fn connections_closed_before_any_echo_lower_the_success_rate() {
    let server = TestServer::start(serving_only(3));
    let cfg = LoadConfig {
        connect_attempts: 3,
        ..config(server.addr, 6, LoadStop::Requests(60))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(!report.passed());
    assert_eq!(report.connections_succeeded, 3);
    assert_eq!(report.connections_no_echo, 3);
    assert_eq!(report.connections_never_connected, 0);
    assert_eq!(report.connection_success_rate(), 0.5);
    // Two reopenings each for the three refused connections.
    assert_eq!(report.reconnects, 6);
    // The requests all went through the connections that work.
    assert_eq!(report.requests_verified, 60);
    assert_eq!(report.errors(), 0);
    assert!(report
        .render_text()
        .contains("Connection success rate: 50.00% (3 of 6"));
    assert!(report.error_details[0].contains("gave up after 3 attempts"));
}

#[test]
fn a_server_that_closes_mid_run_loses_requests() {
    // Echo 5 frames (the warm-up and 4 requests), then hang up.
    let server = TestServer::start(|_, mut stream| {
        for _ in 0..5 {
            match frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
                Ok(Some(payload)) => {
                    if frame::write_frame(&mut stream, &payload).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
        // Wait for the next request so it is outstanding when we close.
        let _ = frame::read_frame(&mut stream, DEFAULT_MAX_FRAME);
    });
    let report = run_load(&config(server.addr, 2, LoadStop::Requests(100))).unwrap();
    show(&report);
    assert!(!report.passed());
    assert_eq!(report.requests_verified, 8);
    assert_eq!(report.lost, 2);
    assert_eq!(report.not_sent, 100 - 10);
    assert_eq!(report.connections_succeeded, 2);
}

#[test]
fn fixed_rate_sends_the_planned_requests_over_the_duration() {
    let server = TestServer::start(echo_frames);
    let cfg = LoadConfig {
        rate: Some(200.0),
        ..config(server.addr, 10, LoadStop::Duration(Duration::from_secs(1)))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.requests_planned, Some(200));
    assert_eq!(report.requests_sent, 200);
    assert_eq!(report.requests_verified, 200);
    // The last request is due at 0.995 s: the run cannot have been faster.
    assert!(
        report.load_time >= Duration::from_millis(990),
        "{:?}",
        report.load_time
    );
    assert!(report
        .render_text()
        .contains("Offered rate: 200 requests/sec"));
}

#[test]
fn fixed_rate_with_a_request_count() {
    let server = TestServer::start(echo_frames);
    let cfg = LoadConfig {
        rate: Some(1000.0),
        ..config(server.addr, 5, LoadStop::Requests(300))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.requests_verified, 300);
    assert!(report.load_time >= Duration::from_millis(290));
}

#[test]
fn closed_loop_for_a_duration() {
    let server = TestServer::start(echo_frames);
    let cfg = config(
        server.addr,
        4,
        LoadStop::Duration(Duration::from_millis(500)),
    );
    let mut calls = Vec::new();
    let report = run_load_with_progress(&cfg, &mut |p: &LoadProgress| calls.push(*p)).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.requests_planned, None);
    assert!(report.requests_verified > 0);
    assert_eq!(report.requests_sent, report.requests_verified);
    assert!(report.load_time >= Duration::from_millis(490));
    let last = calls.last().expect("progress reported at the end");
    assert_eq!(last.verified, report.requests_verified);
    assert!(last.loading);
}

#[test]
fn several_source_addresses() {
    let server = TestServer::start(echo_frames);
    let cfg = LoadConfig {
        source_addresses: 4,
        ..config(server.addr, 8, LoadStop::Requests(80))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(report.passed());
    assert_eq!(report.source_addresses, 4);
}

#[test]
fn refused_connections_fail_after_their_attempts() {
    // Nothing listens on a port just released.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = LoadConfig {
        connect_attempts: 2,
        ..config(addr, 3, LoadStop::Requests(3))
    };
    let report = run_load(&cfg).unwrap();
    show(&report);
    assert!(!report.passed());
    assert_eq!(report.connections_never_connected, 3);
    assert_eq!(report.connection_success_rate(), 0.0);
    assert_eq!(report.not_sent, 3);
}

#[test]
fn non_loopback_targets_are_refused() {
    let cfg = config("192.0.2.1:7".parse().unwrap(), 1, LoadStop::Requests(1));
    let err = run_load(&cfg).unwrap_err().to_string();
    assert!(err.contains("not a loopback address"), "{err}");
}

// ---- the binary -------------------------------------------------------

fn loadtest(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exits_0_on_a_correct_server() {
    let server = TestServer::start(echo_frames);
    let target = server.addr.to_string();
    let (code, stdout, stderr) = loadtest(&["-c", "10", "-r", "500", &target]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Requests: 500"), "{stdout}");
    assert!(stdout.contains("Errors: 0"), "{stdout}");
    // The progress bar stays off a non-terminal stderr.
    assert!(stderr.is_empty(), "{stderr}");

    let (code, stdout, _) = loadtest(&["-c", "10", "-r", "500", "--json", &target]);
    assert_eq!(code, 0);
    let json = stdout.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert!(json.contains("\"requests_verified\":500"), "{json}");
    assert!(json.contains("\"passed\":true"), "{json}");

    let localhost = format!("localhost:{}", server.addr.port());
    let (code, stdout, _) = loadtest(&["-c", "2", "-d", "300ms", "--rate", "100", &localhost]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("Requests: 30"), "{stdout}");
}

#[test]
fn binary_exits_1_when_connections_fail_or_echoes_are_wrong() {
    let server = TestServer::start(serving_only(2));
    let (code, stdout, _) = loadtest(&["-c", "4", "-r", "40", &server.addr.to_string()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("Connection success rate: 50.00%"),
        "{stdout}"
    );

    let server = TestServer::start(corrupting(2));
    let (code, stdout, _) = loadtest(&["-c", "2", "-r", "20", &server.addr.to_string()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(!stdout.contains("Errors: 0"), "{stdout}");
}

#[test]
fn binary_exits_2_on_usage_errors() {
    for args in [
        &["-c", "10", "-r", "10"][..],                       // no target
        &["-c", "10", "127.0.0.1:9"][..],                    // neither -r nor -d
        &["-c", "10", "-r", "10", "-d", "1", "127.0.0.1:9"], // both
        &["-c", "0", "-r", "10", "127.0.0.1:9"],
        &["-c", "10", "-r", "10", "--rate", "0", "127.0.0.1:9"],
        &["-c", "10", "-d", "5", "--timeout", "5", "127.0.0.1:9"],
        &["-c", "10", "-r", "10", "no-port"],
    ] {
        let (code, _, stderr) = loadtest(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    let (code, _, stderr) = loadtest(&["-c", "1", "-r", "1", "192.0.2.1:7"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
