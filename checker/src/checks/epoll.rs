//! `epoll`: the server really runs on epoll, on one thread. With a few
//! client connections open and idle, the process must hold an epoll
//! instance (`anon_inode:[eventpoll]` in /proc/PID/fd) *and* its thread must
//! be asleep in epoll_wait / epoll_pwait / epoll_pwait2 (sampled several
//! times from /proc/PID/task/TID/syscall): an epoll fd created as a decoy
//! beside a poll() loop fails. Exactly one thread, no child processes.
//!
//! `edge_triggered: true` also reads the epoll instance's registrations
//! (/proc/PID/fdinfo/EPFD, `tfd: ... events: ...`) and requires EPOLLET on
//! every *client* socket, at every reading. A registration changes when the
//! server modifies it, and the idle clients never make it, so the readings
//! go on while the registrations change (unless `slow_bytes` is 0):
//!
//! 1. a new client, once registered;
//! 2. that client sends `slow_bytes` of frames and reads nothing (a small
//!    receive window), so its echoes back up in the server, which must ask
//!    for EPOLLOUT: read until its registration shows EPOLLOUT;
//! 3. it reads every echo (each byte compared), readings as it goes, and
//!    after (until EPOLLOUT is gone, or a bound for a server that keeps it:
//!    EPOLLIN|EPOLLOUT|EPOLLET registered once, mio's style, is correct);
//! 4. another client backs up the same way and resets (SO_LINGER 0) with
//!    echoes still pending: the error arms run. The server must live on,
//!    echo every client still held and a new one, and its registrations are
//!    read once more.
//! 5. with `reset_mid_frame`: that reset client's connection must be closed
//!    in the server (its fd, the socket inode the server held for it, gone
//!    from /proc/PID/fd), and a third client sends half a frame, so nothing
//!    is pending for it, and resets. Only the read reports that reset
//!    (ECONNRESET): a read error arm that takes it for WouldBlock keeps the
//!    dead socket open, and edge-triggered epoll never reports it again.
//!    Its connection must be closed too, and a new client served.
//!
//! The listener is exempt: a level-triggered listener and an edge-triggered
//! one that accepts until WouldBlock are both correct (the `connect_burst`
//! step catches an edge-triggered listener that accepts once per event).

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;
use serde::Deserialize;

use super::disconnects::{connect_small_window, reset};
use super::excerpt;
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::Server;

/// Samples of the blocked syscall, and the pause between two.
const SAMPLES: usize = 5;
const SAMPLE_GAP: Duration = Duration::from_millis(200);
/// How long one client's echo may take while connections are opened.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Epoll {
    /// Require EPOLLET on every client registration.
    pub edge_triggered: bool,
    /// Client connections held open (and idle) while the server is read.
    pub connections: usize,
    /// With `edge_triggered`: bytes of frames the slow reader (and then the
    /// resetting client) sends before reading, more than the kernel's
    /// buffers hold, so the server's output backs up; 0 reads the idle
    /// registrations only.
    pub slow_bytes: usize,
    /// With `edge_triggered` and `slow_bytes`: every client that reset
    /// must have its connection closed, and a client also resets
    /// mid-frame, with nothing pending for it (module doc, 5).
    pub reset_mid_frame: bool,
    /// Bound on the slow reader's echoes and on each wait for the server.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for Epoll {
    fn default() -> Self {
        Epoll {
            edge_triggered: false,
            connections: 5,
            slow_bytes: 8 << 20,
            reset_mid_frame: false,
            timeout_secs: 15,
            args: Vec::new(),
        }
    }
}

/// The waits that count as "the loop is in epoll".
pub fn is_epoll_wait(name: &str) -> bool {
    matches!(name, "epoll_wait" | "epoll_pwait" | "epoll_pwait2")
}

