//! `fd_leak`: the server's open file descriptors (/proc/PID/fd) are counted
//! once it is warmed up and idle, then `cycles` clients connect, send a
//! frame, get its echo and close, `batch` at a time. After a short settle
//! the count must be back within `tolerance` of where it started. A server
//! that keeps finished connections around (or their sockets) ends up with
//! one fd per client, hundreds over the baseline.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::frame_client::{self, connect, read_exactly, Ending};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

/// Closed clients' sockets still open in the server.
const SOCKETS_KEPT: &str = "fd_leak.sockets-kept";
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdLeak {
    /// Connect/send/echo/close cycles.
    pub cycles: usize,
    /// Clients open at once (each batch is echoed, then closed).
    pub batch: usize,
    /// Fds over the baseline still accepted after the settle.
    pub tolerance: usize,
    /// Longest wait for the count to come back down, in milliseconds.
    pub settle_ms: u64,
    pub args: Vec<String>,
}

impl Default for FdLeak {
    fn default() -> Self {
        FdLeak {
            cycles: 1000,
            batch: 10,
            tolerance: 2,
            settle_ms: 2000,
            args: Vec::new(),
        }
    }
}

impl Check for FdLeak {
    fn summary(&self) -> String {
        format!(
            "{} connect/echo/close cycles ({} at a time): the server's open fds return to their baseline (+{})",
            self.cycles, self.batch, self.tolerance
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(5);
        // One client first, so whatever the server allocates once is counted
        // in the baseline, not as a leak.
        if let Err(message) = super::disconnects::fresh_client_echoed(server.addr, timeout) {
            return Ok(StepOutcome::fail(format!("before counting: {message}"))
                .cause_as(
                    "fd_leak.no-echo",
                    "the server must echo a client before its fds can be watched",
                )
                .evidence(Ctx::server_evidence(&mut server)));
        }
        std::thread::sleep(Duration::from_millis(200));
        let baseline = procfs::open_fds(server.pid)?.len();
        let frame = stress::frame::encode(b"connect, echo, close");
        let mut done = 0;
        while done < self.cycles {
            let batch = self.batch.max(1).min(self.cycles - done);
            let mut open = Vec::with_capacity(batch);
            for _ in 0..batch {
                let client = done + open.len() + 1;
                let stream = connect(server.addr).and_then(|mut s| {
                    s.write_all(&frame)?;
                    Ok(s)
                });
                match stream {
                    Ok(stream) => open.push(stream),
                    Err(err) => {
                        let fds = procfs::open_fds(server.pid).map(|f| f.len()).unwrap_or(0);
                        let failed = StepOutcome::fail(format!(
                            "cycle {client}: connect or send failed: {err} (server fds: {baseline} at the start, {fds} now)"
                        ));
                        // Out of fds only if its fds show it: grown with the
                        // cycles, not back near where they started.
                        let failed = if fds > baseline + self.tolerance {
                            failed.cause_as(SOCKETS_KEPT, "finished connections must be closed: a server that keeps their sockets runs out of file descriptors")
                        } else {
                            failed
                        };
                        return Ok(failed.evidence(Ctx::server_evidence(&mut server)));
                    }
                }
            }
            for (i, mut stream) in open.into_iter().enumerate() {
                let client = done + i + 1;
                match read_exactly(&mut stream, frame.len(), timeout) {
                    (got, Ending::Complete) if got == frame => frame_client::close(stream),
                    (got, ending) => {
                        return Ok(StepOutcome::fail(format!(
                            "cycle {client}: {} of {} bytes echoed, then {}",
                            got.len(),
                            frame.len(),
                            ending.describe()
                        ))
                        .cause_as(
                            "fd_leak.echo-fails-after-cycles",
                            "every client must be echoed, however many came and went before it",
                        )
                        .evidence(Ctx::server_evidence(&mut server)))
                    }
                }
            }
            done += batch;
        }
        // The server learns of the last closes a moment later: wait, bounded.
        let deadline = Instant::now() + Duration::from_millis(self.settle_ms);
        let mut after = procfs::open_fds(server.pid)?.len();
        while after > baseline + self.tolerance && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            after = procfs::open_fds(server.pid)?.len();
        }
        ctx.log.detail(format!(
            "open fds: {baseline} before, {after} after {} cycles",
            self.cycles
        ));
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail("the server died during the connect/close cycles")
                    .cause_as(
                        "fd_leak.died",
                        "a client closing its connection must never end the server",
                    )
                    .evidence(std::iter::once(death).chain(server.output_tail(20))),
            );
        }
        if after > baseline + self.tolerance {
            return Ok(StepOutcome::fail(format!(
                "the server holds {after} open fds after {} clients connected and closed ({baseline} before; at most {} allowed after a {} ms settle)",
                self.cycles,
                baseline + self.tolerance,
                self.settle_ms
            ))
            .cause_as(SOCKETS_KEPT, "a finished connection's socket is never closed: remove the connection from your list when read returns 0 or an error, so its TcpStream is dropped (and nothing else keeps it)")
            .evidence(
                std::iter::once(format!("/proc/{}/fd: {baseline} entries before, {after} after", server.pid))
                    .chain(Ctx::server_evidence(&mut server)),
            )
            .figure("fds_before", baseline)
            .figure("fds_after", after));
        }
        Ok(StepOutcome::pass(format!(
            "{} clients came and went: {baseline} fds before, {after} after",
            self.cycles
        ))
        .figure("fds_before", baseline)
        .figure("fds_after", after)
        .proof_line(format!(
            "fd_leak: {} connect/close cycles, open fds {baseline} before and {after} after",
            self.cycles
        )))
    }
}
