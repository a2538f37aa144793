//! `checker validate`: is the course sound? course.yaml loads (already done
//! by the caller), every lesson's content passes the lint, every solution
//! passes its lesson with a proof that grades, and every stub fails with a
//! proof that does not.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::{EXIT_FAIL, EXIT_PASS};
use crate::course::{Course, Lesson};
use crate::lint;
use crate::proof;
use crate::run::{self, RunRequest};

pub fn validate(
    course: &Course,
    only: &[String],
    seed: Option<u64>,
    transcripts: Option<&Path>,
) -> Result<u8> {
    let seed = seed.unwrap_or_else(run::random_seed);
    let lessons: Vec<&Lesson> = course
        .lessons
        .iter()
        .filter(|l| only.is_empty() || only.contains(&l.id))
        .collect();
    for id in only {
        course.lesson_or_suggest(id)?;
    }
    println!(
        "validating {} lessons of {} · seed {seed}",
        lessons.len(),
        course.path.display()
    );
    println!(
        "{:<9} {:<8} {:>11} {:<10} {:<10} {:>8}",
        "lesson", "content", "lines/floor", "solution", "stub", "seconds"
    );
    let mut problems: Vec<String> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for lesson in lessons {
        let started = Instant::now();
        let mut content = lint::lesson_problems(course, lesson);
        content.extend(crate::pitfalls::problems(course, lesson, seed)?);
        let rewrite = lint::rewrite_findings(course, lesson);
        let lines = crate::stubs::generate(course, lesson)
            .map(|g| g.lines().to_string())
            .unwrap_or_else(|_| "?".to_string());
        let floor = lesson
            .floor_lines()
            .map_or("-".to_string(), |f| f.to_string());
        match &lesson.rewrite_pending {
            Some(reason) if !rewrite.is_empty() => {
                pending.push(format!("{} ({reason}): {}", lesson.id, rewrite.join("; ")))
            }
            _ => content.extend(rewrite),
        }
        let solution = run_quietly(course, lesson, true, seed)?;
        let stub = run_quietly(course, lesson, false, seed)?;
        if let Some(dir) = transcripts {
            save_transcript(dir, lesson, "pass", &solution)?;
            save_transcript(dir, lesson, "fail", &stub)?;
        }

        let solution_verdict = if !solution.passed {
            problems.push(format!(
                "{}: the reference solution fails at step `{}` (replay: checker {} --solution --seed {seed})",
                lesson.id,
                solution.failed_step.as_deref().unwrap_or("?"),
                lesson.id
            ));
            "FAILS"
        } else if !proof::rejections(&solution.block, lesson).is_empty() {
            problems.push(format!(
                "{}: the solution passes but its proof block does not grade: {:?}",
                lesson.id,
                proof::rejections(&solution.block, lesson)
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
            ));
            "BAD-PROOF"
        } else {
            "passes"
        };
        let stub_verdict = if stub.passed {
            problems.push(format!(
                "{}: the stub passes its lesson: its checks cannot fail",
                lesson.id
            ));
            "PASSES"
        } else if proof::rejections(&stub.block, lesson).is_empty() {
            problems.push(format!(
                "{}: the stub fails but its proof block grades as a pass",
                lesson.id
            ));
            "BAD-PROOF"
        } else if stub_failure_names_no_hint(lesson, &stub) {
            problems.push(format!(
                "{}: the stub fails at step `{}`, which names no hint: add `hint: N` beside it in course.yaml, so a student failing there is pointed at the hint that applies",
                lesson.id,
                stub.failed_step.as_deref().unwrap_or("?")
            ));
            "NO-HINT"
        } else {
            "fails"
        };
        let content_verdict = if content.is_empty() { "ok" } else { "PROBLEMS" };
        problems.extend(content.into_iter().map(|p| format!("{}: {p}", lesson.id)));
        println!(
            "{:<9} {:<8} {:>11} {:<10} {:<10} {:>8.1}",
            lesson.id,
            content_verdict,
            format!("{lines}/{floor}"),
            solution_verdict,
            format!(
                "{stub_verdict}{}",
                stub.failed_step
                    .as_deref()
                    .map(|s| format!(" @{s}"))
                    .unwrap_or_default()
            ),
            started.elapsed().as_secs_f64()
        );
    }
    // Mutation results are slow to refresh and not part of soundness: a
    // warning, never a failure.
    let validated: Vec<&Lesson> = course
        .lessons
        .iter()
        .filter(|l| only.is_empty() || only.contains(&l.id))
        .collect();
    if let Some(warning) = crate::mutants::staleness_warning(course, &validated) {
        println!("{warning}");
    }
    // A lesson awaiting its rewrite is shown, not failed: the rewrite's
    // issue names it, and the field goes when the rewrite lands.
    if !pending.is_empty() {
        println!(
            "warning: {} lesson(s) still have their old stub (`rewrite_pending` in course.yaml), so these are not yet problems:",
            pending.len()
        );
        for line in &pending {
            println!("  - {line}");
        }
    }
    if problems.is_empty() {
        println!("the course is sound");
        Ok(EXIT_PASS)
    } else {
        println!("\n{} problem(s):", problems.len());
        for problem in &problems {
            println!("  - {problem}");
        }
        Ok(EXIT_FAIL)
    }
}

/// Where the stub fails is where every new student fails first: that step
/// must point at a hint.
fn stub_failure_names_no_hint(lesson: &Lesson, stub: &run::RunResult) -> bool {
    stub.failed_index
        .and_then(|i| lesson.verify.get(i))
        .is_some_and(|step| step.hints.is_empty())
}

fn run_quietly(
    course: &Course,
    lesson: &Lesson,
    solution: bool,
    seed: u64,
) -> Result<run::RunResult> {
    let dir = if solution {
        course.solution_dir(lesson)
    } else {
        course.stub_dir(lesson)
    };
    let checked = if solution {
        lesson.solution.display().to_string()
    } else {
        lesson.stub.display().to_string()
    };
    run::run_lesson(&RunRequest {
        course,
        lesson,
        subject: crate::checks::Subject::Crate { dir },
        checked,
        seed,
        format: None,
        capture: true,
    })
}

/// Writes a run's text transcript to `dir/<id>.<pass|fail>.txt`.
fn save_transcript(dir: &Path, lesson: &Lesson, kind: &str, result: &run::RunResult) -> Result<()> {
    let path = dir.join(format!("{}.{kind}.txt", lesson.id));
    std::fs::write(&path, result.transcript.as_deref().unwrap_or_default())
        .with_context(|| format!("writing {}", path.display()))
}
