//! End-to-end tests: the real `checker`, `stress_test` and `broken_server`
//! binaries, real sockets and real child processes.
//!
//! - `support`       running the checker, and proving no process outlives it
//! - `course_yaml`   a malformed course.yaml is exit 2, naming file, lesson and field
//! - `first_lesson`  w01-l01: the solution passes, the stub and a one-client server fail
//! - `seed_lesson`   w02-l16: solution, stub, socat, and the proof block's grading
//! - `hostile`       servers that never listen, crash or hang get a bounded verdict
//! - `stress_tool`   stress_test catches merged frames and passes a correct server

mod support;

mod course_yaml;
mod first_lesson;
mod hostile;
mod seed_lesson;
mod stress_tool;
