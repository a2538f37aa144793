//! `pool`: a bounded pool of `--workers N` threads against many more
//! clients. Every client connects at once and sends one frame.
//!
//! 1. Held: each client that gets its echo keeps its connection open and
//!    idle, so it keeps its worker busy. After the count of served clients
//!    reaches N and then stays put for a while, it must be exactly N: more
//!    is a server that ignores `--workers`, fewer a pool smaller than asked.
//!    The other clients are connected (or queued by the kernel) but unserved.
//! 2. Released: every served client closes after a short hold, freeing its
//!    worker for a queued client, until all have been served. No client may
//!    be lost (closed or reset before its echo) or starved (no echo by the
//!    step's deadline).
//!
//! "Served at once" is measured from the client side, from the moment a
//! client's echo arrived until the moment it decided to close. A worker only
//! takes a new client after the previous one closed, so a correct pool never
//! shows more than N, whatever the timing: the bound is causal, not a race.
//! The proof reports the starvation figures: how many waited and how long.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;
use stress::frame::encode;

use super::{excerpt, Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

/// Client threads keep everything on the heap.
const CLIENT_STACK: usize = 64 * 1024;
/// How often a blocked client looks at the deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Passed as `--workers N`.
    pub workers: usize,
    /// Clients connecting at once (more than `workers`).
    pub clients: usize,
    /// How long a served client stays connected once released, in ms.
    pub hold_ms: u64,
    /// How long the served count must stay put before it is read, in ms.
    pub settle_ms: u64,
    /// Bound on the whole step: a client not served by then is starved.
    pub timeout_secs: u64,
    /// Flags beyond the lesson's `server_args` (`--workers` is added).
    pub args: Vec<String>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            workers: 10,
            clients: 200,
            hold_ms: 50,
            settle_ms: 500,
            timeout_secs: 30,
            args: Vec::new(),
        }
    }
}

/// How one client's visit ended.
#[derive(Debug, Clone)]
enum Visit {
    /// Echoed exactly: when (since the client started), and when it closed.
    Served {
        waited: Duration,
        echo_at: Instant,
        closed_at: Instant,
    },
    /// Connected but closed or reset by the server before any echo.
    Lost(String),
    /// Never echoed before the deadline (or never connected).
    Starved(String),
    /// Echoed, but not the bytes it sent.
    Wrong(Vec<String>),
}

struct Shared {
    served: AtomicUsize,
    released: AtomicBool,
    deadline: Instant,
    hold: Duration,
}

impl Check for Pool {
    fn summary(&self) -> String {
        format!(
            "--workers {}: {} clients at once; at most {} served at a time, every queued client served later",
            self.workers, self.clients, self.workers
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        if self.workers == 0 || self.clients <= self.workers {
            anyhow::bail!(
                "course.yaml: lesson {}: pool needs more clients than workers (and at least one worker)",
                ctx.lesson.id
            );
        }
        let mut args = self.args.clone();
        args.extend(["--workers".to_string(), self.workers.to_string()]);
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let shared = Arc::new(Shared {
            served: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            deadline: Instant::now() + Duration::from_secs(self.timeout_secs),
            hold: Duration::from_millis(self.hold_ms),
        });
        ctx.log.detail(format!(
            "{} clients connect at once and send one frame each; served ones stay connected",
            self.clients
        ));
        let mut handles = Vec::with_capacity(self.clients);
        for client in 1..=self.clients {
            let shared = shared.clone();
            let addr = server.addr;
            let handle = std::thread::Builder::new()
                .stack_size(CLIENT_STACK)
                .spawn(move || visit(addr, client, &shared))?;
            handles.push(handle);
        }

        // Phase 1: wait until N are served, then for the count to settle.
        let settle = Duration::from_millis(self.settle_ms);
        let first_wait =
            Instant::now() + Duration::from_secs(10).min(Duration::from_secs(self.timeout_secs));
        let mut last = (0, Instant::now());
        loop {
            let now = shared.served.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            }
            let settled = last.1.elapsed() >= settle;
            // Fewer than N: give slow workers a while longer before judging.
            let settled_short = last.1.elapsed() >= settle.max(Duration::from_secs(2));
            if (now >= self.workers && settled) || settled_short || Instant::now() >= first_wait {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let held_at_once = shared.served.load(Ordering::SeqCst);
        let threads = procfs::threads(server.pid).ok();
        ctx.log.detail(format!(
            "held: {held_at_once} of {} clients served at once{}, the rest waiting",
            self.clients,
            threads
                .map(|t| format!(" (server threads: {t})"))
                .unwrap_or_default()
        ));

        // Phase 2: let them go; every queued client must be served in turn.
        shared.released.store(true, Ordering::SeqCst);
        let visits: Vec<Visit> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Visit::Starved("client thread panicked".into()))
            })
            .collect();

