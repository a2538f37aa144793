//! `connect_burst`: many clients (500 by default) connect at once, from a
//! bounded set of checker threads; each sends one frame and must get its
//! echo before a generous deadline (SYN retransmits after an accept-queue
//! overflow take seconds). Connections pile up in the listener's queue
//! faster than one event per connection: an edge-triggered listener that
//! accepts once per event leaves clients connected but never accepted.
//!
//! A drain ends with WouldBlock every time; the server's stderr during the
//! burst must not report it as an error (an OS error text of EAGAIN, or
//! `WouldBlock` as Debug prints it): that is a line per wake-up, in which
//! real errors drown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::report::StepOutcome;

/// Failed clients quoted in the evidence.
const QUOTED: usize = 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectBurst {
    /// Clients connecting at once.
    pub clients: usize,
    /// Checker threads sharing the connects (each connects its share back to back).
    pub threads: usize,
    /// Bound on every client getting its echo.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for ConnectBurst {
    fn default() -> Self {
        ConnectBurst {
            clients: 500,
            threads: 50,
            timeout_secs: 15,
            args: Vec::new(),
        }
    }
}

/// What happened to one client.
enum Fate {
    Echoed,
    Failed(String),
}

impl Check for ConnectBurst {
    fn summary(&self) -> String {
        format!(
            "{} clients connect at once, each must get one echo within {} s; no WouldBlock logged as an error",
            self.clients, self.timeout_secs
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let clients = self.clients.max(1);
        let threads = self.threads.clamp(1, clients);
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs);
        let next = Arc::new(AtomicUsize::new(0));
        let fates: Arc<Mutex<Vec<(usize, Fate)>>> = Arc::new(Mutex::new(Vec::new()));
        let mark = server.output_mark();
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (next, fates, addr) = (next.clone(), fates.clone(), server.addr);
            handles.push(std::thread::spawn(move || {
                // Connect this thread's share first, back to back, so the
                // connects of all threads land together; then check echoes.
                let mut mine = Vec::new();
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= clients {
                        break;
                    }
                    mine.push((id, connect_and_send(addr, id, deadline)));
                }
                let mut out = Vec::new();
                for (id, sent) in mine {
                    let fate = match sent {
                        Ok((stream, frame)) => read_echo(stream, &frame, deadline),
                        Err(why) => Fate::Failed(why),
                    };
                    out.push((id, fate));
                }
                if let Ok(mut all) = fates.lock() {
                    all.extend(out);
                }
            }));
        }
        for handle in handles {
            let _ = handle.join();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut fates = std::mem::take(
            &mut *fates
                .lock()
                .map_err(|_| anyhow::anyhow!("a connect_burst thread panicked"))?,
        );
        fates.sort_by_key(|(id, _)| *id);
        let failed: Vec<String> = fates
            .iter()
            .filter_map(|(id, fate)| match fate {
                Fate::Failed(why) => Some(format!("client {id}: {why}")),
                Fate::Echoed => None,
            })
            .collect();
        let echoed = fates.len() - failed.len();
        ctx.log.detail(format!(
            "{clients} clients connected at once from {threads} threads: {echoed} echoed in {elapsed:.2} s"
        ));
        if failed.is_empty() && echoed == clients {
            if let Some(death) = server.death_notice() {
                return Ok(
                    StepOutcome::fail(format!("{death} after the connect burst"))
                        .cause_as(
                            "connect_burst.died-after-the-burst",
                            "the server must keep running",
                        )
                        .evidence(Ctx::server_evidence(&mut server)),
                );
            }
            let logged: Vec<String> = server
                .stderr_since(mark, Duration::ZERO)
                .into_iter()
                .filter(|line| reports_would_block(line))
                .collect();
            if let Some(first) = logged.first() {
                let mut evidence: Vec<String> = logged
                    .iter()
                    .take(3)
                    .map(|line| format!("[server:stderr] {line}"))
                    .collect();
                if logged.len() > 3 {
                    evidence.push(format!("... and {} more", logged.len() - 3));
                }
                return Ok(StepOutcome::fail(format!(
                    "all {clients} clients were echoed, but the server logged WouldBlock (EAGAIN) as an error {} time(s) while they connected, first: `{first}`",
                    logged.len()
                ))
                .cause_as(
                    "connect_burst.logs-would-block",
                    "WouldBlock is how every drain ends (the queue, or the socket, has nothing more for now), not a failure: return without logging. Logged, it is an error line on every wake-up, and the real errors drown in them",
                )
                .figure("would_block_lines", logged.len())
                .evidence(evidence));
            }
            return Ok(StepOutcome::pass(format!(
                "{clients} clients connected at once, all {clients} accepted and echoed ({elapsed:.2} s)"
            ))
            .figure("seconds", format!("{elapsed:.2}"))
            .proof_line(format!(
                "connect_burst: {clients} clients connected at once, all echoed"
            )));
        }
        let death = server.death_notice();
        let mut evidence: Vec<String> = failed.iter().take(QUOTED).cloned().collect();
        if failed.len() > QUOTED {
            evidence.push(format!("... and {} more", failed.len() - QUOTED));
        }
        evidence.extend(Ctx::server_evidence(&mut server));
        Ok(StepOutcome::fail(format!(
            "{clients} clients connected at once, each sending one 12-byte frame: {} got no echo (each may take up to {} s: a generous bound that covers SYN retransmits after a full accept queue)",
            clients - echoed,
            self.timeout_secs
        ))
        .cause_as(
            if death.is_some() {
                "connect_burst.died"
            } else {
                "connect_burst.accept-stall"
            },
            match death {
                Some(death) => format!("{death} during the burst: read its output below (a `todo!()` left in the stub, or an unwrap() on accept?)"),
                None => "connections were left waiting in the listener's accept queue: with an edge-triggered listener, one event can stand for many connections, so accept until WouldBlock every time".into(),
            },
        )
        .figure("unechoed", clients - echoed)
        .evidence(evidence))
    }
}

