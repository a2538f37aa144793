//! `checker mutants`: mutation testing of each lesson's gap functions,
//! with the checker as the oracle (docs/MUTANTS.md, docs/maintainers.md).
//!
//! Per lesson: the solution is copied to `target/mutants-scratch/<id>` (a
//! crate of its own: `[workspace]` in its manifest, the workspace's
//! Cargo.lock, its package renamed so its binary never overwrites the real
//! solution's in the shared target directory `target/mutants-target`);
//! cargo-mutants lists the mutants of the copy; those inside the lesson's
//! `gaps:` are applied one at a time, each checked by
//! `checker <id> --path <copy> --format json --seed <from its name>`, and
//! reverted. Runs are serial. The unmutated copy must pass three times
//! first. The result goes to docs/mutants/<id>.json, keyed by what it
//! depends on, and docs/MUTANTS.md is rendered from every committed result.

mod listing;
pub mod process;
mod render;
mod results;
mod verdict;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cli::{EXIT_FAIL, EXIT_PASS, EXIT_TOOL};
use crate::course::{Course, Lesson};
use listing::ListedMutant;
use process::{run_bounded, Ended};
use results::{Baseline, Counts, Freshness, KeyParts, LessonResult, MutantResult};
use verdict::{Attempt, Next, Verdict};

/// How often the unmutated solution must pass before its mutants count.
const BASELINE_RUNS: usize = 3;
/// A mutant's run is bounded at this multiple of the solution's own run
/// (plus one rebuild), and at least `MIN_BOUND`.
const BOUND_FACTOR: f64 = 3.0;
const MIN_BOUND: Duration = Duration::from_secs(60);
/// The unmutated solution's own runs and builds: generous, still bounded.
const BASELINE_BOUND: Duration = Duration::from_secs(900);
/// What one lesson's whole run should stay within (a warning past it).
const LESSON_BUDGET: Duration = Duration::from_secs(15 * 60);

pub struct Options {
    pub ids: Vec<String>,
    pub mutant: Option<String>,
    pub list: bool,
    pub suggest_gaps: bool,
    pub render: bool,
    pub force: bool,
}

pub fn command(course: &Course, options: &Options) -> Result<u8> {
    if options.render {
        write_report(course)?;
        return Ok(EXIT_PASS);
    }
    let lessons: Vec<&Lesson> = if options.ids.is_empty() {
        course.lessons.iter().collect()
    } else {
        options
            .ids
            .iter()
            .map(|id| course.lesson_or_suggest(id))
            .collect::<Result<_>>()?
    };
    if cfg!(debug_assertions) && !options.list && !options.suggest_gaps {
        eprintln!(
            "checker mutants: note: this is a debug build of the checker; the runs use it as the oracle \
             (build it with `cargo build --release -p checker` for the timings docs/MUTANTS.md reports)"
        );
    }
    listing::ensure_installed()?;
    if options.suggest_gaps {
        for lesson in lessons {
            suggest_gaps(course, lesson)?;
        }
        return Ok(EXIT_PASS);
    }
    if options.list {
        for lesson in lessons {
            list_gap_mutants(course, lesson)?;
        }
        return Ok(EXIT_PASS);
    }
    if let Some(name) = &options.mutant {
        let [lesson] = lessons.as_slice() else {
            bail!("--mutant NAME needs exactly one lesson id (the mutant's lesson)");
        };
        return one_mutant(course, lesson, name);
    }

    let mut aborted: Vec<String> = Vec::new();
    let started = Instant::now();
    for lesson in lessons {
        if !options.force {
            if let (Some(_), Freshness::Current) = results::freshness(course, lesson) {
                println!(
                    "{}: the committed result is current; skipped (--force reruns it)",
                    lesson.id
                );
                continue;
            }
        }
        match run_lesson(course, lesson)? {
            Ok(result) => {
                results::save(course, &result)?;
                println!(
                    "{}: wrote {}",
                    lesson.id,
                    results::result_path(course, &lesson.id).display()
                );
            }
            Err(why) => {
                eprintln!("{}: ABORTED: {why}", lesson.id);
                aborted.push(format!("{}: {why}", lesson.id));
            }
        }
        // After every lesson, so a long run's progress is kept.
        write_report(course)?;
    }
    println!(
        "\nchecker mutants: done in {}",
        render::duration(started.elapsed().as_secs_f64())
    );
    if aborted.is_empty() {
        Ok(EXIT_PASS)
    } else {
        eprintln!("{} lesson(s) aborted:", aborted.len());
        for line in &aborted {
            eprintln!("  - {line}");
        }
        Ok(EXIT_FAIL)
    }
}