impl Check for Epoll {
    fn summary(&self) -> String {
        let et = match (self.edge_triggered, self.slow_bytes) {
            (false, _) => String::new(),
            (true, 0) => ", every client registered with EPOLLET".into(),
            (true, bytes) => format!(
                ", every client registered with EPOLLET, read again while a slow reader's {} KiB of echoes back up and drain and after a client resets mid-echo{}",
                bytes / 1024,
                if self.reset_mid_frame {
                    "; another resets mid-frame with nothing pending, and both reset connections must be closed"
                } else {
                    ""
                }
            ),
        };
        format!(
            "{} idle connections: one thread, an epoll instance, asleep in epoll_wait{et}",
            self.connections
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        // Open the connections and prove each is served, so the server has
        // accepted and registered all of them before it is read.
        let mut clients = Vec::new();
        for client in 1..=self.connections.max(1) {
            match echo_once(server.addr, client) {
                Ok(stream) => clients.push(stream),
                Err(what) => {
                    return Ok(StepOutcome::fail(format!("client {client}: {what}"))
                        .cause_as("epoll.not-serving", "the server must accept and echo every client before it can be inspected; read its output below")
                        .evidence(Ctx::server_evidence(&mut server)));
                }
            }
        }
        ctx.log.detail(format!(
            "{} connections open, each echoed one 16-byte frame; now idle",
            clients.len()
        ));
        // Let the last echo's write return the server to its wait.
        std::thread::sleep(Duration::from_millis(300));
        let pid = server.pid;
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!(
                "{death} with {} connections open",
                clients.len()
            ))
            .cause("the server died: if its output shows a `todo!()`, fill in that gap")
            .evidence(Ctx::server_evidence(&mut server)));
        }

        let threads = procfs::threads(pid)?;
        if threads != 1 {
            return Ok(StepOutcome::fail(format!(
                "the server runs {threads} threads (/proc/{pid}/status `Threads:`); this lesson wants exactly 1"
            ))
            .cause_as("epoll.extra-threads", "one thread serves every connection through epoll: no thread per client, no worker pool, no helper thread")
            .figure("threads", threads));
        }
        let children = procfs::descendants(pid);
        if !children.is_empty() {
            return Ok(StepOutcome::fail(format!(
                "the server has {} child process(es) ({children:?}); this lesson wants one process",
                children.len()
            ))
            .cause_as(
                "epoll.forked",
                "don't fork: one process, one thread, one epoll loop",
            ));
        }
        let epoll_fds = procfs::epoll_fds(pid)?;
        if epoll_fds.is_empty() {
            return Ok(StepOutcome::fail(format!(
                "no epoll instance among the server's fds (no `anon_inode:[eventpoll]` in /proc/{pid}/fd) with {} connections open",
                clients.len()
            ))
            .cause_as("epoll.no-epoll-instance", "create one with `Epoll::new` (epoll_create1) and keep it for the server's whole life; poll() or select() do not count here"));
        }

        // The idle loop must be asleep in an epoll wait, sample after sample.
        let mut names = Vec::new();
        for i in 0..SAMPLES {
            if i > 0 {
                std::thread::sleep(SAMPLE_GAP);
            }
            let sample = procfs::blocked_syscalls(pid)?;
            let name = match sample.first() {
                Some(Some(number)) => procfs::syscall_name(*number),
                Some(None) => "running",
                None => "gone",
            };
            names.push(name);
        }
        let in_epoll = names.iter().filter(|n| is_epoll_wait(n)).count();
        let other_wait = names.iter().find(|n| !is_epoll_wait(n) && **n != "running");
        ctx.log.detail(format!(
            "idle samples of /proc/{pid}/task/*/syscall: {}",
            names.join(", ")
        ));
        // Tolerance: a sample may catch the thread briefly running, but a
        // majority must be in an epoll wait and none in another wait.
        if other_wait.is_some() || in_epoll * 2 <= SAMPLES {
            let seen = names.join(", ");
            let (cause_id, cause) = match other_wait {
                Some(&"poll") | Some(&"ppoll") | Some(&"select") | Some(&"pselect6") => ("epoll.waits-in-poll", format!(
                    "the loop still waits in {}: an epoll fd exists but nothing waits on it. Replace the poll()/select() call with epoll.wait()",
                    other_wait.unwrap_or(&"poll")
                )),
                Some(name) => ("epoll.waits-elsewhere", format!(
                    "the idle server sleeps in {name} instead of epoll_wait: the loop must block in epoll.wait() and nowhere else"
                )),
                None => ("epoll.spins", "the thread was running instead of sleeping: epoll.wait() with a zero timeout, or EPOLLOUT left armed, makes the loop spin".into()),
            };
            return Ok(StepOutcome::fail(format!(
                "idle with {} connections open, the server was in epoll_wait in {in_epoll} of {SAMPLES} samples over ~1 s (seen: {seen}); at least {} expected and no other wait",
                clients.len(),
                SAMPLES / 2 + 1
            ))
            .cause_as(cause_id, cause)
            .figure("epoll_wait_samples", in_epoll));
        }

        let mut outcome_detail = format!(
            "1 thread, no child processes, {} epoll instance(s), idle in an epoll wait in {in_epoll}/{SAMPLES} samples",
            epoll_fds.len()
        );
        let mut proof = vec![format!(
            "epoll: 1 thread, idle in epoll_wait with {} connections open",
            clients.len()
        )];
        if self.edge_triggered {
            let mut watch = EtWatch::new(pid);
            let count = match watch.idle_reading(clients.len())? {
                Ok(count) => count,
                Err(outcome) => return Ok(outcome),
            };
            outcome_detail.push_str(&format!("; all {count} client registrations carry EPOLLET"));
            proof.push(format!(
                "epoll: {count} client sockets registered with EPOLLET"
            ));
            if self.slow_bytes > 0 {
                let changing = ChangingReadings {
                    slow_bytes: self.slow_bytes,
                    reset_mid_frame: self.reset_mid_frame,
                    timeout: Duration::from_secs(self.timeout_secs),
                    seed: ctx.seed,
                };
                match changing.run(ctx, &mut server, &mut watch, &mut clients)? {
                    Ok(detail) => {
                        outcome_detail.push_str(&format!("; {detail}"));
                        proof.push(
                            "epoll: EPOLLET kept on every client registration while a slow reader's echoes backed up and after; a client reset mid-echo survived"
                                .into(),
                        );
                        if self.reset_mid_frame {
                            proof.push(
                                "epoll: a client reset with echoes pending and one reset mid-frame: both connections closed, the others still served"
                                    .into(),
                            );
                        }
                    }
                    Err(outcome) => return Ok(outcome),
                }
            }
        }
        drop(clients);
        let mut outcome = StepOutcome::pass(outcome_detail).figure("epoll_wait_samples", in_epoll);
        for line in proof {
            outcome = outcome.proof_line(line);
        }
        Ok(outcome)
    }
}