        let mut intervals = Vec::new();
        let mut longest_wait = Duration::ZERO;
        let mut lost = Vec::new();
        let mut starved = Vec::new();
        let mut wrong = Vec::new();
        for (index, visit) in visits.iter().enumerate() {
            let client = index + 1;
            match visit {
                Visit::Served {
                    waited,
                    echo_at,
                    closed_at,
                } => {
                    longest_wait = longest_wait.max(*waited);
                    intervals.push((*echo_at, *closed_at));
                }
                Visit::Lost(why) => lost.push(format!("client {client}: {why}")),
                Visit::Starved(why) => starved.push(format!("client {client}: {why}")),
                Visit::Wrong(lines) => wrong.push((client, lines.clone())),
            }
        }
        let most_at_once = max_overlap(&intervals).max(held_at_once.min(intervals.len()));
        let served = intervals.len();
        let figures = |outcome: StepOutcome| {
            outcome
                .figure("workers", self.workers)
                .figure("clients", self.clients)
                .figure("held_at_once", held_at_once)
                .figure("most_served_at_once", most_at_once)
                .figure("served", served)
                .figure("lost", lost.len())
                .figure("starved", starved.len())
                .figure(
                    "longest_wait_secs",
                    format!("{:.2}", longest_wait.as_secs_f64()),
                )
        };

        if held_at_once > self.workers || most_at_once > self.workers {
            return Ok(figures(StepOutcome::fail(format!(
                "{} clients were served at once with --workers {}: {held_at_once} got their echo while every served client was still connected",
                most_at_once.max(held_at_once),
                self.workers
            )))
            .cause_as("pool.too-many-at-once", format!(
                "at most N = {} clients may be served at once: start exactly --workers threads once, and have the accept loop hand each connection to them (a channel) instead of spawning a thread per client",
                self.workers
            ))
            .evidence(Ctx::server_evidence(&mut server)));
        }
        if let Some((client, lines)) = wrong.first() {
            let mut evidence = lines.clone();
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(figures(StepOutcome::fail(format!(
                "client {client}: the echo differs from what was sent"
            )))
            .cause_as(
                "pool.wrong-echo",
                "a worker must echo exactly the frames its client sent",
            )
            .evidence(evidence));
        }
        if !lost.is_empty() {
            let mut evidence: Vec<String> = lost.iter().take(5).cloned().collect();
            if lost.len() > 5 {
                evidence.push(format!("... and {} more", lost.len() - 5));
            }
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(figures(StepOutcome::fail(format!(
                "{} of {} clients were lost: closed or reset by the server before any echo",
                lost.len(),
                self.clients
            )))
            .cause_as("pool.clients-lost", "a client that arrives while every worker is busy must wait in the queue (an unbounded channel, or the accept backlog) and be served when a worker frees, never be dropped")
            .evidence(evidence));
        }
        if held_at_once < self.workers {
            let failed = figures(StepOutcome::fail(format!(
                "only {held_at_once} clients were served at once with --workers {} and {} clients waiting",
                self.workers, self.clients
            )));
            // Read from the threads it runs: too few workers, or enough
            // of them with one serving everyone (a lock held while serving).
            let failed = match threads {
                Some(threads) if threads > self.workers => {
                    if held_at_once == 1 {
                        let (id, cause) = diagnosis::one_served_at_a_time(threads);
                        failed.cause_as(id, cause)
                    } else {
                        failed
                    }
                }
                _ => failed.cause_as(diagnosis::TOO_FEW_WORKERS, diagnosis::TOO_FEW_WORKERS_CAUSE),
            };
            return Ok(failed.evidence(Ctx::server_evidence(&mut server)));
        }
        if !starved.is_empty() {
            let mut evidence: Vec<String> = starved.iter().take(5).cloned().collect();
            if starved.len() > 5 {
                evidence.push(format!("... and {} more", starved.len() - 5));
            }
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(figures(StepOutcome::fail(format!(
                "{} of {} clients were never served within {} s, although every served client had closed",
                starved.len(),
                self.clients,
                self.timeout_secs
            )))
            .cause_as("pool.workers-not-reused", "when a client leaves, its worker must go back to the queue for the next one: a worker that ends, or a queue nobody reads, starves the rest")
            .evidence(evidence));
        }
        if let Some(death) = server.death_notice() {
            return Ok(
                figures(StepOutcome::fail(format!("{death} during the pool step")))
                    .cause_as("pool.died", "the server must keep running")
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        }
        let waited = self.clients - self.workers;
        Ok(figures(StepOutcome::pass(format!(
            "{} workers, {} clients: at most {most_at_once} served at once, {waited} queued and all served later, longest wait {:.1} s, 0 lost",
            self.workers,
            self.clients,
            longest_wait.as_secs_f64()
        )))
        .proof_line(format!(
            "pool: {} workers, {} clients, at most {most_at_once} served at once, longest wait {:.1} s, 0 lost",
            self.workers,
            self.clients,
            longest_wait.as_secs_f64()
        )))
    }
}

