//! `perf`: the performance and leak audit. Builds and starts the course's
//! reference solution of this same lesson beside the checked server, and
//! holds the checked server to it, measured in the same run, probe by
//! probe — one probe for each cost the audit lesson is about, so a server
//! that carries any one of them fails:
//!
//! 1. **Load** (`stress::load`): `connections` connections in a closed loop
//!    of 64-byte frames for `duration_ms`, `runs` times each, interleaved
//!    (reference, checked, reference, checked, ...) so a machine that gets
//!    busier or quieter during the step slows both alike. Judged: any echo
//!    error or connection that never got an echo; the ratio of the checked
//!    server's requests per second to the reference's, each side's best
//!    run, against `min_ratio` (0.5: only a real slowdown fails on a noisy
//!    machine; the best run, because another process stealing the CPU can
//!    only make a run slower); the user-space CPU time per request
//!    (/proc/PID/stat utime over all runs) against `max_user_cpu_ratio`
//!    times the reference's plus `user_cpu_slack_ns` — the work a server
//!    does in its own code on every request (a 64 KiB buffer zeroed per
//!    read, an allocation or a copy per frame), where the kernel's socket
//!    calls should dominate; and leaks: after each of the checked server's
//!    runs (and a bounded settle) its open fds (/proc/PID/fd) and RSS
//!    (/proc/PID/status), which after the last run must be within
//!    `fd_tolerance` fds and `rss_tolerance_kib` KiB of the first's.
//! 2. **Burst** ([`burst`]): a `burst_kib` pipelined burst of 20-byte
//!    frames (16-byte payloads) on one connection, timed to its last echo byte, `burst_runs`
//!    times each, interleaved; the checked server's best run must be within
//!    `max_burst_ratio` times the reference's best plus `burst_slack_ms`.
//!    Echoing is linear; moving the rest of the input forward once per
//!    frame is quadratic and misses that bound by far.
//! 3. **Buffers given back** ([`buffers`]): `idle_connections` connections
//!    take a `burst_kib` burst each, one after another, and stay open and
//!    idle; after `idle_pause_ms` the checked server's RSS must be within
//!    `idle_rss_tolerance_kib` of what it was before the first.
//! 4. **System calls per request** ([`syscalls`]): both servers traced
//!    with ptrace over `syscall_rounds` rounds of one frame on each of
//!    `syscall_connections` connections; the checked server's calls per
//!    request must be at most `max_syscall_ratio` times the reference's.
//!    A read per event that can only fail with EAGAIN is a third of a
//!    64-byte echo's calls.
//!
//! Every probe's figures go into the proof; a failure names the probe,
//! both servers' figures, and a likely cause read from the evidence (with
//! an id course.yaml maps to the lesson's hints).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use serde::Deserialize;
use stress::load::{run_load, LoadConfig, LoadReport, LoadStop};

use super::{Check, Ctx};
use crate::build::{build, BuildOutcome};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::{Launch, ListenWait, Server};

mod buffers;
mod burst;
mod syscalls;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Perf {
    /// Connections per load run, all open at once.
    pub connections: usize,
    /// Closed-loop load per run, in milliseconds.
    pub duration_ms: u64,
    /// Runs per server (interleaved); the leak check compares the first and
    /// the last of the checked server's.
    pub runs: usize,
    /// Least checked/reference ratio of requests per second that passes.
    pub min_ratio: f64,
    /// Most user-space CPU per request, as a multiple of the reference's...
    pub max_user_cpu_ratio: f64,
    /// ... plus this many nanoseconds.
    pub user_cpu_slack_ns: u64,
    /// Open fds the last run may leave over the first.
    pub fd_tolerance: usize,
    /// RSS in KiB the last run may leave over the first.
    pub rss_tolerance_kib: u64,
    /// Longest wait after a run for the server to close its connections.
    pub settle_ms: u64,
    /// Size of the pipelined burst (and of each idle connection's burst).
    pub burst_kib: usize,
    /// Burst runs per server (interleaved).
    pub burst_runs: usize,
    /// Longest burst time that passes, as a multiple of the reference's...
    pub max_burst_ratio: f64,
    /// ... plus this many milliseconds.
    pub burst_slack_ms: u64,
    /// Connections that take a burst each and then stay open, idle.
    pub idle_connections: usize,
    /// Wait after the last of them before reading RSS.
    pub idle_pause_ms: u64,
    /// RSS growth in KiB those idle connections may leave.
    pub idle_rss_tolerance_kib: u64,
    /// Connections of the traced system-call count.
    pub syscall_connections: usize,
    /// Rounds (one frame on each connection) of the traced count.
    pub syscall_rounds: usize,
    /// Most system calls per request, as a multiple of the reference's.
    pub max_syscall_ratio: f64,
    pub args: Vec<String>,
}

