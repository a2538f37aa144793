//! `hold`: opens `connections` connections and keeps every one of them open,
//! then each sends a frame and must get its echo while all are still held.
//! A server that serves one client at a time (a blocking loop) answers the
//! first and leaves the rest waiting. Optionally (`nonblocking: true`) every
//! client socket the server holds must have O_NONBLOCK set, read from
//! /proc/PID/fdinfo (the listening socket is not judged). Optionally
//! (`quiet_ms`) the server, all connections held and silent, must stay
//! quiet on stderr for that long: nothing happens, so at most
//! `QUIET_MAX_LINES` lines (room for a periodic status line). A loop that
//! logs WouldBlock ("nothing now") as an error writes a line every pass.
//! Optionally (`reset_one: true`) one held connection is then reset (an
//! RST) and every other one must echo a frame again: the reset is an error
//! of that connection only, and a loop that lets it out (`?`) ends the
//! server for everyone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hold {
    /// Connections opened and held at once.
    pub connections: usize,
    /// Bound on all the echoes together, in seconds.
    pub timeout_secs: u64,
    /// Also require O_NONBLOCK on every client socket of the server.
    pub nonblocking: bool,
    /// Then, everything idle, watch stderr this long (0: not judged).
    pub quiet_ms: u64,
    /// Then reset one held connection; the others must echo again.
    pub reset_one: bool,
    pub args: Vec<String>,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            connections: 100,
            timeout_secs: 10,
            nonblocking: false,
            quiet_ms: 0,
            reset_one: false,
            args: Vec::new(),
        }
    }
}

/// A held connection the server closed or reset.
const CLOSED_HELD: &str = "hold.closed-held";
const CLOSED_HELD_CAUSE: &str = "the server closed or reset a connection it should be holding";

/// Stderr lines an idle server may write in the `quiet_ms` window.
const QUIET_MAX_LINES: usize = 20;
/// Let the lines about the echoes reach the capture before the window opens.
const QUIET_SETTLE: Duration = Duration::from_millis(200);

/// The reset case: how long the server has to read the RST before the
/// others send again, and the causes of its failures.
const RESET_SETTLE: Duration = Duration::from_millis(200);
const RESET_ENDS_THE_SERVER: &str = "hold.reset-ends-the-server";
const RESET_DISTURBS_OTHERS: &str = "hold.reset-disturbs-others";
const RESET_CAUSE: &str = "a reset is an error of that one connection (ECONNRESET from its read): close that connection, keep serving the others, and never let the error end the loop (no `?` or unwrap() on one connection's error)";

/// How a held connection's echo fell short.
#[derive(Clone, Copy)]
enum Stop {
    /// Nothing more came before the deadline.
    Silent,
    /// Closed or reset by the server.
    Closed,
    /// Bytes other than those sent.
    Wrong,
}

/// How reading an expected echo ended.
pub(super) enum Echoed {
    Complete(Vec<u8>),
    Eof(Vec<u8>),
    TimedOut(Vec<u8>),
    Failed(Vec<u8>, std::io::Error),
}

/// Reads exactly `want` bytes before `deadline` (bounded), or says why not.
pub(super) fn read_echo(stream: &mut TcpStream, want: usize, deadline: Instant) -> Echoed {
    let mut received = Vec::with_capacity(want);
    let mut chunk = vec![0u8; 64 * 1024];
    while received.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Echoed::TimedOut(received);
        }
        let room = (want - received.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Echoed::Eof(received),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Echoed::TimedOut(received)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Echoed::Failed(received, e),
        }
    }
    Echoed::Complete(received)
}

/// Whether the server closed (or reset) this held connection: a peek
/// that does not wait sees its EOF or error.
fn closed_by_server(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// The inodes of listening TCP sockets on `port`, from the server's own
/// view of /proc/net/tcp and tcp6 (state 0A is LISTEN).
pub(super) fn listening_inodes(pid: Pid, port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        let path = format!("/proc/{}/{table}", pid.as_raw());
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (words.get(1), words.get(3), words.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(inode.to_string());
            }
        }
    }
    inodes
}

