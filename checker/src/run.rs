//! One run of one lesson: every verify step in order, then the verdict and
//! the proof block. Used by `checker <id>` and by `checker validate`.

use anyhow::Result;

use crate::checks::{Ctx, Subject};
use crate::course::{Course, Lesson};
use crate::hashing;
use crate::proof::{self, ProofBlock};
use crate::report::{Format, HintNote, RunSummary, Status, StepOutcome, Transcript};

pub struct RunRequest<'a> {
    pub course: &'a Course,
    pub lesson: &'a Lesson,
    pub subject: Subject,
    /// How the proof names what was checked.
    pub checked: String,
    pub seed: u64,
    /// `None` runs silently (validate prints its own table).
    pub format: Option<Format>,
    /// Keep the text transcript in the result (for golden transcripts).
    pub capture: bool,
}

pub struct RunResult {
    pub passed: bool,
    pub failed_step: Option<String>,
    /// The failed step's position in the lesson's `verify` list.
    pub failed_index: Option<usize>,
    pub block: ProofBlock,
    /// The text transcript, when the request asked to capture it.
    pub transcript: Option<String>,
    /// The steps as a JUnit report.
    pub junit: String,
}

pub fn run_lesson(request: &RunRequest) -> Result<RunResult> {
    let lesson = request.lesson;
    let seed = request.seed;
    let mut log = Transcript::new(request.format, lesson.verify.len());
    if request.capture {
        log = log.capturing();
    }
    log.say(format!(
        "checker {} · {} {}",
        env!("CARGO_PKG_VERSION"),
        lesson.id,
        lesson.title
    ));
    log.say(format!(
        "checking {} · seed {seed} (replay with --seed {seed})",
        request.checked
    ));

    for warning in crate::preflight::warnings() {
        log.say(warning);
    }

    let mut ctx = Ctx {
        course: request.course,
        lesson,
        subject: request.subject.clone(),
        binary: None,
        seed,
        log: &mut log,
    };
    let mut proof_lines = Vec::new();
    let mut failed_step: Option<String> = None;
    let mut failed_index: Option<usize> = None;
    for (index, step) in lesson.verify.iter().enumerate() {
        if failed_step.is_some() {
            ctx.log.skipped(step.name());
            continue;
        }
        ctx.log.begin_step(step.name(), &step.summary());
        ctx.seed = step_seed(seed, index);
        crate::server::take_incidents();
        let outcome = step.run(&mut ctx)?;
        let mut outcome = death_is_the_verdict(
            outcome,
            &crate::server::take_incidents(),
            step.ends_the_server(),
        );
        if outcome.status == Status::Fail {
            // The hints of the diagnosed cause, when course.yaml maps it;
            // else those of the step.
            let hints = outcome
                .cause_id
                .as_ref()
                .and_then(|id| lesson.causes.get(id))
                .map(|refs| refs.clone().into_vec())
                .unwrap_or_else(|| step.hints.clone());
            outcome.hints = hint_notes(lesson, &hints);
        }
        ctx.log.end_step(&outcome);
        proof_lines.extend(outcome.proof.iter().cloned());
        if outcome.status == Status::Fail {
            failed_step = Some(step.name().to_string());
            failed_index = Some(index);
        }
    }
    let passed = failed_step.is_none();

    let mut body = vec![
        format!(
            "checker {} · course {} · source {} · seed {seed}",
            env!("CARGO_PKG_VERSION"),
            hashing::short(&hashing::course_hash(&request.course.raw)),
            source_of(&request.subject)?
        ),
        format!("checked: {}", request.checked),
    ];
    body.extend(proof_lines);
    body.push(ProofBlock::verdict_line(passed, &lesson.id));
    body.push(proof::digest_line(&lesson.id, &body));
    let block = ProofBlock {
        lesson_id: lesson.id.clone(),
        body,
    };
    let (verdict, note) = match &failed_step {
        None => (
            format!("PASSED {}: every step passed.", lesson.id),
            format!(
                "Paste the whole block above, BEGIN to END, into your course platform ({})",
                lesson.proof.instructions
            ),
        ),
        Some(step) => (
            format!(
                "FAILED {} at step `{step}`: see above for what was sent, what came back and the likely cause.",
                lesson.id
            ),
            format!("Fix the cause, then run the checker again (add --seed {seed} to replay exactly this run)."),
        ),
    };
    let junit = log.junit(&lesson.id, &lesson.title, seed);
    let transcript = log.finish(&RunSummary {
        lesson_id: lesson.id.clone(),
        checked: request.checked.clone(),
        seed,
        passed,
        verdict,
        proof: block.render(),
        note: Some(note),
    });
    Ok(RunResult {
        passed,
        failed_step,
        failed_index,
        block,
        transcript,
        junit,
    })
}

