//! `checker`: builds a lesson's crate, starts the server, drives it through
//! the lesson's verify steps and prints a verdict and a proof block.
//!
//! # Layout
//! - `cli`      the command line and the run of one lesson (`checker <id>`)
//! - `course`   course.yaml: loading and validating, errors naming file, lesson, field
//! - `build`    `cargo build --release` of the checked crate, finding its binary
//! - `server`   the server process: process group, captured output, kill on every path
//! - `checks`   one module per kind of verify step, registered in `checks/mod.rs`
//! - `run`      one run of one lesson: steps in order, verdict, proof block
//! - `report`   the transcript (text as it runs, or JSON) and step outcomes
//! - `procfs`   reading a live server through /proc: threads, fds, flags, epoll, RSS, CPU
//! - `preflight` what the machine must give (open files, ports, backlog), `checker doctor`
//! - `progress` the student's progress file (.checker/progress.json)
//! - `student`  list, show, hint, next, watch, run, reset
//! - `proof`    the proof block: rendering, finding in pasted text, grading
//! - `grade`    `checker grade`: pasted proofs graded, flagged, tabulated (text/JSON/JUnit/CSV)
//! - `hashing`  course and source hashes carried by proofs
//! - `lint`     lesson content without running it: README sections, hints, stub vs solution
//! - `validate` `checker validate`: lint, every solution passes, every stub fails
//! - `mutants`  `checker mutants`: mutation testing of the lessons' gap functions (docs/MUTANTS.md)
#![deny(unsafe_code)]

mod build;
mod checks;
mod cli;
mod course;
mod dictation;
mod grade;
mod hashing;
mod lint;
mod mutants;
mod pitfalls;
mod preflight;
mod procfs;
mod progress;
mod proof;
mod report;
mod run;
mod server;
mod stubs;
mod student;
mod validate;

fn main() -> std::process::ExitCode {
    server::become_subreaper();
    preflight::raise_own_file_limit();
    // Ctrl-C (or SIGTERM): no server the checker started may outlive it.
    quiet_on_closed_stdout();
    let _ = ctrlc::set_handler(|| {
        server::kill_all_live();
        eprintln!("\nchecker: interrupted; every server it started has been stopped");
        std::process::exit(130);
    });
    cli::main()
}

/// `checker show w01-l01 | head`: once the reader is gone, printing fails
/// with EPIPE (Rust ignores SIGPIPE, which the checker needs: a student's
/// server closing a socket must not kill it). Stop quietly then, with every
/// server the checker started, and the status a shell gives a tool that
/// SIGPIPE ended (128 + 13), instead of a panic and a backtrace.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            server::kill_all_live();
            std::process::exit(141);
        }
        default_hook(info);
    }));
}
