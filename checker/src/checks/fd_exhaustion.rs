//! `fd_exhaustion`: the server runs out of file descriptors and must live
//! through it. It starts with a hard (and soft) RLIMIT_NOFILE of `nofile`
//! (256), so raising its own soft limit cannot get it past that, and
//! `clients` (300) connect one after another, each sending a frame: more
//! than it can hold. Judged, in order:
//!
//! - the server survives accept() failing with EMFILE;
//! - it serves the first ones: at least half the limit are echoed, and
//!   every client it echoed is echoed again while the others still wait;
//! - it does not spin: over `window_ms`, while the accept queue holds
//!   clients it cannot accept, its threads spend under `max_busy_pct` of
//!   the time running or waiting for a CPU (/proc/PID/task/*/schedstat;
//!   CPU time from /proc/PID/stat where the kernel keeps no schedstat). A
//!   listener that stays readable wakes a level-triggered
//!   poll()/epoll_wait() at once, forever, and an accept loop that retries
//!   EMFILE never returns: either loop never sleeps, so it is running or
//!   waiting to run all the time however loaded the machine is (its CPU
//!   time alone shrinks with the load, and with a slow reader of its log);
//!   a loop that naps between passes (w02-l05) or sleeps in its wait is
//!   far under;
//! - it recovers: `leave` (100) of the held clients close, and then the
//!   clients left waiting, `newcomers` (5) new clients, and those it
//!   refused (closed before any echo) retried with backoff must all be
//!   served within `timeout_secs`.
//!
//! Correct strategies all pass: stop watching the listener while accept()
//! fails and watch it again when a connection closes (or after a pause),
//! accept and close at once with a spare fd (the queued clients see EOF
//! and retry), or leave the connections queued with an edge-triggered
//! listener, which is reported again when the next client connects (the
//! newcomers): whether the waiting clients were served before a newcomer
//! came is reported, not judged.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdExhaustion {
    /// The hard and soft RLIMIT_NOFILE the server starts with.
    pub nofile: u64,
    /// Clients that connect, each sending a frame (more than `nofile`).
    pub clients: usize,
    /// How long the server is watched at the fd limit.
    pub window_ms: u64,
    /// Most of the window the server may spend running or waiting for a
    /// CPU, in percent; `~` reports it without judging it.
    pub max_busy_pct: Option<u64>,
    /// Held clients that close before the recovery check.
    pub leave: usize,
    /// New clients that must be served once others left.
    pub newcomers: usize,
    /// Bound on each wait for echoes, in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for FdExhaustion {
    fn default() -> Self {
        FdExhaustion {
            nofile: 256,
            clients: 300,
            window_ms: 1000,
            max_busy_pct: Some(80),
            leave: 100,
            newcomers: 5,
            timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

/// Per-connect bound.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first echoes are in once none has come for this long.
const QUIET: Duration = Duration::from_millis(1000);
/// How long the waiting clients get, after others left, before any new
/// client connects.
const BEFORE_NEWCOMERS: Duration = Duration::from_millis(1000);
/// Busy above this share of the window, with held clients unserved, reads
/// as an accept loop that never returns (when `max_busy_pct` is not set).
const SPIN_PCT: u64 = 80;

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Sent, no whole echo yet.
    Waiting,
    Echoed,
    /// Closed or reset before any byte of the echo: a refusal.
    Refused,
    /// Anything else: bytes then a close, wrong bytes, a failed send.
    Broken(String),
}

struct Client {
    stream: TcpStream,
    /// The frame whose echo is awaited.
    frame: Vec<u8>,
    got: Vec<u8>,
    state: State,
}

impl Client {
    /// Connects (bounded) and sends `text` as a frame.
    fn connect(addr: SocketAddr, text: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            frame: Vec::new(),
            got: Vec::new(),
            state: State::Waiting,
        };
        client.send(text);
        client.stream.set_nonblocking(true)?;
        Ok(client)
    }

    /// Sends `text` as a frame and waits for its echo from now on.
    fn send(&mut self, text: &str) {
        self.frame = stress::frame::encode(text.as_bytes());
        self.got.clear();
        self.state = match self.stream.write_all(&self.frame) {
            Ok(()) => State::Waiting,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                State::Refused
            }
            Err(e) => State::Broken(format!("sending failed: {e}")),
        };
    }

    /// Reads what has arrived (non-blocking); true if anything changed.
    fn read_some(&mut self, chunk: &mut [u8]) -> bool {
        let mut changed = false;
        while self.state == State::Waiting {
            match self.stream.read(chunk) {
                Ok(0) => {
                    self.state = self.closed("closed");
                    changed = true;
                }
                Ok(n) => {
                    self.got.extend_from_slice(&chunk[..n]);
                    changed = true;
                    if self.got.len() >= self.frame.len() {
                        self.state = if self.got == self.frame {
                            State::Echoed
                        } else {
                            State::Broken("the echo differs from the frame sent".into())
                        };
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = self.closed(&e.to_string());
                    changed = true;
                }
            }
        }
        changed
    }

    fn closed(&self, how: &str) -> State {
        if self.got.is_empty() {
            State::Refused
        } else {
            State::Broken(format!(
                "{} of {} bytes came back, then the connection {how}",
                self.got.len(),
                self.frame.len()
            ))
        }
    }
}