/// A server that died or panicked during a step: that is the step's verdict,
/// stated first, whatever its clients saw. The panic (thread, file:line and
/// message) is quoted in the FAIL line; a likely cause read from the
/// clients' symptoms is dropped (it would blame code that is fine), while a
/// cause that explains a death stays. A step that passed fails all the same:
/// a thread that panics drops its client even when the process lives on.
/// `ends_the_server`: the step asked the server to exit, so only a panic
/// counts there.
fn death_is_the_verdict(
    mut outcome: StepOutcome,
    incidents: &[crate::server::Incident],
    ends_the_server: bool,
) -> StepOutcome {
    let death_of = |incident: &crate::server::Incident| {
        // An exit the step asked for is no death, unless a panic ended it.
        incident
            .death
            .clone()
            .filter(|_| !ends_the_server || incident.panic.is_some())
    };
    let Some(incident) = incidents
        .iter()
        .find(|i| i.panic.is_some())
        .or_else(|| incidents.iter().find(|i| death_of(i).is_some()))
    else {
        return outcome;
    };
    let death = death_of(incident);
    let what_happened = match (&death, &incident.panic) {
        (Some(death), Some(panic)) => format!("{death}: {panic}"),
        (None, Some(panic)) => format!("a thread of the server panicked: {panic}"),
        (Some(death), None) => death.clone(),
        (None, None) => return outcome,
    };
    if outcome.status != Status::Fail {
        let after = if death.is_some() {
            "before the checker stopped it"
        } else {
            "(the process lived on, but that thread's work was lost)"
        };
        let mut failed = StepOutcome::fail(format!("{what_happened} {after}"))
            .evidence(incident.output.iter().cloned());
        failed.figures = outcome.figures;
        return failed;
    }
    let already_said = crate::server::tells_of_death(&outcome.message)
        && incident
            .panic
            .as_ref()
            .is_none_or(|panic| outcome.message.contains(panic.as_str()));
    if !already_said {
        outcome.message = if crate::server::tells_of_death(&outcome.message) {
            // `the server exited (exit code 101) right after a client
            // connected`: keep it, with the panic that explains it.
            format!(
                "{}: {}",
                outcome.message,
                incident.panic.as_deref().unwrap_or_default()
            )
        } else {
            format!("{what_happened}; what the clients saw: {}", outcome.message)
        };
    }
    if !outcome.cause_explains_death {
        outcome.cause = None;
        outcome.cause_id = None;
    }
    if !outcome
        .evidence
        .iter()
        .any(|line| crate::server::is_death_notice(line) || line.starts_with("[server"))
    {
        outcome.evidence.extend(incident.output.iter().cloned());
    }
    outcome
}

/// The hints a failing step points at, quoted from the lesson.
fn hint_notes(lesson: &Lesson, numbers: &[usize]) -> Vec<HintNote> {
    numbers
        .iter()
        .filter_map(|&number| {
            let text = lesson.hints.get(number.checked_sub(1)?)?;
            Some(HintNote {
                number,
                of: lesson.hints.len(),
                text: text.clone(),
            })
        })
        .collect()
}

/// The source hash the proof carries, computed after the build (which may
/// have written the crate's Cargo.lock), or a note for `--exec`.
fn source_of(subject: &Subject) -> Result<String> {
    Ok(match subject {
        Subject::Crate { dir } => hashing::short(&hashing::source_hash(dir)?).to_string(),
        Subject::Exec { .. } => "none (--exec)".to_string(),
    })
}