/// The most intervals `[start, end]` open at one instant (an end at the
/// same instant as a start counts as before it).
fn max_overlap(intervals: &[(Instant, Instant)]) -> usize {
    let mut events: Vec<(Instant, i32)> = Vec::with_capacity(intervals.len() * 2);
    for &(start, end) in intervals {
        events.push((start, 1));
        events.push((end.max(start), -1));
    }
    events.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        open += delta;
        most = most.max(open);
    }
    most as usize
}

/// One client: connect, send a frame, wait for its echo; once echoed, wait
/// for the release, hold a little, close.
fn visit(addr: SocketAddr, client: usize, shared: &Shared) -> Visit {
    let started = Instant::now();
    let mut stream = loop {
        let left = shared.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Visit::Starved("could not connect before the deadline".into());
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5))) {
            Ok(stream) => break stream,
            // A full accept queue drops SYNs: the kernel retries, so do we.
            Err(err) if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
            Err(err) => return Visit::Lost(format!("connect failed: {err}")),
        }
    };
    let sent = encode(format!("pool client {client}").as_bytes());
    if let Err(err) = stream.write_all(&sent) {
        return Visit::Lost(format!("sending its frame failed: {err}"));
    }
    let mut received = Vec::with_capacity(sent.len());
    let mut chunk = [0u8; 256];
    while received.len() < sent.len() {
        let left = shared.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Visit::Starved(format!(
                "no echo after {:.1} s (connected, frame sent)",
                started.elapsed().as_secs_f64()
            ));
        }
        let _ = stream.set_read_timeout(Some(left.min(POLL_INTERVAL)));
        let room = (sent.len() - received.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => {
                return Visit::Lost(format!(
                    "the server closed the connection after {:.1} s without an echo",
                    started.elapsed().as_secs_f64()
                ))
            }
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                return Visit::Lost(format!(
                    "{err} after {:.1} s, before any echo",
                    started.elapsed().as_secs_f64()
                ))
            }
        }
    }
    let echo_at = Instant::now();
    if received != sent {
        return Visit::Wrong(excerpt::compare(&sent, &received));
    }
    shared.served.fetch_add(1, Ordering::SeqCst);
    while !shared.released.load(Ordering::SeqCst) && Instant::now() < shared.deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(shared.hold);
    // Recorded before the close: the next client's echo comes after it.
    let closed_at = Instant::now();
    drop(stream);
    Visit::Served {
        waited: echo_at - started,
        echo_at,
        closed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_open_intervals_and_back_to_back_ones_once() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(max_overlap(&[]), 0);
        assert_eq!(max_overlap(&[(ms(0), ms(10)), (ms(10), ms(20))]), 1);
        assert_eq!(
            max_overlap(&[(ms(0), ms(10)), (ms(5), ms(20)), (ms(6), ms(7))]),
            3
        );
    }
}

