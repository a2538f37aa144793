use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;

pub use epoll_course::{processes_mentioning, tool, workspace_root};

/// No checker run may take longer than this, whatever the server does; a
/// test that hits it has found a hung checker.
pub const HANG_GUARD: Duration = Duration::from_secs(240);

/// Tests run two at a time; a test that holds thousands of connections (or
/// validates the whole course, C10K included) takes this lock exclusively,
/// every other checker run shares it, so the heavy ones never run beside
/// anything (the open-file hard limit is 20,000; the machine has 2 cores).
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// Whether this test thread holds the machine exclusively.
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The machine to one test: held while running something heavy.
pub struct Alone {
    _guard: std::sync::RwLockWriteGuard<'static, ()>,
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|alone| alone.set(false));
    }
}

/// Hold while running something heavy: nothing else runs meanwhile.
pub fn machine_to_myself() -> Alone {
    let guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    ALONE.with(|alone| alone.set(true));
    Alone { _guard: guard }
}

/// Held by ordinary checker runs (`run_checker`); a no-op for the test that
/// already has the machine to itself.
pub fn machine_shared() -> Option<std::sync::RwLockReadGuard<'static, ()>> {
    if ALONE.with(|alone| alone.get()) {
        return None;
    }
    Some(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
}

pub fn checker() -> Command {
    let mut command = Command::new(tool("checker"));
    command
        .current_dir(workspace_root())
        .timeout(HANG_GUARD)
        // Runs of lessons/<id> record progress: keep it out of the checkout.
        .env("CHECKER_STATE_DIR", test_state_dir());
    command
}

/// Where the tests' checker runs keep their progress file.
pub fn test_state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("checker-test-state-{}", std::process::id()))
}

/// `checker <args>` to completion; returns its output and stdout text.
pub fn run_checker(args: &[&str]) -> (Output, String) {
    let _shared = machine_shared();
    let output = checker().args(args).output().expect("running the checker");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (output, stdout)
}

/// `--exec` for a broken-server fixture, tagged so the test can find its
/// own processes afterwards.
pub fn fixture_exec(bug: &str, tag: &str) -> String {
    format!(
        "{} --bug {bug} --tag {tag}",
        tool("broken_server").display()
    )
}

/// Asserts that no process started for `tag` is alive (after a short grace
/// for the kernel to finish tearing down what was killed).
pub fn assert_nothing_left(tag: &str) {
    for _ in 0..50 {
        if processes_mentioning(tag).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "processes tagged {tag} outlived the checker: {:?}",
        processes_mentioning(tag)
    );
}

pub fn exit_code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Runs `lesson` with `--exec` on the fixture `binary --bug BUG`; asserts it
/// fails at `step` with every one of `expected` in the output and leaves no
/// process behind. Returns the output.
pub fn track_fixture_fails_at(
    binary: &str,
    lesson: &str,
    bug: &str,
    step: &str,
    expected: &[&str],
) -> String {
    let tag = format!("{binary}-{lesson}-{bug}");
    let exec = format!("{} --bug {bug} --tag {tag}", tool(binary).display());
    let (output, stdout) = run_checker(&[lesson, "--exec", &exec, "--seed", "7"]);
    assert_eq!(exit_code(&output), 1, "{stdout}");
    let failed_at = format!("FAILED {lesson} at step `{step}`");
    assert!(
        stdout.contains(&failed_at),
        "missing `{failed_at}` in:\n{stdout}"
    );
    for text in expected {
        assert!(stdout.contains(text), "missing `{text}` in:\n{stdout}");
    }
    assert!(!stdout.contains("result: PASS"), "{stdout}");
    assert_nothing_left(&tag);
    stdout
}

/// Runs `lesson` with `--exec` on the fixture `binary --bug BUG` and asserts
/// it passes, leaving no process behind. Returns the output.
pub fn track_fixture_passes(binary: &str, lesson: &str, bug: &str) -> String {
    let tag = format!("{binary}-{lesson}-{bug}");
    let exec = format!("{} --bug {bug} --tag {tag}", tool(binary).display());
    let (output, stdout) = run_checker(&[lesson, "--exec", &exec, "--seed", "7"]);
    assert_eq!(exit_code(&output), 0, "{stdout}");
    assert_nothing_left(&tag);
    stdout
}

