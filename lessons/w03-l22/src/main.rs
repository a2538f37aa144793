//! w03-l22 — Graceful shutdown: the course's final server.
//!
//! The w03-l21 server, now able to stop cleanly. SIGINT (Ctrl-C) and
//! SIGTERM no longer kill the process: they are blocked and read from a
//! signalfd registered with epoll, so a signal is one more event of the
//! loop. On it the server stops accepting, echoes every frame that already
//! arrived, writes out all pending output, closes every connection with an
//! orderly FIN, prints its final statistics and exits with status 0:
//!
//! ```text
//! Received SIGINT, shutting down...
//! Closing 1000 connections...
//! All connections closed.
//! Final stats: 52000 requests served, 0 errors
//! ```
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.

// The stub gives you the reference l21 server (edge-triggered epoll,
// `--stats`), already wired for signals, with three functions left to
// write: `open_signal_fd`, `take_signal` and `shut_down`. Their doc
// comments are the contracts; `main` and `event_loop` call them.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

/// A single-threaded epoll echo server for length-prefixed frames.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 lets the kernel choose a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Most connections served at once; one more is accepted and closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,

    /// Largest payload accepted, in bytes; a bigger frame closes its connection.
    #[arg(long, default_value_t = 65_536)]
    max_frame: u32,

    /// Most events one epoll_wait() call may return.
    #[arg(long, default_value_t = 1024)]
    max_events: usize,

    /// Print connection and traffic statistics to stdout every second.
    #[arg(long)]
    stats: bool,
}

/// Bytes in a frame header: the payload length, big-endian.
const HEADER_LEN: usize = 4;

/// How much one read() may bring in at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Connections that may wait in the kernel's accept queue. std listens with
/// 128; 10,000 clients connecting at once overflow that many times over.
const LISTEN_BACKLOG: i32 = 4096;

/// The epoll token (event data) of the listener. Clients use their fd
/// number, which is never this large.
const LISTENER: u64 = u64::MAX;

/// The epoll token of the signalfd.
const SIGNALS: u64 = u64::MAX - 1;

/// How long a shutdown may spend writing out pending echoes before it
/// closes the connections anyway (a client that never reads must not keep
/// the server alive): 1.5 s, so the exit comes within 2 s of the signal.
#[allow(dead_code)] // given for shut_down: unused until you write it
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