impl Default for Perf {
    fn default() -> Self {
        Perf {
            connections: 100,
            duration_ms: 1500,
            runs: 3,
            min_ratio: 0.5,
            max_user_cpu_ratio: 2.5,
            user_cpu_slack_ns: 50,
            fd_tolerance: 10,
            rss_tolerance_kib: 16 * 1024,
            settle_ms: 1000,
            burst_kib: 4096,
            burst_runs: 3,
            max_burst_ratio: 10.0,
            burst_slack_ms: 50,
            idle_connections: 16,
            idle_pause_ms: 500,
            idle_rss_tolerance_kib: 16 * 1024,
            syscall_connections: 16,
            syscall_rounds: 200,
            max_syscall_ratio: 1.25,
            args: Vec::new(),
        }
    }
}

/// How long a reference burst may take before the checker gives up on the
/// machine (the reference takes milliseconds).
const REFERENCE_BURST_LIMIT: Duration = Duration::from_secs(30);
/// How long each idle connection's burst may take to come back.
const IDLE_BURST_TIMEOUT: Duration = Duration::from_secs(20);

/// The checked server's state after one of its runs.
struct After {
    fds: usize,
    rss_kib: u64,
}

/// The user-space CPU time of `pid` (all its threads): /proc/PID/stat's
/// utime, in clock ticks.
pub(crate) fn user_cpu_time(pid: Pid) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    // After the command name: state is field 3; utime is field 14.
    let ticks: u64 = rest
        .split_whitespace()
        .nth(11)
        .context("no utime in stat")?
        .parse()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second))
}

/// Microseconds per request, for messages.
fn us_per(time: Duration, requests: u64) -> f64 {
    time.as_secs_f64() * 1e6 / requests.max(1) as f64
}

fn ms(time: Duration) -> String {
    format!("{:.0} ms", time.as_secs_f64() * 1000.0)
}

