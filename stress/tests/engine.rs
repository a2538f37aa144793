//! The stress engine against small in-process servers, correct and broken,
//! all on 127.0.0.1. Each server handles a connection on its own thread and
//! stops handling it when the client hangs up.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{echo_frames, TestServer};

use stress::frame::{self, FrameDecoder, DEFAULT_MAX_FRAME};
use stress::{run_stress, run_stress_with_progress, FailureKind, StressConfig, StressReport};

/// Reads frames as a non-blocking server would: whatever arrived, then
/// every whole frame in it. `on_frames` gets the frames of one read and
/// returns what to send back (the echo, if the server were correct).
fn serve_reads(mut stream: TcpStream, mut on_frames: impl FnMut(Vec<Vec<u8>>) -> Vec<u8>) {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.push(&buffer[..n]);
        let mut frames = Vec::new();
        while let Ok(Some(payload)) = decoder.pop() {
            frames.push(payload);
        }
        let reply = on_frames(frames);
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

fn stress(
    addr: SocketAddr,
    clients: usize,
    frames: usize,
    seed: u64,
    timeout: Duration,
) -> StressReport {
    let cfg = StressConfig {
        timeout,
        ..StressConfig::new(addr, clients, frames, seed)
    };
    run_stress(&cfg)
}

fn print_details(report: &StressReport) {
    for detail in &report.failure_details {
        eprintln!("{detail}");
    }
    eprintln!("{}", report.summary_line());
}

#[test]
fn correct_echo_server_passes() {
    let server = TestServer::start(echo_frames);
    let report = stress(server.addr, 10, 50, 42, Duration::from_secs(20));
    print_details(&report);
    assert!(report.passed());
    assert_eq!(report.summary_line(), "10 clients, 500 frames, 0 failures");
    assert_eq!(report.failed_clients, 0);
    assert!(report.failure_details.is_empty());
    assert!(report.bytes_echoed > 500 * 4);
}

#[test]
fn raw_byte_echo_passes_too() {
    // Echoing bytes as they come is a correct frame echo.
    let server = TestServer::start(|_, stream| {
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        let mut writer = stream;
        let _ = io::copy(&mut reader, &mut writer);
    });
    let report = stress(server.addr, 5, 40, 7, Duration::from_secs(20));
    print_details(&report);
    assert!(report.passed());
}

#[test]
fn fifty_by_hundred_is_fast_and_reports_progress() {
    let server = TestServer::start(echo_frames);
    let last_progress = AtomicUsize::new(0);
    let cfg = StressConfig::new(server.addr, 50, 100, 1234);
    let report = run_stress_with_progress(&cfg, &|verified| {
        last_progress.store(verified, Ordering::SeqCst);
    });
    print_details(&report);
    eprintln!("50 x 100 took {:?}", report.elapsed);
    assert!(report.passed());
    assert_eq!(report.summary_line(), "50 clients, 5000 frames, 0 failures");
    assert_eq!(last_progress.load(Ordering::SeqCst), 5000);
    // Generous: well under 1 s on a quiet machine, but CI machines stall.
    assert!(
        report.elapsed < Duration::from_secs(10),
        "took {:?}",
        report.elapsed
    );
}

#[test]
fn merged_pipelined_frames_are_a_mismatch_naming_client_and_frame() {
    // Merges the first two frames that arrive in one read into one frame.
    // (Not empty ones: merging an empty frame into another looks exactly
    // like dropping it, which only a timeout can tell.)
    let server = TestServer::start(|_, stream| {
        let mut merged = false;
        serve_reads(stream, |mut frames| {
            if !merged && frames.len() >= 2 && !frames[0].is_empty() && !frames[1].is_empty() {
                let second = frames.remove(1);
                frames[0].extend(second);
                merged = true;
            }
            frames
                .iter()
                .flat_map(|payload| frame::encode(payload))
                .collect()
        })
    });
    let report = stress(server.addr, 10, 50, 42, Duration::from_secs(20));
    print_details(&report);
    assert!(!report.passed());
    let detail = report.failure_details.first().expect("a failure detail");
    assert_eq!(detail.kind, FailureKind::Mismatch);
    let frame = detail.frame.expect("the mismatching frame is named");
    let text = detail.to_string();
    assert!(
        text.starts_with(&format!(
            "client {}, frame {frame}: length mismatch",
            detail.client
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("frames {frame} and {} look merged", frame + 1)),
        "{text}"
    );
    // That frame and every later frame of the client count as failures.
    assert!(report.failures >= 50 - frame);
}

#[test]
fn dropped_pipelined_frame_is_a_mismatch() {
    // Drops the first frame of the first read that holds two or more
    // (unless empty: an empty frame dropped before another empty one would
    // leave the same bytes on the wire).
    let server = TestServer::start(|_, stream| {
        let mut dropped = false;
        serve_reads(stream, |mut frames| {
            if !dropped && frames.len() >= 2 && !frames[0].is_empty() {
                frames.remove(0);
                dropped = true;
            }
            frames
                .iter()
                .flat_map(|payload| frame::encode(payload))
                .collect()
        })
    });
    let report = stress(server.addr, 10, 50, 42, Duration::from_secs(20));
    print_details(&report);
    assert!(!report.passed());
    assert!(report
        .failure_details
        .iter()
        .all(|detail| detail.kind == FailureKind::Mismatch && detail.frame.is_some()));
}

#[test]
fn corrupted_byte_is_reported_with_offset_and_hex_excerpts() {
    // Flips byte 3 of the first frame of 10 bytes or more on connection 0.
    let server = TestServer::start(|connection, stream| {
        let mut corrupted = connection != 0;
        serve_reads(stream, |frames| {
            let mut reply = Vec::new();
            for mut payload in frames {
                if !corrupted && payload.len() >= 10 {
                    payload[3] ^= 0xff;
                    corrupted = true;
                }
                frame::encode_into(&payload, &mut reply);
            }
            reply
        })
    });
    let report = stress(server.addr, 1, 30, 9, Duration::from_secs(20));
    print_details(&report);
    assert_eq!(report.failed_clients, 1);
    let detail = &report.failure_details[0];
    assert_eq!(detail.kind, FailureKind::Mismatch);
    let frame = detail.frame.expect("frame named");
    assert_eq!(report.failures, 30 - frame);
    assert!(
        detail.message.starts_with("payload mismatch at byte 3 of "),
        "{detail}"
    );
    assert!(detail.message.contains("expected "), "{detail}");
    assert!(detail.message.contains(", got "), "{detail}");
    assert!(detail.message.contains(&format!(
        "{} later frames of this client not checked",
        29 - frame
    )));
}

#[test]
fn zero_echoing_server_fails() {
    // Right lengths, wrong bytes.
    let server = TestServer::start(|_, stream| {
        serve_reads(stream, |frames| {
            let mut reply = Vec::new();
            for payload in frames {
                frame::encode_into(&vec![0; payload.len()], &mut reply);
            }
            reply
        })
    });
    let report = stress(server.addr, 3, 20, 5, Duration::from_secs(20));
    assert!(!report.passed());
    assert_eq!(report.failed_clients, 3);
}

#[test]
fn accept_then_close_is_retried_until_it_works() {
    let server = TestServer::start(|connection, stream| {
        if connection < 5 {
            drop(stream);
        } else {
            echo_frames(connection, stream);
        }
    });
    let report = stress(server.addr, 10, 20, 3, Duration::from_secs(20));
    print_details(&report);
    assert!(report.passed());
    assert!(
        report.refused_retries >= 5,
        "{} retries",
        report.refused_retries
    );
}

#[test]
fn nothing_listening_fails_as_refused_within_the_timeout() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
        // Dropped here: the port now refuses connections.
    };
    let started = Instant::now();
    let report = stress(addr, 2, 10, 1, Duration::from_secs(1));
    print_details(&report);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(report.failures, 20);
    assert!(report.refused_retries > 0);
    assert_eq!(report.failure_details.len(), 2);
    assert!(report
        .failure_details
        .iter()
        .all(|d| d.kind == FailureKind::Refused));
}