fn main() -> ExitCode {
    let args = Args::parse();

    // First of all, while this is the only thread: from here on SIGINT and
    // SIGTERM wait for the loop instead of killing the process, however
    // soon after the listening line they come.
    let signals = match open_signal_fd() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("error: cannot block SIGINT and SIGTERM for a signalfd: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Before any connection: each one costs a file descriptor.
    match raise_fd_limit() {
        Ok(limit) => eprintln!("open-file limit: {limit}"),
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }

    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = set_backlog(&listener, LISTEN_BACKLOG) {
        eprintln!("warning: cannot set the listen backlog to {LISTEN_BACKLOG}: {e}");
    }
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The listener must not block either: accept() is called until it says
    // WouldBlock, and that must not put the whole server to sleep.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("error: cannot make the listener non-blocking: {e}");
        return ExitCode::FAILURE;
    }
    println!("listening on {local}");

    match event_loop(&listener, signals, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: epoll failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit
/// and returns the new soft limit. The hard limit is the ceiling an
/// unprivileged process may raise itself to.
fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Sets the listener's accept-queue length. Linux lets listen() be called
/// again on a listening socket to change it; the kernel caps it at
/// net.core.somaxconn.
fn set_backlog(listener: &TcpListener, backlog: i32) -> nix::Result<()> {
    use nix::sys::socket::{listen, Backlog};
    listen(listener, Backlog::new(backlog)?)
}

/// One client connection and everything the server remembers about it.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes received but not yet part of a complete frame.
    inbuf: Vec<u8>,
    /// Echoes waiting to be written, oldest first.
    outbuf: Vec<u8>,
    /// The client has closed its side (read returned 0): read no more, but
    /// finish writing what `outbuf` holds before closing.
    peer_closed: bool,
    /// The events this connection is registered for in the epoll instance
    /// right now, so an unchanged interest costs no epoll_ctl() call.
    registered: EpollFlags,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            peer_closed: false,
            registered: EpollFlags::empty(),
        }
    }

    /// The events epoll should report for this connection.
    fn interest(&self) -> EpollFlags {
        let mut events = trigger_mode();
        if !self.peer_closed {
            events |= EpollFlags::EPOLLIN;
        }
        // Only while output is pending: each epoll.modify() re-arms the
        // edge, so turning EPOLLOUT on while the socket has room reports it
        // writable once, which is when the pending bytes get their turn.
        if self.has_pending_output() {
            events |= EpollFlags::EPOLLOUT;
        }
        events
    }

    /// Reads everything the kernel has for this socket, until WouldBlock,
    /// and appends it to `inbuf`. Edge-triggered epoll will not report the
    /// socket again for bytes that were already there.
    ///
    /// - Ok(()) with every waiting byte in `inbuf` (maybe none, when the
    ///   wake-up was spurious: WouldBlock is not an error).
    /// - Ok(()) with `peer_closed` set at EOF, clean or mid-frame alike: the
    ///   bytes already buffered stay, so the frames they complete are still
    ///   echoed. `has_partial_frame` tells the two cases apart.
    /// - Err(e) when the connection is broken (reset by the client, ...).
    fn read_all(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side.
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                // New bytes: keep them, and read again: more may be waiting.
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                // Drained: the next new byte brings the next event.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                // A signal interrupted the read before any byte: try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Reset or another real error: this connection is over.
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the next complete frame (header and payload) out of `inbuf`.
    ///
    /// - Ok(Some(frame)): a whole frame, removed from the front of `inbuf`;
    ///   whatever follows it (more frames, or the start of one) stays.
    /// - Ok(None): no whole frame is buffered yet (fewer than 4 header bytes,
    ///   or part of the payload still in flight). Not an error: epoll will
    ///   report the rest when it arrives. At EOF this means a clean end if
    ///   `inbuf` is empty and a frame cut short if it is not.
    /// - Err(InvalidData): the header announces more than `max_frame` bytes.
    fn next_frame(&mut self, max_frame: u32) -> io::Result<Option<Vec<u8>>> {
        if self.inbuf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = [self.inbuf[0], self.inbuf[1], self.inbuf[2], self.inbuf[3]];
        let len = u32::from_be_bytes(header);
        if len > max_frame {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("frame of {len} bytes is larger than --max-frame {max_frame}"),
            ));
        }
        let total = HEADER_LEN + len as usize;
        if self.inbuf.len() < total {
            return Ok(None);
        }
        // Remove exactly one frame; the bytes after it are the next frames.
        Ok(Some(self.inbuf.drain(..total).collect()))
    }

    /// True when the client sent part of a frame that never completed.
    fn has_partial_frame(&self) -> bool {
        !self.inbuf.is_empty()
    }

    fn has_pending_output(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Writes as much of `outbuf` as the socket takes right now.
    ///
    /// - Ok(()) when everything was written, or when the socket's send buffer
    ///   filled up (WouldBlock): the rest stays in `outbuf` and EPOLLOUT will
    ///   say when to go on.
    /// - Err(e) when the client is gone: EPIPE or ECONNRESET. Rust ignores
    ///   SIGPIPE before main, so this arrives as an error, not a signal.
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.outbuf.len() {
                break Ok(());
            }
            match self.stream.write(&self.outbuf[written..]) {
                // The socket took nothing and never will: treat it as broken.
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                // Part (or all) of the rest was taken: count it, write again.
                Ok(n) => written += n,
                // The send buffer is full: stop here. Edge-triggered EPOLLOUT
                // fires once it has room again, because we wrote until now.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                // A signal interrupted the write before any byte: try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EPIPE, ECONNRESET...: this connection is over.
                Err(e) => break Err(e),
            }
        };
        // Forget what the kernel took, keeping the unsent tail in order.
        self.outbuf.drain(..written);
        result
    }
}