impl Check for Perf {
    fn summary(&self) -> String {
        format!(
            "the audit beside the reference solution, each probe measured on both in the same run: loadtest ({} connections, {} × {:.1} s each, interleaved) at least {:.2} of its req/s and at most {:.1}× its user-space CPU per request, fds (+{}) and RSS (+{} MiB) level over the runs; a {} KiB pipelined burst within {:.0}× its time; {} connections idle after a burst each within +{} MiB RSS; system calls per request at most {:.2}× its",
            self.connections,
            self.runs.max(2),
            self.duration_ms as f64 / 1000.0,
            self.min_ratio,
            self.max_user_cpu_ratio,
            self.fd_tolerance,
            self.rss_tolerance_kib / 1024,
            self.burst_kib,
            self.max_burst_ratio,
            self.idle_connections,
            self.idle_rss_tolerance_kib / 1024,
            self.max_syscall_ratio,
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let runs = self.runs.max(2);
        let reference_dir = ctx.course.solution_dir(ctx.lesson);
        ctx.log.detail(format!(
            "building the reference solution {}",
            reference_dir.display()
        ));
        let binary = match build(&reference_dir)? {
            BuildOutcome::Built { binary, .. } => binary,
            BuildOutcome::Failed { summary, .. } => bail!(
                "the reference solution {} does not build: {summary}",
                reference_dir.display()
            ),
        };
        let mut argv = vec![binary.display().to_string(), "--port".into(), "0".into()];
        argv.extend(ctx.lesson.server_args.iter().cloned());
        argv.extend(self.args.iter().cloned());
        let launch = Launch {
            argv,
            wait: ListenWait::ListeningLine,
            nofile_soft: None,
            nofile_hard: None,
        };
        let mut reference = match Server::start(&launch)? {
            Ok(server) => server,
            Err(failure) => bail!("the reference solution did not start: {}", failure.message),
        };
        ctx.log.detail(format!(
            "reference pid {} listening on {}",
            reference.pid, reference.addr
        ));
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };

        // 1. Load: rate, user-space CPU per request, fds and RSS.
        let duration = Duration::from_millis(self.duration_ms.max(100));
        let mut reference_runs: Vec<LoadReport> = Vec::new();
        let mut checked_runs: Vec<LoadReport> = Vec::new();
        let mut afters: Vec<After> = Vec::new();
        let mut server_cpu = Duration::ZERO;
        let mut server_user_cpu = Duration::ZERO;
        let mut reference_user_cpu = Duration::ZERO;
        for run in 1..=runs {
            let user_before = user_cpu_time(reference.pid).unwrap_or_default();
            let report = self.load(reference.addr, duration)?;
            reference_user_cpu += user_cpu_time(reference.pid)
                .unwrap_or_default()
                .saturating_sub(user_before);
            if !report.passed() {
                bail!(
                    "the reference solution failed its own load run {run} ({} errors, {} of {} connections echoed): the machine may be overloaded",
                    report.errors(),
                    report.connections_succeeded,
                    report.connections
                );
            }
            if let Some(death) = reference.death_notice() {
                bail!("the reference solution died under load: {death}");
            }
            ctx.log.detail(format!(
                "run {run}/{runs} reference: {:.0} req/s",
                report.requests_per_sec()
            ));
            reference_runs.push(report);

            let cpu_before = procfs::cpu_time(server.pid).unwrap_or_default();
            let user_before = user_cpu_time(server.pid).unwrap_or_default();
            let report = self.load(server.addr, duration)?;
            server_cpu += procfs::cpu_time(server.pid)
                .unwrap_or_default()
                .saturating_sub(cpu_before);
            server_user_cpu += user_cpu_time(server.pid)
                .unwrap_or_default()
                .saturating_sub(user_before);
            if let Some(death) = server.death_notice() {
                return Ok(self.died(&mut server, death, &format!("load run {run}")));
            }
            ctx.log.detail(format!(
                "run {run}/{runs} yours: {:.0} req/s, {} errors",
                report.requests_per_sec(),
                report.errors()
            ));
            if !report.passed() {
                return Ok(StepOutcome::fail(format!(
                    "load run {run}: {} errors, {} of {} connections got an echo",
                    report.errors(),
                    report.connections_succeeded,
                    report.connections
                ))
                .cause("every request must be echoed whole and in order under load, on every connection")
                .evidence(
                    report
                        .error_details
                        .iter()
                        .cloned()
                        .chain(Ctx::server_evidence(&mut server)),
                ));
            }
            checked_runs.push(report);
            afters.push(self.settle(&server, afters.first())?);
        }

        let reference_rate = best_rate(&reference_runs);
        let checked_rate = best_rate(&checked_runs);
        let ratio = if reference_rate > 0.0 {
            checked_rate / reference_rate
        } else {
            0.0
        };
        let verified: u64 = checked_runs.iter().map(|r| r.requests_verified).sum();
        let reference_verified: u64 = reference_runs.iter().map(|r| r.requests_verified).sum();
        let generator_cpu: Duration = checked_runs.iter().map(|r| r.cpu_load.total()).sum();
        ctx.log.detail(format!(
            "CPU per request on your server's runs: server {:.2} µs ({:.2} µs of it in user space), load generator {:.2} µs",
            us_per(server_cpu, verified),
            us_per(server_user_cpu, verified),
            us_per(generator_cpu, verified)
        ));
        let rates = format!(
            "reference {:.0} req/s, yours {:.0} req/s (ratio {ratio:.2}, at least {:.2} needed)",
            reference_rate, checked_rate, self.min_ratio
        );
        let reference_user_us = us_per(reference_user_cpu, reference_verified);
        let user_us = us_per(server_user_cpu, verified);
        let max_user_us =
            reference_user_us * self.max_user_cpu_ratio + self.user_cpu_slack_ns as f64 / 1000.0;
        let user_cpu = format!(
            "reference {reference_user_us:.2} µs, yours {user_us:.2} µs (at most {max_user_us:.2} µs: {:.1}× the reference's + {:.2} µs)",
            self.max_user_cpu_ratio,
            self.user_cpu_slack_ns as f64 / 1000.0
        );
        let fds: Vec<String> = afters.iter().map(|a| a.fds.to_string()).collect();
        let rss: Vec<String> = afters.iter().map(|a| a.rss_kib.to_string()).collect();
        let levels = format!(
            "open fds {} and RSS {} KiB after each run",
            fds.join(", "),
            rss.join(", ")
        );
        ctx.log.detail(&rates);
        ctx.log
            .detail(format!("user-space CPU per request: {user_cpu}"));
        ctx.log.detail(&levels);

        if ratio < self.min_ratio {
            return Ok(StepOutcome::fail(format!(
                "too slow beside the reference in the same run: {rates}"
            ))
            .cause("something on the hot path costs far more than the socket calls: a sleep, a per-frame allocation or copy, a tiny read buffer, `--max-events 1`... profile it under load (`perf top -p PID`)")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("reference_req_per_sec", format!("{reference_rate:.0}"))
            .figure("req_per_sec", format!("{checked_rate:.0}"))
            .figure("ratio", format!("{ratio:.2}")));
        }
        if user_us > max_user_us {
            return Ok(StepOutcome::fail(format!(
                "your server's own code (user space, outside the kernel) costs too much CPU per request, measured over the same load runs: {user_cpu}"
            ))
            .cause_as("perf.user-cpu", "something in your code runs on every request and costs more than the socket calls around it: a buffer zeroed per read (`[0u8; 65536]` in read_all is a 64 KiB memset on every event: allocate one buffer once and read into it), an allocation or a copy per frame. `perf top -p PID` under load names it (memset, malloc, memmove)")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("reference_user_us_per_request", format!("{reference_user_us:.2}"))
            .figure("user_us_per_request", format!("{user_us:.2}")));
        }
        let (first, last) = (&afters[0], &afters[afters.len() - 1]);
        if last.fds > first.fds + self.fd_tolerance {
            return Ok(StepOutcome::fail(format!(
                "open fds grow from run to run: {levels} (at most {} over the first allowed)",
                self.fd_tolerance
            ))
            .cause("a connection's socket is kept after the client left: remove the connection when read returns 0 or an error, so its TcpStream is dropped (and nothing else holds it)")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("fds_first", first.fds)
            .figure("fds_last", last.fds));
        }
        if last.rss_kib > first.rss_kib + self.rss_tolerance_kib {
            return Ok(StepOutcome::fail(format!(
                "RSS grows from run to run: {levels} (at most {} KiB over the first allowed)",
                self.rss_tolerance_kib
            ))
            .cause("memory kept after connections close: per-connection state never removed, or buffers that only ever grow")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("rss_first_kib", first.rss_kib)
            .figure("rss_last_kib", last.rss_kib));
        }
        let mut outcome_proof = vec![
            format!(
                "perf: {} connections, best of {runs} interleaved runs of {:.1} s each: {rates}",
                self.connections,
                duration.as_secs_f64()
            ),
            format!("perf: user-space CPU per request over those runs: {user_cpu}"),
            format!(
                "perf: after {runs} loadtests {levels} (within {} fds and {} KiB of the first)",
                self.fd_tolerance, self.rss_tolerance_kib
            ),
        ];

        // 2. A long pipelined burst: linear cost.
        let burst_line = match self.burst(ctx, &mut reference, &mut server)? {
            Ok(line) => line,
            Err(failed) => return Ok(failed),
        };
        outcome_proof.push(burst_line);

        // 3. Buffers given back once idle.
        let idle_line = match self.idle_buffers(ctx, &mut server)? {
            Ok(line) => line,
            Err(failed) => return Ok(failed),
        };
        outcome_proof.push(idle_line);

        // 4. System calls per request.
        let syscall_line = match self.syscalls(ctx, &mut reference, &mut server)? {
            Ok(line) => line,
            Err(failed) => return Ok(failed),
        };
        outcome_proof.push(syscall_line);
        drop(reference);

        let mut outcome = StepOutcome::pass(format!(
            "{rates}; user-space CPU per request {user_us:.2} µs (reference {reference_user_us:.2} µs); {levels}; burst, idle buffers and system calls per request within bounds"
        ))
        .figure("reference_req_per_sec", format!("{reference_rate:.0}"))
        .figure("req_per_sec", format!("{checked_rate:.0}"))
        .figure("ratio", format!("{ratio:.2}"))
        .figure("reference_user_us_per_request", format!("{reference_user_us:.2}"))
        .figure("user_us_per_request", format!("{user_us:.2}"));
        for line in outcome_proof {
            outcome = outcome.proof_line(line);
        }
        Ok(outcome)
    }
}

