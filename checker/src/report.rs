//! What a run tells its reader: each step as it happens (text), or one JSON
//! document at the end (`--format json`), then the verdict and proof block.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// Colour only for a terminal, and never when NO_COLOR is set.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn paint(text: &str, code: &str) -> String {
    if colour() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// What one step found. Built by the checks; printed by the transcript.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub status: Status,
    pub message: String,
    /// The likely cause, in the student's terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// A stable name for the cause (`pool.lock-held-while-serving`), so a
    /// test can assert which diagnosis a broken server gets, and course.yaml
    /// can map it to the hints that apply (`causes:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause_id: Option<String>,
    /// The cause explains a death of the server (an EPIPE left unhandled, an
    /// oversize frame that ended the process), so it stays when the death
    /// becomes the verdict; any other cause is only a reading of what the
    /// clients saw, and is dropped then.
    #[serde(skip)]
    pub cause_explains_death: bool,
    /// Measured values, for people and for JSON.
    pub figures: Vec<(String, String)>,
    /// Lines that go into the proof block.
    #[serde(skip)]
    pub proof: Vec<String>,
    /// Evidence quoted on failure: excerpts, the server's output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    /// The lesson's hints that apply to this failure (course.yaml's `hint:`
    /// beside the step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<HintNote>,
}

/// One of the lesson's hints, quoted where a step fails.
#[derive(Debug, Clone, Serialize)]
pub struct HintNote {
    /// Numbered from 1, as `checker hint` numbers them.
    pub number: usize,
    pub of: usize,
    pub text: String,
}

impl StepOutcome {
    pub fn pass(message: impl Into<String>) -> Self {
        Self::new(Status::Pass, message)
    }
    pub fn fail(message: impl Into<String>) -> Self {
        Self::new(Status::Fail, message)
    }
    pub fn skip(message: impl Into<String>) -> Self {
        Self::new(Status::Skip, message)
    }
    fn new(status: Status, message: impl Into<String>) -> Self {
        StepOutcome {
            status,
            message: message.into(),
            cause: None,
            cause_id: None,
            cause_explains_death: false,
            figures: Vec::new(),
            proof: Vec::new(),
            evidence: Vec::new(),
            hints: Vec::new(),
        }
    }
    pub fn cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }
    /// A likely cause with its stable id (see [`StepOutcome::cause_id`]).
    pub fn cause_as(mut self, id: &str, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self.cause_id = Some(id.to_string());
        self
    }
    /// Marks the cause already given as one that explains a death, with its id.
    pub fn explains_death(mut self, id: &str) -> Self {
        self.cause_explains_death = true;
        self.cause_id = Some(id.to_string());
        self
    }
    /// A likely cause that explains the server's death, kept when the death
    /// is the verdict.
    pub fn death_cause(mut self, id: &str, cause: impl Into<String>) -> Self {
        self.cause_explains_death = true;
        self.cause_as(id, cause)
    }
    pub fn figure(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.figures.push((name.into(), value.to_string()));
        self
    }
    pub fn proof_line(mut self, line: impl Into<String>) -> Self {
        self.proof.push(line.into());
        self
    }
    pub fn evidence(mut self, lines: impl IntoIterator<Item = String>) -> Self {
        self.evidence.extend(lines);
        self
    }
}

#[derive(Debug, Serialize)]
struct StepRecord {
    name: String,
    status: Status,
    seconds: f64,
    message: String,
    #[serde(serialize_with = "figures_as_map")]
    figures: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    evidence: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hints: Vec<HintNote>,
}

/// The death notice among a failing step's evidence when the step's own
/// message does not tell of it: a probe that failed on what its clients saw
/// (a closed connection, a short echo) while the server was dying.
fn unnoticed_death(outcome: &StepOutcome) -> Option<&str> {
    if crate::server::tells_of_death(&outcome.message) {
        return None;
    }
    outcome
        .evidence
        .iter()
        .map(String::as_str)
        .find(|line| crate::server::is_death_notice(line))
}

