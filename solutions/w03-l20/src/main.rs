//! w03-l20 — C10K.
//!
//! The w03-l19 server, sized for 10,000 connections on one thread. The
//! event loop already scales; what stops it first is the process's limits:
//! every connection is a file descriptor, and the soft RLIMIT_NOFILE is
//! often 1,024. Past it accept() fails with EMFILE, and an edge-triggered
//! listener leaves the rest in the accept queue, unserved. So the server
//! raises its soft limit to the hard limit at start-up, and listens with a
//! backlog big enough for thousands of connects arriving at once.
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.
// BEGIN SOLUTION
// STUB
//
// // TODO: two gaps size the server for 10,000 connections: `raise_fd_limit`
// // (setrlimit) and `set_backlog` (listen again with a long queue). Both are
// // called from `main` already.
// END SOLUTION

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;

use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

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

fn main() -> ExitCode {
    let args = Args::parse();

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

    match event_loop(&listener, &args) {
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
    // BEGIN GAP raise_fd_limit
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
    // STUB
    // // TODO: read (soft, hard) with nix::sys::resource::getrlimit(
    // // Resource::RLIMIT_NOFILE), set the soft limit to the hard one with
    // // setrlimit, and return the new soft limit.
    // todo!("raise the open-file limit")
    // END GAP
}

/// Sets the listener's accept-queue length. Linux lets listen() be called
/// again on a listening socket to change it; the kernel caps it at
/// net.core.somaxconn.
fn set_backlog(listener: &TcpListener, backlog: i32) -> nix::Result<()> {
    // BEGIN GAP set_backlog
    use nix::sys::socket::{listen, Backlog};
    listen(listener, Backlog::new(backlog)?)
    // STUB
    // // TODO: call nix::sys::socket::listen(listener, Backlog::new(backlog)?).
    // todo!("a long accept queue")
    // END GAP
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

/// What serving a connection left it as.
enum State {
    Open,
    /// Finished normally: the client closed and every echo was sent.
    Done,
}

/// Does whatever work `ready` allows on one connection: read, echo every
/// whole frame, write pending output. An Err means this connection is broken
/// and must be closed; it never concerns any other connection.
fn serve(conn: &mut Conn, ready: EpollFlags, max_frame: u32) -> io::Result<State> {
    // EPOLLHUP and EPOLLERR come whether asked for or not, and can come
    // without EPOLLIN; reading is how we learn what happened.
    let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    if ready.intersects(readable) && !conn.peer_closed {
        conn.read_all()?;
        // One read can bring many frames, or the end of one and the start of
        // the next: echo every complete frame, keep the rest for later.
        while let Some(frame) = conn.next_frame(max_frame)? {
            conn.outbuf.extend_from_slice(&frame);
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

/// Blocks until at least one registered socket is ready; fills the front
/// of `events` and returns how many it filled.
fn wait_for_events(epoll: &Epoll, events: &mut [EpollEvent]) -> nix::Result<usize> {
    epoll.wait(events, EpollTimeout::NONE)
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

/// The server: wait in epoll_wait() for any socket to be ready, serve the
/// ready ones, repeat. Returns only if epoll itself fails.
fn event_loop(listener: &TcpListener, args: &Args) -> io::Result<()> {
    let epoll = create_epoll()?;
    register_listener(&epoll, listener)?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); args.max_events.max(1)];
    loop {
        let ready = match wait_for_events(&epoll, &mut events) {
            Ok(n) => n,
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..ready] {
            if event.data() == LISTENER {
                accept_clients(&epoll, listener, &mut conns, args.max_clients);
                continue;
            }
            let fd = event.data() as RawFd;
            // Closed earlier in this same batch: nothing left to serve.
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let result = serve(conn, event.events(), args.max_frame).and_then(|state| {
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
                    if let Some(conn) = conns.remove(&fd) {
                        eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                    }
                }
            }
        }
    }
}
