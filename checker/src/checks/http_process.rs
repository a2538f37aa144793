//! `http_process` and `http_idle_cpu`: the process probes of the echo
//! lessons (`process`, `idle_cpu`), driven with HTTP for a static-file
//! server (a temporary `--root`, as the `http` step writes it).
//!
//! `http_process` opens `idle_connections` keep-alive connections, each
//! answered one GET, and reads the thread count while they sit idle (a
//! thread per connection shows there); then `clients` connections send
//! GET requests back to back for `load_ms` while /proc/PID/status is read
//! about every millisecond (a thread per request, spawned and joined,
//! shows there). The peak of each phase must be at most `threads`, with
//! no child process, and every request of the load answered.
//!
//! `http_idle_cpu` opens `connections` keep-alive connections, each
//! answered one GET, one more that sent half a request head and went
//! silent, and measures the server's CPU time over `window_ms`: at most
//! `max_cpu_ms` (a loop that spins, e.g. with EPOLLOUT left armed
//! level-triggered, burns the whole window).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::http::{get, DocRoot, HttpConn};
use super::watch::{self, CpuWindow, Phase, Setting, ThreadWatch};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpProcess {
    /// Most threads the server may have, in either phase.
    pub threads: usize,
    /// Keep-alive connections held idle (each answered one GET).
    pub idle_connections: usize,
    /// Connections sending GET requests back to back during the load.
    pub clients: usize,
    /// How long the load runs, in milliseconds.
    pub load_ms: u64,
    pub args: Vec<String>,
}

