//! `shutdown`: the graceful shutdown on SIGINT or SIGTERM (`signal`), in
//! four cases, each on a fresh server:
//!
//! 1. **Pending echoes.** `connections` connections each send a small frame
//!    and `heavy` of them, with a small receive window, also send
//!    `heavy_bytes` of frames; the checker reads nothing, so echoes are
//!    still pending when the server is signalled, more than the kernel's
//!    buffers hold: the server has to write them out over many waits after
//!    the signal (a shutdown that gives up at once loses them). The checker
//!    begins to read 100 ms after the server printed `Received ...`. The
//!    server must exit with status 0
//!    within `exit_within_ms`; every frame must come back whole, followed by
//!    an orderly close (EOF, not a reset); stdout must carry the shutdown
//!    lines in order, with the connection count and the final request count
//!    equal to what the checker held and sent, and 0 errors.
//! 2. **Unread input.** `unread_connections` connections are each served a
//!    first frame; then the server is stopped (SIGSTOP to its process
//!    group), half the connections send two more frames, the signal is
//!    sent, the other half send theirs, and `/proc/PID/net/tcp` must show
//!    every one of those bytes still unread in the server's sockets
//!    (`rx_queue`) before SIGCONT. However the loop orders the ready sockets
//!    and the signal of that one wake-up, the frames are owed: all echoed,
//!    then EOF on every connection (closing with unread input sends a
//!    reset), exact counts, 0 errors.
//! 3. **Clients that never read.** `readers` connections send a frame and
//!    read only after the signal; `stalled` connections with a small receive
//!    window send `stalled_bytes` of frames and never read, so their echoes
//!    cannot all be delivered. The server must still exit 0 within
//!    `exit_within_ms` (its grace period is bounded), use at most
//!    `max_cpu_ms` of CPU from the signal to its exit (it sleeps while it
//!    waits), give every reader all its echoes and then EOF within
//!    `eof_within_ms` of the signal (a finished connection is closed at
//!    once, not when the grace period ends), and count exactly the
//!    `stalled` clients as errors in `Final stats`, plus the `resetting`
//!    ones: like the stalled, they never read, and they reset their
//!    connection (SO_LINGER 0) once the server printed `Received ...`, an
//!    I/O error the shutdown itself meets.
//! 4. **A second signal.** Case 3 again, with the same signal sent a second
//!    time once the server has printed that it is shutting down: the
//!    shutdown goes on and ends as in case 3, and from the second signal to
//!    the exit the server uses at most `max_cpu_ms` of CPU (a signalfd or
//!    self-pipe that is left unread in a level-triggered epoll set makes
//!    every wait of the shutdown return at once).

// A failing case is the step's StepOutcome, handed up by value as a step
// returns it.
#![allow(clippy::result_large_err)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use regex::Regex;
use serde::Deserialize;

use self::net_tcp::{client_side, server_side, tcp_sockets};
use super::disconnects::{connect_small_window, reset};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::{describe_status, Server};

mod net_tcp;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// `INT` or `TERM`.
    pub signal: String,
    /// Case 1: connections open when the signal is sent.
    pub connections: usize,
    /// Case 1: connections that also send `heavy_bytes` of frames, with a
    /// small receive window: more echoes than the kernel's buffers hold
    /// wait in the server at the signal.
    pub heavy: usize,
    pub heavy_bytes: usize,
    /// Bound on the exit, from the signal, in milliseconds (the grace bound).
    pub exit_within_ms: u64,
    /// Pause between the last write and the signal, so the server has read
    /// what was sent (cases 1, 3 and 4).
    pub settle_ms: u64,
    /// Case 2: connections whose frames wait unread in the stopped server.
    pub unread_connections: usize,
    /// Cases 3 and 4: clients that read their echoes after the signal.
    pub readers: usize,
    /// Cases 3 and 4: clients that never read ...
    pub stalled: usize,
    /// ... after sending this many bytes of frames each.
    pub stalled_bytes: usize,
    /// Cases 3 and 4: clients like those, that reset their connection
    /// (SO_LINGER 0) once the shutdown has begun, with echoes still pending.
    pub resetting: usize,
    /// Cases 3 and 4: bound on the readers' EOF, from the signal.
    pub eof_within_ms: u64,
    /// Cases 3 and 4: CPU the server may use from the (second) signal to its exit.
    pub max_cpu_ms: u64,
    pub args: Vec<String>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            signal: "INT".into(),
            connections: 1000,
            heavy: 8,
            heavy_bytes: 6 * 1024 * 1024,
            exit_within_ms: 2000,
            settle_ms: 300,
            unread_connections: 200,
            readers: 20,
            stalled: 2,
            stalled_bytes: 8 * 1024 * 1024,
            resetting: 1,
            eof_within_ms: 500,
            max_cpu_ms: 200,
            args: Vec::new(),
        }
    }
}

/// Payload bytes of the heavy connections' and the stalled clients' frames.
const HEAVY_PAYLOAD: usize = 16 * 1024;

/// Case 1: how long after `Received ...` the clients begin to read.
const READ_DELAY: Duration = Duration::from_millis(100);

/// How long the checker waits for a stopped server to show state `T`.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What the checker reads after the exit bound before it gives up on a
/// connection that neither ended nor got its echoes.
const READ_MARGIN: Duration = Duration::from_millis(3000);

/// The cause when the shutdown lines are missing or out of order.
const LINES: &str = "shutdown.lines-missing";
const LINES_CAUSE: &str = "print, in this order: `Received SIGINT, shutting down...` (or SIGTERM), `Closing N connections...`, `All connections closed.`, `Final stats: N requests served, E errors`";

/// The cause when a connection ended with a reset although nothing was
/// left unread in it.
const RESET: &str = "shutdown.reset-on-close";
const RESET_CAUSE: &str = "close each connection in order: after the last byte, shutdown(Write) and close with nothing unread in the socket; SO_LINGER 0 or unread input makes close() send a reset (RST) instead of EOF";

/// A server that stopped taking connections before the signal.
const STOPPED_ACCEPTING: &str = "shutdown.stopped-accepting";
const STOPPED_ACCEPTING_CAUSE: &str = "the server stopped accepting before the signal was sent";

/// A server that kept reading nobody before the signal.
const STOPPED_READING: &str = "shutdown.stopped-reading-before-the-signal";

/// A client that never reads held the exit past the grace bound.
const NO_GRACE_BOUND: &str = "shutdown.no-grace-bound";

/// How one connection's reading ended.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ending {
    Open,
    Eof,
    Reset,
}

