//! `bench`: the course's milestone benchmark.
//!
//! Runs the reference solutions of the milestones — thread per connection
//! (w01-l03), poll (w02-l16), epoll level-triggered (w03-l17), the final
//! edge-triggered server (w03-l22) — and `tokio-echo` (a tokio
//! current_thread echo server, the outside baseline) under the stress
//! crate's load engine: closed loop at each connection tier (50, 1,000,
//! 10,000) and a fixed offered rate (50k req/s over 10,000 connections).
//!
//! Method, in the order it happens:
//! - every server is built (`cargo build --release`) once;
//! - with two or more cores the generator (this process) is pinned to CPU 0
//!   and every server to CPU 1 (`sched_setaffinity`), so they never share a
//!   core;
//! - each tier is run `--runs` times; within a run every server gets one
//!   load, the baseline included, in an order that alternates each run
//!   (forward, then backward), so drift on a shared machine hits all alike;
//! - every load starts a fresh server process: its idle RSS is read first,
//!   then peak RSS and thread count are sampled every 100 ms during the
//!   load, and its CPU time (/proc/PID/stat) is read around the load phase;
//! - each figure is reported as its range over the runs and as the median
//!   of the per-run ratios to the baseline's figure of the same run.
//!
//! `bench --quick` is a one-minute smoke run (printed, not written); the
//! full run writes docs/PERFORMANCE.md and docs/performance.svg.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use stress::load::{run_load_with_progress, LoadConfig, LoadReport, LoadStop};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the course's milestone servers against a tokio baseline")]
struct Args {
    /// A one-minute smoke run: 2 runs, tiers 50 and 1000, 20k req/s over
    /// 1000 connections, 1 s loads; prints the table, writes nothing.
    #[arg(long)]
    quick: bool,
    /// Runs per tier (each run loads every server once).
    #[arg(long)]
    runs: Option<usize>,
    /// Closed-loop connection tiers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Fixed-rate tier as RATE@CONNECTIONS (`none` for no rate tier).
    #[arg(long)]
    rate_tier: Option<String>,
    /// Seconds of load per run.
    #[arg(long)]
    duration: Option<f64>,
    /// Only these servers (tokio, w01-l03, w02-l16, w03-l17, w03-l22, w04-l23);
    /// tokio is always run, as the baseline.
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,
    /// Write docs/PERFORMANCE.md and docs/performance.svg (the default for
    /// a full run; a quick run only with this flag).
    #[arg(long)]
    write: bool,
    /// Do not write the docs even on a full run.
    #[arg(long)]
    no_write: bool,
    /// Skip `cargo build` (the binaries in target/release are used as they are).
    #[arg(long)]
    no_build: bool,
    /// A note for PERFORMANCE.md's machine section.
    #[arg(long)]
    note: Option<String>,
    /// Measure nothing: write docs/PERFORMANCE.md and the chart again from
    /// the figures a full run saved (target/bench/last-run.json), e.g. after
    /// a change to the wording.
    #[arg(long)]
    render: bool,
}

/// Everything a run measured, saved so the docs can be written again
/// without measuring (`bench --render`).
#[derive(Serialize, Deserialize)]
struct SavedRun {
    tiers: Vec<Tier>,
    servers: Vec<String>,
    /// (tier index, server key, one sample per run).
    samples: Vec<(usize, String, Vec<Sample>)>,
    runs: usize,
    duration_s: f64,
    pinned: bool,
    cores: usize,
    load_before: String,
    busy_before: f64,
    load_after: String,
    elapsed_s: f64,
    note: Option<String>,
}

impl SavedRun {
    fn path(root: &Path) -> PathBuf {
        root.join("target/bench/last-run.json")
    }

