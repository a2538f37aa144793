//! `loops`: a server started with `--threads N` runs N event loops. Read in
//! /proc while it serves: at least N threads (the main thread may be one of
//! the loops) and at least N epoll instances. Then a closed-loop load
//! (`stress::load`, every echo verified) for a few seconds, with per-thread
//! CPU time (/proc/PID/task/*/stat) sampled before and after: each of the N
//! busiest threads must have used at least a quarter of a fair share
//! (1/N) of the server's CPU, so every loop takes part. Finally the same
//! load against `--threads 1`, for the throughput of one loop and of N
//! measured in the same run (shown, not judged: the load generator shares
//! the machine's cores with the server).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use stress::load::{run_load, LoadConfig, LoadReport, LoadStop};

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loops {
    /// Event loops asked for (passed as `--threads`).
    pub threads: usize,
    /// Connections of the load, all open at once.
    pub connections: usize,
    /// How long each load runs, in milliseconds.
    pub load_ms: u64,
    /// Also measure `--threads 1` for the throughput comparison.
    pub compare_one: bool,
    pub args: Vec<String>,
}

impl Default for Loops {
    fn default() -> Self {
        Loops {
            threads: 2,
            connections: 64,
            load_ms: 3000,
            compare_one: true,
            args: Vec::new(),
        }
    }
}

/// A loop's share of the server's CPU must reach this fraction of a fair
/// share (1/N): generous, because SO_REUSEPORT spreads connections by a
/// hash, not evenly, and the machine is shared.
const FAIR_SHARE_FRACTION: f64 = 0.25;

