//! `capacity`: the server runs with `--max-clients N`. N clients connect and
//! are each echoed, and stay connected; then `extra` more connect, one at a
//! time, each sending a frame: every one must be refused (EOF or a reset
//! before any byte of echo), never echoed, since N are held. The N must
//! still be echoed afterwards. Then `leave` of them close, and as many new
//! clients must be accepted and echoed (retrying with backoff while the
//! server has not yet seen the others leave): capacity comes back.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::disconnects::fail;
use super::frame_client::{self, connect, read_exactly, Ending};
use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// The limit, passed as `--max-clients`.
    pub max_clients: usize,
    /// Clients beyond the limit, each of which must be refused.
    pub extra: usize,
    /// Held clients that leave before the recovery check.
    pub leave: usize,
    /// Bound on each echo or refusal, in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_clients: 5,
            extra: 3,
            leave: 2,
            timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

/// What one frame sent on a connection got back.
enum Answer {
    Echoed,
    /// Closed or reset before any byte came back.
    Refused,
    /// Something else: bytes then a close, a wrong echo, a timeout.
    Other(String),
}

fn ask(stream: &mut TcpStream, text: &str, timeout: Duration) -> Answer {
    let frame = stress::frame::encode(text.as_bytes());
    if let Err(err) = stream.write_all(&frame) {
        return match err.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Answer::Refused,
            _ => Answer::Other(format!("sending failed: {err}")),
        };
    }
    match read_exactly(stream, frame.len(), timeout) {
        (got, Ending::Complete) if got == frame => Answer::Echoed,
        (_, Ending::Complete) => Answer::Other("the echo differs from the frame".into()),
        (got, ending) if got.is_empty() && ending.is_closed() => Answer::Refused,
        (got, ending) => Answer::Other(format!(
            "{} of {} bytes came back, then the connection {}",
            got.len(),
            frame.len(),
            ending.describe()
        )),
    }
}

