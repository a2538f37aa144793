//! `idle_cpu`: with a few connections open and idle, the server's CPU time
//! (user + system, all threads, /proc/PID/stat) over a window stays under a
//! generous bound. A loop that spins instead of sleeping in poll()/epoll_wait
//! burns a whole core and fails by a wide margin. A lesson whose loop
//! naps between passes (`naps: true`, before poll()) is told so in the cause.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleCpu {
    /// Connections open (each echoed once, then silent) during the window.
    pub connections: usize,
    /// How long the server is watched, in milliseconds.
    pub window_ms: u64,
    /// Most CPU time the server may use in the window, in milliseconds.
    pub max_cpu_ms: u64,
    /// The lesson's loop has no poll() yet: it rests by napping after a
    /// pass that found nothing to do, and the cause of a spin says so.
    pub naps: bool,
    pub args: Vec<String>,
}

impl Default for IdleCpu {
    fn default() -> Self {
        IdleCpu {
            connections: 10,
            window_ms: 2000,
            max_cpu_ms: 200,
            naps: false,
            args: Vec::new(),
        }
    }
}

impl Check for IdleCpu {
    fn summary(&self) -> String {
        format!(
            "{} idle connections: server CPU time over {} ms stays under {} ms",
            self.connections, self.window_ms, self.max_cpu_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut held = Vec::new();
        for client in 1..=self.connections {
            let Ok(mut stream) = TcpStream::connect_timeout(&server.addr, Duration::from_secs(3))
            else {
                return Ok(
                    StepOutcome::fail(format!("connection {client}: connect failed"))
                        .cause_as(
                            "idle_cpu.stopped-accepting",
                            "the server stopped accepting connections",
                        )
                        .evidence(Ctx::server_evidence(&mut server)),
                );
            };
            // One echo each, so every connection is accepted and known to the loop.
            let frame = stress::frame::encode(format!("idle client {client}").as_bytes());
            let echoed = stream.write_all(&frame).is_ok()
                && matches!(
                    read_echo(&mut stream, frame.len(), Instant::now() + Duration::from_secs(5)),
                    Echoed::Complete(ref got) if *got == frame
                );
            if !echoed {
                return Ok(StepOutcome::fail(format!(
                    "connection {client}: no echo of a {}-byte frame within 5 s",
                    frame.len()
                ))
                .cause_as(
                    "idle_cpu.no-echo",
                    "the server must echo each client's frame before it can be watched idle",
                )
                .evidence(Ctx::server_evidence(&mut server)));
            }
            held.push(stream);
        }
        // Let the last echoes' work finish before the window opens.
        std::thread::sleep(Duration::from_millis(200));
        let before = procfs::cpu_time(server.pid)?;
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(self.window_ms));
        let after = procfs::cpu_time(server.pid)?;
        let window = started.elapsed();
        let used = after.saturating_sub(before);
        let used_ms = used.as_millis();
        ctx.log.detail(format!(
            "{} idle connections: {used_ms} ms of CPU in {} ms",
            held.len(),
            window.as_millis()
        ));
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail("the server died while its connections were idle")
                    .cause_as(
                        "idle_cpu.died",
                        "an idle connection must never end the server",
                    )
                    .evidence(std::iter::once(death).chain(server.output_tail(20))),
            );
        }
        if used_ms > self.max_cpu_ms as u128 {
            return Ok(StepOutcome::fail(format!(
                "the idle server used {used_ms} ms of CPU in {} ms (bound: {} ms, a generous tolerance for a loaded machine)",
                window.as_millis(),
                self.max_cpu_ms
            ))
            .cause_as("idle_cpu.spins", if self.naps {
                "the loop spins while nothing happens: a pass in which the listener and every connection had nothing (every call said WouldBlock) must end in a short nap, and only such a pass; one that did something goes straight on".to_string()
            } else {
                let readiness = ctx.readiness();
                format!("the event loop spins while nothing happens: wait in {} with no timeout (-1), never 0, and don't ask for {} when there is nothing to write", readiness.wait, readiness.writable)
            })
            .evidence(
                std::iter::once(format!(
                    "/proc/{}/stat utime+stime: {:.3} s before, {:.3} s after, {} connections open and silent",
                    server.pid,
                    before.as_secs_f64(),
                    after.as_secs_f64(),
                    held.len()
                ))
                .chain(Ctx::server_evidence(&mut server)),
            )
            .figure("idle_cpu_ms", used_ms));
        }
        Ok(StepOutcome::pass(format!(
            "{used_ms} ms of CPU in {} ms with {} idle connections (bound {} ms)",
            window.as_millis(),
            held.len(),
            self.max_cpu_ms
        ))
        .figure("idle_cpu_ms", used_ms)
        .proof_line(format!(
            "idle_cpu: under {} ms of CPU in {} ms with {} idle connections",
            self.max_cpu_ms,
            self.window_ms,
            held.len()
        )))
    }
}