impl Check for Loops {
    fn summary(&self) -> String {
        format!(
            "--threads {}: {} threads and epoll instances in /proc, each loop busy under a {} ms load of {} connections",
            self.threads, self.threads, self.load_ms, self.connections
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let n = self.threads.max(1);
        let mut args = self.args.clone();
        args.extend(["--threads".to_string(), n.to_string()]);
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        // Let every loop start before counting.
        std::thread::sleep(Duration::from_millis(300));
        let threads = procfs::threads(server.pid)?;
        let epolls = procfs::epoll_fds(server.pid)?.len();
        ctx.log.detail(format!(
            "/proc/{}: {threads} threads, {epolls} epoll instances",
            server.pid
        ));
        if threads < n || epolls < n {
            return Ok(StepOutcome::fail(format!(
                "started with --threads {n}: /proc/{} shows {threads} threads and {epolls} epoll instances (expected at least {n} of each)",
                server.pid
            ))
            .cause_as("loops.too-few-loops", format!(
                "--threads {n} must start {n} event loops, each on its own thread with its own epoll instance (epoll_create1) and its own SO_REUSEPORT listener"
            ))
            .evidence(Ctx::server_evidence(&mut server))
            .figure("threads", threads)
            .figure("epoll_instances", epolls));
        }

        let before = cpu_by_thread(&server)?;
        let report = self.load(&server)?;
        let after = cpu_by_thread(&server)?;
        if let Some(failed) = load_failure(&report, n, &mut server) {
            return Ok(failed);
        }
        let mut used: Vec<(i32, Duration)> = after
            .iter()
            .map(|(tid, t)| {
                (
                    *tid,
                    t.saturating_sub(*before.get(tid).unwrap_or(&Duration::ZERO)),
                )
            })
            .collect();
        used.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        let total: f64 = used.iter().map(|(_, t)| t.as_secs_f64()).sum();
        let shares: Vec<f64> = used
            .iter()
            .take(n)
            .map(|(_, t)| {
                if total > 0.0 {
                    t.as_secs_f64() / total
                } else {
                    0.0
                }
            })
            .collect();
        let shown: Vec<String> = used
            .iter()
            .map(|(tid, t)| {
                let pct = if total > 0.0 {
                    100.0 * t.as_secs_f64() / total
                } else {
                    0.0
                };
                format!("thread {tid}: {} ms ({pct:.0} %)", t.as_millis())
            })
            .collect();
        ctx.log
            .detail(format!("CPU per thread under load: {}", shown.join(", ")));
        let floor = FAIR_SHARE_FRACTION / n as f64;
        let idle_loops = shares.iter().filter(|s| **s < floor).count();
        if shares.len() < n || idle_loops > 0 {
            return Ok(StepOutcome::fail(format!(
                "under a {} ms load of {} connections, only {} of the {n} busiest threads used at least {:.1} % of the server's CPU (a quarter of a fair share, generous for a shared machine)",
                self.load_ms,
                self.connections,
                n - idle_loops.min(n),
                100.0 * floor
            ))
            .cause_as("loops.one-loop-works", "one loop does all the work: each thread must accept from its own SO_REUSEPORT listener registered in its own epoll instance, so the kernel spreads new connections over the loops")
            .evidence(
                std::iter::once(format!("CPU per thread from /proc/{}/task/*/stat: {}", server.pid, shown.join(", ")))
                    .chain(Ctx::server_evidence(&mut server)),
            )
            .figure("threads", threads));
        }
        let rps_n = report.requests_per_sec();
        let min_share = shares.iter().cloned().fold(1.0, f64::min);
        server.stop();

        let mut outcome = StepOutcome::pass(format!(
            "{n} loops: {threads} threads, {epolls} epoll instances; every loop at least {:.0} % of the CPU under load; {:.0} req/s",
            100.0 * min_share,
            rps_n
        ))
        .figure("threads", threads)
        .figure("epoll_instances", epolls)
        .figure(format!("req_per_sec_{n}_loops"), format!("{rps_n:.0}"))
        .proof_line(format!(
            "loops: --threads {n}: {threads} threads, {epolls} epoll instances, every loop busy under load (each at least {:.1} % of the server's CPU)",
            100.0 * floor
        ));
        if self.compare_one && n > 1 {
            let mut one_args = self.args.clone();
            one_args.extend(["--threads".to_string(), "1".to_string()]);
            let mut single = match ctx.start_server(&one_args)? {
                Ok(server) => server,
                Err(failed) => return Ok(failed),
            };
            let one = self.load(&single)?;
            if let Some(failed) = load_failure(&one, 1, &mut single) {
                return Ok(failed);
            }
            single.stop();
            let rps_1 = one.requests_per_sec();
            let ratio = if rps_1 > 0.0 { rps_n / rps_1 } else { 0.0 };
            ctx.log.detail(format!(
                "throughput, same run: 1 loop {rps_1:.0} req/s, {n} loops {rps_n:.0} req/s (x{ratio:.2})"
            ));
            outcome = outcome
                .figure("req_per_sec_1_loop", format!("{rps_1:.0}"))
                .proof_line(format!(
                    "loops: throughput in the same run, {} connections for {} ms each: 1 loop {rps_1:.0} req/s, {n} loops {rps_n:.0} req/s (x{ratio:.2}; the load generator shares the cores)",
                    self.connections, self.load_ms
                ));
        }
        Ok(outcome)
    }
}

impl Loops {
    fn load(&self, server: &Server) -> Result<LoadReport> {
        let mut cfg = LoadConfig::new(
            server.addr,
            self.connections,
            LoadStop::Duration(Duration::from_millis(self.load_ms)),
        );
        cfg.timeout = Duration::from_millis(self.load_ms) + Duration::from_secs(30);
        run_load(&cfg)
    }
}

fn cpu_by_thread(server: &Server) -> Result<HashMap<i32, Duration>> {
    Ok(procfs::thread_cpu_times(server.pid)?.into_iter().collect())
}

/// A failed outcome when the load saw any error or unserved connection.
fn load_failure(report: &LoadReport, loops: usize, server: &mut Server) -> Option<StepOutcome> {
    if report.passed() {
        return None;
    }
    let mut evidence: Vec<String> = report.error_details.clone();
    evidence.extend(Ctx::server_evidence(server));
    let failed = StepOutcome::fail(format!(
        "with --threads {loops}: {} of {} connections got an echo, {} requests verified, {} errors",
        report.connections_succeeded,
        report.connections,
        report.requests_verified,
        report.errors()
    ));
    // A listener nobody accepts from leaves its connections connected and
    // never answered; wrong or lost echoes are another bug, one loop too.
    let failed = if loops > 1 && report.connections_no_echo > 0 {
        failed.cause_as("loops.listener-unserved", "every listener must be served: a SO_REUSEPORT socket that no loop accepts from still gets its share of new connections, which then wait forever")
    } else {
        failed
    };
    Some(failed.evidence(evidence))
}
