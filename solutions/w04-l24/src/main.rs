//! w04-l24 — Across cores: SO_REUSEPORT.
//!
//! The w03-l22 server, on every core: `--threads N` runs N event loops, each
//! on its own thread with its own epoll instance and its own listening
//! socket. All N sockets are bound to the same port with SO_REUSEPORT, so
//! the kernel spreads new connections over them (by a hash of the client's
//! address and port) and the loops share nothing: a connection lives and
//! dies on the loop that accepted it.
//!
//! The main thread only waits for SIGINT or SIGTERM; then it wakes every
//! loop through an eventfd, each loop closes its connections gracefully,
//! and the main thread prints the final statistics.
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.
// BEGIN SOLUTION
// STUB
//
// // TODO: two gaps spread the server over cores: `bind_reuseport` (one
// // listening socket per loop, all on one port) and `spawn_loops` (one thread
// // per listener, each with its own event loop). `main` already blocks the
// // signals, binds the listeners and waits for SIGINT/SIGTERM; read it first.
// END SOLUTION

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

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

    /// Print connection and traffic statistics to stdout every second
    /// (each loop prints its own).
    #[arg(long)]
    stats: bool,

    /// Event loops to run, each on its own thread with its own listener.
    #[arg(long, default_value_t = 1)]
    threads: usize,
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

/// The epoll token of the stop eventfd.
const STOP: u64 = u64::MAX - 1;

/// Connections open right now, over every loop (for the shutdown lines).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// How long a shutdown may spend writing out pending echoes before it
/// closes the connections anyway (a client that never reads must not keep
/// the server alive).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

