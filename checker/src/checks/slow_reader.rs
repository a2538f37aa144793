//! `slow_reader`: one client sends `bytes` of frames in one go and starts
//! reading only after `delay_ms`, so the server's writes to it fill the
//! socket buffer and come back partial or WouldBlock. Every byte must come
//! back, in order, and other clients must be served meanwhile. Catches a
//! server that ignores the count `write` returns, drops what WouldBlock
//! refused, closes the client for it, or blocks in write and stalls everyone.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx, Readiness};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowReader {
    /// Bytes the slow client sends (whole frames of `frame_size` payload bytes).
    pub bytes: usize,
    /// Payload bytes per frame.
    pub frame_size: usize,
    /// How long the slow client waits before it starts reading, in ms.
    pub delay_ms: u64,
    /// Other clients served while the slow one does not read.
    pub clients: usize,
    /// Frames each other client sends, one echo awaited at a time.
    pub frames: usize,
    /// Bound on the slow client's whole echo once it reads, in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for SlowReader {
    fn default() -> Self {
        SlowReader {
            bytes: 8 * 1024 * 1024,
            frame_size: 16 * 1024,
            delay_ms: 1000,
            clients: 3,
            frames: 10,
            timeout_secs: 30,
            args: Vec::new(),
        }
    }
}

impl Check for SlowReader {
    fn summary(&self) -> String {
        format!(
            "one client sends {} KiB of frames and reads only after {} ms; every byte back in order, {} other clients served meanwhile",
            self.bytes / 1024,
            self.delay_ms,
            self.clients
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let readiness = ctx.readiness();
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let frame_size = self.frame_size.max(1);
        let count = (self.bytes / (frame_size + 4)).max(1);
        let mut wire = Vec::with_capacity(count * (frame_size + 4));
        for _ in 0..count {
            let payload: Vec<u8> = (0..frame_size).map(|_| rng.random::<u8>()).collect();
            stress::frame::encode_into(&payload, &mut wire);
        }
        let timeout = Duration::from_secs(self.timeout_secs);
        let mut slow = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(
                    StepOutcome::fail(format!("slow client: connect failed: {err}"))
                        .cause_as(
                            "slow_reader.no-accept",
                            "the server does not accept connections",
                        )
                        .evidence(Ctx::server_evidence(&mut server)),
                )
            }
        };
        // The slow client writes everything from its own thread (bounded by a
        // write timeout) while it reads nothing.
        let mut writer = slow.try_clone()?;
        writer.set_write_timeout(Some(timeout))?;
        let to_send = wire.clone();
        let sender = std::thread::spawn(move || writer.write_all(&to_send));
        ctx.log.detail(format!(
            "slow client: sending {count} frames ({} bytes) and not reading for {} ms",
            wire.len(),
            self.delay_ms
        ));
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(200.min(self.delay_ms)));
        let mut echoed = 0;
        for client in 1..=self.clients {
            let mut stream = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3))
            {
                Ok(stream) => stream,
                Err(err) => {
                    if let Some(died) = died_meanwhile(&mut server, &readiness) {
                        return Ok(died);
                    }
                    return Ok(StepOutcome::fail(format!(
                    "client {client}: connect failed while the slow client was not reading: {err}"
                ))
                    .cause_as(
                        "slow_reader.stopped-accepting",
                        "the server stopped accepting while one client's echoes were backed up",
                    )
                    .evidence(Ctx::server_evidence(&mut server)));
                }
            };
            let _ = stream.set_nodelay(true);
            for frame in 0..self.frames {
                let sent =
                    stress::frame::encode(format!("client {client} frame {frame}").as_bytes());
                let outcome = match stream.write_all(&sent) {
                    Ok(()) => read_echo(
                        &mut stream,
                        sent.len(),
                        Instant::now() + Duration::from_secs(5),
                    ),
                    Err(err) => Echoed::Failed(Vec::new(), err),
                };
                match outcome {
                    Echoed::Complete(got) if got == sent => echoed += 1,
                    other => {
                        if let Some(died) = died_meanwhile(&mut server, &readiness) {
                            return Ok(died.figure("echoed_meanwhile", echoed));
                        }
                        let failed = StepOutcome::fail(format!(
                            "client {client}, frame {frame}: no exact echo within 5 s while another client was not reading its echoes"
                        ));
                        // Blocked in a write to the slow client, the server
                        // answers nobody: a wrong or cut echo is not that.
                        let failed = if matches!(other, Echoed::TimedOut(_)) {
                            failed.cause_as("slow_reader.blocks-on-write", format!("the server blocks writing to a client that does not read, and serves no one else meanwhile: keep the unsent bytes in that connection's write buffer and go back to {}", readiness.wait))
                        } else {
                            failed
                        };
                        return Ok(failed
                            .evidence(Ctx::server_evidence(&mut server))
                            .figure("echoed_meanwhile", echoed));
                    }
                }
            }
        }
        ctx.log.detail(format!(
            "{echoed} frames echoed to {} other clients while the slow client was not reading",
            self.clients
        ));
        let delay = Duration::from_millis(self.delay_ms);
        if let Some(rest) = delay.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        ctx.log.detail("slow client: reading now");
        let outcome = read_echo(&mut slow, wire.len(), Instant::now() + timeout);
        let sent_ok = match sender.join() {
            Ok(result) => result.err().map(|e| e.to_string()),
            Err(_) => Some("the sending thread panicked".into()),
        };
        let timed_out = matches!(outcome, Echoed::TimedOut(_));
        let (what, got) = match outcome {
            Echoed::Complete(got) if got == wire => (None, got),
            Echoed::Complete(got) => (Some("the echo differs from what was sent".to_string()), got),
            Echoed::Eof(got) => (
                Some("the server closed the connection before echoing everything".to_string()),
                got,
            ),
            Echoed::TimedOut(got) => (
                Some(format!(
                    "the echo stopped coming (bound {} s)",
                    self.timeout_secs
                )),
                got,
            ),
            // A close with unread bytes in the server's buffer arrives as a
            // reset instead of EOF: to the student it is the same mistake.
            Echoed::Failed(got, err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                (
                    Some("the server closed the connection before echoing everything".to_string()),
                    got,
                )
            }
            Echoed::Failed(got, err) => (Some(format!("reading the echo failed: {err}")), got),
        };
        if let Some(what) = what {
            let first_diff = got.iter().zip(&wire).position(|(a, b)| a != b);
            let mut evidence = vec![format!(
                "sent {} bytes ({count} frames of {frame_size} payload bytes); got back {} bytes",
                wire.len(),
                got.len()
            )];
            if let Some(at) = first_diff {
                evidence.push(format!(
                    "first difference at byte {at} (frame {}): bytes were lost or reordered",
                    at / (frame_size + 4)
                ));
            }
            // An echo right so far that stops, the connection open: the
            // rest was either dropped or is kept unwritten. One more frame
            // from the client tells which (a kept rest goes out first).
            let nudged = match (&sent_ok, first_diff, timed_out) {
                (None, None, true) => nudge(&mut slow, &wire[got.len()..]),
                _ => None,
            };
            if let Some(err) = sent_ok {
                evidence.push(format!("sending stopped: {err}"));
            }
            match nudged {
                Some(true) => evidence.push("the slow client then sent one more frame: the echo went on where it had stopped, so the rest was kept but not written when the socket became writable".into()),
                Some(false) => evidence.push("the slow client then sent one more frame: what came back was not the rest of the echo, so the rest was dropped".into()),
                None => {}
            }
            evidence.extend(Ctx::server_evidence(&mut server));
            // Bytes missing from the middle (or skipped, as the nudge
            // showed) were dropped; an echo kept but not written stalled;
            // a close cut it short.
            let id = if first_diff.is_some() || nudged == Some(false) {
                "slow_reader.bytes-lost"
            } else if timed_out {
                "slow_reader.echo-stalled"
            } else {
                "slow_reader.closed-early"
            };
            return Ok(StepOutcome::fail(format!("slow client: {what}"))
                .cause_as(id, format!("when the client is not reading, write() takes only part of the bytes or says WouldBlock: keep whatever it did not take in the connection's write buffer, in order, ask {} for {} while that buffer is not empty, and never close the client for WouldBlock", readiness.wait, readiness.writable))
                .evidence(evidence));
        }
        Ok(StepOutcome::pass(format!(
            "{} bytes echoed in order to a client that read only after {} ms; {echoed} frames to {} others meanwhile",
            wire.len(),
            self.delay_ms,
            self.clients
        ))
        .figure("slow_reader_bytes", wire.len())
        .proof_line(format!(
            "slow_reader: {} KiB echoed in order to a client reading after {} ms, {echoed} frames to {} others meanwhile",
            wire.len() / 1024,
            self.delay_ms,
            self.clients
        )))
    }
}

