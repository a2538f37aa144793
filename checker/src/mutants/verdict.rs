//! What one checker run says about a mutant, read from its exit code and
//! `--format json` result, and when a run must be repeated before its
//! verdict counts.

use serde::{Deserialize, Serialize};

use super::process::Ended;

/// Steps whose verdict rests on timing (CPU time, rates, deadlines, how
/// many are served at once), so a loaded machine can fail a correct
/// server there: a kill at one of these counts only when the same mutant,
/// with the same seed, is caught again. The one list; a new timing-based
/// step kind is one more name here.
pub const TIMING_DEPENDENT_STEPS: &[&str] = &[
    "idle_cpu",
    "http_idle_cpu",
    "broadcast_idle_cpu",
    "concurrency",
    "pool",
    "stats",
    "perf",
    "loops",
    "shutdown",
    "idle_timeout",
    "http_load",
    "c10k",
    "fd_exhaustion",
];

pub fn is_timing_dependent(step: &str) -> bool {
    TIMING_DEPENDENT_STEPS.contains(&step)
}

/// How long a failing step's message is kept in the committed results.
const MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The checker failed the mutated solution at a step after `build`.
    Caught,
    /// The mutated solution passed every step.
    Survived,
    /// The mutant does not compile (the build step failed).
    Unviable,
    /// The checker gave no verdict within the time bound.
    Timeout,
    /// The checker itself failed (exit 2, a crash, unreadable output).
    Error,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Caught => "caught",
            Verdict::Survived => "SURVIVED",
            Verdict::Unviable => "unviable",
            Verdict::Timeout => "TIMEOUT",
            Verdict::Error => "ERROR",
        }
    }
}

/// One checker run of one mutant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub verdict: Verdict,
    /// The failing step (caught), `build` (unviable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// How the checker ended: `exit 1`, `stopped at the time bound`.
    pub ended: String,
    pub seconds: f64,
    /// The failing step's message, or what went wrong (error, timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads one run: exit 0 survived, exit 1 caught at the first failing step
