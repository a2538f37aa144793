//! `stalled_client`: one client sends half a frame (the header and part of
//! the payload) and goes silent; meanwhile other clients connect and each
//! must get every echo within a generous bound. Finally the stalled client
//! sends the rest and must get its whole frame back. A server that waits
//! (blocking) for the rest of a frame freezes everyone behind it.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StalledClient {
    /// Other clients served while the stalled one is silent.
    pub clients: usize,
    /// Frames each other client sends (one echo awaited before the next).
    pub frames: usize,
    /// Bound on each echo, in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for StalledClient {
    fn default() -> Self {
        StalledClient {
            clients: 5,
            frames: 10,
            timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

fn connect(addr: &std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, Duration::from_secs(3))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Check for StalledClient {
    fn summary(&self) -> String {
        format!(
            "one client sends half a frame and goes silent; {} others × {} frames must be echoed meanwhile",
            self.clients, self.frames
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let payload: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = stress::frame::encode(&payload);
        let half = 4 + payload.len() / 2;
        let mut staller = match connect(&server.addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(
                    StepOutcome::fail(format!("stalled client: connect failed: {err}"))
                        .cause_as(
                            "stalled_client.no-accept",
                            "the server does not accept connections",
                        )
                        .evidence(Ctx::server_evidence(&mut server)),
                )
            }
        };
        if let Err(err) = staller.write_all(&whole[..half]) {
            return Ok(
                StepOutcome::fail(format!("stalled client: sending failed: {err}"))
                    .cause_as(
                        "stalled_client.closed-on-half-a-frame",
                        "the server closed the connection on half a frame",
                    )
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        }
        ctx.log.detail(format!(
            "stalled client sent {half} of {} bytes (a frame of {} announced) and went silent",
            whole.len(),
            payload.len()
        ));
        std::thread::sleep(Duration::from_millis(300));
        let mut echoed = 0;
        for client in 1..=self.clients {
            let mut stream = match connect(&server.addr) {
                Ok(stream) => stream,
                Err(err) => {
                    return Ok(StepOutcome::fail(format!(
                        "client {client}: connect failed while a client was stalled: {err}"
                    ))
                    .cause_as(
                        "stalled_client.stopped-accepting",
                        "the server stopped accepting while one client was silent mid-frame",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
                }
            };
            for frame in 0..self.frames {
                let sent =
                    stress::frame::encode(format!("client {client} frame {frame}").as_bytes());
                let outcome = match stream.write_all(&sent) {
                    Ok(()) => read_echo(&mut stream, sent.len(), Instant::now() + timeout),
                    Err(err) => Echoed::Failed(Vec::new(), err),
                };
                let (what, got, silent) = match outcome {
                    Echoed::Complete(got) if got == sent => {
                        echoed += 1;
                        continue;
                    }
                    Echoed::Complete(got) => ("the echo differs from what was sent", got, false),
                    Echoed::Eof(got) => ("EOF before the whole echo", got, false),
                    Echoed::TimedOut(got) => ("no complete echo", got, true),
                    Echoed::Failed(got, _) => ("a reset or error", got, false),
                };
                let failed = StepOutcome::fail(format!(
                    "client {client}, frame {frame}: {what} within {} s while another client was stalled mid-frame",
                    self.timeout_secs
                ));
                // A server blocked on the stalled client's frame serves
                // nobody from the moment of the stall: no echo at all.
                let failed = if silent && echoed == 0 {
                    failed.cause_as("stalled_client.blocks-on-partial-frame", "the server waits for the rest of a frame from one client and serves nobody else meanwhile: never block on one socket; keep the partial frame in that connection's buffer and go back to poll()")
                } else {
                    failed
                };
                return Ok(failed
                    .evidence(
                        [
                            format!(
                                "stalled client: sent {half} of {} bytes, then nothing",
                                whole.len()
                            ),
                            format!(
                                "client {client}: sent {} bytes, got back {}",
                                sent.len(),
                                got.len()
                            ),
                        ]
                        .into_iter()
                        .chain(Ctx::server_evidence(&mut server)),
                    )
                    .figure("echoed_while_stalled", echoed));
            }
        }
        ctx.log.detail(format!(
            "{echoed} frames echoed to {} clients while one was stalled",
            self.clients
        ));
        // The stalled client finishes its frame: its bytes must not be lost.
        let finished = match staller.write_all(&whole[half..]) {
            Ok(()) => read_echo(&mut staller, whole.len(), Instant::now() + timeout),
            Err(err) => Echoed::Failed(Vec::new(), err),
        };
        match finished {
            Echoed::Complete(got) if got == whole => {}
            other => {
                let got = match other {
                    Echoed::Complete(g) | Echoed::Eof(g) | Echoed::TimedOut(g) => g.len(),
                    Echoed::Failed(g, _) => g.len(),
                };
                return Ok(StepOutcome::fail(format!(
                    "stalled client: after sending the rest of its {}-byte frame, got back {got} bytes instead of the whole frame",
                    whole.len()
                ))
                .cause_as("stalled_client.partial-frame-lost", "the bytes of a frame that arrived in two parts must be kept until the rest comes, then echoed whole")
                .evidence(Ctx::server_evidence(&mut server)));
            }
        }
        Ok(StepOutcome::pass(format!(
            "{echoed} frames echoed to {} clients while one client sat on half a frame; its frame echoed whole once finished",
            self.clients
        ))
        .figure("echoed_while_stalled", echoed)
        .proof_line(format!(
            "stalled_client: {echoed} frames echoed to {} clients while one was stalled mid-frame",
            self.clients
        )))
    }
}
