//! Deliberately broken servers for the w04-l23 `perf` probe, one per
//! `--bug`. `--bug none` is a correct, tuned single-threaded edge-triggered
//! epoll echo server — the four costs of the audit lesson removed: one
//! scratch read buffer, a short read ends the draining unless the event
//! carries EPOLLRDHUP, whole frames copied once and the input consumed in
//! one step, buffers a burst grew given back once empty. Every other bug
//! differs from it by one thing; four of them put back exactly one of those
//! costs each.
//!
//! Speaks the course's command line (`--port`, `--host`, `listening on`),
//! and accepts and ignores the lessons' other flags.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, LessonFlags, Listen};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug.
    None,
    /// Sleeps 1 ms before echoing each frame: correct, and many times
    /// slower than the reference (at most ~1,000 frames a second).
    SleepPerFrame,
    /// Never closes a finished connection's socket: one fd (and its
    /// buffers) kept per client, forever.
    LeakFd,
    /// Closes a finished connection's socket but keeps its state: a
    /// 128 KiB per-connection buffer (filled when the client connected)
    /// stays in a list forever, so RSS grows with every client.
    KeepClosedState,
    /// Flips a byte in every 10,000th frame it echoes: correct at a glance,
    /// wrong under load.
    CorruptSomeEchoes,
    /// Cost 1: every event reads through a freshly zeroed 64 KiB buffer
    /// (w03-l22's `let mut chunk = [0u8; READ_CHUNK]` in read_all).
    ZeroedReadBuffer,
    /// Cost 2: every event reads until the read fails with EAGAIN, so a
    /// 64-byte echo costs one read more than it needs.
    ReadUntilEagain,
    /// Cost 3: each frame becomes a Vec of its own, drained from the front
    /// of the input buffer (w03-l22's `next_frame`): the rest of the buffer
    /// moves forward once per frame, quadratic in a pipelined burst.
    DrainPerFrame,
    /// Cost 4: buffers keep whatever capacity a burst grew them to, for
    /// the connection's whole life.
    KeepBuffers,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    lesson: LessonFlags,
}

const LISTENER: u64 = u64::MAX;

/// Bytes one read may bring in.
const READ_CHUNK: usize = 64 * 1024;

/// An empty buffer keeps up to this much capacity.
const KEEP_CAPACITY: usize = 4 * 1024;

/// The per-connection buffer `keep-closed-state` keeps after the close.
const STATE_BYTES: usize = 128 * 1024;

struct Conn {
    stream: TcpStream,
    /// `keep-closed-state`: per-connection state, kept after the close.
    state: Vec<u8>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closed: bool,
    /// The events the connection is registered for right now.
    registered: EpollFlags,
}

impl Conn {
    fn interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::EPOLLET;
        if !self.closed {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if !self.outbuf.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let listener = args.listen.bind()?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4096)?)?;
    listener.set_nonblocking(true)?;
    fixture::announce(&listener)?;
    epoll_loop(&listener, args.bug)
}

