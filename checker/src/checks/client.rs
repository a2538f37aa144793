//! `client`: checks a stress CLIENT (w02-l15) instead of a server. The
//! checker runs its own echo servers on 127.0.0.1:0 (threads in the checker,
//! one per connection) and runs the student's binary against each with
//! `--host 127.0.0.1 --port P --clients C --frames F --seed S`, killed after
//! `timeout_secs`:
//!
//! - `correct`: exit 0, last line `C clients, C*F frames, 0 failures`, and
//!   the server really echoed C*F frames;
//! - `corrupting`: flips the last byte of one echoed frame in a thousand
//!   (the 500th, 1500th, ... echoed overall): exit non-zero, N >= 1 in the
//!   last line, and a line naming the corrupted frame's client and frame
//!   (read from its payload, `client C frame F`) with `expected`;
//! - `refusing`: accepts and closes the first 5 connections, then echoes:
//!   exit 0 with the right last line (the client retried).

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
}

/// Connections the refusing server accepts and closes at once.
const REFUSED: u64 = 5;

/// What a checker-side server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    frames: AtomicU64,
    /// Payloads of the frames that were corrupted, as sent by the client.
    corrupted: Mutex<Vec<Vec<u8>>>,
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
                        if fault == Fault::Refuse && n < REFUSED {
                            drop(stream); // accept-then-close: "at capacity"
                            continue;
                        }
                        let (stop3, seen3) = (Arc::clone(&stop2), Arc::clone(&seen2));
                        workers.push(std::thread::spawn(move || {
                            echo_connection(stream, fault, &stop3, &seen3)
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

fn echo_connection(mut stream: TcpStream, fault: Fault, stop: &AtomicBool, seen: &Seen) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    loop {
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
        if fault == Fault::Corrupt && n % 1000 == 499 && !echo.is_empty() {
            let last = echo.len() - 1;
            echo[last] ^= 0xFF;
            seen.corrupted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(payload);
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
    let deadline = Instant::now() + timeout;
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
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `client C frame F` at the start of a payload.
fn owner(payload: &[u8], frames_per_client: u64) -> Option<(u64, Vec<u64>)> {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(64)]).into_owned();
    let mut words = text.split(' ');
    if words.next()? != "client" {
        return None;
    }
    let client = words.next()?.parse().ok()?;
    if words.next()? != "frame" {
        return None;
    }
    // The filler after `frame F` is arbitrary bytes and may begin with a
    // digit: the frame is one of the numbers the digit run starts with (4,
    // 49, 497, ...) that a client of this run can have sent, longest last.
    let digits: String = words
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let frames: Vec<u64> = (1..=digits.len())
        .filter_map(|len| digits[..len].parse::<u64>().ok())
        .take_while(|&frame| frame <= frames_per_client)
        .collect();
    (!frames.is_empty()).then_some((client, frames))
}

/// Whether `line` names client `c` and frame `f` (whole numbers) and says
/// what was expected.
fn names(line: &str, c: u64, f: u64) -> bool {
    let words: Vec<String> = line
        .split(|ch: char| !ch.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .collect();
    let follows = |key: &str, n: u64| {
        words
            .windows(2)
            .any(|w| w[0] == key && w[1] == n.to_string())
    };
    follows("client", c) && follows("frame", f) && line.to_ascii_lowercase().contains("expected")
}

impl Check for Client {
    fn summary(&self) -> String {
        format!(
            "the client against the checker's own servers: a correct one ({} clients x {} frames), one corrupting 1 frame in 1000, one refusing the first {REFUSED} connections",
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
        //    make exactly one corruption (the 500th frame echoed).
        let (cc, cf) = (10, 100);
        let server = TestServer::start(Fault::Corrupt)?;
        ctx.log.detail(format!(
            "corrupting server on {} (flips the last byte of the 500th frame echoed)",
            server.addr
        ));
        let run = run_client(ctx, server.addr, cc, cf, timeout)?;
        let corrupted = server
            .seen
            .corrupted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        drop(server);
        let Some(bad) = corrupted.first() else {
            return Ok(StepOutcome::fail(format!(
                "against the corrupting server: the client sent fewer than 500 non-empty frames ({cc} clients x {cf} frames were asked for)"
            ))
            .cause("the client must send every frame it was asked for")
            .evidence(run.evidence()));
        };
        let Some((bad_client, bad_frames)) = owner(bad, cf) else {
            return Ok(StepOutcome::fail(
                "against the corrupting server: the corrupted frame's payload does not start with `client C frame F`",
            )
            .cause("each payload must start with the text `client C frame F` (then any filler), so a wrong echo can be traced")
            .evidence(run.evidence()));
        };
        let counted = run
            .last_line()
            .strip_prefix(&format!("{cc} clients, {} frames, ", cc * cf))
            .and_then(|rest| rest.strip_suffix(" failures"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 1);
        // The likeliest reading of the payload, for the messages.
        let bad_frame = *bad_frames.last().expect("owner returns at least one");
        let named = run
            .stdout
            .iter()
            .any(|l| bad_frames.iter().any(|&f| names(l, bad_client, f)));
        if run.killed || run.exit == Some(0) || !counted || !named {
            let what = if run.killed {
                "it did not finish in time".to_string()
            } else if run.exit == Some(0) {
                "it exited 0 (success)".to_string()
            } else if !counted {
                format!(
                    "its last line `{}` does not count the failure",
                    run.last_line()
                )
            } else {
                format!(
                    "no line names client {bad_client} frame {bad_frame} with what was expected"
                )
            };
            return Ok(StepOutcome::fail(format!(
                "against a server that corrupted client {bad_client}'s frame {bad_frame} (the last payload byte flipped): {what}"
            ))
            .cause("compare every echoed byte with what was sent; on a difference print a line naming the client and frame with expected vs actual, count it, and exit non-zero")
            .evidence(run.evidence()));
        }
        ctx.log.detail(format!(
            "corrupting server: client {bad_client} frame {bad_frame} reported; `{}`",
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
        Ok(StepOutcome::pass(format!(
            "correct server: `{expected_line}`; corrupted client {bad_client} frame {bad_frame} reported, exit non-zero; {REFUSED} refusals retried ({connections} connections)"
        ))
        .proof_line(format!(
            "client: {c} clients x {f} frames verified against a correct server, a corrupted frame named, {REFUSED} refused connects retried"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digit_at_the_start_of_the_filler_is_not_read_as_part_of_the_frame_number() {
        // Seen in CI: frame 49 whose filler began with the byte `7`.
        let mut payload = b"client 2 frame 49".to_vec();
        payload.extend_from_slice(b"7\x01\xfe");
        assert_eq!(owner(&payload, 100), Some((2, vec![4, 49])));
    }

    #[test]
    fn every_frame_number_the_digits_can_start_with_stays_a_candidate() {
        let payload = b"client 3 frame 100".to_vec();
        assert_eq!(owner(&payload, 100), Some((3, vec![1, 10, 100])));
        assert_eq!(owner(&payload, 99), Some((3, vec![1, 10])));
    }

    #[test]
    fn a_payload_without_the_client_and_frame_text_has_no_owner() {
        assert_eq!(owner(b"frame 3 client 2", 100), None);
        assert_eq!(owner(b"client x frame 3", 100), None);
        assert_eq!(owner(b"client 2 frame x", 100), None);
    }
}