/// What one connection got back after the signal, and how and when its
/// reading ended.
struct Reading {
    bytes: Vec<u8>,
    ending: Ending,
    ended_at: Option<Instant>,
}

/// What a passing case contributes to the step's outcome.
struct Passed {
    summary: String,
    proof: String,
    figures: Vec<(String, String)>,
}

/// A case's verdict: `Ok(Err(..))` is the step's failure.
type CaseResult = Result<std::result::Result<Passed, StepOutcome>>;

impl Check for Shutdown {
    fn ends_the_server(&self) -> bool {
        true
    }

    fn summary(&self) -> String {
        format!(
            "SIG{sig}, four times on a fresh server: with {} connections open and echoes pending ({} clients with a small receive window sent {} KiB each, unread); with input unread in {} sockets; with {} clients that never read and {} that resets during the shutdown; and with a second SIG{sig} during the shutdown: exit 0 within {} ms, every echo whole, then EOF, the shutdown lines with errors counted, no spinning",
            self.connections,
            self.heavy,
            self.heavy_bytes / 1024,
            self.unread_connections,
            self.stalled,
            self.resetting,
            self.exit_within_ms,
            sig = self.signal,
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let signal = match self.signal.as_str() {
            "INT" => Signal::SIGINT,
            "TERM" => Signal::SIGTERM,
            other => anyhow::bail!(
                "course.yaml: lesson {}: shutdown signal `{other}` (use INT or TERM)",
                ctx.lesson.id
            ),
        };
        let name = format!("SIG{}", self.signal);
        let mut passed = Vec::new();
        for case in 1..=4 {
            let verdict = match case {
                1 => {
                    ctx.log.detail(format!(
                        "case 1/4: {name} with {} connections open and echoes pending",
                        self.connections
                    ));
                    self.pending_echoes(ctx, signal, &name)?
                }
                2 => {
                    ctx.log.detail(format!(
                        "case 2/4: {name} with frames unread in {} sockets of the stopped server",
                        self.unread_connections
                    ));
                    self.unread_input(ctx, signal, &name)?
                }
                3 => {
                    ctx.log.detail(format!(
                        "case 3/4: {name} with {} clients that never read and {} that reset",
                        self.stalled, self.resetting
                    ));
                    self.never_reading(ctx, signal, &name, false)?
                }
                _ => {
                    ctx.log.detail(format!(
                        "case 4/4: a second {name} while {} clients that never read hold the shutdown",
                        self.stalled
                    ));
                    self.never_reading(ctx, signal, &name, true)?
                }
            };
            match verdict {
                Ok(case) => passed.push(case),
                // Which case failed, for --format json (the text transcript
                // says it in the line that began the case).
                Err(failed) => return Ok(failed.figure("case", format!("{case}/4"))),
            }
        }
        let message = passed
            .iter()
            .map(|case| case.summary.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut outcome = StepOutcome::pass(message);
        for case in passed {
            outcome = outcome.proof_line(case.proof);
            for (figure, value) in case.figures {
                outcome = outcome.figure(figure, value);
            }
        }
        Ok(outcome)
    }
}

impl Shutdown {
    /// Case 1: echoes pending in the server at the signal.
    fn pending_echoes(&self, ctx: &mut Ctx, signal: Signal, name: &str) -> CaseResult {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(Err(failed)),
        };
        // The heavy connections first, each with a small receive window:
        // their echoes overflow the kernel's buffers on both sides and wait
        // in the server's own output buffer, to be written out after the
        // signal (over many epoll waits, as the checker reads).
        let heavy = self.heavy.min(self.connections);
        let mut held = Vec::with_capacity(self.connections);
        for client in 1..=heavy {
            match connect_small_window(server.addr) {
                Ok(stream) => held.push(stream),
                Err(err) => {
                    return Ok(Err(StepOutcome::fail(format!(
                        "heavy connection {client} of {heavy}: connect failed: {err}"
                    ))
                    .cause_as(STOPPED_ACCEPTING, STOPPED_ACCEPTING_CAUSE)
                    .evidence(Ctx::server_evidence(&mut server))))
                }
            }
        }
        match connect_all(&mut server, self.connections - heavy) {
            Ok(rest) => held.extend(rest),
            Err(failed) => return Ok(Err(failed)),
        };
        // What each connection sends, and so expects back.
        let per_heavy = (self.heavy_bytes / (HEAVY_PAYLOAD + 4)).max(1);
        let mut expected: Vec<Vec<u8>> = Vec::with_capacity(held.len());
        let mut frames_sent = 0u64;
        for i in 0..held.len() {
            if i < heavy {
                let mut wire = Vec::with_capacity(per_heavy * (HEAVY_PAYLOAD + 4));
                for f in 0..per_heavy {
                    let payload = vec![(i * 31 + f) as u8; HEAVY_PAYLOAD];
                    stress::frame::encode_into(&payload, &mut wire);
                }
                frames_sent += per_heavy as u64;
                expected.push(wire);
            } else {
                expected.push(stress::frame::encode(
                    format!("shutdown client {i:04}").as_bytes(),
                ));
                frames_sent += 1;
            }
        }
        // Heavy senders write from their own threads (the checker reads
        // nothing yet, so their writes only finish as the server reads).
        let mut senders = Vec::new();
        for (stream, wire) in held.iter().zip(&expected).take(heavy) {
            let mut writer = stream.try_clone()?;
            writer.set_write_timeout(Some(Duration::from_secs(10)))?;
            let wire = wire.clone();
            senders.push(std::thread::spawn(move || writer.write_all(&wire)));
        }
        let mut unsent = 0;
        for (stream, wire) in held.iter_mut().zip(&expected).skip(heavy) {
            if stream.write_all(wire).is_err() {
                unsent += 1;
            }
        }
        for sender in senders {
            if !matches!(sender.join(), Ok(Ok(()))) {
                unsent += 1;
            }
        }
        if unsent > 0 {
            return Ok(Err(StepOutcome::fail(format!(
                "{unsent} connections could not send their frames before the signal"
            ))
            .cause_as(STOPPED_READING, "the server must read every client's frames while their echoes are not read yet: keep the echoes in the connection's output buffer")
            .evidence(Ctx::server_evidence(&mut server))));
        }
        std::thread::sleep(Duration::from_millis(self.settle_ms));
        if let Some(failed) = died_before_the_signal(&mut server) {
            return Ok(Err(failed));
        }
        let heavy_bytes = per_heavy * (HEAVY_PAYLOAD + 4);
        ctx.log.detail(format!(
            "{} connections open; {frames_sent} frames sent ({heavy} clients with a small receive window sent {} KiB each{}); no echo read yet",
            held.len(),
            heavy_bytes / 1024,
            match in_the_kernel(server.pid, &held[..heavy]).and_then(|k| k.into_iter().max()) {
                Some(kernel) => format!(
                    "; the kernel's buffers hold at most {} KiB of each one's traffic, so at least {} KiB of its echoes wait in the server",
                    kernel / 1024,
                    (heavy_bytes as u64).saturating_sub(kernel) / 1024
                ),
                None => String::new(),
            }
        ));
        let mark = server.output_mark();
        kill(server.pid, signal)?;
        let signalled = Instant::now();
        // The clients read a little late, as real ones may: by then the
        // server's first round of writes after the signal has filled their
        // sockets, so what is left must be written out over later waits
        // (one round and a close would lose it, however fast they read).
        wait_for_the_first_line(&server, mark, signalled + Duration::from_millis(500));
        std::thread::sleep(READ_DELAY);
        ctx.log.detail(format!(
            "sent {name} to pid {}; reading now, {} ms later ({} ms after `Received ...` or half a second)",
            server.pid,
            signalled.elapsed().as_millis(),
            READ_DELAY.as_millis()
        ));
        let deadline = signalled + Duration::from_millis(self.exit_within_ms) + READ_MARGIN;
        let (readings, exit) = read_to_the_end(&mut server, &held, heavy, deadline, &mut |_| {})?;
        let stdout = stdout_lines(&server, mark);
        let quoted = |server: &mut Server| {
            std::iter::once(format!(
                "sent {frames_sent} frames on {} connections, then {name}; the checker started reading only after the signal",
                held.len()
            ))
            .chain(Ctx::server_evidence(server))
        };

        // 1. The exit: status 0, in time.
        let exit_ms = match exit_verdict(exit, signalled, self.exit_within_ms, signal, name) {
            Ok(ms) => ms,
            Err(failed) => return Ok(Err(failed.evidence(quoted(&mut server)))),
        };
        // 2. Every echo whole, then an orderly close.
        let tally = Tally::of(&readings, &expected);
        if tally.resets > 0 || tally.unclosed > 0 {
            return Ok(Err(StepOutcome::fail(format!(
                "{} connections ended with a reset and {} were never closed, of {} ({} of them short of their echoes: a reset also throws away bytes still in flight)",
                tally.resets,
                tally.unclosed,
                held.len(),
                tally.lost
            ))
            .cause_as(RESET, RESET_CAUSE)
            .evidence(quoted(&mut server))
            .figure("resets", tally.resets)));
        }
        if let Some(first) = tally.first_lost {
            return Ok(Err(StepOutcome::fail(format!(
                "{} of {} connections did not get back every frame they sent before {name} (connection {first}: sent {} bytes, got {} back)",
                tally.lost,
                held.len(),
                expected[first].len(),
                readings[first].bytes.len()
            ))
            .cause_as("shutdown.pending-echoes-lost", "echoes still pending at the signal were lost: before closing, write out every connection's pending output (EPOLLOUT until the buffer is empty) instead of exiting at once")
            .evidence(quoted(&mut server))
            .figure("lost", tally.lost)));
        }
        // 3. The shutdown lines, in order, with the right counts.
        let lines = match shutdown_lines(&stdout, name)? {
            Ok(lines) => lines,
            Err(message) => {
                return Ok(Err(StepOutcome::fail(message)
                    .cause_as(LINES, LINES_CAUSE)
                    .evidence(quoted(&mut server))))
            }
        };
        if let Err(failed) = lines.judge(
            held.len(),
            Some(frames_sent),
            0,
            "every client read all its echoes and closed nothing, so no connection failed",
            name,
        ) {
            return Ok(Err(failed.evidence(quoted(&mut server))));
        }
        Ok(Ok(Passed {
            summary: format!(
                "exit 0 {exit_ms} ms after {name}; {frames_sent} frames on {} connections all echoed, then EOF on every one; shutdown lines and counts right, 0 errors",
                held.len()
            ),
            proof: format!(
                "shutdown: {name} with {} connections open and echoes pending: exit 0 within {} ms, {frames_sent} frames all echoed, every client saw EOF, final stats {frames_sent} requests, 0 errors",
                held.len(),
                self.exit_within_ms
            ),
            figures: vec![("exit_ms".into(), exit_ms.to_string())],
        }))
    }

    /// Case 2: frames unread in the server's sockets when it handles the
    /// signal (it is stopped while they arrive and while the signal does).
    fn unread_input(&self, ctx: &mut Ctx, signal: Signal, name: &str) -> CaseResult {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(Err(failed)),
        };
        let count = self.unread_connections.max(2);
        let mut held = match connect_all(&mut server, count) {
            Ok(held) => held,
            Err(failed) => return Ok(Err(failed)),
        };
        // A first frame each, echoed: every connection is accepted and
        // registered before the server is stopped.
        for (i, stream) in held.iter_mut().enumerate() {
            let first = stress::frame::encode(format!("first frame {i:04}").as_bytes());
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            let mut echo = vec![0u8; first.len()];
            let served = stream
                .write_all(&first)
                .and_then(|()| stream.read_exact(&mut echo));
            if served.is_err() || echo != first {
                let what = match served {
                    Err(e) => format!("no echo ({e})"),
                    Ok(()) => "a different echo".into(),
                };
                return Ok(Err(StepOutcome::fail(format!(
                    "connection {i} of {count}: {what} of its first frame, before any signal"
                ))
                .cause_as("shutdown.unserved-before-the-signal", "every connection must be served while the server runs; the shutdown comes after")
                .evidence(Ctx::server_evidence(&mut server))));
            }
        }
        // Stop the server once it is idle (every thread blocked, as in its
        // epoll_wait), its whole process group: any helper process too.
        wait_until_idle(server.pid, Duration::from_secs(1));
        killpg(server.pid, Signal::SIGSTOP)?;
        if !crate::procfs::wait_until_stopped(server.pid, STOP_WAIT, Duration::from_millis(5)) {
            let _ = killpg(server.pid, Signal::SIGCONT);
            if let Some(failed) = died_before_the_signal(&mut server) {
                return Ok(Err(failed));
            }
            anyhow::bail!(
                "the server (pid {}) did not stop on SIGSTOP within {} s",
                server.pid,
                STOP_WAIT.as_secs()
            );
        }
        // Two frames each: half the connections before the signal, half
        // while it is pending on the stopped server.
        let wire_of = |i: usize| {
            let mut wire = Vec::new();
            for f in 0..2 {
                let payload = vec![(i * 7 + f) as u8; 600 + (i % 9) * 100];
                stress::frame::encode_into(&payload, &mut wire);
            }
            wire
        };
        let expected: Vec<Vec<u8>> = (0..count).map(wire_of).collect();
        let before = (0..count).filter(|i| i % 2 == 0).count();
        let after = count - before;
        let mark = server.output_mark();
        let mut sent = true;
        for (stream, wire) in held.iter_mut().zip(&expected).step_by(2) {
            sent &= stream.write_all(wire).is_ok();
        }
        // "Before the signal" means in the server's sockets before it: the
        // kernel may deliver loopback bytes a little after write() returns.
        let waiting: Vec<(&TcpStream, usize)> = held
            .iter()
            .zip(&expected)
            .map(|(stream, wire)| (stream, wire.len()))
            .collect();
        let first_half: Vec<(&TcpStream, usize)> = waiting.iter().copied().step_by(2).collect();
        let arrived = wait_for_unread(server.pid, &first_half, Duration::from_secs(1));
        if let Err(e) = kill(server.pid, signal) {
            let _ = killpg(server.pid, Signal::SIGCONT);
            return Err(e.into());
        }
        for (mut stream, wire) in held.iter().zip(&expected).skip(1).step_by(2) {
            sent &= stream.write_all(wire).is_ok();
        }
        // Every byte must be waiting in the server's socket, unread.
        let unread = wait_for_unread(server.pid, &waiting, Duration::from_secs(1));
        killpg(server.pid, Signal::SIGCONT)?;
        let resumed = Instant::now();
        let (arrived, unread) = (arrived?, unread?);
        if !sent || arrived < before || unread < count {
            anyhow::bail!(
                "case 2 of `shutdown` could not set itself up: the frames for the stopped server were {}, and /proc/{}/net/tcp showed them unread in {arrived} of {before} sockets before the signal and {unread} of {count} after it",
                if sent { "all sent" } else { "not all sent" },
                server.pid
            );
        }
        ctx.log.detail(format!(
            "server stopped (SIGSTOP); {before} connections sent 2 frames, then {name}, then {after} more sent 2 frames; /proc/{}/net/tcp: all {count} sockets hold their frames unread; SIGCONT, reading now",
            server.pid
        ));
        for stream in &held {
            stream.set_read_timeout(None)?;
        }
        let deadline = resumed + Duration::from_millis(self.exit_within_ms) + READ_MARGIN;
        let (readings, exit) = read_to_the_end(&mut server, &held, 0, deadline, &mut |_| {})?;
        let stdout = stdout_lines(&server, mark);
        let quoted = |server: &mut Server| {
            std::iter::once(format!(
                "each of {count} connections had its first frame echoed; with the server stopped, {before} sent 2 more frames, then {name}, then {after} sent 2 more; SIGCONT; all {count} sockets held their bytes unread until then"
            ))
            .chain(Ctx::server_evidence(server))
        };
        let exit_ms = match exit_verdict(exit, resumed, self.exit_within_ms, signal, name) {
            Ok(ms) => ms,
            Err(failed) => {
                // Stopped and continued, the loop saw one thing more than
                // in case 1: Linux ends a pending epoll_wait with EINTR.
                let failed = match exit {
                    Some((_, status)) if !status.success() => failed.cause_as("shutdown.eintr-ends-the-loop", format!(
                        "case 1 ended with exit status 0; here the server was stopped (SIGSTOP) and continued (SIGCONT), after which Linux makes epoll_wait fail with EINTR even without a signal handler: treat EINTR as \"wait again\", not as an error that ends the loop, and still read {name} from the signalfd"
                    )),
                    _ => failed,
                };
                return Ok(Err(failed.evidence(quoted(&mut server))));
            }
        };
        let tally = Tally::of(&readings, &expected);
        if tally.lost > 0 {
            let lost_before = (0..count)
                .step_by(2)
                .filter(|&i| readings[i].bytes != expected[i])
                .count();
            return Ok(Err(StepOutcome::fail(format!(
                "{} of {count} connections did not get back the frames that waited unread in the server's socket when it handled {name} ({lost_before} of the {before} that sent them before the signal, {} of the {after} that sent them while it was pending); {} connections ended with a reset",
                tally.lost,
                tally.lost - lost_before,
                tally.resets
            ))
            .cause_as("shutdown.unread-input-lost", "on the signal, read every connection once more before closing it: bytes already in its socket are frames the client sent, owed an echo; and close() on a socket with unread input sends a reset (RST) instead of EOF")
            .evidence(quoted(&mut server))
            .figure("lost", tally.lost)
            .figure("resets", tally.resets)));
        }
        if tally.resets > 0 || tally.unclosed > 0 {
            return Ok(Err(StepOutcome::fail(format!(
                "every echo came back, but {} connections ended with a reset and {} were never closed, of {count}",
                tally.resets, tally.unclosed
            ))
            .cause_as(RESET, RESET_CAUSE)
            .evidence(quoted(&mut server))
            .figure("resets", tally.resets)));
        }
        let lines = match shutdown_lines(&stdout, name)? {
            Ok(lines) => lines,
            Err(message) => {
                return Ok(Err(StepOutcome::fail(message)
                    .cause_as(LINES, LINES_CAUSE)
                    .evidence(quoted(&mut server))))
            }
        };
        let frames = 3 * count as u64;
        if let Err(failed) = lines.judge(
            count,
            Some(frames),
            0,
            "every client read all its echoes, so no connection failed",
            name,
        ) {
            return Ok(Err(failed.evidence(quoted(&mut server))));
        }
        Ok(Ok(Passed {
            summary: format!(
                "with frames unread in {count} sockets when {name} was handled ({before} sent before it, {after} while it was pending): exit 0 {exit_ms} ms after SIGCONT, all echoed, then EOF, {frames} requests, 0 errors"
            ),
            proof: format!(
                "shutdown: {name} with frames unread in {count} sockets of the stopped server: exit 0 within {} ms, all echoed, every client saw EOF, final stats {frames} requests, 0 errors",
                self.exit_within_ms
            ),
            figures: vec![("unread_exit_ms".into(), exit_ms.to_string())],
        }))
    }