/// A copy of a lesson's solution, outside solutions/, built into the
/// shared mutants target directory.
struct Scratch {
    dir: PathBuf,
    target: PathBuf,
    /// Every source file of the copy (path relative to the crate) and its
    /// unmutated text.
    sources: BTreeMap<String, String>,
}

impl Scratch {
    fn prepare(course: &Course, lesson: &Lesson) -> Result<Scratch> {
        // CHECKER_MUTANTS_WORK moves the copies and their target directory
        // elsewhere (a test beside a real run); default: the workspace's
        // target/.
        let (scratch_root, target) = match std::env::var_os("CHECKER_MUTANTS_WORK") {
            Some(work) => {
                let work = PathBuf::from(work);
                (work.join("scratch"), work.join("target"))
            }
            None => {
                let target_root = course.root.join("target");
                (
                    target_root.join("mutants-scratch"),
                    target_root.join("mutants-target"),
                )
            }
        };
        let dir = scratch_root.join(&lesson.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the old copy {}", dir.display()))?;
        }
        let solution = course.solution_dir(lesson);
        copy_tree(&solution, &dir)?;
        let manifest_path = dir.join("Cargo.toml");
        let manifest = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        std::fs::write(&manifest_path, standalone_manifest(&manifest, &lesson.id)?)?;
        std::fs::copy(course.root.join("Cargo.lock"), dir.join("Cargo.lock"))
            .context("copying the workspace's Cargo.lock into the copy")?;
        let mut sources = BTreeMap::new();
        let mut files = Vec::new();
        collect_rs(&dir, Path::new("src"), &mut files)?;
        for relative in files {
            let text = std::fs::read_to_string(dir.join(&relative))?;
            sources.insert(relative.to_string_lossy().replace('\\', "/"), text);
        }
        Ok(Scratch {
            dir,
            target,
            sources,
        })
    }

    fn write(&self, file: &str, text: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Puts every source file back as the solution has it.
    fn restore(&self) -> Result<()> {
        for (file, text) in &self.sources {
            let path = self.dir.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                self.write(file, text)?;
            }
        }
        Ok(())
    }

    fn all_sources(&self) -> String {
        self.sources
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn cargo_build(&self) -> Result<process::Run> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(self.dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &self.target);
        run_bounded(&mut command, BASELINE_BOUND)
    }
}

