//! Deliberately broken servers for the w04 production probes, one per
//! `--bug`. `--bug none` is a correct echo server running `--threads N`
//! edge-triggered epoll loops, each with its own SO_REUSEPORT listener and
//! epoll instance; every other bug differs from it by one thing.
//!
//! The `broadcast*`, `slow-subscriber-stalls` and `echo-to-sender` bugs
//! pass each frame to the other clients instead of echoing it (w04-l26).
//! With `--root DIR` it speaks HTTP/1.1 instead (w04-l25): GET and HEAD of
//! files under DIR, keep-alive, Content-Length.
//!
//! Speaks the course's command line (`--port`, `--host`, `listening on`),
//! and accepts and ignores the lessons' other flags.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, LessonFlags, Listen};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug: N loops, each accepting from its own listener.
    None,
    /// N threads, N epoll instances and N listeners, but every listener is
    /// registered in the first loop's epoll: one thread does all the work.
    OneLoopDoesAll,
    /// HTTP: closes the connection after every response (without saying
    /// `Connection: close`).
    KeepaliveBroken,
    /// HTTP: responses without a Content-Length header.
    NoContentLength,
    /// No bug, broadcast: each frame to every other client, a subscriber
    /// over 4 MiB pending disconnected.
    BroadcastNone,
    /// Broadcast with a blocking write_all to each subscriber in turn: one
    /// that never reads stalls everyone.
    SlowSubscriberStalls,
    /// Broadcast that also sends each frame back to its sender.
    EchoToSender,
}

impl Bug {
    fn broadcasts(self) -> bool {
        matches!(
            self,
            Bug::BroadcastNone | Bug::SlowSubscriberStalls | Bug::EchoToSender
        )
    }
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    root: Option<String>,
    #[command(flatten)]
    lesson: LessonFlags,
}

/// Listener tokens are `LISTENER_BASE + index`; clients use their fd.
const LISTENER_BASE: u64 = 1 << 40;

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    closing: bool,
}

