//! The student's commands on a course of one lesson in a temporary git
//! repository (so progress, resets and edits never touch this checkout).

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use crate::support::*;

struct TempCourse {
    dir: tempfile::TempDir,
    /// One temporary course builds at a time: they share a target dir
    /// (its own, so the workspace's lesson binaries are never overwritten).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static ONE_COURSE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds of the temporary courses: compiled dependencies are reused
/// between tests, and the workspace's own binaries stay untouched.
fn student_target_dir() -> PathBuf {
    workspace_root().join("target/student-tests")
}

impl TempCourse {
    /// course.yaml cut down to w01-l01, its stub and solution copied (each a
    /// crate of its own now), committed to a fresh git repository.
    fn new() -> TempCourse {
        let turn = ONE_COURSE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let root = workspace_root();
        let course = std::fs::read_to_string(root.join("course.yaml")).unwrap();
        let first = course
            .find("\n  - id: w01-l01")
            .expect("w01-l01 in course.yaml");
        let end = course[first + 1..]
            .find("\n  - id: ")
            .map(|i| first + 1 + i)
            .unwrap_or(course.len());
        std::fs::write(dir.path().join("course.yaml"), &course[..end]).unwrap();
        for crate_dir in ["lessons/w01-l01", "solutions/w01-l01"] {
            copy_crate(&root.join(crate_dir), &dir.path().join(crate_dir));
        }
        std::fs::write(dir.path().join(".gitignore"), "/.checker/\ntarget/\n").unwrap();
        for args in [
            &["init", "-q"][..],
            &["add", "."],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "course",
            ],
        ] {
            assert!(Process::new("git")
                .current_dir(dir.path())
                .args(args)
                .status()
                .unwrap()
                .success());
        }
        TempCourse { dir, _turn: turn }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn checker(&self, args: &[&str]) -> (i32, String) {
        let output = checker()
            .current_dir(self.path())
            // This course's own progress file, beside its course.yaml.
            .env_remove("CHECKER_STATE_DIR")
            // Reuse the workspace's compiled dependencies.
            .env("CARGO_TARGET_DIR", student_target_dir())
            .args(args)
            .output()
            .unwrap();
        (
            exit_code(&output),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    }

    fn fill_in_the_stub(&self) {
        let solution =
            std::fs::read_to_string(self.path().join("solutions/w01-l01/src/main.rs")).unwrap();
        std::fs::write(self.path().join("lessons/w01-l01/src/main.rs"), solution).unwrap();
    }
}

/// A crate outside any workspace must say so, or cargo looks above it.
fn copy_crate(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("src")).unwrap();
    let manifest = std::fs::read_to_string(from.join("Cargo.toml")).unwrap();
    std::fs::write(to.join("Cargo.toml"), format!("{manifest}\n[workspace]\n")).unwrap();
    for entry in std::fs::read_dir(from.join("src")).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        std::fs::copy(&path, to.join("src").join(path.file_name().unwrap())).unwrap();
    }
    if from.join("README.md").exists() {
        std::fs::copy(from.join("README.md"), to.join("README.md")).unwrap();
    }
}

#[test]
fn a_new_student_walks_from_next_to_a_pass_and_sees_it_in_list() {
    let course = TempCourse::new();
    let (code, next) = course.checker(&["next"]);
    assert_eq!(code, 0);
    assert!(
        next.contains("next: w01-l01 Blocking echo server"),
        "{next}"
    );
    let (_, show) = course.checker(&["show", "w01-l01"]);
    assert!(
        show.contains("Concept") && show.contains("Done When"),
        "{show}"
    );

    let (code, run) = course.checker(&["w01-l01"]);
    assert_eq!(code, 1, "{run}");
    let (_, list) = course.checker(&["list"]);
    assert!(list.contains("failed"), "{list}");
    assert!(
        list.contains("0 of 1 lessons passed · 0 of 75 XP"),
        "{list}"
    );

    // A passing run of the reference solution records nothing.
    let (code, _) = course.checker(&["w01-l01", "--solution"]);
    assert_eq!(code, 0);
    let (_, list) = course.checker(&["list"]);
    assert!(list.contains("0 of 1 lessons passed"), "{list}");

    course.fill_in_the_stub();
    let (code, run) = course.checker(&["w01-l01"]);
    assert_eq!(code, 0, "{run}");
    let (_, list) = course.checker(&["list"]);
    assert!(list.contains("passed 20"), "{list}");
    assert!(
        list.contains("1 of 1 lessons passed · 75 of 75 XP"),
        "{list}"
    );
    let (_, next) = course.checker(&["next"]);
    assert!(next.contains("every lesson passed"), "{next}");
}

#[test]
fn hints_are_revealed_one_at_a_time_and_all_at_once_on_request() {
    let course = TempCourse::new();
    let (_, first) = course.checker(&["hint", "w01-l01"]);
    assert!(
        first.contains("hint 1/") && !first.contains("hint 2/"),
        "{first}"
    );
    let (_, second) = course.checker(&["hint", "w01-l01"]);
    assert!(
        second.contains("hint 2/") && !second.contains("hint 3/"),
        "{second}"
    );
    let (_, all) = course.checker(&["hint", "w01-l01", "--all"]);
    assert!(all.contains("that was the last hint"), "{all}");
}