/// `checker <lesson> --solution` passes and its proof holds every line.
pub fn lesson_solution_passes(lesson: &str, proof_lines: &[&str]) {
    let stdout = validated().transcript(lesson, "pass");
    assert!(
        stdout.contains(&format!("result: PASS {lesson}")),
        "{stdout}"
    );
    for line in proof_lines {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
}

/// `checker <lesson>` on the untouched stub fails at `step`; returns the output.
pub fn lesson_stub_fails_at(lesson: &str, step: &str) -> String {
    let stdout = validated().transcript(lesson, "fail");
    let failed_at = format!("FAILED {lesson} at step `{step}`");
    assert!(
        stdout.contains(&failed_at),
        "missing `{failed_at}` in:\n{stdout}"
    );
    stdout
}

/// The seed of the one `checker validate` run the tests share.
pub const VALIDATE_SEED: &str = "4242";

/// One `checker validate` of the whole course (every solution passes, every
/// stub fails, every pitfall fails as it says), run once for the whole test
/// binary with the machine to itself: the golden transcripts are its
/// transcripts, and each track's solution and stub tests read theirs
/// instead of running the lesson again.
pub struct Validated {
    pub code: i32,
    pub table: String,
    pub dir: tempfile::TempDir,
}

impl Validated {
    /// The text of `lesson`'s `pass` (solution) or `fail` (stub) run.
    pub fn transcript(&self, lesson: &str, kind: &str) -> String {
        assert_eq!(
            self.code, 0,
            "checker validate (which ran {lesson}'s {kind} run) did not pass:\n{}",
            self.table
        );
        let path = self.dir.path().join(format!("{lesson}.{kind}.txt"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.table))
    }
}

pub fn validated() -> &'static Validated {
    static VALIDATED: std::sync::OnceLock<Validated> = std::sync::OnceLock::new();
    VALIDATED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        // The whole course, one lesson after another (C10K included): alone
        // on the machine, and longer than one run's guard.
        let _alone = machine_to_myself();
        let output = checker()
            .timeout(std::time::Duration::from_secs(1800))
            .args([
                "validate",
                "--seed",
                VALIDATE_SEED,
                "--transcripts",
                dir.path().to_str().expect("utf-8 path"),
            ])
            .output()
            .expect("running checker validate");
        Validated {
            code: exit_code(&output),
            table: String::from_utf8_lossy(&output.stdout).to_string(),
            dir,
        }
    })
}

/// course.yaml with absolute crate paths, so a copy of it elsewhere (edited
/// by a test) still finds the crates.
pub fn course_with_absolute_paths() -> String {
    let text = std::fs::read_to_string(workspace_root().join("course.yaml")).expect("course.yaml");
    let root = workspace_root().display().to_string();
    text.replace("stub: lessons/", &format!("stub: {root}/lessons/"))
        .replace(
            "solution: solutions/",
            &format!("solution: {root}/solutions/"),
        )
}

/// One bug of a track's fixture and what it plants: `(bug, lesson, step,
/// cause_id)`, the lesson that catches it, the step it fails at and the id
/// of the likely cause the failure gives (`None`: a death that no cause
/// explains, or a failure the checker gives no diagnosis for).
pub type Planted = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Each fixture run of [`track_fixture_fails_as`], once per test process:
/// a track's table test and the bug's own test share it (each run costs
/// seconds). `(exit code, stdout)` by `binary lesson bug`.
type FixtureRuns =
    std::collections::HashMap<String, std::sync::Arc<std::sync::OnceLock<(i32, String)>>>;
static FIXTURE_RUNS: std::sync::Mutex<Option<FixtureRuns>> = std::sync::Mutex::new(None);

/// `checker lesson --exec 'binary --bug BUG' --seed 7 --format json`, run
/// once whoever asks first (the others wait for it); no process left behind.
fn fixture_run(binary: &str, lesson: &str, bug: &str) -> (i32, String) {
    let key = format!("{binary} {lesson} {bug}");
    let cell = FIXTURE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default)
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(|| {
        let tag = format!("{binary}-{lesson}-{bug}-cause");
        let exec = format!("{} --bug {bug} --tag {tag}", tool(binary).display());
        let (output, stdout) =
            run_checker(&[lesson, "--exec", &exec, "--seed", "7", "--format", "json"]);
        assert_nothing_left(&tag);
        (exit_code(&output), stdout)
    })
    .clone()
}