/// Client sockets of the server without O_NONBLOCK: `(fd, flags)`.
/// Every socket fd except the listening one is judged.
pub(super) fn blocking_client_sockets(pid: Pid, port: u16) -> Result<(usize, Vec<(i32, u32)>)> {
    let listeners = listening_inodes(pid, port);
    let mut judged = 0;
    let mut blocking = Vec::new();
    for fd in procfs::open_fds(pid)? {
        let Some(inode) = fd
            .target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        else {
            continue;
        };
        if listeners.iter().any(|l| l == inode) {
            continue;
        }
        let Ok(flags) = procfs::fd_flags(pid, fd.fd) else {
            continue; // closed meanwhile
        };
        judged += 1;
        if flags & procfs::O_NONBLOCK == 0 {
            blocking.push((fd.fd, flags));
        }
    }
    Ok((judged, blocking))
}

impl Check for Hold {
    fn summary(&self) -> String {
        format!(
            "hold {} connections open at once; every one echoes a frame while all are held{}{}{}",
            self.connections,
            if self.nonblocking {
                "; every client socket of the server non-blocking"
            } else {
                ""
            },
            if self.quiet_ms > 0 {
                format!(
                    "; then, all idle, at most {QUIET_MAX_LINES} stderr lines in {} ms",
                    self.quiet_ms
                )
            } else {
                String::new()
            },
            if self.reset_one {
                "; then one held connection resets and every other one echoes a frame again"
            } else {
                ""
            }
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut held = Vec::with_capacity(self.connections);
        for client in 1..=self.connections {
            match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    held.push(stream);
                }
                Err(err) => {
                    return Ok(StepOutcome::fail(format!(
                        "connection {client} of {}: connect failed: {err}",
                        self.connections
                    ))
                    .cause_as(
                        "hold.stopped-accepting",
                        "the server stopped accepting while holding the earlier connections",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
                }
            }
        }
        ctx.log
            .detail(format!("{} connections open, all held", held.len()));
        // Every client sends before any echo is awaited: all are waiting at once.
        let frames: Vec<Vec<u8>> = (1..=held.len())
            .map(|c| stress::frame::encode(format!("held client {c} of {}", held.len()).as_bytes()))
            .collect();
        for (i, stream) in held.iter_mut().enumerate() {
            if let Err(err) = stream.write_all(&frames[i]) {
                return Ok(StepOutcome::fail(format!(
                    "connection {}: sending a {}-byte frame failed: {err}",
                    i + 1,
                    frames[i].len()
                ))
                .cause_as(CLOSED_HELD, CLOSED_HELD_CAUSE)
                .evidence(Ctx::server_evidence(&mut server)));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs);
        let mut echoed = 0;
        for (i, stream) in held.iter_mut().enumerate() {
            let client = i + 1;
            let (what, got, ending) = match read_echo(stream, frames[i].len(), deadline) {
                Echoed::Complete(got) if got == frames[i] => {
                    echoed += 1;
                    continue;
                }
                Echoed::Complete(got) => (
                    "an echo that differs from the frame sent".to_string(),
                    got,
                    Stop::Wrong,
                ),
                Echoed::Eof(got) => (
                    "EOF: the server closed the connection".to_string(),
                    got,
                    Stop::Closed,
                ),
                Echoed::TimedOut(got) => ("no complete echo".to_string(), got, Stop::Silent),
                Echoed::Failed(got, err) => {
                    (format!("a reset or error ({err})"), got, Stop::Closed)
                }
            };
            let failed = StepOutcome::fail(format!(
                "connection {client} of {}: {what} within {} s while all {} connections were held ({echoed} echoed)",
                held.len(),
                self.timeout_secs,
                held.len()
            ));
            // What the clients saw says which: one connection served and the
            // next one waiting is one client at a time; none served, a loop
            // stuck in a blocking call; a closed one, a connection not kept.
            let failed = match (ending, echoed) {
                (Stop::Silent, 0) => failed.cause_as("hold.stuck-in-a-blocking-call", "no held connection was echoed: the server is probably stuck in a blocking call (accept() waiting for one more client, or read() on one socket). Make the listener and every client socket non-blocking and treat WouldBlock as \"nothing now, go on\""),
                (Stop::Silent, 1) => failed.cause_as("hold.one-at-a-time", "the server serves one client at a time: a blocking read on one connection keeps the others waiting. Make every socket non-blocking and visit all of them in one loop"),
                (Stop::Silent, _) => failed.cause_as("hold.served-only-some", format!("the server stopped serving after {echoed} of the held connections: every connection it holds must be visited by its loop, however many are open")),
                (Stop::Closed, _) => failed.cause_as(CLOSED_HELD, CLOSED_HELD_CAUSE),
                (Stop::Wrong, _) => failed,
            };
            return Ok(failed
                .evidence(
                    std::iter::once(format!(
                        "sent {} bytes ({:?}); got back {} bytes",
                        frames[i].len(),
                        String::from_utf8_lossy(&frames[i][4..]),
                        got.len()
                    ))
                    .chain(Ctx::server_evidence(&mut server)),
                )
                .figure("echoed_while_held", echoed));
        }
        ctx.log
            .detail(format!("{echoed} of {} echoed while all held", held.len()));
        let mut proof = vec![format!(
            "hold: {} connections held at once, {echoed} echoed while all were open",
            held.len()
        )];
        if self.nonblocking {
            let (judged, blocking) = blocking_client_sockets(server.pid, server.addr.port())?;
            if judged < held.len() {
                // Closed after its echo, the client sees the EOF: say so.
                let closed = held.iter().filter(|s| closed_by_server(s)).count();
                if closed > 0 {
                    return Ok(StepOutcome::fail(format!(
                        "the server closed {closed} of the {} held connections after their echo (it holds {judged} client sockets)",
                        held.len()
                    ))
                    .cause_as(CLOSED_HELD, CLOSED_HELD_CAUSE)
                    .evidence(Ctx::server_evidence(&mut server)));
                }
                return Ok(StepOutcome::fail(format!(
                    "the server holds {judged} client sockets, but {} connections are open",
                    held.len()
                ))
                .cause_as("hold.sockets-not-kept", "every accepted connection must stay open (its socket kept) until the client leaves")
                .evidence(Ctx::server_evidence(&mut server)));
            }
            if let Some((fd, flags)) = blocking.first() {
                return Ok(StepOutcome::fail(format!(
                    "{} of {judged} client sockets of the server are blocking (no O_NONBLOCK)",
                    blocking.len()
                ))
                .cause_as("hold.blocking-sockets", "call set_nonblocking(true) on every accepted TcpStream: a blocking read or write on one client can freeze the whole loop")
                .evidence(
                    std::iter::once(format!(
                        "/proc/{}/fdinfo/{fd}: flags: 0{flags:o} (O_NONBLOCK is 04000)",
                        server.pid
                    ))
                    .chain(Ctx::server_evidence(&mut server)),
                ));
            }
            ctx.log
                .detail(format!("{judged} client sockets, all with O_NONBLOCK"));
            proof.push(format!(
                "hold: {judged} client sockets of the server, all O_NONBLOCK"
            ));
        }
        if self.quiet_ms > 0 {
            std::thread::sleep(QUIET_SETTLE);
            let mark = server.output_mark();
            std::thread::sleep(Duration::from_millis(self.quiet_ms));
            let logged = server.stderr_since(mark, Duration::ZERO);
            if logged.len() > QUIET_MAX_LINES {
                return Ok(StepOutcome::fail(format!(
                    "{} stderr lines in {} ms while all {} connections were held and silent (at most {QUIET_MAX_LINES})",
                    logged.len(),
                    self.quiet_ms,
                    held.len()
                ))
                .cause_as("hold.logs-while-idle", "the server logs while nothing happens: WouldBlock from accept() or read() means \"nothing now\", an arm of its own before the catch-all Err that logs real errors")
                .evidence(Ctx::server_evidence(&mut server))
                .figure("idle_stderr_lines", logged.len()));
            }
            ctx.log.detail(format!(
                "{} stderr lines in {} ms of quiet",
                logged.len(),
                self.quiet_ms
            ));
            proof.push(format!(
                "hold: {} stderr lines in {} ms with every connection idle",
                logged.len(),
                self.quiet_ms
            ));
        }
        let count = held.len();
        if self.reset_one && count >= 2 {
            match reset_one(&mut server, held, self.timeout_secs) {
                Ok(line) => {
                    ctx.log.detail(line.clone());
                    proof.push(line);
                }
                Err(failed) => return Ok(*failed),
            }
        }
        let mut outcome = StepOutcome::pass(format!(
            "{count} connections held at once, every one echoed"
        ))
        .figure("echoed_while_held", echoed);
        for line in proof {
            outcome = outcome.proof_line(line);
        }
        Ok(outcome)
    }
}

/// The reset case: the first held connection resets (SO_LINGER 0, then
/// close: an RST), and once the server has had time to read it, every other
/// one sends a frame again and must get its echo. `Ok` is the proof line.
fn reset_one(
    server: &mut crate::server::Server,
    mut held: Vec<TcpStream>,
    timeout_secs: u64,
) -> std::result::Result<String, Box<StepOutcome>> {
    let others = held.len() - 1;
    super::disconnects::reset(held.remove(0));
    std::thread::sleep(RESET_SETTLE);
    let frames: Vec<Vec<u8>> = (2..=others + 1)
        .map(|c| stress::frame::encode(format!("held client {c}, after client 1 reset").as_bytes()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut echoed = 0;
    for (i, stream) in held.iter_mut().enumerate() {
        let client = i + 2;
        let sent = stream.write_all(&frames[i]);
        let what = match sent {
            Err(err) => format!("sending a {}-byte frame failed: {err}", frames[i].len()),
            Ok(()) => match read_echo(stream, frames[i].len(), deadline) {
                Echoed::Complete(got) if got == frames[i] => {
                    echoed += 1;
                    continue;
                }
                Echoed::Complete(_) => "an echo that differs from the frame sent".to_string(),
                Echoed::Eof(got) if got.is_empty() => "EOF, the server closed it".to_string(),
                Echoed::Eof(got) => format!("EOF after {} bytes of the echo", got.len()),
                Echoed::TimedOut(got) => format!(
                    "no complete echo within {timeout_secs} s ({} bytes)",
                    got.len()
                ),
                Echoed::Failed(got, err) => {
                    format!("a reset or error ({err}) after {} bytes", got.len())
                }
            },
        };
        let message = format!(
            "connection {client}: {what}, once connection 1 had reset ({echoed} of the other {others} echoed again)"
        );
        // The death is the verdict, and the reset explains it.
        let failed = match server.death_notice_within(Duration::from_millis(200)) {
            Some(death) => StepOutcome::fail(message)
                .death_cause(RESET_ENDS_THE_SERVER, RESET_CAUSE)
                .evidence(std::iter::once(death).chain(server.output_tail(20))),
            None => StepOutcome::fail(message)
                .cause_as(RESET_DISTURBS_OTHERS, RESET_CAUSE)
                .evidence(Ctx::server_evidence(server)),
        };
        return Err(Box::new(failed.figure("echoed_after_reset", echoed)));
    }
    Ok(format!(
        "hold: connection 1 reset, the other {others} echoed again"
    ))
}
