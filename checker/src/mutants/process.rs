//! Running a command with a time bound: its output captured, SIGTERM at
//! the bound (the checker then stops every server it started), SIGKILL
//! if that does not end it, and any orphan it left behind killed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// How long a command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
    /// Stopped at the time bound.
    TimedOut,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit {code}"),
            Ended::Signalled(signal) => write!(f, "killed by signal {signal}"),
            Ended::TimedOut => write!(f, "stopped at the time bound"),
        }
    }
}

pub struct Run {
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

/// Runs `command` (stdin closed, output captured) for at most `bound`.
pub fn run_bounded(command: &mut Command, bound: Duration) -> Result<Run> {
    use std::os::unix::process::ExitStatusExt;
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let stderr = child.stderr.take().context("child stderr")?;
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout_reader = read(Box::new(stdout));
    let stderr_reader = read(Box::new(stderr));
    let pid = Pid::from_raw(child.id() as i32);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let elapsed = started.elapsed();
        if !timed_out && elapsed > bound {
            timed_out = true;
            let _ = kill(pid, Signal::SIGTERM);
        }
        if timed_out && elapsed > bound + TERM_GRACE {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    kill_orphans();
    // A grandchild still holding the pipes (killed just above) lets go now.
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    let ended = if timed_out {
        Ended::TimedOut
    } else if let Some(code) = status.code() {
        Ended::Exited(code)
    } else {
        Ended::Signalled(status.signal().unwrap_or(0))
    };
    Ok(Run {
        ended,
        stdout,
        stderr,
        seconds,
    })
}

/// The checker is a subreaper: what a finished command left running (a
/// server a killed checker could not stop, a cargo it started) became our
/// child. Nothing else of ours runs between commands, so every child left
/// is such an orphan: kill it and reap it (a few passes, as a killed
/// orphan's own children are reparented in turn).
fn kill_orphans() {
    // Only the checker's own process (main() made it a subreaper) owns its
    // orphans; a test binary's other children are not this command's.
    if nix::sys::prctl::get_child_subreaper() != Ok(true) {
        return;
    }
    let me = std::process::id() as i32;
    for _ in 0..5 {
        let orphans = children_of(me);
        if orphans.is_empty() {
            return;
        }
        for &pid in &orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
        for &pid in &orphans {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Processes whose parent is `parent` (from /proc/PID/stat).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces and parens.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_bound_is_stopped_and_said_to_be() {
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let run = run_bounded(&mut sleeper, Duration::from_millis(200)).unwrap();
        assert_eq!(run.ended, Ended::TimedOut);
        assert!(run.seconds < 5.0, "{}", run.seconds);

        let mut quick = Command::new("sh");
        quick.args(["-c", "echo out; echo err >&2; exit 3"]);
        let run = run_bounded(&mut quick, Duration::from_secs(10)).unwrap();
        assert_eq!(run.ended, Ended::Exited(3));
        assert_eq!(run.stdout, "out\n");
        assert_eq!(run.stderr, "err\n");
    }
}