/// Reads the echoes of the `which` clients still waiting until none is,
/// `deadline`, or (with `quiet`) no echo came for that long.
fn await_echoes(
    clients: &mut [Client],
    which: &[usize],
    deadline: Instant,
    quiet: Option<Duration>,
) {
    let mut chunk = [0u8; 512];
    let mut last_change = Instant::now();
    loop {
        let mut waiting = 0;
        for &i in which {
            let client = &mut clients[i];
            if client.state != State::Waiting {
                continue;
            }
            if client.read_some(&mut chunk) {
                last_change = Instant::now();
            }
            if client.state == State::Waiting {
                waiting += 1;
            }
        }
        let now = Instant::now();
        if waiting == 0 || now >= deadline || quiet.is_some_and(|q| now >= last_change + q) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(clients: &[Client], which: &[usize], state: &State) -> usize {
    which
        .iter()
        .filter(|&&i| clients[i].state == *state)
        .count()
}

/// Connections to `addr` that completed the handshake and wait in the
/// accept queue (no fd yet: inode 0 in /proc/PID/net/tcp).
fn accept_queue(pid: Pid, addr: SocketAddr) -> usize {
    let local = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    procfs::tcp_sockets(pid)
        .iter()
        .filter(|s| s.local == local && s.state == TCP_ESTABLISHED && s.inode == 0)
        .count()
}

const TCP_ESTABLISHED: u8 = 0x01;

/// The time the server's threads spent running or waiting for a CPU
/// (the first two fields of /proc/PID/task/TID/schedstat, in ns); `None`
/// where the kernel keeps no schedstat.
fn busy_time(pid: Pid) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue; // a thread that just ended
        };
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(running)), Some(Some(waiting))) = (fields.next(), fields.next()) else {
            return None;
        };
        total += Duration::from_nanos(running + waiting);
    }
    Some(total)
}

/// What the server looked like at the fd limit, quoted as evidence.
struct AtTheLimit {
    fds: usize,
    queued: usize,
    cpu_ms: u64,
    /// Running or waiting for a CPU, when schedstat could be read.
    busy_ms: Option<u64>,
    window_ms: u64,
}

impl AtTheLimit {
    /// Busy time in percent of the window (CPU time without schedstat).
    fn busy_pct(&self) -> u64 {
        self.busy_ms.unwrap_or(self.cpu_ms) * 100 / self.window_ms.max(1)
    }
    /// The measure in words, with its figure.
    fn busy_said(&self) -> String {
        match self.busy_ms {
            Some(busy) => format!(
                "running or waiting for a CPU {busy} ms of {} ms ({} %), {} ms of CPU",
                self.window_ms,
                self.busy_pct(),
                self.cpu_ms
            ),
            None => format!(
                "{} ms of CPU in {} ms ({} %)",
                self.cpu_ms,
                self.window_ms,
                self.busy_pct()
            ),
        }
    }
    fn lines(&self, pid: Pid, nofile: u64) -> Vec<String> {
        let source = match self.busy_ms {
            Some(_) => format!("/proc/{pid}/task/*/schedstat, /proc/{pid}/stat"),
            None => format!("/proc/{pid}/stat"),
        };
        vec![
            format!("/proc/{pid}/fd: {} open (hard limit {nofile})", self.fds),
            format!(
                "accept queue: {} connections waiting (/proc/{pid}/net/tcp)",
                self.queued
            ),
            format!(
                "at the fd limit, the server was {} ({source})",
                self.busy_said()
            ),
        ]
    }
}