#[test]
fn reset_restores_the_stub_and_keeps_the_students_version() {
    let course = TempCourse::new();
    let main = course.path().join("lessons/w01-l01/src/main.rs");
    let original = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, "// my attempt\n").unwrap();
    std::fs::write(
        course.path().join("lessons/w01-l01/src/extra.rs"),
        "// extra\n",
    )
    .unwrap();
    let (code, out) = course.checker(&["reset", "w01-l01", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&main).unwrap(), original);
    assert!(!course.path().join("lessons/w01-l01/src/extra.rs").exists());
    let backups: Vec<_> = std::fs::read_dir(course.path().join(".checker/backup"))
        .unwrap()
        .collect();
    assert_eq!(backups.len(), 1);
    let backup = backups.into_iter().next().unwrap().unwrap().path();
    assert_eq!(
        std::fs::read_to_string(backup.join("src/main.rs")).unwrap(),
        "// my attempt\n"
    );
}

#[test]
fn reset_without_yes_asks_and_does_nothing_on_no() {
    let course = TempCourse::new();
    let main = course.path().join("lessons/w01-l01/src/main.rs");
    std::fs::write(&main, "// mine\n").unwrap();
    let output = checker()
        .current_dir(course.path())
        .env_remove("CHECKER_STATE_DIR")
        .args(["reset", "w01-l01"])
        .write_stdin("n\n")
        .output()
        .unwrap();
    assert_eq!(exit_code(&output), 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("nothing changed"));
    assert_eq!(std::fs::read_to_string(&main).unwrap(), "// mine\n");
}

fn tmux(args: &[&str]) -> String {
    let output = Process::new("tmux")
        .args(args)
        .output()
        .expect("tmux is required (test.sh installs it)");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The whole screen history once watch mode has sat idle for 3 s.
fn settled_screen(session: &str) -> String {
    std::thread::sleep(Duration::from_secs(3));
    let screen = tmux(&["capture-pane", "-p", "-S", "-2000", "-t", session]);
    let last = screen.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        last.is_some_and(|l| l.contains("waiting for a change")),
        "watch mode should be waiting:\n{screen}"
    );
    screen
}

fn wait_for_screen(session: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-S", "-200", "-t", session]);
        if screen.contains(needle) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` never appeared on screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn watch_mode_re_checks_on_save_in_a_real_terminal() {
    let course = TempCourse::new();
    let session = format!("checker-watch-{}", std::process::id());
    let command = format!(
        "cd {} && CARGO_TARGET_DIR={} NO_COLOR=1 {} watch w01-l01",
        course.path().display(),
        student_target_dir().display(),
        tool("checker").display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "50",
        &command,
    ]);
    let screen = wait_for_screen(&session, "FAILED w01-l01", Duration::from_secs(120));
    assert!(screen.contains("waiting for a change"), "{screen}");
    // The check reads every file of the crate (the build, the source hash):
    // reads are not saves, so nothing runs again until the student saves.
    let screen = settled_screen(&session);
    assert_eq!(screen.matches("FAILED w01-l01").count(), 1, "{screen}");
    assert!(!screen.contains("changed:"), "{screen}");
    course.fill_in_the_stub();
    let screen = wait_for_screen(&session, "PASSED w01-l01", Duration::from_secs(120));
    assert!(screen.contains("changed:"), "{screen}");
    let screen = settled_screen(&session);
    assert_eq!(screen.matches("PASSED w01-l01").count(), 1, "{screen}");
    tmux(&["send-keys", "-t", &session, "q", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["kill-session", "-t", &session]);
}

#[test]
fn run_starts_the_students_server_in_the_foreground_and_ctrl_c_stops_it() {
    use std::io::{BufRead, Read, Write};
    let course = TempCourse::new();
    course.fill_in_the_stub();
    let mut checker = Process::new(tool("checker"))
        .current_dir(course.path())
        .env("CARGO_TARGET_DIR", student_target_dir())
        .args(["run", "w01-l01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = checker.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let port: u16 = loop {
        let line = received
            .recv_timeout(Duration::from_secs(180))
            .expect("a listening line from `checker run`");
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");

    let server_pids = processes_mentioning("student-tests/release/w01-l01");
    assert!(!server_pids.is_empty(), "the server should be running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(checker.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = checker.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let deadline = Instant::now() + Duration::from_secs(5);
    while server_pids
        .iter()
        .any(|pid| processes_mentioning("student-tests/release/w01-l01").contains(pid))
    {
        assert!(
            Instant::now() < deadline,
            "the server outlived `checker run`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `checker show w01-l01 | head`: a reader that goes away ends the checker
/// quietly, as it ends any shell tool (status 141), not with a panic.
#[test]
fn show_into_a_pipe_nobody_reads_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    // Closed before the checker prints its first line.
    drop(reader);
    let output = Process::new(tool("checker"))
        .current_dir(workspace_root())
        .args(["show", "w01-l01"])
        .stdout(writer)
        .output()
        .expect("running the checker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
