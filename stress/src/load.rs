//! The load generator behind `loadtest`: thousands of connections driven by
//! one thread's epoll loop, every echo verified, latencies in an HDR
//! histogram.
//!
//! One request is one frame (4-byte big-endian length, then
//! [`LoadConfig::payload_size`] bytes) and its echo. Each connection has at
//! most one request outstanding:
//! - **closed loop** (the default): a connection sends its next request as
//!   soon as the echo of the last one is verified, until the run's request
//!   count is used up or its duration is over. Latency is measured from the
//!   send, so it is about connections ÷ throughput (Little's law).
//! - **fixed rate** ([`LoadConfig::rate`]): requests are due at fixed times
//!   (`start + i / rate`) and go out on whichever connection is idle. A
//!   request's latency is measured from the time it was *due*, not from when
//!   a connection was free to send it, so a server that stalls is charged
//!   for every request it held up (coordinated omission corrected).
//!
//! The run has two phases. The *ramp* opens every connection and proves it
//! with one warm-up frame (verified, but not counted as a request: a connect
//! completes in the kernel whether or not the server ever accepts), keeping
//! at most [`LoadConfig::connect_batch`] connections unproven at once and
//! retrying refused ones with backoff. So the ramp goes at the pace the
//! server accepts, instead of overflowing its accept queue. A connection the
//! server closes before its first echo is reopened the same way; one that
//! connects but gets no echo within 10 s has failed. The *load* starts once
//! every connection is proven or has failed, so connections that never got
//! an echo are reported through the connection success rate instead of
//! being hidden by the others' throughput.
//!
//! Everything is bounded by [`LoadConfig::timeout`]: requests still
//! unanswered then are errors. Traffic goes only to a loopback address.
//! The generator measures its own CPU time over the load phase
//! (`getrusage`), so it can show it was not the bottleneck.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrStorage,
};
use nix::sys::time::{TimeSpec, TimeValLike};
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::frame::HEADER_LEN;
use crate::report::hex_excerpt;

/// Connects in flight at once during the ramp (and for reconnects).
pub const DEFAULT_CONNECT_BATCH: usize = 500;

/// Connect attempts per connection before it counts as failed: refusals,
/// connects that time out, and closes before the first echo all use one.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 8;

/// Payload bytes per request unless configured otherwise.
pub const DEFAULT_PAYLOAD_SIZE: usize = 64;

/// Largest payload a run may use (the whole frame is kept per connection).
pub const MAX_PAYLOAD_SIZE: usize = 16 * 1024 * 1024;

/// Error details kept in a [`LoadReport`]; the rest are only counted.
pub const MAX_ERROR_DETAILS: usize = 10;

/// First wait before reconnecting; doubles per attempt up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A connect still in progress after this long is abandoned (and retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose first (warm-up) echo has not come back this long
/// after it connected has failed for good: the server is not serving it
/// (an accept queue it never drains, a descriptor limit).
const FIRST_ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the progress callback is called, and the longest the loop
/// sleeps without looking at the clock.
const TICK: Duration = Duration::from_millis(100);

/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// Bytes asked for per read of echoes.
const READ_BUFFER_LEN: usize = 64 * 1024;

/// File descriptors kept beyond one per connection (epoll, timer, stdio,
/// whatever the caller has open).
const SPARE_FDS: u64 = 64;

/// Source addresses (127.0.0.1, .2, ...) used once plain connects run out
/// of ephemeral ports.
const FALLBACK_SOURCE_ADDRESSES: usize = 8;

/// The epoll token of the rate timer; connections use their index.
const TIMER_TOKEN: u64 = u64::MAX;

/// At a fixed rate the timer is never set to fire sooner than this from
/// now: the requests that fall due meanwhile go out together (and any
/// wake-up for an echo sends what is due too), rather than one timer
/// wake-up per request. Measured at 50k req/s over 10k connections, this
/// lowered the median latency (about 100 to 75 µs) and barely changed the
/// generator's CPU per request, which is mostly the kernel's TCP work. A
/// request sent late is still timed from when it was due, so batching can
/// only add to the measured latency, never hide any.
const RATE_TIMER_GRAIN: Duration = Duration::from_micros(100);

/// When a run stops sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadStop {
    /// After this many requests in total, spread over the connections.
    Requests(u64),
    /// Once this long has passed since the load started; requests in flight
    /// then are still waited for.
    Duration(Duration),
}

/// What to run against which server.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// The echo server; must be a loopback address.
    pub addr: SocketAddr,
    /// Connections, all open at once.
    pub connections: usize,
    /// When to stop sending.
    pub stop: LoadStop,
    /// Payload bytes per request (the frame is 4 bytes more).
    pub payload_size: usize,
    /// Fixed offered rate in requests per second across all connections;
    /// `None` is the closed loop.
    pub rate: Option<f64>,
    /// Bounds the whole run, ramp included.
    pub timeout: Duration,
    /// Connects in flight at once.
    pub connect_batch: usize,
    /// Connect attempts per connection (at least 1).
    pub connect_attempts: u32,
    /// Source addresses to spread IPv4 connections over: 1 lets the kernel
    /// choose (plain `connect`); `n > 1` binds 127.0.0.1 ..= 127.0.0.n. The
    /// run switches to several by itself if ephemeral ports run out.
    pub source_addresses: usize,
}

impl LoadConfig {
    /// A closed-loop run of 64-byte requests, 60 s timeout, connects ramped
    /// 500 at a time.
    pub fn new(addr: SocketAddr, connections: usize, stop: LoadStop) -> Self {
        LoadConfig {
            addr,
            connections,
            stop,
            payload_size: DEFAULT_PAYLOAD_SIZE,
            rate: None,
            timeout: Duration::from_secs(60),
            connect_batch: DEFAULT_CONNECT_BATCH,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
            source_addresses: 1,
        }
    }

    /// Requests the run will send if nothing goes wrong, when that is known
    /// in advance (a request count, or a rate over a duration).
    pub fn planned_requests(&self) -> Option<u64> {
        match (self.stop, self.rate) {
            (LoadStop::Requests(n), _) => Some(n),
            (LoadStop::Duration(d), Some(rate)) => Some(rate_requests_within(rate, d)),
            (LoadStop::Duration(_), None) => None,
        }
    }

