//! w02-l14 — Idle timeouts.
//!
//! The poll() echo server of w02-l13 (non-blocking sockets, read and write
//! buffers per connection, `--max-clients`, `--max-pending`, bad input
//! logged and closed), plus `--idle-timeout SECS`: a client that neither
//! sends nor takes any bytes for that long is closed. poll() sleeps until
//! the nearest such deadline, never longer and never in a busy loop.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A single-threaded poll() echo server for length-prefixed frames.
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

    /// Most unsent echo bytes kept for one client; at this limit the server
    /// stops reading from that client until they drain (4 MiB).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_pending: usize,

    /// Close a client after this many seconds without traffic (default:
    /// never).
    #[arg(long)]
    idle_timeout: Option<u64>,
}

/// Bytes in a frame header: the payload length, big-endian.
const HEADER_LEN: usize = 4;

/// How much one read() may bring in at a time.
const READ_CHUNK: usize = 64 * 1024;

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
            eprintln!("error: poll failed: {e}");
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
    /// The last time bytes moved on this connection, either way.
    last_active: Instant,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            peer_closed: false,
            last_active: Instant::now(),
        }
    }

    /// The events poll() should watch for on this connection.
    fn interest(&self, max_pending: usize) -> PollFlags {
        let mut events = PollFlags::empty();
        if self.wants_input(max_pending) {
            events |= PollFlags::POLLIN;
        }
        // Only while output is pending: an empty socket send buffer is
        // writable almost all the time, so asking for POLLOUT with nothing to
        // write would wake poll() at once, over and over.
        if self.has_pending_output() {
            events |= PollFlags::POLLOUT;
        }
        events
    }

    /// True while the server should read from this client: it has not
    /// closed its side, and its unsent echoes are under `max_pending`.
    /// False is not an error: reading resumes once `outbuf` drains.
    fn wants_input(&self, max_pending: usize) -> bool {
        if self.peer_closed {
            return false;
        }
        // Backpressure: every frame read becomes an echo in `outbuf`. A
        // client that sends without reading would make it grow without
        // bound, so leave its bytes in the kernel's buffers instead: they
        // fill up, and TCP makes the client wait.
        if self.outbuf.len() >= max_pending {
            return false;
        }
        true
    }

    /// Reads what the kernel has for this socket (one read of up to
    /// READ_CHUNK bytes) and appends it to `inbuf`.
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
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_active = Instant::now();
                    return Ok(());
                }
                // Nothing there after all; poll() will say when there is.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the next complete frame (header and payload) out of `inbuf`.
    ///
    /// - Ok(Some(frame)): a whole frame, removed from the front of `inbuf`;
    ///   whatever follows it (more frames, or the start of one) stays.
    /// - Ok(None): no whole frame is buffered yet (fewer than 4 header bytes,
    ///   or part of the payload still in flight). Not an error: poll() will
    ///   report the rest when it arrives. At EOF this means a clean end if
    ///   `inbuf` is empty and a frame cut short if it is not.
    /// - Err(InvalidData): the header announces more than `max_frame` bytes
    ///   (an oversize frame or garbage); the message quotes the header.
    fn next_frame(&mut self, max_frame: u32) -> io::Result<Option<Vec<u8>>> {
        if self.inbuf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = [self.inbuf[0], self.inbuf[1], self.inbuf[2], self.inbuf[3]];
        let len = u32::from_be_bytes(header);
        // Never trust a length from the wire: waiting for 4 GiB that will
        // never come would keep this connection (and its buffer) forever.
        // Garbage lands here too: random bytes decode to a huge length.
        if len > max_frame {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "bad input: header {:02x} {:02x} {:02x} {:02x} announces {len} bytes, more than --max-frame {max_frame}",
                    header[0], header[1], header[2], header[3]
                ),
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
    ///   filled up (WouldBlock): the rest stays in `outbuf` and POLLOUT will
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
                Ok(n) => {
                    written += n;
                    // A client taking its echoes is not idle either.
                    self.last_active = Instant::now();
                }
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
fn serve(conn: &mut Conn, ready: PollFlags, args: &Args) -> io::Result<State> {
    // POLLHUP and POLLERR can come without POLLIN; reading is how we learn
    // what happened (EOF or the error itself). A paused client is not read,
    // whatever poll() says: its bytes wait in the kernel.
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    if ready.intersects(readable) && conn.wants_input(args.max_pending) {
        conn.read_some()?;
        // One read can bring many frames, or the end of one and the start of
        // the next: echo every complete frame, keep the rest for later.
        while let Some(frame) = conn.next_frame(args.max_frame)? {
            conn.outbuf.extend_from_slice(&frame);
        }
    }
    // Write right away rather than waiting for POLLOUT: the socket is usually
    // writable, and whatever it does not take waits in outbuf.
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

/// Accepts every connection waiting in the listener's queue.
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>, max_clients: usize) {
    // Level-triggered poll() would report the listener again, but draining
    // the queue now saves a trip through poll() per client.
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE...: no reason to stop the server. Come
            // back on the next poll() wake-up.
            Err(e) => {
                eprintln!("accept failed: {e}");
                return;
            }
        };
        // Count the live connections themselves: a separate counter would
        // have to be kept right on every path that closes a connection.
        if conns.len() >= max_clients {
            eprintln!("{peer}: refused, {max_clients} clients already connected");
            drop(stream); // accept-then-close: the client sees EOF at once
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        conns.push(Conn::new(stream, peer));
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// How long poll() may sleep: until the nearest idle deadline, or forever
/// when there is no timeout or no client. Rounded up to whole milliseconds,
/// so poll() never wakes a hair early and goes round with nothing to do.
fn poll_timeout(conns: &[Conn], idle_timeout: Option<Duration>) -> PollTimeout {
    let Some(limit) = idle_timeout else {
        return PollTimeout::NONE;
    };
    // BEGIN GAP poll_timeout
    let Some(nearest) = conns.iter().map(|conn| conn.last_active + limit).min() else {
        return PollTimeout::NONE;
    };
    let left = nearest.saturating_duration_since(Instant::now());
    let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(millis).unwrap_or(PollTimeout::NONE)
    // STUB
    // // TODO: the nearest deadline is the smallest `last_active + limit`
    // // over `conns` (none: PollTimeout::NONE). Return the time left until it,
    // // rounded up to whole milliseconds (`PollTimeout::try_from(ms)`).
    // todo!()
    // END GAP
}

/// Closes every connection with no traffic for `idle_timeout` or longer.
fn close_idle(conns: &mut Vec<Conn>, idle_timeout: Option<Duration>) {
    let Some(limit) = idle_timeout else {
        return;
    };
    // BEGIN GAP close_idle
    let now = Instant::now();
    // retain keeps the others in place; dropping a Conn closes its socket.
    conns.retain(|conn| {
        let idle = now.duration_since(conn.last_active);
        if idle < limit {
            return true;
        }
        eprintln!(
            "{}: idle for {:.1} s (--idle-timeout {} s); closing",
            conn.peer,
            idle.as_secs_f64(),
            limit.as_secs()
        );
        false
    });
    // STUB
    // // TODO: close (drop) every connection whose `last_active` is `limit` or
    // // more in the past, with a log line on stderr naming its peer; keep the
    // // others (`conns.retain(...)`).
    // todo!()
    // END GAP
}

/// The server: wait in poll() for any socket to be ready, serve the ready
/// ones, repeat. Returns only if poll() itself fails.
fn event_loop(listener: &TcpListener, args: &Args) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    let idle_timeout = args.idle_timeout.map(Duration::from_secs);
    loop {
        // Entry 0 is the listener; entry i + 1 is conns[i].
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        for conn in &conns {
            fds.push(PollFd::new(
                conn.stream.as_fd(),
                conn.interest(args.max_pending),
            ));
        }
        // Sleep until something happens or the nearest client times out.
        match poll(&mut fds, poll_timeout(&conns, idle_timeout)) {
            Ok(_) => {}
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // Copy the results out so `fds` stops borrowing the sockets and
        // `conns` can change below.
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);

        // Backwards, so swap_remove only moves connections already served.
        for i in (0..conns.len()).rev() {
            let events = ready[i + 1];
            if events.is_empty() {
                continue;
            }
            match serve(&mut conns[i], events, args) {
                Ok(State::Open) => {}
                Ok(State::Done) => {
                    let conn = conns.swap_remove(i); // dropping it closes the socket
                    eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                }
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                }
            }
        }

        // Whether poll() woke for traffic or for a deadline, close whoever
        // has been quiet for too long.
        close_idle(&mut conns, idle_timeout);

        // New clients last: `ready` has no entries for them yet.
        if ready[0].contains(PollFlags::POLLIN) {
            accept_clients(listener, &mut conns, args.max_clients);
        }
    }
}