/// The solution's manifest as a crate of its own: renamed (its binary
/// then never replaces the real solution's, which `perf` builds into the
/// same target directory) and its own workspace root.
fn standalone_manifest(manifest: &str, id: &str) -> Result<String> {
    let mut out = String::new();
    let mut in_package = false;
    let mut renamed = false;
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_package = trimmed == "[package]";
        }
        if in_package && !renamed && trimmed.starts_with("name") && trimmed.contains('=') {
            out.push_str(&format!("name = \"mutant-{id}\"\n"));
            renamed = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !renamed {
        bail!("the solution's Cargo.toml has no [package] name");
    }
    if !manifest.lines().any(|l| l.trim() == "[workspace]") {
        out.push_str("\n# A crate of its own, outside the course workspace (checker mutants).\n[workspace]\n");
    }
    Ok(out)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn collect_rs(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(relative);
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_rs(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// A mutant's seed, from its name: the same mutant replays the same run.
pub fn seed_for(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % 1_000_000
}

fn config_path(course: &Course) -> PathBuf {
    course.root.join(results::CONFIG_FILE)
}

/// One checker run of the copy, as a student's run of the lesson.
fn check_copy(
    course: &Course,
    lesson: &Lesson,
    scratch: &Scratch,
    seed: u64,
    bound: Duration,
) -> Result<Attempt> {
    // The running binary itself, even once a rebuild replaced the file
    // (other work goes on in the same tree during a long run): one oracle
    // for the whole run.
    let checker = PathBuf::from("/proc/self/exe");
    let course_path = course
        .path
        .canonicalize()
        .unwrap_or_else(|_| course.path.clone());
    let mut command = Command::new(checker);
    command
        .arg("--course")
        .arg(course_path)
        .args(["check", &lesson.id, "--path"])
        .arg(&scratch.dir)
        .args(["--format", "json", "--seed", &seed.to_string()])
        .env("CARGO_TARGET_DIR", &scratch.target)
        .env("NO_COLOR", "1");
    let run = run_bounded(&mut command, bound)?;
    Ok(verdict::classify(
        run.ended,
        &run.stdout,
        &run.stderr,
        run.seconds,
    ))
}

/// The unmutated copy: built, rebuilt once after a touch (what a mutant's
/// build costs), then checked `runs` times, every run a pass.
fn baseline(
    course: &Course,
    lesson: &Lesson,
    scratch: &Scratch,
    runs: usize,
) -> Result<std::result::Result<Baseline, String>> {
    let build = scratch.cargo_build()?;
    if !matches!(build.ended, Ended::Exited(0)) {
        return Ok(Err(format!(
            "the unmutated copy does not build ({}):\n{}",
            build.ended,
            listing::tail(&build.stderr, 20)
        )));
    }
    let (first_file, first_text) = scratch
        .sources
        .iter()
        .next()
        .context("the solution has no source under src/")?;
    scratch.write(first_file, first_text)?; // a new mtime: cargo rebuilds
    let rebuild = scratch.cargo_build()?;
    let rebuild_seconds = (rebuild.seconds * 10.0).round() / 10.0;
    let mut seeds = Vec::new();
    let mut run_seconds = Vec::new();
    for run in 0..runs {
        let seed = seed_for(&format!("baseline {} {run}", lesson.id));
        let attempt = check_copy(course, lesson, scratch, seed, BASELINE_BOUND)?;
        println!(
            "  baseline {}/{runs}: {} in {:.1} s (seed {seed})",
            run + 1,
            if attempt.verdict == Verdict::Survived {
                "passed".to_string()
            } else {
                format!(
                    "{} {}",
                    attempt.ended,
                    attempt.step.as_deref().unwrap_or("")
                )
            },
            attempt.seconds
        );
        if attempt.verdict != Verdict::Survived {
            return Ok(Err(format!(
                "the unmutated solution did not pass baseline run {}/{runs} ({}{}: {}); its mutants would prove nothing. \
                 Replay: checker {} --path {} --seed {seed}",
                run + 1,
                attempt.ended,
                attempt
                    .step
                    .as_deref()
                    .map(|s| format!(", step {s}"))
                    .unwrap_or_default(),
                attempt.message.as_deref().unwrap_or("no message"),
                lesson.id,
                scratch.dir.display()
            )));
        }
        seeds.push(seed);
        run_seconds.push(attempt.seconds);
    }
    let longest = run_seconds.iter().cloned().fold(0.0, f64::max);
    let bound = (BOUND_FACTOR * longest + rebuild_seconds).max(MIN_BOUND.as_secs_f64());
    Ok(Ok(Baseline {
        seeds,
        run_seconds,
        rebuild_seconds,
        bound_seconds: bound.ceil(),
    }))
}

/// Runs one mutant until its verdict settles (an error rerun, a timing
/// kill repeated), then puts the copy back.
fn judge(
    course: &Course,
    lesson: &Lesson,
    scratch: &Scratch,
    mutant: &ListedMutant,
    bound: Duration,
) -> Result<MutantResult> {
    let original = scratch
        .sources
        .get(&mutant.file)
        .with_context(|| format!("the mutant's file {} is not in the copy", mutant.file))?;
    let mutated = listing::apply_diff(original, &mutant.diff)
        .with_context(|| format!("applying `{}`", mutant.name))?;
    let seed = seed_for(&mutant.name);
    scratch.write(&mutant.file, &mutated)?;
    let mut attempts: Vec<Attempt> = Vec::new();
    let settled = loop {
        let attempt = check_copy(course, lesson, scratch, seed, bound);
        let attempt = match attempt {
            Ok(attempt) => attempt,
            Err(err) => {
                scratch.restore()?;
                return Err(err);
            }
        };
        attempts.push(attempt);
        match verdict::next(&attempts) {
            Next::Done(settled) => break settled,
            Next::Again(why) if attempts.len() < 4 => {
                let last = attempts.last().expect("one attempt");
                print!(
                    "\n        {} {}({:.1} s): {why} … ",
                    last.verdict.word(),
                    last.step
                        .as_deref()
                        .map(|s| format!("at {s} "))
                        .unwrap_or_default(),
                    last.seconds
                );
                let _ = std::io::stdout().flush();
            }
            Next::Again(_) => {
                break verdict::Final {
                    verdict: Verdict::Error,
                    step: None,
                    note: Some("no settled verdict after 4 runs".into()),
                }
            }
        }
    };
    scratch.restore()?;
    let keep_diff = !matches!(settled.verdict, Verdict::Caught | Verdict::Unviable);
    Ok(MutantResult {
        name: mutant.name.clone(),
        function: mutant
            .function
            .as_ref()
            .map(|f| f.function_name.clone())
            .unwrap_or_default(),
        genre: mutant.genre.clone(),
        seed,
        verdict: settled.verdict,
        step: settled.step,
        note: settled.note,
        seconds: (attempts.iter().map(|a| a.seconds).sum::<f64>() * 10.0).round() / 10.0,
        attempts,
        diff: keep_diff.then(|| mutant.diff.clone()),
    })
}

/// The lesson's scratch copy, cargo-mutants' listing of it, and the
/// mutants inside the gaps (with the gaps that matched nothing).
struct Prepared {
    scratch: Scratch,
    gap_mutants: Vec<ListedMutant>,
    outside_gaps: usize,
    gaps_without_mutants: Vec<String>,
    all: Vec<ListedMutant>,
}

fn prepare(course: &Course, lesson: &Lesson) -> Result<Prepared> {
    let scratch = Scratch::prepare(course, lesson)?;
    let all = listing::list(&scratch.dir, &config_path(course))?;
    // The bug hunt's student changes the planted bugs' lines, not whole
    // functions: its scope is the solution's lines in the marked regions.
    let (inside, outside) = if lesson.stub_style == crate::course::StubStyle::BugHunt {
        let regions = crate::stubs::generate(course, lesson)?.regions;
        listing::in_regions(&regions, &all)
    } else {
        listing::in_gaps(&lesson.gaps, &all)
    };
    let (missing, gaps_without_mutants) =
        listing::unmatched_gaps(&lesson.gaps, &all, &scratch.all_sources());
    if !missing.is_empty() {
        bail!(
            "course.yaml: lesson {}, field `gaps`: {} name{} no function of {} (`fn_name` or `Type::method`, as `checker mutants {} --suggest-gaps` prints them)",
            lesson.id,
            missing.join(", "),
            if missing.len() == 1 { "s" } else { "" },
            lesson.solution.display(),
            lesson.id
        );
    }
    let gap_mutants = inside.into_iter().cloned().collect();
    let outside_gaps = outside.len();
    Ok(Prepared {
        scratch,
        gap_mutants,
        outside_gaps,
        gaps_without_mutants,
        all,
    })
}

/// One lesson's run: `Err(why)` when it had to stop (its baseline failed).
fn run_lesson(
    course: &Course,
    lesson: &Lesson,
) -> Result<std::result::Result<LessonResult, String>> {
    let started = Instant::now();
    let key_parts = KeyParts::now(course, lesson)?;
    println!("\n== {} {} ==", lesson.id, lesson.title);
    let prepared = prepare(course, lesson)?;
    let total = prepared.gap_mutants.len();
    println!(
        "  gaps: {} · {total} mutants in them, {} outside (not run){}",
        if lesson.gaps.is_empty() {
            "none listed".to_string()
        } else {
            lesson.gaps.join(", ")
        },
        prepared.outside_gaps,
        if prepared.gaps_without_mutants.is_empty() {
            String::new()
        } else {
            format!(
                " · no mutants of {}",
                prepared.gaps_without_mutants.join(", ")
            )
        }
    );
    let scratch = &prepared.scratch;
    let baseline = if total == 0 {
        Baseline {
            seeds: vec![],
            run_seconds: vec![],
            rebuild_seconds: 0.0,
            bound_seconds: 0.0,
        }
    } else {
        match baseline(course, lesson, scratch, BASELINE_RUNS)? {
            Ok(baseline) => baseline,
            Err(why) => return Ok(Err(why)),
        }
    };
    let bound = Duration::from_secs_f64(baseline.bound_seconds.max(1.0));
    if total > 0 {
        let mean = baseline.run_seconds.iter().sum::<f64>() / baseline.run_seconds.len() as f64;
        println!(
            "  each run bounded at {:.0} s · at most about {} for {total} mutants (rebuild {:.1} s + a full run {:.1} s each; caught ones stop earlier)",
            baseline.bound_seconds,
            render::duration(total as f64 * (baseline.rebuild_seconds + mean)),
            baseline.rebuild_seconds,
            mean
        );
    }
    let mut mutants = Vec::new();
    for (index, mutant) in prepared.gap_mutants.iter().enumerate() {
        print!(
            "  [{:>width$}/{total}] {} … ",
            index + 1,
            mutant.name,
            width = total.to_string().len()
        );
        let _ = std::io::stdout().flush();
        let result = judge(course, lesson, scratch, mutant, bound)?;
        println!(
            "{}{} ({:.1} s)",
            result.verdict.word(),
            result
                .step
                .as_deref()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default(),
            result.seconds
        );
        if let Some(note) = &result.note {
            println!("        {note}");
        }
        mutants.push(result);
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = LessonResult {
        lesson: lesson.id.clone(),
        key: key_parts.key(),
        key_parts,
        gaps: lesson.gaps.clone(),
        gaps_without_mutants: prepared.gaps_without_mutants.clone(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        seconds: seconds.round(),
        baseline,
        outside_gaps: prepared.outside_gaps,
        mutants,
    };
    let counts = Counts::of(&result);
    println!(
        "  {}: {} generated, {} caught, {} survived, {} unviable, {} timed out, {} errors · score {} · {}",
        lesson.id,
        counts.generated,
        counts.caught,
        counts.survived,
        counts.unviable,
        counts.timeout,
        counts.error,
        match counts.score(&result.gaps) {
            Ok(score) => format!("{:.0} %", score * 100.0),
            Err(why) => format!("not scored ({why})"),
        },
        render::duration(seconds)
    );
    if started.elapsed() > LESSON_BUDGET {
        println!(
            "  note: over the {}-minute budget of one lesson",
            LESSON_BUDGET.as_secs() / 60
        );
    }
    Ok(Ok(result))
}

/// `--mutant NAME`: that mutant alone, its verdict printed; the mutated
/// copy stays in place for a replay.
fn one_mutant(course: &Course, lesson: &Lesson, name: &str) -> Result<u8> {
    let prepared = prepare(course, lesson)?;
    let Some(mutant) = prepared.all.iter().find(|m| m.name == name) else {
        let near: Vec<&str> = prepared
            .gap_mutants
            .iter()
            .map(|m| m.name.as_str())
            .take(40)
            .collect();
        bail!(
            "no mutant named `{name}` in {}; its gap mutants are:\n  {}",
            lesson.id,
            near.join("\n  ")
        );
    };
    if !prepared.gap_mutants.iter().any(|m| m.name == name) {
        println!("note: `{name}` is outside the lesson's gaps (a full run does not run it)");
    }
    let scratch = &prepared.scratch;
    println!(
        "{}: one baseline run of the unmutated copy first (it sets the time bound)",
        lesson.id
    );
    let baseline = match baseline(course, lesson, scratch, 1)? {
        Ok(baseline) => baseline,
        Err(why) => {
            eprintln!("{}: {why}", lesson.id);
            return Ok(EXIT_TOOL);
        }
    };
    print!("{name} … ");
    let _ = std::io::stdout().flush();
    let result = judge(
        course,
        lesson,
        scratch,
        mutant,
        Duration::from_secs_f64(baseline.bound_seconds),
    )?;
    println!();
    println!(
        "verdict: {}{} (seed {}, {:.1} s)",
        result.verdict.word(),
        result
            .step
            .as_deref()
            .map(|s| format!(" at {s}"))
            .unwrap_or_default(),
        result.seed,
        result.seconds
    );
    for (i, attempt) in result.attempts.iter().enumerate() {
        println!(
            "  run {}: {} {}({}, {:.1} s){}",
            i + 1,
            attempt.verdict.word(),
            attempt
                .step
                .as_deref()
                .map(|s| format!("at {s} "))
                .unwrap_or_default(),
            attempt.ended,
            attempt.seconds,
            attempt
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    if let Some(note) = &result.note {
        println!("  {note}");
    }
    // Leave the mutant in the copy, to replay or to read.
    let original = &scratch.sources[&mutant.file];
    scratch.write(&mutant.file, &listing::apply_diff(original, &mutant.diff)?)?;
    println!("\n{}", mutant.diff.trim_end());
    println!(
        "\nThe mutated copy stays in {} until the next `checker mutants {}`; replay:\n  CARGO_TARGET_DIR={} checker {} --path {} --seed {}",
        scratch.dir.display(),
        lesson.id,
        scratch.target.display(),
        lesson.id,
        scratch.dir.display(),
        result.seed
    );
    Ok(match result.verdict {
        Verdict::Caught => EXIT_PASS,
        Verdict::Error => EXIT_TOOL,
        _ => EXIT_FAIL,
    })
}

/// `--list`: the lesson's gap mutants, by name (for `--mutant`).
fn list_gap_mutants(course: &Course, lesson: &Lesson) -> Result<()> {
    let prepared = prepare(course, lesson)?;
    println!(
        "{}: {} mutants in the gaps ({}), {} outside",
        lesson.id,
        prepared.gap_mutants.len(),
        lesson.gaps.join(", "),
        prepared.outside_gaps
    );
    for mutant in &prepared.gap_mutants {
        println!("{}", mutant.name);
    }
    Ok(())
}

/// `--suggest-gaps`: the functions that differ between stub and solution,
/// as a `gaps:` line for course.yaml.
fn suggest_gaps(course: &Course, lesson: &Lesson) -> Result<()> {
    let scratch = Scratch::prepare(course, lesson)?;
    let listed = listing::list(&scratch.dir, &config_path(course))?;
    let stub = course.stub_dir(lesson);
    let files: Vec<(String, Option<String>, String)> = scratch
        .sources
        .iter()
        .map(|(path, solution)| {
            (
                path.clone(),
                std::fs::read_to_string(stub.join(path)).ok(),
                solution.clone(),
            )
        })
        .collect();
    let found = listing::differing_functions(&files, &listed);
    let line = format!("gaps: [{}]", found.functions.join(", "));
    let same = found.functions == lesson.gaps;
    println!(
        "{}: {line}{}",
        lesson.id,
        if same {
            "  (course.yaml has these)".to_string()
        } else {
            format!("  (course.yaml: [{}])", lesson.gaps.join(", "))
        }
    );
    if !found.outside.is_empty() {
        println!(
            "  also differs outside any function with mutants: {}",
            found.outside.join(", ")
        );
    }
    Ok(())
}

/// docs/MUTANTS.md from every committed result.
fn write_report(course: &Course) -> Result<()> {
    let equivalents = results::equivalents(&course.root)?;
    let rows: Vec<render::Row> = course
        .lessons
        .iter()
        .map(|lesson| {
            let (result, freshness) = results::freshness(course, lesson);
            render::Row {
                id: lesson.id.clone(),
                title: lesson.title.clone(),
                result,
                freshness,
            }
        })
        .collect();
    let path = course.root.join(results::REPORT_FILE);
    std::fs::write(&path, render::render(&rows, &equivalents))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// For `checker validate`: one warning naming the lessons whose committed
/// mutation result is stale or missing (`None` when all are current).
pub fn staleness_warning(course: &Course, lessons: &[&Lesson]) -> Option<String> {
    let mut stale = Vec::new();
    let mut missing = Vec::new();
    for lesson in lessons {
        match results::freshness(course, lesson).1 {
            Freshness::Current => {}
            Freshness::Stale(parts) => {
                stale.push(format!("{} ({} changed)", lesson.id, parts.join(", ")))
            }
            Freshness::Missing => missing.push(lesson.id.clone()),
            Freshness::Unreadable(err) => stale.push(format!("{} ({err})", lesson.id)),
        }
    }
    if stale.is_empty() && missing.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !stale.is_empty() {
        parts.push(format!("stale for {}", stale.join(", ")));
    }
    if !missing.is_empty() {
        parts.push(format!("missing for {}", missing.join(", ")));
    }
    Some(format!(
        "warning: mutation results ({}/) {}; `checker mutants <id>…` reruns them (docs/maintainers.md, \"Mutation testing\")",
        results::RESULTS_DIR,
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_a_solution_is_renamed_and_its_own_workspace() {
        let manifest = "[package]\nname = \"w01-l01-solution\"\nversion = \"0.1.0\"\n\n[dependencies]\nname = \"not this\"\n";
        let out = standalone_manifest(manifest, "w01-l01").unwrap();
        assert!(
            out.starts_with("[package]\nname = \"mutant-w01-l01\"\nversion"),
            "{out}"
        );
        assert!(out.contains("name = \"not this\""), "{out}");
        assert!(out.trim_end().ends_with("[workspace]"), "{out}");
        assert!(standalone_manifest("[dependencies]\n", "x").is_err());
    }

    #[test]
    fn a_mutants_seed_is_fixed_by_its_name() {
        let a = seed_for("src/main.rs:1:1: replace f with ()");
        assert_eq!(a, seed_for("src/main.rs:1:1: replace f with ()"));
        assert_ne!(a, seed_for("src/main.rs:1:2: replace f with ()"));
        assert!(a < 1_000_000);
    }
}