/// After an echo that stopped short, right so far: one more frame from the
/// slow client, and what comes back first. `Some(true)`: the echo goes on
/// where it stopped (the rest was kept, only not written when the socket
/// became writable); `Some(false)`: something else comes first (the rest
/// was dropped); `None`: nothing comes back within 2 s.
fn nudge(slow: &mut TcpStream, rest: &[u8]) -> Option<bool> {
    slow.write_all(&stress::frame::encode(b"one more frame"))
        .ok()?;
    let want = rest.len().clamp(1, 4096);
    let got = match read_echo(slow, want, Instant::now() + Duration::from_secs(2)) {
        Echoed::Complete(got) | Echoed::TimedOut(got) | Echoed::Eof(got) => got,
        Echoed::Failed(got, _) => got,
    };
    (!got.is_empty()).then(|| rest.starts_with(&got))
}

/// The verdict when another client failed because the server had died:
/// whether its connect was refused or its echo cut short depends only on
/// when the death came, so both say the same thing.
fn died_meanwhile(server: &mut Server, readiness: &Readiness) -> Option<StepOutcome> {
    let death = server.death_notice_within(super::DEATH_GRACE)?;
    Some(
        StepOutcome::fail(format!("{death} while the slow client was not reading"))
            .cause_as("slow_reader.died", format!("a client that does not read must not end the server: when write() takes only part of the bytes or says WouldBlock, keep the rest in that connection's write buffer and go back to {}", readiness.wait))
            .evidence(Ctx::server_evidence(server)),
    )
}
