//! w03-l17 — epoll, level-triggered.
//!
//! The w02 poll() server, moved onto epoll: the sockets are registered once
//! in a kernel-side interest list, and each epoll_wait() returns only the
//! ones that are ready. Level-triggered: epoll_wait() keeps reporting a
//! socket for as long as it stays readable (or writable, when asked).
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.
// BEGIN SOLUTION
// STUB
//
// // TODO: this is your poll() server with poll() taken out. Fill in the five
// // functions of the epoll backend below (create, register the listener,
// // register a client, update a client's interest, wait); `event_loop` and
// // `accept_clients` already call them. Nothing else needs to change.
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

/// The epoll token (event data) of the listener. Clients use their fd
/// number, which is never this large.
const LISTENER: u64 = u64::MAX;

fn main() -> ExitCode {
    let args = Args::parse();

    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
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
        let mut events = EpollFlags::empty();
        if !self.peer_closed {
            events |= EpollFlags::EPOLLIN;
        }
        // Only while output is pending: level-triggered EPOLLOUT on a socket
        // with room in its send buffer fires on every epoll_wait(), so
        // leaving it armed with nothing to write makes the loop spin.
        if self.has_pending_output() {
            events |= EpollFlags::EPOLLOUT;
        }
        events
    }

    /// Reads what the kernel has for this socket (one read of up to
    /// READ_CHUNK bytes) and appends it to `inbuf`. Level-triggered epoll
    /// reports the socket again while more bytes are waiting.
    ///
    /// - Ok(()) with new bytes in `inbuf`, or with nothing new when the
    ///   wake-up was spurious (WouldBlock is not an error).
    /// - Ok(()) with `peer_closed` set at EOF, clean or mid-frame alike: the
    ///   bytes already buffered stay, so the frames they complete are still
    ///   echoed. `has_partial_frame` tells the two cases apart.
    /// - Err(e) when the connection is broken (reset by the client, ...).
    fn read_some(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side.
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                // New bytes: keep them after the ones already buffered.
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                // Nothing there after all; epoll will say when there is.
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
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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
        conn.read_some()?;
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

/// A new epoll instance, closed when the returned value is dropped.
fn create_epoll() -> nix::Result<Epoll> {
    // BEGIN GAP create_epoll
    // CLOEXEC: a program this server ever ran would not inherit the fd.
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
    // STUB
    // // TODO: create the instance with `Epoll::new`, passing
    // // `EpollCreateFlags::EPOLL_CLOEXEC`.
    // todo!("create the epoll instance")
    // END GAP
}

/// Adds the listener to the interest list; its events carry LISTENER.
fn register_listener(epoll: &Epoll, listener: &TcpListener) -> nix::Result<()> {
    // BEGIN GAP register_listener
    epoll.add(listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
    // STUB
    // // TODO: `epoll.add` the listener for EPOLLIN, with LISTENER as the
    // // event's data (`EpollEvent::new(flags, data)`), so the loop can tell
    // // its events from the clients'.
    // todo!("register the listener")
    // END GAP
}

/// Adds a new client to the interest list; its events carry its fd number.
fn register_client(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    // BEGIN GAP register_client
    let interest = conn.interest();
    let token = conn.stream.as_raw_fd() as u64;
    epoll.add(&conn.stream, EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
    // STUB
    // // TODO: `epoll.add` the client's stream for `conn.interest()`, with its
    // // fd number (`as_raw_fd() as u64`) as the data, and remember what was
    // // registered in `conn.registered`.
    // todo!("register a client")
    // END GAP
}

/// Tells epoll about a change in what the connection waits for (EPOLLOUT
/// on while output is pending, EPOLLIN off once the client closed).
fn update_interest(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    // BEGIN GAP update_interest
    let interest = conn.interest();
    if interest == conn.registered {
        return Ok(());
    }
    let token = conn.stream.as_raw_fd() as u64;
    epoll.modify(&conn.stream, &mut EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
    // STUB
    // // TODO: when `conn.interest()` differs from `conn.registered`, call
    // // `epoll.modify` with the new flags and the same fd data, then update
    // // `conn.registered`. Unchanged: do nothing (no syscall).
    // todo!("update a client's interest")
    // END GAP
}

/// Blocks until at least one registered socket is ready; fills the front
/// of `events` and returns how many it filled.
fn wait_for_events(epoll: &Epoll, events: &mut [EpollEvent]) -> nix::Result<usize> {
    // BEGIN GAP wait_for_events
    epoll.wait(events, EpollTimeout::NONE)
    // STUB
    // // TODO: `epoll.wait` on `events` with `EpollTimeout::NONE` (no timeout:
    // // an idle server sleeps in the kernel and uses no CPU).
    // todo!("wait for events")
    // END GAP
}

/// Accepts every connection waiting in the listener's queue and registers
/// each with epoll.
fn accept_clients(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    max_clients: usize,
) {
    // Level-triggered epoll would report the listener again, but draining
    // the queue now saves a trip through epoll_wait() per client.
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
