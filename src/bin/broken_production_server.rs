//! Deliberately broken servers for the w04 production probes, one per
//! `--bug`. `--bug none` is a correct echo server running `--threads N`
//! edge-triggered epoll loops, each with its own SO_REUSEPORT listener and
//! epoll instance; every other bug differs from it by one thing.
//!
//! The `broadcast*`, `slow-subscriber-stalls` and `echo-to-sender` bugs
//! pass each frame to the other clients instead of echoing it (w04-l26).
//! With `--root DIR` it speaks HTTP/1.1 instead (w04-l25): GET and HEAD of
//! files under DIR, keep-alive (HTTP/1.0 closes unless it asks for it),
//! Content-Length, 405 with `Allow: GET, HEAD`, an 8 KiB head limit (400,
//! close) and request bodies dropped; the `http-*` bugs and those named
//! after one of these rules break that one thing.
//!
//! One loop runs on the main thread (`--threads 1` is one thread in all);
//! the `*-thread-per-*` bugs serve with threads instead.
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
    /// HTTP: a 405 without its `Allow` header.
    #[value(name = "405-without-allow")]
    NoAllowOn405,
    /// HTTP: an HTTP/1.0 request keeps the connection open like HTTP/1.1.
    #[value(name = "http10-keeps-open")]
    Http10KeepsOpen,
    /// HTTP: HEAD of a missing file gets the 404's body after its head.
    #[value(name = "head-404-body")]
    Head404Body,
    /// HTTP: no limit on the request head: it is buffered until it ends.
    NoHeadLimit,
    /// HTTP: the 8 KiB limit is checked once a head has ended, so a head
    /// that never ends is waited for (and buffered) for ever.
    HeadLimitAfterEnd,
    /// HTTP: a 4 KiB limit on the request head instead of 8 KiB.
    HeadLimitTooSmall,
    /// HTTP: only `Connection` spelt so is read; `connection: close` is not.
    CaseSensitiveConnection,
    /// HTTP: Content-Length ignored: a request's body is parsed as the next
    /// request.
    BodyParsedAsRequest,
    /// HTTP: the body is dropped only as far as it has arrived with its
    /// head; the rest, in a later read, is parsed as a request.
    BodySplitLost,
    /// HTTP: each response built on a thread of its own (spawned, joined).
    HttpThreadPerRequest,
    /// HTTP: blocking, a thread per connection.
    HttpThreadPerConnection,
    /// HTTP: clients registered level-triggered with EPOLLOUT always on:
    /// epoll_wait() returns at once while any connection is open.
    HttpSpinsIdle,
    /// HTTP: one request answered per read; the pipelined ones behind it
    /// wait in the buffer for bytes that never come.
    PipeliningOnePerRead,
    /// HTTP: a response's close ignored by the loop: the connection stays
    /// open after `Connection: close` (the response still says close).
    ConnectionCloseIgnored,
    /// HTTP: no `..` guard: the target is joined to the root as it comes.
    DotdotEscapes,
    /// HTTP: a `.` segment refused like `..` (404).
    DotSegmentRefused,
    /// HTTP: a request that cannot be framed (a head over the limit, a bad
    /// Content-Length) closes the connection without its 400.
    #[value(name = "bad-head-closed-silently")]
    BadHeadClosedSilently,
    /// HTTP: a Content-Length that is not a number is taken as 0.
    ContentLengthNotANumberIgnored,
    /// HTTP: of two Content-Length headers that disagree, the first wins.
    ContentLengthFirstWins,
    /// HTTP: a target without its leading `/` is served like one with it.
    TargetWithoutSlashServed,
    /// HTTP: the 8 KiB limit is exclusive: a head of exactly 8192 bytes,
    /// blank line included, is refused.
    HeadLimitExclusive,
    /// No bug, broadcast: each frame to every other client, a subscriber
    /// over 4 MiB pending disconnected.
    BroadcastNone,
    /// Broadcast with a blocking write_all to each subscriber in turn: one
    /// that never reads stalls everyone.
    SlowSubscriberStalls,
    /// Broadcast that also sends each frame back to its sender.
    EchoToSender,
    /// Broadcast, blocking: a reader and a writer thread per connection
    /// (each writer's queue bounded at 4 MiB, so it is otherwise correct).
    BroadcastThreadPerConnection,
    /// Broadcast with clients registered level-triggered with EPOLLOUT
    /// always on.
    BroadcastSpinsIdle,
    /// Broadcast whose fan-out of each batch of frames runs on a thread of
    /// its own (spawned, joined): correct, and one thread too many.
    BroadcastThreadPerFrame,
}

