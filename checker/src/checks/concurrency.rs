//! `concurrency`: clients served at the same time. The first client is
//! echoed and then stays connected and idle; the second must be echoed
//! anyway (a server that serves one client at a time fails by timeout),
//! and so on up to `clients`, all held open at once. Then every held client
//! is echoed a second time, newest first.
//!
//! With `count_threads`, the server's `Threads:` (from /proc) while all the
//! clients are held must be at least the number of clients — a thread per
//! connection — and the proof reports threads and RSS per connection.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::frame_client::{self, Ending};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Concurrency {
    /// Clients connected and held open at once (at least 2).
    pub clients: usize,
    /// Require at least one server thread per held client, and report
    /// threads and RSS per connection in the proof.
    pub count_threads: bool,
    /// How long a client may wait for its echo while the others are held.
    pub echo_timeout_secs: u64,
    /// Flags beyond the lesson's `server_args`.
    pub args: Vec<String>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            clients: 2,
            count_threads: false,
            echo_timeout_secs: 3,
            args: Vec::new(),
        }
    }
}

/// What the server looked like before and while the clients were held.
struct Footprint {
    threads: usize,
    rss_kib: u64,
}

fn footprint(server: &Server) -> Result<Footprint> {
    Ok(Footprint {
        threads: procfs::threads(server.pid)?,
        rss_kib: procfs::rss_kib(server.pid)?,
    })
}

