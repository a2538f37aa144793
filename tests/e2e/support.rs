use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;

pub use epoll_course::{processes_mentioning, tool, workspace_root};

/// No checker run may take longer than this, whatever the server does; a
/// test that hits it has found a hung checker.
pub const HANG_GUARD: Duration = Duration::from_secs(240);

pub fn checker() -> Command {
    let mut command = Command::new(tool("checker"));
    command.current_dir(workspace_root()).timeout(HANG_GUARD);
    command
}

/// `checker <args>` to completion; returns its output and stdout text.
pub fn run_checker(args: &[&str]) -> (Output, String) {
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
