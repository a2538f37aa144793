//! w02-l06 — The poll() loop.
//!
//! One thread serves every client on non-blocking sockets, as in l05, but
//! instead of visiting every socket over and over it sleeps in poll() until
//! the kernel says which ones are ready: the listener (a client is waiting
//! to be accepted) or a client (bytes arrived, or it closed). An idle server
//! now uses no CPU at all. Raw bytes are echoed as they come.

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
}

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

    match event_loop(&listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: poll failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
}

/// What one visit to a connection did.
enum Progress {
    /// Bytes were read and written back, or none were there after all.
    Open,
    /// The client closed its side (read returned 0).
    Closed,
}

impl Conn {
    /// Reads what the client has sent and writes it back.
    ///
    /// - Ok(Open): bytes were echoed, or none were waiting (WouldBlock: a
    ///   spurious wake-up is not an error; poll() will report the next bytes).
    /// - Ok(Closed): clean EOF, or EOF in the middle of a frame alike: bytes
    ///   are echoed as they come, so nothing is left over either way.
    /// - Err(e): the connection is broken (reset by the client, ...).
    fn echo_available(&mut self) -> io::Result<Progress> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side: nothing more will come.
                Ok(0) => return Ok(Progress::Closed),
                // Echo exactly what this read brought (l08 makes the write
                // survive a client that does not read).
                Ok(n) => {
                    self.stream.write_all(&chunk[..n])?;
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
        conns.push(Conn { stream, peer });
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// The server: sleep in poll() until some socket is ready, serve the ready
/// ones, repeat. Returns only if poll() itself fails.
fn event_loop(listener: &TcpListener) -> io::Result<()> {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        // Entry 0 is the listener; entry i + 1 is conns[i]. POLLIN on a
        // listener means "a client is waiting to be accepted".
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        for conn in &conns {
            fds.push(PollFd::new(conn.stream.as_fd(), PollFlags::POLLIN));
        }
        // BEGIN GAP event_loop
        // Sleep until at least one socket is ready: no timeout, so an idle
        // server uses no CPU (a timeout of 0 would make this a busy loop).
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // STUB
        // // TODO: sleep in `poll(&mut fds, PollTimeout::NONE)` until a socket
        // // is ready (never a timeout of 0: that spins). `Err(Errno::EINTR)`:
        // // a signal, `continue`; any other error: `return Err(e.into())`.
        // // Until then no revents are set and nothing below ever runs.
        // END GAP
        // Copy the results out so `fds` stops borrowing the sockets and
        // `conns` can change below.
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);

        // POLLHUP and POLLERR can come without POLLIN; reading is how we
        // learn what happened (EOF or the error itself).
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        // Backwards, so swap_remove only moves connections already served.
        for i in (0..conns.len()).rev() {
            if !ready[i + 1].intersects(readable) {
                continue;
            }
            match conns[i].echo_available() {
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