/// What the `--stats` lines count, since the last report.
struct Stats {
    /// Frames echoed (one request = one frame).
    requests: u64,
    /// Bytes read from clients.
    bytes_read: u64,
    /// When the counting period started.
    since: Instant,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            bytes_read: 0,
            since: Instant::now(),
        }
    }

    /// Prints the two stats lines for the period that ends now, then starts
    /// a new period. Rates are per second of the period's real length, so a
    /// late report does not inflate them.
    fn report(&mut self, active: usize, pending: usize) {
        let seconds = self.since.elapsed().as_secs_f64().max(0.001);
        let requests_per_sec = (self.requests as f64 / seconds).round() as u64;
        let megabytes_per_sec = self.bytes_read as f64 / seconds / 1_000_000.0;
        let clock = utc_clock();
        println!("[{clock}] Connections: {active} active, {pending} pending");
        println!(
            "[{clock}] Requests: {requests_per_sec}/sec, Bytes: {megabytes_per_sec:.1} MB/sec"
        );
        *self = Stats::new();
    }
}

/// The time of day in UTC as HH:MM:SS (no time-zone database needed).
fn utc_clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

/// Counted from start to exit, for the final stats line.
#[derive(Default)]
struct Totals {
    /// Frames echoed.
    requests: u64,
    /// Connections closed because of an error.
    errors: u64,
}

/// What serving a connection left it as.
enum State {
    Open,
    /// Finished normally: the client closed and every echo was sent.
    Done,
}

/// Does whatever work `ready` allows on one connection: read, echo every
/// whole frame, write pending output. An Err means this connection is broken
/// and must be closed; it never concerns any other connection.
fn serve(
    conn: &mut Conn,
    ready: EpollFlags,
    max_frame: u32,
    stats: &mut Stats,
) -> io::Result<State> {
    // EPOLLHUP and EPOLLERR come whether asked for or not, and can come
    // without EPOLLIN; reading is how we learn what happened.
    let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    if ready.intersects(readable) && !conn.peer_closed {
        let buffered = conn.inbuf.len();
        let result = conn.read_all();
        // Count what arrived even when the read ended in an error.
        stats.bytes_read += (conn.inbuf.len() - buffered) as u64;
        result?;
        // One read can bring many frames, or the end of one and the start of
        // the next: echo every complete frame, keep the rest for later.
        while let Some(frame) = conn.next_frame(max_frame)? {
            conn.outbuf.extend_from_slice(&frame);
            stats.requests += 1;
        }
    }
    // Write right away rather than waiting for EPOLLOUT: the socket is
    // usually writable, and whatever it does not take waits in outbuf.
    if conn.has_pending_output() {
        conn.flush()?;
    }
    if conn.peer_closed && !conn.has_pending_output() {
        if conn.has_partial_frame() {
            eprintln!(
                "{}: closed in the middle of a frame ({} bytes dropped)",
                conn.peer,
                conn.inbuf.len()
            );
        }
        return Ok(State::Done);
    }
    Ok(State::Open)
}

// The epoll backend: the only functions that talk to the epoll instance
// (as redis keeps epoll in ae_epoll.c, under one dispatch loop).

/// The trigger mode every registration carries: edge-triggered.
fn trigger_mode() -> EpollFlags {
    // Every registration, in add and in modify: a modify without EPOLLET
    // quietly turns the socket back to level-triggered.
    EpollFlags::EPOLLET
}

/// A new epoll instance, closed when the returned value is dropped.
fn create_epoll() -> nix::Result<Epoll> {
    // CLOEXEC: a program this server ever ran would not inherit the fd.
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
}

/// Adds the listener to the interest list, edge-triggered like the
/// clients (accept_clients drains it); its events carry LISTENER.
fn register_listener(epoll: &Epoll, listener: &TcpListener) -> nix::Result<()> {
    let interest = EpollFlags::EPOLLIN | trigger_mode();
    epoll.add(listener, EpollEvent::new(interest, LISTENER))
}