    /// Cases 3 and 4: clients that never read hold the shutdown until the
    /// grace period ends; with `second`, the signal comes twice.
    fn never_reading(&self, ctx: &mut Ctx, signal: Signal, name: &str, second: bool) -> CaseResult {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(Err(failed)),
        };
        let readers_count = self.readers.max(1);
        let stalled_count = self.stalled.max(1);
        let resetting_count = self.resetting;
        let mut readers = match connect_all(&mut server, readers_count) {
            Ok(held) => held,
            Err(failed) => return Ok(Err(failed)),
        };
        // The clients that never read, then those that will reset.
        let mut stalled = Vec::with_capacity(stalled_count + resetting_count);
        for client in 1..=stalled_count + resetting_count {
            match connect_small_window(server.addr) {
                Ok(stream) => stalled.push(stream),
                Err(err) => {
                    return Ok(Err(StepOutcome::fail(format!(
                        "client {client} of {} that would never read: connect failed: {err}",
                        stalled_count + resetting_count
                    ))
                    .cause_as(STOPPED_ACCEPTING, STOPPED_ACCEPTING_CAUSE)
                    .evidence(Ctx::server_evidence(&mut server))))
                }
            }
        }
        let expected: Vec<Vec<u8>> = (0..readers_count)
            .map(|i| stress::frame::encode(format!("reader {i:03}: echo me").as_bytes()))
            .collect();
        for (stream, wire) in readers.iter_mut().zip(&expected) {
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            if stream.write_all(wire).is_err() {
                return Ok(Err(StepOutcome::fail(
                    "a client could not send its frame before the signal",
                )
                .cause_as(STOPPED_READING, "the server must keep reading every client")
                .evidence(Ctx::server_evidence(&mut server))));
            }
        }
        let stalled_sent = send_until_stuck(&stalled, self.stalled_bytes)?;
        std::thread::sleep(Duration::from_millis(self.settle_ms));
        if let Some(failed) = died_before_the_signal(&mut server) {
            return Ok(Err(failed));
        }
        let queued = stalled_send_queues(server.pid, &stalled);
        ctx.log.detail(format!(
            "{readers_count} clients sent a frame each, reading nothing yet; {} clients with a small receive window sent {} KiB of frames each and will never read, {resetting_count} of them to reset once the shutdown has begun ({})",
            stalled_count + resetting_count,
            stalled_sent.iter().min().copied().unwrap_or(0) / 1024,
            match queued {
                Some(queued) => format!(
                    "their echoes fill the server's socket send queues: {} KiB waiting in the kernel",
                    queued.iter().map(|q| (q / 1024).to_string()).collect::<Vec<_>>().join(", ")
                ),
                None => "their queues could not be read from /proc".into(),
            }
        ));
        let pid = server.pid;
        let cpu_at_signal = procfs::cpu_time(pid).unwrap_or(Duration::ZERO);
        let mark = server.output_mark();
        kill(pid, signal)?;
        let signalled = Instant::now();
        let mut watched_from = (signalled, cpu_at_signal);
        let mut second_after_ms = 0;
        // Once the shutdown has begun: its first line (so the signal was
        // read), or half a second.
        wait_for_the_first_line(&server, mark, signalled + Duration::from_millis(500));
        // Resets while their echoes are pending: the server learns it from
        // a read or write during the shutdown, an I/O error.
        let resetters = stalled.split_off(stalled_count);
        let reset_after_ms = signalled.elapsed().as_millis();
        for stream in resetters {
            reset(stream);
        }
        if second {
            let cpu = procfs::cpu_time(pid).unwrap_or(cpu_at_signal);
            kill(pid, signal)?;
            watched_from = (Instant::now(), cpu);
            second_after_ms = watched_from.0.duration_since(signalled).as_millis();
            ctx.log.detail(format!(
                "sent {name} to pid {pid}; once the shutdown had begun ({reset_after_ms} ms later), reset {resetting_count} of the clients that never read and sent {name} again ({second_after_ms} ms after the first); the readers read now"
            ));
        } else {
            ctx.log.detail(format!(
                "sent {name} to pid {pid}; once the shutdown had begun ({reset_after_ms} ms later), reset {resetting_count} of the clients that never read; the readers read now"
            ));
        }
        // The server's CPU time, sampled while it runs (a zombie's reading
        // may be gone: keep the largest).
        let mut last_cpu = watched_from;
        let deadline = signalled + Duration::from_millis(self.exit_within_ms) + READ_MARGIN;
        let (readings, exit) = read_to_the_end(&mut server, &readers, 0, deadline, &mut |pid| {
            if let Ok(cpu) = procfs::cpu_time(pid) {
                if cpu >= last_cpu.1 {
                    last_cpu = (Instant::now(), cpu);
                }
            }
        })?;
        drop(stalled);
        let stdout = stdout_lines(&server, mark);
        let prefix = if second {
            format!("with a second {name} {second_after_ms} ms after the first: ")
        } else {
            String::new()
        };
        let quoted = |server: &mut Server| {
            std::iter::once(format!(
                "{readers_count} clients sent a frame each and read only after {name}; {} clients with a small receive window sent {} KiB each and never read, {resetting_count} of them reset once the server printed `Received ...`{}",
                stalled_count + resetting_count,
                stalled_sent.iter().min().copied().unwrap_or(0) / 1024,
                if second { format!("; {name} sent twice") } else { String::new() }
            ))
            .chain(Ctx::server_evidence(server))
        };
        let grace_cause = format!(
            "a client that never reads must not hold the shutdown: write pending output only for a grace period (the exit must come within {} ms of the signal), then close what is left and count those connections as errors",
            self.exit_within_ms
        );
        // 1. The exit, within the grace bound, although some clients never read.
        let exit_ms = match exit {
            None => {
                return Ok(Err(StepOutcome::fail(format!(
                    "{prefix}the server was still running {} ms after {name}, held by {stalled_count} clients that never read their echoes",
                    signalled.elapsed().as_millis()
                ))
                .cause_as(NO_GRACE_BOUND, grace_cause.clone())
                .evidence(quoted(&mut server))))
            }
            Some((at, status)) => {
                let after = at.duration_since(signalled);
                if !status.success() {
                    return Ok(Err(StepOutcome::fail(format!(
                        "{prefix}the server ended ({}) after {name}, not with exit status 0",
                        describe_status(status)
                    ))
                    .cause_as("shutdown.exit-status-with-non-readers", format!("{name} must end the server in order, with exit status 0, even while clients do not read"))
                    .evidence(quoted(&mut server))));
                }
                if after > Duration::from_millis(self.exit_within_ms) {
                    return Ok(Err(StepOutcome::fail(format!(
                        "{prefix}the server exited {} ms after {name} (bound {} ms), held that long by {stalled_count} clients that never read",
                        after.as_millis(),
                        self.exit_within_ms
                    ))
                    .cause_as(NO_GRACE_BOUND, grace_cause.clone())
                    .evidence(quoted(&mut server))));
                }
                after.as_millis()
            }
        };
        // 2. No spinning while it waited.
        let cpu_ms = last_cpu.1.saturating_sub(watched_from.1).as_millis();
        let window_ms = last_cpu.0.duration_since(watched_from.0).as_millis();
        if cpu_ms > self.max_cpu_ms as u128 {
            let failed = if second {
                StepOutcome::fail(format!(
                    "after a second {name} during the shutdown the server used {cpu_ms} ms of CPU in the {window_ms} ms until its exit (bound {} ms; the same shutdown with one signal stayed under it): its loop spins",
                    self.max_cpu_ms
                ))
                .cause_as("shutdown.second-signal-spins", "a signal nobody reads keeps the signalfd (or self-pipe) readable, so a level-triggered epoll_wait returns at once, again and again: read it until EAGAIN every time it is readable, or remove it from epoll once the shutdown has begun")
            } else {
                StepOutcome::fail(format!(
                    "while {stalled_count} clients that never read held the shutdown, the server used {cpu_ms} ms of CPU in the {window_ms} ms from {name} to its exit (bound {} ms): it does not sleep while it waits",
                    self.max_cpu_ms
                ))
                .cause_as("shutdown.polls-while-pending", "while output is pending, sleep in epoll_wait until a socket is writable or the grace period ends (a timeout computed from the deadline), instead of polling with a zero timeout")
            };
            return Ok(Err(failed
                .evidence(quoted(&mut server))
                .figure("cpu_ms", cpu_ms)));
        }
        // 3. The readers: every echo, then EOF, soon.
        let tally = Tally::of(&readings, &expected);
        if tally.lost > 0 || tally.resets > 0 || tally.unclosed > 0 {
            return Ok(Err(StepOutcome::fail(format!(
                "{prefix}of the {readers_count} clients that read, {} did not get their echo back, {} ended with a reset and {} were never closed, while {stalled_count} clients that never read held the shutdown",
                tally.lost, tally.resets, tally.unclosed
            ))
            .cause_as("shutdown.others-held-by-a-non-reader", "a client that never reads concerns only its own connection: every other one gets its echoes, then an orderly close (shutdown(Write), then close, nothing unread in the socket)")
            .evidence(quoted(&mut server))));
        }
        let last_eof_ms = readings
            .iter()
            .filter_map(|r| r.ended_at)
            .map(|at| at.duration_since(signalled).as_millis())
            .max()
            .unwrap_or(0);
        if last_eof_ms > self.eof_within_ms as u128 {
            return Ok(Err(StepOutcome::fail(format!(
                "{prefix}the {readers_count} clients that read had their echo at once but saw EOF only up to {last_eof_ms} ms after {name} (bound {} ms; the server exited after {exit_ms} ms), while {stalled_count} clients that never read held the shutdown",
                self.eof_within_ms
            ))
            .cause_as("shutdown.closes-late", "close each connection as soon as its last echo is written (shutdown(Write), then close): a client that never reads must not delay everyone else's EOF until the grace period ends")
            .evidence(quoted(&mut server))
            .figure("last_eof_ms", last_eof_ms)));
        }
        // 4. The lines, with the clients that never read counted as errors.
        let lines = match shutdown_lines(&stdout, name)? {
            Ok(lines) => lines,
            Err(message) => {
                return Ok(Err(StepOutcome::fail(format!("{prefix}{message}"))
                    .cause_as(LINES, LINES_CAUSE)
                    .evidence(quoted(&mut server))))
            }
        };
        let why = format!(
            "{stalled_count} clients never read and still had echoes unsent when the grace period ended, {resetting_count} reset during the shutdown (an I/O error on the socket), each of those connections an error, and the {readers_count} others read everything"
        );
        let errors = (stalled_count + resetting_count) as u64;
        if let Err(failed) = lines.judge(
            readers_count + stalled_count + resetting_count,
            None,
            errors,
            &why,
            name,
        ) {
            let mut failed = failed;
            failed.message = format!("{prefix}{}", failed.message);
            return Ok(Err(failed.evidence(quoted(&mut server))));
        }
        let cpu_note = format!("{cpu_ms} ms of CPU in {window_ms} ms");
        Ok(Ok(if second {
            Passed {
                summary: format!(
                    "a second {name} during the shutdown: {cpu_note} until the exit at {exit_ms} ms, the shutdown unchanged"
                ),
                proof: format!(
                    "shutdown: a second {name} during the shutdown: exit 0 within {} ms, at most {} ms of CPU until the exit, the shutdown unchanged",
                    self.exit_within_ms, self.max_cpu_ms
                ),
                figures: vec![("second_signal_cpu_ms".into(), cpu_ms.to_string())],
            }
        } else {
            Passed {
                summary: format!(
                    "with {stalled_count} clients that never read and {resetting_count} that reset: exit 0 {exit_ms} ms after {name} ({cpu_note}), the {readers_count} others echoed and at EOF within {last_eof_ms} ms, {errors} errors"
                ),
                proof: format!(
                    "shutdown: {name} with {stalled_count} clients that never read and {resetting_count} that reset: exit 0 within {} ms, {readers_count} reading clients echoed and saw EOF within {} ms, final stats {errors} errors",
                    self.exit_within_ms, self.eof_within_ms
                ),
                figures: vec![
                    ("stalled_exit_ms".into(), exit_ms.to_string()),
                    ("stalled_cpu_ms".into(), cpu_ms.to_string()),
                ],
            }
        }))
    }
}

