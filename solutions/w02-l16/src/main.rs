//! w02-l16 — Stress test run: 50 clients × 100 frames.
//!
//! A single-threaded echo server built on poll(): every socket is
//! non-blocking, one poll() call waits for all of them, and each connection
//! keeps its own read buffer (to reassemble frames) and write buffer (to
// BEGIN SOLUTION
//! finish partial writes). This is the server the w02 lessons built, under
//! the load of the stress test.
// STUB
// //! finish partial writes). It compiles, it echoes a frame sent by hand, and
// //! it falls over under the stress test.
// END SOLUTION
//!
//! Wire protocol: a frame is a 4-byte big-endian length `L`, then `L` bytes.
//! Each complete frame is sent back unchanged, in order.
// BEGIN SOLUTION
// STUB
//
// // TODO: find and fix the load bugs. There are three, one of each kind:
// // capacity (clients refused while the server is far from --max-clients),
// // framing (echoes lost when frames arrive together), and a blocking
// // assumption inside the poll loop (connections dropped when a frame arrives
// // in pieces). Don't read the code looking for them first: run the stress
// // ladder (1x1, 1x10, 5x10, 10x100, 50x100), take the first rung that fails,
// // and let its failure and this server's stderr point you at the code.
// END SOLUTION

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;

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
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            peer_closed: false,
        }
    }

    /// The events poll() should watch for on this connection.
    fn interest(&self) -> PollFlags {
        let mut events = PollFlags::empty();
        if !self.peer_closed {
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
    // BEGIN SOLUTION
    /// - Ok(Some(frame)): a whole frame, removed from the front of `inbuf`;
    ///   whatever follows it (more frames, or the start of one) stays.
    /// - Ok(None): no whole frame is buffered yet (fewer than 4 header bytes,
    ///   or part of the payload still in flight). Not an error: poll() will
    ///   report the rest when it arrives. At EOF this means a clean end if
    ///   `inbuf` is empty and a frame cut short if it is not.
    // STUB
    // /// - Ok(Some(frame)): a whole frame; `inbuf` is emptied.
    // /// - Ok(None): fewer than 4 header bytes are buffered. Not an error:
    // ///   poll() will report the rest when it arrives. At EOF this means a
    // ///   clean end if `inbuf` is empty and a frame cut short if it is not.
    // END SOLUTION
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
        // BEGIN GAP next_frame
        if self.inbuf.len() < total {
            return Ok(None);
            // STUB
            // let mut frame = vec![0u8; total];
            // let have = self.inbuf.len().min(total);
            // frame[..have].copy_from_slice(&self.inbuf[..have]);
            // if have < total {
            //     // The header is here, so the payload is already on its way:
            //     // fetch the rest of it straight from the socket.
            //     self.stream.read_exact(&mut frame[have..])?;
            // END GAP
        }
        // BEGIN GAP next_frame
        // Remove exactly one frame; the bytes after it are the next frames.
        Ok(Some(self.inbuf.drain(..total).collect()))
        // STUB
        // self.inbuf.clear();
        // Ok(Some(frame))
        // END GAP
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
fn serve(conn: &mut Conn, ready: PollFlags, max_frame: u32) -> io::Result<State> {
    // POLLHUP and POLLERR can come without POLLIN; reading is how we learn
    // what happened (EOF or the error itself).
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    if ready.intersects(readable) && !conn.peer_closed {
        conn.read_some()?;
        // One read can bring many frames, or the end of one and the start of
        // the next: echo every complete frame, keep the rest for later.
        while let Some(frame) = conn.next_frame(max_frame)? {
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
// BEGIN SOLUTION
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>, max_clients: usize) {
    // STUB
    // fn accept_clients(
    //     listener: &TcpListener,
    //     conns: &mut Vec<Conn>,
    //     active: &mut usize,
    //     max_clients: usize,
    // ) {
    // END SOLUTION
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
        // BEGIN GAP accept_clients
        // Count the live connections themselves: a separate counter would
        // have to be kept right on every path that closes a connection.
        if conns.len() >= max_clients {
            // STUB
            // if *active >= max_clients {
            // END GAP
            eprintln!("{peer}: refused, {max_clients} clients already connected");
            drop(stream); // accept-then-close: the client sees EOF at once
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        conns.push(Conn::new(stream, peer));
        // BEGIN GAP accept_clients
        eprintln!("{peer}: connected ({} active)", conns.len());
        // STUB
        // *active += 1;
        // eprintln!("{peer}: connected ({active} active)");
        // END GAP
    }
}

/// The server: wait in poll() for any socket to be ready, serve the ready
/// ones, repeat. Returns only if poll() itself fails.
fn event_loop(listener: &TcpListener, args: &Args) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    // BEGIN GAP event_loop
    // STUB
    // let mut active = 0;
    // END GAP
    loop {
        // Entry 0 is the listener; entry i + 1 is conns[i].
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        for conn in &conns {
            fds.push(PollFd::new(conn.stream.as_fd(), conn.interest()));
        }
        match poll(&mut fds, PollTimeout::NONE) {
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
            match serve(&mut conns[i], events, args.max_frame) {
                Ok(State::Open) => {}
                Ok(State::Done) => {
                    let conn = conns.swap_remove(i); // dropping it closes the socket
                                                     // BEGIN GAP event_loop
                    eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                    // STUB
                    // eprintln!("{}: closed ({active} active)", conn.peer);
                    // END GAP
                }
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    // BEGIN GAP event_loop
                    eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                    // STUB
                    // eprintln!("{}: {e}; closing ({active} active)", conn.peer);
                    // END GAP
                }
            }
        }

        // New clients last: `ready` has no entries for them yet.
        if ready[0].contains(PollFlags::POLLIN) {
            // BEGIN GAP event_loop
            accept_clients(listener, &mut conns, args.max_clients);
            // STUB
            // accept_clients(listener, &mut conns, &mut active, args.max_clients);
            // END GAP
        }
    }
}
