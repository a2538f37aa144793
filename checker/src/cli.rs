//! The command line: `checker <id>` (= `checker check <id>`) and friends.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::checks::Subject;
use crate::course::{self, Course, Lesson};
use crate::hashing;
use crate::report::Format;
use crate::run;

/// Exit codes: what the checker's callers rely on.
pub const EXIT_PASS: u8 = 0;
pub const EXIT_FAIL: u8 = 1;
pub const EXIT_TOOL: u8 = 2;

#[derive(Parser)]
#[command(
    name = "checker",
    version,
    about = "Checks the lessons of the epoll echo-server course",
    after_help = "`checker w02-l16` is short for `checker check w02-l16`.\nExit codes: 0 passed, 1 the checked code failed, 2 usage, course or tool error."
)]
struct Cli {
    /// course.yaml to use (default: found from the current directory upwards)
    #[arg(long, global = true, value_name = "FILE")]
    course: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, start and drive a lesson's server; print the verdict and proof
    Check(CheckArgs),
    /// For instructors: find proof blocks in pasted text and grade each
    Grade {
        /// A file of pasted text, or - for standard input
        #[arg(default_value = "-")]
        input: String,
    },
    /// Every lesson in order: part, id, title, minutes, XP
    List,
    /// For maintainers and CI: course.yaml and lesson content sound, every
    /// solution passes, every stub fails
    Validate {
        /// Only these lessons (default: all)
        ids: Vec<String>,
        /// Seed for every run (default: random, printed)
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Args)]
struct CheckArgs {
    /// Lesson id, e.g. w02-l16
    id: String,
    /// Check the reference solution instead of your lesson crate
    #[arg(long, conflicts_with_all = ["path", "exec"])]
    solution: bool,
    /// Check the crate in DIR (any crate, in the repository or not)
    #[arg(long, value_name = "DIR", conflicts_with = "exec")]
    path: Option<PathBuf>,
    /// Check a ready server command in any language; `{port}` and `{args}` are filled in
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Replay a run exactly: frame sizes, split points, pipelining
    #[arg(long)]
    seed: Option<u64>,
    /// text (as it runs) or json (one document at the end)
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(with_default_subcommand(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_TOOL
            } else {
                EXIT_PASS
            });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("checker: error: {err:#}");
            ExitCode::from(EXIT_TOOL)
        }
    }
}

/// `checker w02-l16 ...` means `checker check w02-l16 ...`.
fn with_default_subcommand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let lesson_id = regex::Regex::new(r"^w\d\d-l\d\d$").expect("static regex");
    let mut index = 1;
    while index < args.len() {
        let word = args[index].to_string_lossy().to_string();
        if word == "--course" {
            index += 2; // the global flag's value is no subcommand
            continue;
        }
        if !word.starts_with('-') {
            if lesson_id.is_match(&word) {
                args.insert(index, "check".into());
            }
            break;
        }
        index += 1;
    }
    args
}

fn run(cli: Cli) -> Result<u8> {
    let path = course::locate(cli.course.as_deref())?;
    let course = course::load(&path)?;
    match cli.command {
        Command::Check(args) => check(&course, args),
        Command::Grade { input } => grade(&course, &input),
        Command::List => {
            list(&course);
            Ok(EXIT_PASS)
        }
        Command::Validate { ids, seed } => crate::validate::validate(&course, &ids, seed),
    }
}

fn check(course: &Course, args: CheckArgs) -> Result<u8> {
    let lesson = course.lesson_or_suggest(&args.id)?;
    let (subject, checked, source) = subject_of(course, lesson, &args)?;
    let seed = args.seed.unwrap_or_else(run::random_seed);
    let result = run::run_lesson(&run::RunRequest {
        course,
        lesson,
        subject,
        checked,
        source,
        seed,
        format: Some(args.format),
    })?;
    if result.passed {
        run::ensure_proof_grades(&result, lesson)?;
        Ok(EXIT_PASS)
    } else {
        Ok(EXIT_FAIL)
    }
}

/// The subject, how the proof names it, and its source hash.
fn subject_of(
    course: &Course,
    lesson: &Lesson,
    args: &CheckArgs,
) -> Result<(Subject, String, String)> {
    if let Some(command) = &args.exec {
        let argv = shlex::split(command)
            .filter(|words| !words.is_empty())
            .with_context(|| format!("--exec: cannot split `{command}` into words"))?;
        return Ok((
            Subject::Exec { argv },
            format!("exec `{command}`"),
            "none (--exec)".into(),
        ));
    }
    let (dir, label) = if let Some(path) = &args.path {
        (path.clone(), format!("path {}", path.display()))
    } else if args.solution {
        (
            course.solution_dir(lesson),
            format!("{} (reference solution)", lesson.solution.display()),
        )
    } else {
        (course.stub_dir(lesson), lesson.stub.display().to_string())
    };
    if !dir.join("Cargo.toml").is_file() {
        anyhow::bail!("{} is not a crate (no Cargo.toml)", dir.display());
    }
    let source = hashing::short(&hashing::source_hash(&dir)?).to_string();
    Ok((Subject::Crate { dir }, label, source))
}

fn list(course: &Course) {
    println!("{} (course {})", course.info.title, course.info.version);
    println!(
        "{:<5} {:<8} {:<52} {:>5} {:>4}",
        "part", "id", "title", "min", "xp"
    );
    for lesson in &course.lessons {
        println!(
            "{:<5} {:<8} {:<52} {:>5} {:>4}",
            lesson.part, lesson.id, lesson.title, lesson.duration_minutes, lesson.xp
        );
    }
    let minutes: u32 = course.lessons.iter().map(|l| l.duration_minutes).sum();
    let xp: u32 = course.lessons.iter().map(|l| l.xp).sum();
    println!(
        "{} lessons, {minutes} minutes, {xp} XP",
        course.lessons.len()
    );
}

/// Grades every proof block found in the input: 0 all passed, 1 any failed
/// or none found.
fn grade(course: &Course, input: &str) -> Result<u8> {
    let text = if input == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading standard input")?;
        text
    } else {
        let bytes = std::fs::read(input).with_context(|| format!("reading {input}"))?;
        String::from_utf8_lossy(&bytes).to_string()
    };
    let blocks = crate::proof::find_blocks(&text);
    if blocks.is_empty() {
        println!("no proof block found (a block runs from `----- BEGIN PROOF <id> -----` to `----- END PROOF <id> -----`)");
        return Ok(EXIT_FAIL);
    }
    let mut all_passed = true;
    for block in &blocks {
        let Some(lesson) = course.lesson(&block.lesson_id) else {
            println!("{}: unknown lesson id", block.lesson_id);
            all_passed = false;
            continue;
        };
        let rejections = crate::proof::rejections(block, lesson);
        if rejections.is_empty() {
            println!("{}: passed", lesson.id);
        } else {
            all_passed = false;
            let reasons: Vec<String> = rejections.iter().map(|r| r.to_string()).collect();
            println!("{}: failed: {}", lesson.id, reasons.join("; "));
        }
    }
    Ok(if all_passed { EXIT_PASS } else { EXIT_FAIL })
}
