//! Frame codec and stress engine for the epoll echo-server course.
//!
//! The course's servers echo length-prefixed frames; this crate speaks that
//! protocol and hammers a server with it. The checker links it as a library;
//! `stress_test` is a thin command-line front end over the same engine.
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
//! - `bin/stress_test.rs`: the command line (`--port`, `--clients`,
//!   `--frames`, `--seed`, `--ladder`, ...) printing the seed lesson's
//!   summary line.

#![forbid(unsafe_code)]

pub mod frame;
pub mod plan;
pub mod report;
pub mod stress;

pub use report::{FailureDetail, FailureKind, StressReport};
pub use stress::{run_stress, run_stress_with_progress, StressConfig};