    /// Why this configuration cannot run, worded for the command line.
    pub fn validate(&self) -> Result<()> {
        if !self.addr.ip().is_loopback() {
            bail!(
                "{} is not a loopback address: this course's tools only drive \
                 servers on this machine (127.0.0.0/8 or ::1)",
                self.addr.ip()
            );
        }
        if self.connections == 0 {
            bail!("at least one connection is needed");
        }
        if self.payload_size > MAX_PAYLOAD_SIZE {
            bail!(
                "a payload of {} bytes is over the limit of {MAX_PAYLOAD_SIZE}",
                self.payload_size
            );
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("the rate must be a positive number of requests per second");
            }
        }
        if let LoadStop::Duration(d) = self.stop {
            if d.is_zero() {
                bail!("the duration must be positive");
            }
            if d >= self.timeout {
                bail!(
                    "the duration ({:.1} s) must be shorter than the timeout ({:.1} s)",
                    d.as_secs_f64(),
                    self.timeout.as_secs_f64()
                );
            }
        }
        if self.connect_batch == 0 || self.connect_attempts == 0 {
            bail!("the connect batch and the connect attempts must be at least 1");
        }
        if !(1..=254).contains(&self.source_addresses) {
            bail!("between 1 and 254 source addresses can be used");
        }
        Ok(())
    }
}

/// How far a run has got, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadProgress {
    /// True once the load has started (the ramp is over).
    pub loading: bool,
    /// Connections open now.
    pub open: usize,
    /// Connections asked for.
    pub connections: usize,
    /// Requests whose echo was verified so far.
    pub verified: u64,
    /// Errors so far.
    pub errors: u64,
    /// Requests planned, when known (see [`LoadConfig::planned_requests`]).
    pub planned: Option<u64>,
    /// Time since the load started (zero during the ramp).
    pub load_elapsed: Duration,
}

/// Latency figures of the verified requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// CPU time the generator used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuUse {
    pub user: Duration,
    pub system: Duration,
}

