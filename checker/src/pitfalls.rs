//! A lesson's pitfalls (course.yaml `pitfalls:`), each a mistake a student
//! can make in a gap, are shown failing: `checker validate` runs the lesson
//! against the fixture server that plants it and requires the step and the
//! cause id the pitfall names. The README's `## Pitfalls` is rendered from
//! the same list (`checker readmes`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::course::{Course, Lesson, Pitfall};
use crate::mutants::process::{run_bounded, Ended};

/// Where the README's list begins; it runs to the end of the section.
pub const PITFALLS_BEGIN: &str =
    "<!-- generated from course.yaml's `pitfalls:` by `checker readmes`: change them there, not here -->";

/// The README's `## Pitfalls` body: one bullet per pitfall, by gap.
pub fn readme_section(lesson: &Lesson) -> String {
    let mut text = format!("{PITFALLS_BEGIN}\n\n");
    for pitfall in &lesson.pitfalls {
        text.push_str(&format!("- In `{}`: {}\n", pitfall.gap, pitfall.text));
    }
    text
}

/// How long one pitfall's run may take: it ends at its first failure.
const RUN_BOUND: Duration = Duration::from_secs(180);

/// Runs every pitfall of `lesson`; each problem names the pitfall and how
/// to replay it.
pub fn problems(course: &Course, lesson: &Lesson, seed: u64) -> Result<Vec<String>> {
    if lesson.pitfalls.is_empty() {
        return Ok(Vec::new());
    }
    let bin_dir = fixtures(course)?;
    let mut problems = Vec::new();
    for (i, pitfall) in lesson.pitfalls.iter().enumerate() {
        if let Some(problem) = run_one(course, lesson, pitfall, &bin_dir, seed)? {
            problems.push(format!("pitfalls[{i}] ({}): {problem}", pitfall.fixture));
        }
    }
    Ok(problems)
}

fn run_one(
    course: &Course,
    lesson: &Lesson,
    pitfall: &Pitfall,
    bin_dir: &std::path::Path,
    seed: u64,
) -> Result<Option<String>> {
    let (binary, bug) = pitfall.fixture_parts().context("fixture checked at load")?;
    let exec = format!(
        "{} --bug {bug} --tag pitfall-{}-{bug}",
        bin_dir.join(binary).display(),
        lesson.id
    );
    let replay = format!(
        "replay: checker {} --exec '{exec}' --seed {seed}",
        lesson.id
    );
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("--course")
        .arg(&course.path)
        .args(["check", &lesson.id, "--exec", &exec])
        .args(["--format", "json", "--seed", &seed.to_string()])
        .env("NO_COLOR", "1");
    let run = run_bounded(&mut command, RUN_BOUND)?;
    if run.ended != Ended::Exited(1) {
        return Ok(Some(format!(
            "the run ended with {} instead of failing the lesson ({replay}){}",
            run.ended,
            last_line(&run.stderr)
        )));
    }
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("the checker's JSON for {}", pitfall.fixture))?;
    let failed = json["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["status"] == "fail"));
    let Some(failed) = failed else {
        return Ok(Some(format!("no step failed ({replay})")));
    };
    let step = failed["name"].as_str().unwrap_or("?");
    let cause = failed["cause_id"].as_str();
    if step != pitfall.step || cause != Some(pitfall.cause.as_str()) {
        return Ok(Some(format!(
            "fails at `{step}` with cause {}, but the pitfall says `{}` with `{}` ({replay})",
            cause.map_or("none".to_string(), |c| format!("`{c}`")),
            pitfall.step,
            pitfall.cause
        )));
    }
    Ok(None)
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// The fixture servers, built once per run with the running checker's own
/// profile and target directory (in CI, `cargo build --workspace` has built
/// them already, so this is quick); their directory.
fn fixtures(course: &Course) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_fixtures(course).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_fixtures(course: &Course) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the checker binary")?;
    let bin_dir = exe
        .parent()
        .context("the checker binary's directory")?
        .to_path_buf();
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    let target_dir = bin_dir
        .parent()
        .context("the checker's target directory")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&course.root)
        .args(["build", "--quiet", "-p", "epoll-course", "--bins"])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .context("running cargo to build the fixture servers")?;
    if !output.status.success() {
        bail!(
            "building the fixture servers (cargo build -p epoll-course --bins) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(bin_dir)
}
