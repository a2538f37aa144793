//! `broken_pipes`: `clients` clients, `batch` connected at a time, each with
//! a small receive window, pipeline as many frames as the kernel takes in
//! one write, read nothing, and reset (SO_LINGER 0, close) while the server
//! is still reading their frames and writing their echoes. The server's
//! next read or write on such a socket fails with ECONNRESET or EPIPE (Rust
//! ignores SIGPIPE, so it is an `Err`, not a signal): that must close the
//! one connection. Afterwards the server must be alive and echo a fresh
//! client. An `unwrap()` on a write or read result kills it.
//!
//! Then the case a race seldom gives: the server is stopped (SIGSTOP) while
//! a few clients it serves each send one frame and reset, and continued
//! (SIGCONT). Its read returns the frame (bytes queued before the RST are
//! still read first), so the echo's write is the call that fails, with
//! ECONNRESET and then EPIPE on every retry: a server that retries any
//! write error but WouldBlock spins there forever and serves no one.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::{killpg, Signal};
use serde::Deserialize;

use super::disconnects::{connect_small_window, fail, fresh_client_echoed, reset};
use super::frame_client::{read_exactly, Ending};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokenPipes {
    /// Clients that pipeline, read nothing and reset.
    pub clients: usize,
    /// Clients connected at once.
    pub batch: usize,
    /// Frames each client offers in one write.
    pub frames: usize,
    /// Payload bytes per frame.
    pub frame_size: usize,
    pub args: Vec<String>,
}

impl Default for BrokenPipes {
    fn default() -> Self {
        BrokenPipes {
            clients: 500,
            batch: 100,
            frames: 16,
            frame_size: 16 * 1024,
            args: Vec::new(),
        }
    }
}