impl CpuUse {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    fn now() -> CpuUse {
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(usage) => CpuUse {
                user: Duration::from_micros(usage.user_time().num_microseconds().max(0) as u64),
                system: Duration::from_micros(usage.system_time().num_microseconds().max(0) as u64),
            },
            Err(_) => CpuUse::default(),
        }
    }

    fn since(&self, earlier: &CpuUse) -> CpuUse {
        CpuUse {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// What a load run found.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The server driven.
    pub addr: SocketAddr,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that got at least one complete echo.
    pub connections_succeeded: usize,
    /// Connections whose connect never succeeded.
    pub connections_never_connected: usize,
    /// Connections that connected but never got an echo (closed by the
    /// server each time, or never answered).
    pub connections_no_echo: usize,
    /// Connections reopened after a refusal, a connect timeout or a close
    /// before the first echo.
    pub reconnects: u64,
    /// Connections the server closed after echoing something, while no
    /// request was outstanding on them (they stopped contributing).
    pub closed_by_server: u64,
    /// Requests planned, when known in advance.
    pub requests_planned: Option<u64>,
    /// Requests sent (a request sent again on a reopened connection counts
    /// once).
    pub requests_sent: u64,
    /// Requests whose echo was byte-for-byte identical.
    pub requests_verified: u64,
    /// Echoes that differed from the frame sent.
    pub mismatches: u64,
    /// Requests outstanding on a connection the server closed or reset after
    /// it had echoed something.
    pub lost: u64,
    /// Requests still unanswered when the timeout struck.
    pub unanswered: u64,
    /// Requests planned but never sent: the timeout struck first, or no
    /// connection was left to carry them.
    pub not_sent: u64,
    /// Bytes that arrived when no echo was expected.
    pub unexpected_data: u64,
    /// The first few errors, worded for a student.
    pub error_details: Vec<String>,
    /// Payload bytes per request.
    pub payload_size: usize,
    /// The fixed offered rate, if any.
    pub rate: Option<f64>,
    /// Opening the connections, before the load started.
    pub ramp_time: Duration,
    /// From the start of the load to the last echo: the "total time" that
    /// requests per second is computed over.
    pub load_time: Duration,
    /// True if the run was cut short by the timeout.
    pub timed_out: bool,
    /// Latencies of the verified requests.
    pub latency: LatencySummary,
    /// Source addresses the connections were spread over.
    pub source_addresses: usize,
    /// The generator's own CPU time during the load phase.
    pub cpu_load: CpuUse,
    /// The generator's CPU time for the whole run (ramp and close included).
    pub cpu_total: CpuUse,
}

impl LoadReport {
    /// All errors: mismatches, lost, unanswered, never sent, unexpected data
    /// (each stray read counted once).
    pub fn errors(&self) -> u64 {
        self.mismatches + self.lost + self.unanswered + self.not_sent + self.unexpected_data
    }

    /// Verified requests per second of load time.
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.load_time.as_secs_f64();
        if secs > 0.0 {
            self.requests_verified as f64 / secs
        } else {
            0.0
        }
    }

    /// Fraction of the connections that got at least one echo, 0.0 to 1.0.
    pub fn connection_success_rate(&self) -> f64 {
        if self.connections == 0 {
            return 0.0;
        }
        self.connections_succeeded as f64 / self.connections as f64
    }

    /// The generator's CPU time per verified request over the load phase.
    pub fn cpu_per_request(&self) -> Option<Duration> {
        (self.requests_verified > 0).then(|| {
            Duration::from_secs_f64(
                self.cpu_load.total().as_secs_f64() / self.requests_verified as f64,
            )
        })
    }

    /// True when there were no errors and every connection got an echo:
    /// `loadtest` exits 0 exactly then.
    pub fn passed(&self) -> bool {
        self.errors() == 0 && self.connections_succeeded == self.connections
    }

    /// The report as `loadtest` prints it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "Connections: {}", self.connections)?;
        match self.requests_planned {
            Some(n) => writeln!(out, "Requests: {n}")?,
            None => writeln!(out, "Requests: as many as fit in the duration")?,
        }
        match self.rate {
            None => writeln!(out, "Concurrency: {}", self.connections)?,
            Some(rate) => {
                writeln!(out, "Concurrency: up to {}", self.connections)?;
                writeln!(
                    out,
                    "Offered rate: {} requests/sec (latency from each request's intended send time)",
                    thousands(rate.round() as u64)
                )?;
            }
        }
        writeln!(out, "Payload: {} bytes per frame", self.payload_size)?;
        writeln!(out, "Results:")?;
        writeln!(
            out,
            "Connect ramp: {:.2} seconds ({} reconnects)",
            self.ramp_time.as_secs_f64(),
            self.reconnects
        )?;
        writeln!(
            out,
            "Total time: {:.2} seconds",
            self.load_time.as_secs_f64()
        )?;
        writeln!(out, "Requests completed: {}", self.requests_verified)?;
        writeln!(
            out,
            "Requests/sec: {}",
            thousands(self.requests_per_sec().round() as u64)
        )?;
        writeln!(out, "Avg latency: {}", millis(self.latency.mean))?;
        writeln!(out, "P50 latency: {}", millis(self.latency.p50))?;
        writeln!(out, "P99 latency: {}", millis(self.latency.p99))?;
        writeln!(out, "P99.9 latency: {}", millis(self.latency.p999))?;
        writeln!(out, "Max latency: {}", millis(self.latency.max))?;
        write!(out, "Errors: {}", self.errors())?;
        if self.errors() > 0 {
            write!(
                out,
                " ({} corrupted echoes, {} lost with their connection, {} unanswered at the timeout, \
                 {} never sent, {} unexpected reads)",
                self.mismatches, self.lost, self.unanswered, self.not_sent, self.unexpected_data
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "Connection success rate: {:.2}% ({} of {} connections got an echo)",
            100.0 * self.connection_success_rate(),
            self.connections_succeeded,
            self.connections
        )?;
        if self.connections_succeeded < self.connections {
            writeln!(
                out,
                "  never connected: {}, connected but never echoed: {}",
                self.connections_never_connected, self.connections_no_echo
            )?;
        }
        if self.closed_by_server > 0 {
            writeln!(
                out,
                "Connections closed by the server mid-run: {}",
                self.closed_by_server
            )?;
        }
        if self.source_addresses > 1 {
            writeln!(out, "Source addresses: {}", self.source_addresses)?;
        }
        let cpu = self.cpu_load;
        write!(
            out,
            "Generator CPU: {:.2} s (user {:.2} s + system {:.2} s)",
            cpu.total().as_secs_f64(),
            cpu.user.as_secs_f64(),
            cpu.system.as_secs_f64()
        )?;
        if let Some(per) = self.cpu_per_request() {
            write!(out, ", {:.1} µs per request", per.as_secs_f64() * 1e6)?;
        }
        if !self.load_time.is_zero() {
            write!(
                out,
                ", {:.0}% of one core",
                100.0 * cpu.total().as_secs_f64() / self.load_time.as_secs_f64()
            )?;
        }
        writeln!(out)?;
        if self.timed_out {
            writeln!(out, "The run was cut short by the timeout.")?;
        }
        for detail in &self.error_details {
            writeln!(out, "error: {detail}")?;
        }
        let total_errors =
            self.errors() + self.connections as u64 - self.connections_succeeded as u64;
        if total_errors > self.error_details.len() as u64 && !self.error_details.is_empty() {
            writeln!(
                out,
                "(only the first {} errors are described)",
                self.error_details.len()
            )?;
        }
        Ok(())
    }

    /// The report as one JSON object (durations in seconds).
    pub fn render_json(&self) -> String {
        let secs = |d: Duration| format!("{:.9}", d.as_secs_f64());
        let opt_u64 = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let opt_f64 = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v}"));
        let details: Vec<String> = self.error_details.iter().map(|d| json_string(d)).collect();
        let fields: Vec<(&str, String)> = vec![
            ("addr", json_string(&self.addr.to_string())),
            ("connections", self.connections.to_string()),
            (
                "connections_succeeded",
                self.connections_succeeded.to_string(),
            ),
            (
                "connections_never_connected",
                self.connections_never_connected.to_string(),
            ),
            ("connections_no_echo", self.connections_no_echo.to_string()),
            (
                "connection_success_rate",
                format!("{}", self.connection_success_rate()),
            ),
            ("reconnects", self.reconnects.to_string()),
            ("closed_by_server", self.closed_by_server.to_string()),
            ("requests_planned", opt_u64(self.requests_planned)),
            ("requests_sent", self.requests_sent.to_string()),
            ("requests_verified", self.requests_verified.to_string()),
            ("errors", self.errors().to_string()),
            ("mismatches", self.mismatches.to_string()),
            ("lost", self.lost.to_string()),
            ("unanswered", self.unanswered.to_string()),
            ("not_sent", self.not_sent.to_string()),
            ("unexpected_data", self.unexpected_data.to_string()),
            ("payload_size", self.payload_size.to_string()),
            ("rate", opt_f64(self.rate)),
            ("ramp_time_s", secs(self.ramp_time)),
            ("total_time_s", secs(self.load_time)),
            (
                "requests_per_sec",
                format!("{:.1}", self.requests_per_sec()),
            ),
            ("latency_avg_s", secs(self.latency.mean)),
            ("latency_p50_s", secs(self.latency.p50)),
            ("latency_p99_s", secs(self.latency.p99)),
            ("latency_p999_s", secs(self.latency.p999)),
            ("latency_max_s", secs(self.latency.max)),
            ("timed_out", self.timed_out.to_string()),
            ("source_addresses", self.source_addresses.to_string()),
            ("cpu_user_s", secs(self.cpu_load.user)),
            ("cpu_system_s", secs(self.cpu_load.system)),
            (
                "cpu_per_request_s",
                self.cpu_per_request()
                    .map_or("null".to_string(), |d| format!("{:.9}", d.as_secs_f64())),
            ),
            ("cpu_total_run_s", secs(self.cpu_total.total())),
            ("error_details", format!("[{}]", details.join(","))),
            ("passed", self.passed().to_string()),
        ];
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// Runs the load described by `cfg`. `Err` only if it cannot start (bad
/// configuration, too few file descriptors, no epoll); everything the server
/// does wrong is in the report. Raises the soft RLIMIT_NOFILE to the hard
/// limit if the connections need it.
pub fn run_load(cfg: &LoadConfig) -> Result<LoadReport> {
    run_load_with_progress(cfg, &mut |_| {})
}

/// [`run_load`], calling `progress` about every 100 ms and once at the end.
pub fn run_load_with_progress(
    cfg: &LoadConfig,
    progress: &mut dyn FnMut(&LoadProgress),
) -> Result<LoadReport> {
    cfg.validate()?;
    raise_fd_limit(cfg.connections as u64 + SPARE_FDS)?;
    let mut engine = Engine::new(cfg)?;
    engine.run(progress)?;
    Ok(engine.into_report())
}

/// Makes sure `needed` file descriptors can be open: raises the soft limit
/// up to the hard one, or says why it cannot.
pub fn raise_fd_limit(needed: u64) -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{needed} file descriptors are needed but the hard limit (ulimit -Hn) is {hard}: \
             use fewer connections or raise the hard limit"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .with_context(|| format!("cannot raise the soft RLIMIT_NOFILE from {soft} to {hard}"))
}

