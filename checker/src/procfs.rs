//! Reading a live server through /proc: the facts the process probes judge
//! by (threads, child processes, open fds and their flags, epoll
//! registrations, RSS, CPU time, the syscall it is blocked in). Real kernel
//! readings, never the student's own words.
//!
//! A library of readings: each probe uses the few it needs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::unistd::Pid;

fn proc_path(pid: Pid, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/{rest}", pid.as_raw()))
}

fn read(pid: Pid, rest: &str) -> Result<String> {
    let path = proc_path(pid, rest);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A `Key:   value` field of /proc/PID/status.
fn status_field(pid: Pid, key: &str) -> Result<String> {
    let status = read(pid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Whether the process still runs (not exited, not a zombie awaiting reaping).
pub fn is_alive(pid: Pid) -> bool {
    read(pid, "stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.get(stat.rfind(')')? + 1..)?.to_string();
            rest.split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// The process state letter of /proc/PID/stat (`R`, `S`, `T` when stopped…).
pub fn state(pid: Pid) -> Option<char> {
    let stat = read(pid, "stat").ok()?;
    stat.get(stat.rfind(')')? + 1..)?
        .trim_start()
        .chars()
        .next()
}

/// Waits until the process is stopped (SIGSTOP), checking every `poll`;
/// false when `limit` passes first.
pub fn wait_until_stopped(pid: Pid, limit: Duration, poll: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if matches!(state(pid), Some('T') | Some('t')) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// Number of threads (`Threads:`).
pub fn threads(pid: Pid) -> Result<usize> {
    Ok(status_field(pid, "Threads")?.parse()?)
}

/// Resident set size in KiB (`VmRSS:`).
pub fn rss_kib(pid: Pid) -> Result<u64> {
    let value = status_field(pid, "VmRSS")?;
    Ok(value.trim_end_matches("kB").trim().parse()?)
}

/// Every process below `pid` (children, grandchildren, ...).
pub fn descendants(pid: Pid) -> Vec<Pid> {
    crate::server::descendants_of(pid)
}

/// The process's user + system CPU time (all its threads), from /proc/PID/stat.
pub fn cpu_time(pid: Pid) -> Result<Duration> {
    let stat = read(pid, "stat")?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    // After the command name: state is field 3; utime, stime are fields 14, 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// Per-thread CPU time: `(thread id, user+system time)`.
pub fn thread_cpu_times(pid: Pid) -> Result<Vec<(i32, Duration)>> {
    let mut found = Vec::new();
    let dir = proc_path(pid, "task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(time) = cpu_time_of_task(pid, tid) {
            found.push((tid, time));
        }
    }
    Ok(found)
}

fn cpu_time_of_task(pid: Pid, tid: i32) -> Result<Duration> {
    let stat = read(pid, &format!("task/{tid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// One open file descriptor: its number and what it points at
/// (`socket:[123]`, `anon_inode:[eventpoll]`, a path...).
#[derive(Debug, Clone)]
pub struct OpenFd {
    pub fd: i32,
    pub target: String,
}

pub fn open_fds(pid: Pid) -> Result<Vec<OpenFd>> {
    let dir = proc_path(pid, "fd");
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        fds.push(OpenFd { fd, target });
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

/// The `flags:` of /proc/PID/fdinfo/FD (octal open flags; O_NONBLOCK is 0o4000).
pub fn fd_flags(pid: Pid, fd: i32) -> Result<u32> {
    let info = read(pid, &format!("fdinfo/{fd}"))?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .context("no flags: line")?;
    Ok(u32::from_str_radix(flags.trim(), 8)?)
}

pub const O_NONBLOCK: u32 = 0o4000;

/// One registration in an epoll instance (`tfd: 5 events: 80000019 ...`).
#[derive(Debug, Clone, Copy)]
pub struct EpollEntry {
    pub target_fd: i32,
    pub events: u32,
}

pub const EPOLLIN: u32 = 0x001;
pub const EPOLLOUT: u32 = 0x004;
pub const EPOLLET: u32 = 1 << 31;

/// The registrations of the epoll instance at `epoll_fd`.
pub fn epoll_entries(pid: Pid, epoll_fd: i32) -> Result<Vec<EpollEntry>> {
    let info = read(pid, &format!("fdinfo/{epoll_fd}"))?;
    let mut entries = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value_after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        let target_fd = value_after("tfd:").and_then(|v| v.parse().ok());
        let events = value_after("events:").and_then(|v| u32::from_str_radix(v, 16).ok());
        if let (Some(target_fd), Some(events)) = (target_fd, events) {
            entries.push(EpollEntry { target_fd, events });
        }
    }
    Ok(entries)
}

/// The fds that are epoll instances.
pub fn epoll_fds(pid: Pid) -> Result<Vec<i32>> {
    Ok(open_fds(pid)?
        .into_iter()
        .filter(|f| f.target == "anon_inode:[eventpoll]")
        .map(|f| f.fd)
        .collect())
}

/// One row of /proc/PID/net/tcp or tcp6: a TCP socket of the process's
/// network namespace (the table lists every process's sockets, the
/// checker's own clients too; an `inode` of 0 is a connection still in an
/// accept queue, not yet a file).
#[derive(Debug, Clone, Copy)]
pub struct TcpSocket {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The kernel's TCP state number (`st`): 0x01 established, 0x0A listen.
    pub state: u8,
    pub inode: u64,
}

pub const TCP_LISTEN: u8 = 0x0A;

/// Every row of /proc/PID/net/tcp and tcp6 (missing tables are skipped).
pub fn tcp_sockets(pid: Pid) -> Vec<TcpSocket> {
    let mut found = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = read(pid, table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) = (
                words.get(1).and_then(|w| parse_tcp_address(w)),
                words.get(2).and_then(|w| parse_tcp_address(w)),
                words.get(3).and_then(|w| u8::from_str_radix(w, 16).ok()),
                words.get(9).and_then(|w| w.parse::<u64>().ok()),
            ) else {
                continue;
            };
            found.push(TcpSocket {
                local,
                remote,
                state,
                inode,
            });
        }
    }
    found
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address as a native-endian number, and
/// the port in host order. IPv4-mapped IPv6 addresses read as IPv4.
fn parse_tcp_address(word: &str) -> Option<std::net::SocketAddr> {
    let (address, port) = word.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..address.len()).step_by(8) {
        let chunk = address.get(i..i + 8)?;
        bytes.extend(u32::from_str_radix(chunk, 16).ok()?.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    // A dual-stack socket's IPv4 peers show as IPv4-mapped IPv6.
    Some(std::net::SocketAddr::new(ip.to_canonical(), port))
}

/// The process's fd for its end of the TCP connection whose far end is
/// `peer` (a checker client's local address), once it has accepted it;
/// `None` while the connection waits in the accept queue, or if it never
/// reached this process.
pub fn fd_of_connection_from(pid: Pid, peer: std::net::SocketAddr) -> Result<Option<i32>> {
    let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let inode = tcp_sockets(pid)
        .into_iter()
        .find(|s| s.remote == peer && s.inode != 0)
        .map(|s| s.inode);
    let Some(inode) = inode else {
        return Ok(None);
    };
    let target = format!("socket:[{inode}]");
    Ok(open_fds(pid)?
        .into_iter()
        .find(|f| f.target == target)
        .map(|f| f.fd))
}

/// The syscall number each thread is blocked in (/proc/PID/task/TID/syscall),
/// `None` for a thread that is running.
pub fn blocked_syscalls(pid: Pid) -> Result<Vec<Option<i64>>> {
    let dir = proc_path(pid, "task");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let text = read(pid, &format!("task/{tid}/syscall")).unwrap_or_default();
        let first = text.split_whitespace().next().unwrap_or("running");
        found.push(first.parse::<i64>().ok());
    }
    Ok(found)
}

/// Syscall numbers on x86_64 and aarch64 for the waits the probes name.
pub fn syscall_name(number: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let table: &[(i64, &str)] = &[
        (7, "poll"),
        (23, "select"),
        (232, "epoll_wait"),
        (281, "epoll_pwait"),
        (441, "epoll_pwait2"),
        (271, "ppoll"),
        (270, "pselect6"),
        (43, "accept"),
        (288, "accept4"),
        (0, "read"),
        (45, "recvfrom"),
        (202, "futex"),
        (35, "nanosleep"),
        (230, "clock_nanosleep"),
    ];
    #[cfg(target_arch = "aarch64")]
    let table: &[(i64, &str)] = &[
        (73, "ppoll"),
        (72, "pselect6"),
        (22, "epoll_pwait"),
        (441, "epoll_pwait2"),
        (202, "accept"),
        (242, "accept4"),
        (63, "read"),
        (207, "recvfrom"),
        (98, "futex"),
        (101, "nanosleep"),
        (115, "clock_nanosleep"),
    ];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let table: &[(i64, &str)] = &[];
    table
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_this_test_process_are_sane() {
        let me = Pid::this();
        assert!(threads(me).unwrap() >= 1);
        assert!(rss_kib(me).unwrap() > 0);
        let fds = open_fds(me).unwrap();
        assert!(fds.iter().any(|f| f.fd == 0 || f.fd == 1 || f.fd == 2));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        use std::os::fd::AsRawFd;
        assert_ne!(fd_flags(me, listener.as_raw_fd()).unwrap() & O_NONBLOCK, 0);
        cpu_time(me).unwrap();
    }

    #[test]
    fn an_accepted_connection_is_found_by_its_peer_address() {
        let me = Pid::this();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        use std::os::fd::AsRawFd;
        let fd = fd_of_connection_from(me, client.local_addr().unwrap()).unwrap();
        assert_eq!(fd, Some(accepted.as_raw_fd()));
        let listening = tcp_sockets(me)
            .into_iter()
            .find(|s| s.local == listener.local_addr().unwrap() && s.state == TCP_LISTEN);
        assert!(listening.is_some());
    }
}
