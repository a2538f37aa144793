//! `echo`: clients connect one after another, each sending a few frames and
//! reading each echo before the next. Catches a missing or wrong echo and a
//! server that stops after its first client. A raw byte echo passes too.
//!
//! Two more cases a lesson may ask for (both off by default):
//! - `reset_client`: between the first client and the second, a client
//!   sends a frame, reads its echo and resets the connection (RST, SO_LINGER
//!   0). The server's next read on it fails with ECONNRESET; the clients
//!   after it must still be served, because one client's error ends that
//!   client only.
//! - `short_writes: N`: after the clients, one more connects with a small
//!   receive window and sends frames without reading until the server's
//!   writes back up (a thread of it blocked in a send call, /proc/PID/task/
//!   TID/syscall, and nothing more taken for 100 ms; at most
//!   `short_write_kib` KiB). Then the server is stopped (SIGSTOP) and
//!   continued (SIGCONT) N times, each time once it is blocked in a send
//!   again (waiting up to 200 ms), the client reading a few KiB after each. A blocking send that a stop
//!   signal interrupts after it copied some bytes returns that count (a
//!   short write; with nothing copied yet, Linux restarts the call: no
//!   EINTR without a handler or SO_SNDTIMEO). A server that takes a write's
//!   count for the whole buffer leaves a hole in the echo; the echo must
//!   come back whole.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{killpg, Signal};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::excerpt;
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

/// How long one echo may take before the step fails.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Echo {
    /// Clients, connected one after another (each closes before the next).
    pub clients: usize,
    /// Frames each client sends.
    pub frames: usize,
    /// A client that resets its connection after its echo, between the
    /// first client and the second (needs `clients` of 2 or more).
    pub reset_client: bool,
    /// Times the server is stopped and continued while it writes the echo
    /// of a client that sent before reading (0: no such client).
    pub short_writes: usize,
    /// The most that client sends before reading, in KiB: it stops once
    /// the server's writes back up (a few MiB on loopback).
    pub short_write_kib: usize,
    pub args: Vec<String>,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            clients: 1,
            frames: 6,
            reset_client: false,
            short_writes: 0,
            short_write_kib: 32768,
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

/// A failed exchange, before it becomes the step's outcome.
struct Failure {
    message: String,
    cause: Option<(&'static str, String)>,
    evidence: Vec<String>,
}

impl Failure {
    fn new(message: String, id: &'static str, cause: &str, evidence: Vec<String>) -> Self {
        Failure {
            message,
            cause: Some((id, cause.to_string())),
            evidence,
        }
    }

