use std::process::{Child, Command, Stdio};

use crate::support::*;

/// A broken_server fixture on a kernel-chosen port; killed on drop.
struct Fixture {
    child: Child,
    port: u16,
}

impl Fixture {
    fn start(bug: &str) -> Fixture {
        use std::io::BufRead;
        let mut child = Command::new(tool("broken_server"))
            .args(["--bug", bug, "--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting broken_server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        Fixture { child, port }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stress_test(port: u16, clients: &str, frames: &str) -> (i32, String) {
    let output = Command::new(tool("stress_test"))
        .args([
            "--port",
            &port.to_string(),
            "--clients",
            clients,
            "--frames",
            frames,
            "--seed",
            "11",
            "--timeout",
            "20",
        ])
        .output()
        .expect("running stress_test");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn stress_test_passes_a_correct_server_with_the_seed_summary_line() {
    let server = Fixture::start("none");
    let (code, stdout) = stress_test(server.port, "10", "100");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        stdout.trim_end().lines().last(),
        Some("10 clients, 1000 frames, 0 failures"),
        "{stdout}"
    );
}

#[test]
fn stress_test_catches_a_server_that_merges_pipelined_frames() {
    let server = Fixture::start("merge-frames");
    let (code, stdout) = stress_test(server.port, "5", "100");
    assert_eq!(code, 1, "{stdout}");
    let last = stdout
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let failures: usize = regex::Regex::new(r"^5 clients, 500 frames, (\d+) failures$")
        .unwrap()
        .captures(&last)
        .map(|c| c[1].parse().unwrap())
        .unwrap_or_else(|| panic!("bad summary line `{last}` in:\n{stdout}"));
    assert!(failures > 0, "{stdout}");
    assert!(
        regex::Regex::new(r"client \d+, frame \d+: .*mismatch")
            .unwrap()
            .is_match(&stdout),
        "the mismatch should name client and frame:\n{stdout}"
    );
}

#[test]
fn stress_test_catches_a_server_that_corrupts_one_frame_in_a_hundred() {
    let server = Fixture::start("corrupt-byte");
    let (code, stdout) = stress_test(server.port, "5", "100");
    assert_eq!(code, 1, "{stdout}");
}
