//! Deliberately broken epoll echo servers for the w03 probes, one per
//! `--bug`. `--bug none` is a correct single-threaded edge-triggered epoll
//! server (reads and accepts until WouldBlock); every other bug differs from
//! it by one thing.
//!
//! Speaks the course's command line (`--port`, `--host`, `listening on`),
//! and accepts and ignores the lessons' other flags.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, LessonFlags, Listen};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug: edge-triggered, drains reads and accepts.
    None,
    /// Creates an epoll instance but waits in poll() (level-triggered loop).
    PollWithDecoyEpoll,
    /// Correct level-triggered epoll server: no EPOLLET anywhere.
    LevelTriggered,
    /// EPOLLET on clients, but one 4 KiB read per event.
    OneReadPerEvent,
    /// EPOLLET listener that accepts one connection per event.
    AcceptOnce,
    /// Correct edge-triggered server plus an idle second thread.
    TwoThreads,
    /// EPOLLET; stops reading after a read shorter than its buffer, without
    /// asking whether a FIN is queued behind the bytes (no EPOLLRDHUP).
    StopAfterShortRead,
    /// EPOLLET in epoll.add, but not in the epoll.modify that arms and
    /// disarms EPOLLOUT: a client whose output backed up is level-triggered
    /// from then on.
    ModifyDropsEt,
    /// The error arm of a client unwraps: a reset (ECONNRESET / EPIPE)
    /// panics and ends the whole server.
    ResetKillsServer,
    /// The error arm retries the failed write at once, as if it were
    /// EINTR: a reset client with output pending holds the loop forever.
    ResetRetriesForever,
    /// The read's error arm takes every error for WouldBlock: a client that
    /// resets with nothing pending for it is never closed (its fd and its
    /// registration leak; edge-triggered epoll never reports it again).
    ReadErrorIgnored,
    /// The accept drain logs the WouldBlock that ends it as an error: a
    /// line on every wake-up of the listener.
    LogsWouldBlock,
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

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closed: bool,
    out_armed: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = args.listen.bind()?;
    listener.set_nonblocking(true)?;
    fixture::announce(&listener)?;
    match args.bug {
        Bug::PollWithDecoyEpoll => poll_loop(&listener),
        Bug::TwoThreads => {
            std::thread::spawn(|| fixture::park_forever());
            epoll_loop(&listener, args.bug)
        }
        bug => epoll_loop(&listener, bug),
    }
}

/// How far one readiness event makes `read_in` read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// One 4 KiB read.
    Once,
    /// Until a read returns less than 4 KiB (or WouldBlock).
    UntilShort,
    /// Until WouldBlock: the correct edge-triggered way.
    Drain,
}

/// Reads as far as `mode` says; false when the connection is over.
fn read_in(conn: &mut Conn, mode: ReadMode) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                conn.closed = true;
                return true;
            }
            Ok(n) => {
                conn.inbuf.extend_from_slice(&chunk[..n]);
                let short = n < chunk.len();
                if mode == ReadMode::Once || (mode == ReadMode::UntilShort && short) {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Moves whole frames to `outbuf` and writes what the socket takes.
fn echo_and_flush(conn: &mut Conn) -> bool {
    fixture::move_whole_frames(&mut conn.inbuf, &mut conn.outbuf);
    fixture::flush(&mut conn.stream, &mut conn.outbuf)
}

fn epoll_loop(listener: &TcpListener, bug: Bug) -> io::Result<()> {
    let et = if bug == Bug::LevelTriggered {
        EpollFlags::empty()
    } else {
        EpollFlags::EPOLLET
    };
    let read_mode = match bug {
        Bug::OneReadPerEvent => ReadMode::Once,
        Bug::StopAfterShortRead => ReadMode::UntilShort,
        _ => ReadMode::Drain,
    };
    let drain_accepts = bug != Bug::AcceptOnce;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        listener,
        EpollEvent::new(EpollFlags::EPOLLIN | et, LISTENER),
    )?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 1024];
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
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let fd = stream.as_raw_fd();
                            let flags = EpollFlags::EPOLLIN | et;
                            if epoll
                                .add(&stream, EpollEvent::new(flags, fd as u64))
                                .is_ok()
                            {
                                conns.insert(
                                    fd,
                                    Conn {
                                        stream,
                                        inbuf: Vec::new(),
                                        outbuf: Vec::new(),
                                        closed: false,
                                        out_armed: false,
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            if bug == Bug::LogsWouldBlock {
                                eprintln!("accept failed: {e}");
                            }
                            break;
                        }
                    }
                    if !drain_accepts {
                        break;
                    }
                }
                continue;
            }
            let fd = event.data() as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let mut alive = true;
            let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
            if event.events().intersects(readable) && !conn.closed {
                alive = read_in(conn, read_mode) || bug == Bug::ReadErrorIgnored;
            }
            alive = alive && echo_and_flush(conn);
            if !alive {
                // The connection is broken (reset, EPIPE): the error arm.
                match bug {
                    Bug::ResetKillsServer => {
                        panic!("fd {fd}: connection error, unwrapped")
                    }
                    Bug::ResetRetriesForever => {
                        while !conn.outbuf.is_empty() {
                            fixture::flush(&mut conn.stream, &mut conn.outbuf);
                        }
                    }
                    _ => {}
                }
            }
            if alive && conn.closed && conn.outbuf.is_empty() {
                alive = false;
            }
            if alive {
                let want_out = !conn.outbuf.is_empty();
                if want_out != conn.out_armed {
                    let modify_et = if bug == Bug::ModifyDropsEt {
                        EpollFlags::empty()
                    } else {
                        et
                    };
                    let mut flags = EpollFlags::EPOLLIN | modify_et;
                    if want_out {
                        flags |= EpollFlags::EPOLLOUT;
                    }
                    alive = epoll
                        .modify(&conn.stream, &mut EpollEvent::new(flags, fd as u64))
                        .is_ok();
                    conn.out_armed = want_out;
                }
            }
            if !alive {
                conns.remove(&fd);
            }
        }
    }
}

/// A level-triggered poll() loop with an unused epoll instance beside it.
fn poll_loop(listener: &TcpListener) -> io::Result<()> {
    let _decoy = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for conn in &conns {
            let mut flags = PollFlags::POLLIN;
            if !conn.outbuf.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(conn.stream.as_fd(), flags));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        for i in (0..conns.len()).rev() {
            if ready[i + 1].is_empty() {
                continue;
            }
            let conn = &mut conns[i];
            let alive = read_in(conn, ReadMode::Once) && echo_and_flush(conn);
            if !alive || (conn.closed && conn.outbuf.is_empty()) {
                conns.swap_remove(i);
            }
        }
        if ready[0].contains(PollFlags::POLLIN) {
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    conns.push(Conn {
                        stream,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        closed: false,
                        out_armed: false,
                    });
                }
            }
        }
    }
}