/// Requests due at `rate` per second strictly within `duration` from the
/// start (request `i` is due at `i / rate`).
fn rate_requests_within(rate: f64, duration: Duration) -> u64 {
    // Less a hair, so that 0.3 s at 100/s is 30, not 31 by rounding.
    let exact = duration.as_secs_f64() * rate;
    let n = (exact - exact.abs() * 1e-12).ceil();
    if n <= 0.0 {
        0
    } else {
        n as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not yet connecting (waiting for its turn in the ramp).
    Waiting,
    /// Waiting to reconnect.
    Backoff,
    /// Non-blocking connect in progress since this instant.
    Connecting(Instant),
    /// Open, no request outstanding.
    Idle,
    /// Open, one request outstanding.
    Busy,
    /// Finished for good (failed, or closed by the server).
    Closed,
}

struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    /// Connect attempts made (and closes before the first echo).
    attempts: u32,
    /// Counted in `Engine::unproven`: connecting, or waiting for its first
    /// echo.
    unproven: bool,
    /// The frame in flight is the warm-up that proves the connection, not
    /// a counted request.
    warmup: bool,
    ever_connected: bool,
    got_echo: bool,
    /// The request in flight: length prefix and payload.
    frame: Vec<u8>,
    written: usize,
    received: usize,
    /// The echo of the request in flight already differs.
    frame_bad: bool,
    /// When the request in flight was due (closed loop: sent).
    intended: Instant,
    /// Requests started on this connection.
    seq: u32,
    /// Registered for EPOLLOUT because a write is unfinished.
    want_out: bool,
}

/// How requests are handed to connections.
enum Pacing {
    /// Closed loop. `remaining`: requests not yet sent (`None`: until the
    /// duration ends).
    Closed { remaining: Option<u64> },
    /// Fixed rate: request `i` is due at `start + i / rate`.
    Rate {
        rate: f64,
        /// Requests scheduled so far (their due times are in `due` or sent).
        scheduled: u64,
        /// Requests to schedule in all.
        limit: u64,
        /// Due times of requests waiting for an idle connection, oldest
        /// first.
        due: VecDeque<Instant>,
        timer: TimerFd,
        armed_for: Option<Instant>,
    },
}

struct Engine<'a> {
    cfg: &'a LoadConfig,
    epoll: Epoll,
    conns: Vec<Conn>,
    pacing: Pacing,
    /// Index of the next connection the ramp opens.
    next_to_start: usize,
    /// Connections started but not yet proven by an echo: the ramp keeps at
    /// most `connect_batch` of them.
    unproven: usize,
    /// When unproven connections time out: (when, index, attempt).
    proving_deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    backoff: BinaryHeap<Reverse<(Instant, usize)>>,
    open: usize,
    busy: usize,
    /// Open connections with nothing to send, in the order they became idle
    /// (may hold stale entries; checked when popped).
    idle: VecDeque<usize>,
    sources: usize,
    read_buf: Vec<u8>,
    histogram: Histogram<u64>,
    run_start: Instant,
    deadline: Instant,
    load_start: Option<Instant>,
    load_end: Option<Instant>,
    last_echo: Option<Instant>,
    cpu_run_start: CpuUse,
    cpu_load_start: CpuUse,
    cpu_load_end: CpuUse,
    report: LoadReport,
}