/// Reads what the socket holds into `inbuf`; false when the connection is
/// broken. A short read ends it (the queue is empty) unless the event said
/// a FIN is queued (`eof_queued`) or the bug reads on until EAGAIN.
fn read_in(conn: &mut Conn, scratch: &mut [u8], eof_queued: bool, bug: Bug) -> bool {
    // Cost 1 put back: a fresh zeroed buffer per event, not the scratch one.
    let mut fresh;
    let chunk: &mut [u8] = if bug == Bug::ZeroedReadBuffer {
        fresh = [0u8; READ_CHUNK];
        &mut fresh
    } else {
        scratch
    };
    let stop_when_short = !eof_queued && bug != Bug::ReadUntilEagain;
    loop {
        match conn.stream.read(chunk) {
            Ok(0) => {
                conn.closed = true;
                return true;
            }
            Ok(n) => {
                conn.inbuf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() && stop_when_short {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The length of the whole frame at the front of `buf`, if it is all
/// there; Err for an oversize header.
fn whole_frame(buf: &[u8]) -> Result<Option<usize>, usize> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > 65_536 {
        return Err(len);
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// Moves whole frames to `outbuf` and writes what the socket takes; false
/// when the connection is broken.
fn echo_and_flush(conn: &mut Conn, bug: Bug, echoed: &mut u64) -> bool {
    let oversize = |len| {
        eprintln!("frame of {len} bytes is over the limit; closing");
        false
    };
    if bug == Bug::DrainPerFrame {
        // Cost 3 put back: a Vec per frame, drained from the front.
        loop {
            match whole_frame(&conn.inbuf) {
                Ok(Some(total)) => {
                    let frame: Vec<u8> = conn.inbuf.drain(..total).collect();
                    conn.outbuf.extend_from_slice(&frame);
                }
                Ok(None) => break,
                Err(len) => return oversize(len),
            }
        }
    } else {
        let mut start = 0;
        loop {
            match whole_frame(&conn.inbuf[start..]) {
                Ok(Some(total)) => {
                    if bug == Bug::SleepPerFrame {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    conn.outbuf
                        .extend_from_slice(&conn.inbuf[start..start + total]);
                    *echoed += 1;
                    if bug == Bug::CorruptSomeEchoes && echoed.is_multiple_of(10_000) && total > 4 {
                        if let Some(last) = conn.outbuf.last_mut() {
                            *last ^= 0x01;
                        }
                    }
                    start += total;
                }
                Ok(None) => break,
                Err(len) => return oversize(len),
            }
        }
        conn.inbuf.drain(..start);
    }
    fixture::flush(&mut conn.stream, &mut conn.outbuf)
}

/// Gives back the memory of empty buffers a burst grew (unless the bug
/// keeps it).
fn release_idle_buffers(conn: &mut Conn, bug: Bug) {
    if bug == Bug::KeepBuffers {
        return;
    }
    if conn.inbuf.is_empty() && conn.inbuf.capacity() > KEEP_CAPACITY {
        conn.inbuf = Vec::new();
    }
    if conn.outbuf.is_empty() && conn.outbuf.capacity() > KEEP_CAPACITY {
        conn.outbuf = Vec::new();
    }
}

fn epoll_loop(listener: &TcpListener, bug: Bug) -> io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        listener,
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, LISTENER),
    )?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    // `leak-fd` keeps finished connections here instead of closing them.
    let mut leaked: Vec<Conn> = Vec::new();
    // `keep-closed-state` keeps finished connections' state here.
    let mut kept_state: Vec<Vec<u8>> = Vec::new();
    let mut echoed = 0u64;
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut scratch = vec![0u8; READ_CHUNK];
    let hangup = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..n] {
            if event.data() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true)?;
                            let fd = stream.as_raw_fd();
                            let state = if bug == Bug::KeepClosedState {
                                vec![0xa5; STATE_BYTES]
                            } else {
                                Vec::new()
                            };
                            let mut conn = Conn {
                                stream,
                                state,
                                inbuf: Vec::new(),
                                outbuf: Vec::new(),
                                closed: false,
                                registered: EpollFlags::empty(),
                            };
                            conn.registered = conn.interest();
                            epoll.add(&conn.stream, EpollEvent::new(conn.registered, fd as u64))?;
                            conns.insert(fd, conn);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("accept failed: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let fd = event.data() as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let ready = event.events();
            let readable = ready.intersects(EpollFlags::EPOLLIN | hangup);
            let alive = (conn.closed
                || !readable
                || read_in(conn, &mut scratch, ready.intersects(hangup), bug))
                && echo_and_flush(conn, bug, &mut echoed);
            let finished = !alive || (conn.closed && conn.outbuf.is_empty());
            if finished {
                if let Some(mut conn) = conns.remove(&fd) {
                    if bug == Bug::LeakFd {
                        let _ = epoll.delete(&conn.stream);
                        leaked.push(conn);
                    } else if bug == Bug::KeepClosedState {
                        // The socket closes with `conn`; its state stays.
                        kept_state.push(std::mem::take(&mut conn.state));
                    }
                }
                continue;
            }
            release_idle_buffers(conn, bug);
            let interest = conn.interest();
            if interest != conn.registered {
                epoll.modify(&conn.stream, &mut EpollEvent::new(interest, fd as u64))?;
                conn.registered = interest;
            }
        }
    }
}
