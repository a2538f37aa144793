//! `checker grade`: find proof blocks in pasted text — one paste, or a
//! directory of them (one file per student, the file name is the student) —
//! and grade each against its lesson in course.yaml. Output as a table for
//! people, or JSON, JUnit XML or CSV for machines.
//!
//! A block passes only with its `result: PASS <id>` line, every one of the
//! lesson's proof patterns, and an intact digest. A block can also be
//! *flagged*: edited after the run, the reference solution's own code, code
//! other than the repository's (`--repo`), or a different verdict on re-run
//! (`--rerun`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::checks::Subject;
use crate::cli::{EXIT_FAIL, EXIT_PASS};
use crate::course::{Course, Lesson};
use crate::hashing;
use crate::proof::{self, Found, ProofBlock};
use crate::run::{self, RunRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GradeFormat {
    Text,
    Json,
    Junit,
    Csv,
}

pub struct GradeOptions {
    pub format: GradeFormat,
    /// The student's repository: recompute the source hash of `lessons/<id>`.
    pub repo: Option<PathBuf>,
    /// With `repo`: re-run the lesson there with the block's seed.
    pub rerun: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    Malformed,
    Flagged,
}

/// One student's result for one lesson.
#[derive(Debug, Clone, Serialize)]
pub struct Grade {
    pub student: String,
    pub lesson: String,
    pub status: Status,
    pub xp: u32,
    pub reasons: Vec<String>,
}

pub fn grade(course: &Course, input: &str, options: &GradeOptions) -> Result<u8> {
    let pastes = read_pastes(input)?;
    let mut grades = Vec::new();
    for (student, text) in &pastes {
        grades.extend(grade_paste(course, student, text, options)?);
    }
    print(course, &pastes, &grades, options.format)?;
    let all_passed = !grades.is_empty() && grades.iter().all(|g| g.status == Status::Passed);
    Ok(if all_passed { EXIT_PASS } else { EXIT_FAIL })
}

/// `(student, text)` for each paste: stdin, one file, or every file of a directory.
fn read_pastes(input: &str) -> Result<Vec<(String, String)>> {
    let read_file = |path: &Path| -> Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).to_string())
    };
    if input == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading standard input")?;
        return Ok(vec![("-".to_string(), text)]);
    }
    let path = Path::new(input);
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!(
                "{} holds no files to grade (one paste per student)",
                path.display()
            );
        }
        return files
            .iter()
            .map(|f| Ok((student_name(f), read_file(f)?)))
            .collect();
    }
    Ok(vec![(student_name(path), read_file(path)?)])
}

fn student_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

fn grade_paste(
    course: &Course,
    student: &str,
    text: &str,
    options: &GradeOptions,
) -> Result<Vec<Grade>> {
    let found = proof::scan(text);
    if found.is_empty() {
        let why = if text.trim().is_empty() {
            "the paste is empty"
        } else {
            "no proof block found (it runs from `----- BEGIN PROOF <id> -----` to `----- END PROOF <id> -----`)"
        };
        return Ok(vec![Grade {
            student: student.into(),
            lesson: "-".into(),
            status: Status::Malformed,
            xp: 0,
            reasons: vec![why.into()],
        }]);
    }
    // The last block of a lesson counts; earlier ones are noted.
    let mut by_lesson: BTreeMap<String, (Found, usize)> = BTreeMap::new();
    for item in found {
        let id = match &item {
            Found::Block(block) => block.lesson_id.clone(),
            Found::Truncated { lesson_id, .. } => lesson_id.clone(),
        };
        let seen = by_lesson.get(&id).map(|(_, n)| *n).unwrap_or(0);
        by_lesson.insert(id, (item, seen + 1));
    }
    let mut grades = Vec::new();
    for (id, (item, count)) in by_lesson {
        let mut grade = match (&item, course.lesson(&id)) {
            (_, None) => Grade {
                student: student.into(),
                lesson: id.clone(),
                status: Status::Malformed,
                xp: 0,
                reasons: vec![format!(
                    "unknown lesson id `{id}` (not in {})",
                    course.path.display()
                )],
            },
            (Found::Truncated { reason, .. }, Some(_)) => Grade {
                student: student.into(),
                lesson: id.clone(),
                status: Status::Malformed,
                xp: 0,
                reasons: vec![format!("truncated block: {reason}")],
            },
            (Found::Block(block), Some(lesson)) => {
                grade_block(course, lesson, block, student, options)?
            }
        };
        if count > 1 {
            grade.reasons.push(format!(
                "{count} blocks for {id} in this paste: the last one was graded"
            ));
        }
        grades.push(grade);
    }
    Ok(grades)
}