/// (unviable when that is `build`), the time bound timeout, anything else
/// (exit 2, a signal, a JSON result that contradicts the exit) error.
pub fn classify(ended: Ended, stdout: &str, stderr: &str, seconds: f64) -> Attempt {
    let attempt = |verdict, step: Option<&str>, message: Option<String>| Attempt {
        verdict,
        step: step.map(str::to_string),
        ended: ended.to_string(),
        seconds: (seconds * 10.0).round() / 10.0,
        message: message.map(|m| shorten(&m)),
    };
    let last_stderr_line = || {
        stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(nothing on stderr)")
            .to_string()
    };
    let code = match ended {
        Ended::TimedOut => {
            return attempt(
                Verdict::Timeout,
                None,
                Some("the checker gave no verdict within the time bound".into()),
            )
        }
        Ended::Signalled(signal) => {
            return attempt(
                Verdict::Error,
                None,
                Some(format!(
                    "the checker was killed by signal {signal}: {}",
                    last_stderr_line()
                )),
            )
        }
        Ended::Exited(code) => code,
    };
    if code != 0 && code != 1 {
        return attempt(Verdict::Error, None, Some(last_stderr_line()));
    }
    let document: serde_json::Value = match serde_json::from_str(stdout) {
        Ok(document) => document,
        Err(err) => {
            return attempt(
                Verdict::Error,
                None,
                Some(format!(
                    "exit {code} but no JSON result ({err}): {}",
                    last_stderr_line()
                )),
            )
        }
    };
    let passed = document.get("passed").and_then(|p| p.as_bool());
    let failed_step = document
        .get("steps")
        .and_then(|s| s.as_array())
        .and_then(|steps| {
            steps
                .iter()
                .find(|s| s.get("status").and_then(|v| v.as_str()) == Some("fail"))
        });
    match (code, passed, failed_step) {
        (0, Some(true), None) => attempt(Verdict::Survived, None, None),
        (1, Some(false), Some(step)) => {
            let name = step.get("name").and_then(|v| v.as_str()).unwrap_or("?");
            let message = step
                .get("message")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let verdict = if name == "build" {
                Verdict::Unviable
            } else {
                Verdict::Caught
            };
            attempt(verdict, Some(name), message)
        }
        _ => attempt(
            Verdict::Error,
            None,
            Some(format!(
                "exit {code} contradicts the JSON result (passed: {passed:?}, failed step: {})",
                failed_step
                    .and_then(|s| s.get("name"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("none")
            )),
        ),
    }
}

fn shorten(message: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MESSAGE_CHARS {
        one_line
    } else {
        let cut: String = one_line.chars().take(MESSAGE_CHARS).collect();
        format!("{cut}…")
    }
}

/// A mutant's verdict once its runs settle it.
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    pub verdict: Verdict,
    pub step: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run the same mutant, same seed, once more: why.
    Again(&'static str),
    Done(Final),
}

/// After the runs so far, is the verdict settled? An error is rerun once
/// (an error never counts as caught); a kill at a timing-dependent step
/// is repeated once and counts only if the repeat is caught too.
pub fn next(attempts: &[Attempt]) -> Next {
    let Some(first) = attempts.first() else {
        return Next::Again("no run yet");
    };
    // The runs after an error's rerun (the error itself settles nothing).
    let real = if first.verdict == Verdict::Error {
        &attempts[1..]
    } else {
        attempts
    };
    let timing_kill = |a: &Attempt| {
        a.verdict == Verdict::Caught && a.step.as_deref().is_some_and(is_timing_dependent)
    };
    match real {
        [] => Next::Again("the checker erred: rerun once"),
        [one] if timing_kill(one) => Next::Again("caught at a timing-dependent step: repeat once"),
        [one] => Next::Done(Final {
            verdict: one.verdict,
            step: one.step.clone(),
            note: (attempts.len() > 1 && first.verdict == Verdict::Error).then(|| {
                format!(
                    "the first run erred ({}); the rerun settled it",
                    first.message.as_deref().unwrap_or("?")
                )
            }),
        }),
        [kill, repeat, ..] => {
            let first_step = kill.step.clone().unwrap_or_default();
            if repeat.verdict == Verdict::Caught {
                let again = repeat.step.as_deref().unwrap_or("?");
                Next::Done(Final {
                    verdict: Verdict::Caught,
                    step: kill.step.clone(),
                    note: Some(if again == first_step {
                        format!("caught at {first_step} twice")
                    } else {
                        format!("caught at {first_step}, then at {again} on the repeat")
                    }),
                })
            } else {
                Next::Done(Final {
                    verdict: repeat.verdict,
                    step: repeat.step.clone(),
                    note: Some(format!(
                        "caught at {first_step} once, {} on the repeat: a timing-dependent kill that did not repeat does not count",
                        repeat.verdict.word().to_lowercase()
                    )),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(passed: bool, steps: &[(&str, &str)]) -> String {
        let steps: Vec<serde_json::Value> = steps
            .iter()
            .map(|(name, status)| {
                serde_json::json!({"name": name, "status": status, "seconds": 0.1, "message": format!("{name} said {status}"), "figures": {}})
            })
            .collect();
        serde_json::json!({"lesson": "w01-l01", "passed": passed, "steps": steps}).to_string()
    }

    #[test]
    fn the_verdict_comes_from_the_exit_code_and_the_first_failing_step() {
        let pass = json(true, &[("build", "pass"), ("echo", "pass")]);
        let v = classify(Ended::Exited(0), &pass, "", 1.0);
        assert_eq!((v.verdict, v.step), (Verdict::Survived, None));

        let caught = json(
            false,
            &[
                ("build", "pass"),
                ("start", "pass"),
                ("echo", "fail"),
                ("stress", "skip"),
            ],
        );
        let v = classify(Ended::Exited(1), &caught, "", 1.0);
        assert_eq!(v.verdict, Verdict::Caught);
        assert_eq!(v.step.as_deref(), Some("echo"));
        assert_eq!(v.message.as_deref(), Some("echo said fail"));

        let unviable = json(false, &[("build", "fail"), ("echo", "skip")]);
        let v = classify(Ended::Exited(1), &unviable, "", 1.0);
        assert_eq!(
            (v.verdict, v.step.as_deref()),
            (Verdict::Unviable, Some("build"))
        );

        let v = classify(Ended::Exited(2), "", "checker: error: course bug\n", 1.0);
        assert_eq!(v.verdict, Verdict::Error);
        assert_eq!(v.message.as_deref(), Some("checker: error: course bug"));

        assert_eq!(
            classify(Ended::TimedOut, "", "", 61.0).verdict,
            Verdict::Timeout
        );
        assert_eq!(
            classify(Ended::Signalled(9), "", "", 1.0).verdict,
            Verdict::Error
        );
        // A result that contradicts its exit code is no verdict.
        assert_eq!(
            classify(Ended::Exited(0), &caught, "", 1.0).verdict,
            Verdict::Error
        );
        assert_eq!(
            classify(Ended::Exited(1), &pass, "", 1.0).verdict,
            Verdict::Error
        );
        assert_eq!(
            classify(Ended::Exited(1), "not json", "", 1.0).verdict,
            Verdict::Error
        );
    }

    fn at(verdict: Verdict, step: Option<&str>) -> Attempt {
        Attempt {
            verdict,
            step: step.map(str::to_string),
            ended: "exit 1".into(),
            seconds: 1.0,
            message: Some("m".into()),
        }
    }

    #[test]
    fn timing_kills_repeat_and_errors_rerun_and_never_count_as_caught() {
        use Verdict::*;
        let done = |n: Next| match n {
            Next::Done(f) => f,
            Next::Again(why) => panic!("expected a verdict, got Again({why})"),
        };
        // A plain kill settles at once.
        assert_eq!(done(next(&[at(Caught, Some("echo"))])).verdict, Caught);
        // A kill at a timing step must repeat...
        assert!(matches!(next(&[at(Caught, Some("pool"))]), Next::Again(_)));
        let twice = done(next(&[at(Caught, Some("pool")), at(Caught, Some("pool"))]));
        assert_eq!(
            (twice.verdict, twice.step.as_deref()),
            (Caught, Some("pool"))
        );
        // ...and does not count when the repeat passes.
        let flaky = done(next(&[at(Caught, Some("stats")), at(Survived, None)]));
        assert_eq!(flaky.verdict, Survived);
        assert!(flaky.note.unwrap().contains("did not repeat"));
        // An error is rerun once; a second error stays an error.
        assert!(matches!(next(&[at(Error, None)]), Next::Again(_)));
        assert_eq!(
            done(next(&[at(Error, None), at(Error, None)])).verdict,
            Error
        );
        assert_eq!(
            done(next(&[at(Error, None), at(Caught, Some("echo"))])).verdict,
            Caught
        );
        // A rerun that kills at a timing step repeats like any such kill.
        assert!(matches!(
            next(&[at(Error, None), at(Caught, Some("perf"))]),
            Next::Again(_)
        ));
        let after_error = done(next(&[
            at(Error, None),
            at(Caught, Some("perf")),
            at(Error, None),
        ]));
        assert_eq!(after_error.verdict, Error);
        // Every step kind named timing-dependent is a real step kind.
        for step in TIMING_DEPENDENT_STEPS {
            if let Err(err) = serde_yaml::from_str::<crate::checks::Step>(step) {
                assert!(
                    !err.to_string().contains("unknown variant"),
                    "`{step}` is not a step kind: {err}"
                );
            }
        }
    }
}
