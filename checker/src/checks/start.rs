//! `start`: the server starts, prints `listening on <ip>:<port>` with the
//! port it really bound, accepts a connection, and is still running.

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
        // A server that accepts once and then dies is caught here, not later.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail(format!("{death} right after a client connected"))
                    .cause("the server must keep running until it is stopped")
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        }
        if let Err(err) = connected {
            return Ok(
                StepOutcome::fail(format!("connecting to {} failed: {err}", server.addr))
                    .cause("the listening line was printed but the socket does not accept")
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
