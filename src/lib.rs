//! Support for the end-to-end tests in `tests/`: where the binaries are,
//! and how to tell that no process a test started is still alive.
//!
//! The root package also ships the deliberately broken servers every check
//! is shown to catch (`src/bin/broken_*`), and [`fixture`], what they share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub mod fixture;

/// The workspace root (where course.yaml lives).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the checker and the stress tools once per test process, so the
/// tests work however `cargo test` was invoked.
pub fn ensure_tools_built() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "checker",
                "-p",
                "stress",
                "-p",
                "epoll-course",
            ])
            .status()
            .expect("running cargo build for the tools");
        assert!(
            status.success(),
            "building the checker and stress tools failed"
        );
    });
}

/// A binary of the workspace's debug build, e.g. `checker`.
pub fn tool(name: &str) -> PathBuf {
    ensure_tools_built();
    let path = workspace_root().join("target/debug").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Pids of every live process whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // Zombies have an empty cmdline; a reaped-or-dying process is not alive.
        if cmdline.contains(needle) && !is_zombie(pid) {
            found.push(pid);
        }
    }
    found
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}