impl<'a> Engine<'a> {
    fn new(cfg: &'a LoadConfig) -> Result<Self> {
        let run_start = Instant::now();
        let cpu_run_start = CpuUse::now();
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("cannot create an epoll")?;
        let pacing = match cfg.rate {
            None => Pacing::Closed {
                remaining: match cfg.stop {
                    LoadStop::Requests(n) => Some(n),
                    LoadStop::Duration(_) => None,
                },
            },
            Some(rate) => {
                let timer = TimerFd::new(
                    ClockId::CLOCK_MONOTONIC,
                    TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
                )
                .context("cannot create a timerfd")?;
                epoll
                    .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER_TOKEN))
                    .context("cannot watch the timerfd")?;
                Pacing::Rate {
                    rate,
                    scheduled: 0,
                    limit: cfg.planned_requests().unwrap_or(0),
                    due: VecDeque::new(),
                    timer,
                    armed_for: None,
                }
            }
        };
        let conns = (0..cfg.connections)
            .map(|_| Conn {
                stream: None,
                phase: Phase::Waiting,
                attempts: 0,
                unproven: false,
                warmup: false,
                ever_connected: false,
                got_echo: false,
                frame: Vec::new(),
                written: 0,
                received: 0,
                frame_bad: false,
                intended: run_start,
                seq: 0,
                want_out: false,
            })
            .collect();
        // 1 ns to an hour, 3 significant digits.
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .context("cannot create the latency histogram")?;
        let deadline = run_start
            .checked_add(cfg.timeout)
            .unwrap_or(run_start + Duration::from_secs(365 * 24 * 3600));
        Ok(Engine {
            cfg,
            epoll,
            conns,
            pacing,
            next_to_start: 0,
            unproven: 0,
            proving_deadlines: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            open: 0,
            busy: 0,
            idle: VecDeque::with_capacity(cfg.connections),
            sources: cfg.source_addresses,
            read_buf: vec![0u8; READ_BUFFER_LEN],
            histogram,
            run_start,
            deadline,
            load_start: None,
            load_end: None,
            last_echo: None,
            cpu_run_start,
            cpu_load_start: cpu_run_start,
            cpu_load_end: cpu_run_start,
            report: LoadReport {
                addr: cfg.addr,
                connections: cfg.connections,
                connections_succeeded: 0,
                connections_never_connected: 0,
                connections_no_echo: 0,
                reconnects: 0,
                closed_by_server: 0,
                requests_planned: cfg.planned_requests(),
                requests_sent: 0,
                requests_verified: 0,
                mismatches: 0,
                lost: 0,
                unanswered: 0,
                not_sent: 0,
                unexpected_data: 0,
                error_details: Vec::new(),
                payload_size: cfg.payload_size,
                rate: cfg.rate,
                ramp_time: Duration::ZERO,
                load_time: Duration::ZERO,
                timed_out: false,
                latency: LatencySummary::default(),
                source_addresses: cfg.source_addresses,
                cpu_load: CpuUse::default(),
                cpu_total: CpuUse::default(),
            },
        })
    }

    fn run(&mut self, progress: &mut dyn FnMut(&LoadProgress)) -> Result<()> {
        let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
        let mut next_progress = self.run_start;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                self.report.timed_out = true;
                break;
            }
            self.expire_connects(now);
            self.start_connects(now);
            if self.load_start.is_none() && self.ramp_done() {
                self.start_load(now);
            }
            if self.load_start.is_some() {
                self.advance_rate(now);
                self.dispatch();
            }
            if self.finished(now) {
                break;
            }
            if now >= next_progress {
                progress(&self.progress(now));
                next_progress = now + TICK;
            }
            self.arm_rate_timer(now)?;
            let timeout = self.wait_timeout(now);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(e).context("epoll_wait failed"),
            };
            for event in &events[..n] {
                let token = event.data();
                if token == TIMER_TOKEN {
                    if let Pacing::Rate {
                        timer, armed_for, ..
                    } = &mut self.pacing
                    {
                        // Clears the expiration; nothing else to do: the top
                        // of the loop sends what is due.
                        let _ = timer.wait();
                        *armed_for = None;
                    }
                    continue;
                }
                self.handle_event(token as usize, event.events());
            }
        }
        let end = Instant::now();
        if self.load_start.is_none() {
            self.load_start = Some(end);
            self.cpu_load_start = CpuUse::now();
        }
        self.load_end = Some(end);
        self.cpu_load_end = CpuUse::now();
        self.settle_leftovers();
        progress(&self.progress(end));
        // Close every connection now, inside the measured run.
        for conn in &mut self.conns {
            conn.stream = None;
        }
        Ok(())
    }

    fn progress(&self, now: Instant) -> LoadProgress {
        LoadProgress {
            loading: self.load_start.is_some(),
            open: self.open,
            connections: self.cfg.connections,
            verified: self.report.requests_verified,
            errors: self.report.errors(),
            planned: self.report.requests_planned,
            load_elapsed: self
                .load_start
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
        }
    }

    fn ramp_done(&self) -> bool {
        self.next_to_start == self.conns.len() && self.unproven == 0 && self.backoff.is_empty()
    }

    fn start_load(&mut self, now: Instant) {
        self.load_start = Some(now);
        self.cpu_load_start = CpuUse::now();
        self.report.ramp_time = now.duration_since(self.run_start);
        for index in 0..self.conns.len() {
            if self.conns[index].phase == Phase::Idle {
                self.became_idle(index);
            }
        }
    }

    /// Whether no more work can happen.
    fn finished(&self, now: Instant) -> bool {
        let Some(load_start) = self.load_start else {
            return false;
        };
        if self.busy > 0 {
            return false;
        }
        let reopening = !self.ramp_done();
        let usable = self.open > 0 || reopening;
        match &self.pacing {
            Pacing::Closed { remaining } => match (remaining, self.cfg.stop) {
                (Some(0), _) => true,
                (Some(_), _) => !usable,
                (None, LoadStop::Duration(d)) => now >= load_start + d || !usable,
                (None, LoadStop::Requests(_)) => true,
            },
            Pacing::Rate {
                scheduled,
                limit,
                due,
                ..
            } => (*scheduled == *limit && due.is_empty()) || !usable,
        }
    }

    /// Counts what was left undone when the loop ended.
    fn settle_leftovers(&mut self) {
        self.report.unanswered = self.busy as u64;
        if self.busy > 0 {
            self.add_detail(format!(
                "{} requests were still unanswered when the timeout ({:.1} s) struck",
                self.busy,
                self.cfg.timeout.as_secs_f64()
            ));
        }
        let not_sent = match &self.pacing {
            Pacing::Closed { remaining } => remaining.unwrap_or(0),
            Pacing::Rate {
                scheduled,
                limit,
                due,
                ..
            } => due.len() as u64 + (limit - scheduled),
        };
        self.report.not_sent = not_sent;
        if not_sent > 0 {
            self.add_detail(format!(
                "{not_sent} requests were never sent: {}",
                if self.report.timed_out {
                    "the timeout struck first"
                } else {
                    "no open connection was left to carry them"
                }
            ));
        }
    }

    // ---- connecting -------------------------------------------------------

    fn start_connects(&mut self, now: Instant) {
        while self.unproven < self.cfg.connect_batch {
            let index = match self.backoff.peek() {
                Some(Reverse((due, _))) if *due <= now => {
                    let Some(Reverse((_, index))) = self.backoff.pop() else {
                        break;
                    };
                    index
                }
                _ if self.next_to_start < self.conns.len() => {
                    self.next_to_start += 1;
                    self.next_to_start - 1
                }
                _ => break,
            };
            self.connect(index, now);
        }
    }

    fn connect(&mut self, index: usize, now: Instant) {
        self.conns[index].attempts += 1;
        let source = self.source_for(index);
        match start_connect(self.cfg.addr, source) {
            Ok((stream, done)) => {
                let flags = if done {
                    EpollFlags::EPOLLIN
                } else {
                    EpollFlags::EPOLLOUT
                };
                if let Err(e) = self
                    .epoll
                    .add(&stream, EpollEvent::new(flags, index as u64))
                {
                    self.connect_failed(index, &format!("cannot watch the socket: {e}"));
                    return;
                }
                let conn = &mut self.conns[index];
                conn.stream = Some(stream);
                conn.unproven = true;
                self.unproven += 1;
                self.proving_deadlines
                    .push(Reverse((now + CONNECT_TIMEOUT, index, conn.attempts)));
                if done {
                    self.connected(index);
                } else {
                    self.conns[index].phase = Phase::Connecting(now);
                }
            }
            Err(e) if e.raw_os_error() == Some(Errno::EADDRNOTAVAIL as i32) => {
                // Out of ephemeral ports: spread over more source addresses
                // and try again without using up an attempt.
                self.conns[index].attempts -= 1;
                if self.cfg.addr.is_ipv4() && self.sources < FALLBACK_SOURCE_ADDRESSES {
                    self.sources = FALLBACK_SOURCE_ADDRESSES;
                    self.report.source_addresses = self.sources;
                    self.retry_later(index, now, Duration::ZERO);
                } else {
                    self.conns[index].attempts += 1;
                    self.connect_failed(index, &format!("connect failed: {e}"));
                }
            }
            Err(e) => self.connect_failed(index, &format!("connect failed: {e}")),
        }
    }

    fn source_for(&self, index: usize) -> Option<Ipv4Addr> {
        if self.sources <= 1 || !self.cfg.addr.is_ipv4() {
            return None;
        }
        Some(Ipv4Addr::new(127, 0, 0, 1 + (index % self.sources) as u8))
    }

    /// The TCP connect completed: prove the connection with a warm-up echo
    /// (a connect completes in the kernel even when the server never
    /// accepts; only an echo shows the server serves it).
    fn connected(&mut self, index: usize) {
        let now = Instant::now();
        let conn = &mut self.conns[index];
        conn.phase = Phase::Idle;
        conn.ever_connected = true;
        self.open += 1;
        self.proving_deadlines
            .push(Reverse((now + FIRST_ECHO_TIMEOUT, index, conn.attempts)));
        self.send(index, now, true);
    }

    /// The connection is no longer unproven (proven, failed or closed).
    fn settle_unproven(&mut self, index: usize) {
        if self.conns[index].unproven {
            self.conns[index].unproven = false;
            self.unproven -= 1;
        }
    }

    /// Connects still in progress after [`CONNECT_TIMEOUT`] are retried;
    /// connections without a first echo after [`FIRST_ECHO_TIMEOUT`] fail.
    fn expire_connects(&mut self, now: Instant) {
        while let Some(&Reverse((when, index, attempt))) = self.proving_deadlines.peek() {
            if when > now {
                break;
            }
            self.proving_deadlines.pop();
            let conn = &self.conns[index];
            if !conn.unproven || conn.attempts != attempt {
                continue;
            }
            match conn.phase {
                Phase::Connecting(_) => self.connect_failed(index, "connect timed out"),
                Phase::Busy if conn.warmup => {
                    self.add_detail(format!(
                        "connection {index}: connected, but no echo within {} s",
                        FIRST_ECHO_TIMEOUT.as_secs()
                    ));
                    self.close(index);
                }
                _ => {}
            }
        }
    }

    /// A connect attempt failed (the stream is already gone or dropped here):
    /// back off and retry, or give up.
    fn connect_failed(&mut self, index: usize, why: &str) {
        self.settle_unproven(index);
        self.conns[index].stream = None;
        if self.conns[index].attempts >= self.cfg.connect_attempts {
            self.conns[index].phase = Phase::Closed;
            let attempts = self.conns[index].attempts;
            self.add_detail(format!(
                "connection {index}: gave up after {attempts} attempts ({why})"
            ));
            return;
        }
        let exponent = self.conns[index].attempts.saturating_sub(1).min(16);
        let wait = FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
        self.retry_later(index, Instant::now(), wait);
    }

    fn retry_later(&mut self, index: usize, now: Instant, wait: Duration) {
        self.conns[index].stream = None;
        self.conns[index].phase = Phase::Backoff;
        self.report.reconnects += 1;
        self.backoff.push(Reverse((now + wait, index)));
    }

    // ---- events -----------------------------------------------------------

    fn handle_event(&mut self, index: usize, flags: EpollFlags) {
        let Some(conn) = self.conns.get(index) else {
            return;
        };
        match conn.phase {
            Phase::Connecting(_) => self.finish_connect(index),
            Phase::Idle | Phase::Busy => {
                if flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
                {
                    self.read_ready(index);
                }
                let conn = &self.conns[index];
                if conn.phase == Phase::Busy
                    && conn.want_out
                    && flags.contains(EpollFlags::EPOLLOUT)
                {
                    self.write_some(index);
                }
            }
            // A stale event for a socket closed earlier in this batch.
            Phase::Waiting | Phase::Backoff | Phase::Closed => {}
        }
    }

    fn finish_connect(&mut self, index: usize) {
        let Some(stream) = self.conns[index].stream.as_ref() else {
            return;
        };
        let result = match socket::getsockopt(stream, sockopt::SocketError) {
            Ok(0) => self
                .epoll
                .modify(
                    stream,
                    &mut EpollEvent::new(EpollFlags::EPOLLIN, index as u64),
                )
                .map_err(io::Error::from),
            Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
            Err(e) => Err(io::Error::from(e)),
        };
        match result {
            Ok(()) => self.connected(index),
            Err(e) => self.connect_failed(index, &format!("connect failed: {e}")),
        }
    }

    fn read_ready(&mut self, index: usize) {
        loop {
            let conn = &mut self.conns[index];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let busy = conn.phase == Phase::Busy;
            let want = if busy {
                (conn.frame.len() - conn.received).min(self.read_buf.len())
            } else {
                self.read_buf.len()
            };
            match stream.read(&mut self.read_buf[..want]) {
                Ok(0) => {
                    self.peer_closed(index, "the server closed the connection");
                    return;
                }
                Ok(n) if busy => {
                    if self.echo_bytes(index, n) {
                        // The echo is complete; with a level-triggered
                        // watch, anything else will be reported again.
                        return;
                    }
                }
                Ok(n) => {
                    self.report.unexpected_data += 1;
                    self.add_detail(format!(
                        "connection {index}: {n} bytes arrived with no request outstanding \
                         (an echo too long, or sent twice); connection closed"
                    ));
                    self.close(index);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.peer_closed(index, &format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Checks `n` bytes just read into the read buffer against the frame in
    /// flight; returns true if that completed the echo.
    fn echo_bytes(&mut self, index: usize, n: usize) -> bool {
        let conn = &mut self.conns[index];
        let expected = &conn.frame[conn.received..conn.received + n];
        let actual = &self.read_buf[..n];
        if !conn.frame_bad && expected != actual {
            conn.frame_bad = true;
            let at = expected
                .iter()
                .zip(actual)
                .position(|(e, a)| e != a)
                .unwrap_or(0);
            let offset = conn.received + at;
            let which = if conn.warmup {
                "warm-up frame".to_string()
            } else {
                format!("request {}", conn.seq)
            };
            let detail = format!(
                "connection {index}, {which}: echo differs at byte {offset} of {} \
                 (length prefix included): expected {}, got {}",
                conn.frame.len(),
                hex_excerpt(&conn.frame, offset),
                hex_excerpt(actual, at),
            );
            self.add_detail(detail);
        }
        let conn = &mut self.conns[index];
        conn.received += n;
        if conn.received < conn.frame.len() {
            return false;
        }
        let now = Instant::now();
        conn.phase = Phase::Idle;
        conn.got_echo = true;
        self.busy -= 1;
        self.last_echo = Some(now);
        let warmup = std::mem::take(&mut conn.warmup);
        if conn.frame_bad {
            self.report.mismatches += 1;
        } else if !warmup {
            self.report.requests_verified += 1;
            let nanos = now.saturating_duration_since(conn.intended).as_nanos();
            self.histogram
                .saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX).max(1));
        }
        if warmup {
            self.settle_unproven(index);
        }
        self.became_idle(index);
        true
    }

    /// The connection ended (EOF, reset, or an error on it).
    fn peer_closed(&mut self, index: usize, why: &str) {
        let conn = &self.conns[index];
        let was_busy = conn.phase == Phase::Busy;
        let got_echo = conn.got_echo;
        let warmup = conn.warmup;
        let intended = conn.intended;
        let seq = conn.seq;
        let load_over = self.load_end.is_some() || self.sending_over(Instant::now());
        let retry = !got_echo && (was_busy || !load_over);
        if retry {
            // Closed before its first echo: the server refused it in its
            // own way. Send the request again on a new connection.
            if was_busy {
                self.busy -= 1;
                if !warmup {
                    self.requeue(intended);
                    self.report.requests_sent -= 1;
                }
            }
            self.open -= 1;
            self.conns[index].want_out = false;
            self.connect_failed(index, why);
            return;
        }
        if was_busy && !warmup {
            self.report.lost += 1;
            self.add_detail(format!(
                "connection {index}, request {seq}: {why} before the echo came back"
            ));
        } else if was_busy {
            self.add_detail(format!(
                "connection {index}: {why} before its warm-up frame came back"
            ));
        } else if !load_over {
            self.report.closed_by_server += 1;
        }
        self.close(index);
    }

    fn close(&mut self, index: usize) {
        self.settle_unproven(index);
        let conn = &mut self.conns[index];
        if conn.phase == Phase::Busy {
            self.busy -= 1;
        }
        if matches!(conn.phase, Phase::Idle | Phase::Busy) {
            self.open -= 1;
        }
        conn.stream = None;
        conn.phase = Phase::Closed;
        conn.want_out = false;
    }

    // ---- sending ----------------------------------------------------------

    /// No more requests will start (duration over, or nothing left).
    fn sending_over(&self, now: Instant) -> bool {
        let Some(load_start) = self.load_start else {
            return false;
        };
        match &self.pacing {
            Pacing::Closed { remaining } => match remaining {
                Some(n) => *n == 0,
                None => match self.cfg.stop {
                    LoadStop::Duration(d) => now >= load_start + d,
                    LoadStop::Requests(_) => true,
                },
            },
            Pacing::Rate {
                scheduled,
                limit,
                due,
                ..
            } => scheduled == limit && due.is_empty(),
        }
    }

    fn requeue(&mut self, intended: Instant) {
        match &mut self.pacing {
            Pacing::Closed { remaining } => {
                if let Some(n) = remaining {
                    *n += 1;
                }
            }
            Pacing::Rate { due, .. } => due.push_front(intended),
        }
    }

    fn became_idle(&mut self, index: usize) {
        let Some(load_start) = self.load_start else {
            return;
        };
        match &mut self.pacing {
            Pacing::Closed { remaining } => {
                let go = match remaining {
                    Some(0) => false,
                    Some(n) => {
                        *n -= 1;
                        true
                    }
                    None => match self.cfg.stop {
                        LoadStop::Duration(d) => Instant::now() < load_start + d,
                        LoadStop::Requests(_) => false,
                    },
                };
                if go {
                    self.send(index, Instant::now(), false);
                } else {
                    // A request put back by a reconnect may still come.
                    self.idle.push_back(index);
                }
            }
            Pacing::Rate { .. } => self.idle.push_back(index),
        }
    }

    /// Rate mode: moves requests whose due time has come into the queue.
    fn advance_rate(&mut self, now: Instant) {
        let Some(load_start) = self.load_start else {
            return;
        };
        if let Pacing::Rate {
            rate,
            scheduled,
            limit,
            due,
            ..
        } = &mut self.pacing
        {
            while *scheduled < *limit {
                let at = load_start + Duration::from_secs_f64(*scheduled as f64 / *rate);
                if at > now {
                    break;
                }
                due.push_back(at);
                *scheduled += 1;
            }
        }
    }

    /// Sends waiting requests on idle connections: due ones at a fixed
    /// rate, put-back ones in the closed loop.
    fn dispatch(&mut self) {
        loop {
            let waiting = match &self.pacing {
                Pacing::Rate { due, .. } => !due.is_empty(),
                Pacing::Closed { remaining } => remaining.is_some_and(|n| n > 0),
            };
            if !waiting {
                return;
            }
            let Some(index) = self.idle.pop_front() else {
                return;
            };
            if self.conns[index].phase != Phase::Idle {
                continue;
            }
            let intended = match &mut self.pacing {
                Pacing::Rate { due, .. } => due.pop_front(),
                Pacing::Closed { remaining } => {
                    if let Some(n) = remaining {
                        *n -= 1;
                    }
                    Some(Instant::now())
                }
            };
            if let Some(intended) = intended {
                self.send(index, intended, false);
            }
        }
    }

    /// Rate mode: wakes the loop when the next request is due, if an idle
    /// connection is waiting for it (otherwise an echo will wake it).
    fn arm_rate_timer(&mut self, now: Instant) -> Result<()> {
        let Some(load_start) = self.load_start else {
            return Ok(());
        };
        let have_idle = !self.idle.is_empty();
        if let Pacing::Rate {
            rate,
            scheduled,
            limit,
            timer,
            armed_for,
            ..
        } = &mut self.pacing
        {
            if *scheduled >= *limit || !have_idle {
                return Ok(());
            }
            let at = load_start + Duration::from_secs_f64(*scheduled as f64 / *rate);
            if *armed_for == Some(at) {
                return Ok(());
            }
            // Never sooner than the grain (and never zero, which would
            // disarm the timer).
            let wait = at.saturating_duration_since(now).max(RATE_TIMER_GRAIN);
            timer
                .set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                )
                .context("cannot arm the rate timer")?;
            *armed_for = Some(at);
        }
        Ok(())
    }

    fn wait_timeout(&self, now: Instant) -> EpollTimeout {
        let mut until = self.deadline.min(now + TICK);
        if let Some(Reverse((due, _))) = self.backoff.peek() {
            until = until.min(*due);
        }
        if let Some(Reverse((when, _, _))) = self.proving_deadlines.peek() {
            until = until.min(*when);
        }
        if let (Some(start), LoadStop::Duration(d)) = (self.load_start, self.cfg.stop) {
            if start + d > now {
                until = until.min(start + d);
            }
        }
        let wait = until.saturating_duration_since(now);
        // Round up, so the loop does not spin until the instant comes.
        let millis = wait.as_nanos().div_ceil(1_000_000).min(u16::MAX as u128) as u16;
        EpollTimeout::from(millis)
    }

    /// Sends the next frame on `index`: a counted request due at
    /// `intended`, or the connection's warm-up.
    fn send(&mut self, index: usize, intended: Instant, warmup: bool) {
        let size = self.cfg.payload_size;
        let conn = &mut self.conns[index];
        if conn.frame.is_empty() {
            conn.frame = frame_template(index, size);
        }
        conn.seq = conn.seq.wrapping_add(1);
        // Stamp the request: a stale, repeated or misrouted echo differs.
        let stamp = ((index as u64) << 32 | u64::from(conn.seq)).to_be_bytes();
        let stamped = size.min(stamp.len());
        conn.frame[HEADER_LEN..HEADER_LEN + stamped].copy_from_slice(&stamp[..stamped]);
        conn.written = 0;
        conn.received = 0;
        conn.frame_bad = false;
        conn.intended = intended;
        conn.warmup = warmup;
        conn.phase = Phase::Busy;
        self.busy += 1;
        if !warmup {
            self.report.requests_sent += 1;
        }
        self.write_some(index);
    }

    fn write_some(&mut self, index: usize) {
        loop {
            let conn = &mut self.conns[index];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            if conn.written == conn.frame.len() {
                if conn.want_out {
                    conn.want_out = false;
                    let _ = self.epoll.modify(
                        &*stream,
                        &mut EpollEvent::new(EpollFlags::EPOLLIN, index as u64),
                    );
                }
                return;
            }
            match stream.write(&conn.frame[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !conn.want_out {
                        conn.want_out = true;
                        let _ = self.epoll.modify(
                            &*stream,
                            &mut EpollEvent::new(
                                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
                                index as u64,
                            ),
                        );
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.peer_closed(index, &format!("write failed: {e}"));
                    return;
                }
            }
        }
    }

    fn add_detail(&mut self, detail: String) {
        if self.report.error_details.len() < MAX_ERROR_DETAILS {
            self.report.error_details.push(detail);
        }
    }

    fn into_report(mut self) -> LoadReport {
        let load_start = self.load_start.unwrap_or(self.run_start);
        let load_end = self.last_echo.or(self.load_end).unwrap_or(load_start);
        self.report.load_time = load_end.saturating_duration_since(load_start);
        if self.report.ramp_time.is_zero() {
            self.report.ramp_time = load_start.saturating_duration_since(self.run_start);
        }
        self.report.cpu_load = self.cpu_load_end.since(&self.cpu_load_start);
        self.report.cpu_total = CpuUse::now().since(&self.cpu_run_start);
        for conn in &self.conns {
            if conn.got_echo {
                self.report.connections_succeeded += 1;
            } else if conn.ever_connected {
                self.report.connections_no_echo += 1;
            } else {
                self.report.connections_never_connected += 1;
            }
        }
        let h = &self.histogram;
        if !h.is_empty() {
            let d = Duration::from_nanos;
            self.report.latency = LatencySummary {
                count: h.len(),
                mean: Duration::from_nanos(h.mean().round() as u64),
                p50: d(h.value_at_quantile(0.50)),
                p99: d(h.value_at_quantile(0.99)),
                p999: d(h.value_at_quantile(0.999)),
                max: d(h.max()),
            };
        }
        self.report
    }
}

/// Starts a non-blocking connect to `addr`, from `source` (any port) if
/// given. Returns the stream and whether it is already connected.
fn start_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<(TcpStream, bool)> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(source) = source {
        // Let connect pick the port, so ports are shared across the
        // 4-tuples instead of reserved per source address by bind.
        socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
        socket::bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(source, 0)),
        )?;
    }
    // One small frame per round trip: never wait to coalesce.
    socket::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    let done = match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => true,
        Err(Errno::EINPROGRESS) => false,
        Err(e) => return Err(e.into()),
    };
    Ok((TcpStream::from(fd), done))
}

