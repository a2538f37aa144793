// BEGIN SOLUTION
//! w03-l18 — Edge-triggered: drain until EAGAIN.
//!
//! The w03-l17 epoll server, switched to edge-triggered mode (EPOLLET):
//! epoll_wait() reports a socket when something *new* happens to it (bytes
//! arrive, a connection is queued), not for as long as it stays readable.
//! So every event is served until the socket says WouldBlock (EAGAIN):
//! whatever is left behind is never reported again.
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.
// STUB
// //! w03-l18 — Edge-triggered: drain until EAGAIN.
// //!
// //! The stub gives you the reference w03-l17 server (one thread, one epoll
// //! instance, frames echoed in order), with the listener already
// //! registered edge-triggered. Make the whole server edge-triggered by
// //! writing four functions, each to the contract in its doc comment:
// //! `register_client` and `update_interest` (every client registration,
// //! the first and each change, edge-triggered), `Conn::read_all` (take
// //! in everything a socket has) and `accept_clients` (take in every
// //! client the listener holds).
// //!
// //! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L`
// //! bytes. Each complete frame is sent back unchanged, in order.
// END SOLUTION

use std::collections::HashMap;
use std::io::{self, ErrorKind, Write};
// The trait that gives a TcpStream its read method: the `Conn::read_all`
// you write needs it.
#[allow(unused_imports)]
use std::io::Read;
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
#[allow(dead_code)] // given: the size of the reads your `Conn::read_all` makes
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
    #[allow(dead_code)] // given: kept up to date by the registrations you write
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

    /// What the connection waits for right now: EPOLLIN until the client
    /// has closed its side, EPOLLOUT while output is pending. The trigger
    /// mode is not in it: the registrations add it.
    #[allow(dead_code)] // given: the registrations you write call it
    fn interest(&self) -> EpollFlags {
        let mut events = EpollFlags::empty();
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

    /// Takes in everything the kernel holds for this socket, appending it
    /// to `inbuf`, until the socket has nothing more to give.
    ///
    /// Called when epoll_wait() reported the socket, edge-triggered: the
    /// report was for the bytes (or the end) that arrived since the last
    /// one, and none comes again for what is already there. Whatever this
    /// call leaves in the kernel is stranded until the client sends more,
    /// which it may never do: it waits for its echoes. One read is never
    /// known to be the last, whatever its size, not even a short one: an
    /// end of file may be queued right behind those bytes.
    ///
    /// What each read can say, and what it means:
    /// - bytes: keep them after the ones already buffered, in order, and go
    ///   on reading.
    /// - `Ok(0)`: the client closed its side. Set `peer_closed` and return
    ///   Ok(()): the bytes already buffered stay, so the frames they
    ///   complete are still echoed (`has_partial_frame` tells a clean end
    ///   from one in the middle of a frame).
    /// - WouldBlock: drained. Return Ok(()), the normal end of every call,
    ///   with or without new bytes (a wake-up may find nothing).
    /// - Interrupted: a signal came before any byte; nothing was lost, read
    ///   again.
    /// - any other error (a reset: ECONNRESET): the connection is broken.
    ///   Return it: the caller closes this connection, and only it. Taking
    ///   it for WouldBlock keeps a dead socket open and registered, and no
    ///   event will ever come for it again.
    fn read_all(&mut self) -> io::Result<()> {
        // BEGIN GAP read_all
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
                Err(e) => match e.kind() {
                    // Drained: the next new byte brings the next event.
                    ErrorKind::WouldBlock => return Ok(()),
                    // A signal interrupted the read before any byte: try again.
                    ErrorKind::Interrupted => {}
                    // Reset or another real error: this connection is over.
                    _ => return Err(e),
                },
            }
        }
        // END GAP
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

/// A new epoll instance, closed when the returned value is dropped.
fn create_epoll() -> nix::Result<Epoll> {
    // CLOEXEC: a program this server ever ran would not inherit the fd.
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
}

/// Adds the listener to the interest list, edge-triggered like every
/// client: one event stands for every connection queued since the last
/// one, so `accept_clients` must take them all. Its events carry LISTENER.
fn register_listener(epoll: &Epoll, listener: &TcpListener) -> nix::Result<()> {
    let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
    epoll.add(listener, EpollEvent::new(interest, LISTENER))
}

/// Adds a newly accepted client to the interest list, edge-triggered.
///
/// Receives the epoll instance and the connection, its socket already
/// non-blocking and not registered yet. The registration asks for the
/// events `Conn::interest` names, in edge-triggered mode (EPOLLET), and
/// its data is the socket's fd number: that is the token `event_loop`
/// finds the connection by.
///
/// Afterwards the connection's `registered` field holds exactly what the
/// socket is registered for, so that `update_interest` can tell a change
/// from none.
///
/// - Ok(()): registered. From now on epoll reports this socket once per
///   edge (new bytes, an end of file, room to write once EPOLLOUT is asked
///   for), never again for what it reported already.
/// - Err(errno): the kernel refused (ENOMEM, or ENOSPC at the limit of
///   watches per user). The caller closes this one connection.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn register_client(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    // BEGIN GAP register_client
    // Edge-triggered from the first registration on.
    let mut interest = conn.interest();
    interest.insert(EpollFlags::EPOLLET);
    let token = conn.stream.as_raw_fd() as u64;
    epoll.add(&conn.stream, EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
    // END GAP
}