/// The pool lessons' diagnoses, for the steps before `pool` that fail on a
/// pool bug's symptom (a closed connection, a client that waits forever):
/// each is read from the server itself, never assumed from the symptom.
pub mod diagnosis {
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use crate::checks::frame_client::{self, Ending};
    use crate::checks::{Ctx, StepKind};
    use crate::report::StepOutcome;

    pub const DROPS_UNSERVED: &str = "pool.drops-unserved";
    pub const LOCK_HELD: &str = "pool.lock-held-while-serving";
    pub const TOO_FEW_WORKERS: &str = "pool.too-few-workers";
    pub const TOO_FEW_WORKERS_CAUSE: &str = "the pool should run exactly --workers threads, each serving one client: read the flag and start that many";

    /// Whether the lesson is the pool lesson (it has a `pool` step), and the
    /// `--workers` its server steps run with (the course default is 10).
    pub fn pool_workers(ctx: &Ctx) -> Option<usize> {
        ctx.lesson
            .verify
            .iter()
            .any(|step| matches!(step.kind, StepKind::Pool(_)))
            .then(|| {
                let args = &ctx.lesson.server_args;
                args.iter()
                    .position(|a| a == "--workers")
                    .and_then(|i| args.get(i + 1)?.parse().ok())
                    .unwrap_or(10)
            })
    }

    /// Holds `workers` clients, each echoed once, so every worker is busy,
    /// then connects one more and sends it a frame. A pool with a queue
    /// keeps that client open and unechoed (it waits for a worker); a pool
    /// that drops the clients it cannot hand over at once closes it.
    /// `None` when the workers could not all be occupied (no verdict).
    pub fn drops_a_waiting_client(addr: SocketAddr, workers: usize) -> Option<bool> {
        let mut held: Vec<TcpStream> = Vec::with_capacity(workers);
        // A pool that drops clients may drop these too while its workers
        // are not ready: retry a closed one, for a bounded while.
        let deadline = Instant::now() + Duration::from_secs(3);
        for n in 0..workers {
            loop {
                let mut stream = frame_client::connect(addr).ok()?;
                let (sent, exchange) = frame_client::echo_frame(
                    &mut stream,
                    format!("worker {n} busy").as_bytes(),
                    Duration::from_secs(3),
                );
                if matches!(exchange.ending, Ending::Complete) && exchange.received == sent {
                    held.push(stream);
                    break;
                }
                if !exchange.ending.is_closed() || Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let mut extra = frame_client::connect(addr).ok()?;
        let (_, exchange) = frame_client::echo_frame(
            &mut extra,
            b"one client too many",
            Duration::from_millis(800),
        );
        let dropped = exchange.received.is_empty() && exchange.ending.is_closed();
        let waited = matches!(exchange.ending, Ending::TimedOut);
        drop(extra);
        drop(held);
        (dropped || waited).then_some(dropped)
    }

    /// Gives a step that failed on a connection closed before any echo the
    /// pool's cause, when the probe shows the pool dropping a client.
    pub fn closed_unechoed(ctx: &Ctx, addr: SocketAddr, outcome: StepOutcome) -> StepOutcome {
        let Some(workers) = pool_workers(ctx) else {
            return outcome;
        };
        if drops_a_waiting_client(addr, workers) != Some(true) {
            return outcome;
        }
        outcome.cause_as(
            DROPS_UNSERVED,
            format!(
                "a client was closed before any worker took it: with {workers} busy workers, one more client was closed unechoed instead of waiting. The pool drops the clients it cannot serve now; a client that arrives while every worker is busy must wait in the queue until a worker is free"
            ),
        )
    }

    /// The cause when a second client waits while the first is held idle,
    /// in the pool lesson: with several threads running, one worker is
    /// serving everyone in turn.
    pub fn one_served_at_a_time(threads: usize) -> (&'static str, String) {
        (
            LOCK_HELD,
            format!(
                "one worker served every client while the others waited, though the server runs {threads} threads: the queue's lock is held while serving. Take the next client out of the queue in a statement of its own, so the lock is released before the worker starts serving it"
            ),
        )
    }
}