impl Perf {
    /// One closed-loop run of 64-byte requests against `addr`.
    fn load(&self, addr: std::net::SocketAddr, duration: Duration) -> Result<LoadReport> {
        let mut config = LoadConfig::new(addr, self.connections, LoadStop::Duration(duration));
        config.timeout = duration + Duration::from_secs(30);
        run_load(&config).with_context(|| format!("load run against {addr}"))
    }

    /// The verdict for a checked server that died during `during`.
    fn died(&self, server: &mut Server, death: String, during: &str) -> StepOutcome {
        StepOutcome::fail(format!("your server died during {during}"))
            .cause("a panic or an unwrap() on the hot path: run the same load by hand (see the README's Verify) and read the server's stderr")
            .evidence(std::iter::once(death).chain(server.output_tail(20)))
    }

    /// Waits (bounded) for the server to close the run's connections, then
    /// reads its fds and RSS. Later runs wait until the fds are back near
    /// the first run's level, or the settle time is over.
    fn settle(&self, server: &Server, first: Option<&After>) -> Result<After> {
        let deadline = Instant::now() + Duration::from_millis(self.settle_ms);
        std::thread::sleep(Duration::from_millis(100));
        let mut fds = procfs::open_fds(server.pid)?.len();
        loop {
            let settled = match first {
                Some(first) => fds <= first.fds + self.fd_tolerance,
                None => false,
            };
            if settled || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            fds = procfs::open_fds(server.pid)?.len();
        }
        Ok(After {
            fds,
            rss_kib: procfs::rss_kib(server.pid)?,
        })
    }

