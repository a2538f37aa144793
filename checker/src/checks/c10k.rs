//! `c10k`: starts the server with a soft RLIMIT_NOFILE of `nofile_soft`
//! (1,024, a common default), opens `connections` connections (10,000) in
//! bounded batches and holds all of them, then every one sends a frame and
//! must get its echo while all are still open. Judges the connections that
//! never got an echo (an edge-triggered listener stuck at EMFILE leaves
//! them in the accept queue while the others are served), the server's
//! thread count, and reports its RSS per connection (/proc/PID/status
//! before and after).
//!
//! Connects are plain `connect`s (no bind to 127.0.0.1:0, which cannot
//! reuse ports in TIME_WAIT), a few threads at a time, each with a bounded
//! timeout and one retry; the whole step is bounded by `timeout_secs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C10k {
    /// Connections opened and held at once.
    pub connections: usize,
    /// Connects in flight per batch (ramping, not one burst of 10,000).
    pub batch: usize,
    /// Checker threads that connect in parallel within a batch.
    pub connect_threads: usize,
    /// The soft RLIMIT_NOFILE the server starts with.
    pub nofile_soft: u64,
    /// Most threads the server may run.
    pub max_threads: usize,
    /// Bound on connecting everything, in seconds.
    pub timeout_secs: u64,
    /// Bound on all the echoes together, once everything is connected.
    pub echo_timeout_secs: u64,
    /// Most the server's RSS may grow per connection held, in KiB (none:
    /// reported, not judged).
    pub max_kib_per_connection: Option<f64>,
    pub args: Vec<String>,
}

impl Default for C10k {
    fn default() -> Self {
        C10k {
            connections: 10_000,
            batch: 500,
            connect_threads: 4,
            nofile_soft: 1024,
            max_threads: 1,
            timeout_secs: 60,
            echo_timeout_secs: 30,
            max_kib_per_connection: None,
            args: Vec::new(),
        }
    }
}

/// How close to its soft limit of open files the server's fd count must be
/// for EMFILE to explain connections it never serves (stdio, the listener
/// and the epoll fd are among them).
const FD_LIMIT_SLACK: u64 = 8;

