//! N3 of the course spec, "no memory leaks": the final server (w03-l22's
//! solution) under valgrind memcheck through a short stress run and a
//! graceful shutdown — no memory errors, nothing definitely lost.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn the_final_server_has_no_leaks_or_memory_errors_under_valgrind() {
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.map(|o| o.status.success()).unwrap_or(false),
        "valgrind is required (test.sh installs it: apt-get install -y valgrind)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "w03-l22-solution"])
        .status()
        .expect("cargo build");
    assert!(built.success());
    let server = workspace_root().join("target/release/w03-l22-solution");

    let _alone = machine_to_myself();
    let mut child = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
        ])
        .arg(&server)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the server under valgrind");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the listening line");
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    // Drain stdout (stats and shutdown lines) so the server never blocks on it.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let mut stderr = child.stderr.take().unwrap();
    let valgrind_output = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut config = stress::stress::StressConfig::new(([127, 0, 0, 1], port).into(), 10, 30, 7);
    config.timeout = Duration::from_secs(60);
    let report = stress::stress::run_stress(&config);
    assert!(
        report.passed(),
        "stress under valgrind: {}",
        report.summary_line()
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().expect("waiting for the server");
    let shutdown_lines = drain.join().unwrap();
    let report = valgrind_output.join().unwrap();
    assert!(
        shutdown_lines.contains("All connections closed."),
        "{shutdown_lines}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "valgrind found errors or the server failed:\n{report}"
    );
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
    assert!(
        report.contains("definitely lost: 0 bytes")
            || report.contains("All heap blocks were freed"),
        "{report}"
    );
}