fn grade_block(
    course: &Course,
    lesson: &Lesson,
    block: &ProofBlock,
    student: &str,
    options: &GradeOptions,
) -> Result<Grade> {
    let mut reasons: Vec<String> = proof::rejections(block, lesson)
        .iter()
        .map(|r| r.to_string())
        .collect();
    let mut status = if reasons.is_empty() {
        Status::Passed
    } else {
        Status::Failed
    };
    let mut flag = |reason: String, reasons: &mut Vec<String>| {
        status = Status::Flagged;
        reasons.push(reason);
    };
    match block.digest_intact() {
        Some(true) => {}
        Some(false) => flag("edited: the block's lines do not match its digest (a line was changed or removed after the run)".into(), &mut reasons),
        None => flag("no digest line: the block was edited, or printed by another tool".into(), &mut reasons),
    }
    let course_hash = hashing::short(&hashing::course_hash(&course.raw)).to_string();
    if block
        .header_value("course")
        .is_some_and(|h| h != course_hash)
    {
        reasons.push(format!(
            "note: the run used another version of course.yaml ({}; now {course_hash}); graded with today's patterns",
            block.header_value("course").unwrap_or_default()
        ));
    }
    let source = block.header_value("source");
    let reference =
        hashing::short(&hashing::source_hash(&course.solution_dir(lesson))?).to_string();
    if source.as_deref() == Some(reference.as_str()) {
        flag(
            "the checked code is the shipped reference solution".into(),
            &mut reasons,
        );
    }
    if let Some(repo) = &options.repo {
        let crate_dir = repo.join(&lesson.stub);
        match hashing::source_hash(&crate_dir) {
            Ok(hash) if Some(hashing::short(&hash)) == source.as_deref() => {}
            Ok(hash) => flag(
                format!(
                    "source hash {} differs from {} in {} ({}): the proof is of other code",
                    source.as_deref().unwrap_or("(none)"),
                    hashing::short(&hash),
                    repo.display(),
                    lesson.stub.display()
                ),
                &mut reasons,
            ),
            Err(err) => flag(
                format!("cannot hash {}: {err:#}", crate_dir.display()),
                &mut reasons,
            ),
        }
        if options.rerun {
            if let Some(reason) = rerun_disagrees(course, lesson, block, &crate_dir)? {
                flag(reason, &mut reasons);
            }
        }
    }
    Ok(Grade {
        student: student.into(),
        lesson: lesson.id.clone(),
        xp: if status == Status::Passed {
            lesson.xp
        } else {
            0
        },
        status,
        reasons,
    })
}

/// Re-runs the lesson on the repository's crate with the block's seed and
/// compares the verdict and every proof line once timings are masked.
fn rerun_disagrees(
    course: &Course,
    lesson: &Lesson,
    block: &ProofBlock,
    crate_dir: &Path,
) -> Result<Option<String>> {
    let Some(seed) = block
        .header_value("seed")
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Ok(Some("cannot re-run: the block has no seed".into()));
    };
    let result = run::run_lesson(&RunRequest {
        course,
        lesson,
        subject: Subject::Crate {
            dir: crate_dir.to_path_buf(),
        },
        checked: lesson.stub.display().to_string(),
        seed,
        format: None,
        capture: false,
    })?;
    let pasted: Vec<String> = comparable_lines(&block.body);
    let rerun: Vec<String> = comparable_lines(&result.block.body);
    if pasted != rerun {
        let first = pasted
            .iter()
            .zip(&rerun)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("pasted `{a}`, re-run `{b}`"))
            .unwrap_or_else(|| format!("pasted {} lines, re-run {}", pasted.len(), rerun.len()));
        return Ok(Some(format!("re-run with seed {seed} disagrees: {first}")));
    }
    Ok(None)
}

