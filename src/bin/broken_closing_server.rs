//! Deliberately broken poll() echo servers for the closing track (w02-l09
//! closing cleanly, l10 `--max-clients`, l11 broken pipes), one bug per
//! `--bug`. `--bug none` is a correct single-threaded poll() server that
//! finishes pending echoes after a client's EOF, drops every closed socket,
//! refuses clients beyond `--max-clients` (accept, then close at once) and
//! closes only the connection an I/O error belongs to; every fixture differs
//! from it by exactly one thing.
//!
//! It speaks the course's command line, so the checker starts it with `--exec`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, whole_frame_within, Listen};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug.
    None,
    /// `unwrap()` on read errors: a client's reset (ECONNRESET) kills the server.
    UnwrapRead,
    /// Closes at EOF at once, dropping echoes not yet written (the l08 server).
    DropOnEof,
    /// Shuts a finished connection down but keeps its socket: one fd leaks per client.
    LeakFds,
    /// Ignores `--max-clients`: holds and serves everyone.
    NoLimit,
    /// After refusing one client, never accepts again (the listener is dropped from poll).
    StopAfterRefuse,
    /// Counts refused clients as held, forever: once clients were refused, no recovery.
    NoRecovery,
    /// `unwrap()` on write errors: EPIPE / ECONNRESET mid-echo kills the server.
    UnwrapWrite,
    /// Calls accept() again at once on any error but WouldBlock: at EMFILE
    /// the accept loop never returns, and nobody is served.
    AcceptRetriesEmfile,
    /// Stops watching the listener when accept() fails (EMFILE), and never
    /// watches it again: no one is accepted once file descriptors are free.
    EmfileStopsAccepting,
    /// Ends the server on an accept() error (`listener.accept()?`): EMFILE
    /// kills it.
    ExitOnEmfile,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,
    #[arg(long, default_value_t = 65536)]
    max_frame: u32,
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// The client sent EOF: no more reading, finish `outbuf`, then close.
    peer_closed: bool,
    /// Done: remove it (and close its socket).
    finished: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = args.listen.bind()?;
    listener.set_nonblocking(true)?;
    fixture::announce(&listener)?;
    let mut conns: Vec<Conn> = Vec::new();
    // Sockets a leaky server forgot to close.
    let mut leaked: Vec<TcpStream> = Vec::new();
    let mut refused = 0usize;
    let mut listening = true;
    loop {
        let mut fds = vec![PollFd::new(
            listener.as_fd(),
            if listening {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        )];
        for c in &conns {
            let mut ev = if c.peer_closed {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            if !c.outbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), ev));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        for (i, conn) in conns.iter_mut().enumerate() {
            if !ready[i + 1].is_empty() {
                serve(conn, ready[i + 1], &args);
            }
        }
        for conn in std::mem::take(&mut conns) {
            match (conn.finished, args.bug) {
                (false, _) => conns.push(conn),
                (true, Bug::LeakFds) => {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    leaked.push(conn.stream);
                }
                (true, _) => {}
            }
        }
        if ready[0].contains(PollFlags::POLLIN) {
            loop {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) if args.bug == Bug::AcceptRetriesEmfile => continue,
                    Err(_) if args.bug == Bug::EmfileStopsAccepting => {
                        listening = false;
                        break;
                    }
                    Err(e) if args.bug == Bug::ExitOnEmfile => return Err(e),
                    Err(_) => break,
                };
                let held = match args.bug {
                    Bug::NoLimit => 0,
                    Bug::NoRecovery => conns.len() + refused,
                    _ => conns.len(),
                };
                if held >= args.max_clients {
                    drop(stream);
                    refused += 1;
                    eprintln!(
                        "refused a client: {held} held (--max-clients {})",
                        args.max_clients
                    );
                    if args.bug == Bug::StopAfterRefuse {
                        listening = false;
                        break;
                    }
                    continue;
                }
                let _ = stream.set_nonblocking(true);
                conns.push(Conn {
                    stream,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    peer_closed: false,
                    finished: false,
                });
            }
        }
    }
}

fn serve(conn: &mut Conn, ready: PollFlags, args: &Args) {
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    if !conn.peer_closed && ready.intersects(readable) {
        let mut chunk = [0u8; 65536];
        let read = conn.stream.read(&mut chunk);
        let read = match read {
            Err(e) if args.bug == Bug::UnwrapRead && e.kind() != ErrorKind::WouldBlock => {
                panic!("read failed: {e}")
            }
            other => other,
        };
        match read {
            Ok(0) if args.bug == Bug::DropOnEof => conn.finished = true,
            Ok(0) => conn.peer_closed = true,
            Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => conn.finished = true,
        }
        loop {
            match whole_frame_within(&conn.inbuf, args.max_frame) {
                Ok(Some(total)) => conn.outbuf.extend(conn.inbuf.drain(..total)),
                Ok(None) => break,
                Err(_) => {
                    conn.finished = true;
                    return;
                }
            }
        }
    }
    while !conn.finished && !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(n) => {
                conn.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if args.bug == Bug::UnwrapWrite => panic!("write failed: {e}"),
            Err(_) => conn.finished = true,
        }
    }
    if conn.peer_closed && conn.outbuf.is_empty() {
        conn.finished = true;
    }
}