impl Bug {
    fn broadcasts(self) -> bool {
        matches!(
            self,
            Bug::BroadcastNone
                | Bug::SlowSubscriberStalls
                | Bug::EchoToSender
                | Bug::BroadcastThreadPerConnection
                | Bug::BroadcastSpinsIdle
                | Bug::BroadcastThreadPerFrame
        )
    }

    fn spins(self) -> bool {
        matches!(self, Bug::HttpSpinsIdle | Bug::BroadcastSpinsIdle)
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
    /// HTTP: body bytes of the last request still to drop.
    body_left: usize,
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
    let mode = Mode {
        bug: args.bug,
        root: args.root.clone().map(std::path::PathBuf::from),
    };
    match args.bug {
        Bug::HttpThreadPerConnection => return http_thread_per_connection(&listeners[0], mode),
        Bug::BroadcastThreadPerConnection => return broadcast_thread_per_connection(&listeners[0]),
        _ => {}
    }
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
    // Loops 2..N on threads of their own, the first on this one.
    let mut epolls = epolls.into_iter();
    let first = epolls.next().ok_or_else(|| io::Error::other("no loop"))?;
    for epoll in epolls {
        let (listeners, mode) = (listeners.clone(), mode.clone());
        std::thread::spawn(move || event_loop(epoll, listeners, mode));
    }
    event_loop(first, listeners, mode);
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
                accept_all(&epoll, listener, &mut conns, mode.bug);
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
            if !frames.is_empty() && mode.bug == Bug::BroadcastThreadPerFrame {
                // The bug: the fan-out on a thread of its own.
                std::thread::scope(|s| {
                    s.spawn(|| fan_out(&mut conns, fd, &frames, mode.bug));
                });
            } else if !frames.is_empty() {
                fan_out(&mut conns, fd, &frames, mode.bug);
            }
        }
    }
}

fn accept_all(epoll: &Epoll, listener: &TcpListener, conns: &mut HashMap<RawFd, Conn>, bug: Bug) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let fd = stream.as_raw_fd();
                let interest = if bug.spins() {
                    // The bug: level-triggered, writable nearly always.
                    EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
                } else {
                    EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET
                };
                if epoll
                    .add(&stream, EpollEvent::new(interest, fd as u64))
                    .is_ok()
                {
                    conns.insert(
                        fd,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            body_left: 0,
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
            if http_serve(
                &mut inbuf,
                &mut conn.body_left,
                root,
                mode.bug,
                &mut conn.out,
            ) {
                conn.closing = true;
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

/// The longest request head accepted, in bytes (the lesson's 8 KiB).
const MAX_HEAD: usize = 8192;

/// Answers every whole request in `inbuf` into `out`, dropping request
/// bodies (`body_left` counts what is still to come). True when the
/// connection closes once `out` is written.
fn http_serve(
    inbuf: &mut Vec<u8>,
    body_left: &mut usize,
    root: &std::path::Path,
    bug: Bug,
    out: &mut Vec<u8>,
) -> bool {
    let limit = match bug {
        Bug::HeadLimitTooSmall => 4096,
        Bug::NoHeadLimit => usize::MAX,
        _ => MAX_HEAD,
    };
    loop {
        let arrived = (*body_left).min(inbuf.len());
        inbuf.drain(..arrived);
        *body_left -= arrived;
        if bug == Bug::BodySplitLost {
            // The bug: what has not arrived yet is forgotten.
            *body_left = 0;
        }
        if *body_left > 0 {
            return false;
        }
        // The bug HeadLimitAfterEnd searches everything, as NoHeadLimit does.
        let searched = match bug {
            Bug::HeadLimitAfterEnd | Bug::NoHeadLimit => &inbuf[..],
            _ => &inbuf[..inbuf.len().min(limit)],
        };
        // The bug BadHeadClosedSilently closes without the 400.
        let refuse = |inbuf: &mut Vec<u8>, out: &mut Vec<u8>| {
            if bug != Bug::BadHeadClosedSilently {
                out.extend_from_slice(&bad_request());
            }
            inbuf.clear();
            true
        };
        let Some(end) = searched.windows(4).position(|w| w == b"\r\n\r\n") else {
            if inbuf.len() >= limit && bug != Bug::HeadLimitAfterEnd {
                return refuse(inbuf, out);
            }
            return false;
        };
        // The bug HeadLimitExclusive refuses a head of exactly the limit.
        if end + 4 > limit || (bug == Bug::HeadLimitExclusive && end + 4 >= limit) {
            return refuse(inbuf, out);
        }
        let head: Vec<u8> = inbuf.drain(..end + 4).collect();
        let Some(length) = content_length(&head, bug) else {
            return refuse(inbuf, out);
        };
        if bug != Bug::BodyParsedAsRequest {
            *body_left = length;
        }
        let (response, close) = if bug == Bug::HttpThreadPerRequest {
            // The bug: a thread for each request (correct, and one too many).
            std::thread::scope(|s| s.spawn(|| http_response(&head, root, bug)).join())
                .unwrap_or_else(|_| (bad_request(), true))
        } else {
            http_response(&head, root, bug)
        };
        out.extend_from_slice(&response);
        // The bug ConnectionCloseIgnored goes on as if the response kept
        // the connection.
        if close && bug != Bug::ConnectionCloseIgnored {
            inbuf.clear();
            return true;
        }
        if bug == Bug::PipeliningOnePerRead {
            // The bug: the rest waits for the next read.
            return false;
        }
    }
}

/// The request's Content-Length (0 without one); None when it is not one
/// number (not a number, or two headers that disagree).
fn content_length(head: &[u8], bug: Bug) -> Option<usize> {
    let text = String::from_utf8_lossy(head);
    let mut length = None;
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                let parsed = match value.trim().parse().ok() {
                    // The bug ContentLengthNotANumberIgnored.
                    None if bug == Bug::ContentLengthNotANumberIgnored => 0,
                    None => return None,
                    Some(n) => n,
                };
                match length {
                    // The bug ContentLengthFirstWins keeps the first.
                    Some(_) if bug == Bug::ContentLengthFirstWins => {}
                    Some(first) if first != parsed => return None,
                    _ => length = Some(parsed),
                }
            }
        }
    }
    Some(length.unwrap_or(0))
}

