//! The student's server as a child process: started in its own process
//! group, its output captured (capped), its listening address read, and
//! killed and reaped on every path — drop, failure, timeout and Ctrl-C.
//!
//! This is the one module of the checker allowed `unsafe`: `pre_exec` runs
//! in the forked child before `exec`, to set the parent-death signal and the
//! open-file limit the lesson asks for.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use regex::Regex;

/// How many lines of server output are kept (the newest win).
const KEPT_LINES: usize = 2_000;
/// Longer lines are cut, so a server printing without newlines stays bounded.
const MAX_LINE_BYTES: usize = 1_000;
/// How long a server may take to print its `listening on` line or accept.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server that printed a panic gets to exit before it is
/// counted alive (a panicking main thread unwinds, then the process ends).
const PANIC_EXIT_WAIT: Duration = Duration::from_millis(500);
/// How long a server gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(500);

/// A server whose resident memory passes this is stopped by the checker
/// (measured, not RLIMIT_AS, which breaks thread-heavy servers).
/// `CHECKER_RSS_LIMIT_MIB` overrides it (the checker's own tests use a
/// lower limit to see the watchdog work quickly).
const DEFAULT_RSS_LIMIT_KIB: u64 = 2 * 1024 * 1024;

fn rss_limit_kib() -> u64 {
    std::env::var("CHECKER_RSS_LIMIT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|mib| mib * 1024)
        .unwrap_or(DEFAULT_RSS_LIMIT_KIB)
}
/// How often the memory watchdog samples the server's RSS.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The environment variable every server process (and everything it
/// starts, whatever its process group or session) inherits: how the
/// checker finds escaped descendants to kill.
const MARKER_VAR: &str = "EPOLL_COURSE_CHECKER_SERVER";

/// Every server still alive (process group, marker), for the Ctrl-C handler.
static LIVE_GROUPS: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

/// Corks a client socket (TCP_CORK): what it writes is held until it is
/// uncorked or shut down, so a frame and the FIN behind it leave in one
/// segment and the server finds both queued in one wake-up.
pub fn cork(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: nix::libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the size given.
    let rc = unsafe {
        nix::libc::setsockopt(
            stream.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_CORK,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What went wrong inside the servers stopped since the last
/// [`take_incidents`]: the run reads it after each step, so a death or a
/// panic is the step's verdict whatever its clients happened to see.
static INCIDENTS: Mutex<Vec<Incident>> = Mutex::new(Vec::new());

/// A server that died before the checker stopped it, or printed a panic.
#[derive(Debug, Clone, Default)]
pub struct Incident {
    /// Its death notice (see [`Server::death_notice`]), when it was no
    /// longer running at the moment the checker came to stop it.
    pub death: Option<String>,
    /// The first panic it printed, as one line: `thread 'main' panicked at
    /// src/main.rs:40:5: not yet implemented`.
    pub panic: Option<String>,
    /// The newest lines of its output, quoted as evidence.
    pub output: Vec<String>,
}

/// The incidents of the servers stopped since the last call.
pub fn take_incidents() -> Vec<Incident> {
    std::mem::take(&mut *INCIDENTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Which of the server's streams a captured line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the checker learns where the server listens.
#[derive(Clone, Debug)]
pub enum ListenWait {
    /// Read the `listening on <ip>:<port>` line from stdout.
    ListeningLine,
    /// The checker chose this port (`--exec` with `{port}`): wait until it accepts.
    Port(u16),
}

/// Everything needed to start one server process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub argv: Vec<String>,
    pub wait: ListenWait,
    /// Soft RLIMIT_NOFILE for the server (the C10K lesson starts it at 1,024).
    pub nofile_soft: Option<u64>,
    /// Hard RLIMIT_NOFILE for the server, the soft limit lowered with it: a
    /// ceiling it cannot raise itself past (the `fd_exhaustion` step).
    pub nofile_hard: Option<u64>,
}

/// Why a server could not be started: the student's fault, with evidence.
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
    pub cause: String,
    pub output: Vec<String>,
}

/// How a [`Server::death_notice`] begins when the server exited by itself.
const EXITED: &str = "the server exited";
/// How it begins when the checker stopped the server (its memory watchdog).
const STOPPED: &str = "the checker stopped the server:";

/// Whether `line` is a death notice (it begins like one).
pub fn is_death_notice(line: &str) -> bool {
    [EXITED, STOPPED]
        .iter()
        .any(|start| line.starts_with(start))
}

/// Whether `text` tells of the server's death (it holds a death notice).
pub fn tells_of_death(text: &str) -> bool {
    [EXITED, STOPPED].iter().any(|start| text.contains(start))
}

/// A running server. Dropping it kills the whole process group.
pub struct Server {
    child: Child,
    pub pid: Pid,
    pub addr: SocketAddr,
    output: Arc<OutputLog>,
    readers: Vec<JoinHandle<()>>,
    stopped: bool,
    /// Whether the output of a server seen dead was read to its end.
    drained_after_death: bool,
    marker: String,
    watchdog: Arc<Watchdog>,
}

/// The memory watchdog's shared state: its verdict, and when to stop.
#[derive(Default)]
struct Watchdog {
    /// Set when the watchdog killed the server: the RSS it saw, in KiB.
    killed_at_rss_kib: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl Server {
    /// Starts the server and waits (bounded) until it listens.
    /// `Ok(Err(..))` is a server that did not come up; `Err` is the tool's own failure.
    pub fn start(launch: &Launch) -> Result<std::result::Result<Server, StartFailure>> {
        let (program, args) = launch.argv.split_first().context("empty server command")?;
        let marker = new_marker();
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(MARKER_VAR, &marker)
            .process_group(0);
        let nofile_soft = launch.nofile_soft;
        let nofile_hard = launch.nofile_hard;
        // SAFETY: the closure runs in the child between fork and exec and only
        // makes async-signal-safe syscalls (prctl, getrlimit, setrlimit).
        unsafe {
            command.pre_exec(move || {
                // If the checker dies (even by SIGKILL), the server dies with it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if let Some(soft) = nofile_soft {
                    use nix::sys::resource::{getrlimit, setrlimit, Resource};
                    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
                }
                if let Some(ceiling) = nofile_hard {
                    use nix::sys::resource::{getrlimit, setrlimit, Resource};
                    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                    let hard = ceiling.min(hard);
                    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                return Ok(Err(StartFailure {
                    message: format!("could not start `{program}`: {err}"),
                    cause: "the server command does not exist or is not executable".into(),
                    output: Vec::new(),
                }))
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((pid.as_raw(), marker.clone()));
        let watchdog = Arc::new(Watchdog::default());
        spawn_memory_watchdog(pid, watchdog.clone());

        let output = Arc::new(OutputLog::default());
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(spawn_reader(stdout, Stream::Stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(spawn_reader(stderr, Stream::Stderr, output.clone()));
        }
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            output,
            readers,
            stopped: false,
            drained_after_death: false,
            marker,
            watchdog,
        };
        let found = match &launch.wait {
            ListenWait::ListeningLine => server.wait_for_listening_line(),
            ListenWait::Port(port) => server.wait_for_port(*port),
        };
        match found {
            Ok(addr) => {
                server.addr = addr;
                Ok(Ok(server))
            }
            Err((message, cause)) => {
                server.stop();
                let output = server.output_tail(30);
                Ok(Err(StartFailure {
                    message,
                    cause,
                    output,
                }))
            }
        }
    }

    fn wait_for_listening_line(&mut self) -> std::result::Result<SocketAddr, (String, String)> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if let Some(line) = self.output.listening_line() {
                let addr = parse_listening_line(&line)?;
                return match wait_until_accepting(addr, deadline) {
                    true => Ok(addr),
                    false => Err((
                        format!("the server printed `{line}` but nothing accepts connections at {addr}"),
                        "print the listening line after bind() and listen(), with the address from local_addr()".into(),
                    )),
                };
            }
            if let Some(status) = self.try_exit_status() {
                self.wait_for_readers(Duration::from_millis(300));
                if let Some(line) = self.output.listening_line() {
                    let _ = line; // printed, then died: report the death
                }
                return Err((
                    format!("the server exited ({}) before printing `listening on <ip>:<port>`", describe_status(status)),
                    "it should bind, print the line, then serve until it is stopped; read its output below".into(),
                ));
            }
            if Instant::now() >= deadline {
                return Err((
                    format!("no `listening on <ip>:<port>` line on stdout within {} s", LISTEN_TIMEOUT.as_secs()),
                    "print exactly `listening on 127.0.0.1:<port>` (the bound port, from local_addr()) as soon as the listener is bound; in C, fflush(stdout) after it".into(),
                ));
            }
            self.output.wait_for_change(Duration::from_millis(50));
        }
    }

    fn wait_for_port(&mut self, port: u16) -> std::result::Result<SocketAddr, (String, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(addr);
            }
            if let Some(status) = self.try_exit_status() {
                return Err((
                    format!(
                        "the server exited ({}) before accepting on port {port}",
                        describe_status(status)
                    ),
                    "check that the command serves on the port given by {port}".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err((
            format!(
                "nothing accepted connections on port {port} within {} s",
                LISTEN_TIMEOUT.as_secs()
            ),
            "check that the command listens on the port given by {port}".into(),
        ))
    }

    /// The exit status if the server has exited (reaping it), else `None`.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the server to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Server::death_notice`], waiting up to `limit` for a server
    /// that is on its way out: it closes its listener before it can be
    /// reaped, so a refused connect can come first.
    pub fn death_notice_within(&mut self, limit: Duration) -> Option<String> {
        self.wait_exit(limit)?;
        self.death_notice()
    }

    /// A verdict-ready description if the server is no longer running
    /// (it begins as [`is_death_notice`] expects).
    pub fn death_notice(&mut self) -> Option<String> {
        let status = self.try_exit_status()?;
        // Its last words (a panic message, an abort's line) may still be in
        // the pipes: let the readers reach the end before anyone quotes
        // them. Once: a child that inherited the pipes can hold them open.
        if !self.drained_after_death {
            self.drained_after_death = true;
            self.wait_for_readers(Duration::from_millis(300));
        }
        let rss = self
            .watchdog
            .killed_at_rss_kib
            .load(std::sync::atomic::Ordering::SeqCst);
        if rss > 0 {
            return Some(format!(
                "{STOPPED} its memory (RSS) reached {} MiB, past the {} MiB limit — memory that grows without bound",
                rss / 1024,
                rss_limit_kib() / 1024
            ));
        }
        Some(format!("{EXITED} ({})", describe_status(status)))
    }

    /// The newest `n` lines of captured output, prefixed for quoting.
    pub fn output_tail(&self, n: usize) -> Vec<String> {
        self.output.tail(n)
    }

    /// A mark in the captured output: what the server prints from now on
    /// comes after it (see [`Server::stderr_since`]).
    pub fn output_mark(&self) -> u64 {
        self.output
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_index
    }

    /// The stderr lines captured since `mark`, waiting up to `timeout` for
    /// the first one (the output is read on other threads).
    pub fn stderr_since(&self, mark: u64, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = {
                let inner = self.output.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner
                    .lines
                    .iter()
                    .filter(|(index, stream, _)| *index >= mark && *stream == Stream::Stderr)
                    .map(|(_, _, line)| line.clone())
                    .collect()
            };
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            self.output.wait_for_change(Duration::from_millis(50));
        }
    }

    /// The stdout lines captured since `mark`, each with its index (compare
    /// with a later [`Server::output_mark`]); returns at once.
    pub fn stdout_since(&self, mark: u64) -> Vec<(u64, String)> {
        let inner = self.output.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .lines
            .iter()
            .filter(|(index, stream, _)| *index >= mark && *stream == Stream::Stdout)
            .map(|(index, _, line)| (*index, line.clone()))
            .collect()
    }

    fn wait_for_readers(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server and everything it started: SIGTERM to its group, a
    /// short grace, then SIGKILL to the group and to every descendant that
    /// left the group (setsid). Idempotent; never blocks for long.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let descendants = descendants_of(self.pid);
        if self.first_panic().is_some() {
            // A panic in the main thread is followed by the exit: let it be
            // seen as the death it is, not as a server the checker stopped.
            self.wait_exit(PANIC_EXIT_WAIT);
        }
        let death = self.death_notice();
        if death.is_none() {
            let _ = killpg(self.pid, Signal::SIGTERM);
            if self.wait_exit(TERM_GRACE).is_none() {
                let _ = killpg(self.pid, Signal::SIGKILL);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        kill_and_reap(self.pid, &descendants);
        kill_marked(&self.marker);
        self.watchdog
            .done
            .store(true, std::sync::atomic::Ordering::SeqCst);
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(g, _)| *g != self.pid.as_raw());
        // The readers end once every process holding the pipes is gone.
        self.wait_for_readers(Duration::from_secs(1));
        let panic = self.first_panic();
        if death.is_some() || panic.is_some() {
            let incident = Incident {
                death,
                panic,
                output: self.output_tail(20),
            };
            INCIDENTS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(incident);
        }
    }

    /// Waits up to `limit` for the server to die or print a panic (it just
    /// dropped a connection for no reason the checker gave it).
    pub fn wait_for_trouble(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.first_panic().is_none()
            && self.try_exit_status().is_none()
            && Instant::now() < deadline
        {
            self.output.wait_for_change(Duration::from_millis(20));
        }
        if self.first_panic().is_some() {
            self.wait_exit(PANIC_EXIT_WAIT);
        }
    }

    /// The first panic the server printed on stderr, as one line with its
    /// message, if it printed one (any thread's, the process may live on).
    pub fn first_panic(&self) -> Option<String> {
        let inner = self.output.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.first_panic.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills the rest of a stopped server's process group and any descendant
/// that escaped it, then reaps those that were reparented to the checker.
fn kill_and_reap(group: Pid, descendants: &[Pid]) {
    let _ = killpg(group, Signal::SIGKILL);
    for &pid in descendants {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    for &pid in descendants {
        // Only succeeds for orphans reparented to us (we are a subreaper).
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

/// `checker run`: the server in the foreground, its output on the terminal.
/// It gets its own process group and the parent-death signal like every
/// server, so Ctrl-C (the checker's handler) or the checker's death stops it.
pub fn run_foreground(argv: &[String]) -> Result<ExitStatus> {
    let (program, args) = argv.split_first().context("empty server command")?;
    let marker = new_marker();
    let mut command = Command::new(program);
    command.args(args).env(MARKER_VAR, &marker).process_group(0);
    // SAFETY: only prctl runs between fork and exec (async-signal-safe).
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    LIVE_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pid.as_raw(), marker.clone()));
    let status = child.wait().context("waiting for the server")?;
    kill_marked(&marker);
    LIVE_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(g, _)| *g != pid.as_raw());
    Ok(status)
}

/// Called once at start-up: orphaned grandchildren of servers (daemonised,
/// setsid) become the checker's children, so they can be found and reaped.
pub fn become_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Kills every live server group; used by the Ctrl-C handler before exiting.
pub fn kill_all_live() {
    let groups = LIVE_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (group, marker) in groups {
        let pid = Pid::from_raw(group);
        let descendants = descendants_of(pid);
        kill_and_reap(pid, &descendants);
        kill_marked(&marker);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

fn new_marker() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Kills (and reaps, where they became ours) every process that carries
/// this server's marker in its environment: it finds a daemonised child
/// that left the process group and session, even after its parent died.
fn kill_marked(marker: &str) {
    let needle = format!("{MARKER_VAR}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let pid = Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// Samples the server's RSS; past the limit, kills its group and records why.
fn spawn_memory_watchdog(pid: Pid, watchdog: Arc<Watchdog>) {
    use std::sync::atomic::Ordering;
    let limit = rss_limit_kib();
    std::thread::spawn(move || {
        while !watchdog.done.load(Ordering::SeqCst) {
            let Ok(rss) = crate::procfs::rss_kib(pid) else {
                return;
            };
            if rss > limit {
                watchdog.killed_at_rss_kib.store(rss, Ordering::SeqCst);
                let _ = killpg(pid, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(RSS_SAMPLE_EVERY);
        }
    });
}

/// Every process below `root` in the process tree, read from /proc.
pub fn descendants_of(root: Pid) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = read_ppid(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            found.push(Pid::from_raw(child));
            queue.push(child);
        }
    }
    found
}

fn read_ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Parses `listening on <ip>:<port>` and checks the address is one the
/// checker may drive (loopback, or unspecified meaning all interfaces).
fn parse_listening_line(line: &str) -> std::result::Result<SocketAddr, (String, String)> {
    let addr: Option<SocketAddr> = listening_regex()
        .captures(line)
        .and_then(|c| format!("{}:{}", &c[1], &c[2]).parse().ok())
        .or_else(|| {
            let c = listening_regex().captures(line)?;
            let ip: IpAddr = c[1]
                .trim_matches(|ch| ch == '[' || ch == ']')
                .parse()
                .ok()?;
            Some(SocketAddr::new(ip, c[2].parse().ok()?))
        });
    let Some(mut addr) = addr else {
        return Err((
            format!("could not read an address from `{line}`"),
            "the line must be `listening on <ip>:<port>`, e.g. `listening on 127.0.0.1:40123`"
                .into(),
        ));
    };
    if addr.port() == 0 {
        return Err((
            format!("the server says `{line}`: port 0 is the port it asked for, not the one it got"),
            "print listener.local_addr() after binding: with --port 0 the kernel picks the real port".into(),
        ));
    }
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        ip if ip.is_loopback() => {}
        ip => {
            return Err((
                format!("the server listens on {ip}, which is not a loopback address"),
                "the checker only drives servers on loopback: bind to --host (default 127.0.0.1)"
                    .into(),
            ))
        }
    }
    Ok(addr)
}

fn listening_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)listening on\s+(\[[0-9a-f:.]+\]|[0-9.]+|[0-9a-z.-]+):(\d{1,5})\b")
            .expect("static regex")
    })
}

fn wait_until_accepting(addr: SocketAddr, deadline: Instant) -> bool {
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "unknown status".into(),
    }
}

/// Captured server output: the newest lines of both streams, bounded.
#[derive(Default)]
struct OutputLog {
    inner: Mutex<OutputInner>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputInner {
    lines: VecDeque<(u64, Stream, String)>,
    next_index: u64,
    listening_line: Option<String>,
    /// The first panic seen on stderr, kept however much output follows.
    first_panic: Option<String>,
    /// The panic's header line was just seen: its message comes next.
    panic_message_next: bool,
}

impl OutputLog {
    fn push(&self, stream: Stream, line: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if stream == Stream::Stdout
            && inner.listening_line.is_none()
            && listening_regex().is_match(&line)
        {
            inner.listening_line = Some(line.clone());
        }
        if stream == Stream::Stderr {
            inner.note_panic(&line);
        }
        let index = inner.next_index;
        inner.next_index += 1;
        inner.lines.push_back((index, stream, line));
        if inner.lines.len() > KEPT_LINES {
            inner.lines.pop_front();
        }
        self.changed.notify_all();
    }

    fn listening_line(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .listening_line
            .clone()
    }

    fn wait_for_change(&self, timeout: Duration) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout(inner, timeout);
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let skip = inner.lines.len().saturating_sub(n);
        let mut quoted: Vec<String> = Vec::new();
        if inner.next_index > inner.lines.len() as u64 || skip > 0 {
            let hidden = inner.next_index - (inner.lines.len() - skip) as u64;
            quoted.push(format!("[server] ... {hidden} earlier lines not shown"));
        }
        quoted.extend(
            inner
                .lines
                .iter()
                .skip(skip)
                .map(|(_, stream, line)| match stream {
                    Stream::Stdout => format!("[server] {line}"),
                    Stream::Stderr => format!("[server:stderr] {line}"),
                }),
        );
        quoted
    }
}

impl OutputInner {
    /// Keeps the first panic: its header line, then the message line after it.
    fn note_panic(&mut self, line: &str) {
        if self.panic_message_next {
            self.panic_message_next = false;
            if let Some(panic) = &mut self.first_panic {
                panic.push(' ');
                panic.push_str(line.trim());
            }
            return;
        }
        if self.first_panic.is_some() {
            return;
        }
        if let Some((header, message)) = parse_panic_header(line) {
            self.panic_message_next = message.is_none();
            self.first_panic = Some(match message {
                Some(message) => format!("{header} {message}"),
                None => header,
            });
        }
    }
}

/// A Rust panic's first line, as std prints it:
/// `thread 'main' (1234) panicked at src/main.rs:40:5:` (the message on the
/// next line; the thread id appears from Rust 1.88), or the older one-line
/// `thread 'main' panicked at 'message', src/main.rs:40:5`. Returns the
/// header without the thread id (`thread 'main' panicked at
/// src/main.rs:40:5:`) and the message when it is on the same line.
fn parse_panic_header(line: &str) -> Option<(String, Option<String>)> {
    static PANIC: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let panic = PANIC.get_or_init(|| {
        Regex::new(
            r"^thread '([^']*)'(?: \(\d+\))? panicked at (?:'(.*)', )?(\S+?:\d+:\d+):?\s*(.*)$",
        )
        .expect("panic pattern")
    });
    let found = panic.captures(line)?;
    let thread = &found[1];
    let location = &found[3];
    let header = format!("thread '{thread}' panicked at {location}:");
    let message = found
        .get(2)
        .or_else(|| found.get(4))
        .map(|m| m.as_str().trim().to_string())
        .filter(|m| !m.is_empty());
    Some((header, message))
}

/// Reads one stream into the log, line by line, never holding more than
/// one capped line in memory however the server floods.
fn spawn_reader(
    mut source: impl Read + Send + 'static,
    stream: Stream,
    log: Arc<OutputLog>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        let mut line: Vec<u8> = Vec::new();
        let mut truncated = false;
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &byte in &chunk[..n] {
                if byte == b'\n' {
                    log.push(stream, finish_line(&mut line, &mut truncated));
                } else if line.len() < MAX_LINE_BYTES {
                    line.push(byte);
                } else {
                    truncated = true;
                }
            }
        }
        if !line.is_empty() {
            log.push(stream, finish_line(&mut line, &mut truncated));
        }
    })
}

fn finish_line(line: &mut Vec<u8>, truncated: &mut bool) -> String {
    let mut text = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_string();
    if *truncated {
        text.push_str(" …(line cut)");
    }
    line.clear();
    *truncated = false;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_kept_as_one_line_whichever_format_std_printed() {
        let mut inner = OutputInner::default();
        inner.note_panic("serving 127.0.0.1:5000");
        inner.note_panic("thread '<unnamed>' (9280) panicked at src/main.rs:41:9:");
        inner.note_panic("not yet implemented");
        inner.note_panic("thread 'main' (9279) panicked at src/main.rs:7:1:");
        assert_eq!(
            inner.first_panic.as_deref(),
            Some("thread '<unnamed>' panicked at src/main.rs:41:9: not yet implemented")
        );
        assert_eq!(
            parse_panic_header("thread 'main' panicked at 'boom', src/main.rs:3:5"),
            Some((
                "thread 'main' panicked at src/main.rs:3:5:".to_string(),
                Some("boom".to_string())
            ))
        );
        assert_eq!(parse_panic_header("the thread panicked at noon"), None);
    }

    #[test]
    fn listening_line_parses_ipv4_ipv6_and_rejects_port_zero() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:4000").unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            parse_listening_line("listening on [::1]:4000").unwrap(),
            "[::1]:4000".parse().unwrap()
        );
        assert_eq!(
            parse_listening_line("listening on 0.0.0.0:4000").unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert!(parse_listening_line("listening on 127.0.0.1:0").is_err());
        assert!(parse_listening_line("listening on 10.1.2.3:4000").is_err());
    }
}