    /// The servers and the samples in the shape the renderers take.
    #[allow(clippy::type_complexity)]
    fn figures(
        &self,
    ) -> Result<(
        Vec<&'static ServerKind>,
        BTreeMap<(usize, &'static str), Vec<Sample>>,
    )> {
        let servers: Vec<&ServerKind> = SERVERS
            .iter()
            .filter(|s| self.servers.iter().any(|k| k == s.key))
            .collect();
        let mut samples: BTreeMap<(usize, &str), Vec<Sample>> = BTreeMap::new();
        for (tier, key, list) in &self.samples {
            let server = SERVERS
                .iter()
                .find(|s| s.key == key)
                .with_context(|| format!("the saved run names an unknown server `{key}`"))?;
            samples.insert((*tier, server.key), list.clone());
        }
        Ok((servers, samples))
    }

    #[cfg(test)]
    fn markdown(&self) -> Result<String> {
        let (servers, samples) = self.figures()?;
        Ok(self.render_markdown(&servers, &samples))
    }

    fn render_markdown(
        &self,
        servers: &[&ServerKind],
        samples: &BTreeMap<(usize, &str), Vec<Sample>>,
    ) -> String {
        render_markdown(&MarkdownInput {
            tiers: &self.tiers,
            servers,
            samples,
            runs: self.runs,
            duration: Duration::from_secs_f64(self.duration_s),
            pinned: self.pinned,
            cores: self.cores,
            load_before: &self.load_before,
            busy_before: self.busy_before,
            load_after: &self.load_after,
            elapsed: Duration::from_secs_f64(self.elapsed_s),
            note: self.note.as_deref(),
        })
    }

    /// Writes the docs from these figures.
    fn write_docs(&self, root: &Path) -> Result<()> {
        let (servers, samples) = self.figures()?;
        let md = self.render_markdown(&servers, &samples);
        let docs = root.join("docs");
        std::fs::write(docs.join("PERFORMANCE.md"), md).context("writing docs/PERFORMANCE.md")?;
        let svg = render_svg(&self.tiers, &servers, &samples);
        std::fs::write(docs.join("performance.svg"), svg)
            .context("writing docs/performance.svg")?;
        eprintln!("bench: wrote docs/PERFORMANCE.md and docs/performance.svg");
        Ok(())
    }
}

/// One server of the benchmark.
struct ServerKind {
    key: &'static str,
    label: &'static str,
    package: &'static str,
    binary: &'static str,
}

const SERVERS: &[ServerKind] = &[
    ServerKind {
        key: "tokio",
        label: "tokio current_thread (baseline)",
        package: "bench",
        binary: "tokio-echo",
    },
    ServerKind {
        key: "w01-l03",
        label: "w01-l03 thread per connection",
        package: "w01-l03-solution",
        binary: "w01-l03-solution",
    },
    ServerKind {
        key: "w02-l16",
        label: "w02-l16 poll",
        package: "w02-l16-solution",
        binary: "w02-l16-solution",
    },
    ServerKind {
        key: "w03-l17",
        label: "w03-l17 epoll LT",
        package: "w03-l17-solution",
        binary: "w03-l17-solution",
    },
    ServerKind {
        key: "w03-l22",
        label: "w03-l22 ET, before the audit",
        package: "w03-l22-solution",
        binary: "w03-l22-solution",
    },
    // The final server: w03-l22 after the w04-l23 audit (one scratch read
    // buffer, no read that can only fail, one copy per frame).
    ServerKind {
        key: "w04-l23",
        label: "w04-l23 final server (ET, audited)",
        package: "w04-l23-solution",
        binary: "w04-l23-solution",
    },
];

/// A load shape: closed loop over N connections, or a fixed rate.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Tier {
    connections: usize,
    rate: Option<f64>,
}

impl Tier {
    fn label(&self) -> String {
        match self.rate {
            None => format!("{} conns, closed loop", thousands(self.connections as u64)),
            Some(rate) => format!(
                "{} req/s over {} conns",
                thousands(rate as u64),
                thousands(self.connections as u64)
            ),
        }
    }
    fn short(&self) -> String {
        match self.rate {
            None => format!("c={}", self.connections),
            Some(rate) => format!("{}k/s@{}", rate as u64 / 1000, self.connections),
        }
    }
}

/// What one load against one fresh server process measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sample {
    rps: f64,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
    connections_ok: usize,
    /// Server CPU time over the load phase, as % of one core.
    server_cpu_pct: f64,
    server_us_per_req: f64,
    generator_us_per_req: f64,
    /// The part of the generator's CPU time spent in its own code (user
    /// time); the rest is the kernel's TCP work for its sockets.
    generator_user_us_per_req: f64,
    /// TCP segments sent per request, both directions and ACKs included.
    segments_per_req: f64,
    threads: usize,
    rss_per_conn_kib: f64,
}

/// Reads one figure out of a sample.
type Metric = fn(&Sample) -> f64;

/// The figures of the table, in order: name, unit, how to read a sample.
const METRICS: &[(&str, &str, Metric)] = &[
    ("req/s", "", |s| s.rps),
    ("avg", "µs", |s| s.mean_us),
    ("p50", "µs", |s| s.p50_us),
    ("p99", "µs", |s| s.p99_us),
    ("p99.9", "µs", |s| s.p999_us),
    ("server CPU", "%", |s| s.server_cpu_pct),
    ("threads", "", |s| s.threads as f64),
    ("RSS/conn", "KiB", |s| s.rss_per_conn_kib),
];