/// Per-connect bound; a connect refused or timed out is tried once more.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Check for C10k {
    fn summary(&self) -> String {
        format!(
            "server started with a soft limit of {} open files; {} connections opened ({} at a time) and held, every one echoed; at most {} thread(s){}",
            self.nofile_soft,
            self.connections,
            self.batch,
            self.max_threads,
            match self.max_kib_per_connection {
                Some(kib) => format!("; RSS at most {kib} KiB per connection"),
                None => String::new(),
            }
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server_with_nofile(&self.args, self.nofile_soft)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let rss_before = procfs::rss_kib(server.pid)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.timeout_secs);
        let mut held: Vec<TcpStream> = Vec::with_capacity(self.connections);
        let mut last_error = None;
        while held.len() < self.connections && Instant::now() < deadline {
            let want = self.batch.max(1).min(self.connections - held.len());
            let (opened, error) = connect_batch(server.addr, want, self.connect_threads, deadline);
            let got = opened.len();
            held.extend(opened);
            if error.is_some() {
                last_error = error;
            }
            if got < want {
                // Connects failed twice in a row: the server no longer
                // completes them, and waiting longer would only add time.
                break;
            }
        }
        let connect_time = started.elapsed();
        ctx.log.detail(format!(
            "{} of {} connections open after {:.1} s",
            held.len(),
            self.connections,
            connect_time.as_secs_f64()
        ));
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!(
                "the server died while {} connections were being opened",
                held.len()
            ))
            .cause_as("c10k.died-connecting", "running out of file descriptors (EMFILE) or memory must never end the server: log it and keep serving the connections it has")
            .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        // Every connection sends one frame, then all echoes are collected.
        let frames: Vec<Vec<u8>> = (0..held.len())
            .map(|i| stress::frame::encode(format!("c10k client {i:05}").as_bytes()))
            .collect();
        // Short of connections the step fails anyway: the echoes only
        // show how many of those held were served, so a shorter wait.
        let echo_bound = match held.len() < self.connections {
            true => Duration::from_secs(self.echo_timeout_secs.min(5)),
            false => Duration::from_secs(self.echo_timeout_secs),
        };
        let mut unsent = 0;
        for (stream, frame) in held.iter_mut().zip(&frames) {
            let _ = stream.set_nodelay(true);
            if stream.set_nonblocking(true).is_err() || stream.write_all(frame).is_err() {
                unsent += 1;
            }
        }
        let tally = collect_echoes(&mut held, &frames, Instant::now() + echo_bound);
        let threads = procfs::threads(server.pid)?;
        let rss_after = procfs::rss_kib(server.pid)?;
        let per_conn_kib = rss_after.saturating_sub(rss_before) as f64 / held.len() as f64;
        ctx.log.detail(format!(
            "{} echoed, {} never echoed, {} wrong, {} closed, {} not sent; {threads} thread(s); RSS {rss_before} KiB -> {rss_after} KiB",
            tally.echoed, tally.silent, tally.wrong, tally.closed, unsent
        ));
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!(
                "the server died while {} connections were open and echoing",
                held.len()
            ))
            .cause_as("c10k.died-echoing", "a full server must keep running: an error on one connection closes that connection only")
            .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        // EMFILE is the explanation only when the server's fds show it: as
        // many open as its soft limit allows.
        let fds = procfs::open_fds(server.pid).map(|f| f.len()).unwrap_or(0);
        let at_fd_limit = fds as u64 + FD_LIMIT_SLACK >= self.nofile_soft;
        if held.len() < self.connections {
            let failed = StepOutcome::fail(format!(
                "only {} of {} connections could be opened (each connect bounded by {} s and tried twice; ramping stops after two failures in a row), and only {} of those got their echo",
                held.len(),
                self.connections,
                CONNECT_TIMEOUT.as_secs(),
                tally.echoed
            ));
            let failed = if at_fd_limit {
                failed.cause_as("c10k.accept-fails-at-the-fd-limit", "the server stopped completing connections: its accept queue is full because accept() fails. At the default soft limit of 1,024 open files accept() returns EMFILE; raise RLIMIT_NOFILE to its hard limit at start-up (setrlimit), and listen with a backlog of a few thousand (connections accepted before the limit are served, the rest wait in the queue)")
            } else {
                failed
            };
            return Ok(failed
                .evidence(
                    std::iter::once(format!(
                        "/proc/{}/fd: {fds} open (soft limit {})",
                        server.pid, self.nofile_soft
                    ))
                    .chain(
                        last_error
                            .into_iter()
                            .map(|e| format!("last connect error: {e}")),
                    )
                    .chain(Ctx::server_evidence(&mut server)),
                )
                .figure("connections_opened", held.len()));
        }

        let missing = tally.silent + tally.wrong + tally.closed + unsent;
        if missing > 0 {
            let failed = StepOutcome::fail(format!(
                "{missing} of {} held connections got no exact echo of their frame within {} s ({} never answered, {} wrong bytes, {} closed by the server, {} could not send)",
                held.len(),
                self.echo_timeout_secs,
                tally.silent,
                tally.wrong,
                tally.closed,
                unsent
            ));
            let failed = if at_fd_limit {
                failed.cause_as("c10k.unserved-at-the-fd-limit", "connections the server never serves: when accept() fails with EMFILE (the soft limit of 1,024 open files) an edge-triggered listener is not reported again, and connections stay in the accept queue. Raise RLIMIT_NOFILE to the hard limit at start-up (setrlimit), and keep accepting until WouldBlock")
            } else {
                failed
            };
            return Ok(failed
                .evidence(
                    std::iter::once(format!(
                        "sent 1 frame of {} bytes on each of {} connections; {} exact echoes",
                        frames[0].len(),
                        held.len(),
                        tally.echoed
                    ))
                    .chain(std::iter::once(format!(
                        "/proc/{}/fd: {fds} open (soft limit {})",
                        server.pid, self.nofile_soft
                    )))
                    .chain(Ctx::server_evidence(&mut server)),
                )
                .figure("never_echoed", missing));
        }
        if threads > self.max_threads {
            return Ok(StepOutcome::fail(format!(
                "the server runs {threads} threads with {} connections open (at most {} allowed)",
                held.len(),
                self.max_threads
            ))
            .cause_as("c10k.extra-threads", "this lesson serves 10,000 connections from one event loop on one thread: no thread per connection, no helper threads")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("threads", threads));
        }
        if let Some(bound) = self.max_kib_per_connection {
            if per_conn_kib > bound {
                return Ok(StepOutcome::fail(format!(
                    "the server's RSS grew from {rss_before} KiB to {rss_after} KiB with {} connections held (each echoed once, then idle): {per_conn_kib:.1} KiB per connection, over the bound of {bound} KiB",
                    held.len()
                ))
                .cause_as("c10k.memory-per-connection", format!("what a connection costs is paid {} times over: an idle connection should hold no buffer memory (allocate a buffer when bytes arrive and give it back once it is empty), not a fixed buffer of its own", held.len()))
                .evidence(std::iter::once(format!(
                    "/proc/{}/status VmRSS: {rss_before} KiB after start, {rss_after} KiB with {} connections open",
                    server.pid,
                    held.len()
                )))
                .figure("rss_per_connection_kib", format!("{per_conn_kib:.1}")));
            }
        }
        let bound_said = match self.max_kib_per_connection {
            Some(bound) => format!(" (bound {bound} KiB)"),
            None => String::new(),
        };
        Ok(StepOutcome::pass(format!(
            "{} connections held and all echoed on {threads} thread(s); connected in {:.1} s; RSS {rss_before} KiB -> {rss_after} KiB, {per_conn_kib:.1} KiB per connection{bound_said}",
            held.len(),
            connect_time.as_secs_f64()
        ))
        .figure("connections", held.len())
        .figure("rss_per_connection_kib", format!("{per_conn_kib:.1}"))
        .proof_line(format!(
            "c10k: {} connections held at once on {threads} thread, every one echoed (started with a soft limit of {} open files)",
            held.len(),
            self.nofile_soft
        ))
        .proof_line(format!(
            "c10k: server RSS {rss_before} KiB idle, {rss_after} KiB with {} connections: {per_conn_kib:.1} KiB per connection{bound_said}",
            held.len()
        )))
    }
}