#[test]
fn server_that_stops_answering_times_out_within_the_timeout() {
    // Echoes 3 frames, then reads and discards everything.
    let server = TestServer::start(|_, mut stream| {
        for _ in 0..3 {
            match frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
                Ok(Some(payload)) if frame::write_frame(&mut stream, &payload).is_ok() => {}
                _ => return,
            }
        }
        let _ = io::copy(&mut stream, &mut io::sink());
    });
    let started = Instant::now();
    let report = stress(server.addr, 4, 20, 8, Duration::from_secs(2));
    print_details(&report);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(report.failures, 4 * 17);
    assert_eq!(report.failed_clients, 4);
    for detail in &report.failure_details {
        assert_eq!(detail.kind, FailureKind::Timeout);
        assert!(
            detail.to_string().starts_with(&format!(
                "client {}: 3 of 20 frames echoed when the 2 s timeout expired",
                detail.client
            )),
            "{detail}"
        );
        assert!(detail.message.contains("stopped answering"), "{detail}");
    }
}

#[test]
fn server_that_closes_after_some_echoes_fails_the_rest_as_closed() {
    let server = TestServer::start(|_, mut stream| {
        for _ in 0..5 {
            match frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
                Ok(Some(payload)) if frame::write_frame(&mut stream, &payload).is_ok() => {}
                _ => return,
            }
        }
        // Half-close: the client sees EOF after exactly 5 echoes. (A plain
        // close with input unread would send a reset, which may discard
        // echoes not yet sent.) Then discard input until the client leaves.
        let _ = stream.shutdown(Shutdown::Write);
        let _ = io::copy(&mut stream, &mut io::sink());
    });
    let report = stress(server.addr, 3, 12, 4, Duration::from_secs(10));
    print_details(&report);
    assert_eq!(report.failures, 3 * 7);
    assert_eq!(report.refused_retries, 0);
    for detail in &report.failure_details {
        assert_eq!(detail.kind, FailureKind::Closed, "{detail}");
        assert_eq!(detail.frame, Some(5));
        assert!(
            detail.message.contains("after 5 of 12 frames were echoed"),
            "{detail}"
        );
    }
}

