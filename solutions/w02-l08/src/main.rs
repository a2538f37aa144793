//! w02-l08 — Partial writes and POLLOUT.
//!
//! The framed poll() server of l07, now safe against clients that do not
//! read: a write on a non-blocking socket takes only what fits in the
//! kernel's send buffer. Each connection keeps its own write buffer of
//! echoes not yet sent, and asks poll() for POLLOUT only while that buffer
//! holds something.

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

    match event_loop(&listener, args.max_frame) {
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
}

/// What one visit to a connection did.
enum Progress {
    /// Still open: every whole frame buffered was echoed.
    Open,
    /// The client closed its side (read returned 0).
    Closed,
}

impl Conn {
    /// The events poll() should watch for on this connection.
    fn interest(&self) -> PollFlags {
        let mut events = PollFlags::POLLIN;
        // BEGIN GAP interest
        // Only while output is pending: a socket with room in its send
        // buffer is writable almost all the time, so asking for POLLOUT with
        // nothing to write would wake poll() at once, over and over.
        if !self.outbuf.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        // STUB
        // // TODO: add POLLOUT to `events` while `outbuf` is not empty, and only
        // // then (an empty send buffer is always writable: poll() would spin).
        // END GAP
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
                // BEGIN GAP flush
                // The send buffer is full: keep the rest for POLLOUT.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                // STUB
                // // TODO: `ErrorKind::WouldBlock` means the send buffer is
                // // full: `break Ok(())`, keeping the rest for POLLOUT.
                // END GAP
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

    /// Reads if `ready` says so, queues every whole frame buffered (one
    /// read can bring many frames, or the end of one and the start of the
    /// next), then writes what the socket takes.
    ///
    /// - Ok(Open): still open, a partial frame (if any) kept in `inbuf`,
    ///   unsent echoes (if any) kept in `outbuf`.
    /// - Ok(Closed): the client closed; echoes still in `outbuf` are dropped
    ///   with the socket (lesson l09 finishes them before closing).
    /// - Err(e): broken connection or oversize frame: close it.
    fn serve(&mut self, ready: PollFlags, max_frame: u32) -> io::Result<Progress> {
        // POLLHUP and POLLERR can come without POLLIN; reading is how we
        // learn what happened (EOF or the error itself).
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if ready.intersects(readable) {
            if let Progress::Closed = self.read_some()? {
                // Every frame completed by earlier reads was echoed already.
                if !self.inbuf.is_empty() {
                    eprintln!(
                        "{}: closed in the middle of a frame ({} bytes dropped)",
                        self.peer,
                        self.inbuf.len()
                    );
                }
                return Ok(Progress::Closed);
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
        Ok(Progress::Open)
    }
}

/// Accepts every connection waiting in the listener's queue.
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>) {
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
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        conns.push(Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        });
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// The server: sleep in poll() until some socket is ready, serve the ready
/// ones, repeat. Returns only if poll() itself fails.
fn event_loop(listener: &TcpListener, max_frame: u32) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
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
                    let conn = conns.swap_remove(i); // dropping it closes the socket
                    eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                }
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                }
            }
        }

        // New clients last: `ready` has no entries for them yet.
        if ready[0].contains(PollFlags::POLLIN) {
            accept_clients(listener, &mut conns);
        }
    }
}