fn figures_as_map<S: serde::Serializer>(
    figures: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(figures.len()))?;
    for (k, v) in figures {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// The run's running record and its live printout.
pub struct Transcript {
    /// `None`: silent (a run inside `checker validate`).
    format: Option<Format>,
    steps: Vec<StepRecord>,
    current: Option<(String, Instant)>,
    step_count: usize,
    /// The text transcript kept in memory as well (golden transcripts).
    capture: Option<std::cell::RefCell<String>>,
}

impl Transcript {
    pub fn new(format: Option<Format>, step_count: usize) -> Self {
        Transcript {
            format,
            steps: Vec::new(),
            current: None,
            step_count,
            capture: None,
        }
    }

    /// Also keeps the text transcript, whatever the format; `finish` returns it.
    pub fn capturing(mut self) -> Self {
        self.capture = Some(std::cell::RefCell::new(String::new()));
        self
    }

    /// A line for people (text mode only).
    pub fn say(&self, line: impl AsRef<str>) {
        if let Some(capture) = &self.capture {
            let mut text = capture.borrow_mut();
            text.push_str(line.as_ref());
            text.push('\n');
        }
        if self.format == Some(Format::Text) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line.as_ref());
            let _ = out.flush();
        }
    }

    /// Whether live progress bars make sense: text mode on a terminal.
    pub fn on_a_terminal(&self) -> bool {
        self.format == Some(Format::Text) && std::io::stdout().is_terminal()
    }

    /// A progress line inside the current step.
    pub fn detail(&self, line: impl AsRef<str>) {
        self.say(format!("      {}", line.as_ref()));
    }

    pub fn begin_step(&mut self, name: &str, summary: &str) {
        let number = self.steps.len() + 1;
        self.say(format!(
            "\n[{number}/{}] {name} — {summary}",
            self.step_count
        ));
        self.current = Some((name.to_string(), Instant::now()));
    }

    pub fn end_step(&mut self, outcome: &StepOutcome) {
        let (name, started) = self
            .current
            .take()
            .unwrap_or_else(|| ("step".into(), Instant::now()));
        let seconds = started.elapsed().as_secs_f64();
        let mark = match outcome.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        let mark = match outcome.status {
            Status::Pass => paint(mark, "32"),
            Status::Fail => paint(mark, "1;31"),
            Status::Skip => paint(mark, "33"),
        };
        self.say(format!("      {mark}: {}", outcome.message));
        if outcome.status == Status::Fail {
            if let Some(cause) = &outcome.cause {
                self.say(format!("      likely cause: {cause}"));
            }
            for hint in &outcome.hints {
                self.say(format!(
                    "      hint {}/{}: {}",
                    hint.number, hint.of, hint.text
                ));
            }
            if outcome
                .evidence
                .iter()
                .any(|l| l.contains("not yet implemented"))
            {
                self.say("      note: the server reached a `todo!()` of the stub: write the function it names, to the contract in its doc comment");
            } else if let Some(death) = unnoticed_death(outcome) {
                self.say(format!(
                    "      note: {death} during this step: what the clients saw follows from that, so find out why first (its last output is quoted below)"
                ));
            }
            for line in &outcome.evidence {
                self.say(format!("      │ {line}"));
            }
        }
        self.steps.push(StepRecord {
            name,
            status: outcome.status,
            seconds: (seconds * 1000.0).round() / 1000.0,
            message: outcome.message.clone(),
            figures: outcome.figures.clone(),
            cause: outcome.cause.clone(),
            cause_id: outcome.cause_id.clone(),
            evidence: outcome.evidence.clone(),
            hints: outcome.hints.clone(),
        });
    }

    /// Records a step that did not run because an earlier one failed.
    pub fn skipped(&mut self, name: &str) {
        self.steps.push(StepRecord {
            name: name.to_string(),
            status: Status::Skip,
            seconds: 0.0,
            message: "not run: an earlier step failed".into(),
            figures: Vec::new(),
            cause: None,
            cause_id: None,
            evidence: Vec::new(),
            hints: Vec::new(),
        });
    }

    /// The steps so far as a JUnit report, one test case per step, for CI
    /// systems that show test results (`checker <id> --junit FILE`).
    pub fn junit(&self, lesson_id: &str, title: &str, seed: u64) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(format!("{lesson_id} {title}"));
        suite.add_property(("seed", seed.to_string().as_str()));
        for (index, step) in self.steps.iter().enumerate() {
            let status = match step.status {
                Status::Pass => TestCaseStatus::success(),
                Status::Skip => TestCaseStatus::skipped(),
                Status::Fail => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(step.message.as_str());
                    let mut lines = Vec::new();
                    if let Some(cause) = &step.cause {
                        lines.push(format!("likely cause: {cause}"));
                    }
                    for hint in &step.hints {
                        lines.push(format!("hint {}/{}: {}", hint.number, hint.of, hint.text));
                    }
                    lines.extend(step.evidence.iter().cloned());
                    status.set_description(lines.join("\n"));
                    status
                }
            };
            let mut case = TestCase::new(format!("{} {}", index + 1, step.name), status);
            case.set_classname(lesson_id);
            case.set_time(std::time::Duration::from_secs_f64(step.seconds.max(0.0)));
            suite.add_test_case(case);
        }
        let mut report = Report::new(format!("checker {lesson_id}"));
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }

    /// Prints the verdict and the proof block (text), or the whole JSON
    /// result; returns the captured text transcript, if capturing.
    pub fn finish(self, summary: &RunSummary) -> Option<String> {
        match self.format {
            None | Some(Format::Text) => {
                self.say("");
                self.say(&summary.verdict);
                self.say("");
                self.say(summary.proof.trim_end());
                if let Some(note) = &summary.note {
                    self.say("");
                    self.say(note);
                }
            }
            Some(Format::Json) => {
                let document = serde_json::json!({
                    "lesson": summary.lesson_id,
                    "checked": summary.checked,
                    "seed": summary.seed,
                    "passed": summary.passed,
                    "verdict": summary.verdict,
                    "steps": self.steps,
                    "proof": summary.proof,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&document).unwrap_or_default()
                );
            }
        }
        self.capture.map(|text| text.into_inner())
    }
}

/// The end of a run, as the transcript prints it.
pub struct RunSummary {
    pub lesson_id: String,
    pub checked: String,
    pub seed: u64,
    pub passed: bool,
    pub verdict: String,
    pub proof: String,
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_is_noted_only_when_the_message_does_not_already_tell_of_it() {
        let died = "the server exited (killed by SIGABRT)".to_string();
        let quoted = "[server:stderr] the server exited (a line it printed)".to_string();

        let clients_saw = StepOutcome::fail("client 3: connection reset")
            .evidence([quoted.clone(), died.clone()]);
        assert_eq!(unnoticed_death(&clients_saw), Some(died.as_str()));

        let already_said =
            StepOutcome::fail(format!("{died} during the pool step")).evidence([died.clone()]);
        assert_eq!(unnoticed_death(&already_said), None);

        // The server's own output never passes for the checker's notice.
        let alive = StepOutcome::fail("client 3: connection reset").evidence([quoted]);
        assert_eq!(unnoticed_death(&alive), None);
    }
}
