//! One run of one lesson: every verify step in order, then the verdict and
//! the proof block. Used by `checker <id>` and by `checker validate`.

use anyhow::Result;

use crate::checks::{Ctx, Subject};
use crate::course::{Course, Lesson};
use crate::hashing;
use crate::proof::{self, ProofBlock};
use crate::report::{Format, HintNote, RunSummary, Status, Transcript};

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
        let mut outcome = step.run(&mut ctx)?;
        if outcome.status == Status::Fail {
            outcome.hints = hint_notes(lesson, &step.hints);
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
