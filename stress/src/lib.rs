//! Frame codec, stress engine and load generator for the epoll echo-server
//! course.
//!
//! The course's servers echo length-prefixed frames; this crate speaks that
//! protocol and hammers a server with it. The checker links it as a library;
//! `stress_test` and `loadtest` are thin command-line front ends over the
//! same engines.
//!
//! # Layout
//!
//! - [`frame`]: the wire protocol. Encoding, [`read_frame`](frame::read_frame)
//!   for blocking readers, and [`FrameDecoder`](frame::FrameDecoder) for
//!   callers that get bytes in arbitrary pieces.
//! - [`plan`]: what each client will send — payload sizes, pipelined bursts,
//!   where writes are split, payload bytes — derived from the seed alone, so
//!   a seed replays a run exactly.
//! - [`stress`]: the engine. Runs the clients concurrently against a server,
//!   verifies every echo, retries refused connections and bounds everything
//!   by one timeout.
//! - [`report`]: what a run found: [`StressReport`] and its per-client
//!   [`FailureDetail`]s, worded for a student.
//! - [`load`] (Linux): the load generator. One thread's epoll loop drives
//!   up to tens of thousands of connections, one request (frame) outstanding
//!   on each, closed loop or at a fixed rate with coordinated omission
//!   corrected; latencies in an HDR histogram, every echo verified, connects
//!   ramped in batches with retries, its own CPU use measured.
//!   [`run_load`] takes a [`LoadConfig`] and returns a [`LoadReport`].
//! - `bin/stress_test.rs`: the command line (`--port`, `--clients`,
//!   `--frames`, `--seed`, `--ladder`, ...) printing the seed lesson's
//!   summary line.
//! - `bin/loadtest.rs`: the command line `loadtest -c CONNECTIONS
//!   -r REQUESTS HOST:PORT` (or `-d DURATION`, `--rate`, `--size`, `--json`)
//!   printing the spec's load-test results; exit 0 only with no errors and
//!   every connection echoed.

#![forbid(unsafe_code)]

pub mod frame;
#[cfg(target_os = "linux")]
pub mod load;
pub mod plan;
pub mod report;
pub mod stress;

pub use report::{FailureDetail, FailureKind, StressReport};
pub use stress::{run_stress, run_stress_with_progress, StressConfig};

#[cfg(target_os = "linux")]
pub use load::{run_load, run_load_with_progress, LoadConfig, LoadReport, LoadStop};
