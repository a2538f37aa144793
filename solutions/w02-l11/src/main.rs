//! w02-l11 — Broken pipes.
//!
//! The poll() server of l10, now explicit about the errors of a client that
//! vanished: a write to a reset connection fails with EPIPE or ECONNRESET
//! (Rust ignores SIGPIPE before `main`, so it is an `Err`, not a signal),
//! and so does a read. Those are a normal end of one connection: it is
//! closed quietly and the loop goes on. Anything else is logged and counted
//! as an error, and also ends only that connection.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;

use clap::Parser;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A single-threaded poll() echo server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 lets the kernel choose a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Largest payload accepted, in bytes; a bigger frame closes its connection.
    #[arg(long, default_value_t = 65_536)]
    max_frame: u32,

    /// Most clients held at once; more are accepted and closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,
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
    // poll() says a client is waiting, but it may be gone by the time we
    // call accept(): never let accept() sleep.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("error: cannot make the listener non-blocking: {e}");
        return ExitCode::FAILURE;
    }
    println!("listening on {local}");

    match event_loop(&listener, args.max_frame, args.max_clients) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: poll failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One client connection and what the server remembers about it.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes received but not yet part of a complete frame.
    inbuf: Vec<u8>,
    /// Echoes waiting to be written, oldest first.
    outbuf: Vec<u8>,
    /// The client sent EOF: read no more, finish `outbuf`, then close.
    peer_closed: bool,
}

/// What one visit to a connection did.
enum Progress {
    /// Still open: every whole frame buffered was echoed (or queued).
    Open,
    /// Done: the client closed its side (read returned 0) and every echo
    /// queued before that was written. Remove the connection.
    Closed,
}

impl Conn {
    /// The events poll() should watch for on this connection.
    fn interest(&self) -> PollFlags {
        // After EOF the socket stays readable (every read returns 0 at
        // once): asking for POLLIN then would wake poll() over and over.
        let mut events = if self.peer_closed {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        // Only while output is pending: a socket with room in its send
        // buffer is writable almost all the time, so asking for POLLOUT with
        // nothing to write would wake poll() at once, over and over.
        if !self.outbuf.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        events
    }

    /// Reads what the kernel has for this socket (one read of up to
    /// READ_CHUNK bytes) and appends it to `inbuf`.
    ///
    /// - Ok(Open): new bytes in `inbuf`, or nothing new when the wake-up was
    ///   spurious (WouldBlock is not an error).
    /// - Ok(Closed) at EOF, clean or mid-frame alike: `inbuf` keeps what was
    ///   buffered; `inbuf` empty means a clean end, not empty a frame cut short.
    /// - Err(e) when the connection is broken (reset by the client, ...).
    fn read_some(&mut self) -> io::Result<Progress> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side: nothing more will come.
                Ok(0) => return Ok(Progress::Closed),
                // Keep the bytes: they may be a frame, several, or a piece of one.
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    return Ok(Progress::Open);
                }
                // Nothing there after all: poll() will say when there is.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Progress::Open),
                // A signal interrupted the call: just try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Anything else belongs to this connection only.
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
    ///   report the rest when it arrives.
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

    /// Writes as much of `outbuf` as the socket takes right now.
    ///
    /// - Ok(()) when everything was written, or when the send buffer filled
    ///   up (WouldBlock): the rest stays in `outbuf`, in order, and POLLOUT
    ///   will say when to go on.
    /// - Err(e) when the client is gone (EPIPE, ECONNRESET, ...).
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.outbuf.len() {
                break Ok(());
            }
            match self.stream.write(&self.outbuf[written..]) {
                // The kernel took nothing and never will: treat as broken.
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                // It took `n` bytes, perhaps fewer than offered: go on from there.
                Ok(n) => written += n,
                // The send buffer is full: keep the rest for POLLOUT.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                // A signal interrupted the call: just try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Anything else belongs to this connection only.
                Err(e) => break Err(e),
            }
        };
        // Forget what the kernel took, keeping the unsent tail in order.
        self.outbuf.drain(..written);
        result
    }

    /// Reads if `ready` says so (and the client has not sent EOF yet),
    /// queues every whole frame buffered (one read can bring many frames, or
    /// the end of one and the start of the next), then writes what the
    /// socket takes.
    ///
    /// - Ok(Open): still open, a partial frame (if any) kept in `inbuf`,
    ///   unsent echoes (if any) kept in `outbuf`; after EOF, echoes are
    ///   still being written.
    /// - Ok(Closed): the client sent EOF and every echo is written: close.
    /// - Err(e): broken connection (reset, ...) or oversize frame: close it
    ///   now; nobody is left to read what is pending.
    fn serve(&mut self, ready: PollFlags, max_frame: u32) -> io::Result<Progress> {
        // POLLHUP and POLLERR can come without POLLIN; reading is how we
        // learn what happened (EOF or the error itself).
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if !self.peer_closed && ready.intersects(readable) {
            if let Progress::Closed = self.read_some()? {
                // Every frame completed by earlier reads is queued already;
                // only a frame cut short is lost, and that is the client's doing.
                if !self.inbuf.is_empty() {
                    eprintln!(
                        "{}: closed in the middle of a frame ({} bytes dropped)",
                        self.peer,
                        self.inbuf.len()
                    );
                    self.inbuf.clear();
                }
                // EOF is the end of the client's requests, not of its
                // reading (a half-close): keep the connection until the
                // echoes already queued are out.
                self.peer_closed = true;
            }
            while let Some(frame) = self.next_frame(max_frame)? {
                self.outbuf.extend_from_slice(&frame);
            }
        }
        // Write right away rather than waiting for POLLOUT: the socket is
        // usually writable, and whatever it does not take waits in outbuf.
        if !self.outbuf.is_empty() {
            self.flush()?;
        }
        // Nothing more will come and nothing is left to send: done.
        if self.peer_closed && self.outbuf.is_empty() {
            return Ok(Progress::Closed);
        }
        Ok(Progress::Open)
    }
}

