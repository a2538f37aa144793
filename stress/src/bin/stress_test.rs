//! `stress_test`: many clients at once against an echo server, every echo
//! verified. The last line printed is always the summary
//! `C clients, C*F frames, N failures`.
//!
//! Exit codes: 0 every frame echoed correctly, 1 any failure, 2 usage error
//! or an address that cannot be resolved.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use stress::frame::DEFAULT_MAX_FRAME;
use stress::{run_stress_with_progress, StressConfig, StressReport};

/// The rungs of `--ladder`, as (clients, frames per client): each one a
/// bigger load, so the first failing rung says how much a server can take.
const LADDER: [(usize, usize); 5] = [(1, 1), (1, 10), (5, 10), (10, 100), (50, 100)];

/// Stress-test an echo server speaking length-prefixed frames.
///
/// Each client opens one connection and sends seeded frames of varying
/// size, some pipelined, with writes split at random points, and checks
/// that every echo is identical to the frame sent. Connections refused, or
/// closed before any echo, are retried with backoff until the timeout.
#[derive(Debug, Parser)]
#[command(
    name = "stress_test",
    version,
    after_help = "The last line printed is `C clients, C*F frames, N failures`.\n\
                  Exit status: 0 every frame echoed correctly, 1 any failure, \
                  2 usage error or a --host that does not resolve."
)]
struct Args {
    /// Server address or host name.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server port.
    #[arg(long)]
    port: u16,

    /// Concurrent clients, one connection each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..),
          required_unless_present = "ladder", conflicts_with = "ladder")]
    clients: Option<u32>,

    /// Frames each client sends.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..),
          required_unless_present = "ladder", conflicts_with = "ladder")]
    frames: Option<u32>,

    /// Seed for sizes, split points, pipelining and payloads; the same seed
    /// replays the same run. Default: taken from the clock (and printed).
    #[arg(long)]
    seed: Option<u64>,

    /// Time limit for the whole run (for each rung with --ladder).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    timeout: Duration,

    /// A client whose server sends nothing for this long, with frames
    /// outstanding, fails at once ("stopped answering"); 0 waits for --timeout.
    #[arg(long, value_name = "SECS", default_value = "10")]
    stall_timeout: u64,

    /// Largest payload to send; keep it within the server's --max-frame.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME as u32)]
    max_payload: u32,

    /// Run 1x1, 1x10, 5x10, 10x100 and 50x100 (clients x frames) in turn,
    /// stopping at the first rung that fails.
    #[arg(long)]
    ladder: bool,
}

fn main() -> ExitCode {
    // clap exits with 2 on a usage error.
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("stress_test: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs what `args` asks for; `Ok(passed)`, or `Err` if it could not start.
fn run(args: &Args) -> Result<bool> {
    let addr = resolve(&args.host, args.port)?;
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    println!("seed {seed} (replay with --seed {seed})");

    let rungs: Vec<(usize, usize)> = match (args.clients, args.frames) {
        (Some(clients), Some(frames)) if !args.ladder => vec![(clients as usize, frames as usize)],
        _ => LADDER.to_vec(),
    };
    for (rung, &(clients, frames)) in rungs.iter().enumerate() {
        if args.ladder {
            println!(
                "ladder rung {}/{}: {clients} clients x {frames} frames",
                rung + 1,
                rungs.len()
            );
        }
        let cfg = StressConfig {
            timeout: args.timeout,
            max_payload: args.max_payload as usize,
            stall_timeout: (args.stall_timeout > 0)
                .then(|| Duration::from_secs(args.stall_timeout)),
            ..StressConfig::new(addr, clients, frames, seed)
        };
        let report = run_with_progress_line(&cfg);
        print_report(&report);
        if !report.passed() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs `cfg`, showing a progress count on stderr when it is a terminal.
fn run_with_progress_line(cfg: &StressConfig) -> StressReport {
    let total = cfg.clients.saturating_mul(cfg.frames);
    let on_terminal = std::io::stderr().is_terminal();
    let report = run_stress_with_progress(cfg, &|verified| {
        if on_terminal {
            eprint!("\r{verified}/{total} frames verified");
            let _ = std::io::stderr().flush();
        }
    });
    if on_terminal {
        eprint!("\r\x1b[K");
    }
    report
}

fn print_report(report: &StressReport) {
    for detail in &report.failure_details {
        println!("{detail}");
    }
    let unlisted = report.failed_clients - report.failure_details.len();
    if unlisted > 0 {
        println!("... and {unlisted} more failed clients");
    }
    if report.refused_retries > 0 {
        println!(
            "connections refused or closed before any echo, retried: {}",
            report.refused_retries
        );
    }
    println!("elapsed: {:.2} s", report.elapsed.as_secs_f64());
    println!("{}", report.summary_line());
}

/// The first address `host` resolves to, IPv4 first (course servers listen
/// on 127.0.0.1, while `localhost` may resolve to ::1 first).
fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --host {host}"))?
        .collect();
    match addrs.iter().find(|addr| addr.is_ipv4()).or(addrs.first()) {
        Some(addr) => Ok(*addr),
        None => bail!("--host {host} resolves to no address"),
    }
}

fn seed_from_clock() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Seconds alone would repeat within a second; keep the digits short
    // enough to retype.
    (now.as_nanos() % 1_000_000_000_000) as u64
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        _ => Err(format!(
            "the timeout must be a positive number of seconds, not {text}"
        )),
    }
}
