//! The student's commands: list, show, hint, next, run, reset and watch.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::build::{build, BuildOutcome};
use crate::checks::Subject;
use crate::cli::{EXIT_FAIL, EXIT_PASS};
use crate::course::{Course, Lesson};
use crate::progress::{LessonStatus, Progress};
use crate::report::{colour, paint, Format};
use crate::run::{self, RunRequest};

pub fn list(course: &Course) {
    let progress = Progress::load(course);
    println!("{} (course {})", course.info.title, course.info.version);
    println!(
        "{:<5} {:<8} {:<46} {:>4} {:>4}  status",
        "part", "id", "title", "min", "xp"
    );
    let mut earned = 0;
    let mut passed = 0;
    for lesson in &course.lessons {
        let status = match progress.status(&lesson.id) {
            Some(a) if a.status == LessonStatus::Passed => {
                earned += lesson.xp;
                passed += 1;
                paint(&format!("passed {}", a.at), "32")
            }
            Some(a) => paint(&format!("failed {}", a.at), "31"),
            None => "not tried".to_string(),
        };
        println!(
            "{:<5} {:<8} {:<46} {:>4} {:>4}  {status}",
            lesson.part,
            lesson.id,
            truncate(&lesson.title, 46),
            lesson.duration_minutes,
            lesson.xp
        );
    }
    let minutes: u32 = course.lessons.iter().map(|l| l.duration_minutes).sum();
    let available: u32 = course.lessons.iter().map(|l| l.xp).sum();
    println!(
        "{passed} of {} lessons passed · {earned} of {available} XP · {minutes} minutes in all",
        course.lessons.len()
    );
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// The lesson README, with headings emphasised on a terminal.
pub fn show(course: &Course, lesson: &Lesson) -> Result<()> {
    let path = course.readme_path(lesson);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            println!("    {}", paint(line, "36"));
        } else if let Some(title) = line.strip_prefix("# ") {
            println!("{}", paint(&title.to_uppercase(), "1"));
        } else if let Some(heading) = line.strip_prefix("## ") {
            println!("\n{}", paint(heading, "1;4"));
        } else {
            println!("{line}");
        }
    }
    println!(
        "\nCheck it with: checker {}   (hints: checker hint {})",
        lesson.id, lesson.id
    );
    Ok(())
}

/// The next hint (or all of them), remembering how many were shown.
pub fn hint(course: &Course, lesson: &Lesson, all: bool) -> Result<()> {
    let mut progress = Progress::load(course);
    let shown = progress.hints_shown.get(&lesson.id).copied().unwrap_or(0);
    let total = lesson.hints.len();
    let upto = if all { total } else { (shown + 1).min(total) };
    for (i, hint) in lesson.hints.iter().enumerate().take(upto) {
        println!("hint {}/{total}: {hint}", i + 1);
    }
    if upto < total {
        println!(
            "(`checker hint {}` again for the next one, `--all` for all)",
            lesson.id
        );
    } else {
        println!("(that was the last hint; the README's Concept section has the background)");
    }
    progress
        .hints_shown
        .insert(lesson.id.clone(), upto.max(shown));
    progress.save(course)
}

/// The first lesson not passed yet.
pub fn next_lesson<'a>(course: &'a Course, progress: &Progress) -> Option<&'a Lesson> {
    course.lessons.iter().find(|l| !progress.passed(&l.id))
}

pub fn next(course: &Course) {
    let progress = Progress::load(course);
    match next_lesson(course, &progress) {
        Some(lesson) => {
            println!(
                "next: {} {} ({} min, {} XP)",
                lesson.id, lesson.title, lesson.duration_minutes, lesson.xp
            );
            println!(
                "  read it:   checker show {}   ({})",
                lesson.id,
                course.readme_path(lesson).display()
            );
            println!("  edit:      {}/src/", course.stub_dir(lesson).display());
            println!(
                "  check it:  checker {}   (or re-check on every save: checker watch)",
                lesson.id
            );
        }
        None => println!("every lesson passed — well done. `checker list` shows your XP."),
    }
}

/// Checks the student's own crate and records the result.
pub fn check_and_record(course: &Course, lesson: &Lesson, seed: u64) -> Result<bool> {
    let dir = course.stub_dir(lesson);
    let result = run::run_lesson(&RunRequest {
        course,
        lesson,
        subject: Subject::Crate { dir },
        checked: lesson.stub.display().to_string(),
        seed,
        format: Some(Format::Text),
        capture: false,
    })?;
    let mut progress = Progress::load(course);
    progress.record(&lesson.id, result.passed, seed);
    progress.save(course)?;
    if result.passed {
        run::ensure_proof_grades(&result, lesson)?;
    }
    Ok(result.passed)
}

