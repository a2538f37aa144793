//! `shutdown`: opens `connections` connections; each sends one small frame
//! and `heavy` of them also send `heavy_bytes` of frames, and the checker
//! reads nothing, so echoes are still pending in the server when it is
//! signalled (SIGINT or SIGTERM, `signal`). Only then does it read. The
//! server must exit with status 0 within `exit_within_ms`; every frame sent
//! before the signal must come back whole, followed by an orderly close
//! (EOF, not a reset); stdout must carry the shutdown lines in order, with
//! the connection count and the final request count equal to what the
//! checker held and sent.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{kill, Signal};
use regex::Regex;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::describe_status;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// `INT` or `TERM`.
    pub signal: String,
    /// Connections open when the signal is sent.
    pub connections: usize,
    /// Connections that also send `heavy_bytes` of frames (echoes pending).
    pub heavy: usize,
    pub heavy_bytes: usize,
    /// Bound on the exit, from the signal, in milliseconds.
    pub exit_within_ms: u64,
    /// Pause between the last write and the signal, so the server has read
    /// what was sent.
    pub settle_ms: u64,
    pub args: Vec<String>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            signal: "INT".into(),
            connections: 1000,
            heavy: 8,
            heavy_bytes: 4 * 1024 * 1024,
            exit_within_ms: 2000,
            settle_ms: 300,
            args: Vec::new(),
        }
    }
}

/// Payload bytes of the heavy connections' frames.
const HEAVY_PAYLOAD: usize = 16 * 1024;

/// How one connection's reading ended.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Open,
    Eof,
    Reset,
}