/// A line that reports EAGAIN as an error: the OS's text for it, or
/// `WouldBlock` as `io::Error`'s Debug prints it. Never a line a server
/// needs to print, since WouldBlock is no failure.
fn reports_would_block(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    [
        "resource temporarily unavailable",
        "os error 11)",
        "wouldblock",
        "eagain",
        "ewouldblock",
    ]
    .iter()
    .any(|text| line.contains(text))
}

fn connect_and_send(
    addr: SocketAddr,
    id: usize,
    deadline: Instant,
) -> std::result::Result<(TcpStream, Vec<u8>), String> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let mut stream =
        TcpStream::connect_timeout(&addr, left).map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    // 12 bytes: the client's number, then a marker.
    let mut payload = (id as u64).to_be_bytes().to_vec();
    payload.extend_from_slice(b"burs");
    let frame = stress::frame::encode(&payload);
    stream
        .write_all(&frame)
        .map_err(|e| format!("sending its frame failed: {e}"))?;
    Ok((stream, frame))
}

fn read_echo(mut stream: TcpStream, frame: &[u8], deadline: Instant) -> Fate {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < frame.len() {
        // Past the deadline, one short last look: the echo may already be
        // waiting in the socket while this thread read other clients.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => {
                return Fate::Failed(format!(
                    "the server closed the connection after {} of {} echo bytes",
                    got.len(),
                    frame.len()
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Fate::Failed(format!(
                        "connected and sent its frame, {} of {} echo bytes by the deadline (never accepted?)",
                        got.len(),
                        frame.len()
                    ));
                }
            }
            Err(e) => return Fate::Failed(format!("reading the echo failed: {e}")),
        }
    }
    if got != frame {
        return Fate::Failed("the echo differs from the frame sent".into());
    }
    Fate::Echoed
}

#[cfg(test)]
mod tests {
    use super::reports_would_block;

    #[test]
    fn would_block_reported_as_an_error_is_told_from_other_lines() {
        for line in [
            "accept failed: Resource temporarily unavailable (os error 11)",
            "read: Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }",
            "accept: EAGAIN",
        ] {
            assert!(reports_would_block(line), "{line}");
        }
        for line in [
            "127.0.0.1:5000: connected (3 active)",
            "accept failed: Too many open files (os error 24)",
            "127.0.0.1:5000: Connection reset by peer (os error 104); closing (2 active)",
            "os error 110",
        ] {
            assert!(!reports_would_block(line), "{line}");
        }
    }
}