    /// The longest checked burst that passes, given the reference's best.
    fn burst_bound(&self, reference_best: Duration) -> Duration {
        reference_best.mul_f64(self.max_burst_ratio.max(1.0))
            + Duration::from_millis(self.burst_slack_ms)
    }

    /// Probe 2: `Ok(Ok(proof line))`, or `Ok(Err(failure))`.
    fn burst(
        &self,
        ctx: &mut Ctx,
        reference: &mut Server,
        server: &mut Server,
    ) -> Result<std::result::Result<String, StepOutcome>> {
        let wire = burst::wire(self.burst_kib.max(1) * 1024);
        let runs = self.burst_runs.max(1);
        let mut reference_best: Option<Duration> = None;
        let mut checked_best: Option<Duration> = None;
        // Each checked run, in words, for a failure.
        let mut checked_runs: Vec<String> = Vec::new();
        let mut checked_user_cpu = Duration::ZERO;
        let mut checked_elapsed = Duration::ZERO;
        for run in 1..=runs {
            match burst::run(reference.pid, reference.addr, &wire, REFERENCE_BURST_LIMIT) {
                burst::Run::Done { elapsed, .. } => {
                    reference_best = Some(reference_best.map_or(elapsed, |b| b.min(elapsed)));
                    ctx.log.detail(format!(
                        "burst {run}/{runs} reference: {} KiB echoed in {}",
                        self.burst_kib,
                        ms(elapsed)
                    ));
                }
                burst::Run::TooSlow { received, .. } => bail!(
                    "the reference solution echoed {received} of {} burst bytes in {} s: the machine is overloaded",
                    wire.len(),
                    REFERENCE_BURST_LIMIT.as_secs()
                ),
                burst::Run::Broken(problem) => {
                    bail!("the reference solution failed the burst: {problem}")
                }
            }
            let limit = self.burst_bound(reference_best.unwrap_or(REFERENCE_BURST_LIMIT));
            let outcome = burst::run(server.pid, server.addr, &wire, limit);
            if let Some(death) = server.death_notice() {
                return Ok(Err(self.died(server, death, &format!("burst {run}"))));
            }
            match outcome {
                burst::Run::Done { elapsed, user_cpu } => {
                    checked_best = Some(checked_best.map_or(elapsed, |b| b.min(elapsed)));
                    checked_user_cpu += user_cpu;
                    checked_elapsed += elapsed;
                    checked_runs.push(format!("done in {}", ms(elapsed)));
                    ctx.log.detail(format!(
                        "burst {run}/{runs} yours: {} KiB echoed in {}",
                        self.burst_kib,
                        ms(elapsed)
                    ));
                }
                burst::Run::TooSlow {
                    limit,
                    received,
                    user_cpu,
                } => {
                    checked_user_cpu += user_cpu;
                    checked_elapsed += limit;
                    ctx.log.detail(format!(
                        "burst {run}/{runs} yours: {} of {} KiB echoed after {} (cut off there)",
                        received / 1024,
                        self.burst_kib,
                        ms(limit)
                    ));
                    checked_runs.push(format!(
                        "{} of {} KiB back when cut off at {}",
                        received / 1024,
                        self.burst_kib,
                        ms(limit)
                    ));
                }
                burst::Run::Broken(problem) => {
                    return Ok(Err(StepOutcome::fail(format!(
                        "burst {run}: a {} KiB pipelined burst of frames with {}-byte payloads on one connection: {problem}",
                        self.burst_kib,
                        burst::PAYLOAD
                    ))
                    .cause("every frame of a long pipelined burst must come back whole and in order")
                    .evidence(Ctx::server_evidence(server))));
                }
            }
        }
        let reference_best = reference_best.unwrap_or_default();
        let bound = self.burst_bound(reference_best);
        let rule = format!(
            "at most {}: {:.0}× the reference's + {} ms",
            ms(bound),
            self.max_burst_ratio,
            self.burst_slack_ms
        );
        match checked_best {
            Some(best) if best <= bound => Ok(Ok(format!(
                "perf: a {} KiB pipelined burst of frames with {}-byte payloads, best of {runs} interleaved: reference {}, yours {} ({rule})",
                self.burst_kib,
                burst::PAYLOAD,
                ms(reference_best),
                ms(best)
            ))),
            _ => {
                let mut failed = StepOutcome::fail(format!(
                    "a {} KiB pipelined burst of frames with {}-byte payloads on one connection takes far longer than on the reference: reference {} (best of {runs}), yours {} ({rule})",
                    self.burst_kib,
                    burst::PAYLOAD,
                    ms(reference_best),
                    checked_runs.join(", "),
                ));
                let user_share = checked_user_cpu.as_secs_f64() / checked_elapsed.as_secs_f64().max(1e-6);
                let cpu_note = format!(
                    "your server spent {} of CPU in its own code (user space) during {} of bursts",
                    ms(checked_user_cpu),
                    ms(checked_elapsed)
                );
                failed = if user_share >= 0.5 {
                    failed.cause_as("perf.burst-quadratic", format!("{cpu_note}: work in your code that grows with what is already buffered. The usual one: taking each frame off the front of inbuf (a drain(..n) per frame, a Vec per frame) moves everything behind it forward, once per frame, so N pipelined frames cost O(N²) bytes moved. Walk the frames with a cursor and drain once at the end"))
                } else {
                    failed.cause_as("perf.burst-slow", format!("{cpu_note}, so the time went elsewhere: tiny reads or writes, a sleep, or an event handled late. Compare `strace -c -p PID` during a burst with the reference's"))
                };
                Ok(Err(failed
                    .evidence(Ctx::server_evidence(server))
                    .figure("reference_burst_ms", format!("{:.0}", reference_best.as_secs_f64() * 1000.0))
                    .figure(
                        "burst_ms",
                        checked_best
                            .map(|b| format!("{:.0}", b.as_secs_f64() * 1000.0))
                            .unwrap_or_else(|| "unfinished".into()),
                    )))
            }
        }
    }

