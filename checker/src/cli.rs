//! The command line: `checker <id>` (= `checker check <id>`) and friends.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::checks::Subject;
use crate::course::{self, Course, Lesson};
use crate::report::Format;
use crate::run;
use crate::student;

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
        /// A file of pasted text, a directory of them (one per student), or - for standard input
        #[arg(default_value = "-")]
        input: String,
        /// text (a table), json, junit or csv
        #[arg(long, value_enum, default_value = "text")]
        format: crate::grade::GradeFormat,
        /// The student's repository: flag a proof whose source hash differs from lessons/<id> there
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
        /// With --repo: re-run each lesson there with the block's seed and compare
        #[arg(long, requires = "repo")]
        rerun: bool,
    },
    /// What the checker needs from this machine, and whether it has it
    Doctor,
    /// For instructors: print a GitHub Classroom autograding.json (one test per lesson, points = XP)
    Classroom {
        /// The course repository the tests fetch the checker and course.yaml from
        #[arg(long, default_value = "https://github.com/YOUR-ORG/epoll-course")]
        repo_url: String,
        /// The tag (or branch) of the course to grade with
        #[arg(long, default_value = "main")]
        tag: String,
    },
    /// Every lesson in order: part, id, title, minutes, XP and your status
    List,
    /// Print a lesson's text
    Show { id: String },
    /// Reveal a lesson's hints one at a time
    Hint {
        id: String,
        /// Show every hint at once
        #[arg(long)]
        all: bool,
    },
    /// Name the first lesson not passed yet, and how to start it
    Next,
    /// Re-check a lesson on every save (default: the lesson `next` names)
    Watch {
        id: Option<String>,
        /// Re-check on Enter instead of on save (for file systems that cannot be watched)
        #[arg(long)]
        manual: bool,
    },
    /// Build your server and run it in the foreground, to try it by hand
    Run {
        id: String,
        /// Arguments for the server (default: --port 0 and the lesson's flags)
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Put a lesson's stub back as the course ships it (your version is backed up)
    Reset {
        id: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// For maintainers and CI: course.yaml and lesson content sound, every
    /// solution passes, every stub fails
    Validate {
        /// Only these lessons (default: all)
        ids: Vec<String>,
        /// Seed for every run (default: random, printed)
        #[arg(long)]
        seed: Option<u64>,
        /// Write each run's text transcript to DIR/<id>.pass.txt and <id>.fail.txt
        #[arg(long, value_name = "DIR")]
        transcripts: Option<PathBuf>,
    },
    /// For maintainers: rewrite each lesson README's "What the checker runs"
    /// list from course.yaml's steps (validate fails when one differs)
    Readmes,
    /// For maintainers: generate each lesson's stub from its solution's marked
    /// regions, and count the code lines of its gaps (default: check only)
    Stubs {
        /// Only these lessons (default: all)
        ids: Vec<String>,
        /// Write the generated stubs (default: report the ones that differ, exit 1)
        #[arg(long)]
        write: bool,
    },
    /// For maintainers: mutation testing of each lesson's gap functions,
    /// the checker as the oracle; writes docs/mutants/<id>.json and docs/MUTANTS.md
    Mutants {
        /// Only these lessons (default: all, skipping those whose committed result is current)
        ids: Vec<String>,
        /// Rerun one mutant (its name as --list prints it) of one lesson and print its verdict
        #[arg(long, value_name = "NAME", conflicts_with_all = ["list", "suggest_gaps", "render"])]
        mutant: Option<String>,
        /// Print each lesson's gap mutants by name; run nothing
        #[arg(long, conflicts_with_all = ["suggest_gaps", "render"])]
        list: bool,
        /// Print each lesson's functions that differ between stub and solution, as a `gaps:` line
        #[arg(long, conflicts_with = "render")]
        suggest_gaps: bool,
        /// Only render docs/MUTANTS.md from the committed results
        #[arg(long)]
        render: bool,
        /// Rerun lessons whose committed result is current too
        #[arg(long)]
        force: bool,
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
    /// Also write the steps as a JUnit report to FILE (one test case per step)
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
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
        Command::Grade {
            input,
            format,
            repo,
            rerun,
        } => crate::grade::grade(
            &course,
            &input,
            &crate::grade::GradeOptions {
                format,
                repo,
                rerun,
            },
        ),
        Command::List => {
            student::list(&course);
            Ok(EXIT_PASS)
        }
        Command::Show { id } => {
            student::show(&course, course.lesson_or_suggest(&id)?)?;
            Ok(EXIT_PASS)
        }
        Command::Hint { id, all } => {
            student::hint(&course, course.lesson_or_suggest(&id)?, all)?;
            Ok(EXIT_PASS)
        }
        Command::Classroom { repo_url, tag } => {
            println!("{}", classroom_autograding(&course, &repo_url, &tag)?);
            Ok(EXIT_PASS)
        }
        Command::Doctor => Ok(if crate::preflight::doctor() {
            EXIT_PASS
        } else {
            EXIT_FAIL
        }),
        Command::Next => {
            student::next(&course);
            Ok(EXIT_PASS)
        }
        Command::Watch { id, manual } => {
            let progress = crate::progress::Progress::load(&course);
            let lesson = match id {
                Some(id) => course.lesson_or_suggest(&id)?,
                None => student::next_lesson(&course, &progress)
                    .context("every lesson has passed: name one to watch (checker watch <id>)")?,
            };
            student::watch(&course, lesson, manual)
        }
        Command::Run { id, args } => {
            student::run_server(&course, course.lesson_or_suggest(&id)?, &args)
        }
        Command::Reset { id, yes } => student::reset(&course, course.lesson_or_suggest(&id)?, yes),
        Command::Validate {
            ids,
            seed,
            transcripts,
        } => crate::validate::validate(&course, &ids, seed, transcripts.as_deref()),
        Command::Readmes => {
            for path in crate::lint::write_checker_runs(&course)? {
                println!("rewrote {}", path.display());
            }
            Ok(0)
        }
        Command::Stubs { ids, write } => crate::stubs::command(&course, &ids, write),
        Command::Mutants {
            ids,
            mutant,
            list,
            suggest_gaps,
            render,
            force,
        } => crate::mutants::command(
            &course,
            &crate::mutants::Options {
                ids,
                mutant,
                list,
                suggest_gaps,
                render,
                force,
            },
        ),
    }
}

fn check(course: &Course, args: CheckArgs) -> Result<u8> {
    let lesson = course.lesson_or_suggest(&args.id)?;
    let is_students_own = !args.solution && args.path.is_none() && args.exec.is_none();
    let (subject, checked) = subject_of(course, lesson, &args)?;
    let seed = args.seed.unwrap_or_else(run::random_seed);
    let result = run::run_lesson(&run::RunRequest {
        course,
        lesson,
        subject,
        checked,
        seed,
        format: Some(args.format),
        capture: false,
    })?;
    if let Some(path) = &args.junit {
        std::fs::write(path, &result.junit)
            .with_context(|| format!("writing the JUnit report to {}", path.display()))?;
    }
    if is_students_own {
        let mut progress = crate::progress::Progress::load(course);
        progress.record(&lesson.id, result.passed, seed);
        progress.save(course)?;
    }
    if result.passed {
        run::ensure_proof_grades(&result, lesson)?;
        Ok(EXIT_PASS)
    } else {
        Ok(EXIT_FAIL)
    }
}

/// The subject, and how the proof names it.
fn subject_of(course: &Course, lesson: &Lesson, args: &CheckArgs) -> Result<(Subject, String)> {
    if let Some(command) = &args.exec {
        let argv = shlex::split(command)
            .filter(|words| !words.is_empty())
            .with_context(|| format!("--exec: cannot split `{command}` into words"))?;
        return Ok((Subject::Exec { argv }, format!("exec `{command}`")));
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
    Ok((Subject::Crate { dir }, label))
}

/// GitHub Classroom's autograding.json: one test per lesson, worth its XP.
/// Each test grades with the course's own checker and course.yaml, fetched
/// fresh at `tag`, never with the student's editable copies.
fn classroom_autograding(course: &Course, repo_url: &str, tag: &str) -> Result<String> {
    let setup = format!(
        "test -d /tmp/course || git clone --quiet --depth 1 --branch {tag} {repo_url} /tmp/course && cargo build --quiet --release -p checker --manifest-path /tmp/course/Cargo.toml"
    );
    let tests: Vec<serde_json::Value> = course
        .lessons
        .iter()
        .map(|lesson| {
            serde_json::json!({
                "name": format!("{} {}", lesson.id, lesson.title),
                "setup": setup,
                "run": format!(
                    "/tmp/course/target/release/checker --course /tmp/course/course.yaml {} --path {}",
                    lesson.id,
                    lesson.stub.display()
                ),
                "input": "",
                "output": "",
                "comparison": "included",
                "timeout": 15,
                "points": lesson.xp,
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(
        &serde_json::json!({ "tests": tests }),
    )?)
}