impl Check for FdExhaustion {
    fn summary(&self) -> String {
        let cpu = match self.max_busy_pct {
            Some(pct) => format!("busy (running or waiting for a CPU) under {pct} % of"),
            None => "busy (running or waiting for a CPU) reported over".to_string(),
        };
        format!(
            "a hard limit of {} open files and {} clients: the server survives EMFILE, serves the first {} and again at the limit, {cpu} {} ms; {} leave, then the waiting clients, {} newcomers and the refused ones retried are served",
            self.nofile,
            self.clients,
            self.first_served(),
            self.window_ms,
            self.leave,
            self.newcomers
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut launch = ctx.launch(&self.args)?;
        launch.nofile_hard = Some(self.nofile);
        let mut server = match ctx.start_launch(launch)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.timeout_secs);

        // 1. More clients than the server has fds, one after another.
        let mut clients: Vec<Client> = Vec::with_capacity(self.clients + self.newcomers);
        let mut connect_error = None;
        let connect_deadline = Instant::now() + timeout * 4;
        for i in 1..=self.clients {
            if Instant::now() >= connect_deadline {
                connect_error = Some("the connects took too long".to_string());
                break;
            }
            match Client::connect(server.addr, &format!("fd client {i}")) {
                Ok(client) => clients.push(client),
                Err(e) => {
                    connect_error = Some(format!("connect {i} failed: {e}"));
                    break;
                }
            }
        }
        let connected = clients.len();
        let first: Vec<usize> = (0..connected).collect();
        await_echoes(&mut clients, &first, Instant::now() + timeout, Some(QUIET));
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!(
                "the server died with {} clients connected and a hard limit of {} open files",
                clients.len(),
                self.nofile
            ))
            .death_cause("fd_exhaustion.dies-at-the-fd-limit", "accept() failing with EMFILE (no file descriptor left) or ENFILE must not end the server: log it, serve the clients it holds, and accept again later")
            .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        let served = count(&clients, &first, &State::Echoed);
        let refused = count(&clients, &first, &State::Refused);
        let waiting = count(&clients, &first, &State::Waiting);
        ctx.log.detail(format!(
            "{} clients connected: {served} echoed, {waiting} waiting, {refused} refused (closed before any echo)",
            clients.len()
        ));
        if (clients.len() as u64) <= self.nofile {
            return Ok(StepOutcome::fail(format!(
                "only {} clients could connect, not more than the {} open files the server may have: {}",
                clients.len(),
                self.nofile,
                connect_error.unwrap_or_default()
            ))
            .cause("the server stopped completing connections before it ran out of file descriptors")
            .evidence(Ctx::server_evidence(&mut server)));
        }