/// Adds a new client to the interest list; its events carry its fd number.
fn register_client(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    let interest = conn.interest();
    let token = conn.stream.as_raw_fd() as u64;
    epoll.add(&conn.stream, EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
}

/// Tells epoll about a change in what the connection waits for (EPOLLOUT
/// on while output is pending, EPOLLIN off once the client closed).
fn update_interest(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    let interest = conn.interest();
    if interest == conn.registered {
        return Ok(());
    }
    let token = conn.stream.as_raw_fd() as u64;
    epoll.modify(&conn.stream, &mut EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
}

/// Blocks until at least one registered socket is ready or `deadline`
/// passes (none: wait as long as it takes); fills the front of `events`
/// and returns how many it filled (0 when the deadline came first).
fn wait_for_events(
    epoll: &Epoll,
    events: &mut [EpollEvent],
    deadline: Option<Instant>,
) -> nix::Result<usize> {
    let timeout = match deadline {
        None => EpollTimeout::NONE,
        // Rounded up to whole milliseconds: a timeout of 0 would return at
        // once and spin until the deadline.
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            let millis = left.as_micros().div_ceil(1000).min(1000) as u16;
            EpollTimeout::from(millis)
        }
    };
    epoll.wait(events, timeout)
}

/// Accepts every connection waiting in the listener's queue and registers
/// each with epoll.
fn accept_clients(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    max_clients: usize,
) {
    // Edge-triggered: one event may stand for many queued connections, and
    // none is reported again until a new one arrives. Drain the queue.
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // The queue is empty: back to epoll_wait().
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // A signal interrupted accept(): try again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE...: no reason to stop the server. Come
            // back on the next epoll_wait() wake-up.
            Err(e) => {
                eprintln!("accept failed: {e}");
                return;
            }
        };
        if conns.len() >= max_clients {
            eprintln!("{peer}: refused, {max_clients} clients already connected");
            drop(stream); // accept-then-close: the client sees EOF at once
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        let mut conn = Conn::new(stream, peer);
        if let Err(e) = register_client(epoll, &mut conn) {
            eprintln!("{peer}: cannot register with epoll: {e}");
            continue; // dropping conn closes the socket
        }
        conns.insert(conn.stream.as_raw_fd(), conn);
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// Turns SIGINT and SIGTERM from signals that end the process into events
/// the loop can wait for. `main` calls it first of all, before the
/// listening line and while the process has a single thread, so there is
/// no moment when one of them could still kill the server the default way
/// (and a thread started later would inherit the same mask).
///
/// Afterwards both signals are blocked: one sent to the process stays
/// pending instead of running its default action. Returns a descriptor
/// that is readable while one of them is pending, for the loop's epoll set;
/// reading it takes that signal off the pending set. The descriptor is
/// non-blocking (a read with nothing pending returns at once and says so)
/// and close-on-exec. Err when either step fails: `main` reports it and
/// exits with a failure status, before it listens.
fn open_signal_fd() -> nix::Result<SignalFd> {
    todo!("gap `open_signal_fd`: write it to the contract in its doc comment")
}

/// Called by the loop each time epoll reports the signalfd readable.
/// Returns the signal that was pending (SIGINT or SIGTERM), now taken off
/// the pending set, or None when there was nothing to take (a read that
/// fails counts as nothing): the loop then goes on serving.
///
/// When it returns a signal, the descriptor no longer wakes this epoll
/// instance. The shutdown waits in the same instance, and a second signal
/// stays pending (it is blocked) and keeps a level-triggered descriptor
/// readable: left in the set, it would make every wait of the shutdown
/// return at once, a busy loop for the whole grace period. So a second
/// signal changes nothing: it is never read, and the shutdown goes on.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn take_signal(epoll: &Epoll, signals: &mut SignalFd) -> Option<Signal> {
    todo!("gap `take_signal`: write it to the contract in its doc comment")
}

/// The graceful shutdown, once `take_signal` returned `signal`. Prints the
/// four shutdown lines on stdout, in this order, and returns once no
/// connection is left (`main` then exits with status 0):
///
/// ```text
/// Received SIGINT, shutting down...    (or SIGTERM)
/// Closing N connections...             (N: the connections open now)
/// All connections closed.
/// Final stats: N requests served, E errors
/// ```
///
/// When it returns:
///
/// - no client was accepted after the signal;
/// - every frame that reached a socket before the shutdown began, read by
///   the loop already or still waiting unread in the socket, was echoed
///   (unread bytes would also make the close a reset instead of FIN);
/// - each connection was closed as soon as all its output was written,
///   with FIN after the last byte: its client read every echo, then EOF,
///   without waiting for slower clients;
/// - pending output was written for at most SHUTDOWN_GRACE (1.5 s, so the
///   exit comes within 2 s of the signal), asleep in epoll_wait between
///   writes, never polling; a client that reads late still got everything
///   within that time, and whatever had output unsent when it ended was
///   closed anyway: a client that never reads cannot hold the exit;
/// - the totals' request count (N) counts every frame echoed over the
///   server's whole life, those echoed during the shutdown included;
/// - the totals' error count (E) counts the connections the server closed
///   because of a failure, over its whole life: an I/O error on the socket
///   (a reset, a broken pipe), a frame over --max-frame, or output still
///   unsent when the grace period ended. A client that got all its echoes
///   and EOF is no error, so E is 0 when every client reads.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn shut_down(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    signal: Signal,
    totals: &mut Totals,
    args: &Args,
) {
    todo!("gap `shut_down`: write it to the contract in its doc comment")
}