fn bad_request() -> Vec<u8> {
    let body = "bad request\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The response to one request head, and whether to close after it.
fn http_response(head: &[u8], root: &std::path::Path, bug: Bug) -> (Vec<u8>, bool) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let parts: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let [method, target, version] = parts[..] else {
        return (bad_request(), true);
    };
    // The bug TargetWithoutSlashServed takes `notes.txt` for `/notes.txt`.
    let slash = target.starts_with('/') || bug == Bug::TargetWithoutSlashServed;
    if !version.starts_with("HTTP/1.") || !slash || method.is_empty() {
        return (bad_request(), true);
    }
    let mut close =
        bug == Bug::KeepaliveBroken || (version == "HTTP/1.0" && bug != Bug::Http10KeepsOpen);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let is_connection = if bug == Bug::CaseSensitiveConnection {
                name == "Connection"
            } else {
                name.eq_ignore_ascii_case("connection")
            };
            if is_connection {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") && bug != Bug::KeepaliveBroken {
                    close = false;
                }
            }
        }
    }
    let head_only = method == "HEAD";
    let (code, reason, body, kind, send_body) = match method {
        "GET" | "HEAD" => {
            let file = root.join(target.trim_start_matches('/'));
            match std::fs::read(&file) {
                // The bug DotdotEscapes has no `..` guard; DotSegmentRefused
                // refuses `.` too.
                Ok(body)
                    if (!target.contains("..") || bug == Bug::DotdotEscapes)
                        && !(bug == Bug::DotSegmentRefused && target.contains("/./"))
                        && file.is_file() =>
                {
                    let kind = match file.extension().and_then(|e| e.to_str()) {
                        Some("html") => "text/html",
                        Some("txt") => "text/plain",
                        Some("css") => "text/css",
                        _ => "application/octet-stream",
                    };
                    (200, "OK", body, kind, !head_only)
                }
                _ => (
                    404,
                    "Not Found",
                    b"not found\n".to_vec(),
                    "text/plain",
                    !head_only || bug == Bug::Head404Body,
                ),
            }
        }
        _ => (
            405,
            "Method Not Allowed",
            b"method not allowed\n".to_vec(),
            "text/plain",
            true,
        ),
    };
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    if bug != Bug::NoContentLength {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str(&format!("Content-Type: {kind}\r\n"));
    if code == 405 && bug != Bug::NoAllowOn405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if close && bug != Bug::KeepaliveBroken {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if send_body {
        bytes.extend_from_slice(&body);
    }
    (bytes, close)
}

/// The bug HttpThreadPerConnection: blocking reads and writes, one thread
/// for each connection; the HTTP itself is [`http_serve`]'s, correct.
fn http_thread_per_connection(listener: &TcpListener, mode: Mode) -> io::Result<()> {
    let root = mode
        .root
        .clone()
        .ok_or_else(|| io::Error::other("http-thread-per-connection needs --root"))?;
    listener.set_nonblocking(false)?;
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => continue,
        };
        let root = root.clone();
        std::thread::spawn(move || {
            let mut inbuf = Vec::new();
            let mut body_left = 0;
            let mut chunk = vec![0u8; 65536];
            loop {
                let n = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                inbuf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                let close = http_serve(&mut inbuf, &mut body_left, &root, mode.bug, &mut out);
                if stream.write_all(&out).is_err() {
                    return;
                }
                if close {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    return;
                }
            }
        });
    }
}