/// Runs `lesson` with `--exec` on the fixture `binary --bug BUG` (seed 7,
/// JSON, shared with every other test asking for the same run) and asserts
/// it fails at `step` with the diagnosed cause `cause` (`None`: no cause
/// id at all). Returns the failing step's record.
pub fn track_fixture_fails_as(
    binary: &str,
    lesson: &str,
    bug: &str,
    step: &str,
    cause: Option<&str>,
) -> serde_json::Value {
    let (code, stdout) = fixture_run(binary, lesson, bug);
    assert_eq!(code, 1, "{binary} --bug {bug}, {lesson}:\n{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("checker's JSON");
    let failed = json["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["status"] == "fail")
        .cloned()
        .unwrap_or_else(|| panic!("no failed step in:\n{stdout}"));
    assert_eq!(
        failed["name"], step,
        "{binary} --bug {bug}, {lesson}:\n{stdout}"
    );
    assert_eq!(
        failed["cause_id"].as_str(),
        cause,
        "{binary} --bug {bug}, {lesson}: the cause id\n{stdout}"
    );
    failed
}

/// [`track_fixture_fails_as`] for a bug that plants the cause `cause_id`
/// (the id the fixture's bug plants).
pub fn track_fixture_fails_with_cause(
    binary: &str,
    lesson: &str,
    bug: &str,
    step: &str,
    cause_id: &str,
) -> serde_json::Value {
    track_fixture_fails_as(binary, lesson, bug, step, Some(cause_id))
}

/// The row of `table` for `bug` in `lesson`.
fn planted_row(table: &[Planted], lesson: &str, bug: &str) -> Planted {
    *table
        .iter()
        .find(|row| row.0 == bug && row.1 == lesson)
        .unwrap_or_else(|| panic!("no row ({bug}, {lesson}, ..) in the track's table of planted causes: every fixture bug declares the step it fails and the cause it plants"))
}

/// The bug's row of `table` (its lesson, step and cause) holds, and the
/// run's text (as `--format text` prints the steps: `FAIL: ...`, `likely
/// cause: ...`, hints, evidence, then the verdict and proof) has every one
/// of `expected`. Returns that text.
pub fn planted_fails_at(
    binary: &str,
    table: &[Planted],
    lesson: &str,
    bug: &str,
    step: &str,
    expected: &[&str],
) -> String {
    let (_, _, planted_step, cause) = planted_row(table, lesson, bug);
    assert_eq!(
        planted_step, step,
        "the table says {bug} fails {lesson} at `{planted_step}`"
    );
    track_fixture_fails_as(binary, lesson, bug, step, cause);
    let (_, stdout) = fixture_run(binary, lesson, bug);
    let text = steps_as_text(&stdout);
    for wanted in expected {
        assert!(text.contains(wanted), "missing `{wanted}` in:\n{text}");
    }
    assert!(!text.contains("result: PASS"), "{text}");
    text
}

/// Every row of `table` through [`track_fixture_fails_as`]: each bug fails
/// its lesson at its step with the cause it declares. `alone`: the lessons
/// whose runs must have the machine to themselves (C10K).
pub fn every_planted_cause_is_given(binary: &str, table: &[Planted], alone: &[&str]) {
    for &(bug, lesson, step, cause) in table {
        let _alone = alone.contains(&lesson).then(machine_to_myself);
        track_fixture_fails_as(binary, lesson, bug, step, cause);
    }
}

/// A `--format json` run's steps written as the text transcript writes
/// them (without the progress details; the failing step's figures as
/// `name: value` lines), then its verdict and proof.
pub fn steps_as_text(stdout: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(stdout).expect("checker's JSON");
    let mut text = String::new();
    for step in json["steps"].as_array().into_iter().flatten() {
        let mark = match step["status"].as_str() {
            Some("pass") => "PASS",
            Some("fail") => "FAIL",
            _ => "SKIP",
        };
        text.push_str(&format!(
            "[{}]\n{mark}: {}\n",
            step["name"].as_str().unwrap_or_default(),
            step["message"].as_str().unwrap_or_default()
        ));
        if let Some(cause) = step["cause"].as_str() {
            text.push_str(&format!("likely cause: {cause}\n"));
        }
        for hint in step["hints"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "hint {}/{}: {}\n",
                hint["number"],
                hint["of"],
                hint["text"].as_str().unwrap_or_default()
            ));
        }
        for line in step["evidence"].as_array().into_iter().flatten() {
            text.push_str(&format!("│ {}\n", line.as_str().unwrap_or_default()));
        }
        if mark == "FAIL" {
            for (name, value) in step["figures"].as_object().into_iter().flatten() {
                text.push_str(&format!("{name}: {}\n", value.as_str().unwrap_or_default()));
            }
        }
    }
    text.push_str(json["verdict"].as_str().unwrap_or_default());
    text.push('\n');
    text.push_str(json["proof"].as_str().unwrap_or_default());
    text
}