fn main() -> Result<()> {
    let args = Args::parse();
    if args.render {
        let root = workspace_root();
        let path = SavedRun::path(&root);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a full run saves it; run `bench` first)",
                path.display()
            )
        })?;
        let saved: SavedRun = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved run of this bench", path.display()))?;
        return saved.write_docs(&root);
    }
    let quick = args.quick;
    let runs = args.runs.unwrap_or(if quick { 2 } else { 5 }).max(1);
    let connections = args.connections.clone().unwrap_or_else(|| {
        if quick {
            vec![50, 1000]
        } else {
            vec![50, 1000, 10_000]
        }
    });
    let rate_tier = args
        .rate_tier
        .clone()
        .unwrap_or_else(|| if quick { "20000@1000" } else { "50000@10000" }.to_string());
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(if quick { 1.0 } else { 3.0 }));
    let write = (args.write || !quick) && !args.no_write;

    let mut tiers: Vec<Tier> = connections
        .iter()
        .map(|&c| Tier {
            connections: c,
            rate: None,
        })
        .collect();
    if rate_tier != "none" {
        let (rate, conns) = rate_tier
            .split_once('@')
            .context("--rate-tier is RATE@CONNECTIONS, e.g. 50000@10000")?;
        tiers.push(Tier {
            connections: conns.parse().context("--rate-tier connections")?,
            rate: Some(rate.parse().context("--rate-tier rate")?),
        });
    }
    let servers: Vec<&ServerKind> = SERVERS
        .iter()
        .filter(|s| {
            s.key == "tokio"
                || args
                    .servers
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|o| o == s.key))
        })
        .collect();

    let root = workspace_root();
    if !args.no_build {
        build_all(&root, &servers)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2;
    if pinned {
        pin(Pid::from_raw(0), 0).context("pinning the generator to CPU 0")?;
    }
    let load_before = loadavg();
    // What else uses the CPU right now (the load average lags by minutes).
    let busy_before = busy_cores(Duration::from_secs(2));
    let started = Instant::now();
    eprintln!(
        "bench: {} servers, {} tiers, {runs} runs, {:.1} s loads; pinned: {pinned}; load average {load_before}",
        servers.len(),
        tiers.len(),
        duration.as_secs_f64()
    );

    // samples[(tier index, server key)] = one sample per run, in run order.
    let mut samples: BTreeMap<(usize, &str), Vec<Sample>> = BTreeMap::new();
    for (t, tier) in tiers.iter().enumerate() {
        for run in 0..runs {
            let order: Vec<&&ServerKind> = if run % 2 == 0 {
                servers.iter().collect()
            } else {
                servers.iter().rev().collect()
            };
            for server in order {
                let sample = measure(&root, server, tier, duration, pinned)
                    .with_context(|| format!("{} at {}", server.key, tier.label()))?;
                eprintln!(
                    "  {:<10} {:<28} run {}/{runs}: {:>9.0} req/s  p50 {:>8.0} µs  p99 {:>8.0} µs  errors {}  RSS/conn {:.2} KiB  threads {}",
                    server.key,
                    tier.label(),
                    run + 1,
                    sample.rps,
                    sample.p50_us,
                    sample.p99_us,
                    sample.errors,
                    sample.rss_per_conn_kib,
                    sample.threads
                );
                samples.entry((t, server.key)).or_default().push(sample);
            }
        }
    }
    let load_after = loadavg();
    let elapsed = started.elapsed();

    let table = render_tables(&tiers, &servers, &samples, runs);
    println!("{table}");
    for key in [FINAL_SERVER, BEFORE_AUDIT] {
        println!(
            "{key}:\n{}",
            render_targets(&tiers, &samples, key).join("\n")
        );
    }
    println!("{}", render_generator(&tiers, &samples).join("\n"));
    eprintln!(
        "bench: done in {:.0} s; load average {load_after}",
        elapsed.as_secs_f64()
    );
    let saved = SavedRun {
        tiers: tiers.clone(),
        servers: servers.iter().map(|s| s.key.to_string()).collect(),
        samples: samples
            .iter()
            .map(|((tier, key), list)| (*tier, key.to_string(), list.clone()))
            .collect(),
        runs,
        duration_s: duration.as_secs_f64(),
        pinned,
        cores,
        load_before: load_before.clone(),
        busy_before,
        load_after: load_after.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        note: args.note.clone(),
    };
    if write {
        let path = SavedRun::path(&root);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(&path, serde_json::to_string_pretty(&saved)?)
            .with_context(|| format!("writing {}", path.display()))?;
        saved.write_docs(&root)?;
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo build --release` of every server, bounded to 15 minutes.
fn build_all(root: &Path, servers: &[&ServerKind]) -> Result<()> {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(["build", "--release"]);
    for server in servers {
        command.args(["-p", server.package]);
    }
    let mut child = command.spawn().context("running cargo build")?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("cargo build failed: {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cargo build did not finish within 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pin(pid: Pid, cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(pid, &set)
}

/// A server process, killed and reaped on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path, server: &ServerKind, pinned: bool) -> Result<Running> {
    let binary = root.join("target/release").join(server.binary);
    let mut child = Command::new(&binary)
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    if pinned {
        // Before it accepts anything: threads it creates later inherit it.
        let _ = pin(Pid::from_raw(child.id() as i32), 1);
    }
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = mpsc::channel();
    // Reads the listening line, then keeps draining stdout.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let mut running = Running {
        child,
        addr: "127.0.0.1:0".parse()?,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .with_context(|| format!("{} printed no listening line within 10 s", server.key))?;
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("{}: unexpected first line {line:?}", server.key))?;
    running.addr = addr
        .parse()
        .with_context(|| format!("{}: address {addr:?}", server.key))?;
    Ok(running)
}

/// `OutSegs` of /proc/net/snmp: TCP segments this machine has sent.
fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// One load against a fresh server process.
fn measure(
    root: &Path,
    server: &ServerKind,
    tier: &Tier,
    duration: Duration,
    pinned: bool,
) -> Result<Sample> {
    let running = start(root, server, pinned)?;
    let pid = running.child.id() as i32;
    std::thread::sleep(Duration::from_millis(100));
    let idle_rss = status_field(pid, "VmRSS").unwrap_or(0);
    let mut config = LoadConfig::new(running.addr, tier.connections, LoadStop::Duration(duration));
    config.rate = tier.rate;
    config.timeout = duration + Duration::from_secs(60);
    let mut peak_rss = idle_rss;
    let mut threads = status_field(pid, "Threads").unwrap_or(0) as usize;
    let mut cpu_at_load: Option<f64> = None;
    // TCP segments sent on this machine (both ends are here) per verified
    // request, between the first and the last progress call of the load.
    let mut segments_at_load: Option<(u64, u64)> = None;
    let mut segments_now = (0, 0);
    let report: LoadReport = run_load_with_progress(&config, &mut |progress| {
        if progress.loading && cpu_at_load.is_none() {
            cpu_at_load = Some(cpu_seconds(pid));
        }
        if progress.loading {
            segments_now = (tcp_segments_sent(), progress.verified);
            segments_at_load.get_or_insert(segments_now);
        }
        peak_rss = peak_rss.max(status_field(pid, "VmRSS").unwrap_or(0));
        threads = threads.max(status_field(pid, "Threads").unwrap_or(0) as usize);
    })?;
    let server_cpu = cpu_seconds(pid) - cpu_at_load.unwrap_or(0.0);
    drop(running);
    let load_secs = report.load_time.as_secs_f64().max(1e-9);
    let verified = report.requests_verified.max(1) as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Sample {
        rps: report.requests_per_sec(),
        mean_us: us(report.latency.mean),
        p50_us: us(report.latency.p50),
        p99_us: us(report.latency.p99),
        p999_us: us(report.latency.p999),
        errors: report.errors(),
        connections_ok: report.connections_succeeded,
        server_cpu_pct: 100.0 * server_cpu / load_secs,
        server_us_per_req: server_cpu * 1e6 / verified,
        generator_us_per_req: report.cpu_load.total().as_secs_f64() * 1e6 / verified,
        generator_user_us_per_req: report.cpu_load.user.as_secs_f64() * 1e6 / verified,
        segments_per_req: segments_at_load.map_or(0.0, |(segs, done)| {
            segments_now.0.saturating_sub(segs) as f64
                / segments_now.1.saturating_sub(done).max(1) as f64
        }),
        threads,
        rss_per_conn_kib: peak_rss.saturating_sub(idle_rss) as f64 / tier.connections as f64,
    })
}

/// A `Key:   value kB` field of /proc/PID/status, as a number.
fn status_field(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process (all threads), from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / per_sec
}

/// Cores busy (not idle or waiting for I/O) over `window`, from /proc/stat.
fn busy_cores(window: Duration) -> f64 {
    let sample = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((fields.iter().sum(), idle))
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let Some((total0, idle0)) = sample() else {
        return f64::NAN;
    };
    std::thread::sleep(window);
    let Some((total1, idle1)) = sample() else {
        return f64::NAN;
    };
    let total = total1.saturating_sub(total0).max(1) as f64;
    let idle = idle1.saturating_sub(idle0) as f64;
    cores * (total - idle) / total
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Median over runs of `metric(server) / metric(baseline)` in the same run.
fn median_ratio(
    samples: &BTreeMap<(usize, &str), Vec<Sample>>,
    tier: usize,
    key: &str,
    metric: fn(&Sample) -> f64,
) -> f64 {
    let (Some(ours), Some(base)) = (samples.get(&(tier, key)), samples.get(&(tier, "tokio")))
    else {
        return f64::NAN;
    };
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(base)
        .map(|(a, b)| metric(a) / metric(b))
        .filter(|r| r.is_finite())
        .collect();
    median(&mut ratios)
}

fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    match unit {
        "µs" if v >= 10_000.0 => format!("{:.0} ms", v / 1000.0),
        "µs" if v >= 1000.0 => format!("{:.1} ms", v / 1000.0),
        "µs" => format!("{v:.0} µs"),
        "%" => format!("{v:.0} %"),
        "KiB" => format!("{v:.2} KiB"),
        _ if v >= 1000.0 => thousands(v.round() as u64),
        _ => format!("{v:.0}"),
    }
}

fn fmt_range(values: &[f64], unit: &str) -> String {
    let (lo, hi) = range(values);
    let (a, b) = (fmt_value(lo, unit), fmt_value(hi, unit));
    if a == b {
        a
    } else {
        format!("{a} – {b}")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One markdown table per tier: a row per server, each cell the range
/// over runs and the median pair ratio to the baseline.
fn render_tables(
    tiers: &[Tier],
    servers: &[&ServerKind],
    samples: &BTreeMap<(usize, &str), Vec<Sample>>,
    runs: usize,
) -> String {
    let mut out = String::new();
    for (t, tier) in tiers.iter().enumerate() {
        let _ = writeln!(out, "\n### {} ({runs} runs)\n", tier.label());
        let mut header = "| server |".to_string();
        let mut rule = "|---|".to_string();
        for (name, _, _) in METRICS {
            let _ = write!(header, " {name} |");
            rule.push_str("---|");
        }
        header.push_str(" errors | µs CPU/req server · generator |");
        rule.push_str("---|---|");
        let _ = writeln!(out, "{header}\n{rule}");
        for server in servers {
            let Some(list) = samples.get(&(t, server.key)) else {
                continue;
            };
            let mut row = format!("| {} |", server.label);
            for (_, unit, metric) in METRICS {
                let values: Vec<f64> = list.iter().map(metric).collect();
                let cell = fmt_range(&values, unit);
                if server.key == "tokio" {
                    let _ = write!(row, " {cell} |");
                } else {
                    let ratio = median_ratio(samples, t, server.key, *metric);
                    let _ = write!(row, " {cell} (×{ratio:.2}) |");
                }
            }
            let errors: u64 = list.iter().map(|s| s.errors).sum();
            let failed: usize = list
                .iter()
                .map(|s| tier.connections - s.connections_ok)
                .sum();
            let mut srv: Vec<f64> = list.iter().map(|s| s.server_us_per_req).collect();
            let mut gen: Vec<f64> = list.iter().map(|s| s.generator_us_per_req).collect();
            let _ = writeln!(
                row,
                " {errors}{} | {:.2} · {:.2} |",
                if failed > 0 {
                    format!(" ({failed} conns never echoed)")
                } else {
                    String::new()
                },
                median(&mut srv),
                median(&mut gen)
            );
            out.push_str(&row);
        }
    }
    out
}

/// The course's final server: the w03-l22 server after the w04-l23 audit.
/// The targets are its figures; w03-l22 is shown beside it, as the audit's
/// starting point.
const FINAL_SERVER: &str = "w04-l23";
const BEFORE_AUDIT: &str = "w03-l22";

/// The median over runs of the generator's CPU per request ÷ the server's:
/// above 1, the generator is the first to run out of CPU.
fn generator_over_server(list: &[Sample]) -> f64 {
    let mut over: Vec<f64> = list
        .iter()
        .map(|s| s.generator_us_per_req / s.server_us_per_req)
        .collect();
    median(&mut over)
}

/// The generator's CPU time per request beside the final server's, per
/// tier (medians), with the part spent in the generator's own code.
fn render_generator(tiers: &[Tier], samples: &BTreeMap<(usize, &str), Vec<Sample>>) -> Vec<String> {
    let mut lines = Vec::new();
    for (t, tier) in tiers.iter().enumerate() {
        let Some(list) = samples.get(&(t, FINAL_SERVER)) else {
            continue;
        };
        let mut gen: Vec<f64> = list.iter().map(|s| s.generator_us_per_req).collect();
        let mut user: Vec<f64> = list.iter().map(|s| s.generator_user_us_per_req).collect();
        let mut srv: Vec<f64> = list.iter().map(|s| s.server_us_per_req).collect();
        let mut segs: Vec<f64> = list.iter().map(|s| s.segments_per_req).collect();
        let over = generator_over_server(list);
        let (gen, user, srv) = (median(&mut gen), median(&mut user), median(&mut srv));
        lines.push(format!(
            "- {}: generator {gen:.2} µs CPU per request ({user:.2} µs of it in its own code, \
             the rest in the kernel's TCP stack), final server {srv:.2} µs; \
             {:.1} TCP segments per request; generator ÷ server ×{:.2}",
            tier.label(),
            median(&mut segs),
            over
        ));
    }
    lines
}

/// The final server's targets, each with its measured figure.
fn render_targets(
    tiers: &[Tier],
    samples: &BTreeMap<(usize, &str), Vec<Sample>>,
    key: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (t, tier) in tiers.iter().enumerate() {
        let Some(list) = samples.get(&(t, key)) else {
            continue;
        };
        if tier.rate.is_none() {
            let ratio = median_ratio(samples, t, key, |s| s.rps);
            let cpu_ratio = median_ratio(samples, t, key, |s| s.server_us_per_req);
            let generator_over_server = generator_over_server(list);
            // When the generator needs more CPU per request than the server,
            // both sit at 100 % of their cores and the generator's ceiling is
            // what the tier measures, for this server and tokio alike.
            let bound = if generator_over_server > 1.0 {
                format!(
                    "; generator-bound: the generator spent ×{generator_over_server:.2} the \
                     server's CPU per request, so req/s here is the generator's ceiling"
                )
            } else {
                String::new()
            };
            lines.push(format!(
                "- {}: median pair ratio of req/s vs tokio {ratio:.2} (target ≥ 1.0): {} \
                 (server CPU per request vs tokio ×{cpu_ratio:.2}{bound})",
                tier.label(),
                verdict(ratio >= 1.0)
            ));
        }
        if tier.connections >= 10_000 {
            let errors: u64 = list.iter().map(|s| s.errors).sum();
            let never: usize = list
                .iter()
                .map(|s| tier.connections - s.connections_ok)
                .sum();
            lines.push(format!(
                "- {}: {errors} errors, {never} connections never echoed over {} runs (target 0): {}",
                tier.label(),
                list.len(),
                verdict(errors == 0 && never == 0)
            ));
            let mut rss: Vec<f64> = list.iter().map(|s| s.rss_per_conn_kib).collect();
            let rss = median(&mut rss);
            if tier.rate.is_none() {
                lines.push(format!(
                    "- {}: RSS per connection {rss:.2} KiB median (target ≤ 1 KiB): {}",
                    tier.label(),
                    verdict(rss <= 1.0)
                ));
            }
        }
        if tier.rate.is_some() {
            let mut p50: Vec<f64> = list.iter().map(|s| s.p50_us).collect();
            let mut mean: Vec<f64> = list.iter().map(|s| s.mean_us).collect();
            let p50 = median(&mut p50);
            lines.push(format!(
                "- {}: p50 {} median (target < 1 ms): {}; average {}",
                tier.label(),
                fmt_value(p50, "µs"),
                verdict(p50 < 1000.0),
                fmt_value(median(&mut mean), "µs")
            ));
        }
    }
    lines
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

struct MarkdownInput<'a> {
    tiers: &'a [Tier],
    servers: &'a [&'a ServerKind],
    samples: &'a BTreeMap<(usize, &'a str), Vec<Sample>>,
    runs: usize,
    duration: Duration,
    pinned: bool,
    cores: usize,
    load_before: &'a str,
    busy_before: f64,
    load_after: &'a str,
    elapsed: Duration,
    note: Option<&'a str>,
}

fn render_markdown(input: &MarkdownInput) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(md, "# Performance of the milestone servers\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p bench` (the full run; `bench --quick` is a \
         one-minute smoke run that writes nothing). Figures are from one machine on one \
         day: compare the rows with each other, not with other machines.\n"
    );
    let _ = writeln!(
        md,
        "![req/s and RSS per connection across milestones](performance.svg)\n"
    );
    let _ = writeln!(md, "## The final server's targets\n");
    let _ = writeln!(
        md,
        "Benchmark figures, not tests (the checker's lessons check behaviour; \
         w04-l23 checks req/s only as a ratio to the reference in the same run). \
         The course's final server is the w04-l23 solution: the w03-l22 server \
         after the performance audit of lesson w04-l23.\n"
    );
    for line in render_targets(input.tiers, input.samples, FINAL_SERVER) {
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\nThe same figures for w03-l22, the server *before* the audit, run beside it. \
         It carries four costs on purpose, because finding them is the subject of \
         w04-l23: a zeroed 64 KiB buffer per read, a last read per event that can \
         only say WouldBlock, a `Vec` and a `memmove` per frame, and buffers that \
         never shrink. Its shortfall against tokio is what the audit \
         is worth:\n"
    );
    for line in render_targets(input.tiers, input.samples, BEFORE_AUDIT) {
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\n**The generator's CPU per request**, beside the final server's (medians):\n"
    );
    for line in render_generator(input.tiers, input.samples) {
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\nIn the closed-loop tiers generator and server each run near 100 % of their \
         core and do the same socket work per request (the request written by one \
         and read by the other, the echo back the other way), so their figures come \
         out close, and the generator's own code (verifying each echo, recording its \
         latency) is a fraction of a microsecond of it: the rest is the kernel's \
         socket work, which no generator avoids. Where the generator's figure is the \
         higher, the tier is generator-bound (marked in the targets above): one core \
         of load cannot drive a server that needs less CPU per request than the \
         generator to the server's own limit, so req/s there is the generator's \
         ceiling, reached by the final server and by tokio alike, and the server CPU \
         per request is the figure that still tells them apart. At a fixed rate the generator's own code costs about \
         a microsecond per request; the rest is kernel time, and more of it than the \
         server's for a reason in TCP, not in the generator: each connection's next \
         request comes long after the echo (10,000 connections share 50,000 req/s, so \
         a connection sends five times a second), so nothing carries the ACK of the \
         echo and the generator's kernel sends it alone, while every echo carries the \
         ACK of its request: the segments per request above (from /proc/net/snmp) \
         show the extra one. That rate uses well under one core of the generator, so \
         it measures the server, not itself."
    );
    let _ = writeln!(
        md,
        "\n**Average and p50 at a fixed rate.** At a fixed offered rate most requests \
         find the server idle and are echoed in tens of microseconds, so the median is \
         small. The average is pulled up by the few that arrive while the server or \
         the generator is busy with a batch of other connections, or while a vCPU is \
         descheduled by the host (stalls of milliseconds on this kind of machine): a \
         handful of multi-millisecond requests in tens of thousands move the mean, not \
         the median. Latency is charged from each request's intended send time, so a \
         stall counts against every request it held up (coordinated omission \
         corrected). In the closed-loop tiers latency is simply connections ÷ \
         throughput (Little's law), which is why it grows with the tier.\n"
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Each cell: the range over the runs, and in brackets the median of the per-run \
         ratios to the tokio baseline measured in the same run (×1.00 = as the \
         baseline; for req/s higher is better, for latency, CPU and memory lower is \
         better). `server CPU` is the server's CPU time over the load phase as a \
         percentage of one core; `RSS/conn` is (peak RSS during the load − RSS \
         before it) ÷ connections; `threads` is the most seen during the load. The \
         last column is the CPU time per request of the server and of the load \
         generator (medians): the generator is one thread on its own core, and when \
         its figure approaches the server's the generator, not the server, bounds the \
         throughput."
    );
    md.push_str(&render_tables(
        input.tiers,
        input.servers,
        input.samples,
        input.runs,
    ));
    let _ = writeln!(md, "\n## Machine\n");
    let _ = writeln!(md, "- CPU: {} × {cpu}", input.cores);
    let _ = writeln!(
        md,
        "- memory: {:.1} GiB; kernel {kernel}",
        mem_kib as f64 / 1048576.0
    );
    let _ = writeln!(
        md,
        "- load average (1, 5, 15 min) before the run: {}; after: {} (the load average \
         counts runnable threads: the thread-per-connection server's 10,000 threads \
         inflate it during the 10k tiers and for minutes after them, even across runs, \
         so the CPU busy figure below is the one that says whether other jobs shared \
         the machine)",
        input.load_before, input.load_after
    );
    let _ = writeln!(
        md,
        "- CPU busy just before the run (/proc/stat over 2 s): {:.2} of {} cores",
        input.busy_before, input.cores
    );
    if input.busy_before > 0.5 {
        let _ = writeln!(
            md,
            "- **The machine was shared during this run** ({:.2} cores busy at the \
             start): other jobs took CPU time from the servers \
             and the generator alike. The pair ratios cancel steady drift, but absolute \
             figures and tails are worse than on an idle machine, and the ranges wider.",
            input.busy_before
        );
    }
    if let Some(note) = input.note {
        let _ = writeln!(md, "- note: {note}");
    }
    let _ = writeln!(md, "- whole run: {:.0} s", input.elapsed.as_secs_f64());
    let _ = writeln!(md, "\n## Method\n");
    let _ = writeln!(
        md,
        "- Servers: the reference solutions of w01-l03 (a thread per connection), \
         w02-l16 (poll), w03-l17 (epoll, level-triggered), w03-l22 (the \
         edge-triggered server as part w03 leaves it), w04-l23 (the final server: \
         w03-l22 after the performance audit) and `tokio-echo` (bench/src/bin/tokio-echo.rs: tokio's \
         current_thread runtime, a task per connection with a 4 KiB buffer), all built \
         with `cargo build --release`, started with `--port 0` and default flags."
    );
    let _ = writeln!(
        md,
        "- Generator: the stress crate's load engine (`stress::load`, what `loadtest` \
         runs) in the bench process: one thread's epoll loop, 64-byte payloads (68-byte \
         frames), every echo verified, connects ramped 500 at a time. Closed loop: each \
         connection sends its next frame when the last echo is verified. Fixed rate: \
         requests due at fixed times over the idle connections, latency measured from \
         the due time."
    );
    let _ = writeln!(
        md,
        "- {} s of load per run, {} runs per tier. In each run every server gets one \
         load, the baseline included, forward order in even runs and backward in odd \
         ones, so the pairs (server, baseline) are interleaved and drift cancels in \
         their ratio. Every load gets a fresh server process.",
        input.duration.as_secs_f64(),
        input.runs
    );
    let _ = writeln!(
        md,
        "- Pinning: {}.",
        if input.pinned {
            "the generator on CPU 0, every server (and the threads it starts) on CPU 1, \
             with sched_setaffinity"
        } else {
            "none (one core: server and generator share it)"
        }
    );
    let _ = writeln!(
        md,
        "- Server figures from /proc/PID: CPU time from `stat` (utime + stime) read \
         when the load phase starts and ends; `VmRSS` and `Threads` from `status` \
         before the ramp and every 100 ms during the run."
    );
    md
}

