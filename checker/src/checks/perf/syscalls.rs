//! System calls per request, counted with ptrace (the `strace -c` of the
//! perf step): `connections` connections, opened and warmed up first, then
//! `rounds` rounds of one 64-byte frame written on each and every echo read
//! back, while a tracer thread stops the server at each system call's exit
//! and tallies its number and result. The server is traced only for those
//! rounds, then detached: it runs on untouched.
//!
//! Tracing makes every system call slow, so it measures how many calls a
//! request costs, never how long. The server is the checker's own child
//! (same user): ptrace needs no privilege beyond that, unless the machine
//! forbids it (a container's seccomp profile, `kernel.yama.ptrace_scope` 3);
//! that is the checker's failure (exit 2), said as such.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Event, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use stress::frame::encode;

/// How long one echo may take while the server is traced.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the tracer may take to attach, or to let go once told to.
const TRACER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long all the traced rounds together may take.
const ROUNDS_TIMEOUT: Duration = Duration::from_secs(30);

/// One system call's tally.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub calls: u64,
    /// Calls that failed with EAGAIN (EWOULDBLOCK).
    pub eagain: u64,
}

/// What the traced rounds cost.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Requests echoed while traced.
    pub requests: u64,
    /// System calls completed while traced, by name.
    pub by_name: BTreeMap<String, Tally>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.by_name.values().map(|t| t.calls).sum()
    }

    pub fn per_request(&self) -> f64 {
        self.total() as f64 / self.requests.max(1) as f64
    }

    /// Calls per request of the named system calls.
    pub fn per_request_of(&self, names: &[&str]) -> f64 {
        let calls: u64 = names
            .iter()
            .filter_map(|n| self.by_name.get(*n))
            .map(|t| t.calls)
            .sum();
        calls as f64 / self.requests.max(1) as f64
    }

    /// Reads (of any flavour) per request that failed with EAGAIN.
    pub fn failed_reads_per_request(&self) -> f64 {
        let failed: u64 = READS
            .iter()
            .filter_map(|n| self.by_name.get(*n))
            .map(|t| t.eagain)
            .sum();
        failed as f64 / self.requests.max(1) as f64
    }

    /// "recvfrom 2.00 (1.00 EAGAIN), sendto 1.00, epoll_wait 0.06", the
    /// busiest first, calls under 0.01 per request left out.
    pub fn breakdown(&self) -> String {
        let per = |n: u64| n as f64 / self.requests.max(1) as f64;
        let mut rows: Vec<(&String, &Tally)> = self.by_name.iter().collect();
        rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        let shown: Vec<String> = rows
            .iter()
            .filter(|(_, t)| per(t.calls) >= 0.01)
            .map(|(name, t)| {
                if per(t.eagain) >= 0.01 {
                    format!(
                        "{name} {:.2} ({:.2} failing with EAGAIN)",
                        per(t.calls),
                        per(t.eagain)
                    )
                } else {
                    format!("{name} {:.2}", per(t.calls))
                }
            })
            .collect();
        if shown.is_empty() {
            "none".into()
        } else {
            shown.join(", ")
        }
    }
}

/// The system calls that read from a socket.
pub const READS: &[&str] = &["read", "readv", "recvfrom", "recvmsg", "recvmmsg"];
/// The system calls that write to a socket.
pub const WRITES: &[&str] = &["write", "writev", "sendto", "sendmsg", "sendmmsg"];

/// How the traced rounds ended, when the server is at fault.
pub enum Traced {
    Counted(Counts),
    /// The server stopped echoing or died: what happened, in words.
    Broken(String),
}

