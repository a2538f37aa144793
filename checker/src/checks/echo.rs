//! `echo`: clients connect one after another, each sending a few frames and
//! reading each echo before the next. Catches a missing or wrong echo and a
//! server that stops after its first client. A raw byte echo passes too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::excerpt;
use super::{Check, Ctx};
use crate::report::StepOutcome;

/// How long one echo may take before the step fails.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Echo {
    /// Clients, connected one after another (each closes before the next).
    pub clients: usize,
    /// Frames each client sends.
    pub frames: usize,
    pub args: Vec<String>,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            clients: 1,
            frames: 6,
            args: Vec::new(),
        }
    }
}

/// How reading an expected echo ended.
enum Ending {
    Complete,
    Eof,
    TimedOut,
    Failed(std::io::Error),
}

impl Check for Echo {
    fn summary(&self) -> String {
        format!(
            "{} client(s) one after another, {} frames each, every echo checked",
            self.clients, self.frames
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let mut echoed = 0usize;
        for client in 1..=self.clients {
            let mut stream = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(2))
            {
                Ok(stream) => stream,
                Err(err) => {
                    let (id, why) = if client > 1 {
                        ("echo.stopped-accepting", "the server stopped accepting after its earlier clients: keep accepting in a loop, and don't let one client's end end the server")
                    } else {
                        ("echo.no-accept", "the server does not accept connections")
                    };
                    return Ok(StepOutcome::fail(format!(
                        "client {client}: connect failed: {err}"
                    ))
                    .cause_as(id, why)
                    .evidence(Ctx::server_evidence(&mut server)));
                }
            };
            stream.set_nodelay(true)?;
            ctx.log.detail(format!("client {client} connected"));
            for frame in 0..self.frames {
                let payload = payload_for(client, frame, &mut rng);
                let sent = stress::frame::encode(&payload);
                if let Err(err) = stream.write_all(&sent) {
                    return Ok(StepOutcome::fail(format!(
                        "client {client}, frame {frame}: sending {} bytes failed: {err}",
                        sent.len()
                    ))
                    .cause_as("echo.closed-while-sending", "the server closed or reset the connection before the client finished sending")
                    .evidence(Ctx::server_evidence(&mut server)));
                }
                let (received, ending) = read_exactly(&mut stream, sent.len(), ECHO_TIMEOUT);
                let failure = match ending {
                    Ending::Complete if received == sent => None,
                    Ending::Complete => Some((
                        "the echo differs from what was sent",
                        "echo.wrong-bytes",
                        "the server must send back exactly the bytes it received, in order",
                    )),
                    Ending::Eof => Some((
                        "the server closed the connection before echoing everything",
                        "echo.closed-early",
                        "keep reading and echoing until read() returns 0 (the client closed)",
                    )),
                    // Nothing came back because nobody took the connection:
                    // it still waits in the listen queue (no socket file).
                    Ending::TimedOut
                        if received.is_empty() && waits_in_accept_queue(&server, &stream) =>
                    {
                        Some((
                            "no complete echo within 5 s",
                            "echo.never-accepted",
                            "the server never accepted the connection: it still waits in the listen queue. Call accept() in a loop and serve each connection it returns",
                        ))
                    }
                    Ending::TimedOut => Some((
                        "no complete echo within 5 s",
                        "echo.no-echo",
                        "write back every chunk you read (write_all), right away",
                    )),
                    Ending::Failed(err) => Some((
                        if err.kind() == std::io::ErrorKind::ConnectionReset {
                            "the server reset the connection before echoing everything"
                        } else {
                            "reading the echo failed"
                        },
                        "echo.reset",
                        "a server must not drop a client it is still echoing to",
                    )),
                };
                if let Some((what, id, cause)) = failure {
                    let mut evidence = vec![format!(
                        "sent a frame of {} payload bytes ({} bytes on the wire); got back {} bytes",
                        payload.len(),
                        sent.len(),
                        received.len()
                    )];
                    evidence.extend(excerpt::compare(&sent, &received));
                    evidence.extend(Ctx::server_evidence(&mut server));
                    return Ok(StepOutcome::fail(format!(
                        "client {client}, frame {frame}: {what}"
                    ))
                    .cause_as(id, cause)
                    .evidence(evidence));
                }
                echoed += 1;
            }
            ctx.log.detail(format!(
                "client {client}: {} frames echoed, closing",
                self.frames
            ));
        }
        Ok(StepOutcome::pass(format!(
            "{} clients one after another, {echoed} frames echoed exactly",
            self.clients
        ))
        .figure("frames_echoed", echoed)
        .proof_line(format!(
            "echo: {} clients in turn, {echoed} frames echoed exactly",
            self.clients
        )))
    }
}

/// Whether the server's end of `stream` is still in the listen queue (a
/// connection no process has accepted has no socket file: inode 0).
fn waits_in_accept_queue(server: &crate::server::Server, stream: &TcpStream) -> bool {
    let Ok(local) = stream.local_addr() else {
        return false;
    };
    let client = std::net::SocketAddr::new(local.ip().to_canonical(), local.port());
    crate::procfs::tcp_sockets(server.pid)
        .iter()
        .any(|socket| socket.remote == client && socket.inode == 0)
}

/// The first frame of each client is readable text; the rest are seeded
/// bytes of assorted sizes, including an empty frame and one of 64 KiB.
fn payload_for(client: usize, frame: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    const SIZES: [usize; 6] = [0, 1, 300, 4096, 65536, 17];
    if frame == 0 {
        return format!("hello from client {client}").into_bytes();
    }
    let len = SIZES[(frame - 1) % SIZES.len()];
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// Reads until `want` bytes arrived, EOF, an error, or the timeout.
fn read_exactly(stream: &mut TcpStream, want: usize, timeout: Duration) -> (Vec<u8>, Ending) {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::with_capacity(want);
    let mut chunk = vec![0u8; 64 * 1024];
    while received.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (received, Ending::TimedOut);
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return (received, Ending::TimedOut);
        }
        let room = (want - received.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return (received, Ending::Eof),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (received, Ending::TimedOut)
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return (received, Ending::Failed(err)),
        }
    }
    (received, Ending::Complete)
}