/// Opens `want` connections with `threads` threads; returns those opened
/// and the last connect error seen.
fn connect_batch(
    addr: SocketAddr,
    want: usize,
    threads: usize,
    deadline: Instant,
) -> (Vec<TcpStream>, Option<String>) {
    let threads = threads.clamp(1, want.max(1));
    let share = want.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let count = share.min(want.saturating_sub(t * share));
                scope.spawn(move || {
                    let mut opened = Vec::with_capacity(count);
                    let mut error = None;
                    let mut failed_in_a_row = 0;
                    for _ in 0..count {
                        // Bounded: a server that stopped completing connects
                        // is not waited for connect after connect.
                        if Instant::now() >= deadline || failed_in_a_row >= 2 {
                            break;
                        }
                        let mut result = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
                        if result.is_err() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(50));
                            result = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
                        }
                        match result {
                            Ok(stream) => {
                                failed_in_a_row = 0;
                                opened.push(stream);
                            }
                            Err(e) => {
                                failed_in_a_row += 1;
                                error = Some(e.to_string());
                            }
                        }
                    }
                    (opened, error)
                })
            })
            .collect();
        let mut opened = Vec::with_capacity(want);
        let mut error = None;
        for worker in workers {
            if let Ok((streams, err)) = worker.join() {
                opened.extend(streams);
                if err.is_some() {
                    error = err;
                }
            }
        }
        (opened, error)
    })
}

#[derive(Default)]
struct Tally {
    echoed: usize,
    silent: usize,
    wrong: usize,
    closed: usize,
}

/// Reads every connection's echo (non-blocking passes over all of them, a
/// short sleep between passes) until all are in or `deadline`.
fn collect_echoes(held: &mut [TcpStream], frames: &[Vec<u8>], deadline: Instant) -> Tally {
    #[derive(PartialEq)]
    enum State {
        Waiting,
        Echoed,
        Wrong,
        Closed,
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); held.len()];
    let mut state: Vec<State> = (0..held.len()).map(|_| State::Waiting).collect();
    let mut chunk = [0u8; 256];
    loop {
        let mut waiting = 0;
        for i in 0..held.len() {
            if state[i] != State::Waiting {
                continue;
            }
            loop {
                match held[i].read(&mut chunk) {
                    Ok(0) => {
                        state[i] = State::Closed;
                        break;
                    }
                    Ok(n) => got[i].extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        state[i] = State::Closed;
                        break;
                    }
                }
            }
            if state[i] == State::Waiting && got[i].len() >= frames[i].len() {
                state[i] = if got[i] == frames[i] {
                    State::Echoed
                } else {
                    State::Wrong
                };
            }
            if state[i] == State::Waiting {
                waiting += 1;
            }
        }
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut tally = Tally::default();
    for s in &state {
        match s {
            State::Waiting => tally.silent += 1,
            State::Echoed => tally.echoed += 1,
            State::Wrong => tally.wrong += 1,
            State::Closed => tally.closed += 1,
        }
    }
    tally
}
