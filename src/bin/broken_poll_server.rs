//! Deliberately broken poll() echo servers for the w02 lessons' probes, one
//! bug per `--bug`. `--bug none` is a correct single-threaded poll() server
//! (non-blocking sockets, per-connection read and write buffers, POLLOUT only
//! while output is pending, the listener left unwatched after an accept
//! error such as EMFILE until a connection closes), so every fixture differs
//! from a passing server by exactly one thing.
//!
//! It speaks the course's command line, so the checker starts it with `--exec`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, whole_frame_within, Listen};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug.
    None,
    /// Client sockets stay blocking (poll still says when to read).
    BlockingSockets,
    /// A second, idle thread beside the event loop.
    TwoThreads,
    /// Blocking, one client at a time: the next waits until it leaves.
    Sequential,
    /// poll() with timeout 0: spins while idle.
    BusyLoop,
    /// Half a frame buffered: blocks reading the rest, stalling everyone.
    StallOnPartial,
    /// Echoes at most one frame per read and drops the rest of the buffer.
    OneFramePerRead,
    /// Calls write once and forgets whatever it did not take.
    DropPartialWrite,
    /// Never asks for POLLOUT (an interest that forgets the write buffer):
    /// what write() did not take waits until the client sends again.
    NoPollout,
    /// Asks for POLLOUT at all times: poll() returns at once, for ever.
    PolloutAlways,
    /// A nap loop (poll with a 1 ms timeout) that tries accept() on every
    /// pass and logs its WouldBlock as an error: a stderr line per pass.
    LogsWouldBlock,
    /// Retries every write error but WouldBlock, as if each were EINTR: a
    /// reset client's ECONNRESET, then EPIPE, comes back for ever.
    RetriesWriteErrors,
    /// The listener stays blocking: the accept loop sleeps in accept()
    /// after the last queued client, until one more connects.
    BlockingListener,
    /// A nap loop (poll with a 1 ms timeout) that reads every connection on
    /// every pass and takes the read's WouldBlock for an error: it closes
    /// each connection at its first visit with nothing to read.
    WouldBlockCloses,
    /// A read error (a reset client's ECONNRESET) ends the whole server, as
    /// `?` on a connection's error in the loop would.
    ResetEndsTheServer,
    /// Calls accept() again at once on any error but WouldBlock: at EMFILE
    /// it never gets back to the clients it holds.
    AcceptRetriesErrors,
}

/// How long the listener goes unwatched after an accept error, at most.
const PAUSE_MS: u8 = 100;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    /// Accepted and ignored.
    #[arg(long)]
    max_clients: Option<usize>,
    #[arg(long, default_value_t = 65536)]
    max_frame: u32,
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closed: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = args.listen.bind()?;
    fixture::announce(&listener)?;
    if args.bug == Bug::Sequential {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        return Ok(());
    }
    if args.bug == Bug::TwoThreads {
        std::thread::spawn(|| fixture::park_forever());
    }
    if args.bug != Bug::BlockingListener {
        listener.set_nonblocking(true)?;
    }
    let timeout = match args.bug {
        Bug::BusyLoop => PollTimeout::ZERO,
        Bug::LogsWouldBlock | Bug::WouldBlockCloses => PollTimeout::from(1u8),
        _ => PollTimeout::NONE,
    };
    let mut conns: Vec<Conn> = Vec::new();
    // Out of file descriptors (EMFILE), the queued clients keep the
    // listener readable and poll() would return at once for ever: after an
    // accept error the listener is not watched until a connection closes,
    // or for PAUSE (ENFILE, ECONNABORTED).
    let mut paused_until: Option<Instant> = None;
    loop {
        if paused_until.is_some_and(|until| Instant::now() >= until) {
            paused_until = None;
        }
        let listening = if paused_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        let mut fds = vec![PollFd::new(listener.as_fd(), listening)];
        for c in &conns {
            let mut ev = PollFlags::POLLIN;
            let pending = !c.outbuf.is_empty() && args.bug != Bug::NoPollout;
            if pending || args.bug == Bug::PolloutAlways {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), ev));
        }
        let wait = match paused_until {
            Some(_) if timeout == PollTimeout::NONE => PollTimeout::from(PAUSE_MS),
            _ => timeout,
        };
        match poll(&mut fds, wait) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        for (i, conn) in conns.iter_mut().enumerate() {
            if args.bug == Bug::WouldBlockCloses {
                serve(conn, ready[i + 1] | PollFlags::POLLIN, &args);
            } else if !ready[i + 1].is_empty() {
                serve(conn, ready[i + 1], &args);
            }
        }
        let before = conns.len();
        conns.retain(|c| !c.closed);
        if conns.len() < before {
            paused_until = None;
        }
        if ready[0].contains(PollFlags::POLLIN) || args.bug == Bug::LogsWouldBlock {
            loop {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e)
                        if args.bug == Bug::AcceptRetriesErrors
                            && e.kind() != ErrorKind::WouldBlock =>
                    {
                        continue
                    }
                    Err(e) => {
                        if args.bug == Bug::LogsWouldBlock {
                            eprintln!("accept failed: {e}");
                        }
                        if e.kind() != ErrorKind::WouldBlock {
                            paused_until =
                                Some(Instant::now() + Duration::from_millis(PAUSE_MS.into()));
                        }
                        break;
                    }
                };
                if args.bug != Bug::BlockingSockets {
                    let _ = stream.set_nonblocking(true);
                }
                conns.push(Conn {
                    stream,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    closed: false,
                });
            }
        }
    }
}

fn serve(conn: &mut Conn, ready: PollFlags, args: &Args) {
    if ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
        let mut chunk = [0u8; 65536];
        match conn.stream.read(&mut chunk) {
            Ok(0) => conn.closed = true,
            Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock && args.bug != Bug::WouldBlockCloses => {}
            Err(e) if args.bug == Bug::ResetEndsTheServer => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            Err(_) => conn.closed = true,
        }
        if args.bug == Bug::StallOnPartial && !conn.inbuf.is_empty() {
            // Wait (blocking) for the rest of the frame.
            let _ = conn.stream.set_nonblocking(false);
            while !conn.closed
                && matches!(whole_frame_within(&conn.inbuf, args.max_frame), Ok(None))
            {
                match conn.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => conn.closed = true,
                    Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = conn.stream.set_nonblocking(true);
        }
        loop {
            match whole_frame_within(&conn.inbuf, args.max_frame) {
                Ok(Some(total)) => {
                    conn.outbuf.extend(conn.inbuf.drain(..total));
                    if args.bug == Bug::OneFramePerRead {
                        conn.inbuf.clear();
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    conn.closed = true;
                    return;
                }
            }
        }
    }
    while !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(n) if args.bug == Bug::DropPartialWrite => {
                let _ = n;
                conn.outbuf.clear();
            }
            Ok(n) => {
                conn.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if args.bug == Bug::DropPartialWrite {
                    conn.outbuf.clear();
                }
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted || args.bug == Bug::RetriesWriteErrors => {
            }
            Err(_) => {
                conn.closed = true;
                break;
            }
        }
    }
}
