//! `stress`: the seed lesson's test — one server, `runs` runs of `clients`
//! clients × `frames` frames (stress crate), every echo verified. Any
//! failure in any run fails the step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use stress::stress::{run_stress_with_progress, FailureKind, StressConfig, StressReport};

use super::{Check, Ctx};
use crate::report::StepOutcome;

/// Failure details quoted per failing run.
const QUOTED_FAILURES: usize = 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stress {
    pub clients: usize,
    pub frames: usize,
    #[serde(default = "one")]
    pub runs: usize,
    /// Bound on one run; a stalled server fails when it expires.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub args: Vec<String>,
}

fn one() -> usize {
    1
}

fn default_timeout() -> u64 {
    30
}

impl Check for Stress {
    fn summary(&self) -> String {
        format!(
            "{} run(s) of {} clients × {} frames against one server",
            self.runs, self.clients, self.frames
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut proof = Vec::new();
        let mut total_seconds = 0.0;
        for run in 1..=self.runs {
            let mut config = StressConfig::new(
                server.addr,
                self.clients,
                self.frames,
                ctx.seed.wrapping_add(run as u64),
            );
            config.timeout = Duration::from_secs(self.timeout_secs);
            let gone = Arc::new(AtomicBool::new(false));
            config.give_up = Some(gone.clone());
            // A dead server accepts nothing: stop retrying instead of
            // waiting out the timeout.
            let running = AtomicBool::new(true);
            let report = std::thread::scope(|scope| {
                scope.spawn(|| {
                    while running.load(Ordering::SeqCst) {
                        if !crate::procfs::is_alive(server.pid) {
                            gone.store(true, Ordering::SeqCst);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
                // A bar on a terminal; plain lines (the summary) otherwise.
                let bar = ctx.log.on_a_terminal().then(|| {
                    let bar = indicatif::ProgressBar::new((self.clients * self.frames) as u64);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "      run {msg} [{bar:40}] {pos}/{len} frames",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_message(format!("{run}/{}", self.runs));
                    bar
                });
                let report = run_stress_with_progress(&config, &|verified| {
                    if let Some(bar) = &bar {
                        bar.set_position(verified as u64);
                    }
                });
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                running.store(false, Ordering::SeqCst);
                report
            });
            if gone.load(Ordering::SeqCst) {
                // A killed process shows as a zombie while its threads and
                // memory are still being torn down: wait (bounded) until it
                // can be reaped, so the verdict names the death.
                server.wait_exit(Duration::from_secs(5));
            }
            let seconds = report.elapsed.as_secs_f64();
            total_seconds += seconds;
            let line = format!(
                "stress run {run}/{}: {} ({seconds:.2} s)",
                self.runs,
                report.summary_line()
            );
            ctx.log.detail(&line);
            if report.refused_retries > 0 {
                ctx.log.detail(format!(
                    "{} connection attempts were refused and retried",
                    report.refused_retries
                ));
            }
            proof.push(line.clone());
            if !report.passed() {
                let death = server.death_notice();
                let mut evidence: Vec<String> = report
                    .failure_details
                    .iter()
                    .take(QUOTED_FAILURES)
                    .map(|d| d.to_string())
                    .collect();
                if report.failure_details.len() > QUOTED_FAILURES {
                    evidence.push(format!(
                        "... and {} more",
                        report.failure_details.len() - QUOTED_FAILURES
                    ));
                }
                evidence.extend(Ctx::server_evidence(&mut server));
                let (cause_id, cause) = likely_cause(&report, death.as_deref());
                let mut outcome = StepOutcome::fail(format!(
                    "{line}: {} frames not echoed correctly",
                    report.failures
                ))
                .cause_as(cause_id, cause)
                .evidence(evidence)
                .figure("failed_run", run)
                .figure("failures", report.failures);
                outcome.proof = proof;
                return Ok(outcome);
            }
            if let Some(death) = server.death_notice() {
                let mut outcome = StepOutcome::fail(format!("{death} after stress run {run}"))
                    .cause_as(
                        "stress.died-between-runs",
                        "the server must keep serving between runs",
                    )
                    .evidence(Ctx::server_evidence(&mut server));
                outcome.proof = proof;
                return Ok(outcome);
            }
        }
        let mut outcome = StepOutcome::pass(format!(
            "{} runs of {} clients × {} frames, 0 failures",
            self.runs, self.clients, self.frames
        ))
        .figure("runs", self.runs)
        .figure("frames_per_run", self.clients * self.frames)
        .figure("seconds", format!("{total_seconds:.2}"));
        outcome.proof = proof;
        Ok(outcome)
    }
}

/// The seed lesson's list of failures, matched to what the run saw: the
/// cause's id and its words.
fn likely_cause(report: &StressReport, death: Option<&str>) -> (&'static str, String) {
    if let Some(death) = death {
        if death.starts_with("the checker stopped") {
            return ("stress.stopped-by-the-checker", death.to_string());
        }
        return ("stress.died", format!("{death} during the run: read its output below; an unwrap() on a socket error or an unhandled EPIPE/ECONNRESET kills the whole server"));
    }
    let has = |kind: FailureKind| report.failure_details.iter().any(|d| d.kind == kind);
    if has(FailureKind::Mismatch) {
        ("stress.framing", "framing: the server sent back different bytes, or merged, split, dropped or reordered frames — check how the read buffer is split into frames and how partial writes are resumed".into())
    } else if has(FailureKind::Refused) {
        ("stress.refused", "connections were refused until the timeout: the server is at its client limit — does its connection count go down when a client leaves?".into())
    } else if has(FailureKind::Closed) || has(FailureKind::Reset) {
        ("stress.closed-mid-run", "the server closed connections mid-run: an error treated as fatal for the connection (WouldBlock is not an error on a non-blocking socket)".into())
    } else if has(FailureKind::Timeout) {
        ("stress.stopped-answering", "the server stopped answering: a blocking call inside the loop, or bytes left in a buffer that nothing will process (pipelined frames)".into())
    } else {
        (
            "stress.unclassified",
            "see the failures quoted below".into(),
        )
    }
}