/// Opens `count` connections; a failure is the step's.
fn connect_all(
    server: &mut Server,
    count: usize,
) -> std::result::Result<Vec<TcpStream>, StepOutcome> {
    let mut held = Vec::with_capacity(count);
    for client in 1..=count {
        match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
            Ok(stream) => held.push(stream),
            Err(err) => {
                return Err(StepOutcome::fail(format!(
                    "connection {client} of {count}: connect failed: {err}"
                ))
                .cause_as(STOPPED_ACCEPTING, STOPPED_ACCEPTING_CAUSE)
                .evidence(Ctx::server_evidence(server)))
            }
        }
    }
    Ok(held)
}

/// The failure when the server is gone before the checker signalled it.
fn died_before_the_signal(server: &mut Server) -> Option<StepOutcome> {
    let death = server.death_notice()?;
    Some(
        StepOutcome::fail("the server died before the signal was sent")
            .cause_as(
                "shutdown.died-before-the-signal",
                "clients that do not read their echoes must never end the server",
            )
            .evidence(std::iter::once(death).chain(server.output_tail(20))),
    )
}

/// Waits until the server printed `Received ...` since `mark` (the
/// shutdown has begun), or until `limit`.
fn wait_for_the_first_line(server: &Server, mark: u64, limit: Instant) {
    while Instant::now() < limit
        && !stdout_lines(server, mark)
            .iter()
            .any(|line| line.starts_with("Received"))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server's stdout since `mark`.
fn stdout_lines(server: &Server, mark: u64) -> Vec<String> {
    server
        .stdout_since(mark)
        .into_iter()
        .map(|(_, line)| line)
        .collect()
}

/// The exit's verdict: status 0 within `bound_ms` of `from` (`signal`,
/// called `name`, was sent), else the failure (its evidence still to add).
fn exit_verdict(
    exit: Option<(Instant, ExitStatus)>,
    from: Instant,
    bound_ms: u64,
    signal: Signal,
    name: &str,
) -> std::result::Result<u128, StepOutcome> {
    match exit {
        None => Err(StepOutcome::fail(format!(
            "the server was still running {} ms after {name}",
            from.elapsed().as_millis()
        ))
        .cause_as("shutdown.signal-not-handled", format!("{name} must end the server within {bound_ms} ms: read it from a signalfd (or a self-pipe) registered with epoll, then flush, close and return from main"))),
        Some((at, status)) => {
            let after = at.duration_since(from);
            if !status.success() {
                let failed = StepOutcome::fail(format!(
                    "the server ended ({}) after {name}, not with exit status 0",
                    describe_status(status)
                ));
                // Killed by the very signal sent: nothing handled it.
                return Err(if status.signal() == Some(signal as i32) {
                    failed.cause_as("shutdown.no-signal-handler", format!("without a handler {name} kills the process on the spot: block it and read it from a signalfd, shut down in order, and return from main with status 0"))
                } else {
                    failed.cause_as("shutdown.exit-status", format!("{name} must end the server with exit status 0: it ended otherwise (an error returned from main, or a crash); read its last output below"))
                });
            }
            if after > Duration::from_millis(bound_ms) {
                return Err(StepOutcome::fail(format!(
                    "the server exited {} ms after {name} (bound {bound_ms} ms)",
                    after.as_millis()
                ))
                .cause_as("shutdown.exit-slow", "shutting down must be quick: flush what is pending while the clients read, and give up on a client that does not read after a grace period"));
            }
            Ok(after.as_millis())
        }
    }
}

/// How the connections' readings compare with what they sent.
struct Tally {
    lost: usize,
    resets: usize,
    unclosed: usize,
    first_lost: Option<usize>,
}

impl Tally {
    fn of(readings: &[Reading], expected: &[Vec<u8>]) -> Tally {
        let short = |i: &usize| readings[*i].bytes != expected[*i];
        Tally {
            lost: (0..readings.len()).filter(short).count(),
            resets: readings
                .iter()
                .filter(|r| r.ending == Ending::Reset)
                .count(),
            unclosed: readings.iter().filter(|r| r.ending == Ending::Open).count(),
            first_lost: (0..readings.len()).find(short),
        }
    }
}

/// The numbers of the shutdown lines.
struct Lines {
    closing: u64,
    served: u64,
    errors: u64,
}

impl Lines {
    /// Checks the lines' numbers: `connections` closing, `frames` served
    /// (when the checker knows it), `errors` errors (`why` says why that
    /// many).
    fn judge(
        &self,
        connections: usize,
        frames: Option<u64>,
        errors: u64,
        why: &str,
        name: &str,
    ) -> std::result::Result<(), StepOutcome> {
        if self.closing != connections as u64 {
            return Err(StepOutcome::fail(format!(
                "the server says `Closing {} connections...` while the checker held {connections} open",
                self.closing
            ))
            .cause_as("shutdown.closing-count", "N is the number of connections open when the signal arrived"));
        }
        if let Some(frames) = frames {
            if self.served != frames {
                return Err(StepOutcome::fail(format!(
                    "the server says {} requests served; the checker sent {frames} frames, each echoed",
                    self.served
                ))
                .cause_as("shutdown.requests-count", "count one request per frame echoed, over the server's whole life, including the frames echoed during the shutdown"));
            }
        }
        if self.errors != errors {
            return Err(StepOutcome::fail(format!(
                "the server says `Final stats: {} requests served, {} errors` after {name}, not {errors} errors: {why}",
                self.served, self.errors
            ))
            .cause_as("shutdown.errors-count", "E counts the connections closed because of a failure: an I/O error (a reset, a broken pipe), a frame over --max-frame, or output still unsent when the grace period ended; a connection that got all its echoes and EOF is not one"));
        }
        Ok(())
    }
}

/// Finds the four shutdown lines, in order; `Ok(Err(message))` when one
/// is missing.
fn shutdown_lines(stdout: &[String], name: &str) -> Result<std::result::Result<Lines, String>> {
    let wanted = [
        format!(r"^Received {name}, shutting down\.\.\.$"),
        r"^Closing (\d+) connections\.\.\.$".to_string(),
        r"^All connections closed\.$".to_string(),
        r"^Final stats: (\d+) requests served, (\d+) errors$".to_string(),
    ];
    let mut at = 0;
    let mut found: Vec<Option<regex::Captures>> = Vec::new();
    for pattern in &wanted {
        let re = Regex::new(pattern)?;
        match stdout[at..].iter().position(|line| re.is_match(line)) {
            Some(offset) => {
                found.push(re.captures(&stdout[at + offset]));
                at += offset + 1;
            }
            None => {
                return Ok(Err(format!(
                "no line matching `{}` on stdout after {name} (in order after the ones before it)",
                pattern
                    .trim_start_matches('^')
                    .trim_end_matches('$')
                    .replace('\\', "")
            )))
            }
        }
    }
    let number = |i: usize, group: usize| -> u64 {
        found[i]
            .as_ref()
            .and_then(|c| c.get(group))
            .and_then(|m| m.as_str().parse().ok())
            .unwrap_or(0)
    };
    Ok(Ok(Lines {
        closing: number(1, 1),
        served: number(3, 1),
        errors: number(3, 2),
    }))
}

/// Reads every stream to its end (EOF, a reset, or `deadline`) while
/// watching for the server's exit: the first `threaded` streams each on a
/// thread of its own (they carry megabytes), the rest in non-blocking
/// passes every 10 ms. `tick` runs on every pass until the exit is seen.
/// Returns once every stream ended and the server exited, or at `deadline`.
#[allow(clippy::type_complexity)]
fn read_to_the_end(
    server: &mut Server,
    streams: &[TcpStream],
    threaded: usize,
    deadline: Instant,
    tick: &mut dyn FnMut(Pid),
) -> Result<(Vec<Reading>, Option<(Instant, ExitStatus)>)> {
    let threaded = threaded.min(streams.len());
    let mut readers = Vec::new();
    for stream in streams.iter().take(threaded) {
        let mut reader = stream.try_clone()?;
        readers.push(std::thread::spawn(move || {
            read_until_end(&mut reader, deadline)
        }));
    }
    for stream in streams.iter().skip(threaded) {
        stream.set_nonblocking(true)?;
    }
    let mut readings: Vec<Reading> = (0..streams.len())
        .map(|_| Reading {
            bytes: Vec::new(),
            ending: Ending::Open,
            ended_at: None,
        })
        .collect();
    let mut exit: Option<(Instant, ExitStatus)> = None;
    let mut chunk = [0u8; 4096];
    loop {
        if exit.is_none() {
            tick(server.pid);
        }
        let mut open = 0;
        for (i, mut stream) in streams.iter().enumerate().skip(threaded) {
            let reading = &mut readings[i];
            if reading.ending != Ending::Open {
                continue;
            }
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => {
                        reading.ending = Ending::Eof;
                        break;
                    }
                    Ok(n) => reading.bytes.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        reading.ending = Ending::Reset;
                        break;
                    }
                }
            }
            if reading.ending == Ending::Open {
                open += 1;
            } else {
                reading.ended_at = Some(Instant::now());
            }
        }
        if exit.is_none() {
            if let Some(status) = server.try_exit_status() {
                exit = Some((Instant::now(), status));
            }
        }
        let all_read = open == 0 && readers.iter().all(|r| r.is_finished());
        if (all_read && exit.is_some()) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, reader) in readers.into_iter().enumerate() {
        readings[i] = reader.join().unwrap_or(Reading {
            bytes: Vec::new(),
            ending: Ending::Open,
            ended_at: None,
        });
    }
    if exit.is_none() {
        if let Some(status) = server.wait_exit(Duration::from_millis(200)) {
            exit = Some((Instant::now(), status));
        }
    }
    if exit.is_some() {
        // Its last lines may still be in the pipe: this lets the output
        // readers reach its end (bounded) before the lines are judged.
        let _ = server.death_notice();
    }
    Ok((readings, exit))
}