fn main() -> ExitCode {
    let args = Args::parse();

    // Before any connection: each one costs a file descriptor.
    match raise_fd_limit() {
        Ok(limit) => eprintln!("open-file limit: {limit}"),
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    // Before any thread exists: threads inherit the blocked mask, so the
    // signals stay pending until the main thread waits for them.
    let signals = match block_signals() {
        Ok(mask) => mask,
        Err(e) => {
            eprintln!("error: cannot block SIGINT and SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = match EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC) {
        Ok(stop) => Arc::new(stop),
        Err(e) => {
            eprintln!("error: cannot create the stop eventfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listeners = match bind_listeners(&args.host, args.port, args.threads.max(1)) {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    match listeners[0].local_addr() {
        Ok(local) => println!("listening on {local}"),
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    }
    let args = Arc::new(args);
    let loops = spawn_loops(listeners, &args, &stop);

    let signal = match signals.wait() {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("error: waiting for a signal failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Received {}, shutting down...", signal.as_str());
    println!("Closing {} connections...", ACTIVE.load(Ordering::SeqCst));
    // The eventfd stays readable once written (nobody reads it): every
    // loop sees it, level-triggered, on its next epoll_wait().
    if let Err(e) = stop.write(1) {
        eprintln!("error: cannot wake the event loops: {e}");
        return ExitCode::FAILURE;
    }
    let mut totals = Totals::default();
    let mut failed = false;
    for event_loop in loops {
        match event_loop.join() {
            Ok(Ok(done)) => {
                totals.requests += done.requests;
                totals.errors += done.errors;
            }
            Ok(Err(e)) => {
                eprintln!("error: an event loop failed: {e}");
                failed = true;
            }
            Err(_) => {
                eprintln!("error: an event loop panicked");
                failed = true;
            }
        }
    }
    println!("All connections closed.");
    println!(
        "Final stats: {} requests served, {} errors",
        totals.requests, totals.errors
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Binds `count` listening sockets to the same address. The first one
/// binds the port asked for (0: the kernel picks one); the others bind the
/// port the first one got.
fn bind_listeners(host: &str, port: u16, count: usize) -> io::Result<Vec<TcpListener>> {
    let mut addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "no address for the host"))?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_reuseport(addr)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A non-blocking listening socket with SO_REUSEPORT set before bind(), so
/// several sockets may listen on one port and the kernel spreads new
/// connections over them.
fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    // BEGIN GAP bind_reuseport
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    // Every socket sharing the port must set it, and before bind().
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, socket::Backlog::new(LISTEN_BACKLOG)?)?;
    Ok(TcpListener::from(fd))
    // STUB
    // // TODO: socket::socket(family of `addr`, SockType::Stream,
    // // SOCK_NONBLOCK | SOCK_CLOEXEC, None); setsockopt(&fd, sockopt::ReusePort,
    // // &true) BEFORE bind(); socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr));
    // // socket::listen with Backlog::new(LISTEN_BACKLOG); TcpListener::from(fd).
    // todo!("a non-blocking SO_REUSEPORT listener bound to addr")
    // END GAP
}

/// Starts one event loop per listener, each on its own thread with its
/// own epoll instance: the loops share nothing but the stop eventfd.
fn spawn_loops(
    listeners: Vec<TcpListener>,
    args: &Arc<Args>,
    stop: &Arc<EventFd>,
) -> Vec<thread::JoinHandle<io::Result<Totals>>> {
    // BEGIN GAP spawn_loops
    let mut loops = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let args = Arc::clone(args);
        let stop = Arc::clone(stop);
        let spawned = thread::Builder::new()
            .name(format!("loop-{index}"))
            .spawn(move || event_loop(&listener, &args, &stop));
        match spawned {
            Ok(handle) => loops.push(handle),
            // Fewer loops still serve every client: the kernel only hands
            // connections to sockets that still listen.
            Err(e) => eprintln!("warning: cannot start event loop {index}: {e}"),
        }
    }
    loops
    // STUB
    // // TODO: for each listener, clone the two Arcs and spawn a thread
    // // (thread::Builder, named `loop-N`) running
    // // `event_loop(&listener, &args, &stop)`; keep every JoinHandle. A spawn
    // // that fails is logged, not fatal.
    // todo!("one thread per listener, each running event_loop")
    // END GAP
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
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and in every thread
/// it starts later) and returns the set, for `SigSet::wait`. A blocked
/// signal is not delivered the default way (which kills the process): it
/// stays pending until the main thread waits for it.
fn block_signals() -> nix::Result<SigSet> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()?;
    Ok(mask)
}

/// One loop's graceful shutdown, once the main thread woke it: no new clients;
/// every frame that already arrived is echoed; pending output is written
/// (for at most SHUTDOWN_GRACE); every connection gets an orderly close.
fn shut_down(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    totals: &mut Totals,
    args: &Args,
) {
    // No new clients: those still in the accept queue are reset when the
    // listener closes at exit.
    if let Err(e) = epoll.delete(listener) {
        eprintln!("cannot remove the listener from epoll: {e}");
    }
    // Bytes that arrived before the signal may still wait in the sockets:
    // read them, so their frames are echoed too (and nothing unread is left
    // behind, which would make close() send a reset).
    let mut stats = Stats::new();
    let mut closing: Vec<RawFd> = conns.keys().copied().collect();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut events = vec![EpollEvent::empty(); args.max_events.max(1)];
    let mut ready = EpollFlags::EPOLLIN;
    while !closing.is_empty() {
        closing.retain(|fd| {
            let Some(conn) = conns.get_mut(fd) else {
                return false;
            };
            let before = stats.requests;
            let result = serve(conn, ready, args.max_frame, &mut stats)
                .and_then(|_| update_interest(epoll, conn).map_err(io::Error::from));
            totals.requests += stats.requests - before;
            match result {
                // Still writing: keep it for the next round.
                Ok(()) if conn.has_pending_output() => true,
                // Everything written: FIN after the last byte, then close.
                Ok(()) => {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    conns.remove(fd);
                    false
                }
                // Broken (reset by the client...): count it and close.
                Err(e) => {
                    eprintln!("{}: {e} while shutting down", conn.peer);
                    totals.errors += 1;
                    conns.remove(fd);
                    false
                }
            }
        });
        if closing.is_empty() || Instant::now() >= deadline {
            break;
        }
        // Sleep until some socket has room (EPOLLOUT is armed while output
        // is pending), or the grace period ends.
        match wait_for_events(epoll, &mut events, Some(deadline)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("epoll_wait failed while shutting down: {e}");
                break;
            }
        }
        ready = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT;
    }
    if !conns.is_empty() {
        eprintln!("{} clients did not take their echoes in time", conns.len());
        totals.errors += conns.len() as u64;
        conns.clear();
    }
}

/// One event loop: wait in epoll_wait() for any of its sockets (or the stop
/// eventfd) to be ready, serve the ready ones, repeat. Returns its totals
/// after a graceful shutdown, or an error if epoll itself fails.
fn event_loop(listener: &TcpListener, args: &Args, stop: &EventFd) -> io::Result<Totals> {
    // Its own epoll instance: no other thread ever waits on it.
    let epoll = create_epoll()?;
    register_listener(&epoll, listener)?;
    // Level-triggered and never read: every loop sees the one write.
    epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
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
                // On schedule, not "a second after this report": a late
                // wake-up does not shift every later report. After a long
                // stall, start the schedule again from now.
                let mut next = at + Duration::from_secs(1);
                if next <= Instant::now() {
                    next = Instant::now() + Duration::from_secs(1);
                }
                next_report = Some(next);
            }
        }
        let ready = match wait_for_events(&epoll, &mut events, next_report) {
            Ok(n) => n,
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..ready] {
            if event.data() == STOP {
                shut_down(&epoll, listener, &mut conns, &mut totals, args);
                return Ok(totals);
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
                        ACTIVE.fetch_sub(1, Ordering::SeqCst);
                        eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                    }
                }
                Err(e) => {
                    totals.errors += 1;
                    if let Some(conn) = conns.remove(&fd) {
                        ACTIVE.fetch_sub(1, Ordering::SeqCst);
                        eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                    }
                }
            }
        }
    }
}