    /// Probe 3: `Ok(Ok(proof line))`, or `Ok(Err(failure))`.
    fn idle_buffers(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
    ) -> Result<std::result::Result<String, StepOutcome>> {
        let wire = burst::wire(self.burst_kib.max(1) * 1024);
        let connections = self.idle_connections.max(1);
        let pause = Duration::from_millis(self.idle_pause_ms);
        let held = buffers::run(
            server.pid,
            server.addr,
            connections,
            &wire,
            pause,
            IDLE_BURST_TIMEOUT,
        );
        if let Some(death) = server.death_notice() {
            return Ok(Err(self.died(server, death, "the idle-buffers probe")));
        }
        let (before, after) = match held? {
            buffers::Held::Measured {
                before_kib,
                after_kib,
            } => (before_kib, after_kib),
            buffers::Held::Broken(problem) => {
                return Ok(Err(StepOutcome::fail(format!(
                    "{connections} connections each sending a {} KiB burst before reading its echo: {problem}",
                    self.burst_kib
                ))
                .cause("every frame must come back whole and in order, however much a client sends before it reads")
                .evidence(Ctx::server_evidence(server))));
            }
        };
        let growth = after.saturating_sub(before);
        let seen = format!(
            "{connections} connections, each after a {} KiB burst (sent before reading its echo), open and idle for {} ms: RSS {before} KiB before the first, {after} KiB after (+{growth} KiB, at most +{} KiB)",
            self.burst_kib,
            pause.as_millis(),
            self.idle_rss_tolerance_kib
        );
        ctx.log.detail(&seen);
        if growth > self.idle_rss_tolerance_kib {
            let per_connection = growth / connections as u64;
            return Ok(Err(StepOutcome::fail(format!(
                "idle connections keep the memory their bursts grew: {seen}"
            ))
            .cause_as("perf.buffers-kept", format!("about {per_connection} KiB kept per idle connection: its buffers keep the capacity the burst grew them to (`clear()` and `drain(..)` keep a Vec's capacity), for as long as it stays open. Once a buffer is empty and holds more than a few KiB, give the memory back (assign a new, empty Vec)"))
            .evidence(Ctx::server_evidence(server))
            .figure("idle_rss_before_kib", before)
            .figure("idle_rss_after_kib", after)));
        }
        Ok(Ok(format!("perf: {seen}")))
    }

