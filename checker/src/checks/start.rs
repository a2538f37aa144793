//! `start`: the server starts, prints `listening on <ip>:<port>` with the
//! port it really bound, accepts a connection, and is still running.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Start {
    /// Flags beyond the lesson's `server_args`.
    pub args: Vec<String>,
}

impl Check for Start {
    fn summary(&self) -> String {
        "start the server and read its listening line".into()
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let connected = TcpStream::connect_timeout(&server.addr, Duration::from_secs(2));
        // A server that accepts once and then dies, or whose thread for the
        // client panics, is caught here, not at a later step by chance: a
        // correct server keeps a silent client's connection open.
        // The checker's own readiness check (a connection, closed at once)
        // was the server's first client: a server that ends after it can
        // be gone before this connect, which is then refused.
        let dropped = connected.as_ref().map_or(true, |stream| {
            closed_within(stream, Duration::from_millis(300))
        });
        if dropped {
            server.wait_for_trouble(Duration::from_secs(2));
        }
        if let Some(death) = server.death_notice() {
            let failed = StepOutcome::fail(format!("{death} right after a client connected"));
            // Stopped by the checker (its memory): the notice says why; the
            // server did not end itself.
            let failed = if death.starts_with("the checker stopped the server") {
                failed
            } else {
                failed.death_cause(
                    "start.exits-after-a-client",
                    "the server must keep running until it is stopped",
                )
            };
            return Ok(failed.evidence(Ctx::server_evidence(&mut server)));
        }
        if let Err(err) = connected {
            return Ok(
                StepOutcome::fail(format!("connecting to {} failed: {err}", server.addr))
                    .cause_as(
                        "start.no-accept",
                        "the listening line was printed but the socket does not accept",
                    )
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        }
        Ok(StepOutcome::pass(format!(
            "listening on {}, accepted a connection",
            server.addr
        ))
        .proof_line("start: listening line read, connection accepted"))
    }
}

/// Whether the server closed (or reset) the connection within `limit`,
/// while the checker sent nothing.
fn closed_within(mut stream: &TcpStream, limit: Duration) -> bool {
    if stream.set_read_timeout(Some(limit)).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
