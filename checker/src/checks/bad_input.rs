//! `bad_input`: a well-behaved client stays connected and must get an exact
//! echo before, between and after three kinds of bad clients, each on its
//! own connection:
//!
//! - `idle`: `idle_connections` connect, send nothing, stay a while, then
//!   hang up (they must not stall the server or kill it);
//! - `oversize`: a header announcing `max_frame + 1` bytes, then some of them;
//! - `garbage`: random bytes (seeded) whose first four decode to a length
//!   above `max_frame`.
//!
//! The oversize and garbage connections must be closed by the server (EOF or
//! reset) within `close_timeout_secs` with nothing echoed, and the server
//! must write something to stderr after the bad bytes were sent (a server
//! that logs each connect is given 300 ms to do so before the mark).
//!
//! Last, the edges of the valid range on a fresh connection: an empty frame
//! alone (4 bytes) and a frame of exactly `max_frame` bytes, its header
//! sent 100 ms before its payload, each echoed exactly within 5 s (a server
//! that takes `L == max_frame` for oversize, or waits for a fifth byte
//! before it looks at a header, fails here).

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::frame_client::{connect, read_until_closed};
use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BadInput {
    /// The server's --max-frame (not passed: the default is assumed).
    pub max_frame: u32,
    /// Connections that connect and send nothing.
    pub idle_connections: usize,
    /// How long the idle connections stay, in ms.
    pub idle_ms: u64,
    /// Bytes of garbage sent.
    pub garbage_bytes: usize,
    /// Bound on the server closing a bad connection, in seconds.
    pub close_timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for BadInput {
    fn default() -> Self {
        BadInput {
            max_frame: 65536,
            idle_connections: 20,
            idle_ms: 500,
            garbage_bytes: 4096,
            close_timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

/// The well-behaved client: one exact echo, or why not.
fn good_echo(good: &mut TcpStream, round: &mut usize) -> Option<String> {
    *round += 1;
    let frame = stress::frame::encode(format!("well-behaved client, frame {round}").as_bytes());
    if let Err(err) = good.write_all(&frame) {
        return Some(format!("sending frame {round} failed: {err}"));
    }
    match read_echo(good, frame.len(), Instant::now() + Duration::from_secs(5)) {
        Echoed::Complete(got) if got == frame => None,
        Echoed::Complete(_) => Some(format!("frame {round}: the echo differs")),
        Echoed::Eof(_) => Some(format!("frame {round}: the server closed the connection")),
        Echoed::TimedOut(got) => Some(format!(
            "frame {round}: {} of {} bytes echoed within 5 s",
            got.len(),
            frame.len()
        )),
        Echoed::Failed(_, err) => Some(format!("frame {round}: reading failed: {err}")),
    }
}

/// The frames at the edges of the valid range, on a fresh connection: an
/// empty frame alone (its 4 header bytes are a whole frame), then one of
/// exactly `max_frame` bytes (allowed: only `L > max_frame` is bad input)
/// whose header arrives alone, 100 ms before its payload. Each must come
/// back exactly within 5 s. `Some(what went wrong)` otherwise.
fn edge_frames(addr: std::net::SocketAddr, max_frame: u32) -> Option<String> {
    let mut edge = match connect(addr) {
        Ok(stream) => stream,
        Err(err) => return Some(format!("connecting failed: {err}")),
    };
    let cases: [(&str, Vec<u8>); 2] = [
        ("an empty frame (4 header bytes, nothing after)", Vec::new()),
        (
            "a frame of exactly --max-frame bytes, its header sent alone first",
            vec![b'm'; max_frame as usize],
        ),
    ];
    for (what, payload) in cases {
        let frame = stress::frame::encode(&payload);
        let sent = edge.write_all(&frame[..4]).and_then(|()| {
            if frame.len() > 4 {
                std::thread::sleep(Duration::from_millis(100));
                edge.write_all(&frame[4..])
            } else {
                Ok(())
            }
        });
        if let Err(err) = sent {
            return Some(format!("{what}: sending failed: {err}"));
        }
        match read_echo(
            &mut edge,
            frame.len(),
            Instant::now() + Duration::from_secs(5),
        ) {
            Echoed::Complete(got) if got == frame => {}
            Echoed::Complete(_) => return Some(format!("{what}: the echo differs")),
            Echoed::Eof(got) => {
                return Some(format!(
                    "{what}: the server closed the connection after {} of {} bytes",
                    got.len(),
                    frame.len()
                ))
            }
            Echoed::TimedOut(got) => {
                return Some(format!(
                    "{what}: {} of {} bytes echoed within 5 s",
                    got.len(),
                    frame.len()
                ))
            }
            Echoed::Failed(_, err) => return Some(format!("{what}: reading failed: {err}")),
        }
    }
    None
}

/// One client's bad input ending the whole server.
const ERROR_ENDS_THE_SERVER: &str = "bad_input.error-ends-the-server";

impl BadInput {
    fn disturbed(&self, server: &mut Server, after: &str, what: String) -> StepOutcome {
        let (message, cause_id, cause) = match server.death_notice() {
            Some(death) => (
                format!("the server died after {after}: {death}"),
                ERROR_ENDS_THE_SERVER,
                "one client's bad input must never end the server: handle it as an error of that connection (log it, close it) and keep serving",
            ),
            None => (
                format!("the well-behaved client was disturbed after {after}: {what}"),
                "bad_input.others-disturbed",
                "a bad client must only cost its own connection: close it, and keep every other connection (and its buffers) as it was",
            ),
        };
        let failed = StepOutcome::fail(message).cause_as(cause_id, cause);
        let failed = if cause_id == ERROR_ENDS_THE_SERVER {
            failed.explains_death(cause_id)
        } else {
            failed
        };
        failed.evidence(Ctx::server_evidence(server))
    }

    /// Sends `bytes` on a fresh connection; the server must close it
    /// without echoing and log something. `Some(outcome)` is a failure.
    fn judge_bad(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
        what: &str,
        bytes: &[u8],
    ) -> Result<Option<StepOutcome>> {
        let mut bad = match connect(server.addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(Some(
                    StepOutcome::fail(format!("{what} client: connect failed: {err}"))
                        .cause_as(
                            "bad_input.stopped-accepting",
                            "the server stopped accepting connections",
                        )
                        .evidence(Ctx::server_evidence(server)),
                ))
            }
        };
        // Connect logs come first; the mark is for what the bad bytes cause.
        std::thread::sleep(Duration::from_millis(300));
        let mark = server.output_mark();
        let header: Vec<String> = bytes[..4].iter().map(|b| format!("{b:02x}")).collect();
        let announced = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let sent = format!(
            "{what}: {} bytes, header {} (announces {announced} bytes; --max-frame {})",
            bytes.len(),
            header.join(" "),
            self.max_frame
        );
        ctx.log.detail(format!("sent {sent}"));
        // The server may close before taking every byte: a failed write is fine.
        let _ = bad.write_all(bytes);
        let (got, ending) =
            read_until_closed(&mut bad, Duration::from_secs(self.close_timeout_secs));
        if !got.is_empty() {
            return Ok(Some(
                StepOutcome::fail(format!(
                    "{what}: the server sent {} bytes back instead of closing",
                    got.len()
                ))
                .cause_as("bad_input.replied", "a header above --max-frame is bad input: close the connection without replying")
                .evidence(std::iter::once(format!("sent {sent}")).chain(Ctx::server_evidence(server))),
            ));
        }
        if !ending.is_closed() {
            let outcome = if server.death_notice().is_some() {
                self.disturbed(server, &format!("the {what} client"), String::new())
            } else {
                StepOutcome::fail(format!(
                    "{what}: the connection was not closed within {} s ({})",
                    self.close_timeout_secs,
                    ending.describe()
                ))
                .cause_as("bad_input.trusts-the-length", "the server trusts the length prefix and waits for a payload that will never come: check `len > max_frame` as soon as the 4 header bytes are in, log it and close that connection")
                .evidence(std::iter::once(format!("sent {sent}")).chain(Ctx::server_evidence(server)))
            };
            return Ok(Some(outcome));
        }
        // Waits up to 2 s for a log line; a dying server has exited by then.
        let logged = server.stderr_since(mark, Duration::from_secs(2));
        if server.death_notice().is_some() {
            return Ok(Some(self.disturbed(
                server,
                &format!("the {what} client"),
                String::new(),
            )));
        }
        if logged.is_empty() {
            return Ok(Some(
                StepOutcome::fail(format!(
                    "{what}: the connection was closed, but nothing was written to stderr within 2 s"
                ))
                .cause_as("bad_input.not-logged", "bad input is worth a log line: eprintln! the peer address and what was wrong (the header bytes, the length) before closing")
                .evidence(std::iter::once(format!("sent {sent}")).chain(Ctx::server_evidence(server))),
            ));
        }
        ctx.log.detail(format!(
            "{what}: connection {}; server logged: {}",
            ending.describe(),
            logged[0]
        ));
        Ok(None)
    }
}

impl Check for BadInput {
    fn summary(&self) -> String {
        format!(
            "{} idle connects, an oversize header and {} bytes of garbage, each on its own connection: bad ones closed and logged, a well-behaved client echoed throughout; an empty frame and one of exactly --max-frame bytes echoed",
            self.idle_connections, self.garbage_bytes
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut round = 0;
        let mut good = match connect(server.addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(StepOutcome::fail(format!("connect failed: {err}"))
                    .cause_as(
                        "bad_input.no-accept",
                        "the server does not accept connections",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
            }
        };
        if let Some(what) = good_echo(&mut good, &mut round) {
            return Ok(self.disturbed(&mut server, "nothing yet", what));
        }

        // Idle connects: they send nothing, then hang up.
        let mut idle = Vec::new();
        for _ in 0..self.idle_connections {
            match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
                Ok(stream) => idle.push(stream),
                Err(err) => {
                    return Ok(self.disturbed(
                        &mut server,
                        &format!("{} idle connects", idle.len()),
                        format!("the next connect failed: {err}"),
                    ))
                }
            }
        }
        std::thread::sleep(Duration::from_millis(self.idle_ms));
        let after_idle = format!("{} connections that sent nothing", idle.len());
        if let Some(what) = good_echo(&mut good, &mut round) {
            return Ok(self.disturbed(&mut server, &after_idle, what));
        }
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        if let Some(what) = good_echo(&mut good, &mut round) {
            return Ok(self.disturbed(&mut server, &format!("{after_idle} hung up"), what));
        }
        ctx.log.detail(format!(
            "{} idle connects held {} ms and closed: the well-behaved client still echoed",
            self.idle_connections, self.idle_ms
        ));

        // Oversize: a header one byte over, and the start of its payload.
        let mut oversize = (self.max_frame + 1).to_be_bytes().to_vec();
        oversize.extend(std::iter::repeat_n(b'x', 1024));
        if let Some(failed) = self.judge_bad(ctx, &mut server, "oversize", &oversize)? {
            return Ok(failed);
        }
        if let Some(what) = good_echo(&mut good, &mut round) {
            return Ok(self.disturbed(&mut server, "the oversize client", what));
        }

        // Garbage: seeded random bytes, the first one forced non-zero so the
        // length they decode to is above any --max-frame under 16 MiB.
        let mut garbage = vec![0u8; self.garbage_bytes.max(4)];
        ChaCha8Rng::seed_from_u64(ctx.seed).fill_bytes(&mut garbage);
        garbage[0] |= 0x80;
        if let Some(failed) = self.judge_bad(ctx, &mut server, "garbage", &garbage)? {
            return Ok(failed);
        }
        if let Some(what) = good_echo(&mut good, &mut round) {
            return Ok(self.disturbed(&mut server, "the garbage client", what));
        }

        // The edges of the valid range are good input, not bad.
        if let Some(what) = edge_frames(server.addr, self.max_frame) {
            if server.death_notice().is_some() {
                return Ok(self.disturbed(&mut server, "the edge frames", what));
            }
            return Ok(StepOutcome::fail(format!(
                "a frame at the edge of the valid range was not echoed: {what}"
            ))
            .cause("0 <= L <= --max-frame is valid: an empty frame is its 4 header bytes alone and is echoed at once; a frame of exactly --max-frame bytes is echoed; only L > max_frame is bad input (and a header alone is not yet a frame: wait for its payload)")
            .evidence(Ctx::server_evidence(&mut server)));
        }
        ctx.log.detail(format!(
            "edge frames: an empty frame alone and a {}-byte frame (its header first) echoed",
            self.max_frame
        ));
        Ok(StepOutcome::pass(format!(
            "{} idle connects, an oversize header and {} bytes of garbage: both bad connections closed and logged; the well-behaved client got all {round} echoes; the edge frames echoed",
            self.idle_connections, garbage.len()
        ))
        .proof_line(format!(
            "bad_input: oversize and garbage closed and logged, {} idle connects survived, a well-behaved client echoed {round} of {round}",
            self.idle_connections
        )))
    }
}
