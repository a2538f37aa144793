//! `client`: checks a stress CLIENT (w02-l15) instead of a server. The
//! checker runs its own echo servers on 127.0.0.1:0 (threads in the checker,
//! one per connection) and runs the student's binary against each with
//! `--host 127.0.0.1 --port P --clients C --frames F --seed S`, killed after
//! `timeout_secs`:
//!
//! - `correct`: exit 0, last line `C clients, C*F frames, 0 failures`, and
//!   the server really echoed C*F frames;
//! - `corrupting`: flips the last byte of one echoed frame in a thousand
//!   (the first non-empty frame from the 500th echoed overall, then from the
//!   1500th, ...): exit non-zero, exactly that many failures in the last
//!   line (the length is intact, so every other echo can still be
//!   verified), and a line with `expected` naming that frame by its number
//!   on its connection, counted from 0. The connection alone does not say
//!   which of the client's threads it was, so the line's client number is
//!   tied only when the payload says whose it is (`client C frame F` at its
//!   start, a help the lesson suggests, never a rule: any payload bytes
//!   pass); otherwise any client number of the run (from 0 or from 1) does;
//! - `refusing`: accepts and closes the first 5 connections, then echoes:
//!   exit 0 with the right last line (the client retried);
//! - `refusing-all`: accepts and closes every connection (1 client): the
//!   client gives up after exactly `CONNECT_ATTEMPTS` (8) connections, its
//!   waits between them at least 50 ms, 100 ms, 200 ms... (doubling, capped
//!   at 1 s; 10 % and 10 ms slack) and the first three together under
//!   1.5 x 350 ms; it counts all its frames failed and exits non-zero;
//! - `no listener`: a port nothing listens on (connects are refused by the
//!   kernel, 1 client): the same 8 attempts and waits show as the run's
//!   length, 3.55 s (at least 90 % of it, at most 650 ms more), then all
//!   frames failed and a non-zero exit;
//! - `closing`: closes each connection after echoing 3 frames: a connection
//!   lost after its first echo is not a refusal, so the frame it was lost
//!   on and every later one fail: `C*(F-3)` failures, exit non-zero.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Check, Ctx, Subject};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    /// `--clients` against the correct and refusing servers.
    pub clients: u64,
    /// `--frames` against the correct and refusing servers.
    pub frames: u64,
    /// Bound on each run of the client, in seconds (then it is killed).
    pub timeout_secs: u64,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            clients: 20,
            frames: 50,
            timeout_secs: 30,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    Corrupt,
    Refuse,
    RefuseAll,
    CloseAfter,
}

/// Connection attempts a client makes before it gives up (the lesson's
/// CONNECT_ATTEMPTS), and its first and longest wait between two.
const CONNECT_ATTEMPTS: u64 = 8;
const FIRST_BACKOFF_MS: u64 = 50;
const MAX_BACKOFF_MS: u64 = 1000;

/// Frames the closing server echoes on each connection before it closes.
const ECHOED_BEFORE_CLOSE: u64 = 3;

/// The wait due before retry `i` (from 1), in ms.
fn backoff_ms(i: u64) -> u64 {
    (FIRST_BACKOFF_MS << (i - 1).min(10)).min(MAX_BACKOFF_MS)
}

/// Connections the refusing server accepts and closes at once.
const REFUSED: u64 = 5;

/// The corrupting server flips a byte of the first non-empty frame echoed
/// from this many frames on (0-based), then again every `CORRUPT_EVERY`.
const FIRST_CORRUPTED: u64 = 499;
const CORRUPT_EVERY: u64 = 1000;

/// One frame the corrupting server changed.
#[derive(Debug, Clone)]
struct Corruption {
    /// The connection, in accept order, from 1.
    connection: u64,
    /// The frame's number on its connection, from 0.
    frame: u64,
    /// The payload as the client sent it.
    payload: Vec<u8>,
}

/// What a checker-side server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    frames: AtomicU64,
    /// When each connection was accepted.
    accepts: Mutex<Vec<Instant>>,
    /// The frames that were corrupted, and the overall frame count from
    /// which the next one is due.
    corrupted: Mutex<(Vec<Corruption>, u64)>,
}

