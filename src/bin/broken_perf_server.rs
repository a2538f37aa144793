//! Deliberately broken servers for the w04-l23 `perf` probe, one per
//! `--bug`. `--bug none` is a correct single-threaded edge-triggered epoll
//! echo server; every other bug differs from it by one thing.
//!
//! Speaks the course's command line (`--port`, `--host`, `listening on`),
//! and accepts and ignores the lessons' other flags.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
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

/// Reads until WouldBlock; false when the connection is broken.
fn read_in(conn: &mut Conn, chunk: &mut [u8]) -> bool {
    match fixture::read_until_blocked(&mut conn.stream, chunk, &mut conn.inbuf) {
        Ok(eof) => {
            conn.closed |= eof;
            true
        }
        Err(_) => false,
    }
}

/// Moves whole frames to `outbuf` and writes what the socket takes; false
/// when the connection is broken.
fn echo_and_flush(conn: &mut Conn, bug: Bug) -> bool {
    let mut start = 0;
    while conn.inbuf.len() - start >= 4 {
        let header = &conn.inbuf[start..start + 4];
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > 65_536 {
            eprintln!("frame of {len} bytes is over the limit; closing");
            return false;
        }
        if conn.inbuf.len() - start < 4 + len {
            break;
        }
        if bug == Bug::SleepPerFrame {
            std::thread::sleep(Duration::from_millis(1));
        }
        conn.outbuf
            .extend_from_slice(&conn.inbuf[start..start + 4 + len]);
        start += 4 + len;
    }
    conn.inbuf.drain(..start);
    fixture::flush(&mut conn.stream, &mut conn.outbuf)
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
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut chunk = vec![0u8; 64 * 1024];
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
                            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
                            epoll.add(&stream, EpollEvent::new(flags, fd as u64))?;
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
            let alive = (conn.closed || read_in(conn, &mut chunk)) && echo_and_flush(conn, bug);
            let finished = !alive || (conn.closed && conn.outbuf.is_empty());
            if finished {
                if let Some(conn) = conns.remove(&fd) {
                    if bug == Bug::LeakFd {
                        let _ = epoll.delete(&conn.stream);
                        leaked.push(conn);
                    }
                }
                continue;
            }
            let want_out = !conn.outbuf.is_empty();
            if want_out != conn.out_armed {
                let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
                if want_out {
                    flags |= EpollFlags::EPOLLOUT;
                }
                epoll.modify(&conn.stream, &mut EpollEvent::new(flags, fd as u64))?;
                conn.out_armed = want_out;
            }
        }
    }
}