/// Drives `rounds` × `connections` requests at `addr` while the server
/// `pid` is traced. `Err` is the checker's own failure (ptrace refused).
pub fn count(pid: Pid, addr: SocketAddr, connections: usize, rounds: usize) -> Result<Traced> {
    let connections = connections.max(1);
    let frame = encode(&[0x5a; 64]);
    let mut streams = Vec::with_capacity(connections);
    for i in 0..connections {
        match open(addr) {
            Ok(stream) => streams.push(stream),
            Err(err) => {
                return Ok(Traced::Broken(format!(
                    "connection {} of {connections} failed before tracing: {err}",
                    i + 1
                )))
            }
        }
    }
    // One untraced round first: every connection accepted and registered.
    if let Err(problem) = round(&mut streams, &frame) {
        return Ok(Traced::Broken(format!(
            "the warm-up round (before tracing) failed: {problem}"
        )));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (done_tx, done_rx) = mpsc::channel::<Result<TraceEnd>>();
    let tracer_stop = stop.clone();
    std::thread::spawn(move || {
        let result = trace(pid, &tracer_stop, &ready_tx);
        let _ = done_tx.send(result);
    });
    match ready_rx.recv_timeout(TRACER_TIMEOUT) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            // The tracer gave up before attaching to anything.
            let _ = done_rx.recv_timeout(TRACER_TIMEOUT);
            return Err(err);
        }
        Err(_) => {
            return Err(finish(pid, &stop, &done_rx, None)
                .err()
                .unwrap_or_else(|| anyhow!("the system-call tracer did not attach in time")))
        }
    }

    let mut problem = None;
    let started = Instant::now();
    for r in 0..rounds {
        if let Err(p) = round(&mut streams, &frame) {
            problem = Some(format!("round {} of {rounds}, while traced: {p}", r + 1));
            break;
        }
        if started.elapsed() > ROUNDS_TIMEOUT {
            problem = Some(format!(
                "{} of {rounds} rounds done after {} s while traced: far too slow",
                r + 1,
                ROUNDS_TIMEOUT.as_secs()
            ));
            break;
        }
    }
    let requests = (connections * rounds) as u64;
    let end = finish(
        pid,
        &stop,
        &done_rx,
        streams.first_mut().map(|s| (s, &frame[..])),
    )?;
    if let Some(death) = end.death {
        return Ok(Traced::Broken(death));
    }
    if let Some(problem) = problem {
        return Ok(Traced::Broken(problem));
    }
    Ok(Traced::Counted(Counts {
        requests,
        by_name: end.by_name,
    }))
}

fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
    stream.set_write_timeout(Some(ECHO_TIMEOUT))?;
    Ok(stream)
}

/// One frame written on every connection, then every echo read back.
fn round(streams: &mut [TcpStream], frame: &[u8]) -> std::result::Result<(), String> {
    for (i, stream) in streams.iter_mut().enumerate() {
        stream
            .write_all(frame)
            .map_err(|e| format!("connection {}: write failed: {e}", i + 1))?;
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        read_echo(stream, frame).map_err(|e| format!("connection {}: {e}", i + 1))?;
    }
    Ok(())
}

fn read_echo(stream: &mut TcpStream, frame: &[u8]) -> std::result::Result<(), String> {
    let mut echo = vec![0u8; frame.len()];
    let mut got = 0;
    while got < echo.len() {
        match stream.read(&mut echo[got..]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "no echo within {} s ({got} of {} bytes)",
                    ECHO_TIMEOUT.as_secs(),
                    frame.len()
                ))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    if echo != frame {
        return Err("the echo differs from the frame sent".into());
    }
    Ok(())
}

/// Tells the tracer to let go, wakes the server with one more frame (so it
/// makes a system call the tracer sees), and waits for the tracer; if it
/// does not end in time the server is killed, which always ends it.
fn finish(
    pid: Pid,
    stop: &AtomicBool,
    done: &mpsc::Receiver<Result<TraceEnd>>,
    wake: Option<(&mut TcpStream, &[u8])>,
) -> Result<TraceEnd> {
    stop.store(true, Ordering::SeqCst);
    if let Some((stream, frame)) = wake {
        if stream.write_all(frame).is_ok() {
            let _ = read_echo(stream, frame);
        }
    }
    match done.recv_timeout(TRACER_TIMEOUT) {
        Ok(end) => end,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = done.recv_timeout(TRACER_TIMEOUT);
            Ok(TraceEnd {
                by_name: BTreeMap::new(),
                death: Some(format!(
                    "the server made no system call the tracer could stop it at for {} s (a busy loop?); the checker killed it",
                    TRACER_TIMEOUT.as_secs()
                )),
            })
        }
    }
}

/// What the tracer thread saw.
struct TraceEnd {
    by_name: BTreeMap<String, Tally>,
    /// Set when the server exited while traced.
    death: Option<String>,
}

/// A traced thread: whether it stopped at a system call's entry last
/// (used where the registers cannot tell entry from exit).
#[derive(Default)]
struct Thread {
    in_syscall: bool,
}

