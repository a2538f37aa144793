//! `process`: the shape of the server process, read from /proc — exactly
//! `threads` threads and no child processes, with a few clients connected
//! and served (a thread or a process per client shows up then). Catches a
//! "single-threaded" server that still spawns threads or forks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Process {
    /// Threads the server must have, exactly.
    pub threads: usize,
    /// Clients connected (each echoed one frame) before the reading.
    pub clients: usize,
    pub args: Vec<String>,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            threads: 1,
            clients: 4,
            args: Vec::new(),
        }
    }
}

impl Check for Process {
    fn summary(&self) -> String {
        format!(
            "with {} clients connected: exactly {} thread(s) and no child process",
            self.clients, self.threads
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        // Clients stay connected while we read /proc; each gets one echo so
        // a server that hands clients to threads or processes has done so.
        let mut held = Vec::new();
        for client in 1..=self.clients {
            let Ok(mut stream) = TcpStream::connect_timeout(&server.addr, Duration::from_secs(2))
            else {
                break;
            };
            let frame = stress::frame::encode(format!("process probe {client}").as_bytes());
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut back = vec![0u8; frame.len()];
            let _ = stream
                .write_all(&frame)
                .and_then(|_| stream.read_exact(&mut back));
            held.push(stream);
        }
        // Let a thread or child started per client come into being.
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail("the server died while clients connected")
                .cause_as(
                    "process.died",
                    "a client's connection must never end the server",
                )
                .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        let threads = procfs::threads(server.pid)?;
        let children = procfs::descendants(server.pid);
        ctx.log.detail(format!(
            "{} clients connected: {threads} thread(s), {} child process(es)",
            held.len(),
            children.len()
        ));
        if threads != self.threads {
            return Ok(StepOutcome::fail(format!(
                "the server has {threads} threads with {} clients connected; expected exactly {}",
                held.len(),
                self.threads
            ))
            .cause_as(
                if threads > self.threads {
                    "process.extra-threads"
                } else {
                    "process.too-few-threads"
                },
                if threads > self.threads {
                    "this lesson's server runs every connection on one thread: no thread::spawn, no thread pool; one loop serves all sockets"
                } else {
                    "the server runs fewer threads than the lesson asks for"
                },
            )
            .evidence(
                std::iter::once(format!("/proc/{}/status: Threads: {threads}", server.pid))
                    .chain(Ctx::server_evidence(&mut server)),
            )
            .figure("threads", threads));
        }
        if !children.is_empty() {
            let pids: Vec<String> = children.iter().map(|p| p.to_string()).collect();
            return Ok(StepOutcome::fail(format!(
                "the server has {} child process(es) ({})",
                children.len(),
                pids.join(", ")
            ))
            .cause_as(
                "process.child-processes",
                "one process serves every connection: no fork, no child processes",
            )
            .evidence(Ctx::server_evidence(&mut server)));
        }
        Ok(StepOutcome::pass(format!(
            "{threads} thread(s), no child process, with {} clients connected",
            held.len()
        ))
        .figure("threads", threads)
        .proof_line(format!(
            "process: {threads} thread(s), 0 child processes with {} clients connected",
            held.len()
        )))
    }
}