/// Whether `e` means "the client is gone": it reset the connection
/// (ECONNRESET), we wrote after it closed (EPIPE), or the connection was
/// aborted before we got to it (ECONNABORTED). Expected under load, not a
/// server error; either way only that connection ends.
fn is_peer_gone(e: &io::Error) -> bool {
    // BEGIN GAP is_peer_gone
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
    // STUB
    // // TODO: return true for the kinds a vanished client produces:
    // // `ErrorKind::BrokenPipe` (EPIPE), `ConnectionReset` (ECONNRESET) and
    // // `ConnectionAborted` (`matches!(e.kind(), A | B | C)`); false otherwise.
    // todo!("classify {e}")
    // END GAP
}

/// Accepts every connection waiting in the listener's queue; beyond
/// `max_clients` held, each one is closed as soon as it is accepted.
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>, max_clients: usize) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            // The queue is empty: back to poll().
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // A signal interrupted the call: just try again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE...: not a reason to stop the server.
            Err(e) => {
                eprintln!("accept failed: {e}");
                return;
            }
        };
        // At capacity: accept, then close at once, so the client hears "no"
        // (EOF before any echo) and may retry. Leaving it in the queue
        // instead would keep the listener readable: poll() would spin.
        if conns.len() >= max_clients {
            eprintln!(
                "{peer}: refused, {} clients connected (--max-clients {max_clients})",
                conns.len()
            );
            drop(stream);
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        conns.push(Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            peer_closed: false,
        });
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// The server: sleep in poll() until some socket is ready, serve the ready
/// ones, repeat. Returns only if poll() itself fails.
fn event_loop(listener: &TcpListener, max_frame: u32, max_clients: usize) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    // Errors that were not a client leaving (oversize frames, ...).
    let mut errors: u64 = 0;
    loop {
        // Entry 0 is the listener; entry i + 1 is conns[i]. POLLIN on a
        // listener means "a client is waiting to be accepted".
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        for conn in &conns {
            fds.push(PollFd::new(conn.stream.as_fd(), conn.interest()));
        }
        // Sleep until at least one socket is ready: no timeout, so an idle
        // server uses no CPU (a timeout of 0 would make this a busy loop).
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
            if ready[i + 1].is_empty() {
                continue;
            }
            match conns[i].serve(ready[i + 1], max_frame) {
                Ok(Progress::Open) => {}
                Ok(Progress::Closed) => {
                    // Removing the connection drops its TcpStream, which
                    // closes the fd: kept anywhere else, it would leak.
                    let conn = conns.swap_remove(i);
                    eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                }
                // One connection's error ends that connection, never the
                // server: no unwrap(), and no `?` out of this loop.
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    if is_peer_gone(&e) {
                        eprintln!("{}: gone ({e}); closed ({} active)", conn.peer, conns.len());
                    } else {
                        errors += 1;
                        eprintln!(
                            "{}: {e}; closing ({} active, {errors} errors)",
                            conn.peer,
                            conns.len()
                        );
                    }
                }
            }
        }

        // New clients last: `ready` has no entries for them yet.
        if ready[0].contains(PollFlags::POLLIN) {
            accept_clients(listener, &mut conns, max_clients);
        }
    }
}