#[test]
fn server_reset_after_an_echo_fails_the_rest_as_reset() {
    // Echoes frame 0, waits for the client's next frames to arrive, then
    // closes with them unread, which makes the kernel send a reset.
    let server = TestServer::start(|_, mut stream| {
        if let Ok(Some(payload)) = frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
            let _ = frame::write_frame(&mut stream, &payload);
            thread::sleep(Duration::from_millis(300));
        }
    });
    let report = stress(server.addr, 2, 10, 6, Duration::from_secs(10));
    print_details(&report);
    assert_eq!(report.failures, 2 * 9);
    for detail in &report.failure_details {
        assert_eq!(detail.kind, FailureKind::Reset, "{detail}");
        assert_eq!(detail.frame, Some(1));
        assert!(
            detail
                .message
                .starts_with("the server reset the connection"),
            "{detail}"
        );
    }
}

#[test]
fn same_seed_replays_the_same_bytes_on_the_wire() {
    // One client, so one stream: record every byte it sends.
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = |received: Arc<Mutex<Vec<u8>>>| {
        move |_: usize, stream: TcpStream| {
            let Ok(mut reader) = stream.try_clone() else {
                return;
            };
            let mut writer = stream;
            let mut buffer = [0u8; 16 * 1024];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        received.lock().unwrap().extend_from_slice(&buffer[..n]);
                        if writer.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let mut runs = Vec::new();
    for seed in [77, 77, 78] {
        received.lock().unwrap().clear();
        let server = TestServer::start(record(Arc::clone(&received)));
        let report = stress(server.addr, 1, 40, seed, Duration::from_secs(20));
        assert!(report.passed());
        drop(server);
        runs.push(std::mem::take(&mut *received.lock().unwrap()));
    }
    assert!(!runs[0].is_empty());
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
}