/// A frame of `size` payload bytes that differ from one connection to the
/// next; [`Engine::send`] stamps each request into its first bytes.
fn frame_template(index: usize, size: usize) -> Vec<u8> {
    let len = u32::try_from(size).expect("payload size checked against MAX_PAYLOAD_SIZE");
    let mut frame = Vec::with_capacity(HEADER_LEN + size);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend((0..size).map(|i| (i.wrapping_mul(131) ^ index.wrapping_mul(7) ^ 0x5a) as u8));
    frame
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in milliseconds, with three decimals (microseconds).
fn millis(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(stop: LoadStop) -> LoadConfig {
        LoadConfig::new("127.0.0.1:7".parse().unwrap(), 10, stop)
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(42735), "42,735");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn only_loopback_is_accepted() {
        let mut c = cfg(LoadStop::Requests(10));
        assert!(c.validate().is_ok());
        c.addr = "10.0.0.1:7".parse().unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        c.addr = "[::1]:7".parse().unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_rate_over_a_duration_plans_its_requests() {
        let mut c = cfg(LoadStop::Duration(Duration::from_secs(1)));
        assert_eq!(c.planned_requests(), None);
        c.rate = Some(10.0);
        assert_eq!(c.planned_requests(), Some(10));
        c.rate = Some(2.5);
        assert_eq!(c.planned_requests(), Some(3));
        c.rate = Some(0.0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn duration_must_fit_in_the_timeout() {
        let mut c = cfg(LoadStop::Duration(Duration::from_secs(60)));
        assert!(c.validate().is_err());
        c.timeout = Duration::from_secs(61);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn frames_differ_per_connection_and_carry_their_length() {
        let a = frame_template(0, 64);
        let b = frame_template(1, 64);
        assert_eq!(a.len(), 68);
        assert_eq!(&a[..4], &64u32.to_be_bytes());
        assert_ne!(a, b);
        assert_eq!(frame_template(3, 0), vec![0, 0, 0, 0]);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