/// Connects and round-trips one small frame; returns the open stream.
fn echo_once(addr: std::net::SocketAddr, client: usize) -> std::result::Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    round_trip(&mut stream, client)?;
    Ok(stream)
}

/// Sends one 16-byte frame on `stream` and reads its echo back (bounded).
fn round_trip(stream: &mut TcpStream, client: usize) -> std::result::Result<(), String> {
    let payload: Vec<u8> = (0..12u8).map(|b| b.wrapping_add(client as u8)).collect();
    let frame = stress::frame::encode(&payload);
    stream
        .write_all(&frame)
        .map_err(|e| format!("sending a {}-byte frame failed: {e}", frame.len()))?;
    let deadline = Instant::now() + ECHO_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < frame.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "sent a {}-byte frame, {} bytes came back within 5 s",
                frame.len(),
                got.len()
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "sent a {}-byte frame, the server closed after {} bytes",
                    frame.len(),
                    got.len()
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("reading the echo failed: {e}")),
        }
    }
    if got != frame {
        return Err("the echo differs from the frame sent".into());
    }
    Ok(())
}

/// Payload bytes per frame of the slow reader and the resetting client.
const SLOW_FRAME: usize = 16 * 1024;
/// Pause between two readings while the probe waits for a change.
const READING_GAP: Duration = Duration::from_millis(50);
/// Bound on waiting for a registration to change (a new client registered,
/// EPOLLOUT armed): a loop on epoll_wait makes the change within
/// milliseconds.
const CHANGE_WAIT: Duration = Duration::from_secs(3);
/// How long a server may keep EPOLLOUT after everything was written before
/// the probe takes it for one that registers EPOLLOUT for good (correct).
const DISARM_WAIT: Duration = Duration::from_secs(1);
/// A client's writes that make no progress for this long: the server has
/// stopped reading it (backpressure), its output is backed up.
const STALL: Duration = Duration::from_millis(300);

/// One client socket's registration in an epoll instance, as read.
#[derive(Debug, Clone, Copy)]
struct Registration {
    epfd: i32,
    fd: i32,
    inode: u64,
    events: u32,
}

