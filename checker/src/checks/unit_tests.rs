//! `unit_tests`: the checked crate's own tests, `cargo test --release`.
//!
//! A lesson's stub ships the solution's tests of its gap functions as part
//! of their contract (Exercism's way). They pin what a doc comment asks and
//! the wire cannot show: a blocking server closes a connection the same way
//! whether its reader called the end of the stream a goodbye or an error,
//! and no client can make a blocking read fail with `Interrupted`. The step
//! runs after the server steps, whose failures say more, and builds the
//! tests first (`--no-run`, bounded like a build) so that a test that never
//! returns is stopped at `timeout_secs`.
//!
//! A crate with no tests passes (a student's own crate need not have the
//! stub's); `--exec` has nothing to build or test and skips the step.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx, Subject};
use crate::mutants::process::{run_bounded, Ended, Run};
use crate::report::StepOutcome;

/// Building the tests may compile the crate once more; never longer than
/// a build may take.
const BUILD_BOUND: Duration = Duration::from_secs(900);
/// How many lines of a failure's output are quoted.
const QUOTED_LINES: usize = 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnitTests {
    /// How long the built tests may run, in seconds.
    pub timeout_secs: u64,
}

impl Default for UnitTests {
    fn default() -> Self {
        UnitTests { timeout_secs: 60 }
    }
}

impl Check for UnitTests {
    fn summary(&self) -> String {
        "cargo test --release: the crate's own tests, such as the contract tests the stub ships, pass".into()
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let dir = match &ctx.subject {
            Subject::Crate { dir } => dir.clone(),
            Subject::Exec { .. } => {
                return Ok(StepOutcome::skip(
                    "no crate to test: --exec runs a ready command",
                ))
            }
        };
        ctx.log
            .detail(format!("building the tests of {}", dir.display()));
        let build = run_bounded(&mut cargo_test(&dir, true), BUILD_BOUND)?;
        if build.ended != Ended::Exited(0) {
            return Ok(StepOutcome::fail(format!(
                "the crate's tests do not build ({})",
                build.ended
            ))
            .cause("the tests do not compile against your code (quoted below): keep the signatures the stub gives, or fix the tests you wrote")
            .evidence(tail(&build.stderr, QUOTED_LINES)));
        }
        ctx.log.detail("running them");
        let bound = Duration::from_secs(self.timeout_secs);
        let run = run_bounded(&mut cargo_test(&dir, false), bound)?;
        let results = Results::read(&run.stdout);
        match run.ended {
            Ended::Exited(0) => {
                let message = format!(
                    "{} test(s) passed, {} ignored",
                    results.passed, results.ignored
                );
                Ok(StepOutcome::pass(message)
                    .figure("tests_passed", results.passed)
                    .proof_line(format!(
                        "unit_tests: the crate's own tests, {} passed, 0 failed",
                        results.passed
                    )))
            }
            Ended::TimedOut => Ok(StepOutcome::fail(format!(
                "the crate's tests did not finish within {} s",
                self.timeout_secs
            ))
            .evidence(output_tail(&run))),
            ended if results.failed.is_empty() => Ok(StepOutcome::fail(format!(
                "cargo test failed ({ended}) without naming a failed test"
            ))
            .evidence(output_tail(&run))),
            _ => {
                let evidence: Vec<String> =
                    results.panics.iter().take(QUOTED_LINES).cloned().collect();
                Ok(StepOutcome::fail(format!(
                    "{} of the crate's tests failed ({} passed): {}",
                    results.failed.len(),
                    results.passed,
                    results.failed.join(", ")
                ))
                .cause("a test of the crate fails: the function it tests breaks its contract (its doc comment) in a way the server steps cannot see from outside, such as what a read reports at each end of the stream. `cargo test` runs them one by one")
                .evidence(evidence))
            }
        }
    }
}

/// `cargo test --release` of the crate at `dir`: with `build_only`, the
/// tests are built and not run.
fn cargo_test(dir: &Path, build_only: bool) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["test", "--release", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("RUST_BACKTRACE", "0");
    if build_only {
        command.arg("--no-run");
    } else {
        command.args(["--", "--color", "never"]);
    }
    command
}

/// What libtest printed: the counts of every `test result:` line, the
/// names of the failed tests and each one's panic message.
#[derive(Debug, Default, PartialEq)]
struct Results {
    passed: usize,
    ignored: usize,
    failed: Vec<String>,
    panics: Vec<String>,
}

impl Results {
    fn read(stdout: &str) -> Results {
        let mut results = Results::default();
        let mut current: Option<&str> = None;
        for line in stdout.lines() {
            if let Some(name) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.strip_suffix(" ... FAILED"))
            {
                results.failed.push(name.to_string());
            } else if let Some(summary) = line.strip_prefix("test result: ") {
                results.passed += count(summary, "passed");
                results.ignored += count(summary, "ignored");
            } else if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|rest| rest.strip_suffix(" stdout ----"))
            {
                current = Some(name);
            } else if let Some(name) = current {
                // The section's first lines: where it panicked, and why.
                let line = line.trim();
                if line.starts_with("note: run with") || said_in(&results.panics, name) >= 3 {
                    current = None;
                } else if !line.is_empty() {
                    results.panics.push(format!("{name}: {line}"));
                }
            }
        }
        results
    }
}

/// How many lines of `panics` quote the test `name`.
fn said_in(panics: &[String], name: &str) -> usize {
    panics
        .iter()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(": "))
        })
        .count()
}

/// `N <word>` in a libtest summary (`ok. 6 passed; 0 failed; 1 ignored`).
fn count(summary: &str, word: &str) -> usize {
    summary
        .split(';')
        .filter_map(|part| {
            let mut words = part.split_whitespace().rev();
            let last = words.next()?;
            if last != word {
                return None;
            }
            words.next()?.parse::<usize>().ok()
        })
        .sum()
}

fn tail(text: &str, lines: usize) -> Vec<String> {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn output_tail(run: &Run) -> Vec<String> {
    let mut lines = tail(&run.stdout, QUOTED_LINES / 2);
    lines.extend(tail(&run.stderr, QUOTED_LINES / 2));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED_RUN: &str = "
running 3 tests
test tests::a ... ok
test tests::an_end_inside_a_frame_is_unexpected_eof ... FAILED
test tests::b ... ignored

failures:

---- tests::an_end_inside_a_frame_is_unexpected_eof stdout ----

thread 'tests::an_end_inside_a_frame_is_unexpected_eof' panicked at src/main.rs:200:37:
called `Result::unwrap_err()` on an `Ok` value: None
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    tests::an_end_inside_a_frame_is_unexpected_eof

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

    #[test]
    fn a_failed_run_names_the_test_and_its_panic() {
        let results = Results::read(FAILED_RUN);
        assert_eq!(results.passed, 1);
        assert_eq!(results.ignored, 1);
        assert_eq!(
            results.failed,
            ["tests::an_end_inside_a_frame_is_unexpected_eof"]
        );
        assert!(
            results
                .panics
                .iter()
                .any(|l| l.contains("panicked at src/main.rs:200:37")),
            "{:?}",
            results.panics
        );
        assert!(
            results
                .panics
                .iter()
                .any(|l| l.contains("on an `Ok` value: None")),
            "{:?}",
            results.panics
        );
    }

    #[test]
    fn the_counts_of_every_test_binary_add_up() {
        let two = "test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        let results = Results::read(two);
        assert_eq!((results.passed, results.ignored), (8, 1));
        assert!(results.failed.is_empty());
    }
}