/// One subscriber's queue of bytes for its writer thread.
struct Outbox {
    /// Pending bytes, and whether the connection is gone.
    queue: std::sync::Mutex<(Vec<u8>, bool)>,
    ready: std::sync::Condvar,
}

/// The subscribers of the broadcast, by connection number.
type Registry = Arc<std::sync::Mutex<HashMap<u64, (Arc<Outbox>, TcpStream)>>>;

/// The bug BroadcastThreadPerConnection: each connection has a blocking
/// reader thread, which appends every whole frame to the other
/// connections' queues (dropping one whose queue passes 4 MiB), and a
/// writer thread that writes its queue out. Correct, with 2N+1 threads.
fn broadcast_thread_per_connection(listener: &TcpListener) -> io::Result<()> {
    const MAX_PENDING: usize = 4 * 1024 * 1024;
    listener.set_nonblocking(false)?;
    let registry: Registry = Arc::default();
    for id in 0u64.. {
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let (Ok(reader), Ok(writer), Ok(handle)) =
            (stream.try_clone(), stream.try_clone(), stream.try_clone())
        else {
            continue;
        };
        let outbox = Arc::new(Outbox {
            queue: std::sync::Mutex::new((Vec::new(), false)),
            ready: std::sync::Condvar::new(),
        });
        if let Ok(mut all) = registry.lock() {
            all.insert(id, (Arc::clone(&outbox), handle));
        }
        let mine = Arc::clone(&outbox);
        let _ = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || write_queue(writer, &mine));
        let registry = Arc::clone(&registry);
        let _ = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                read_and_fan_out(reader, id, &registry, MAX_PENDING);
                if let Ok(mut all) = registry.lock() {
                    all.remove(&id);
                }
                if let Ok(mut queue) = outbox.queue.lock() {
                    queue.1 = true;
                }
                outbox.ready.notify_all();
            });
    }
    Ok(())
}

fn read_and_fan_out(mut reader: TcpStream, id: u64, registry: &Registry, max_pending: usize) {
    let mut inbuf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbuf.extend_from_slice(&chunk[..n]);
        let mut frames = Vec::new();
        while let Some(total) = fixture::whole_frame(&inbuf) {
            frames.extend(inbuf.drain(..total));
        }
        if frames.is_empty() {
            continue;
        }
        let Ok(mut all) = registry.lock() else { return };
        let mut dropped = Vec::new();
        for (&other, (outbox, handle)) in all.iter() {
            if other == id {
                continue;
            }
            let Ok(mut queue) = outbox.queue.lock() else {
                continue;
            };
            queue.0.extend_from_slice(&frames);
            if queue.0.len() > max_pending {
                queue.1 = true;
                let _ = handle.shutdown(std::net::Shutdown::Both);
                dropped.push(other);
            }
            outbox.ready.notify_all();
        }
        for other in dropped {
            all.remove(&other);
        }
    }
}

fn write_queue(mut writer: TcpStream, outbox: &Outbox) {
    loop {
        let pending = {
            let Ok(mut queue) = outbox.queue.lock() else {
                return;
            };
            while queue.0.is_empty() && !queue.1 {
                queue = match outbox.ready.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
            if queue.0.is_empty() {
                return;
            }
            std::mem::take(&mut queue.0)
        };
        if writer.write_all(&pending).is_err() {
            return;
        }
    }
}