/// Two bar charts side by side: req/s per tier (median over runs), and RSS
/// per connection at the largest closed-loop tier.
fn render_svg(
    tiers: &[Tier],
    servers: &[&ServerKind],
    samples: &BTreeMap<(usize, &str), Vec<Sample>>,
) -> String {
    const COLORS: [&str; 6] = [
        "#7f7f7f", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd",
    ];
    let (w, h) = (1100.0, 480.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let med = |t: usize, key: &str, f: fn(&Sample) -> f64| -> f64 {
        samples
            .get(&(t, key))
            .map(|list| median(&mut list.iter().map(f).collect::<Vec<_>>()))
            .unwrap_or(f64::NAN)
    };

    // Left: req/s, grouped by tier.
    let (x0, y0, pw, ph) = (70.0, 50.0, 620.0, 330.0);
    let max_rps = (0..tiers.len())
        .flat_map(|t| servers.iter().map(move |s| (t, s.key)))
        .map(|(t, k)| med(t, k, |s| s.rps))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let top = nice_ceiling(max_rps);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="15" font-weight="bold" text-anchor="middle">Requests per second (median of runs)</text>"#,
        x0 + pw / 2.0
    );
    axis(&mut svg, x0, y0, pw, ph, top, |v| thousands(v as u64));
    let group_w = pw / tiers.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / servers.len().max(1) as f64;
    for (t, tier) in tiers.iter().enumerate() {
        let gx = x0 + t as f64 * group_w + group_w * 0.1;
        for (i, server) in servers.iter().enumerate() {
            let v = med(t, server.key, |s| s.rps);
            if !v.is_finite() {
                continue;
            }
            let bh = ph * v / top;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.0} req/s</title></rect>"#,
                gx + i as f64 * bar_w,
                y0 + ph - bh,
                bar_w * 0.92,
                bh,
                COLORS[i % COLORS.len()],
                server.label,
                v
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + t as f64 * group_w + group_w / 2.0,
            y0 + ph + 18.0,
            tier.short()
        );
    }

    // Right: RSS per connection at the largest closed-loop tier.
    let rss_tier = tiers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.rate.is_none())
        .max_by_key(|(_, t)| t.connections);
    let (x1, pw1) = (790.0, 280.0);
    if let Some((t, tier)) = rss_tier {
        let values: Vec<f64> = servers
            .iter()
            .map(|s| med(t, s.key, |x| x.rss_per_conn_kib))
            .collect();
        let top = nice_ceiling(
            values
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0.5, f64::max),
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="28" font-size="13" font-weight="bold" text-anchor="middle">RSS per connection, KiB ({} conns)</text>"#,
            x1 + pw1 / 2.0,
            thousands(tier.connections as u64)
        );
        axis(&mut svg, x1, y0, pw1, ph, top, |v| format!("{v:.1}"));
        let bw = pw1 / servers.len().max(1) as f64;
        for (i, v) in values.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let bh = ph * v.max(0.0) / top;
            let x = x1 + i as f64 * bw + bw * 0.15;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/>"#,
                y0 + ph - bh,
                bw * 0.7,
                COLORS[i % COLORS.len()]
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{v:.2}</text>"#,
                x + bw * 0.35,
                y0 + ph - bh - 4.0
            );
        }
    }

    // Legend.
    for (i, server) in servers.iter().enumerate() {
        let x = 20.0 + (i % 3) as f64 * 300.0;
        let y = h - 38.0 + (i / 3) as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 17.0,
            y,
            server.label
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Frame, horizontal grid lines and y labels of one chart.
fn axis(svg: &mut String, x: f64, y: f64, w: f64, h: f64, top: f64, label: impl Fn(f64) -> String) {
    for i in 0..=5 {
        let v = top * i as f64 / 5.0;
        let gy = y + h - h * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{gy:.1}" x2="{}" y2="{gy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            x + w,
            x - 6.0,
            gy + 4.0,
            label(v)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
    );
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample whose figures are all derived from `rps`, and whose
    /// generator costs `generator_share` times the server's CPU per request.
    fn sample(rps: f64, server_us: f64, generator_share: f64) -> Sample {
        Sample {
            rps,
            mean_us: 100.0,
            p50_us: 90.0,
            p99_us: 200.0,
            p999_us: 300.0,
            errors: 0,
            connections_ok: 50,
            server_cpu_pct: 95.0,
            server_us_per_req: server_us,
            generator_us_per_req: server_us * generator_share,
            generator_user_us_per_req: 0.25,
            segments_per_req: 2.0,
            threads: 1,
            rss_per_conn_kib: 0.2,
        }
    }

    fn saved(final_rps: f64, generator_share: f64) -> SavedRun {
        let tier = Tier {
            connections: 50,
            rate: None,
        };
        SavedRun {
            tiers: vec![tier],
            servers: vec!["tokio".into(), FINAL_SERVER.into(), BEFORE_AUDIT.into()],
            samples: vec![
                (0, "tokio".into(), vec![sample(100_000.0, 3.0, 1.0); 3]),
                (
                    0,
                    FINAL_SERVER.into(),
                    vec![sample(final_rps, 3.0, generator_share); 3],
                ),
                (0, BEFORE_AUDIT.into(), vec![sample(70_000.0, 4.5, 0.8); 3]),
            ],
            runs: 3,
            duration_s: 3.0,
            pinned: true,
            cores: 2,
            load_before: "0.1 0.1 0.1".into(),
            busy_before: 0.0,
            load_after: "1.0 0.5 0.2".into(),
            elapsed_s: 60.0,
            note: None,
        }
    }

    fn targets(run: &SavedRun, key: &str) -> String {
        let (_, samples) = run.figures().unwrap();
        render_targets(&run.tiers, &samples, key).join("\n")
    }

    #[test]
    fn a_faster_final_server_meets_the_req_per_s_target_and_a_slower_one_does_not() {
        let fast = targets(&saved(110_000.0, 0.9), FINAL_SERVER);
        assert!(fast.contains("vs tokio 1.10 (target ≥ 1.0): met"), "{fast}");
        let slow = targets(&saved(90_000.0, 0.9), FINAL_SERVER);
        assert!(
            slow.contains("vs tokio 0.90 (target ≥ 1.0): NOT met"),
            "{slow}"
        );
        assert!(!slow.contains("generator-bound"), "{slow}");
    }

    #[test]
    fn a_tier_where_the_generator_costs_more_than_the_server_says_it_is_generator_bound() {
        let bound = targets(&saved(99_000.0, 1.2), FINAL_SERVER);
        assert!(
            bound.contains(
                "generator-bound: the generator spent ×1.20 the server's CPU per request"
            ),
            "{bound}"
        );
    }

    #[test]
    fn a_saved_run_renders_the_same_docs_after_a_round_trip_through_json() {
        let run = saved(105_000.0, 1.05);
        let text = serde_json::to_string(&run).unwrap();
        let back: SavedRun = serde_json::from_str(&text).unwrap();
        let markdown = run.markdown().unwrap();
        assert_eq!(markdown, back.markdown().unwrap());
        assert!(
            markdown.contains("## The final server's targets"),
            "{markdown}"
        );
        assert!(markdown.contains("w04-l23 final server"), "{markdown}");
        assert!(
            markdown.contains("w03-l22 ET, before the audit"),
            "{markdown}"
        );
    }
}