impl Default for HttpProcess {
    fn default() -> Self {
        HttpProcess {
            threads: 1,
            idle_connections: 8,
            clients: 4,
            load_ms: 1500,
            args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpIdleCpu {
    /// Keep-alive connections open and idle (each answered one GET), plus
    /// one that sent half a request head.
    pub connections: usize,
    /// How long the server is watched, in milliseconds.
    pub window_ms: u64,
    /// Most CPU time the server may use in the window, in milliseconds.
    pub max_cpu_ms: u64,
    pub args: Vec<String>,
}

impl Default for HttpIdleCpu {
    fn default() -> Self {
        HttpIdleCpu {
            connections: 10,
            window_ms: 2000,
            max_cpu_ms: 200,
            args: Vec::new(),
        }
    }
}

/// Starts the server on a fresh document root. Err(outcome): it did not come up.
fn start(
    ctx: &mut Ctx,
    extra: &[String],
) -> Result<std::result::Result<(Server, DocRoot), StepOutcome>> {
    let docs = DocRoot::create(ctx.seed)?;
    let mut args = extra.to_vec();
    args.extend(docs.args());
    Ok(ctx.start_server(&args)?.map(|server| (server, docs)))
}

/// Opens `n` keep-alive connections, each answered one GET /index.html.
/// Err: what went wrong, for the failing outcome.
fn open_served(
    addr: SocketAddr,
    n: usize,
    docs: &DocRoot,
) -> std::result::Result<Vec<HttpConn>, String> {
    let mut held = Vec::new();
    for i in 1..=n {
        let mut conn = HttpConn::connect(addr, Duration::from_secs(3))
            .map_err(|e| format!("connection {i} of {n}: connect failed: {e}"))?;
        conn.send(&get("/index.html"))
            .map_err(|e| format!("connection {i} of {n}: send failed: {e}"))?;
        match conn.response(false) {
            Ok(r) if r.status == 200 && r.body == docs.index => held.push(conn),
            Ok(r) => {
                return Err(format!(
                    "connection {i} of {n}: GET /index.html answered {:?} with {} body bytes",
                    r.status_line,
                    r.body.len()
                ))
            }
            Err(m) => return Err(format!("connection {i} of {n}: {}", m.describe())),
        }
    }
    Ok(held)
}

fn not_served(id: &str, message: String, server: &mut Server) -> StepOutcome {
    StepOutcome::fail(message)
        .cause_as(id, "every GET of a file under --root is answered 200 with the file, and the connection stays open (keep-alive)")
        .evidence(Ctx::server_evidence(server))
}

/// What the load threads found.
#[derive(Default)]
struct Load {
    answered: AtomicUsize,
    failure: Mutex<Option<String>>,
}

impl Check for HttpProcess {
    fn summary(&self) -> String {
        format!(
            "with {} keep-alive connections idle, then {} clients sending GETs back to back: at most {} thread(s) and no child process (/proc read every ms)",
            self.idle_connections, self.clients, self.threads
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let (mut server, docs) = match start(ctx, &self.args)? {
            Ok(started) => started,
            Err(failed) => return Ok(failed),
        };
        let held = match open_served(server.addr, self.idle_connections, &docs) {
            Ok(held) => held,
            Err(message) => return Ok(not_served("http_process.not-served", message, &mut server)),
        };
        // Let a thread or child started per connection come into being.
        std::thread::sleep(Duration::from_millis(300));
        let mut watch = ThreadWatch::new(server.pid, self.threads);
        for _ in 0..20 {
            if watch.sample(Phase::Idle).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        watch.sample_children();
        if let Some(dead) = watch::died(&mut server, "with keep-alive connections open") {
            return Ok(dead);
        }
        ctx.log.detail(format!(
            "{} keep-alive connections open and idle: at most {} thread(s)",
            held.len(),
            watch.idle_max
        ));

        let load = Arc::new(Load::default());
        let until = Instant::now() + Duration::from_millis(self.load_ms);
        let addr = server.addr;
        let index = Arc::new(docs.index.clone());
        let clients: Vec<_> = (1..=self.clients)
            .map(|client| {
                let (load, index) = (Arc::clone(&load), Arc::clone(&index));
                std::thread::spawn(move || {
                    let fail = |why: String| {
                        if let Ok(mut first) = load.failure.lock() {
                            first.get_or_insert(format!("load client {client}: {why}"));
                        }
                    };
                    let mut conn = match HttpConn::connect(addr, Duration::from_secs(3)) {
                        Ok(conn) => conn,
                        Err(e) => return fail(format!("connect failed: {e}")),
                    };
                    while Instant::now() < until {
                        if let Err(e) = conn.send(&get("/index.html")) {
                            return fail(format!("send failed: {e}"));
                        }
                        match conn.response(false) {
                            Ok(r) if r.status == 200 && r.body == *index => {
                                load.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                return fail(format!(
                                    "GET /index.html answered {:?} with {} body bytes",
                                    r.status_line,
                                    r.body.len()
                                ))
                            }
                            Err(m) => return fail(m.describe()),
                        }
                    }
                })
            })
            .collect();
        // Until every client stopped (each ends at `until`, or at a
        // response that did not come within its 5 s bound).
        let sampled = watch.sample_while(Duration::from_millis(self.load_ms + 6000), || {
            clients.iter().all(|c| c.is_finished())
        });
        for client in clients {
            let _ = client.join();
        }
        if let Some(dead) = watch::died(&mut server, "under the GET load") {
            return Ok(dead);
        }
        sampled?;
        let answered = load.answered.load(Ordering::Relaxed);
        let idle = format!("{} keep-alive connections open and idle", held.len());
        let busy = format!(
            "{} clients sending GET requests back to back for {} ms",
            self.clients, self.load_ms
        );
        ctx.log.detail(format!(
            "{busy}: {answered} answered, at most {} thread(s) ({} readings of /proc)",
            watch.load_max, watch.samples
        ));
        let setting = Setting {
            idle: &idle,
            load: &busy,
            unit: "request",
        };
        if let Some(mut failed) = watch::thread_verdict(&watch, &setting, &mut server) {
            // The verdict's order: threads while idle, under the load, then
            // child processes.
            let id = if watch.idle_max > self.threads {
                "http_process.thread-per-connection"
            } else if watch.load_max > self.threads {
                "http_process.thread-per-request"
            } else {
                "http_process.child-processes"
            };
            failed.cause_id = Some(id.to_string());
            return Ok(failed);
        }
        let failure = load.failure.lock().ok().and_then(|f| f.clone());
        if let Some(why) = failure {
            return Ok(not_served(
                "http_process.not-served",
                format!("during the load: {why}"),
                &mut server,
            ));
        }
        if answered == 0 {
            return Ok(not_served(
                "http_process.not-served",
                format!(
                    "no request of the {} load clients was answered",
                    self.clients
                ),
                &mut server,
            ));
        }
        let held = held.len();
        Ok(StepOutcome::pass(format!(
            "{} thread(s) at most, no child process: {} with {idle}, {} with {busy} ({answered} answered)",
            watch.idle_max.max(watch.load_max),
            watch.idle_max,
            watch.load_max
        ))
        .figure("threads_idle", watch.idle_max)
        .figure("threads_load", watch.load_max)
        .figure("load_requests", answered)
        .proof_line(format!(
            "http_process: at most {} thread(s), 0 child processes, with {} keep-alive connections idle and under a GET load of {} clients",
            watch.idle_max.max(watch.load_max),
            held,
            self.clients
        )))
    }
}

impl Check for HttpIdleCpu {
    fn summary(&self) -> String {
        format!(
            "{} idle keep-alive connections and one half-sent request: server CPU time over {} ms stays under {} ms",
            self.connections, self.window_ms, self.max_cpu_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let (mut server, docs) = match start(ctx, &self.args)? {
            Ok(started) => started,
            Err(failed) => return Ok(failed),
        };
        let mut held = match open_served(server.addr, self.connections, &docs) {
            Ok(held) => held,
            Err(message) => {
                return Ok(not_served("http_idle_cpu.not-served", message, &mut server))
            }
        };
        // One more connection stops in the middle of its request head.
        match HttpConn::connect(server.addr, Duration::from_secs(3)) {
            Ok(mut conn) => {
                let request = get("/notes.txt");
                let _ = conn.send(&request[..request.len() / 2]);
                held.push(conn);
            }
            Err(e) => {
                return Ok(not_served(
                    "http_idle_cpu.not-served",
                    format!("the half-sent request's connection: connect failed: {e}"),
                    &mut server,
                ))
            }
        }
        // Let the last responses' work finish before the window opens.
        std::thread::sleep(Duration::from_millis(200));
        let cpu = CpuWindow::measure(server.pid, Duration::from_millis(self.window_ms));
        if let Some(dead) = watch::died(&mut server, "while its connections were idle") {
            return Ok(dead);
        }
        let cpu = cpu?;
        let idle = format!(
            "{} keep-alive connections idle and one half-sent request",
            self.connections
        );
        ctx.log.detail(format!(
            "{idle}: {} ms of CPU in {} ms",
            cpu.used_ms(),
            cpu.elapsed.as_millis()
        ));
        if let Some(mut failed) = watch::idle_verdict(&cpu, self.max_cpu_ms, &idle, &mut server) {
            failed.cause_id = Some("http_idle_cpu.spins".to_string());
            return Ok(failed);
        }
        drop(held);
        Ok(StepOutcome::pass(format!(
            "{} ms of CPU in {} ms with {idle} (bound {} ms)",
            cpu.used_ms(),
            cpu.elapsed.as_millis(),
            self.max_cpu_ms
        ))
        .figure("idle_cpu_ms", cpu.used_ms())
        .proof_line(format!(
            "http_idle_cpu: under {} ms of CPU in {} ms with {idle}",
            self.max_cpu_ms, self.window_ms
        )))
    }
}