/// The names of the bits of an `events:` mask, for people.
fn event_names(events: u32) -> String {
    const BITS: [(u32, &str); 10] = [
        (0x001, "EPOLLIN"),
        (0x002, "EPOLLPRI"),
        (0x004, "EPOLLOUT"),
        (0x008, "EPOLLERR"),
        (0x010, "EPOLLHUP"),
        (0x2000, "EPOLLRDHUP"),
        (1 << 28, "EPOLLEXCLUSIVE"),
        (1 << 29, "EPOLLWAKEUP"),
        (1 << 30, "EPOLLONESHOT"),
        (procfs::EPOLLET, "EPOLLET"),
    ];
    let mut names: Vec<String> = BITS
        .iter()
        .filter(|(bit, _)| events & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = BITS.iter().fold(0, |all, (bit, _)| all | bit);
    if events & !known != 0 {
        names.push(format!("{:#x}", events & !known));
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// Reads the server's client registrations again and again, and judges
/// every reading: each client registration must carry EPOLLET.
struct EtWatch {
    pid: Pid,
    /// Inodes of listening sockets: not clients.
    listening: HashSet<u64>,
    /// The probe's own clients of note, by the server's fd for them.
    names: Vec<(i32, &'static str)>,
    /// The events of each registration (epoll fd, socket inode) the last
    /// time it was seen with EPOLLET.
    had_et: HashMap<(i32, u64), u32>,
    readings: usize,
}

impl EtWatch {
    fn new(pid: Pid) -> EtWatch {
        EtWatch {
            pid,
            listening: procfs::tcp_sockets(pid)
                .into_iter()
                .filter(|s| s.state == procfs::TCP_LISTEN)
                .map(|s| s.inode)
                .collect(),
            names: Vec::new(),
            had_et: HashMap::new(),
            readings: 0,
        }
    }

    /// The client registrations of every epoll instance, right now.
    fn read(&mut self) -> Result<Vec<Registration>> {
        let fds = procfs::open_fds(self.pid)?;
        let inode_of = |fd: i32| {
            fds.iter()
                .find(|f| f.fd == fd)
                .and_then(|f| {
                    f.target
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                })
                .and_then(|inode| inode.parse::<u64>().ok())
        };
        let mut found = Vec::new();
        for epfd in procfs::epoll_fds(self.pid)? {
            for entry in procfs::epoll_entries(self.pid, epfd)? {
                match inode_of(entry.target_fd) {
                    Some(inode) if !self.listening.contains(&inode) => found.push(Registration {
                        epfd,
                        fd: entry.target_fd,
                        inode,
                        events: entry.events,
                    }),
                    _ => {}
                }
            }
        }
        self.readings += 1;
        Ok(found)
    }

    fn name_of(&self, fd: i32) -> String {
        self.names
            .iter()
            .find(|(named, _)| *named == fd)
            .map(|(_, name)| format!(" ({name})"))
            .unwrap_or_default()
    }

    fn describe(&self, reg: &Registration) -> String {
        format!(
            "client fd {}{} in epoll fd {}: events {:#x} ({})",
            reg.fd,
            self.name_of(reg.fd),
            reg.epfd,
            reg.events,
            event_names(reg.events)
        )
    }

    /// The first reading, with the idle clients connected: there must be a
    /// registration for each of them.
    fn idle_reading(
        &mut self,
        open_clients: usize,
    ) -> Result<std::result::Result<usize, StepOutcome>> {
        let regs = self.read()?;
        if regs.len() < open_clients {
            let pid = self.pid;
            return Ok(Err(StepOutcome::fail(format!(
                "{open_clients} client connections are open and served, but only {} client sockets are registered in the server's epoll instance(s) (/proc/{pid}/fdinfo of its eventpoll fds)",
                regs.len()
            ))
            .cause_as("epoll.client-not-registered", "register every accepted client with epoll.add, and serve it from epoll_wait's events")));
        }
        Ok(self
            .judge("idle with the clients connected", regs)
            .map(|regs| regs.len())
            .map_err(|failed| *failed))
    }

    /// A reading taken `phase` (words for the message), judged.
    fn reading(
        &mut self,
        server: &mut Server,
        phase: &str,
    ) -> Result<std::result::Result<Vec<Registration>, StepOutcome>> {
        match self.read() {
            Ok(regs) => Ok(self.judge(phase, regs).map_err(|failed| *failed)),
            Err(err) => match server.death_notice_within(Duration::from_millis(300)) {
                Some(death) => Ok(Err(StepOutcome::fail(format!("{death} {phase}"))
                    .cause("the server died: read its output below")
                    .evidence(Ctx::server_evidence(server)))),
                None => Err(err),
            },
        }
    }

    fn judge(
        &mut self,
        phase: &str,
        regs: Vec<Registration>,
    ) -> std::result::Result<Vec<Registration>, Box<StepOutcome>> {
        let lacking: Vec<&Registration> = regs
            .iter()
            .filter(|r| r.events & procfs::EPOLLET == 0)
            .collect();
        let Some(first) = lacking.first() else {
            for reg in &regs {
                self.had_et.insert((reg.epfd, reg.inode), reg.events);
            }
            return Ok(regs);
        };
        let pid = self.pid;
        let lost: Vec<(&Registration, u32)> = lacking
            .iter()
            .filter_map(|r| {
                self.had_et
                    .get(&(r.epfd, r.inode))
                    .map(|&before| (*r, before))
            })
            .collect();
        let mut evidence: Vec<String> = lacking.iter().take(10).map(|r| self.describe(r)).collect();
        for (reg, before) in lost.iter().take(3) {
            evidence.push(format!(
                "client fd {}{} was registered with events {before:#x} ({}) at an earlier reading",
                reg.fd,
                self.name_of(reg.fd),
                event_names(*before)
            ));
        }
        let (cause_id, cause) = match lost.first() {
            Some((reg, _)) => ("epoll.modify-drops-et", format!(
                "client fd {} carried EPOLLET at an earlier reading and lost it when its registration changed: an epoll.modify without EPOLLET (when EPOLLOUT is added for pending output, or taken away once it is written) turns that socket back to level-triggered. Put EPOLLET in every epoll.modify, not only in epoll.add",
                reg.fd
            )),
            None => ("epoll.not-edge-triggered", "add EpollFlags::EPOLLET to the flags of every client, in epoll.add and in every epoll.modify (a modify without it turns the socket back to level-triggered)".into()),
        };
        Err(Box::new(StepOutcome::fail(format!(
            "{phase}: {} of {} client registrations lack EPOLLET (bit 0x80000000 of `events:` in /proc/{pid}/fdinfo/<epoll fd>): {}",
            lacking.len(),
            regs.len(),
            self.describe(first)
        ))
        .cause_as(cause_id, cause)
        .figure("readings", self.readings)
        .evidence(evidence)))
    }
}

/// The events of `fd`'s registration in a reading, if it is there.
fn events_of(regs: &[Registration], fd: Option<i32>) -> Option<u32> {
    let fd = fd?;
    regs.iter().find(|r| r.fd == fd).map(|r| r.events)
}

/// Unwraps a judged reading, or returns its failure from the function.
macro_rules! judged {
    ($reading:expr) => {
        match $reading? {
            Ok(regs) => regs,
            Err(outcome) => return Ok(Err(outcome)),
        }
    };
}

/// The readings taken while the registrations change (module doc, 1-5).
struct ChangingReadings {
    slow_bytes: usize,
    reset_mid_frame: bool,
    timeout: Duration,
    seed: u64,
}

impl ChangingReadings {
    /// Whole frames of `slow_bytes` in all, seeded bytes.
    fn frames(&self) -> Vec<u8> {
        let count = (self.slow_bytes / (SLOW_FRAME + 4)).max(1);
        let mut bytes = Vec::with_capacity(count * (SLOW_FRAME + 4));
        for i in 0..count {
            let payload: Vec<u8> = (0..SLOW_FRAME)
                .map(|j| (i.wrapping_mul(131) ^ j ^ self.seed as usize) as u8)
                .collect();
            stress::frame::encode_into(&payload, &mut bytes);
        }
        bytes
    }

    /// Connects a client with a small receive window and waits (bounded)
    /// until the server has registered it; returns it and the server's fd
    /// for it (`None` if it could not be told apart in time).
    fn new_client(
        &self,
        server: &mut Server,
        watch: &mut EtWatch,
        name: &'static str,
    ) -> Result<std::result::Result<(TcpStream, Option<i32>), StepOutcome>> {
        let stream = match connect_small_window(server.addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(Err(StepOutcome::fail(format!(
                    "{name}: connect failed: {err}"
                ))
                .cause_as(
                    "epoll.stopped-accepting",
                    "the server must keep accepting clients",
                )
                .evidence(Ctx::server_evidence(server))))
            }
        };
        let local = stream.local_addr()?;
        let phase = format!("once {name} connected");
        let until = Instant::now() + CHANGE_WAIT;
        loop {
            let fd = procfs::fd_of_connection_from(server.pid, local)
                .ok()
                .flatten();
            let regs = judged!(watch.reading(server, &phase));
            if let Some(fd) = fd.filter(|&fd| events_of(&regs, Some(fd)).is_some()) {
                watch.names.push((fd, name));
                return Ok(Ok((stream, Some(fd))));
            }
            if Instant::now() >= until {
                return Ok(Ok((stream, None)));
            }
            std::thread::sleep(READING_GAP);
        }
    }

    /// Readings until `fd`'s registration shows EPOLLOUT (bounded); returns
    /// its events then, `None` if EPOLLOUT never showed (or fd is unknown).
    fn until_armed(
        &self,
        server: &mut Server,
        watch: &mut EtWatch,
        fd: Option<i32>,
        phase: &str,
    ) -> Result<std::result::Result<Option<u32>, StepOutcome>> {
        let until = Instant::now() + CHANGE_WAIT;
        loop {
            let regs = judged!(watch.reading(server, phase));
            let events = events_of(&regs, fd);
            if let Some(events) = events.filter(|e| e & procfs::EPOLLOUT != 0) {
                return Ok(Ok(Some(events)));
            }
            if fd.is_none() || events.is_none() || Instant::now() >= until {
                return Ok(Ok(None));
            }
            std::thread::sleep(READING_GAP);
        }
    }

    fn run(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
        watch: &mut EtWatch,
        held: &mut [TcpStream],
    ) -> Result<std::result::Result<String, StepOutcome>> {
        let sent = Arc::new(self.frames());
        let kib = sent.len() / 1024;

        // 1-2. The slow reader: registered, then its echoes back up.
        let (mut slow, slow_fd) = match self.new_client(server, watch, "the slow reader")? {
            Ok(client) => client,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let progress = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (stream, sent, progress) =
                (slow.try_clone()?, Arc::clone(&sent), Arc::clone(&progress));
            let timeout = self.timeout;
            std::thread::spawn(move || write_counting(stream, &sent, &progress, timeout))
        };
        let backing_up = format!("while the slow reader's {kib} KiB of echoes back up");
        let until = Instant::now() + self.timeout.min(Duration::from_secs(5));
        let (mut last, mut moved) = (0, Instant::now());
        while !writer.is_finished() && moved.elapsed() < STALL && Instant::now() < until {
            judged!(watch.reading(server, &backing_up));
            std::thread::sleep(READING_GAP);
            let now = progress.load(Ordering::Relaxed);
            if now != last {
                (last, moved) = (now, Instant::now());
            }
        }
        let armed = match self.until_armed(server, watch, slow_fd, &backing_up)? {
            Ok(armed) => armed,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let wrote_unread = progress.load(Ordering::Relaxed);
        ctx.log.detail(format!(
            "slow reader (server fd {}): sent {} of {kib} KiB reading nothing; its registration {}",
            slow_fd.map_or("unknown".into(), |fd| fd.to_string()),
            wrote_unread / 1024,
            match armed {
                Some(events) => format!(
                    "armed EPOLLOUT: events {events:#x} ({})",
                    event_names(events)
                ),
                None => "never showed EPOLLOUT".into(),
            }
        ));

        // 3. It reads every echo, with readings as it goes.
        let draining = "while the slow reader reads its echoes";
        let deadline = Instant::now() + self.timeout;
        let mut received = Vec::with_capacity(sent.len());
        let mut chunk = vec![0u8; 64 * 1024];
        let mut next_reading = Instant::now();
        let mut ending = "complete".to_string();
        while received.len() < sent.len() {
            if Instant::now() >= next_reading {
                judged!(watch.reading(server, draining));
                next_reading = Instant::now() + 2 * READING_GAP;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ending = format!("no more within {} s", self.timeout.as_secs());
                break;
            }
            let _ = slow.set_read_timeout(Some(left.min(2 * READING_GAP)));
            let room = (sent.len() - received.len()).min(chunk.len());
            match slow.read(&mut chunk[..room]) {
                Ok(0) => {
                    ending = "the server closed the connection".into();
                    break;
                }
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    ending = format!("read error: {e}");
                    break;
                }
            }
        }
        if received.len() < sent.len() {
            // Unblocks a writer the server stopped reading from.
            let _ = slow.shutdown(std::net::Shutdown::Both);
        }
        let write_result = writer.join().unwrap_or(Ok(()));
        if received != *sent {
            let mut evidence = vec![format!("the slow reader's reading ended: {ending}")];
            if let Err(err) = write_result {
                evidence.push(format!("its writes ended with: {err}"));
            }
            if excerpt::first_difference(&sent, &received).is_some_and(|at| at < received.len()) {
                evidence.extend(excerpt::compare(&sent, &received));
            }
            evidence.extend(Ctx::server_evidence(server));
            // Its writes stalled while nothing was pending for it: the server
            // stopped reading, not writing.
            let (cause_id, cause) = if armed.is_none() && wrote_unread < sent.len() {
                ("epoll.stopped-reading", format!(
                    "the server stopped reading this client's frames with no echo pending for it (EPOLLOUT never armed; its writes stalled after {} KiB): with EPOLLET a socket is reported once for the bytes that arrived, so read it until WouldBlock; bytes left in the kernel buffer are never reported again",
                    wrote_unread / 1024
                ))
            } else {
                ("epoll.echoes-lost-while-slow", format!(
                    "echoes a client is not reading yet must wait in its write buffer, in order, and go out once {} says it has room again",
                    ctx.readiness().writable
                ))
            };
            return Ok(Err(StepOutcome::fail(format!(
                "a slow reader sent {} of {kib} KiB of frames reading nothing, then read: {} of {} bytes came back in order",
                wrote_unread / 1024,
                excerpt::first_difference(&sent, &received).unwrap_or(received.len()),
                sent.len()
            ))
            .cause_as(cause_id, cause)
            .evidence(evidence)));
        }

        // After the drain: until EPOLLOUT is gone (or kept for good).
        let drained = "after the slow reader read every echo";
        let until = Instant::now() + DISARM_WAIT;
        let disarmed = loop {
            let regs = judged!(watch.reading(server, drained));
            match events_of(&regs, slow_fd) {
                Some(events) if events & procfs::EPOLLOUT == 0 => break Some(events),
                Some(_) if Instant::now() < until => std::thread::sleep(READING_GAP),
                _ => break None,
            }
        };

        // 4. A client that backs up the same way and resets mid-echo.
        let (resetter, reset_fd) = match self.new_client(server, watch, "the resetting client")? {
            Ok(client) => client,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let before_reset = "while the resetting client's echoes back up";
        resetter.set_nonblocking(true)?;
        let mut written = 0;
        let until = Instant::now() + self.timeout.min(Duration::from_secs(5));
        let mut moved = Instant::now();
        let mut next_reading = Instant::now();
        while written < sent.len() && moved.elapsed() < STALL && Instant::now() < until {
            if Instant::now() >= next_reading {
                judged!(watch.reading(server, before_reset));
                next_reading = Instant::now() + READING_GAP;
            }
            let end = (written + 64 * 1024).min(sent.len());
            match (&resetter).write(&sent[written..end]) {
                Ok(n) => {
                    written += n;
                    moved = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Err(outcome) = self.until_armed(server, watch, reset_fd, before_reset)? {
            return Ok(Err(outcome));
        }
        let reset_socket =
            reset_fd.and_then(|fd| socket_inode(server.pid, fd).map(|inode| (fd, inode)));
        reset(resetter);
        ctx.log.detail(format!(
            "resetting client (server fd {}): sent {} KiB reading nothing, then closed with SO_LINGER 0 (an RST) with its echoes pending",
            reset_fd.map_or("unknown".into(), |fd| fd.to_string()),
            written / 1024
        ));
        std::thread::sleep(Duration::from_millis(300));
        let after_reset = "after a client reset with its echoes pending";
        if let Some(death) = server.death_notice_within(Duration::from_millis(300)) {
            return Ok(Err(StepOutcome::fail(format!(
                "the server died {after_reset}: {death}"
            ))
            .death_cause("epoll.reset-ends-the-server", RESET_CAUSE)
            .evidence(Ctx::server_evidence(server))));
        }
        judged!(watch.reading(server, after_reset));

        // The server lives on: every client still held is served, and a new one.
        let mut served = 0;
        let mut others: Vec<&mut TcpStream> = held.iter_mut().collect();
        others.push(&mut slow);
        let total = others.len();
        for (i, stream) in others.into_iter().enumerate() {
            if let Err(what) = round_trip(stream, 100 + i) {
                return Ok(Err(self.not_served(
                    server,
                    format!("client {} of the {total} still connected: {what}", i + 1),
                )));
            }
            served += 1;
        }
        match echo_once(server.addr, 200) {
            Ok(stream) => drop(stream),
            Err(what) => return Ok(Err(self.not_served(server, format!("a new client: {what}")))),
        }
        judged!(watch.reading(server, "after the reset, with every client served again"));
        let closed = if self.reset_mid_frame {
            match self.resets_closed(ctx, server, watch, reset_socket)? {
                Ok(detail) => format!("; {detail}"),
                Err(outcome) => return Ok(Err(outcome)),
            }
        } else {
            String::new()
        };
        Ok(Ok(format!(
            "EPOLLET on every client registration in all {} readings: a new client, its {kib} KiB of echoes backing up ({}), draining, drained ({}), another client's reset; after the reset {} clients still connected and a new one echoed{closed}",
            watch.readings,
            if armed.is_some() { "EPOLLOUT armed" } else { "EPOLLOUT never seen" },
            if disarmed.is_some() { "EPOLLOUT disarmed" } else { "EPOLLOUT kept" },
            served
        )))
    }

    /// Module doc, 5: the client that reset with echoes pending is closed
    /// (`reset_socket`: the server's fd and socket inode for it, when they
    /// were told apart), and so is one that resets mid-frame with nothing
    /// pending; then a new client is served.
    fn resets_closed(
        &self,
        ctx: &mut Ctx,
        server: &mut Server,
        watch: &mut EtWatch,
        reset_socket: Option<(i32, u64)>,
    ) -> Result<std::result::Result<String, StepOutcome>> {
        let mut checked = 0;
        if let Some(socket) = reset_socket {
            if let Err(outcome) = self.closed_within(
                server,
                socket,
                "the client that had echoes pending",
                "its echoes were pending, so both the read and the write that followed failed",
            )? {
                return Ok(Err(outcome));
            }
            checked += 1;
        }

        let (mut client, fd) =
            match self.new_client(server, watch, "the client resetting mid-frame")? {
                Ok(client) => client,
                Err(outcome) => return Ok(Err(outcome)),
            };
        let socket = fd.and_then(|fd| socket_inode(server.pid, fd).map(|inode| (fd, inode)));
        // The header of a 200-byte frame and 100 of its bytes: nothing to
        // echo, so no write of the server's ever meets the reset.
        let whole = stress::frame::encode(&[0xa5; 200]);
        if let Err(err) = client.write_all(&whole[..4 + 100]) {
            return Ok(Err(self.not_served(
                server,
                format!("the client resetting mid-frame could not send half a frame: {err}"),
            )));
        }
        // Time for the server to read the half frame: the reset comes alone.
        std::thread::sleep(Duration::from_millis(200));
        reset(client);
        ctx.log.detail(format!(
            "client resetting mid-frame (server fd {}): sent 104 of 204 bytes, then an RST, with nothing pending for it",
            fd.map_or("unknown".into(), |fd| fd.to_string())
        ));
        let after = "after a client reset mid-frame";
        if let Some(death) = server.death_notice_within(Duration::from_millis(300)) {
            return Ok(Err(StepOutcome::fail(format!(
                "the server died {after}: {death}"
            ))
            .death_cause("epoll.reset-ends-the-server", RESET_CAUSE)
            .evidence(Ctx::server_evidence(server))));
        }
        if let Some(socket) = socket {
            if let Err(outcome) = self.closed_within(
                server,
                socket,
                "the client that had sent half a frame",
                "nothing was pending for it: only the read reports this reset",
            )? {
                return Ok(Err(outcome));
            }
            checked += 1;
        }
        judged!(watch.reading(server, after));
        if let Err(what) = echo_once(server.addr, 300).map(drop) {
            return Ok(Err(self.not_served(server, format!("a new client: {what}"))));
        }
        Ok(Ok(format!(
            "a client reset mid-frame with nothing pending; {checked} reset connection(s) closed in the server, a new client echoed"
        )))
    }

    /// Waits (bounded) until the server has closed its socket for a client
    /// that reset: `socket` (fd, inode) no longer among its open fds (the fd
    /// number alone may be reused by a later connection).
    fn closed_within(
        &self,
        server: &mut Server,
        (fd, inode): (i32, u64),
        who: &str,
        why: &str,
    ) -> Result<std::result::Result<(), StepOutcome>> {
        let target = format!("socket:[{inode}]");
        let started = Instant::now();
        loop {
            let open = match procfs::open_fds(server.pid) {
                Ok(fds) => fds.iter().any(|f| f.fd == fd && f.target == target),
                Err(err) => {
                    return match server.death_notice_within(Duration::from_millis(300)) {
                        Some(death) => Ok(Err(StepOutcome::fail(format!(
                            "the server died after {who} reset: {death}"
                        ))
                        .death_cause("epoll.reset-ends-the-server", RESET_CAUSE)
                        .evidence(Ctx::server_evidence(server)))),
                        None => Err(err),
                    }
                }
            };
            if !open {
                return Ok(Ok(()));
            }
            if started.elapsed() >= RESET_CLOSE_WAIT {
                break;
            }
            std::thread::sleep(READING_GAP);
        }
        let pid = server.pid;
        Ok(Err(StepOutcome::fail(format!(
            "{} ms after {who} reset its connection (an RST), the server still holds it open: fd {fd} ({target} in /proc/{pid}/fd); {why}",
            RESET_CLOSE_WAIT.as_millis()
        ))
        .cause_as("epoll.reset-left-open", "a read that fails with anything but WouldBlock or Interrupted (ECONNRESET here) means the connection is broken: end it, so the caller closes it. Taken for WouldBlock, it keeps a dead socket open and registered, and edge-triggered epoll never reports that socket again: a file descriptor leaked per client that resets")
        .evidence(Ctx::server_evidence(server))))
    }

    fn not_served(&self, server: &mut Server, what: String) -> StepOutcome {
        match server.death_notice_within(Duration::from_millis(300)) {
            Some(death) => StepOutcome::fail(format!(
                "the server died after a client reset with its echoes pending: {death}"
            ))
            .death_cause("epoll.reset-ends-the-server", RESET_CAUSE),
            None => StepOutcome::fail(format!(
                "after a client reset with its echoes pending, {what}"
            ))
            .cause_as("epoll.reset-starves-others", "the reset must end that one connection: close it and go back to epoll_wait. An error arm that retries the failed write, blocks, or leaves the loop starves every other client"),
        }
        .evidence(Ctx::server_evidence(server))
    }
}

/// How long a server may take to close a connection after its client reset
/// (a correct loop closes it on the event the reset brings, in
/// milliseconds).
const RESET_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The inode of the socket the process holds as `fd`, if it is one.
fn socket_inode(pid: Pid, fd: i32) -> Option<u64> {
    procfs::open_fds(pid)
        .ok()?
        .into_iter()
        .find(|f| f.fd == fd)?
        .target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// What a reset client's death of the server most likely is.
const RESET_CAUSE: &str = "a reset is an error of that one connection (ECONNRESET or EPIPE from read or write, EPOLLERR/EPOLLHUP from epoll_wait): close it and keep serving; never unwrap() it or `?` it out of the event loop";

/// Writes `bytes` in 64 KiB pieces, counting what was written, bounded by
/// `timeout` per write.
fn write_counting(
    mut stream: TcpStream,
    bytes: &[u8],
    progress: &AtomicUsize,
    timeout: Duration,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(timeout))?;
    for piece in bytes.chunks(64 * 1024) {
        stream.write_all(piece)?;
        progress.fetch_add(piece.len(), Ordering::Relaxed);
    }
    Ok(())
}