    /// Probe 4: `Ok(Ok(proof line))`, or `Ok(Err(failure))`.
    fn syscalls(
        &self,
        ctx: &mut Ctx,
        reference: &mut Server,
        server: &mut Server,
    ) -> Result<std::result::Result<String, StepOutcome>> {
        let (connections, rounds) = (self.syscall_connections.max(1), self.syscall_rounds.max(1));
        let shape =
            format!("{connections} connections × {rounds} rounds of one 64-byte frame each");
        let reference_counts =
            match syscalls::count(reference.pid, reference.addr, connections, rounds)? {
                syscalls::Traced::Counted(counts) => counts,
                syscalls::Traced::Broken(problem) => {
                    bail!("the reference solution failed the traced rounds: {problem}")
                }
            };
        let traced = syscalls::count(server.pid, server.addr, connections, rounds)?;
        if let Some(death) = server.death_notice() {
            return Ok(Err(self.died(server, death, "the system-call count")));
        }
        let counts = match traced {
            syscalls::Traced::Counted(counts) => counts,
            syscalls::Traced::Broken(problem) => {
                return Ok(Err(StepOutcome::fail(format!(
                    "while its system calls were counted ({shape}): {problem}"
                ))
                .cause("every request must be echoed while the server is traced, too (tracing only makes each system call slower)")
                .evidence(Ctx::server_evidence(server))));
            }
        };
        let reference_per = reference_counts.per_request();
        let per = counts.per_request();
        let bound = reference_per * self.max_syscall_ratio;
        let figures = format!(
            "reference {reference_per:.2}, yours {per:.2} (at most {bound:.2}: {:.2}× the reference's)",
            self.max_syscall_ratio
        );
        let yours = format!("yours per request: {}", counts.breakdown());
        let theirs = format!("reference per request: {}", reference_counts.breakdown());
        ctx.log.detail(format!(
            "system calls per request, traced over {shape}: {figures}"
        ));
        ctx.log.detail(&yours);
        ctx.log.detail(&theirs);
        if per > bound {
            let failed = StepOutcome::fail(format!(
                "more system calls per request than the reference, counted over {shape}: {figures}"
            ));
            let failed_reads = counts.failed_reads_per_request();
            let ctl = counts.per_request_of(&["epoll_ctl"]);
            let waits = counts.per_request_of(&["epoll_wait", "epoll_pwait", "epoll_pwait2"]);
            let writes = counts.per_request_of(syscalls::WRITES);
            let failed = if failed_reads >= 0.5 {
                failed.cause_as("perf.read-until-eagain", format!("{failed_reads:.2} reads per request fail with EAGAIN: every event is drained until a read fails, though a read that returned fewer bytes than asked for had already emptied the receive queue (epoll(7) allows stopping there). Stop after a short read, unless the event says a FIN is queued: register EPOLLRDHUP, and read on to EAGAIN only when the event carries EPOLLRDHUP, EPOLLHUP or EPOLLERR"))
            } else if ctl >= 0.5 {
                failed.cause_as("perf.epoll-ctl-per-event", format!("{ctl:.2} epoll_ctl calls per request: the registration is changed on (nearly) every event. Remember what is registered and call epoll_ctl only when the interest changes"))
            } else if waits >= 0.5 {
                failed.cause_as("perf.one-event-per-wait", format!("{waits:.2} epoll_wait calls per request: each wait returns about one event (a tiny --max-events, or one event handled per wait)"))
            } else if writes >= 1.5 {
                failed.cause_as("perf.writes-per-echo", format!("{writes:.2} writes per request: the echo goes out in pieces. Append it to the output buffer and write once per event"))
            } else {
                failed.cause("compare the two breakdowns below: every call beyond the reference's is paid on every request")
            };
            return Ok(Err(failed
                .evidence([yours, theirs])
                .evidence(Ctx::server_evidence(server))
                .figure(
                    "reference_syscalls_per_request",
                    format!("{reference_per:.2}"),
                )
                .figure("syscalls_per_request", format!("{per:.2}"))));
        }
        Ok(Ok(format!(
            "perf: system calls per request, traced over {shape}: {figures}"
        )))
    }
}

/// The best run's verified requests per second.
fn best_rate(runs: &[LoadReport]) -> f64 {
    runs.iter()
        .map(LoadReport::requests_per_sec)
        .fold(0.0, f64::max)
}