/// The tracer thread: attaches to every thread of `pid`, sends `ready`
/// once all are stopped and resumed under system-call tracing, tallies
/// every system-call exit until `stop`, then detaches from every thread.
fn trace(pid: Pid, stop: &AtomicBool, ready: &mpsc::Sender<Result<()>>) -> Result<TraceEnd> {
    let group = nix::unistd::getpgid(Some(pid)).context("reading the server's process group")?;
    let tids = thread_ids(pid);
    let options = Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_EXITKILL
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXIT;
    let mut threads: HashMap<Pid, Thread> = HashMap::new();
    for &tid in &tids {
        match ptrace::seize(tid, options) {
            Ok(()) => {
                threads.insert(tid, Thread::default());
            }
            // A thread that ended meanwhile.
            Err(Errno::ESRCH) => {}
            Err(err) => {
                let err = anyhow!(
                    "cannot count the server's system calls: ptrace(PTRACE_SEIZE) of pid {tid} failed: {err}. The perf step traces the server it started (its own child) for a moment, as strace does; this machine forbids it (a container's seccomp profile, or kernel.yama.ptrace_scope = 3). Run the checker where ptrace is allowed (docker: --cap-add SYS_PTRACE)"
                );
                detach_all(&mut threads, group);
                let _ = ready.send(Err(anyhow!("{err}")));
                return Err(err);
            }
        }
    }
    if threads.is_empty() {
        let _ = ready.send(Err(anyhow!(
            "the server {pid} has no threads left to trace"
        )));
        return Err(anyhow!("the server {pid} has no threads left to trace"));
    }
    for &tid in threads.keys() {
        let _ = ptrace::interrupt(tid);
    }
    // Every thread reports its interrupt stop once; resume each under
    // system-call tracing, and only then let the rounds begin.
    let mut pending: Vec<Pid> = threads.keys().copied().collect();
    let mut by_name: BTreeMap<String, Tally> = BTreeMap::new();
    let mut death = None;
    let mut readied = false;
    let mut stopping = false;
    let deadline = Instant::now() + TRACER_TIMEOUT;
    while !threads.is_empty() {
        if !readied && pending.is_empty() {
            readied = true;
            let _ = ready.send(Ok(()));
        }
        if !readied && Instant::now() >= deadline {
            break;
        }
        let status = match waitpid(Pid::from_raw(-group.as_raw()), Some(WaitPidFlag::__WALL)) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            // Nothing left to wait for.
            Err(_) => break,
        };
        if !stopping && stop.load(Ordering::SeqCst) {
            stopping = true;
            for &tid in threads.keys() {
                if Some(tid) != status.pid() {
                    let _ = ptrace::interrupt(tid);
                }
            }
        }
        let (tid, resume_with) = match status {
            WaitStatus::PtraceSyscall(tid) => {
                let thread = threads.entry(tid).or_default();
                if let Some((nr, ret)) = syscall_exit(tid, thread) {
                    let tally = by_name.entry(syscall_name(nr)).or_default();
                    tally.calls += 1;
                    if ret == -(Errno::EAGAIN as i64) {
                        tally.eagain += 1;
                    }
                }
                (tid, None)
            }
            WaitStatus::PtraceEvent(tid, _, event) if event == Event::PTRACE_EVENT_EXIT as i32 => {
                if tid == pid {
                    death = Some("the server exited while its system calls were counted".into());
                }
                let _ = ptrace::detach(tid, None);
                threads.remove(&tid);
                continue;
            }
            WaitStatus::PtraceEvent(tid, _, _) => {
                // An interrupt (or group) stop, or a new thread's clone
                // event: the thread goes on (or starts) under tracing.
                threads.entry(tid).or_default();
                pending.retain(|&p| p != tid);
                (tid, None)
            }
            WaitStatus::Stopped(tid, signal) => {
                threads.entry(tid).or_default();
                // A signal for the server: pass it on.
                (tid, Some(signal))
            }
            WaitStatus::Exited(tid, _) | WaitStatus::Signaled(tid, _, _) => {
                if tid == pid {
                    death = Some(format!(
                        "the server ended while its system calls were counted ({status:?})"
                    ));
                }
                threads.remove(&tid);
                pending.retain(|&p| p != tid);
                continue;
            }
            _ => continue,
        };
        if stopping {
            let _ = ptrace::detach(tid, resume_with);
            threads.remove(&tid);
        } else if ptrace::syscall(tid, resume_with).is_err() {
            threads.remove(&tid);
        }
    }
    if !readied {
        detach_all(&mut threads, group);
        let err =
            anyhow!("the system-call tracer could not stop every thread of the server in time");
        let _ = ready.send(Err(anyhow!("{err}")));
        return Err(err);
    }
    Ok(TraceEnd { by_name, death })
}