/// Reads until EOF, a reset or `deadline`.
fn read_until_end(stream: &mut TcpStream, deadline: Instant) -> Reading {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let ending = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break Ending::Open;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break Ending::Eof,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Ending::Open
            }
            Err(_) => break Ending::Reset,
        }
    };
    let ended_at = (ending != Ending::Open).then(Instant::now);
    Reading {
        bytes,
        ending,
        ended_at,
    }
}

/// Writes frames of `HEAVY_PAYLOAD` bytes to every stream, without
/// blocking, until each has sent `bytes` (rounded to whole frames) or the
/// server has taken nothing for half a second (it stopped reading: its
/// output is full). Returns what each sent.
fn send_until_stuck(streams: &[TcpStream], bytes: usize) -> Result<Vec<usize>> {
    let frame = stress::frame::encode(&[0xa5; HEAVY_PAYLOAD]);
    let target = (bytes / frame.len()).max(1) * frame.len();
    for stream in streams {
        stream.set_nonblocking(true)?;
    }
    let mut sent = vec![0usize; streams.len()];
    let mut done = vec![false; streams.len()];
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut last_progress = Instant::now();
    while done.iter().any(|d| !d)
        && Instant::now() < give_up
        && last_progress.elapsed() < Duration::from_millis(500)
    {
        let mut progressed = false;
        for (i, mut stream) in streams.iter().enumerate() {
            if done[i] {
                continue;
            }
            let at = sent[i] % frame.len();
            let room = (target - sent[i]).min(frame.len() - at);
            match stream.write(&frame[at..at + room]) {
                Ok(n) => {
                    sent[i] += n;
                    progressed |= n > 0;
                    done[i] = sent[i] >= target || n == 0;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => done[i] = true,
            }
        }
        if progressed {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(sent)
}

/// Waits (bounded) until every thread of the process is blocked in a
/// syscall: an idle server, asleep in its wait. Gives up quietly.
fn wait_until_idle(pid: Pid, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match procfs::blocked_syscalls(pid) {
            Ok(threads) if threads.iter().all(Option::is_some) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return,
        }
    }
}

/// How many of the `(connection, bytes)` pairs have all their bytes
/// waiting unread in the server's side of the connection (its
/// `rx_queue`), waiting up to `limit` for loopback to deliver them.
fn wait_for_unread(pid: Pid, pairs: &[(&TcpStream, usize)], limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let sockets = tcp_sockets(pid)?;
        let mut unread = 0;
        for (stream, bytes) in pairs {
            let side = server_side(&sockets, stream);
            if side.is_some_and(|s| s.rx_queue >= *bytes as u64) {
                unread += 1;
            }
        }
        if unread == pairs.len() || Instant::now() >= deadline {
            return Ok(unread);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes of each connection's traffic the kernel holds, from the
/// server's unread input to the checker's unread echoes (both receive
/// queues and the server's send queue): what a client sent that is not
/// there is in the server's own buffers. `None` when /proc cannot tell.
fn in_the_kernel(pid: Pid, streams: &[TcpStream]) -> Option<Vec<u64>> {
    let sockets = tcp_sockets(pid).ok()?;
    streams
        .iter()
        .map(|stream| {
            let server = server_side(&sockets, stream)?;
            let client = client_side(&sockets, stream)?;
            Some(server.rx_queue + server.tx_queue + client.rx_queue)
        })
        .collect()
}

/// The bytes waiting in the kernel on the server's side of each stalled
/// connection (its `tx_queue`: sent but not acknowledged, the client's
/// window being full); `None` when /proc cannot tell.
fn stalled_send_queues(pid: Pid, streams: &[TcpStream]) -> Option<Vec<u64>> {
    let sockets = tcp_sockets(pid).ok()?;
    streams
        .iter()
        .map(|stream| server_side(&sockets, stream).map(|s| s.tx_queue))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_lines_give_their_numbers_in_order() {
        let stdout: Vec<String> = [
            "listening on 127.0.0.1:1",
            "Received SIGINT, shutting down...",
            "Closing 22 connections...",
            "All connections closed.",
            "Final stats: 40 requests served, 2 errors",
        ]
        .map(String::from)
        .to_vec();
        let lines = shutdown_lines(&stdout, "SIGINT").unwrap().unwrap();
        assert_eq!((lines.closing, lines.served, lines.errors), (22, 40, 2));
        let reversed: Vec<String> = stdout.iter().rev().cloned().collect();
        assert!(shutdown_lines(&reversed, "SIGINT").unwrap().is_err());
    }
}