/// A pass whose proof fails the lesson's own patterns is a course bug: the
/// student would paste a block no instructor can accept.
pub fn ensure_proof_grades(result: &RunResult, lesson: &Lesson) -> Result<()> {
    let rejections = proof::rejections(&result.block, lesson);
    if rejections.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = rejections.iter().map(|r| r.to_string()).collect();
    anyhow::bail!(
        "course bug: lesson {} passed but its proof block fails its own proof.regex_patterns ({}); fix course.yaml",
        lesson.id,
        reasons.join("; ")
    )
}

pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos % 1_000_000) as u64
}

/// Each step gets its own seed, so replaying one run replays every step.
fn step_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Incident;

    fn panicked(death: Option<&str>) -> Incident {
        Incident {
            death: death.map(str::to_string),
            panic: Some("thread 'main' panicked at src/main.rs:40:5: not yet implemented".into()),
            output: vec!["[server:stderr] thread 'main' (7) panicked at src/main.rs:40:5:".into()],
        }
    }

    #[test]
    fn a_death_comes_first_and_drops_the_symptom_cause() {
        let clients_saw = StepOutcome::fail("8 connections could not send their frames")
            .cause_as("frames.split-read", "one read() is not one frame");
        let verdict = death_is_the_verdict(
            clients_saw,
            &[panicked(Some("the server exited (exit code 101)"))],
            false,
        );
        assert_eq!(verdict.status, Status::Fail);
        assert_eq!(
            verdict.message,
            "the server exited (exit code 101): thread 'main' panicked at src/main.rs:40:5: not yet implemented; what the clients saw: 8 connections could not send their frames"
        );
        assert_eq!(verdict.cause, None);
        assert_eq!(verdict.cause_id, None);
        assert!(!verdict.evidence.is_empty());
    }

    #[test]
    fn a_cause_that_explains_the_death_stays() {
        let broken_pipe =
            StepOutcome::fail("the server exited (exit code 101) while clients reset").death_cause(
                "broken_pipes.unwrap-on-epipe",
                "a write to a reset client returned EPIPE",
            );
        let verdict = death_is_the_verdict(
            broken_pipe,
            &[panicked(Some("the server exited (exit code 101)"))],
            false,
        );
        assert!(verdict.message.starts_with("the server exited (exit code 101) while clients reset: thread 'main' panicked at src/main.rs:40:5"), "{}", verdict.message);
        assert_eq!(
            verdict.cause_id.as_deref(),
            Some("broken_pipes.unwrap-on-epipe")
        );
    }

    #[test]
    fn a_panicking_thread_fails_a_step_that_passed() {
        let verdict =
            death_is_the_verdict(StepOutcome::pass("listening"), &[panicked(None)], false);
        assert_eq!(verdict.status, Status::Fail);
        assert!(verdict.message.starts_with("a thread of the server panicked: thread 'main' panicked at src/main.rs:40:5: not yet implemented"), "{}", verdict.message);
    }

    #[test]
    fn an_exit_the_step_asked_for_is_no_death_but_a_panic_is() {
        let exited = Incident {
            death: Some("the server exited (exit code 0)".into()),
            panic: None,
            output: Vec::new(),
        };
        let passed = death_is_the_verdict(
            StepOutcome::pass("shut down"),
            std::slice::from_ref(&exited),
            true,
        );
        assert_eq!(passed.status, Status::Pass);
        let unasked = death_is_the_verdict(StepOutcome::pass("echoed"), &[exited], false);
        assert_eq!(unasked.status, Status::Fail);
        let panicked_on_exit =
            death_is_the_verdict(StepOutcome::pass("shut down"), &[panicked(None)], true);
        assert_eq!(panicked_on_exit.status, Status::Fail);
    }

    #[test]
    fn a_step_without_incidents_is_left_alone() {
        let outcome = StepOutcome::fail("short echo").cause("x");
        let same = death_is_the_verdict(outcome, &[], false);
        assert_eq!(same.message, "short echo");
        assert_eq!(same.cause.as_deref(), Some("x"));
    }
}