/// Builds the student's server and runs it in the foreground.
pub fn run_server(course: &Course, lesson: &Lesson, args: &[String]) -> Result<u8> {
    let dir = course.stub_dir(lesson);
    println!("building {} ...", dir.display());
    let binary = match build(&dir)? {
        BuildOutcome::Built { binary, .. } => binary,
        BuildOutcome::Failed { errors, summary } => {
            for line in errors {
                println!("{line}");
            }
            println!("{summary}");
            return Ok(EXIT_FAIL);
        }
    };
    // Without arguments: a free port and the flags the checker would use.
    let argv: Vec<String> = if args.is_empty() {
        ["--port", "0"]
            .iter()
            .map(|s| s.to_string())
            .chain(lesson.server_args.iter().cloned())
            .collect()
    } else {
        args.to_vec()
    };
    println!(
        "starting {} {} (Ctrl-C stops it)",
        binary.display(),
        argv.join(" ")
    );
    println!("try it: nc 127.0.0.1 <port>, or stress_test --port <port> --clients 5 --frames 10");
    let mut command_line = vec![binary.display().to_string()];
    command_line.extend(argv);
    let status = crate::server::run_foreground(&command_line)?;
    Ok(if status.success() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    })
}

/// Puts the stub back as the course ships it, after backing up the
/// student's version under `.checker/backup/`.
pub fn reset(course: &Course, lesson: &Lesson, yes: bool) -> Result<u8> {
    let dir = course.stub_dir(lesson);
    if !yes {
        print!(
            "Reset {} to the course's stub? Your version is kept in .checker/backup/. [y/N] ",
            dir.display()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(EXIT_PASS);
        }
    }
    let source = pristine_ref(&course.root)?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let backup = course
        .root
        .join(".checker/backup")
        .join(format!("{}-{stamp}", lesson.id));
    copy_tree(&dir, &backup)?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    let status = Command::new("git")
        .current_dir(&course.root)
        .args(["restore", "--worktree", &format!("--source={source}"), "--"])
        .arg(&lesson.stub)
        .status()
        .context("running git restore")?;
    if !status.success() {
        bail!(
            "git restore failed; your version is safe in {}",
            backup.display()
        );
    }
    println!(
        "{} reset to the stub of {source}; your version: {}",
        dir.display(),
        backup.display()
    );
    Ok(EXIT_PASS)
}

/// The course as shipped: the upstream branch if there is one, else HEAD.
fn pristine_ref(root: &Path) -> Result<String> {
    for candidate in ["origin/HEAD", "origin/main", "HEAD"] {
        let ok = Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--verify", "--quiet", candidate])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(candidate.to_string());
        }
    }
    bail!(
        "{} is not a git checkout: reset needs the course's git history",
        root.display()
    )
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        if source.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

/// Editor droppings that must not trigger a re-run.
fn is_noise(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name.ends_with(".tmp")
        || name.starts_with(".#")
        || name.starts_with('#')
        || name == "4913"
        // Written by the check's own build, not by the student.
        || name == "Cargo.lock"
        || path
            .components()
            .any(|c| c.as_os_str() == "target" || c.as_os_str() == ".git")
}

/// What wakes the watch loop.
enum Wake {
    Changed(PathBuf),
    Enter,
    Quit,
}

/// Re-checks the lesson on every save (debounced), or on Enter in manual
/// mode — the fallback when the file system cannot be watched.
pub fn watch(course: &Course, lesson: &Lesson, manual: bool) -> Result<u8> {
    let dir = course.stub_dir(lesson);
    let (wake, woken) = mpsc::channel::<Wake>();
    let keys = wake.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let event = if line.trim() == "q" {
                Wake::Quit
            } else {
                Wake::Enter
            };
            if keys.send(event).is_err() {
                break;
            }
        }
        let _ = keys.send(Wake::Quit);
    });
    let _watcher = if manual {
        println!("manual mode: press Enter to re-check, q then Enter to quit");
        None
    } else {
        match file_watcher(&dir, wake.clone()) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                println!("cannot watch {} ({err:#}); falling back to manual mode: press Enter to re-check", dir.display());
                None
            }
        }
    };
    let mut seed = run::random_seed();
    loop {
        if colour() {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "checker watch {} — re-checks on every save in {} (q then Enter quits)\n",
            lesson.id,
            dir.display()
        );
        let passed = check_and_record(course, lesson, seed)?;
        if passed {
            println!(
                "\n{} passed: `checker next` shows what comes next.",
                lesson.id
            );
        }
        println!("\nwaiting for a change ... (Enter re-checks, q quits)");
        match woken.recv() {
            Ok(Wake::Changed(path)) => {
                println!("changed: {}", path.display());
                // Let the rest of a multi-file save land.
                while woken.recv_timeout(Duration::from_millis(200)).is_ok() {}
            }
            Ok(Wake::Enter) => {}
            Ok(Wake::Quit) | Err(_) => return Ok(if passed { EXIT_PASS } else { EXIT_FAIL }),
        }
        seed = run::random_seed();
    }
}

fn file_watcher(dir: &Path, wake: mpsc::Sender<Wake>) -> Result<notify::RecommendedWatcher> {
    use notify::event::ModifyKind;
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Only what changes a file is a save. Opening and reading files is
        // not (and the check itself reads them all: the build, the source
        // hash), nor is a change of metadata such as the access time.
        let saved = match event.kind {
            EventKind::Create(_) | EventKind::Remove(_) => true,
            EventKind::Modify(ModifyKind::Metadata(_)) => false,
            EventKind::Modify(_) => true,
            _ => false,
        };
        if !saved {
            return;
        }
        if let Some(path) = event.paths.into_iter().find(|p| !is_noise(p)) {
            let _ = wake.send(Wake::Changed(path));
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}
