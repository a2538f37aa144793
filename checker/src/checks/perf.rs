//! `perf`: builds and starts the course's reference solution of this same
//! lesson beside the checked server, and drives both with the load engine
//! (`stress::load`): `connections` connections in a closed loop of 64-byte
//! frames for `duration_ms`, `runs` times each, interleaved (reference,
//! checked, reference, checked, ...) so a machine that gets busier or
//! quieter during the step slows both alike. Judges:
//!
//! - the ratio of the checked server's requests per second to the
//!   reference's, each side's best run, against `min_ratio` (0.5: a wide
//!   margin, so only a real slowdown fails on a noisy machine; the best
//!   run, because another process stealing the CPU can only make a run
//!   slower), and any echo error or connection that never got an echo;
//! - leaks: after each of the checked server's runs (and a bounded settle)
//!   its open fds (/proc/PID/fd) and RSS (/proc/PID/status). After the last
//!   run they must be within `fd_tolerance` fds and `rss_tolerance_kib` KiB
//!   of what they were after the first (first-run allocations are not
//!   leaks).
//!
//! Both rates, the ratio, and the fds and RSS after every run go into the
//! proof. The generator's and the server's CPU time per request are logged,
//! so a reader can see which side was the bottleneck.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use stress::load::{run_load, LoadConfig, LoadReport, LoadStop};

use super::{Check, Ctx};
use crate::build::{build, BuildOutcome};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::{Launch, ListenWait, Server};

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
    /// Open fds the last run may leave over the first.
    pub fd_tolerance: usize,
    /// RSS in KiB the last run may leave over the first.
    pub rss_tolerance_kib: u64,
    /// Longest wait after a run for the server to close its connections.
    pub settle_ms: u64,
    pub args: Vec<String>,
}

impl Default for Perf {
    fn default() -> Self {
        Perf {
            connections: 100,
            duration_ms: 1500,
            runs: 3,
            min_ratio: 0.5,
            fd_tolerance: 10,
            rss_tolerance_kib: 16 * 1024,
            settle_ms: 1000,
            args: Vec::new(),
        }
    }
}

/// The checked server's state after one of its runs.
struct After {
    fds: usize,
    rss_kib: u64,
}

impl Check for Perf {
    fn summary(&self) -> String {
        format!(
            "loadtest beside the reference solution: {} connections, {} × {:.1} s each, interleaved; at least {:.2} of its req/s; fds (+{}) and RSS (+{} MiB) level over the runs",
            self.connections,
            self.runs.max(2),
            self.duration_ms as f64 / 1000.0,
            self.min_ratio,
            self.fd_tolerance,
            self.rss_tolerance_kib / 1024
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

        let duration = Duration::from_millis(self.duration_ms.max(100));
        let mut reference_runs: Vec<LoadReport> = Vec::new();
        let mut checked_runs: Vec<LoadReport> = Vec::new();
        let mut afters: Vec<After> = Vec::new();
        let mut server_cpu = Duration::ZERO;
        for run in 1..=runs {
            let report = self.load(reference.addr, duration)?;
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
            let report = self.load(server.addr, duration)?;
            server_cpu += procfs::cpu_time(server.pid)
                .unwrap_or_default()
                .saturating_sub(cpu_before);
            if let Some(death) = server.death_notice() {
                return Ok(StepOutcome::fail(format!(
                    "your server died during load run {run} ({} connections)",
                    self.connections
                ))
                .cause("a panic or an unwrap() on the hot path: run the same load by hand (see the README's Verify) and read the server's stderr")
                .evidence(std::iter::once(death).chain(server.output_tail(20))));
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
        drop(reference);

        let reference_rate = best_rate(&reference_runs);
        let checked_rate = best_rate(&checked_runs);
        let ratio = if reference_rate > 0.0 {
            checked_rate / reference_rate
        } else {
            0.0
        };
        let verified: u64 = checked_runs.iter().map(|r| r.requests_verified).sum();
        let generator_cpu: Duration = checked_runs.iter().map(|r| r.cpu_load.total()).sum();
        if verified > 0 {
            ctx.log.detail(format!(
                "CPU per request on your server's runs: server {:.2} µs, load generator {:.2} µs",
                server_cpu.as_secs_f64() * 1e6 / verified as f64,
                generator_cpu.as_secs_f64() * 1e6 / verified as f64
            ));
        }
        let rates = format!(
            "reference {:.0} req/s, yours {:.0} req/s (ratio {ratio:.2}, at least {:.2} needed)",
            reference_rate, checked_rate, self.min_ratio
        );
        let fds: Vec<String> = afters.iter().map(|a| a.fds.to_string()).collect();
        let rss: Vec<String> = afters.iter().map(|a| a.rss_kib.to_string()).collect();
        let levels = format!(
            "open fds {} and RSS {} KiB after each run",
            fds.join(", "),
            rss.join(", ")
        );
        ctx.log.detail(&rates);
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
        Ok(StepOutcome::pass(format!("{rates}; {levels}"))
            .figure("reference_req_per_sec", format!("{reference_rate:.0}"))
            .figure("req_per_sec", format!("{checked_rate:.0}"))
            .figure("ratio", format!("{ratio:.2}"))
            .proof_line(format!(
                "perf: {} connections, best of {runs} interleaved runs of {:.1} s each: {rates}",
                self.connections,
                duration.as_secs_f64()
            ))
            .proof_line(format!(
                "perf: after {runs} loadtests {levels} (within {} fds and {} KiB of the first)",
                self.fd_tolerance, self.rss_tolerance_kib
            )))
    }
}

impl Perf {
    /// One closed-loop run of 64-byte requests against `addr`.
    fn load(&self, addr: std::net::SocketAddr, duration: Duration) -> Result<LoadReport> {
        let mut config = LoadConfig::new(addr, self.connections, LoadStop::Duration(duration));
        config.timeout = duration + Duration::from_secs(30);
        run_load(&config).with_context(|| format!("load run against {addr}"))
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
}

/// The best run's verified requests per second.
fn best_rate(runs: &[LoadReport]) -> f64 {
    runs.iter()
        .map(LoadReport::requests_per_sec)
        .fold(0.0, f64::max)
}