impl Seen {
    /// Whether this echo (the `n`-th overall, 0-based) is the one to
    /// corrupt; records it if so.
    fn corrupt_now(&self, n: u64, connection: u64, frame: u64, payload: &[u8]) -> bool {
        if payload.is_empty() {
            return false;
        }
        let mut guard = self.corrupted.lock().unwrap_or_else(|e| e.into_inner());
        let (done, next_due) = &mut *guard;
        if *next_due == 0 {
            *next_due = FIRST_CORRUPTED;
        }
        if n < *next_due {
            return false;
        }
        *next_due += CORRUPT_EVERY;
        done.push(Corruption {
            connection,
            frame,
            payload: payload.to_vec(),
        });
        true
    }

    fn corruptions(&self) -> Vec<Corruption> {
        self.corrupted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// An echo server on its own threads; stops (and its threads end) on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(fault: Fault) -> Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a test server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let (stop2, seen2) = (Arc::clone(&stop), Arc::clone(&seen));
        let acceptor = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let n = seen2.connections.fetch_add(1, Ordering::Relaxed);
                        seen2
                            .accepts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                        if (fault == Fault::Refuse && n < REFUSED) || fault == Fault::RefuseAll {
                            drop(stream); // accept-then-close: "at capacity"
                            continue;
                        }
                        let (stop3, seen3) = (Arc::clone(&stop2), Arc::clone(&seen2));
                        workers.push(std::thread::spawn(move || {
                            echo_connection(stream, n + 1, fault, &stop3, &seen3)
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for worker in workers {
                let _ = worker.join();
            }
        });
        Ok(TestServer {
            addr,
            stop,
            seen,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads exactly `buf.len()` bytes, giving up when `stop` is set or the
/// peer goes away. Short read timeouts keep the stop flag responsive.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match stream.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Echoes frames until the client leaves; `connection` is its number in
/// accept order (from 1).
fn echo_connection(
    mut stream: TcpStream,
    connection: u64,
    fault: Fault,
    stop: &AtomicBool,
    seen: &Seen,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    for frame_here in 0u64.. {
        if fault == Fault::CloseAfter && frame_here == ECHOED_BEFORE_CLOSE {
            return; // closed mid-run, after its first echoes
        }
        let mut header = [0u8; 4];
        if !read_full(&mut stream, &mut header, stop) {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > 65536 {
            return; // oversize: close, as the course's servers do
        }
        let mut payload = vec![0u8; len];
        if !read_full(&mut stream, &mut payload, stop) {
            return;
        }
        let n = seen.frames.fetch_add(1, Ordering::Relaxed);
        let mut echo = payload.clone();
        if fault == Fault::Corrupt && seen.corrupt_now(n, connection, frame_here, &payload) {
            let last = echo.len() - 1;
            echo[last] ^= 0xFF;
        }
        let mut frame = header.to_vec();
        frame.extend_from_slice(&echo);
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

/// A finished (or killed) run of the client.
struct Run {
    argv: String,
    exit: Option<i32>,
    killed: bool,
    /// From its start to its exit (or kill).
    elapsed: Duration,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stdout
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(String::as_str)
            .unwrap_or("")
    }

    fn evidence(&self) -> Vec<String> {
        let mut lines = vec![format!("ran: {}", self.argv)];
        lines.push(match (self.killed, self.exit) {
            (true, _) => "killed: it did not finish in time".to_string(),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "ended by a signal".to_string(),
        });
        let tail = |v: &Vec<String>, n: usize| v[v.len().saturating_sub(n)..].to_vec();
        lines.extend(
            tail(&self.stdout, 10)
                .into_iter()
                .map(|l| format!("[client stdout] {l}")),
        );
        lines.extend(
            tail(&self.stderr, 5)
                .into_iter()
                .map(|l| format!("[client stderr] {l}")),
        );
        lines
    }
}

fn run_client(
    ctx: &Ctx,
    addr: SocketAddr,
    clients: u64,
    frames: u64,
    timeout: Duration,
) -> Result<Run> {
    let mut argv: Vec<String> = match &ctx.subject {
        Subject::Crate { .. } => vec![ctx
            .binary
            .as_ref()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "course.yaml: lesson {}: `client` runs before `build`",
                    ctx.lesson.id
                )
            })?
            .display()
            .to_string()],
        Subject::Exec { argv } => argv.clone(),
    };
    argv.extend([
        "--host".to_string(),
        addr.ip().to_string(),
        "--port".into(),
        addr.port().to_string(),
        "--clients".into(),
        clients.to_string(),
        "--frames".into(),
        frames.to_string(),
        "--seed".into(),
        (ctx.seed % 1_000_000).to_string(),
    ]);
    let shown = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the client: {shown}"))?;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let deadline = started + timeout;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Run {
        argv: shown,
        exit: status.code(),
        killed,
        elapsed: started.elapsed(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The client number a payload gives itself, when it starts with
/// `client C frame F` and F is `frame` (its number on its connection): the
/// payload then ties the corrupted frame to a client of the run. `None` for
/// any other payload (random bytes, other text): a correct client may send
/// whatever bytes it likes.
fn tied_client(payload: &[u8], frame: u64) -> Option<u64> {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(64)]).into_owned();
    let rest = text.strip_prefix("client ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let client = digits.parse().ok()?;
    // The filler after `frame F` is arbitrary bytes and may begin with a
    // digit: F is known, so only its digits are compared.
    rest[digits.len()..]
        .strip_prefix(&format!(" frame {frame}"))
        .map(|_| client)
}

/// The words of a line, lower case, split at anything not alphanumeric.
fn words(line: &str) -> Vec<String> {
    line.split(|ch: char| !ch.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The numbers that follow `key` in `words` (`frame 49` gives 49).
fn numbers_after(words: &[String], key: &str) -> Vec<u64> {
    words
        .windows(2)
        .filter(|w| w[0] == key)
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// A line reporting a mismatch: it says `expected`, and names a frame.
/// Returns the client and frame numbers it names.
fn mismatch_report(line: &str) -> Option<(Vec<u64>, Vec<u64>)> {
    let words = words(line);
    if !words.iter().any(|w| w == "expected") {
        return None;
    }
    let frames = numbers_after(&words, "frame");
    (!frames.is_empty()).then(|| (numbers_after(&words, "client"), frames))
}

/// How the client's lines report the corrupted frame.
#[derive(Debug, PartialEq)]
enum Named {
    /// A line names the frame and an acceptable client.
    Rightly,
    /// Lines name the frame, but only with other clients than the tied one.
    WrongClient(Vec<u64>),
    /// No line names the frame; these frames are named instead.
    WrongFrame(Vec<u64>),
}

/// Judges `stdout` for the report of `bad`: a line with `expected` naming
/// frame `bad.frame` and `tied` as the client if the payload ties one,
/// else any client number of a run of `clients` (counted from 0 or 1).
fn judge_report(stdout: &[String], frame: u64, tied: Option<u64>, clients: u64) -> Named {
    let reports: Vec<(Vec<u64>, Vec<u64>)> =
        stdout.iter().filter_map(|l| mismatch_report(l)).collect();
    let naming_frame: Vec<&Vec<u64>> = reports
        .iter()
        .filter(|(_, frames)| frames.contains(&frame))
        .map(|(clients, _)| clients)
        .collect();
    if naming_frame.is_empty() {
        let mut others: Vec<u64> = reports.iter().flat_map(|(_, f)| f.clone()).collect();
        others.sort_unstable();
        others.dedup();
        return Named::WrongFrame(others);
    }
    let acceptable = |c: &u64| match tied {
        Some(tied) => *c == tied,
        None => *c <= clients,
    };
    if naming_frame
        .iter()
        .any(|named| named.iter().any(acceptable))
    {
        return Named::Rightly;
    }
    let mut seen: Vec<u64> = naming_frame.into_iter().flatten().copied().collect();
    seen.sort_unstable();
    seen.dedup();
    Named::WrongClient(seen)
}

/// The likely cause when the corrupted frame is not reported rightly.
const REPORT_CAUSE: &str = "compare every echoed byte with what was sent; on a difference print a line naming the client and frame (the frame's number on its connection, from 0) with expected vs actual, count it, and exit non-zero";

/// The likely cause when the failures are miscounted.
const COUNT_CAUSE: &str = "N counts the frames whose echo differed: a frame with a wrong byte but the right length leaves the stream in step, so count it once and go on verifying the frames after it";

/// The likely cause when the client does not stop after its attempts.
const BUDGET_CAUSE: &str = "make at most CONNECT_ATTEMPTS (8) connection attempts per client, refused connects and closes before the first echo counted together, then give up";

/// The likely cause when the waits between attempts are wrong.
const BACKOFF_CAUSE: &str = "wait before each retry: 50 ms before the first, doubling each time, capped at 1 s (FIRST_BACKOFF * 2^(attempt-1), at most MAX_BACKOFF)";

/// The likely cause when a client that gave up is not counted.
const GIVE_UP_CAUSE: &str = "a client that cannot connect after its attempts fails every one of its frames: count them all in N and exit non-zero";

/// How a run ended, in words.
fn exit_shown(run: &Run) -> String {
    match (run.killed, run.exit) {
        (true, _) => "a kill after the time limit".to_string(),
        (false, Some(code)) => format!("exit {code}"),
        _ => "a signal".into(),
    }
}

impl Check for Client {
    fn summary(&self) -> String {
        format!(
            "the client against the checker's own servers: a correct one ({} clients x {} frames), one corrupting 1 frame in 1000, one refusing the first {REFUSED} connections, one refusing all, a port with no listener, one closing after {ECHOED_BEFORE_CLOSE} echoes",
            self.clients, self.frames
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let timeout = Duration::from_secs(self.timeout_secs);
        let (c, f) = (self.clients, self.frames);
        let expected_line = format!("{c} clients, {} frames, 0 failures", c * f);

        // 1. A correct server.
        let server = TestServer::start(Fault::None)?;
        ctx.log.detail(format!("correct server on {}", server.addr));
        let run = run_client(ctx, server.addr, c, f, timeout)?;
        let echoed = server.seen.frames.load(Ordering::Relaxed);
        drop(server);
        if run.killed || run.exit != Some(0) || run.last_line().trim() != expected_line {
            return Ok(StepOutcome::fail(format!(
                "against a correct echo server: expected exit 0 and the last line `{expected_line}`, got {} and `{}`",
                match (run.killed, run.exit) { (true, _) => "a kill after the time limit".to_string(), (false, Some(code)) => format!("exit {code}"), _ => "a signal".into() },
                run.last_line()
            ))
            .cause("every echo from a correct server matches: the client must send C x F frames, verify each, print `C clients, C*F frames, N failures` last and exit 0 exactly when N is 0")
            .evidence(run.evidence()));
        }
        if echoed < c * f {
            return Ok(StepOutcome::fail(format!(
                "the client reported `{expected_line}`, but the server echoed only {echoed} frames"
            ))
            .cause(
                "the client must really send every frame and wait for its echo before counting it",
            )
            .evidence(run.evidence()));
        }
        ctx.log.detail(format!(
            "correct server: `{}`, exit 0, {echoed} frames echoed",
            run.last_line()
        ));

        // 2. A server that corrupts one frame in a thousand: 10 x 100 frames
        //    make exactly one corruption (from the 500th frame echoed).
        let (cc, cf) = (10, 100);
        let server = TestServer::start(Fault::Corrupt)?;
        ctx.log.detail(format!(
            "corrupting server on {} (flips the last byte of the first non-empty frame from the 500th echoed)",
            server.addr
        ));
        let run = run_client(ctx, server.addr, cc, cf, timeout)?;
        let corrupted = server.seen.corruptions();
        drop(server);
        let Some(bad) = corrupted.first() else {
            return Ok(StepOutcome::fail(format!(
                "against the corrupting server: the client sent fewer than 500 non-empty frames ({cc} clients x {cf} frames were asked for)"
            ))
            .cause("the client must send every frame it was asked for")
            .evidence(run.evidence()));
        };
        let tied = tied_client(&bad.payload, bad.frame);
        let last = bad.payload.last().copied().unwrap_or(0);
        let mut facts = vec![format!(
            "the checker's server corrupted connection {} (of {cc}, in accept order): its frame {} (counted from 0), {} payload bytes, the last byte {last:02x} sent back as {:02x}",
            bad.connection,
            bad.frame,
            bad.payload.len(),
            last ^ 0xFF
        )];
        if let Some(client) = tied {
            facts.push(format!(
                "that payload begins `client {client} frame {}`: the mismatch line must name client {client}",
                bad.frame
            ));
        }
        let whose = match tied {
            Some(client) => format!(", client {client}'s by its payload"),
            None => String::new(),
        };
        let counted = run
            .last_line()
            .strip_prefix(&format!("{cc} clients, {} frames, ", cc * cf))
            .and_then(|rest| rest.strip_suffix(" failures"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        let named = judge_report(&run.stdout, bad.frame, tied, cc);
        let wrong = if run.killed {
            Some(("it did not finish in time".to_string(), REPORT_CAUSE))
        } else if run.exit == Some(0) {
            Some(("it exited 0 (success)".to_string(), REPORT_CAUSE))
        } else if counted != Some(corrupted.len() as u64) {
            let what = match counted {
                Some(n) => format!(
                    "its last line `{}` counts {n} failures; exactly {} frame was corrupted",
                    run.last_line(),
                    corrupted.len()
                ),
                None => format!(
                    "its last line `{}` is not `{cc} clients, {} frames, N failures`",
                    run.last_line(),
                    cc * cf
                ),
            };
            Some((what, COUNT_CAUSE))
        } else {
            match &named {
                Named::Rightly => None,
                Named::WrongFrame(others) if others.is_empty() => Some((
                    format!("no line with `expected` names frame {}", bad.frame),
                    REPORT_CAUSE,
                )),
                Named::WrongFrame(others) => Some((
                    format!(
                        "no line with `expected` names frame {}; the client named frame {} (frames are counted from 0 on each connection: the first frame sent is frame 0)",
                        bad.frame,
                        others
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    REPORT_CAUSE,
                )),
                Named::WrongClient(clients) => {
                    let shown = if clients.is_empty() {
                        "no client".to_string()
                    } else {
                        format!(
                            "client {}",
                            clients
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let wanted = match tied {
                        Some(client) => format!("client {client}, whose payload it was"),
                        None => format!("one of the run's client numbers (0 to {cc})"),
                    };
                    Some((
                        format!(
                            "a line with `expected` names frame {} but {shown}, not {wanted}",
                            bad.frame
                        ),
                        REPORT_CAUSE,
                    ))
                }
            }
        };
        if let Some((what, cause)) = wrong {
            let mut evidence = facts;
            evidence.extend(run.evidence());
            return Ok(StepOutcome::fail(format!(
                "against a server that corrupted one frame (frame {} of its connection, counted from 0{whose}; the last payload byte flipped): {what}",
                bad.frame
            ))
            .cause(cause)
            .evidence(evidence));
        }
        let bad_frame = bad.frame;
        ctx.log.detail(format!(
            "corrupting server: frame {bad_frame} of connection {} corrupted{}; reported, and counted: `{}`",
            bad.connection,
            tied.map_or(String::new(), |client| format!(" (client {client}'s by its payload)")),
            run.last_line()
        ));

        // 3. A server that refuses (accept-then-close) the first 5 connects.
        let (rc, rf) = (c.min(4), f);
        let refused_line = format!("{rc} clients, {} frames, 0 failures", rc * rf);
        let server = TestServer::start(Fault::Refuse)?;
        ctx.log.detail(format!(
            "refusing server on {} (closes the first {REFUSED} connections at once)",
            server.addr
        ));
        let run = run_client(ctx, server.addr, rc, rf, timeout)?;
        let connections = server.seen.connections.load(Ordering::Relaxed);
        drop(server);
        if run.killed || run.exit != Some(0) || run.last_line().trim() != refused_line {
            return Ok(StepOutcome::fail(format!(
                "against a server that closed the first {REFUSED} connections at once: expected exit 0 and `{refused_line}`, got `{}` ({} connections made)",
                run.last_line(),
                connections
            ))
            .cause("a connection closed before its first echo means the server is at capacity: wait (50 ms, then doubling) and connect again, starting from frame 0")
            .evidence(run.evidence()));
        }
        // 4. A server that refuses every connection: the client gives up
        //    after CONNECT_ATTEMPTS, waiting longer each time.
        let short = Duration::from_secs(12).min(timeout.max(Duration::from_secs(8)));
        let gf = 10;
        let given_up = format!("1 clients, {gf} frames, {gf} failures");
        let server = TestServer::start(Fault::RefuseAll)?;
        ctx.log.detail(format!(
            "refusing-all server on {} (closes every connection at once)",
            server.addr
        ));
        let run = run_client(ctx, server.addr, 1, gf, short)?;
        let accepts = server
            .seen
            .accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        drop(server);
        let gaps: Vec<u64> = accepts
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_millis() as u64)
            .collect();
        let shown_gaps = gaps
            .iter()
            .map(|g| format!("{g} ms"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut evidence = vec![format!(
            "{} connections, the waits between them: {}",
            accepts.len(),
            if shown_gaps.is_empty() {
                "none".to_string()
            } else {
                shown_gaps.clone()
            }
        )];
        evidence.extend(run.evidence());
        let wrong = if run.killed {
            Some((
                format!("it did not give up within {} s", short.as_secs()),
                BUDGET_CAUSE,
            ))
        } else if accepts.len() as u64 != CONNECT_ATTEMPTS {
            Some((
                format!(
                    "it connected {} times; a client makes exactly {CONNECT_ATTEMPTS} attempts before it gives up",
                    accepts.len()
                ),
                BUDGET_CAUSE,
            ))
        } else if let Some((i, gap)) = gaps
            .iter()
            .enumerate()
            .map(|(i, g)| (i as u64 + 1, *g))
            .find(|(i, g)| *g + 10 < backoff_ms(*i) * 9 / 10)
        {
            Some((
                format!(
                    "it waited {gap} ms before retry {i}; the wait is {} ms there (50 ms, doubling, at most 1 s)",
                    backoff_ms(i)
                ),
                BACKOFF_CAUSE,
            ))
        } else if gaps.iter().take(3).sum::<u64>() > (1..=3).map(backoff_ms).sum::<u64>() * 3 / 2 {
            Some((
                format!(
                    "its first three waits took {} ms together; 50 + 100 + 200 ms are due",
                    gaps.iter().take(3).sum::<u64>()
                ),
                BACKOFF_CAUSE,
            ))
        } else if run.exit == Some(0) || run.last_line().trim() != given_up {
            Some((
                format!(
                    "expected a non-zero exit and `{given_up}` (every frame of a client that cannot connect failed), got {} and `{}`",
                    exit_shown(&run),
                    run.last_line()
                ),
                GIVE_UP_CAUSE,
            ))
        } else {
            None
        };
        if let Some((what, cause)) = wrong {
            return Ok(StepOutcome::fail(format!(
                "against a server that closed every connection at once (1 client): {what}"
            ))
            .cause(cause)
            .evidence(evidence));
        }
        ctx.log.detail(format!(
            "refusing-all server: {CONNECT_ATTEMPTS} connections, waits {shown_gaps}; `{}`",
            run.last_line()
        ));

        // 5. No listener at all: connects are refused by the kernel.
        let unused = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let closed_addr = unused.local_addr()?;
        drop(unused);
        ctx.log.detail(format!("no listener on {closed_addr}"));
        let run = run_client(ctx, closed_addr, 1, gf, short)?;
        let due: u64 = (1..CONNECT_ATTEMPTS).map(backoff_ms).sum();
        let took = run.elapsed.as_millis() as u64;
        let wrong = if run.killed {
            Some((
                format!("it did not give up within {} s", short.as_secs()),
                BUDGET_CAUSE,
            ))
        } else if took < due * 9 / 10 {
            Some((
                format!(
                    "it gave up after {took} ms; {CONNECT_ATTEMPTS} attempts with their waits take {due} ms (a refused connect is retried like a refusal)"
                ),
                BACKOFF_CAUSE,
            ))
        } else if took > due + 650 {
            Some((
                format!(
                    "it gave up after {took} ms; {CONNECT_ATTEMPTS} attempts with their waits take {due} ms: more attempts or longer waits than that"
                ),
                BUDGET_CAUSE,
            ))
        } else if run.exit == Some(0) || run.last_line().trim() != given_up {
            Some((
                format!(
                    "expected a non-zero exit and `{given_up}`, got {} and `{}`",
                    exit_shown(&run),
                    run.last_line()
                ),
                GIVE_UP_CAUSE,
            ))
        } else {
            None
        };
        if let Some((what, cause)) = wrong {
            return Ok(StepOutcome::fail(format!(
                "against a port nothing listens on (connects refused, 1 client): {what}"
            ))
            .cause(cause)
            .evidence(run.evidence()));
        }
        ctx.log.detail(format!(
            "no listener: gave up after {took} ms ({due} ms of waits due); `{}`",
            run.last_line()
        ));

        // 6. A server that closes each connection after 3 echoes.
        let (lc, lf) = (4, 10);
        let lost = lc * (lf - ECHOED_BEFORE_CLOSE);
        let lost_line = format!("{lc} clients, {} frames, {lost} failures", lc * lf);
        let server = TestServer::start(Fault::CloseAfter)?;
        ctx.log.detail(format!(
            "closing server on {} (closes each connection after {ECHOED_BEFORE_CLOSE} echoes)",
            server.addr
        ));
        let run = run_client(ctx, server.addr, lc, lf, timeout)?;
        drop(server);
        if run.killed || run.exit == Some(0) || run.last_line().trim() != lost_line {
            return Ok(StepOutcome::fail(format!(
                "against a server that closed each connection after {ECHOED_BEFORE_CLOSE} echoes ({lc} clients x {lf} frames): expected a non-zero exit and `{lost_line}`, got {} and `{}`",
                exit_shown(&run),
                run.last_line()
            ))
            .cause("a connection lost after its first echo is not a refusal: the frame it was lost on and every later frame of that client failed (here frames 3 to 9 of each)")
            .evidence(run.evidence()));
        }
        ctx.log
            .detail(format!("closing server: `{}`", run.last_line()));

        Ok(StepOutcome::pass(format!(
            "correct server: `{expected_line}`; corrupted frame {bad_frame} reported, 1 failure counted, exit non-zero; {REFUSED} refusals retried ({connections} connections)"
        ))
        .proof_line(format!(
            "client: {c} clients x {f} frames verified against a correct server, a corrupted frame named, {REFUSED} refused connects retried"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn a_payload_ties_its_client_only_when_it_names_the_corrupted_frame() {
        // Seen in CI: frame 49 whose filler began with the byte `7`.
        let mut payload = b"client 2 frame 49".to_vec();
        payload.extend_from_slice(b"7\x01\xfe");
        assert_eq!(tied_client(&payload, 49), Some(2));
        assert_eq!(tied_client(b"client 3 frame 50 ...", 49), None);
        assert_eq!(tied_client(b"frame 3 client 2", 3), None);
        assert_eq!(tied_client(b"client x frame 3", 3), None);
        assert_eq!(tied_client(&[0x9c, 0x63, 0x00, 0x01], 0), None);
    }

    #[test]
    fn the_mismatch_line_is_judged_by_the_frame_and_any_client_of_the_run() {
        let stdout = lines(&[
            "client 1 frame 49: mismatch at byte 1538: expected [63] got [9c]",
            "10 clients, 1000 frames, 1 failures",
        ]);
        assert_eq!(judge_report(&stdout, 49, None, 10), Named::Rightly);
        // Numbered from 1: client 10 of 10 is a client of the run too.
        let from_one = lines(&["Client 10, frame 49: expected 63, got 9c"]);
        assert_eq!(judge_report(&from_one, 49, None, 10), Named::Rightly);
        assert_eq!(
            judge_report(&stdout, 50, None, 10),
            Named::WrongFrame(vec![49])
        );
        assert_eq!(
            judge_report(&lines(&["client 11 frame 49: expected 63"]), 49, None, 10),
            Named::WrongClient(vec![11])
        );
    }

    #[test]
    fn a_tied_client_must_be_the_one_named() {
        let stdout = lines(&["client 3 frame 49: mismatch: expected 63, got 9c"]);
        assert_eq!(judge_report(&stdout, 49, Some(3), 10), Named::Rightly);
        assert_eq!(
            judge_report(&stdout, 49, Some(4), 10),
            Named::WrongClient(vec![3])
        );
    }

    #[test]
    fn a_line_without_expected_is_no_report() {
        let stdout = lines(&["client 3 frame 49: connection lost"]);
        assert_eq!(
            judge_report(&stdout, 49, None, 10),
            Named::WrongFrame(vec![])
        );
    }

    #[test]
    fn the_corruption_skips_empty_frames_and_comes_once_a_thousand() {
        let seen = Seen::default();
        assert!(!seen.corrupt_now(10, 1, 10, b"x"));
        assert!(!seen.corrupt_now(499, 1, 20, b""));
        assert!(seen.corrupt_now(500, 2, 21, b"x"));
        assert!(!seen.corrupt_now(501, 2, 22, b"x"));
        assert!(seen.corrupt_now(1499, 3, 7, b"x"));
        let done = seen.corruptions();
        assert_eq!(done.len(), 2);
        assert_eq!((done[0].connection, done[0].frame), (2, 21));
    }
}