impl Check for BrokenPipes {
    fn summary(&self) -> String {
        format!(
            "{} clients ({} at a time) pipeline {} frames of {} KiB, read nothing and reset mid-echo; then, the server stopped (SIGSTOP), {TOGETHER} of its clients each send a frame and reset, so that its echo's write is the call that fails; the server must survive and serve the next client",
            self.clients,
            self.batch,
            self.frames,
            self.frame_size / 1024
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let payload = vec![0xa5u8; self.frame_size];
        let wire: Vec<u8> = (0..self.frames)
            .flat_map(|_| stress::frame::encode(&payload))
            .collect();
        let mut reset_count = 0;
        let mut bytes_sent = 0usize;
        while reset_count < self.clients {
            let batch = self.batch.max(1).min(self.clients - reset_count);
            let mut open = Vec::with_capacity(batch);
            for _ in 0..batch {
                let client = reset_count + open.len() + 1;
                let mut stream = match connect_small_window(server.addr) {
                    Ok(stream) => stream,
                    Err(err) => {
                        // Usually the server died mid-batch (a refused
                        // connect can come before it can be reaped): say so.
                        let Some(death) = server.death_notice_within(Duration::from_secs(2)) else {
                            // Alive: stuck (busy) or no longer accepting.
                            let message = format!("client {client}: connect failed after {reset_count} clients reset with echoes pending: {err}");
                            return Ok(stuck_or_ended(&mut server, message));
                        };
                        let message = format!(
                            "the server died after {reset_count} clients reset with echoes pending: {death}"
                        );
                        return Ok(fail(&mut server, message, ERROR_ENDS_THE_SERVER, CAUSE)
                            .explains_death(ERROR_ENDS_THE_SERVER));
                    }
                };
                // One non-blocking write: as many frames as the kernel takes
                // now, without ever waiting on the server.
                if stream.set_nonblocking(true).is_ok() {
                    if let Ok(n) = stream.write(&wire) {
                        bytes_sent += n;
                    }
                }
                open.push(stream);
            }
            // Let the server start echoing into windows nobody reads.
            std::thread::sleep(Duration::from_millis(20));
            for stream in open {
                reset(stream);
                reset_count += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
            if let Some(death) = server.death_notice() {
                // The same words as a death found by a refused connect: the
                // timing decides which path sees it first.
                let message = format!(
                    "the server died after {reset_count} clients reset with echoes pending: {death}"
                );
                return Ok(fail(&mut server, message, ERROR_ENDS_THE_SERVER, CAUSE)
                    .explains_death(ERROR_ENDS_THE_SERVER));
            }
        }
        ctx.log.detail(format!(
            "{reset_count} clients sent {} KiB in all, read nothing and reset",
            bytes_sent / 1024
        ));
        if let Some(failed) = frames_with_resets(&mut server)? {
            return Ok(failed);
        }
        ctx.log.detail(format!(
            "server stopped; {TOGETHER} clients each sent a frame and reset; continued: it echoed a new client"
        ));
        std::thread::sleep(Duration::from_millis(250));
        if let Err(message) = fresh_client_echoed(server.addr, Duration::from_secs(10)) {
            let message = format!("after {reset_count} clients reset mid-echo, {message}");
            return Ok(fail(&mut server, message, ERROR_ENDS_THE_SERVER, CAUSE)
                .explains_death(ERROR_ENDS_THE_SERVER));
        }
        Ok(StepOutcome::pass(format!(
            "{reset_count} clients reset mid-echo ({} KiB sent, none read); the server lived and echoed the next client",
            bytes_sent / 1024
        ))
        .figure("clients_reset", reset_count)
        .figure("kib_sent", bytes_sent / 1024)
        .proof_line(format!(
            "broken_pipes: {reset_count} clients reset mid-echo, the server survived and echoed the next client"
        )))
    }
}

const ERROR_ENDS_THE_SERVER: &str = "broken_pipes.error-ends-the-server";
const CAUSE: &str = "a client that resets makes the server's next write fail with EPIPE or ECONNRESET (and its next read with ECONNRESET): Rust ignores SIGPIPE, so it is an Err; close that one connection, never unwrap() it or let `?` carry it out of the event loop";

/// Clients of the stopped server that each send a frame and reset.
const TOGETHER: usize = 5;

/// Bound on waiting for the server to stop on SIGSTOP.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The stopped-server case (see the module doc): `Some(failure)` when the
/// server did not serve a new client after it; `Err` when it could not be
/// stopped (nothing the server did wrong).
fn frames_with_resets(server: &mut Server) -> Result<Option<StepOutcome>> {
    let mut held = Vec::with_capacity(TOGETHER);
    for i in 0..TOGETHER {
        let served = (|| -> Result<TcpStream, String> {
            let mut stream = TcpStream::connect_timeout(&server.addr, Duration::from_secs(3))
                .map_err(|e| format!("connect failed: {e}"))?;
            let frame = stress::frame::encode(format!("client {i}, before the stop").as_bytes());
            stream
                .write_all(&frame)
                .map_err(|e| format!("sending a frame failed: {e}"))?;
            match read_exactly(&mut stream, frame.len(), Duration::from_secs(5)) {
                (got, Ending::Complete) if got == frame => Ok(stream),
                (_, Ending::Complete) => Err("its echo differs from its frame".into()),
                (got, ending) => Err(format!(
                    "got {} of {} bytes back: {}",
                    got.len(),
                    frame.len(),
                    ending.describe()
                )),
            }
        })();
        match served {
            Ok(stream) => held.push(stream),
            Err(what) => {
                let message = format!(
                    "after the clients reset mid-echo, a new client ({} of {TOGETHER}): {what}",
                    i + 1
                );
                return Ok(Some(stuck_or_ended(server, message)));
            }
        }
    }
    killpg(server.pid, Signal::SIGSTOP)?;
    if !crate::procfs::wait_until_stopped(server.pid, STOP_WAIT, Duration::from_millis(5)) {
        let _ = killpg(server.pid, Signal::SIGCONT);
        anyhow::bail!(
            "the server (pid {}) did not stop on SIGSTOP within {} s",
            server.pid,
            STOP_WAIT.as_secs()
        );
    }
    for (i, mut stream) in held.into_iter().enumerate() {
        let frame = stress::frame::encode(&vec![i as u8; 1000]);
        let _ = stream.write_all(&frame);
        reset(stream);
    }
    // Loopback delivers within the write and the close; a little slack.
    std::thread::sleep(Duration::from_millis(50));
    killpg(server.pid, Signal::SIGCONT)?;
    let Err(what) = fresh_client_echoed(server.addr, Duration::from_secs(5)) else {
        return Ok(None);
    };
    let message = format!(
        "the server was stopped while {TOGETHER} of its clients each sent a frame and reset, then continued: {what}"
    );
    Ok(Some(stuck_or_ended(server, message)))
}

/// The failure of a server that served no one after clients reset: dead,
/// it is its death; alive and busy over a short window (over half its
/// CPU), it is stuck retrying a write that keeps failing; alive and idle,
/// the reset ended more than its connection.
fn stuck_or_ended(server: &mut Server, message: String) -> StepOutcome {
    if let Some(death) = server.death_notice_within(Duration::from_secs(2)) {
        return fail(
            server,
            format!("{message}; the server died: {death}"),
            ERROR_ENDS_THE_SERVER,
            CAUSE,
        )
        .explains_death(ERROR_ENDS_THE_SERVER);
    }
    let window = Duration::from_millis(500);
    let before = procfs::cpu_time(server.pid).ok();
    std::thread::sleep(window);
    let busy = before
        .zip(procfs::cpu_time(server.pid).ok())
        .map(|(before, after)| after.saturating_sub(before));
    match busy {
        Some(cpu) if cpu * 2 > window => fail(
            server,
            message,
            RETRIES_FOREVER,
            &format!("the server is busy ({} ms of CPU in the next {} ms) yet answers no one: a write to a reset client fails with ECONNRESET, then EPIPE, on every retry; end that connection on any write error but WouldBlock (retry only Interrupted)", cpu.as_millis(), window.as_millis()),
        ),
        _ => fail(server, message, ERROR_ENDS_THE_SERVER, CAUSE),
    }
}

const RETRIES_FOREVER: &str = "broken_pipes.retries-failed-write";
