//! `stats`: starts the server with `--stats` and drives a seeded load that
//! changes between phases: each phase holds its own number of connections
//! and sends frames at its own rate, with its own frame size (so fixed or
//! made-up numbers cannot pass). The stdout lines the server prints during
//! the steady part of each phase must have the course's shapes,
//!
//! ```text
//! [HH:MM:SS] Connections: N active, P pending
//! [HH:MM:SS] Requests: R/sec, Bytes: X.Y MB/sec
//! ```
//!
//! with N equal to the connections the checker holds, P <= N, and R and X.Y
//! within `tolerance_pct` of the frames echoed and bytes sent per second as
//! the checker measured them. Lines must come about once a second.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stats {
    /// Load phases, each with its own seeded connections, rate and frame size.
    pub phases: usize,
    /// Length of one phase, in milliseconds.
    pub phase_ms: u64,
    /// Range of connections held in a phase.
    pub min_connections: usize,
    pub max_connections: usize,
    /// Range of frames per second sent in a phase (all connections together).
    pub min_rate: u64,
    pub max_rate: u64,
    /// Lines printed earlier than this into a phase are not judged: their
    /// second may overlap the previous phase.
    pub settle_ms: u64,
    /// Allowed difference of the printed rates from the measured ones, in %.
    pub tolerance_pct: u64,
    pub args: Vec<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            phases: 4,
            phase_ms: 3500,
            min_connections: 3,
            max_connections: 60,
            min_rate: 300,
            max_rate: 2500,
            settle_ms: 1300,
            tolerance_pct: 25,
            args: Vec::new(),
        }
    }
}

/// One phase of the seeded load.
struct Phase {
    connections: usize,
    rate: u64,
    payload: usize,
}

/// What the server printed, parsed.
enum StatsLine {
    Connections { active: u64, pending: u64 },
    Requests { per_sec: u64, mb_per_sec: f64 },
}

fn parse(line: &str) -> Option<StatsLine> {
    static CONNS: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static REQS: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let conns = CONNS.get_or_init(|| {
        Regex::new(r"^\[\d{2}:\d{2}:\d{2}\] Connections: (\d+) active, (\d+) pending$")
            .expect("static regex")
    });
    let reqs = REQS.get_or_init(|| {
        Regex::new(r"^\[\d{2}:\d{2}:\d{2}\] Requests: (\d+)/sec, Bytes: (\d+\.\d) MB/sec$")
            .expect("static regex")
    });
    if let Some(c) = conns.captures(line) {
        return Some(StatsLine::Connections {
            active: c[1].parse().ok()?,
            pending: c[2].parse().ok()?,
        });
    }
    let c = reqs.captures(line)?;
    Some(StatsLine::Requests {
        per_sec: c[1].parse().ok()?,
        mb_per_sec: c[2].parse().ok()?,
    })
}

/// A stdout line that tries to be a stats line (not the listening line).
fn looks_like_stats(line: &str) -> bool {
    line.contains("Connections:") || line.contains("Requests:")
}

const SHAPES: &str = "`[HH:MM:SS] Connections: N active, P pending` and `[HH:MM:SS] Requests: R/sec, Bytes: X.Y MB/sec`";

impl Stats {
    fn plan(&self, seed: u64) -> Vec<Phase> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut phases: Vec<Phase> = Vec::new();
        let (lo, hi) = (
            self.min_connections.max(1),
            self.max_connections.max(self.min_connections.max(1) + 3),
        );
        let (rlo, rhi) = (
            self.min_rate.max(1),
            self.max_rate.max(self.min_rate.max(1) + 1),
        );
        for _ in 0..self.phases.max(1) {
            // Neighbouring phases differ clearly in both figures.
            let mut phase = Phase {
                connections: rng.random_range(lo..=hi),
                rate: rng.random_range(rlo..=rhi),
                payload: rng.random_range(500..=4000),
            };
            for _ in 0..100 {
                let Some(prev) = phases.last() else { break };
                let conns_apart = prev.connections.abs_diff(phase.connections) >= 3;
                let rate_apart =
                    prev.rate.abs_diff(phase.rate) * 100 >= prev.rate.max(phase.rate) * 30;
                if conns_apart && rate_apart {
                    break;
                }
                phase.connections = rng.random_range(lo..=hi);
                phase.rate = rng.random_range(rlo..=rhi);
            }
            phases.push(phase);
        }
        phases
    }
}