/// What every loop needs to know besides its sockets.
#[derive(Clone)]
struct Mode {
    bug: Bug,
    /// Some: speak HTTP, serving this directory.
    root: Option<std::path::PathBuf>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let n = args.threads.max(1);
    let mut addr: SocketAddr = (args.listen.host.as_str(), args.listen.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let mut listeners = Vec::new();
    for _ in 0..n {
        let listener = bind_reuseport(addr)?;
        addr = listener.local_addr()?;
        listeners.push(Arc::new(listener));
    }
    fixture::announce(&listeners[0])?;
    let mut epolls = Vec::new();
    for _ in 0..n {
        epolls.push(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
    }
    for (index, listener) in listeners.iter().enumerate() {
        let owner = match args.bug {
            Bug::OneLoopDoesAll => 0,
            _ => index,
        };
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        epolls[owner].add(
            listener.as_ref(),
            EpollEvent::new(interest, LISTENER_BASE + index as u64),
        )?;
    }
    let mut handles = Vec::new();
    for epoll in epolls {
        let listeners = listeners.clone();
        let mode = Mode {
            bug: args.bug,
            root: args.root.clone().map(std::path::PathBuf::from),
        };
        handles.push(std::thread::spawn(move || {
            event_loop(epoll, listeners, mode)
        }));
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, socket::Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

fn event_loop(epoll: Epoll, listeners: Vec<Arc<TcpListener>>, mode: Mode) {
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 1024];
    loop {
        let ready = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        for event in &events[..ready] {
            let token = event.data();
            if token >= LISTENER_BASE {
                let listener = &listeners[(token - LISTENER_BASE) as usize];
                accept_all(&epoll, listener, &mut conns);
                continue;
            }
            let fd = token as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let mut frames = Vec::new();
            if !serve(conn, &mode, &mut frames) {
                conns.remove(&fd);
            }
            if !frames.is_empty() {
                fan_out(&mut conns, fd, &frames, mode.bug);
            }
        }
    }
}

fn accept_all(epoll: &Epoll, listener: &TcpListener, conns: &mut HashMap<RawFd, Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let fd = stream.as_raw_fd();
                let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
                if epoll
                    .add(&stream, EpollEvent::new(interest, fd as u64))
                    .is_ok()
                {
                    conns.insert(
                        fd,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            closing: false,
                        },
                    );
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Reads until WouldBlock, echoes every whole frame, writes what it can.
/// False when the connection is over.
fn serve(conn: &mut Conn, mode: &Mode, frames: &mut Vec<Vec<u8>>) -> bool {
    let mut inbuf = std::mem::take(&mut conn.inbuf);
    let mut chunk = [0u8; 65536];
    let mut open = true;
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    match &mode.root {
        Some(root) => {
            while let Some(end) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = inbuf.drain(..end + 4).collect();
                let (response, close) = http_response(&head, root, mode.bug);
                conn.out.extend_from_slice(&response);
                if close {
                    conn.closing = true;
                    inbuf.clear();
                    break;
                }
            }
            conn.inbuf = inbuf;
        }
        None if mode.bug.broadcasts() => {
            while let Some(total) = fixture::whole_frame(&inbuf) {
                frames.push(inbuf.drain(..total).collect());
            }
            conn.inbuf = inbuf;
        }
        // Echoing bytes as they come keeps frames in order and whole.
        None => conn.out.extend_from_slice(&inbuf),
    }
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(0) => return false,
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if conn.closing && conn.out.is_empty() {
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        return false;
    }
    open || !conn.out.is_empty()
}

/// Passes `frames` from `sender` to the other connections.
fn fan_out(conns: &mut HashMap<RawFd, Conn>, sender: RawFd, frames: &[Vec<u8>], bug: Bug) {
    let mut dropped = Vec::new();
    for (&fd, conn) in conns.iter_mut() {
        if fd == sender && bug != Bug::EchoToSender {
            continue;
        }
        for frame in frames {
            conn.out.extend_from_slice(frame);
        }
        if bug == Bug::SlowSubscriberStalls {
            // The bug: wait until this subscriber takes everything.
            let _ = conn.stream.set_nonblocking(false);
            let ok = conn.stream.write_all(&conn.out).is_ok();
            let _ = conn.stream.set_nonblocking(true);
            conn.out.clear();
            if !ok {
                dropped.push(fd);
            }
            continue;
        }
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(0) => break,
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if conn.out.len() > 4 * 1024 * 1024 {
            dropped.push(fd);
        }
    }
    for fd in dropped {
        conns.remove(&fd);
    }
}

/// The response to one request head, and whether to close after it.
fn http_response(head: &[u8], root: &std::path::Path, bug: Bug) -> (Vec<u8>, bool) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let parts: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let mut close = bug == Bug::KeepaliveBroken;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let (code, reason, body, kind, head_only) = match parts[..] {
        [method @ ("GET" | "HEAD"), target, version]
            if version.starts_with("HTTP/1.") && target.starts_with('/') =>
        {
            let file = root.join(target.trim_start_matches('/'));
            match std::fs::read(&file) {
                Ok(body) if !target.contains("..") => {
                    let kind = match file.extension().and_then(|e| e.to_str()) {
                        Some("html") => "text/html",
                        Some("txt") => "text/plain",
                        Some("css") => "text/css",
                        _ => "application/octet-stream",
                    };
                    (200, "OK", body, kind, method == "HEAD")
                }
                _ => (
                    404,
                    "Not Found",
                    b"not found\n".to_vec(),
                    "text/plain",
                    false,
                ),
            }
        }
        _ => {
            close = true;
            (
                400,
                "Bad Request",
                b"bad request\n".to_vec(),
                "text/plain",
                false,
            )
        }
    };
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    if bug != Bug::NoContentLength {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str(&format!("Content-Type: {kind}\r\n"));
    if close && bug != Bug::KeepaliveBroken {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&body);
    }
    (bytes, close)
}