/// Brings a client's registration up to date with what it waits for now
/// (`Conn::interest`: EPOLLOUT on while output is pending and off once it
/// is written, EPOLLIN off once the client closed its side). Called after
/// every event the connection was served for.
///
/// A registration changed by the kernel's modify operation is replaced
/// whole, mode included: it stays edge-triggered only if the new events
/// say so again. A socket that quietly turns level-triggered keeps being
/// reported for as long as it is readable or writable, and the server
/// never notices.
///
/// When nothing changed (the connection's `registered` field already
/// holds the events it would get), it makes no system call at all: an
/// epoll_ctl() per event per connection is a cost for nothing. Otherwise,
/// afterwards `registered` holds the new events.
///
/// - Ok(()): the registration says what the connection waits for.
/// - Err(errno): the kernel refused. The caller closes this one
///   connection.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn update_interest(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    // BEGIN GAP update_interest
    // Every modify replaces the whole registration: EPOLLET again, or the
    // socket is level-triggered from now on.
    let mut interest = conn.interest();
    interest.insert(EpollFlags::EPOLLET);
    if interest == conn.registered {
        return Ok(());
    }
    let token = conn.stream.as_raw_fd() as u64;
    epoll.modify(&conn.stream, &mut EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
    // END GAP
}

/// Blocks until at least one registered socket is ready; fills the front
/// of `events` and returns how many it filled.
fn wait_for_events(epoll: &Epoll, events: &mut [EpollEvent]) -> nix::Result<usize> {
    epoll.wait(events, EpollTimeout::NONE)
}

/// Takes one accepted client in: at `max_clients` connections already, it
/// is closed at once (the client sees EOF); otherwise its socket is made
/// non-blocking (it does not inherit that from the listener), registered
/// (`register_client`) and added to `conns`. Each failure is logged and
/// closes that client only.
#[allow(dead_code)] // given: your `accept_clients` calls it for each client it accepts
fn admit(
    epoll: &Epoll,
    conns: &mut HashMap<RawFd, Conn>,
    stream: TcpStream,
    peer: SocketAddr,
    max_clients: usize,
) {
    if conns.len() >= max_clients {
        eprintln!("{peer}: refused, {max_clients} clients already connected");
        drop(stream); // accept-then-close: the client sees EOF at once
        return;
    }
    if let Err(e) = stream.set_nonblocking(true) {
        eprintln!("{peer}: cannot make the socket non-blocking: {e}");
        return;
    }
    let mut conn = Conn::new(stream, peer);
    if let Err(e) = register_client(epoll, &mut conn) {
        eprintln!("{peer}: cannot register with epoll: {e}");
        return; // dropping conn closes the socket
    }
    conns.insert(conn.stream.as_raw_fd(), conn);
    eprintln!("{peer}: connected ({} active)", conns.len());
}

/// Takes in every client waiting in the listener's queue.
///
/// Called when epoll_wait() reported the listener. It is registered
/// edge-triggered: that one report stands for every connection queued
/// since the last one, and none of them is reported again. A connection
/// left in the queue waits, connected but never served, until some other
/// client happens to connect.
///
/// Each accepted client goes to `admit`, which refuses, registers and
/// logs it. What each accept can say, and what it means:
/// - a client: admit it, and accept again.
/// - WouldBlock: the queue is empty. Return: the normal end of every
///   call, not an error, and nothing to log.
/// - Interrupted: a signal came first; nothing was lost, accept again.
/// - any other error (ECONNABORTED: a client that gave up while queued;
///   EMFILE or ENFILE: no file descriptor left): log it and return. It
///   never ends the server, and it is not retried at once: at EMFILE the
///   same error comes back for as long as clients wait, and a loop that
///   retries it never gets back to the clients it holds.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn accept_clients(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    max_clients: usize,
) {
    // BEGIN GAP accept_clients
    // Edge-triggered: one event may stand for many queued connections, and
    // none is reported again until a new one arrives. Drain the queue.
    loop {
        match listener.accept() {
            Ok((stream, peer)) => admit(epoll, conns, stream, peer, max_clients),
            Err(e) => match e.kind() {
                // The queue is empty: back to epoll_wait().
                ErrorKind::WouldBlock => return,
                // A signal interrupted accept(): try again.
                ErrorKind::Interrupted => {}
                // ECONNABORTED, EMFILE...: no reason to stop the server.
                // Back to epoll_wait(): at EMFILE the same error would come
                // back at once, for as long as clients wait.
                _ => {
                    eprintln!("accept failed: {e}");
                    return;
                }
            },
        }
    }
    // END GAP
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