impl Check for Stats {
    fn summary(&self) -> String {
        format!(
            "--stats: {} seeded phases of {} ms ({}-{} connections, {}-{} frames/s); each second's lines match the load within ±{} %",
            self.phases,
            self.phase_ms,
            self.min_connections,
            self.max_connections,
            self.min_rate,
            self.max_rate,
            self.tolerance_pct
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut args = self.args.clone();
        args.push("--stats".into());
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let plan = self.plan(ctx.seed);
        let tolerance = self.tolerance_pct as f64 / 100.0;
        // Every stdout line with the time the checker saw it (polled every
        // 10 ms), and the running totals of echoes and bytes, per tick.
        let mut seen_lines: Vec<(Instant, String)> = Vec::new();
        let mut next_index = server.output_mark();
        let mut totals: Vec<(Instant, u64, u64)> = vec![(Instant::now(), 0, 0)];
        let (mut echoes, mut bytes) = (0u64, 0u64);
        // (start, end, connections held) of each phase.
        let mut spans: Vec<(Instant, Instant, usize)> = Vec::new();
        let mut held: Vec<TcpStream> = Vec::new();
        let mut next_conn = 0usize;
        let run_started = Instant::now();
        for (number, phase) in plan.iter().enumerate() {
            let number = number + 1;
            held.truncate(phase.connections);
            while held.len() < phase.connections {
                match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        held.push(stream);
                    }
                    Err(err) => {
                        return Ok(StepOutcome::fail(format!(
                            "phase {number}: connect failed with {} connections open: {err}",
                            held.len()
                        ))
                        .cause_as(
                            "stats.stopped-accepting",
                            "the server stopped accepting connections while printing stats",
                        )
                        .evidence(Ctx::server_evidence(&mut server)))
                    }
                }
            }
            let frame = stress::frame::encode(&vec![b's'; phase.payload]);
            let started = Instant::now();
            let end = started + Duration::from_millis(self.phase_ms);
            // Paced, with no catch-up burst after a stall: at most three
            // ticks' worth of frames per 10 ms tick.
            let per_tick_cap = (phase.rate / 100).max(1) * 3;
            let mut sent_this_phase: u64 = 0;
            while Instant::now() < end {
                let due = (phase.rate as f64 * started.elapsed().as_secs_f64()) as u64;
                let mut this_tick = 0;
                while sent_this_phase < due && this_tick < per_tick_cap {
                    let which = next_conn % held.len();
                    next_conn += 1;
                    let stream = &mut held[which];
                    let echoed = stream.write_all(&frame).is_ok()
                        && matches!(
                            read_echo(stream, frame.len(), Instant::now() + Duration::from_secs(3)),
                            Echoed::Complete(ref got) if *got == frame
                        );
                    if !echoed {
                        return Ok(StepOutcome::fail(format!(
                            "phase {number}: a {}-byte frame got no exact echo within 3 s",
                            frame.len()
                        ))
                        .cause_as(
                            "stats.echo-disturbed",
                            "printing statistics must not disturb the echo: count, don't block",
                        )
                        .evidence(Ctx::server_evidence(&mut server)));
                    }
                    sent_this_phase += 1;
                    this_tick += 1;
                    echoes += 1;
                    bytes += frame.len() as u64;
                }
                if sent_this_phase < due.saturating_sub(per_tick_cap) {
                    sent_this_phase = due.saturating_sub(per_tick_cap);
                }
                let now = Instant::now();
                totals.push((now, echoes, bytes));
                for (index, line) in server.stdout_since(next_index) {
                    next_index = index + 1;
                    seen_lines.push((now, line));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            spans.push((started, end, held.len()));
            ctx.log.detail(format!(
                "phase {number}: held {} connections, sent {} frames of {} bytes at {} frames/s",
                held.len(),
                sent_this_phase,
                frame.len(),
                phase.rate
            ));
        }
        let total_at = |t: Instant| -> (u64, u64) {
            let i = totals.partition_point(|(at, _, _)| *at <= t);
            totals
                .get(i.saturating_sub(1))
                .map(|(_, e, b)| (*e, *b))
                .unwrap_or((0, 0))
        };
        let first_start = spans.first().map(|s| s.0).unwrap_or(run_started);
        let last_end = spans.last().map(|s| s.1).unwrap_or(run_started);
        let phase_of = |t: Instant| {
            spans
                .iter()
                .position(|(start, end, _)| t >= *start && t < *end)
        };
        let mut judged = vec![(0usize, 0usize); spans.len()];
        let mut previous_requests: Option<Instant> = None;
        let mut judged_lines = 0;
        for (at, line) in &seen_lines {
            if !looks_like_stats(line) {
                continue;
            }
            let fail = |what: String, cause_id: &str, cause: &str, server: &mut Server| {
                StepOutcome::fail(what)
                    .cause_as(cause_id, cause.to_string())
                    .evidence(Ctx::server_evidence(server))
            };
            match parse(line) {
                None => {
                    return Ok(fail(
                        format!("misshapen stats line `{line}`"),
                        "stats.misshapen-line",
                        &format!(
                            "print exactly {SHAPES} (two-digit clock, one decimal for MB/sec)"
                        ),
                        &mut server,
                    ))
                }
                Some(StatsLine::Connections { active, pending }) => {
                    // Only once the phase's connects and closes are served.
                    let Some(p) = phase_of(*at) else { continue };
                    if *at < spans[p].0 + Duration::from_millis(self.settle_ms) {
                        continue;
                    }
                    let expected = spans[p].2 as u64;
                    if active != expected || pending > active {
                        return Ok(fail(
                            format!(
                                "phase {}: the server says `{line}` while the checker held exactly {expected} connections",
                                p + 1
                            ),
                            "stats.wrong-connection-counts",
                            "`active` is the number of connections open right now (your connection table's length), `pending` those of them with unsent output",
                            &mut server,
                        ));
                    }
                    judged[p].0 += 1;
                    judged_lines += 1;
                }
                Some(StatsLine::Requests {
                    per_sec,
                    mb_per_sec,
                }) => {
                    let since = previous_requests.replace(*at);
                    let Some(since) = since else { continue };
                    let period = at.duration_since(since).as_secs_f64();
                    // Judge whole seconds inside the load; a line right
                    // after another covers too little time to compare.
                    if since < first_start || *at > last_end || period < 0.5 {
                        continue;
                    }
                    let (e0, b0) = total_at(since);
                    let (e1, b1) = total_at(*at);
                    let rate = (e1 - e0) as f64 / period;
                    let mb = (b1 - b0) as f64 / period / 1_000_000.0;
                    // ±tolerance, plus slack for the 10 ms the checker
                    // polls at and the rounding to one decimal.
                    let rate_ok = (per_sec as f64 - rate).abs() <= rate * tolerance + 20.0;
                    let mb_ok = (mb_per_sec - mb).abs() <= mb * tolerance + 0.1;
                    if !rate_ok || !mb_ok {
                        return Ok(fail(
                            format!(
                                "the server says `{line}`; in the {period:.2} s before that line the checker got {rate:.0} echoes/sec and sent {mb:.2} MB/sec (tolerance ±{} %)",
                                self.tolerance_pct
                            ),
                            "stats.wrong-rates",
                            "count in that second only: requests = frames echoed, bytes = bytes read from clients (MB = 1,000,000 bytes); reset both counters after each report and divide by the period's real length",
                            &mut server,
                        ));
                    }
                    if let Some(p) = phase_of(*at) {
                        judged[p].1 += 1;
                    }
                    judged_lines += 1;
                }
            }
        }
        if let Some(p) = judged.iter().position(|(c, r)| *c == 0 || *r == 0) {
            let any = seen_lines.iter().any(|(_, line)| looks_like_stats(line));
            return Ok(StepOutcome::fail(format!(
                "phase {}: no `Connections:` and `Requests:` lines to judge between {} ms and {} ms into the phase ({} stats lines seen in all)",
                p + 1,
                self.settle_ms,
                self.phase_ms,
                seen_lines.iter().filter(|(_, l)| looks_like_stats(l)).count()
            ))
            .cause_as(
                if any { "stats.lines-late" } else { "stats.no-lines" },
                if any {
                "the lines must come every second, on time, while the server is busy: give epoll_wait a timeout that ends at the next report"
            } else {
                "with --stats the server prints two lines to stdout every second (flush stdout after them)"
            })
            .evidence(Ctx::server_evidence(&mut server)));
        }
        // About once a second overall.
        let seconds = last_end.duration_since(run_started).as_secs_f64();
        let requests_lines = seen_lines
            .iter()
            .filter(|(_, line)| line.contains("Requests:"))
            .count();
        if (requests_lines as f64) < seconds * 0.6 || (requests_lines as f64) > seconds * 1.5 + 2.0
        {
            return Ok(StepOutcome::fail(format!(
                "{requests_lines} `Requests:` lines in {seconds:.1} s: expected one a second (tolerance: between 60 % and 150 % of the seconds elapsed)"
            ))
            .cause_as("stats.lines-not-every-second", "print the two lines once a second: keep a deadline for the next report and wake epoll_wait for it")
            .evidence(Ctx::server_evidence(&mut server)));
        }
        let shape: Vec<String> = plan
            .iter()
            .map(|p| format!("{}@{}/s", p.connections, p.rate))
            .collect();
        Ok(StepOutcome::pass(format!(
            "{judged_lines} stats lines over {} seeded phases (connections@rate: {}) all well-formed, active connections exact, rates within ±{} %",
            plan.len(),
            shape.join(", "),
            self.tolerance_pct
        ))
        .figure("stats_lines_judged", judged_lines)
        .proof_line(format!(
            "stats: {judged_lines} lines over {} seeded load phases: well-formed, active connections exact, requests/sec and MB/sec within ±{} % of the load driven",
            plan.len(),
            self.tolerance_pct
        )))
    }
}
