//! `broken_pipes`: `clients` clients, `batch` connected at a time, each with
//! a small receive window, pipeline as many frames as the kernel takes in
//! one write, read nothing, and reset (SO_LINGER 0, close) while the server
//! is still reading their frames and writing their echoes. The server's
//! next read or write on such a socket fails with ECONNRESET or EPIPE (Rust
//! ignores SIGPIPE, so it is an `Err`, not a signal): that must close the
//! one connection. Afterwards the server must be alive and echo a fresh
//! client. An `unwrap()` on a write or read result kills it.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::disconnects::{connect_small_window, fail, fresh_client_echoed, reset};
use super::{Check, Ctx};
use crate::report::StepOutcome;

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
            "{} clients ({} at a time) pipeline {} frames of {} KiB, read nothing and reset mid-echo; the server must survive and serve the next client",
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
                        let message = match server.death_notice_within(Duration::from_secs(2)) {
                            Some(death) => format!(
                                "the server died after {reset_count} clients reset with echoes pending: {death}"
                            ),
                            None => format!("client {client}: connect failed: {err}"),
                        };
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