impl Check for Capacity {
    fn summary(&self) -> String {
        format!(
            "--max-clients {}: {} held and echoed, {} more refused, the {} still served; {} leave and as many new clients are served",
            self.max_clients, self.max_clients, self.extra, self.max_clients, self.leave
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut args = vec!["--max-clients".to_string(), self.max_clients.to_string()];
        args.extend(self.args.iter().cloned());
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let n = self.max_clients;

        // 1. N clients, each held and echoed.
        let mut held = Vec::with_capacity(n);
        for client in 1..=n {
            let answer = match connect(server.addr) {
                Ok(mut stream) => {
                    let answer = ask(&mut stream, &format!("held client {client}"), timeout);
                    held.push(stream);
                    answer
                }
                Err(err) => Answer::Other(format!("connect failed: {err}")),
            };
            let problem = match answer {
                Answer::Echoed => continue,
                Answer::Refused => "refused".to_string(),
                Answer::Other(what) => what,
            };
            return Ok(fail(
                &mut server,
                format!("client {client} of {n} (the limit is {n}): {problem}"),
                "capacity.refuses-below-the-limit",
                "up to --max-clients clients must be accepted and served: refuse only when that many are connected",
            ));
        }
        ctx.log
            .detail(format!("{n} clients connected and echoed (the limit)"));

        // 2. Beyond the limit: each must be refused, none echoed.
        for extra in 1..=self.extra {
            let client = n + extra;
            let answer = match connect(server.addr) {
                Ok(mut stream) => ask(
                    &mut stream,
                    &format!("client {client}, over the limit"),
                    timeout,
                ),
                // A connect refused by the kernel is a refusal too.
                Err(_) => Answer::Refused,
            };
            match answer {
                Answer::Refused => {}
                Answer::Echoed => {
                    return Ok(fail(
                        &mut server,
                        format!("client {client} was echoed while {n} clients were held (--max-clients {n}): more than {n} served at once"),
                        "capacity.no-limit",
                        "count the connections you hold; when that count is --max-clients, accept the new one and close it at once",
                    ))
                }
                Answer::Other(what) => {
                    return Ok(fail(
                        &mut server,
                        format!("client {client}, over the limit of {n}: {what} (expected EOF before any echo within {} s)", self.timeout_secs),
                        "capacity.over-the-limit-not-closed",
                        "at capacity, accept the new connection and close it at once: the client must see EOF, not wait in the accept queue (and a listener left readable makes poll() spin)",
                    ))
                }
            }
        }
        ctx.log.detail(format!(
            "{} clients over the limit refused (EOF before any echo)",
            self.extra
        ));
        if let Some(death) = server.death_notice() {
            return Ok(fail(
                &mut server,
                format!("the server died refusing clients over the limit: {death}"),
                "capacity.refusal-ends-the-server",
                "refusing a client must close that connection only",
            )
            .explains_death("capacity.refusal-ends-the-server"));
        }

        // 3. The N held are still served.
        for (i, stream) in held.iter_mut().enumerate() {
            let client = i + 1;
            match ask(stream, &format!("held client {client}, again"), timeout) {
                Answer::Echoed => {}
                Answer::Refused => {
                    return Ok(fail(
                        &mut server,
                        format!("held client {client} was closed after the server refused others"),
                        "capacity.refusal-closes-held",
                        "refusing a new client must not touch the connections already held",
                    ))
                }
                Answer::Other(what) => {
                    return Ok(fail(
                        &mut server,
                        format!("held client {client}, after others were refused: {what}"),
                        "capacity.held-unserved-after-refusal",
                        "the server must keep serving the clients it holds while it refuses others",
                    ))
                }
            }
        }
        ctx.log.detail(format!("the {n} held clients echoed again"));

        // 4. Some leave; as many newcomers must be served (retrying with
        // backoff while the server has not yet seen the others go).
        let leave = self.leave.min(n);
        for stream in held.drain(..leave) {
            frame_client::close(stream);
        }
        let mut retries = 0;
        for newcomer in 1..=leave {
            match admitted(server.addr, newcomer, timeout, &mut retries) {
                Ok(stream) => held.push(stream),
                Err(what) => {
                    return Ok(fail(
                        &mut server,
                        format!("after {leave} of the {n} held clients left, newcomer {newcomer} was never served within {} s: {what}", self.timeout_secs),
                        "capacity.never-comes-back",
                        "capacity must come back when clients leave: count the connections held now (conns.len()), not the ones ever accepted, and keep accepting after a refusal",
                    ))
                }
            }
        }
        ctx.log.detail(format!(
            "{leave} left; {leave} newcomers served ({retries} refused attempts retried while the server caught up)"
        ));
        Ok(StepOutcome::pass(format!(
            "{n} held, {} over the limit refused, the {n} still served; {leave} left and {leave} newcomers were served",
            self.extra
        ))
        .figure("max_clients", n)
        .figure("refused", self.extra)
        .figure("retries", retries)
        .proof_line(format!(
            "capacity: --max-clients {n}, {} over the limit refused, {leave} newcomers served after {leave} left",
            self.extra
        )))
    }
}

/// Connects a newcomer until it is echoed, retrying refusals with backoff
/// until `timeout`.
fn admitted(
    addr: SocketAddr,
    newcomer: usize,
    timeout: Duration,
    retries: &mut usize,
) -> std::result::Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        match connect(addr) {
            Ok(mut stream) => match ask(&mut stream, &format!("newcomer {newcomer}"), timeout) {
                Answer::Echoed => return Ok(stream),
                Answer::Refused => {}
                Answer::Other(what) => return Err(what),
            },
            Err(err) => return Err(format!("connect failed: {err}")),
        }
        if Instant::now() + backoff >= deadline {
            return Err(format!("still refused after {} attempts", *retries + 1));
        }
        *retries += 1;
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
