//! End-to-end tests: the real `checker`, `stress_test` and `broken_server`
//! binaries, real sockets and real child processes.
//!
//! - `support`       running the checker, and proving no process outlives it
//! - `course_yaml`   a malformed course.yaml is exit 2, naming file, lesson and field
//! - `first_lesson`  w01-l01: the solution passes, the stub and a one-client server fail
//! - `grading`       `checker grade`: a class of pastes, every format, edits and --repo/--rerun
//! - `seed_lesson`   w02-l16: solution, stub, socat, and the proof block's grading
//! - `blocking_track` w01-l02..l04: frames, oversize, concurrency and pool probes vs broken blocking servers
//! - `hostile`       servers that never listen, crash or hang get a bounded verdict
//! - `poll_track`    w02-l05..l08: poll-server probes (hold, process, idle CPU, stalls, slow readers)
//! - `student`       next, show, hint, list, reset and watch (under tmux) on a one-lesson course
//! - `stress_tool`   stress_test catches merged frames and passes a correct server
//! - `epoll_track`   w03-l17/l18: epoll, EPOLLET, burst and connect-burst probes vs broken epoll servers

mod support;

mod blocking_track;
mod course_yaml;
mod first_lesson;
mod grading;
mod hostile;
mod poll_track;
mod seed_lesson;
mod stress_tool;
mod student;
mod epoll_track;