impl Check for Shutdown {
    fn summary(&self) -> String {
        format!(
            "SIG{} with {} connections open and echoes pending ({} clients sent {} KiB each, unread): exit 0 within {} ms, every echo whole, then EOF, the shutdown lines",
            self.signal,
            self.connections,
            self.heavy,
            self.heavy_bytes / 1024,
            self.exit_within_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let signal = match self.signal.as_str() {
            "INT" => Signal::SIGINT,
            "TERM" => Signal::SIGTERM,
            other => anyhow::bail!(
                "course.yaml: lesson {}: shutdown signal `{other}` (use INT or TERM)",
                ctx.lesson.id
            ),
        };
        let name = format!("SIG{}", self.signal);
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut held = Vec::with_capacity(self.connections);
        for client in 1..=self.connections {
            match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
                Ok(stream) => held.push(stream),
                Err(err) => {
                    return Ok(StepOutcome::fail(format!(
                        "connection {client} of {}: connect failed: {err}",
                        self.connections
                    ))
                    .cause("the server stopped accepting before the signal was sent")
                    .evidence(Ctx::server_evidence(&mut server)))
                }
            }
        }
        // What each connection sends, and so expects back.
        let heavy = self.heavy.min(held.len());
        let per_heavy = (self.heavy_bytes / (HEAVY_PAYLOAD + 4)).max(1);
        let mut expected: Vec<Vec<u8>> = Vec::with_capacity(held.len());
        let mut frames_sent = 0u64;
        for i in 0..held.len() {
            if i < heavy {
                let mut wire = Vec::with_capacity(per_heavy * (HEAVY_PAYLOAD + 4));
                for f in 0..per_heavy {
                    let payload = vec![(i * 31 + f) as u8; HEAVY_PAYLOAD];
                    stress::frame::encode_into(&payload, &mut wire);
                }
                frames_sent += per_heavy as u64;
                expected.push(wire);
            } else {
                expected.push(stress::frame::encode(
                    format!("shutdown client {i:04}").as_bytes(),
                ));
                frames_sent += 1;
            }
        }
        // Heavy senders write from their own threads (the checker reads
        // nothing yet, so their writes only finish as the server reads).
        let mut senders = Vec::new();
        for (stream, wire) in held.iter().zip(&expected).take(heavy) {
            let mut writer = stream.try_clone()?;
            writer.set_write_timeout(Some(Duration::from_secs(10)))?;
            let wire = wire.clone();
            senders.push(std::thread::spawn(move || writer.write_all(&wire)));
        }
        let mut unsent = 0;
        for (stream, wire) in held.iter_mut().zip(&expected).skip(heavy) {
            if stream.write_all(wire).is_err() {
                unsent += 1;
            }
        }
        for sender in senders {
            if !matches!(sender.join(), Ok(Ok(()))) {
                unsent += 1;
            }
        }
        if unsent > 0 {
            return Ok(StepOutcome::fail(format!(
                "{unsent} connections could not send their frames before the signal"
            ))
            .cause("the server must read every client's frames while their echoes are not read yet: keep the echoes in the connection's output buffer")
            .evidence(Ctx::server_evidence(&mut server)));
        }
        ctx.log.detail(format!(
            "{} connections open; {frames_sent} frames sent ({heavy} clients sent {} KiB each); no echo read yet",
            held.len(),
            per_heavy * (HEAVY_PAYLOAD + 4) / 1024
        ));
        std::thread::sleep(Duration::from_millis(self.settle_ms));
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail("the server died before the signal was sent")
                    .cause("clients that do not read their echoes must never end the server")
                    .evidence(std::iter::once(death).chain(server.output_tail(20))),
            );
        }
        let mark = server.output_mark();
        kill(server.pid, signal)?;
        let signalled = Instant::now();
        ctx.log
            .detail(format!("sent {name} to pid {}; reading now", server.pid));

        // Read everything: heavy connections on threads, the rest in
        // non-blocking passes. Bounded: exit bound plus a margin.
        let read_deadline = signalled + Duration::from_millis(self.exit_within_ms + 3000);
        let mut readers = Vec::new();
        for stream in held.iter().take(heavy) {
            let mut reader = stream.try_clone()?;
            readers.push(std::thread::spawn(move || {
                read_until_end(&mut reader, read_deadline)
            }));
        }
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); held.len()];
        let mut endings = vec![Ending::Open; held.len()];
        for stream in held.iter().skip(heavy) {
            stream.set_nonblocking(true)?;
        }
        let mut exited_at: Option<(Duration, std::process::ExitStatus)> = None;
        let mut chunk = [0u8; 4096];
        loop {
            let mut open = 0;
            for i in heavy..held.len() {
                if endings[i] != Ending::Open {
                    continue;
                }
                loop {
                    match held[i].read(&mut chunk) {
                        Ok(0) => {
                            endings[i] = Ending::Eof;
                            break;
                        }
                        Ok(n) => got[i].extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            endings[i] = Ending::Reset;
                            break;
                        }
                    }
                }
                if endings[i] == Ending::Open {
                    open += 1;
                }
            }
            if exited_at.is_none() {
                if let Some(status) = server.try_exit_status() {
                    exited_at = Some((signalled.elapsed(), status));
                }
            }
            let all_read = open == 0 && readers.iter().all(|r| r.is_finished());
            if (all_read && exited_at.is_some()) || Instant::now() >= read_deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for (i, reader) in readers.into_iter().enumerate() {
            let (bytes, ending) = reader.join().unwrap_or_else(|_| (Vec::new(), Ending::Open));
            got[i] = bytes;
            endings[i] = ending;
        }
        if exited_at.is_none() {
            if let Some(status) = server.wait_exit(Duration::from_millis(200)) {
                exited_at = Some((signalled.elapsed(), status));
            }
        }
        let stdout: Vec<String> = server
            .stdout_since(mark)
            .into_iter()
            .map(|(_, line)| line)
            .collect();

        let quoted = |server: &mut crate::server::Server| {
            std::iter::once(format!(
                "sent {frames_sent} frames on {} connections, then {name}; the checker started reading only after the signal",
                held.len()
            ))
            .chain(Ctx::server_evidence(server))
        };
        // 1. The exit: status 0, in time.
        let exit_ms = match exited_at {
            None => {
                return Ok(StepOutcome::fail(format!(
                    "the server was still running {} ms after {name}",
                    signalled.elapsed().as_millis()
                ))
                .cause(format!("{name} must end the server within {} ms: read it from a signalfd (or a self-pipe) registered with epoll, then flush, close and return from main", self.exit_within_ms))
                .evidence(quoted(&mut server)))
            }
            Some((after, status)) => {
                if !status.success() {
                    return Ok(StepOutcome::fail(format!(
                        "the server ended with {} after {name}, not exit status 0",
                        describe_status(status)
                    ))
                    .cause(format!("without a handler {name} kills the process on the spot: block it and read it from a signalfd, shut down in order, and return from main with status 0"))
                    .evidence(quoted(&mut server)));
                }
                if after > Duration::from_millis(self.exit_within_ms) {
                    return Ok(StepOutcome::fail(format!(
                        "the server exited {} ms after {name} (bound {} ms)",
                        after.as_millis(),
                        self.exit_within_ms
                    ))
                    .cause("shutting down must be quick: flush what is pending while the clients read, and give up on a client that does not read after a grace period")
                    .evidence(quoted(&mut server)));
                }
                after.as_millis()
            }
        };
        // 2. Every echo whole, then an orderly close.
        let lost = (0..held.len()).filter(|&i| got[i] != expected[i]).count();
        let resets = endings.iter().filter(|e| **e == Ending::Reset).count();
        let unclosed = endings.iter().filter(|e| **e == Ending::Open).count();
        if resets > 0 || unclosed > 0 {
            return Ok(StepOutcome::fail(format!(
                "{resets} connections ended with a reset and {unclosed} were never closed, of {} ({lost} of them short of their echoes: a reset also throws away bytes still in flight)",
                held.len()
            ))
            .cause("close each connection in order: after the last byte, shutdown(Write) and close with nothing unread in the socket; SO_LINGER 0 or unread input makes close() send a reset (RST) instead of EOF")
            .evidence(quoted(&mut server))
            .figure("resets", resets));
        }
        if lost > 0 {
            let first = (0..held.len())
                .find(|&i| got[i] != expected[i])
                .unwrap_or(0);
            return Ok(StepOutcome::fail(format!(
                "{lost} of {} connections did not get back every frame they sent before {name} (connection {first}: sent {} bytes, got {} back)",
                held.len(),
                expected[first].len(),
                got[first].len()
            ))
            .cause("echoes still pending at the signal were lost: before closing, write out every connection's pending output (EPOLLOUT until the buffer is empty) instead of exiting at once")
            .evidence(quoted(&mut server))
            .figure("lost", lost));
        }
        // 3. The shutdown lines, in order, with the right counts.
        let wanted = [
            format!(r"^Received {name}, shutting down\.\.\.$"),
            r"^Closing (\d+) connections\.\.\.$".to_string(),
            r"^All connections closed\.$".to_string(),
            r"^Final stats: (\d+) requests served, (\d+) errors$".to_string(),
        ];
        let mut at = 0;
        let mut found: Vec<Option<regex::Captures>> = Vec::new();
        for pattern in &wanted {
            let re = Regex::new(pattern)?;
            let hit = stdout[at..].iter().position(|line| re.is_match(line));
            match hit {
                Some(offset) => {
                    found.push(re.captures(&stdout[at + offset]));
                    at += offset + 1;
                }
                None => {
                    return Ok(StepOutcome::fail(format!(
                        "no line matching `{}` on stdout after {name} (in order after the ones before it)",
                        pattern.trim_start_matches('^').trim_end_matches('$').replace('\\', "")
                    ))
                    .cause("print, in this order: `Received SIGINT, shutting down...` (or SIGTERM), `Closing N connections...`, `All connections closed.`, `Final stats: N requests served, E errors`")
                    .evidence(quoted(&mut server)));
                }
            }
        }
        let number = |i: usize, group: usize| -> u64 {
            found[i]
                .as_ref()
                .and_then(|c| c.get(group))
                .and_then(|m| m.as_str().parse().ok())
                .unwrap_or(0)
        };
        let closing = number(1, 1);
        let served = number(3, 1);
        if closing != held.len() as u64 {
            return Ok(StepOutcome::fail(format!(
                "the server says `Closing {closing} connections...` while the checker held {} open",
                held.len()
            ))
            .cause("N is the number of connections open when the signal arrived")
            .evidence(quoted(&mut server)));
        }
        if served != frames_sent {
            return Ok(StepOutcome::fail(format!(
                "the server says {served} requests served; the checker sent {frames_sent} frames, each echoed"
            ))
            .cause("count one request per frame echoed, over the server's whole life, including the frames echoed during the shutdown")
            .evidence(quoted(&mut server)));
        }
        Ok(StepOutcome::pass(format!(
            "exit 0 {exit_ms} ms after {name}; {frames_sent} frames on {} connections all echoed, then EOF on every one; shutdown lines and counts right",
            held.len()
        ))
        .figure("exit_ms", exit_ms)
        .proof_line(format!(
            "shutdown: {name} with {} connections open and echoes pending: exit 0 within {} ms, {frames_sent} frames all echoed, every client saw EOF, final stats {frames_sent} requests",
            held.len(),
            self.exit_within_ms
        )))
    }
}

/// Reads until EOF, a reset or `deadline`; returns the bytes and how it ended.
fn read_until_end(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, Ending) {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return (got, Ending::Open);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (got, Ending::Eof),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, Ending::Open)
            }
            Err(_) => return (got, Ending::Reset),
        }
    }
}
