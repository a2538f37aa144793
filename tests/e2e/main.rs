//! End-to-end tests: the real `checker`, `stress_test` and `broken_server`
//! binaries, real sockets and real child processes.
//!
//! - `support`       running the checker, and proving no process outlives it
//! - `course_yaml`   a malformed course.yaml is exit 2, naming file, lesson and field
//! - `first_lesson`  w01-l01: the solution passes, the stub and a one-client server fail
//! - `golden`        `checker validate` over the course, its transcripts against tests/golden/ (GOLDEN_RECORD=1 refreshes)
//! - `grading`       `checker grade`: a class of pastes, every format, edits and --repo/--rerun
//! - `seed_lesson`   w02-l16: solution, stub, socat, and the proof block's grading
//! - `blocking_track` w01-l02..l04: frames, oversize, concurrency and pool probes vs broken blocking servers
//! - `hostile`       servers that never listen, crash or hang get a bounded verdict
//! - `closing_track` w02-l09..l11: disconnects, fd leak, capacity and broken-pipe probes vs broken closing servers
//! - `poll_track`    w02-l05..l08: poll-server probes (hold, process, idle CPU, stalls, slow readers)
//! - `student`       next, show, hint, list, reset and watch (under tmux) on a one-lesson course
//! - `valgrind`      the final server under valgrind memcheck: no leaks, no memory errors (spec N3)
//! - `stress_tool`   stress_test catches merged frames and passes a correct server
//! - `epoll_track`   w03-l17/l18: epoll, EPOLLET, burst and connect-burst probes vs broken epoll servers
//! - `robust_track` w02-l12..l15: backpressure, bad-input, idle-timeout and stress-client probes vs broken robust servers and clients
//! - `final_track`   w03-l19..l22: partial writes, C10K, stats and shutdown probes vs broken final servers
//! - `perf_track`    w04-l23: req/s beside the reference in the same run, fds and RSS across loadtests vs broken perf servers
//! - `production_track` w04-l24..l26: multi-loop (SO_REUSEPORT), HTTP, HTTP-load (and siege) and broadcast probes vs broken production servers

mod support;

mod blocking_track;
mod closing_track;
mod course_yaml;
mod epoll_track;
mod final_track;
mod first_lesson;
mod golden;
mod grading;
mod hostile;
mod perf_track;
mod poll_track;
mod production_track;
mod robust_track;
mod seed_lesson;
mod stress_tool;
mod student;
mod valgrind;