        // 2. At the limit: watched idle, then the held clients once more.
        let fds = procfs::open_fds(server.pid).map(|f| f.len()).unwrap_or(0);
        let queued = accept_queue(server.pid, server.addr);
        let before = procfs::cpu_time(server.pid)?;
        let busy_before = busy_time(server.pid);
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(self.window_ms));
        let cpu = procfs::cpu_time(server.pid)?.saturating_sub(before);
        let busy = busy_time(server.pid)
            .zip(busy_before)
            .map(|(after, before)| after.saturating_sub(before));
        let limit = AtTheLimit {
            fds,
            queued,
            cpu_ms: cpu.as_millis() as u64,
            busy_ms: busy.map(|b| b.as_millis() as u64),
            window_ms: started.elapsed().as_millis() as u64,
        };
        ctx.log.detail(format!(
            "at the limit: {fds} fds open, {queued} in the accept queue; the server was {}",
            limit.busy_said()
        ));
        let held: Vec<usize> = first
            .iter()
            .copied()
            .filter(|&i| clients[i].state == State::Echoed)
            .collect();
        for &i in &held {
            clients[i].send(&format!("fd client {}, at the limit", i + 1));
        }
        await_echoes(&mut clients, &held, Instant::now() + timeout, None);
        let served_again = count(&clients, &held, &State::Echoed);
        ctx.log.detail(format!(
            "{served_again} of the {} held clients echoed again",
            held.len()
        ));
        let first_served = self.first_served().min(clients.len());
        let first_all_echoed =
            held.len() >= first_served && held[..first_served] == first[..first_served];
        if !first_all_echoed || served_again < held.len() {
            let what = if !first_all_echoed {
                let missing = first[..first_served]
                    .iter()
                    .filter(|i| !held.contains(i))
                    .count();
                format!(
                    "{missing} of the first {first_served} clients (half the limit of {} open files) got no echo",
                    self.nofile
                )
            } else {
                let problem = held
                    .iter()
                    .find_map(|&i| match &clients[i].state {
                        State::Echoed => None,
                        State::Waiting => Some(format!(
                            "client {}: no echo within {} s",
                            i + 1,
                            self.timeout_secs
                        )),
                        State::Refused => Some(format!("client {}: closed by the server", i + 1)),
                        State::Broken(what) => Some(format!("client {}: {what}", i + 1)),
                    })
                    .unwrap_or_default();
                format!(
                    "{} of the {} clients it had served got no echo of a second frame while the others waited ({problem})",
                    held.len() - served_again,
                    held.len()
                )
            };
            let spin = self.max_busy_pct.unwrap_or(SPIN_PCT);
            let failed = StepOutcome::fail(format!(
                "out of file descriptors, the server stopped serving its clients: {what}"
            ));
            let failed = if limit.busy_pct() >= spin {
                failed.cause_as("fd_exhaustion.accept-retried-forever", "accept() failed with EMFILE and was called again at once, forever: the loop never gets back to the clients it holds. An error other than WouldBlock (and EINTR) ends this round of accepting: log it and go back to serving")
            } else {
                failed.cause("once accept() fails with EMFILE, the clients already held must still be served: the error ends this round of accepting, nothing else")
            };
            return Ok(failed
                .evidence(limit.lines(server.pid, self.nofile))
                .evidence(Ctx::server_evidence(&mut server))
                .figure("served_again", served_again)
                .figure("busy_pct", limit.busy_pct()));
        }
        if let Some(pct) = self.max_busy_pct {
            if limit.busy_pct() > pct {
                let wait = ctx.readiness().wait;
                return Ok(StepOutcome::fail(format!(
                    "out of file descriptors, with {queued} clients waiting to be accepted, the server never slept: it was {} (bound {pct} %; a loop that sleeps in its wait, or naps between passes, is far under it however loaded the machine)",
                    limit.busy_said()
                ))
                .cause_as("fd_exhaustion.spins-at-the-fd-limit", format!("the loop spins while accept() fails with EMFILE: the queued connections keep the listener readable, so a level-triggered {wait} returns at once, forever. Stop watching the listener while accept() fails (watch it again when a connection closes), or accept and close with a spare fd"))
                .evidence(limit.lines(server.pid, self.nofile))
                .evidence(Ctx::server_evidence(&mut server))
                .figure("busy_pct", limit.busy_pct()));
            }
        }

        // 3. Some leave: the waiting ones, newcomers and the refused ones
        // retried must all be served.
        let leave = self.leave.min(held.len());
        for &i in &held[..leave] {
            let _ = clients[i].stream.shutdown(std::net::Shutdown::Both);
        }
        let queued_clients: Vec<usize> = first
            .iter()
            .copied()
            .filter(|&i| clients[i].state == State::Waiting)
            .collect();
        await_echoes(
            &mut clients,
            &queued_clients,
            Instant::now() + BEFORE_NEWCOMERS,
            None,
        );
        let served_alone = count(&clients, &queued_clients, &State::Echoed);
        ctx.log.detail(format!(
            "{leave} held clients left; {served_alone} of the {} waiting served within {} ms, before any new client",
            queued_clients.len(),
            BEFORE_NEWCOMERS.as_millis()
        ));
        let deadline = Instant::now() + timeout;
        let mut retries = 0;
        let to_retry: Vec<usize> = first
            .iter()
            .copied()
            .filter(|&i| clients[i].state == State::Refused)
            .collect();
        let mut unserved: Vec<String> = Vec::new();
        let arrivals = (1..=self.newcomers).map(|n| format!("newcomer {n}")).chain(
            to_retry
                .iter()
                .map(|i| format!("refused client {}, retried", i + 1)),
        );
        for who in arrivals {
            match admitted(server.addr, &who, deadline, &mut retries) {
                Ok(client) => clients.push(client),
                Err(what) => {
                    unserved.push(format!("{who}: {what}"));
                    break;
                }
            }
        }
        await_echoes(&mut clients, &queued_clients, deadline, None);
        let still_waiting: Vec<usize> = queued_clients
            .iter()
            .copied()
            .filter(|&i| clients[i].state != State::Echoed)
            .collect();
        if let Some(&i) = still_waiting.first() {
            let state = match &clients[i].state {
                State::Waiting => "no echo".to_string(),
                State::Refused => "closed before any echo (a queued client must be served, or refused at once while the server is full)".to_string(),
                State::Broken(what) => what.clone(),
                State::Echoed => String::new(),
            };
            unserved.insert(
                0,
                format!(
                    "{} of the {} clients that waited in the accept queue, e.g. client {}: {state}",
                    still_waiting.len(),
                    queued_clients.len(),
                    i + 1
                ),
            );
        }
        if !unserved.is_empty() {
            return Ok(StepOutcome::fail(format!(
                "after {leave} held clients left, freeing their file descriptors, not everyone was served within {} s: {}",
                self.timeout_secs,
                unserved.join("; ")
            ))
            .cause_as("fd_exhaustion.never-recovers", "the server must accept again once file descriptors are free: whatever it does while accept() fails with EMFILE (stop watching the listener, or refuse), it must come back when a connection closes")
            .evidence(limit.lines(server.pid, self.nofile))
            .evidence(Ctx::server_evidence(&mut server))
            .figure("still_waiting", still_waiting.len()));
        }
        let when = if served_alone == queued_clients.len() {
            "as soon as others left"
        } else {
            "once a newcomer connected"
        };
        ctx.log.detail(format!(
            "the {} waiting clients served {when}; {} newcomers and {} refused clients served ({retries} refused attempts retried)",
            queued_clients.len(),
            self.newcomers,
            to_retry.len()
        ));
        let rest = queued_clients.len() + to_retry.len();
        let bound_said = match self.max_busy_pct {
            Some(pct) => format!("bound {pct} %"),
            None => "not judged".to_string(),
        };
        Ok(StepOutcome::pass(format!(
            "{} clients over a hard limit of {} open files: {served} served and served again at the limit ({waiting} waited, {refused} refused), the server {} ({bound_said}); after {leave} left, the {rest} others served {when}, and {} newcomers",
            connected,
            self.nofile,
            limit.busy_said(),
            self.newcomers
        ))
        .figure("served_at_the_limit", served)
        .figure("waited", waiting)
        .figure("refused", refused)
        .figure("cpu_ms", limit.cpu_ms)
        .figure("busy_pct", limit.busy_pct())
        .figure("waiting_served_before_a_newcomer", served_alone)
        .proof_line(format!(
            "fd_exhaustion: a hard limit of {} open files and {} clients: the server survived, served {served} at once, and the other {rest} once {leave} left",
            self.nofile,
            connected
        )))
    }
}

impl FdExhaustion {
    /// How many of the first clients must be served: half the limit, room
    /// for a server that spends more than one fd per connection.
    fn first_served(&self) -> usize {
        (self.nofile / 2) as usize
    }
}

/// Connects a new client until it is echoed, retrying refusals with
/// backoff until `deadline`.
fn admitted(
    addr: SocketAddr,
    who: &str,
    deadline: Instant,
    retries: &mut usize,
) -> std::result::Result<Client, String> {
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut client = Client::connect(addr, who).map_err(|e| format!("connect failed: {e}"))?;
        await_echoes(std::slice::from_mut(&mut client), &[0], deadline, None);
        match &client.state {
            State::Echoed => return Ok(client),
            State::Refused => {}
            State::Waiting => return Err("no echo".into()),
            State::Broken(what) => return Err(what.clone()),
        }
        if Instant::now() + backoff >= deadline {
            return Err(format!("still refused after {} attempts", *retries + 1));
        }
        *retries += 1;
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