/// The server: wait in epoll_wait() for any socket (or a signal) to be
/// ready, serve the ready ones, repeat. Returns after a graceful shutdown,
/// or with an error if epoll itself fails.
fn event_loop(listener: &TcpListener, mut signals: SignalFd, args: &Args) -> io::Result<()> {
    let epoll = create_epoll()?;
    register_listener(&epoll, listener)?;
    // Level-triggered: readable for as long as a signal is pending (so
    // take_signal takes it out of the set once the shutdown begins).
    epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
    let mut totals = Totals::default();
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); args.max_events.max(1)];
    let mut stats = Stats::new();
    // The next report, once a second; never a wake-up without --stats.
    let mut next_report = args.stats.then(|| Instant::now() + Duration::from_secs(1));
    loop {
        if let Some(at) = next_report {
            if Instant::now() >= at {
                let pending = conns.values().filter(|c| c.has_pending_output()).count();
                stats.report(conns.len(), pending);
                // A second after this report: each period is about a
                // second long even after a late wake-up (report() divides
                // by its real length anyway).
                next_report = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        let ready = match wait_for_events(&epoll, &mut events, next_report) {
            Ok(n) => n,
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..ready] {
            if event.data() == SIGNALS {
                if let Some(signal) = take_signal(&epoll, &mut signals) {
                    shut_down(&epoll, listener, &mut conns, signal, &mut totals, args);
                    return Ok(());
                }
                continue;
            }
            if event.data() == LISTENER {
                accept_clients(&epoll, listener, &mut conns, args.max_clients);
                continue;
            }
            let fd = event.data() as RawFd;
            // Closed earlier in this same batch: nothing left to serve.
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let before = stats.requests;
            let result = serve(conn, event.events(), args.max_frame, &mut stats);
            totals.requests += stats.requests - before;
            let result = result.and_then(|state| {
                if let State::Open = state {
                    update_interest(&epoll, conn)?;
                }
                Ok(state)
            });
            match result {
                Ok(State::Open) => {}
                Ok(State::Done) => {
                    // Closing the fd (dropping the stream) also removes it
                    // from the interest list: no epoll_ctl(DEL) needed.
                    if let Some(conn) = conns.remove(&fd) {
                        eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                    }
                }
                Err(e) => {
                    totals.errors += 1;
                    if let Some(conn) = conns.remove(&fd) {
                        eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                    }
                }
            }
        }
    }
}
