//! `oversize`: a frame longer than `--max-frame`. One client first sends a
//! frame of exactly the limit (allowed, must be echoed), then a length
//! prefix one byte over it, followed by that many bytes. The server must
//! close that connection without echoing any of it, log something to
//! stderr, stay up, and serve the next client.
//!
//! With `max_frame` set, the step starts the server with `--max-frame N`
//! (the flag is checked to be honoured); without it, the default 65536.

use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use stress::frame::{encode, DEFAULT_MAX_FRAME};

use super::frame_client::{self, Ending, Piece};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

/// How long the server may take to write its log line after the close.
const LOG_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oversize {
    /// Passed as `--max-frame N`; `None` relies on the default (65536).
    pub max_frame: Option<usize>,
    /// How long the server may take to close the connection.
    pub close_timeout_secs: u64,
    /// Flags beyond the lesson's `server_args`.
    pub args: Vec<String>,
}

impl Default for Oversize {
    fn default() -> Self {
        Oversize {
            max_frame: None,
            close_timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

impl Oversize {
    fn limit(&self) -> usize {
        self.max_frame.unwrap_or(DEFAULT_MAX_FRAME)
    }
}

impl Check for Oversize {
    fn summary(&self) -> String {
        format!(
            "a frame of {} bytes (over --max-frame {}) closes that connection only",
            self.limit() + 1,
            self.limit()
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut args = self.args.clone();
        if let Some(max) = self.max_frame {
            args.extend(["--max-frame".to_string(), max.to_string()]);
        }
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let limit = self.limit();
        let close_timeout = Duration::from_secs(self.close_timeout_secs);
        let echo_timeout = Duration::from_secs(5);

        // The first client: a frame of exactly the limit is fine.
        let mut stream = match frame_client::connect(server.addr) {
            Ok(stream) => stream,
            Err(err) => return Ok(connect_failed(&mut server, "the first client", err)),
        };
        let boundary = vec![vec![0x5au8; limit]];
        let expected = frame_client::framed(&boundary);
        ctx.log.detail(format!(
            "sending a frame of exactly {limit} bytes (allowed)"
        ));
        let exchange = frame_client::exchange(
            &mut stream,
            vec![Piece::new(expected.clone(), Duration::ZERO)],
            expected.len(),
            echo_timeout,
        );
        if !matches!(exchange.ending, Ending::Complete) || exchange.received != expected {
            let mut evidence = frame_client::describe_difference(&boundary, &exchange.received);
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(StepOutcome::fail(format!(
                "a frame of exactly --max-frame ({limit}) bytes was not echoed (the read {})",
                exchange.ending.describe()
            ))
            .cause_as(
                "oversize.limit-exclusive",
                "the limit is inclusive: reject L > max_frame, accept L == max_frame",
            )
            .evidence(evidence));
        }

        // Then one byte over the limit, on the same connection.
        std::thread::sleep(Duration::from_millis(50));
        let mark = server.output_mark();
        let over = limit + 1;
        ctx.log.detail(format!(
            "sending a length prefix of {over} (one over --max-frame {limit}), then {over} bytes"
        ));
        let oversize = encode(&vec![0xa5u8; over]);
        let writer_stream = stream.try_clone()?;
        let writer = std::thread::spawn(move || {
            let mut writer_stream = writer_stream;
            let _ = writer_stream.set_write_timeout(Some(Duration::from_secs(5)));
            // The server may close mid-way: a failed write is expected.
            let _ = std::io::Write::write_all(&mut writer_stream, &oversize);
        });
        let (received, ending) = frame_client::read_until_closed(&mut stream, close_timeout);
        let _ = writer.join();
        drop(stream);
        if !received.is_empty() {
            let mut evidence = vec![format!(
                "got back {} bytes, starting {}",
                received.len(),
                super::excerpt::hex_ascii(&received[..received.len().min(16)])
            )];
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(StepOutcome::fail(format!(
                "the server echoed {} bytes of a frame declaring {over} bytes (over --max-frame {limit})",
                received.len()
            ))
            .cause_as("oversize.echoed", "check L against --max-frame right after reading the length prefix, before reading the payload: over the limit, log it and close the connection without replying")
            .evidence(evidence));
        }
        if !ending.is_closed() {
            let what = match ending {
                Ending::TimedOut => format!(
                    "the connection was still open {} s after a frame over --max-frame",
                    self.close_timeout_secs
                ),
                other => format!(
                    "after the oversize frame, the connection {}",
                    other.describe()
                ),
            };
            return Ok(StepOutcome::fail(what)
                .cause_as("oversize.not-closed", "an oversize length must close that connection: return an error from read_frame (ErrorKind::InvalidData), log it, and drop the stream")
                .evidence(Ctx::server_evidence(&mut server)));
        }
        ctx.log.detail(format!(
            "the server {} the connection, nothing echoed",
            ending.describe()
        ));

        let logged = server.stderr_since(mark, LOG_WAIT);
        std::thread::sleep(Duration::from_millis(100));
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!("{death} after a frame over --max-frame"))
                .death_cause("oversize.error-ends-the-server", "an oversize frame ends that one connection, not the server: log it, drop that client and keep accepting (no exit, no panic, no unwrap on the error)")
                .evidence(Ctx::server_evidence(&mut server)));
        }
        if logged.is_empty() {
            return Ok(StepOutcome::fail(
                "the connection was closed, but the server wrote nothing to stderr about it",
            )
            .cause_as("oversize.not-logged", "log the rejected frame with eprintln! (its length and the limit): an operator needs to see why a client was dropped")
            .evidence(Ctx::server_evidence(&mut server)));
        }
        ctx.log.detail(format!("[server:stderr] {}", logged[0]));

        // Another client is still served.
        let mut stream = match frame_client::connect(server.addr) {
            Ok(stream) => stream,
            Err(err) => return Ok(connect_failed(&mut server, "the next client", err)),
        };
        let payloads = vec![b"still serving?".to_vec(), vec![7u8; 300]];
        let expected = frame_client::framed(&payloads);
        let exchange = frame_client::exchange(
            &mut stream,
            vec![Piece::new(expected.clone(), Duration::ZERO)],
            expected.len(),
            echo_timeout,
        );
        frame_client::close(stream);
        if !matches!(exchange.ending, Ending::Complete) || exchange.received != expected {
            let mut evidence = frame_client::describe_difference(&payloads, &exchange.received);
            evidence.extend(Ctx::server_evidence(&mut server));
            return Ok(StepOutcome::fail(format!(
                "after the oversize frame, the next client was not echoed (the read {})",
                exchange.ending.describe()
            ))
            .cause_as(
                "oversize.next-client-unserved",
                "rejecting one client's frame must leave the server serving everyone else",
            )
            .evidence(evidence));
        }
        Ok(StepOutcome::pass(format!(
            "{limit} bytes echoed; {over} bytes closed the connection unechoed and were logged; the next client was served"
        ))
        .figure("max_frame", limit)
        .proof_line(format!(
            "oversize: a frame of {over} bytes (--max-frame {limit}) closed that connection unechoed, was logged, and the next client was served"
        )))
    }
}

fn connect_failed(server: &mut Server, who: &str, err: std::io::Error) -> StepOutcome {
    StepOutcome::fail(format!("{who} could not connect to {}: {err}", server.addr))
        .cause_as(
            "oversize.stopped-accepting",
            "the server must keep accepting connections",
        )
        .evidence(Ctx::server_evidence(server))
}