impl Check for Concurrency {
    fn summary(&self) -> String {
        let threads = if self.count_threads {
            ", counting the server's threads"
        } else {
            ""
        };
        format!(
            "{} clients connected at once, each echoed while the others stay open and idle{threads}",
            self.clients
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        if self.clients < 2 {
            anyhow::bail!(
                "course.yaml: lesson {}: concurrency needs at least 2 clients",
                ctx.lesson.id
            );
        }
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.echo_timeout_secs);
        let before = footprint(&server);

        let mut held: Vec<TcpStream> = Vec::with_capacity(self.clients);
        for client in 1..=self.clients {
            let mut stream = match frame_client::connect(server.addr) {
                Ok(stream) => stream,
                Err(err) => {
                    return Ok(StepOutcome::fail(format!(
                        "client {client} could not connect while {} clients were held: {err}",
                        held.len()
                    ))
                    .cause_as(
                        "concurrency.stopped-accepting",
                        "the server stopped accepting while other clients were connected",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
                }
            };
            let payload = format!("client {client} of {}, first frame", self.clients).into_bytes();
            if let Some(failed) = echo_once(&mut stream, &payload, timeout) {
                let (message, cause_id, cause) = if client == 1 {
                    (
                        format!("client 1 (alone): {failed}"),
                        "concurrency.single-client-fails",
                        "a single client must be echoed; see the frames step".to_string(),
                    )
                } else if failed.timed_out {
                    let message = format!(
                        "client {client} got no echo within {} s while {} other client(s) were connected and idle",
                        self.echo_timeout_secs,
                        held.len()
                    );
                    if client == 2 {
                        (message, "concurrency.one-at-a-time", "the server serves one client at a time: while it is blocked reading the idle first client, nobody else is read. Give each client its own thread (std::thread::spawn(move || ...)) and go straight back to accept()".to_string())
                    } else {
                        (message, "concurrency.thread-limit", format!("the server serves at most {} clients at once: a fixed number of threads runs out; this lesson wants a thread per client", client - 1))
                    }
                } else {
                    (
                        format!("client {client}, with {} others held: {failed}", held.len()),
                        "concurrency.echo-fails-beside-others",
                        "every client must be echoed exactly, whatever the others do".to_string(),
                    )
                };
                // In the pool lesson, a second client left waiting while
                // several threads run is one worker serving everyone.
                let threads = procfs::threads(server.pid).unwrap_or(0);
                let (cause_id, cause) = match super::pool::diagnosis::pool_workers(ctx) {
                    Some(_) if client == 2 && failed.timed_out && threads > 2 => {
                        super::pool::diagnosis::one_served_at_a_time(threads)
                    }
                    // No thread for a second client at all: too few workers,
                    // not a thread per client.
                    Some(_) if client == 2 && failed.timed_out && (1..=2).contains(&threads) => (
                        super::pool::diagnosis::TOO_FEW_WORKERS,
                        super::pool::diagnosis::TOO_FEW_WORKERS_CAUSE.to_string(),
                    ),
                    _ => (cause_id, cause),
                };
                let mut evidence = failed.evidence;
                evidence.push(format!("the server runs {threads} threads"));
                evidence.extend(Ctx::server_evidence(&mut server));
                let outcome = StepOutcome::fail(message)
                    .cause_as(cause_id, cause)
                    .evidence(evidence);
                return Ok(outcome.figure("clients_served_at_once", client - 1));
            }
            if client == 2 {
                ctx.log
                    .detail("client 2 echoed while client 1 was connected and idle");
            }
            held.push(stream);
        }
        ctx.log.detail(format!(
            "{} clients connected and echoed, all held open",
            held.len()
        ));

        let during = footprint(&server);
        let mut figures = Vec::new();
        let mut proof_extra = String::new();
        if self.count_threads {
            let (Ok(before), Ok(during)) = (before, during) else {
                return Ok(StepOutcome::fail(format!(
                    "could not read /proc/{}/status while the clients were held",
                    server.pid
                ))
                .cause_as("concurrency.no-proc-status", "the server process is gone or is not the process that serves (with --exec, run the server itself, not a wrapper)")
                .evidence(Ctx::server_evidence(&mut server)));
            };
            let clients = self.clients;
            let per_thread =
                (during.threads.saturating_sub(before.threads)) as f64 / clients as f64;
            let rss_growth = during.rss_kib.saturating_sub(before.rss_kib);
            let rss_per_connection = rss_growth as f64 / clients as f64;
            ctx.log.detail(format!(
                "/proc/{}/status: Threads {} -> {}, VmRSS {} KiB -> {} KiB",
                server.pid, before.threads, during.threads, before.rss_kib, during.rss_kib
            ));
            figures.push(("threads".to_string(), during.threads.to_string()));
            figures.push((
                "threads_per_connection".to_string(),
                format!("{per_thread:.2}"),
            ));
            figures.push(("rss_kib".to_string(), during.rss_kib.to_string()));
            figures.push((
                "rss_kib_per_connection".to_string(),
                format!("{rss_per_connection:.1}"),
            ));
            if during.threads < clients {
                let mut outcome = StepOutcome::fail(format!(
                    "{clients} clients held open and echoed, but the server has only {} thread(s) (Threads: in /proc/{}/status)",
                    during.threads, server.pid
                ))
                .cause_as("concurrency.too-few-threads", "this lesson is thread-per-connection: spawn one thread per accepted client (the clients here were served some other way, with fewer threads than clients)")
                .evidence(Ctx::server_evidence(&mut server));
                outcome.figures = figures;
                return Ok(outcome);
            }
            proof_extra = format!(
                "; {} threads ({per_thread:.2} per connection), RSS {:.1} KiB per connection",
                during.threads, rss_per_connection
            );
        }

        // Everyone again, newest first: the oldest clients are still served.
        for (index, stream) in held.iter_mut().enumerate().rev() {
            let client = index + 1;
            let payload = format!("client {client}, second frame").into_bytes();
            if let Some(failed) = echo_once(stream, &payload, timeout) {
                let message = format!(
                    "client {client}, second frame, with {} clients held: {failed}",
                    self.clients
                );
                let mut evidence = failed.evidence;
                evidence.extend(Ctx::server_evidence(&mut server));
                return Ok(StepOutcome::fail(message)
                .cause_as("concurrency.held-client-dropped", "a held client must stay served: its thread keeps reading frames until the client closes")
                .evidence(evidence));
            }
        }
        for stream in held {
            frame_client::close(stream);
        }
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail(format!("{death} after the clients closed"))
                    .cause_as(
                        "concurrency.died-after-clients-left",
                        "the server must keep running after its clients leave",
                    )
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        }
        let mut outcome = StepOutcome::pass(format!(
            "{} clients held open at once, each echoed twice{proof_extra}",
            self.clients
        ))
        .figure("clients_served_at_once", self.clients)
        .proof_line(format!(
            "concurrency: {} clients held open at once, each echoed while the others were idle{proof_extra}",
            self.clients
        ));
        outcome.figures.extend(figures);
        Ok(outcome)
    }
}

/// Why one echo failed.
struct EchoFailure {
    what: String,
    timed_out: bool,
    evidence: Vec<String>,
}

impl std::fmt::Display for EchoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// Sends one frame and checks its echo; `None` when it came back exactly.
fn echo_once(stream: &mut TcpStream, payload: &[u8], timeout: Duration) -> Option<EchoFailure> {
    let (sent, exchange) = frame_client::echo_frame(stream, payload, timeout);
    let (what, timed_out) = match &exchange.ending {
        Ending::Complete if exchange.received == sent => return None,
        Ending::Complete => ("the echo differs from what was sent".to_string(), false),
        ending if ending.is_closed() => (
            format!("the server {} the connection", ending.describe()),
            false,
        ),
        Ending::TimedOut => (format!("no echo within {} s", timeout.as_secs()), true),
        other => (format!("reading the echo {}", other.describe()), false),
    };
    Some(EchoFailure {
        what,
        timed_out,
        evidence: frame_client::describe_difference(&[payload.to_vec()], &exchange.received),
    })
}