    fn outcome(self) -> StepOutcome {
        let failed = StepOutcome::fail(self.message);
        let failed = match self.cause {
            Some((id, cause)) => failed.cause_as(id, cause),
            None => failed,
        };
        failed.evidence(self.evidence)
    }
}

const CLIENT_ERROR_ENDS_THE_SERVER: &str = "echo.client-error-ends-the-server";
const STUCK_ON_CLOSED_CLIENT: &str = "echo.stuck-on-closed-client";
const SHORT_WRITE: &str = "echo.short-write";

impl Check for Echo {
    fn summary(&self) -> String {
        let mut summary = format!(
            "{} client(s) one after another, {} frames each, every echo checked",
            self.clients, self.frames
        );
        if self.reset_client {
            summary.push_str(
                "; a client that resets its connection after its echo, before the second",
            );
        }
        if self.short_writes > 0 {
            summary.push_str(&format!(
                "; then a client that sends until the server's writes back up, before reading: its echo must come back whole while the server is stopped and continued {} times as it writes",
                self.short_writes
            ));
        }
        summary
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        if self.reset_client && self.clients < 2 {
            anyhow::bail!("echo: `reset_client` needs `clients` of 2 or more (the clients after the reset prove the server survived it)");
        }
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let mut echoed = 0usize;
        let mut reset_before = false;
        for client in 1..=self.clients {
            let who = format!("client {client}");
            let served = self.serve_client(ctx, &mut server, &who, client, &mut rng);
            match served {
                Ok(()) => {}
                Err(failure) if reset_before => {
                    return Ok(after_the_reset(&mut server, failure));
                }
                Err(failure) => return Ok(failure.outcome()),
            }
            echoed += self.frames;
            reset_before = false;
            if client == 1 && self.reset_client {
                if let Err(failure) = resetting_client(&mut server) {
                    return Ok(failure.outcome());
                }
                ctx.log
                    .detail("a client reset its connection after its echo");
                reset_before = true;
            }
        }
        let mut message = format!(
            "{} clients one after another, {echoed} frames echoed exactly",
            self.clients
        );
        let mut proof = vec![format!(
            "echo: {} clients in turn, {echoed} frames echoed exactly",
            self.clients
        )];
        if self.reset_client {
            message.push_str("; the clients after one that reset its connection were served");
            proof.push(
                "echo: a client reset its connection after its echo; the clients after it were served"
                    .into(),
            );
        }
        let mut figures = vec![("frames_echoed", echoed)];
        if self.short_writes > 0 {
            let (kib, stops, mid_send) = match self.short_write_case(ctx, &mut server, &mut rng)? {
                Ok(done) => done,
                Err(failure) => return Ok(failure.outcome()),
            };
            message.push_str(&format!(
                "; {kib} KiB sent before reading came back whole through {stops} stops of the server ({mid_send} in a write)"
            ));
            proof.push(format!(
                "echo: {kib} KiB sent before reading, echoed exactly while the server was stopped and continued {stops} times ({mid_send} in a write)"
            ));
            figures.push(("short_write_kib", kib));
            figures.push(("stops_in_a_write", mid_send));
        }
        let mut passed = StepOutcome::pass(message);
        for (name, value) in figures {
            passed = passed.figure(name, value);
        }
        for line in proof {
            passed = passed.proof_line(line);
        }
        Ok(passed)
    }
}

impl Echo {
    /// One client's frames, each echo read and judged.
    fn serve_client(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
        who: &str,
        client: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(), Failure> {
        let mut stream = connect(server, who, client > 1)?;
        ctx.log.detail(format!("{who} connected"));
        for frame in 0..self.frames {
            let payload = payload_for(client, frame, rng);
            exchange(server, &mut stream, who, frame, &payload)?;
        }
        ctx.log
            .detail(format!("{who}: {} frames echoed, closing", self.frames));
        Ok(())
    }

    /// The short-write case (see the module doc): `Ok` with the KiB sent,
    /// the stops and those that found the server in a send call; a
    /// `Failure` when the echo did not come back whole; `Err` only for the
    /// checker's own trouble.
    fn short_write_case(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
        rng: &mut ChaCha8Rng,
    ) -> Result<Result<(usize, usize, usize), Failure>> {
        let who = "the client that sends before reading";
        let mut stream = match connect_small_window(server.addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(Err(Failure::new(
                    format!("{who}: connect failed: {err}"),
                    "echo.stopped-accepting",
                    "the server stopped accepting after its earlier clients: keep accepting in a loop, and don't let one client's end end the server",
                    Ctx::server_evidence(server),
                )))
            }
        };
        let writer = Writer::start(
            &stream,
            self.short_write_kib * 1024,
            ChaCha8Rng::seed_from_u64(rng.random()),
        )?;
        ctx.log.detail(format!(
            "{who}: sending frames of {SHORT_WRITE_PAYLOAD} bytes, reading nothing, until the server stops reading"
        ));
        let blocked_in_a_send = writer.until_the_server_backs_up(server);
        ctx.log.detail(format!(
            "{} KiB sent; the server {}",
            writer.sent() / 1024,
            if blocked_in_a_send {
                "is blocked in a write"
            } else {
                "stopped reading"
            }
        ));
        let mut received = Vec::new();
        let mut ending = None;
        let (mut stops, mut stops_mid_send) = (0, 0);
        for round in 0..self.short_writes {
            if wait_for_a_blocked_send(server, Duration::from_millis(200)) {
                stops_mid_send += 1;
            }
            if !stop_and_continue(server)? {
                break;
            }
            stops += 1;
            // What the server has to echo: every frame written whole.
            let want = (3000 * (1 + round % 7) + 1000 * round)
                .min(writer.sent().saturating_sub(received.len()));
            if want == 0 {
                break;
            }
            let (got, end) = read_exactly(&mut stream, want, ECHO_TIMEOUT);
            received.extend_from_slice(&got);
            if !matches!(end, Ending::Complete) {
                ending = Some(end);
                break;
            }
        }
        let sent = writer.finish();
        let total = sent.len();
        ctx.log.detail(format!(
            "the server was stopped and continued {stops} times ({stops_mid_send} while blocked in a write); reading the rest of {} KiB",
            total / 1024
        ));
        // The rest, for as long as it keeps coming.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ending.is_none() && received.len() < total {
            let (got, end) =
                read_exactly(&mut stream, total - received.len(), Duration::from_secs(2));
            let progressed = !got.is_empty();
            received.extend_from_slice(&got);
            match end {
                Ending::Complete => {}
                Ending::TimedOut if progressed && Instant::now() < deadline => {}
                other => ending = Some(other),
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        if received.len() > total {
            received.truncate(total + 1);
        }
        if received == sent {
            return Ok(Ok((total / 1024, stops, stops_mid_send)));
        }
        let frames = total / (SHORT_WRITE_PAYLOAD + 4);
        let mut evidence = vec![format!(
            "sent {frames} frames ({total} bytes) before reading; the server was stopped and continued {stops} times ({stops_mid_send} while blocked in a write), the client reading a few KiB after each; got back {} bytes",
            received.len()
        )];
        evidence.extend(excerpt::compare(&sent, &received));
        let at = excerpt::first_difference(&sent, &received).unwrap_or(received.len());
        let failure = if at < received.len() {
            match skipped_bytes(&sent, &received, at) {
                Some(skip) => {
                    evidence.insert(1, format!(
                        "bytes {at}..{} of what was sent are missing from the echo; what follows them came back",
                        at + skip
                    ));
                    evidence.extend(Ctx::server_evidence(server));
                    Failure::new(
                        format!("{who}: the echo has a hole: {skip} bytes from byte {at} on never came back"),
                        SHORT_WRITE,
                        "a write that took only part of its buffer (a short write: the send buffer was full and the server was stopped and continued) was taken as complete, so the rest of that buffer was never sent. A write returns how many bytes it took: send the rest too, until none are left (write_all does)",
                        evidence,
                    )
                }
                None => {
                    evidence.extend(Ctx::server_evidence(server));
                    Failure::new(
                        format!("{who}: the echo differs from what was sent at byte {at}"),
                        "echo.wrong-bytes",
                        "the server must send back exactly the bytes it received, in order",
                        evidence,
                    )
                }
            }
        } else {
            let got = received.len();
            evidence.extend(Ctx::server_evidence(server));
            match ending {
                Some(Ending::Eof) => Failure::new(
                    format!("{who}: the server closed the connection after echoing {got} of {total} bytes"),
                    "echo.closed-early",
                    "keep reading and echoing until read() returns 0 (the client closed)",
                    evidence,
                ),
                Some(Ending::Failed(err)) => Failure::new(
                    format!("{who}: the connection failed after {got} of {total} bytes came back: {err}"),
                    "echo.reset",
                    "a server must not drop a client it is still echoing to",
                    evidence,
                ),
                // Nothing more for 2 s: the server stalled, for a reason
                // this case cannot tell.
                _ => Failure {
                    message: format!(
                        "{who}: no more echo after {got} of {total} bytes (nothing for 2 s)"
                    ),
                    cause: None,
                    evidence,
                },
            }
        };
        Ok(Err(failure))
    }
}

/// The short-write case's sending side: a thread writing seeded frames,
/// reading nothing, until told to stop or `cap` bytes are out.
struct Writer {
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(stream: &TcpStream, cap: usize, mut rng: ChaCha8Rng) -> Result<Writer> {
        let mut out = stream.try_clone()?;
        out.set_write_timeout(Some(Duration::from_secs(20)))?;
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut written = 0;
                while written < cap && !stop.load(Ordering::SeqCst) {
                    let payload: Vec<u8> = (0..SHORT_WRITE_PAYLOAD)
                        .map(|_| rng.random::<u8>())
                        .collect();
                    let frame = stress::frame::encode(&payload);
                    if out.write_all(&frame).is_err() {
                        return;
                    }
                    written += frame.len();
                    if let Ok(mut sent) = sent.lock() {
                        sent.extend_from_slice(&frame);
                    }
                }
            })
        };
        Ok(Writer { sent, stop, thread })
    }

    /// Bytes written whole so far.
    fn sent(&self) -> usize {
        self.sent.lock().map(|sent| sent.len()).unwrap_or(0)
    }

    /// Waits (at most 10 s) until the server's writes back up: a thread of
    /// it blocked in a send call while this writer made no progress for
    /// 100 ms (`true`), or no progress for 1 s, or the cap reached. Then
    /// tells the writer to stop after its current frame.
    fn until_the_server_backs_up(&self, server: &Server) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.sent();
        let mut still_since = Instant::now();
        let mut blocked = false;
        while Instant::now() < deadline && !self.thread.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sent();
            if now != last {
                last = now;
                still_since = Instant::now();
                continue;
            }
            let still = still_since.elapsed();
            blocked = in_a_send(server);
            if (blocked && still >= Duration::from_millis(100)) || still >= Duration::from_secs(1) {
                break;
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        blocked
    }

    /// Stops the writer, once its current frame is out, and returns what it
    /// sent. The client has read a little by now, so that frame leaves.
    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Syscall numbers of the calls that send on a socket (write, writev,
/// sendto, sendmsg).
#[cfg(target_arch = "x86_64")]
const SEND_SYSCALLS: &[i64] = &[1, 20, 44, 46];
#[cfg(target_arch = "aarch64")]
const SEND_SYSCALLS: &[i64] = &[64, 66, 206, 211];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SEND_SYSCALLS: &[i64] = &[];

/// Whether a thread of the server is blocked in a send call.
fn in_a_send(server: &Server) -> bool {
    crate::procfs::blocked_syscalls(server.pid)
        .unwrap_or_default()
        .iter()
        .any(|call| call.is_some_and(|n| SEND_SYSCALLS.contains(&n)))
}

/// Waits up to `limit` for a thread of the server to block in a send call.
fn wait_for_a_blocked_send(server: &Server, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if in_a_send(server) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Connects the next client; a failure after earlier clients were served
/// (`served_before`) means the server stopped accepting.
fn connect(server: &mut Server, who: &str, served_before: bool) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect_timeout(&server.addr, Duration::from_secs(2)).map_err(|err| {
        let (id, why) = if served_before {
            ("echo.stopped-accepting", "the server stopped accepting after its earlier clients: keep accepting in a loop, and don't let one client's end end the server")
        } else {
            ("echo.no-accept", "the server does not accept connections")
        };
        Failure::new(
            format!("{who}: connect failed: {err}"),
            id,
            why,
            Ctx::server_evidence(server),
        )
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends one frame and judges its echo.
fn exchange(
    server: &mut Server,
    stream: &mut TcpStream,
    who: &str,
    frame: usize,
    payload: &[u8],
) -> Result<(), Failure> {
    let sent = stress::frame::encode(payload);
    if let Err(err) = stream.write_all(&sent) {
        return Err(Failure::new(
            format!(
                "{who}, frame {frame}: sending {} bytes failed: {err}",
                sent.len()
            ),
            "echo.closed-while-sending",
            "the server closed or reset the connection before the client finished sending",
            Ctx::server_evidence(server),
        ));
    }
    let cpu_before = crate::procfs::cpu_time(server.pid).ok();
    let waited = Instant::now();
    let (received, ending) = read_exactly(stream, sent.len(), ECHO_TIMEOUT);
    let mut extra = Vec::new();
    let failure = match ending {
        Ending::Complete if received == sent => return Ok(()),
        Ending::Complete => (
            "the echo differs from what was sent",
            "echo.wrong-bytes",
            "the server must send back exactly the bytes it received, in order",
        ),
        Ending::Eof => (
            "the server closed the connection before echoing everything",
            "echo.closed-early",
            "keep reading and echoing until read() returns 0 (the client closed)",
        ),
        // Nothing came back because nobody took the connection: it still
        // waits in the listen queue (no socket file). With an earlier
        // client's connection still open at the server, though that
        // client closed it, the server is stuck on that one.
        Ending::TimedOut
            if received.is_empty()
                && waits_in_accept_queue(server, stream)
                && holds_closed_connection(server) =>
        {
            extra.push(format!(
                "the server has not accepted this connection, and still holds an earlier one that its client closed ({} in /proc/{}/net/tcp)",
                "CLOSE_WAIT",
                server.pid
            ));
            if let (Some(before), Ok(after)) = (cpu_before, crate::procfs::cpu_time(server.pid)) {
                extra.push(format!(
                    "the server used {} ms of CPU in the {} ms this client waited",
                    after.saturating_sub(before).as_millis(),
                    waited.elapsed().as_millis()
                ));
            }
            (
                "no complete echo within 5 s",
                STUCK_ON_CLOSED_CLIENT,
                "the server is still busy with an earlier client, which had closed its side: it never took read() returning 0 as the end of that client. Ok(0) is end of file, not \"no data yet\": finish that client and accept the next",
            )
        }
        Ending::TimedOut if received.is_empty() && waits_in_accept_queue(server, stream) => (
            "no complete echo within 5 s",
            "echo.never-accepted",
            "the server never accepted the connection: it still waits in the listen queue. Call accept() in a loop and serve each connection it returns",
        ),
        Ending::TimedOut => (
            "no complete echo within 5 s",
            "echo.no-echo",
            "write back every chunk you read (write_all), right away",
        ),
        Ending::Failed(ref err) => (
            if err.kind() == std::io::ErrorKind::ConnectionReset {
                "the server reset the connection before echoing everything"
            } else {
                "reading the echo failed"
            },
            "echo.reset",
            "a server must not drop a client it is still echoing to",
        ),
    };
    let (what, id, cause) = failure;
    let mut evidence = vec![format!(
        "sent a frame of {} payload bytes ({} bytes on the wire); got back {} bytes",
        payload.len(),
        sent.len(),
        received.len()
    )];
    evidence.extend(excerpt::compare(&sent, &received));
    evidence.extend(extra);
    evidence.extend(Ctx::server_evidence(server));
    Err(Failure::new(
        format!("{who}, frame {frame}: {what}"),
        id,
        cause,
        evidence,
    ))
}

/// A client that sends a frame, reads its echo and resets the connection;
/// `Ok` with its local address.
fn resetting_client(server: &mut Server) -> Result<(), Failure> {
    let who = "the client that resets (after client 1)";
    let mut stream = connect(server, who, true)?;
    exchange(
        server,
        &mut stream,
        who,
        0,
        b"this client resets its connection after this echo",
    )?;
    reset(stream);
    Ok(())
}

/// The first client after the reset failed: if the server died, or stopped
/// accepting, the reset is what ended it.
fn after_the_reset(server: &mut Server, failure: Failure) -> StepOutcome {
    let message = format!("after a client reset its connection, {}", failure.message);
    let stopped_accepting = matches!(
        failure.cause,
        Some(("echo.stopped-accepting" | "echo.never-accepted", _))
    );
    if let Some(death) = server.death_notice_within(Duration::from_secs(2)) {
        return StepOutcome::fail(format!("{message}; the server died: {death}"))
            .death_cause(
                CLIENT_ERROR_ENDS_THE_SERVER,
                "one client's error ended the whole server: the client before this one reset its connection, so reading from it failed (ECONNRESET), and that error stopped the server (a panic, an exit, or a return out of the accept loop). An error belongs to its connection: log it, close that one, and accept the next client",
            )
            .evidence(failure.evidence);
    }
    if stopped_accepting {
        return StepOutcome::fail(message)
            .cause_as(
                CLIENT_ERROR_ENDS_THE_SERVER,
                "the server stopped accepting once a client reset its connection: that client's read failed (ECONNRESET) and the error ended the accept loop. An error belongs to its connection: log it, close that one, and accept the next client",
            )
            .evidence(failure.evidence);
    }
    Failure { message, ..failure }.outcome()
}

/// Closes with an RST instead of a FIN: SO_LINGER on with a zero timeout
/// makes close() discard unsent data and reset the connection.
fn reset(stream: TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&stream, sockopt::Linger, &linger);
    drop(stream);
}

/// Whether the server's end of `stream` is still in the listen queue (a
/// connection no process has accepted has no socket file: inode 0).
fn waits_in_accept_queue(server: &Server, stream: &TcpStream) -> bool {
    let Ok(local) = stream.local_addr() else {
        return false;
    };
    let client = SocketAddr::new(local.ip().to_canonical(), local.port());
    crate::procfs::tcp_sockets(server.pid)
        .iter()
        .any(|socket| socket.remote == client && socket.inode == 0)
}

/// TCP state CLOSE_WAIT: the peer sent its FIN, this end has not closed.
const TCP_CLOSE_WAIT: u8 = 0x08;

/// Whether the server still holds (a socket file, in CLOSE_WAIT) its end
/// of a connection whose client closed it.
fn holds_closed_connection(server: &Server) -> bool {
    crate::procfs::tcp_sockets(server.pid).iter().any(|socket| {
        socket.local.port() == server.addr.port()
            && socket.inode != 0
            && socket.state == TCP_CLOSE_WAIT
    })
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

/// Payload bytes of each frame of the short-write case: an odd size, so
/// that frame and buffer boundaries fall in different places.
const SHORT_WRITE_PAYLOAD: usize = 16_001;

/// The receive buffer of the short-write case's client, in bytes (the
/// kernel doubles it): small, so the server's writes back up at once and
/// each stop finds one part-way through.
const SMALL_RCVBUF: usize = 4096;

/// Connects with a small receive buffer, set before connect so that the
/// window the server sees is small from the start.
fn connect_small_window(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::RcvBuf, &SMALL_RCVBUF)?;
    // A bounded connect (Linux's connect() honours SO_SNDTIMEO).
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(3, 0),
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    )?;
    Ok(TcpStream::from(fd))
}

/// Bound on waiting for the server to stop on SIGSTOP.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Stops the server (its process group) and continues it once it is
/// stopped; `false` if it is no longer running.
fn stop_and_continue(server: &mut Server) -> Result<bool> {
    if server.try_exit_status().is_some() || killpg(server.pid, Signal::SIGSTOP).is_err() {
        return Ok(false);
    }
    let stopped =
        crate::procfs::wait_until_stopped(server.pid, STOP_WAIT, Duration::from_millis(1));
    let _ = killpg(server.pid, Signal::SIGCONT);
    if !stopped {
        if server.try_exit_status().is_some() {
            return Ok(false);
        }
        anyhow::bail!(
            "the server (pid {}) did not stop on SIGSTOP within {} s",
            server.pid,
            STOP_WAIT.as_secs()
        );
    }
    Ok(true)
}

/// How many bytes of `sent`, from byte `at` on, the echo skipped: `k` when
/// what came back from `at` on is what was sent from `at + k` on (checked
/// over up to 64 bytes, at least 16).
fn skipped_bytes(sent: &[u8], received: &[u8], at: usize) -> Option<usize> {
    let probe = &received[at..(at + 64).min(received.len())];
    if probe.len() < 16 {
        return None;
    }
    (1..sent.len().saturating_sub(at))
        .find(|&k| sent.get(at + k..at + k + probe.len()) == Some(probe))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_in_the_echo_is_measured() {
        // Seeded bytes: no period a skip could be mistaken for.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sent: Vec<u8> = (0..4000).map(|_| rng.random::<u8>()).collect();
        let mut received = sent[..1000].to_vec();
        received.extend_from_slice(&sent[1300..]);
        assert_eq!(skipped_bytes(&sent, &received, 1000), Some(300));
        // Too little after the difference to tell.
        assert_eq!(skipped_bytes(&sent, &sent[..1010], 1000), None);
        // Bytes that were never sent anywhere.
        let mut garbage = sent[..1000].to_vec();
        garbage.extend_from_slice(&[0xee; 100]);
        assert_eq!(skipped_bytes(&sent, &garbage, 1000), None);
    }

    #[test]
    fn the_default_echo_has_neither_extra_case() {
        let echo = Echo::default();
        assert!(!echo.reset_client);
        assert_eq!(echo.short_writes, 0);
        assert_eq!(
            echo.summary(),
            "1 client(s) one after another, 6 frames each, every echo checked"
        );
    }
}