/// Proof lines without what depends on timing or on the checker's build:
/// durations, rates and sizes become `#`; the header and digest are dropped.
fn comparable_lines(body: &[String]) -> Vec<String> {
    let measured = regex::Regex::new(r"\d+(\.\d+)?").expect("static regex");
    body.iter()
        .skip(1)
        .filter(|l| !l.starts_with("digest:") && !l.starts_with("checked:"))
        .map(|l| {
            if l.starts_with("result:") || !l.contains(['(', '.']) {
                l.clone()
            } else {
                measured.replace_all(l, "#").to_string()
            }
        })
        .collect()
}

fn print(
    course: &Course,
    pastes: &[(String, String)],
    grades: &[Grade],
    format: GradeFormat,
) -> Result<()> {
    match format {
        GradeFormat::Text => print_text(course, pastes, grades),
        GradeFormat::Json => {
            let document = serde_json::json!({
                "course": course.info.title,
                "grades": grades,
                "xp": xp_by_student(grades),
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        GradeFormat::Junit => println!("{}", junit(grades)?),
        GradeFormat::Csv => {
            let mut writer = csv::Writer::from_writer(std::io::stdout());
            writer.write_record(["student", "lesson", "status", "xp", "reasons"])?;
            for g in grades {
                let status = serde_json::to_value(g.status)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                writer.write_record([
                    &g.student,
                    &g.lesson,
                    &status,
                    &g.xp.to_string(),
                    &g.reasons.join("; "),
                ])?;
            }
            writer.flush()?;
        }
    }
    Ok(())
}

fn xp_by_student(grades: &[Grade]) -> BTreeMap<String, u32> {
    let mut xp = BTreeMap::new();
    for g in grades {
        *xp.entry(g.student.clone()).or_insert(0) += g.xp;
    }
    xp
}

fn print_text(course: &Course, pastes: &[(String, String)], grades: &[Grade]) {
    let lessons: Vec<&str> = course
        .lessons
        .iter()
        .map(|l| l.id.as_str())
        .filter(|id| grades.iter().any(|g| g.lesson == *id))
        .collect();
    let width = pastes
        .iter()
        .map(|(s, _)| s.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut header = format!("{:<width$}", "student");
    for id in &lessons {
        header.push_str(&format!(" {id:<9}"));
    }
    header.push_str("     xp");
    println!("{header}");
    let xp = xp_by_student(grades);
    for (student, _) in pastes {
        let mut row = format!("{student:<width$}");
        for id in &lessons {
            let cell = grades
                .iter()
                .find(|g| &g.student == student && g.lesson == *id)
                .map(|g| match g.status {
                    Status::Passed => "passed",
                    Status::Failed => "FAILED",
                    Status::Malformed => "MALFORMED",
                    Status::Flagged => "FLAGGED",
                })
                .unwrap_or("-");
            row.push_str(&format!(" {cell:<9}"));
        }
        row.push_str(&format!(" {:>6}", xp.get(student).copied().unwrap_or(0)));
        println!("{row}");
    }
    let notes: Vec<&Grade> = grades.iter().filter(|g| !g.reasons.is_empty()).collect();
    if !notes.is_empty() {
        println!();
        for g in notes {
            for reason in &g.reasons {
                println!("{} {}: {reason}", g.student, g.lesson);
            }
        }
    }
}

fn junit(grades: &[Grade]) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("checker grade");
    let mut suites: BTreeMap<String, TestSuite> = BTreeMap::new();
    for g in grades {
        let status = match g.status {
            Status::Passed => TestCaseStatus::success(),
            Status::Failed | Status::Flagged => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(g.reasons.join("; "));
                status
            }
            Status::Malformed => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status.set_message(g.reasons.join("; "));
                status
            }
        };
        suites
            .entry(g.student.clone())
            .or_insert_with(|| TestSuite::new(g.student.clone()))
            .add_test_case(TestCase::new(g.lesson.clone(), status));
    }
    report.add_test_suites(suites.into_values());
    Ok(report.to_string()?)
}
