//! `epoll`: the server really runs on epoll, on one thread. With a few
//! client connections open and idle, the process must hold an epoll
//! instance (`anon_inode:[eventpoll]` in /proc/PID/fd) *and* its thread must
//! be asleep in epoll_wait / epoll_pwait / epoll_pwait2 (sampled several
//! times from /proc/PID/task/TID/syscall): an epoll fd created as a decoy
//! beside a poll() loop fails. Exactly one thread, no child processes.
//!
//! `edge_triggered: true` also reads the epoll instance's registrations
//! (/proc/PID/fdinfo/EPFD) and requires EPOLLET on every *client* socket.
//! The listener is exempt: a level-triggered listener and an edge-triggered
//! one that accepts until WouldBlock are both correct (the `connect_burst`
//! step catches an edge-triggered listener that accepts once per event).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

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
    pub args: Vec<String>,
}

impl Default for Epoll {
    fn default() -> Self {
        Epoll {
            edge_triggered: false,
            connections: 5,
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
        let et = if self.edge_triggered {
            ", every client registered with EPOLLET"
        } else {
            ""
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
                        .cause("the server must accept and echo every client before it can be inspected; read its output below")
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
            .cause("one thread serves every connection through epoll: no thread per client, no worker pool, no helper thread")
            .figure("threads", threads));
        }
        let children = procfs::descendants(pid);
        if !children.is_empty() {
            return Ok(StepOutcome::fail(format!(
                "the server has {} child process(es) ({children:?}); this lesson wants one process",
                children.len()
            ))
            .cause("don't fork: one process, one thread, one epoll loop"));
        }
        let epoll_fds = procfs::epoll_fds(pid)?;
        if epoll_fds.is_empty() {
            return Ok(StepOutcome::fail(format!(
                "no epoll instance among the server's fds (no `anon_inode:[eventpoll]` in /proc/{pid}/fd) with {} connections open",
                clients.len()
            ))
            .cause("create one with `Epoll::new` (epoll_create1) and keep it for the server's whole life; poll() or select() do not count here"));
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
            let cause = match other_wait {
                Some(&"poll") | Some(&"ppoll") | Some(&"select") | Some(&"pselect6") => format!(
                    "the loop still waits in {}: an epoll fd exists but nothing waits on it. Replace the poll()/select() call with epoll.wait()",
                    other_wait.unwrap_or(&"poll")
                ),
                Some(name) => format!(
                    "the idle server sleeps in {name} instead of epoll_wait: the loop must block in epoll.wait() and nowhere else"
                ),
                None => "the thread was running instead of sleeping: epoll.wait() with a zero timeout, or EPOLLOUT left armed, makes the loop spin".into(),
            };
            return Ok(StepOutcome::fail(format!(
                "idle with {} connections open, the server was in epoll_wait in {in_epoll} of {SAMPLES} samples over ~1 s (seen: {seen}); at least {} expected and no other wait",
                clients.len(),
                SAMPLES / 2 + 1
            ))
            .cause(cause)
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
            match check_edge_triggered(pid, &epoll_fds, clients.len())? {
                Ok(count) => {
                    outcome_detail
                        .push_str(&format!("; all {count} client registrations carry EPOLLET"));
                    proof.push(format!(
                        "epoll: {count} client sockets registered with EPOLLET"
                    ));
                }
                Err(outcome) => return Ok(outcome),
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
    Ok(stream)
}

/// Ok(n): n client sockets registered, all with EPOLLET. Err: the failing outcome.
fn check_edge_triggered(
    pid: Pid,
    epoll_fds: &[i32],
    open_clients: usize,
) -> Result<std::result::Result<usize, StepOutcome>> {
    let listening = listening_inodes(pid);
    let fds = procfs::open_fds(pid)?;
    let socket_fd = |fd: i32| {
        fds.iter()
            .find(|f| f.fd == fd)
            .and_then(|f| {
                f.target
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
            })
            .and_then(|inode| inode.parse::<u64>().ok())
    };
    let mut clients = Vec::new();
    for &epfd in epoll_fds {
        for entry in procfs::epoll_entries(pid, epfd)? {
            match socket_fd(entry.target_fd) {
                Some(inode) if !listening.contains(&inode) => clients.push((epfd, entry)),
                _ => {}
            }
        }
    }
    if clients.len() < open_clients {
        return Ok(Err(StepOutcome::fail(format!(
            "{open_clients} client connections are open and served, but only {} client sockets are registered in the epoll instance(s) (/proc/{pid}/fdinfo of fd {epoll_fds:?})",
            clients.len()
        ))
        .cause("register every accepted client with epoll.add, and serve it from epoll_wait's events")));
    }
    let level: Vec<String> = clients
        .iter()
        .filter(|(_, e)| e.events & procfs::EPOLLET == 0)
        .map(|(epfd, e)| {
            format!(
                "epoll fd {epfd}: client fd {} events {:#x}",
                e.target_fd, e.events
            )
        })
        .collect();
    if !level.is_empty() {
        return Ok(Err(StepOutcome::fail(format!(
            "{} of {} client registrations lack EPOLLET (bit 0x80000000 of `events:` in /proc/{pid}/fdinfo/<epoll fd>)",
            level.len(),
            clients.len()
        ))
        .cause("add EpollFlags::EPOLLET to the flags of every client, in epoll.add and in every epoll.modify (a modify without it turns the socket back to level-triggered)")
        .evidence(level.into_iter().take(10))));
    }
    Ok(Ok(clients.len()))
}

/// Inodes of the process's sockets in LISTEN state (/proc/PID/net/tcp{,6}).
fn listening_inodes(pid: Pid) -> HashSet<u64> {
    let mut found = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{}/net/{table}", pid.as_raw());
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if words.get(3) == Some(&"0A") {
                if let Some(inode) = words.get(9).and_then(|w| w.parse().ok()) {
                    found.insert(inode);
                }
            }
        }
    }
    found
}