/// Lets go of every traced thread (each must be stopped to be detached:
/// interrupt, then detach at the stop; bounded).
fn detach_all(threads: &mut HashMap<Pid, Thread>, group: Pid) {
    for &tid in threads.keys() {
        let _ = ptrace::interrupt(tid);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !threads.is_empty() && Instant::now() < deadline {
        match waitpid(
            Pid::from_raw(-group.as_raw()),
            Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            Ok(status) => {
                if let Some(tid) = status.pid() {
                    let _ = ptrace::detach(tid, None);
                    threads.remove(&tid);
                }
            }
            Err(_) => break,
        }
    }
}

/// The threads of `pid` (/proc/PID/task).
fn thread_ids(pid: Pid) -> Vec<Pid> {
    let mut tids: Vec<Pid> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default();
    if tids.is_empty() {
        tids.push(pid);
    }
    tids
}

/// At a system-call stop: `Some((number, return value))` when it is the
/// call's exit, `None` at its entry.
#[cfg(target_arch = "x86_64")]
fn syscall_exit(tid: Pid, thread: &mut Thread) -> Option<(i64, i64)> {
    let regs = ptrace::getregs(tid).ok()?;
    // At the entry the kernel has set rax to -ENOSYS; at the exit it holds
    // the result. orig_rax holds the call's number at both.
    let entry = regs.rax as i64 == -(Errno::ENOSYS as i64);
    thread.in_syscall = entry;
    (!entry).then_some((regs.orig_rax as i64, regs.rax as i64))
}

#[cfg(target_arch = "aarch64")]
fn syscall_exit(tid: Pid, thread: &mut Thread) -> Option<(i64, i64)> {
    // Entry and exit stops alternate; x8 holds the number, x0 the result.
    let regs = ptrace::getregs(tid).ok()?;
    let exit = thread.in_syscall;
    thread.in_syscall = !exit;
    exit.then_some((regs.regs[8] as i64, regs.regs[0] as i64))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn syscall_exit(_tid: Pid, _thread: &mut Thread) -> Option<(i64, i64)> {
    compile_error!("system-call counting knows the registers of x86_64 and aarch64 only");
}

/// The names of the system calls an echo server makes.
fn syscall_name(nr: i64) -> String {
    #[cfg(target_arch = "x86_64")]
    const NAMES: &[(i64, &str)] = &[
        (0, "read"),
        (1, "write"),
        (3, "close"),
        (7, "poll"),
        (9, "mmap"),
        (11, "munmap"),
        (12, "brk"),
        (16, "ioctl"),
        (19, "readv"),
        (20, "writev"),
        (23, "select"),
        (25, "mremap"),
        (28, "madvise"),
        (35, "nanosleep"),
        (43, "accept"),
        (44, "sendto"),
        (45, "recvfrom"),
        (46, "sendmsg"),
        (47, "recvmsg"),
        (48, "shutdown"),
        (72, "fcntl"),
        (202, "futex"),
        (228, "clock_gettime"),
        (230, "clock_nanosleep"),
        (232, "epoll_wait"),
        (233, "epoll_ctl"),
        (270, "pselect6"),
        (271, "ppoll"),
        (281, "epoll_pwait"),
        (288, "accept4"),
        (299, "recvmmsg"),
        (307, "sendmmsg"),
        (441, "epoll_pwait2"),
    ];
    #[cfg(target_arch = "aarch64")]
    const NAMES: &[(i64, &str)] = &[
        (21, "epoll_ctl"),
        (22, "epoll_pwait"),
        (25, "fcntl"),
        (29, "ioctl"),
        (57, "close"),
        (63, "read"),
        (64, "write"),
        (65, "readv"),
        (66, "writev"),
        (72, "pselect6"),
        (73, "ppoll"),
        (98, "futex"),
        (101, "nanosleep"),
        (113, "clock_gettime"),
        (115, "clock_nanosleep"),
        (202, "accept"),
        (206, "sendto"),
        (207, "recvfrom"),
        (210, "shutdown"),
        (211, "sendmsg"),
        (212, "recvmsg"),
        (214, "brk"),
        (215, "munmap"),
        (216, "mremap"),
        (222, "mmap"),
        (233, "madvise"),
        (242, "accept4"),
        (243, "recvmmsg"),
        (269, "sendmmsg"),
        (441, "epoll_pwait2"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| format!("syscall {nr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, u64, u64)], requests: u64) -> Counts {
        Counts {
            requests,
            by_name: rows
                .iter()
                .map(|(n, calls, eagain)| {
                    (
                        n.to_string(),
                        Tally {
                            calls: *calls,
                            eagain: *eagain,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_read_until_eagain_shows_as_one_failing_read_per_request() {
        let c = counts(
            &[
                ("recvfrom", 200, 100),
                ("sendto", 100, 0),
                ("epoll_wait", 5, 0),
            ],
            100,
        );
        assert!((c.per_request() - 3.05).abs() < 1e-9);
        assert!((c.failed_reads_per_request() - 1.0).abs() < 1e-9);
        assert_eq!(
            c.breakdown(),
            "recvfrom 2.00 (1.00 failing with EAGAIN), sendto 1.00, epoll_wait 0.05"
        );
    }

    #[test]
    fn the_tracer_names_the_calls_an_echo_server_makes() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(syscall_name(45), "recvfrom");
        assert_eq!(syscall_name(100_000), "syscall 100000");
    }
}
