//! w04-l25 — HTTP/1.1 on the reactor.
//!
//! The w03-l22 server, speaking HTTP/1.1 instead of frames: it serves the
//! files under a document root (`--root DIR`, default the current
//! directory) to GET and HEAD requests, on the same edge-triggered epoll
//! loop. A request ends at its blank line (`\r\n\r\n`), which may come in
//! many reads or share a read with the next requests (pipelining): the
//! bytes wait in `inbuf` exactly like partial frames did. Connections stay
//! open between requests (keep-alive, HTTP/1.1's default) unless the
//! client sends `Connection: close` (an HTTP/1.0 client closes unless it
//! sends `Connection: keep-alive`). A request head longer than 8 KiB is
//! refused (400, then close); a request body (Content-Length bytes) is
//! dropped, never read as the next request; a method other than GET and
//! HEAD gets 405 with `Allow: GET, HEAD`.
//!
//! ```text
//! GET /index.html HTTP/1.1        HTTP/1.1 200 OK
//! Host: localhost          ->     Content-Length: 1234
//!                                 Content-Type: text/html; charset=utf-8
//!                                 Connection: keep-alive
//! ```
// BEGIN SOLUTION
// STUB
//
// // TODO: the stub gives you the reference w03-l22 server with its frames
// // taken out: the epoll loop, accepting, the signalfd and the graceful
// // shutdown, `Conn::read_all`, `Conn::flush`, `Conn::queue`, `Conn::finish`
// // and the HTTP helpers that write a response (`content_type`,
// // `response_head`, `error_response`) are given. Four functions make it speak HTTP, each
// // with its contract in its doc comment: `Conn::next_request` (where one
// // request ends), `respond` (the answer to one request head), `resolve`
// // (the file a target names, never outside the root) and `serve` (reading,
// // answering every whole request in order, and when the connection ends).
//
// // Until those four are written, the code that calls them and what they
// // use go unused: delete the next line once they are, so the compiler's
// // warnings speak for your code again.
// #![allow(dead_code, unused_imports, unused_variables)]
// END SOLUTION

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A single-threaded epoll HTTP/1.1 server for static files.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 lets the kernel choose a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Most connections served at once; one more is accepted and closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,

    /// The document root: GET /a/b.html serves DIR/a/b.html.
    #[arg(long, default_value = ".")]
    root: PathBuf,

    /// Most events one epoll_wait() call may return.
    #[arg(long, default_value_t = 1024)]
    max_events: usize,

    /// Print connection and traffic statistics to stdout every second.
    #[arg(long)]
    stats: bool,
}

/// Longest request head (request line, headers and the blank line) accepted,
/// in bytes; a longer one gets 400 and the connection is closed.
const MAX_HEAD: usize = 8 * 1024;

/// How much one read() may bring in at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Connections that may wait in the kernel's accept queue. std listens with
/// 128; 10,000 clients connecting at once overflow that many times over.
const LISTEN_BACKLOG: i32 = 4096;

/// The epoll token (event data) of the listener. Clients use their fd
/// number, which is never this large.
const LISTENER: u64 = u64::MAX;

/// The epoll token of the signalfd.
const SIGNALS: u64 = u64::MAX - 1;

/// The events that mean "read now": EPOLLIN, and EPOLLHUP and EPOLLERR,
/// which epoll reports whether asked for or not (and can report without
/// EPOLLIN): reading is how the server learns what happened.
const READABLE: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLHUP)
    .union(EpollFlags::EPOLLERR);

/// How long a shutdown may spend writing out pending responses before it
/// closes the connections anyway (a client that never reads must not keep
/// the server alive).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

fn main() -> ExitCode {
    let args = Args::parse();

    // Before any connection: each one costs a file descriptor.
    match raise_fd_limit() {
        Ok(limit) => eprintln!("open-file limit: {limit}"),
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }

    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = set_backlog(&listener, LISTEN_BACKLOG) {
        eprintln!("warning: cannot set the listen backlog to {LISTEN_BACKLOG}: {e}");
    }
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The listener must not block either: accept() is called until it says
    // WouldBlock, and that must not put the whole server to sleep.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("error: cannot make the listener non-blocking: {e}");
        return ExitCode::FAILURE;
    }
    println!("listening on {local}");

    match event_loop(&listener, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: epoll failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit
/// and returns the new soft limit. The hard limit is the ceiling an
/// unprivileged process may raise itself to.
fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Sets the listener's accept-queue length. Linux lets listen() be called
/// again on a listening socket to change it; the kernel caps it at
/// net.core.somaxconn.
fn set_backlog(listener: &TcpListener, backlog: i32) -> nix::Result<()> {
    use nix::sys::socket::{listen, Backlog};
    listen(listener, Backlog::new(backlog)?)
}

/// One client connection and everything the server remembers about it.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes received but not yet part of a complete request head.
    inbuf: Vec<u8>,
    /// Bytes of the last request's body (its Content-Length) that have not
    /// arrived yet: they are dropped as they come, never parsed.
    body_left: usize,
    /// Responses waiting to be written, oldest first.
    outbuf: Vec<u8>,
    /// The client has closed its side (read returned 0): read no more, but
    /// finish writing what `outbuf` holds before closing.
    peer_closed: bool,
    /// The last response said `Connection: close`: answer no more requests,
    /// close once `outbuf` is written.
    closing: bool,
    /// Bytes read from the client, since it connected (for `--stats`).
    received: u64,
    /// Responses queued, since it connected (for `--stats` and the final
    /// stats line).
    answered: u64,
    /// The events this connection is registered for in the epoll instance
    /// right now, so an unchanged interest costs no epoll_ctl() call.
    registered: EpollFlags,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            body_left: 0,
            outbuf: Vec::new(),
            peer_closed: false,
            closing: false,
            received: 0,
            answered: 0,
            registered: EpollFlags::empty(),
        }
    }

    /// The events epoll should report for this connection.
    fn interest(&self) -> EpollFlags {
        let mut events = trigger_mode();
        if !self.peer_closed {
            events |= EpollFlags::EPOLLIN;
        }
        // Only while output is pending: each epoll.modify() re-arms the
        // edge, so turning EPOLLOUT on while the socket has room reports it
        // writable once, which is when the pending bytes get their turn.
        if self.has_pending_output() {
            events |= EpollFlags::EPOLLOUT;
        }
        events
    }

    /// Reads everything the kernel has for this socket, until WouldBlock,
    /// and appends it to `inbuf`. Edge-triggered epoll will not report the
    /// socket again for bytes that were already there.
    ///
    /// - Ok(()) with every waiting byte in `inbuf` (maybe none, when the
    ///   wake-up was spurious: WouldBlock is not an error).
    /// - Ok(()) with `peer_closed` set at EOF, clean or mid-request alike: the
    ///   bytes already buffered stay, so the requests they complete are still
    ///   answered.
    /// - Err(e) when the connection is broken (reset by the client, ...).
    ///
    /// Every byte read is counted in `received`, also when the read then
    /// ends in an error.
    fn read_all(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side.
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                // New bytes: keep them, and read again: more may be waiting.
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.received += n as u64;
                }
                // Drained: the next new byte brings the next event.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                // A signal interrupted the read before any byte: try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Reset or another real error: this connection is over.
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the next request out of `inbuf` and returns its head: the
    /// request line and the headers, through the blank line that ends them.
    ///
    /// A request may carry a body: the number of bytes its Content-Length
    /// header says (the name in any case), right after its head, whatever
    /// the method. This server serves no body, so the body is dropped: what
    /// has arrived of it in this call, the rest in later calls as it arrives
    /// (`body_left` remembers how much is still to come). It is never taken
    /// for the start of the next request.
    ///
    /// - Ok(Some) with a whole head, removed from the front of `inbuf`
    ///   together with its blank line; what follows (its body, the next
    ///   pipelined requests) stays for the next calls.
    /// - Ok(None): no whole head yet, or the last body is still arriving.
    ///   Not an error: the rest comes in a later read.
    /// - Err, of kind InvalidData, when the request cannot be framed:
    ///   - no blank line ends the head within its first MAX_HEAD bytes (a
    ///     head of MAX_HEAD bytes, blank line included, is accepted). Once
    ///     MAX_HEAD bytes have arrived without one, this is the answer at
    ///     once, not after more bytes: waiting would let one client grow
    ///     `inbuf` without bound;
    ///   - Content-Length is not one number: not a number, or two headers
    ///     that disagree (which one frames the request is anyone's guess,
    ///     and request smuggling lives there).
    ///
    ///   The caller answers 400 and closes.
    fn next_request(&mut self) -> io::Result<Option<Vec<u8>>> {
        // BEGIN GAP next_request
        // The last request's body (what has arrived of it) goes first. While
        // some of it is still to come, that empties `inbuf`: no head below.
        let arrived = self.body_left.min(self.inbuf.len());
        self.inbuf.drain(..arrived);
        self.body_left -= arrived;
        // A head may end only within its first MAX_HEAD bytes: past them,
        // waiting for more would let one client grow `inbuf` without bound.
        let searched = &self.inbuf[..self.inbuf.len().min(MAX_HEAD)];
        let Some(end) = searched.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.inbuf.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("request head longer than {MAX_HEAD} bytes"),
                ));
            }
            return Ok(None);
        };
        let head: Vec<u8> = self.inbuf.drain(..end + 4).collect();
        // The body's length frames the request, so it is read here, not in
        // respond(): the next call drops that many bytes before any head.
        let mut length: Option<usize> = None;
        for line in String::from_utf8_lossy(&head).split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if !name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let parsed = value.trim().parse::<usize>().ok();
            // Two different lengths: which one frames the request is
            // anyone's guess (request smuggling lives there). Refuse.
            if parsed.is_none() || length.is_some_and(|l| Some(l) != parsed) {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("bad Content-Length {:?}", value.trim()),
                ));
            }
            length = parsed;
        }
        self.body_left = length.unwrap_or(0);
        Ok(Some(head))
        // END GAP
    }

    /// True when the client sent part of a request that never completed.
    fn has_partial_request(&self) -> bool {
        !self.inbuf.is_empty() || self.body_left > 0
    }

    fn has_pending_output(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Queues one response behind those already in `outbuf` and counts it.
    /// `close`: the connection ends after it, so `closing` is set (and stays
    /// set): no later request is answered.
    fn queue(&mut self, response: &[u8], close: bool) {
        self.outbuf.extend_from_slice(response);
        self.closing |= close;
        self.answered += 1;
    }

    /// Ends the connection once `serve` said Done: logs a request the client
    /// left half-sent, then shuts the write side down, so the FIN follows
    /// the last byte of the last response. Dropping the Conn closes the fd.
    fn finish(&self) {
        if self.peer_closed && self.has_partial_request() {
            eprintln!(
                "{}: closed in the middle of a request ({} bytes dropped)",
                self.peer,
                self.inbuf.len()
            );
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Writes as much of `outbuf` as the socket takes right now.
    ///
    /// - Ok(()) when everything was written, or when the socket's send buffer
    ///   filled up (WouldBlock): the rest stays in `outbuf` and EPOLLOUT will
    ///   say when to go on.
    /// - Err(e) when the client is gone: EPIPE or ECONNRESET. Rust ignores
    ///   SIGPIPE before main, so this arrives as an error, not a signal.
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.outbuf.len() {
                break Ok(());
            }
            match self.stream.write(&self.outbuf[written..]) {
                // The socket took nothing and never will: treat it as broken.
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                // Part (or all) of the rest was taken: count it, write again.
                Ok(n) => written += n,
                // The send buffer is full: stop here. Edge-triggered EPOLLOUT
                // fires once it has room again, because we wrote until now.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                // A signal interrupted the write before any byte: try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EPIPE, ECONNRESET...: this connection is over.
                Err(e) => break Err(e),
            }
        };
        // Forget what the kernel took, keeping the unsent tail in order.
        self.outbuf.drain(..written);
        result
    }
}

/// What the `--stats` lines count, since the last report.
struct Stats {
    /// Requests answered (any status).
    requests: u64,
    /// Bytes read from clients.
    bytes_read: u64,
    /// When the counting period started.
    since: Instant,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            bytes_read: 0,
            since: Instant::now(),
        }
    }

    /// Prints the two stats lines for the period that ends now, then starts
    /// a new period. Rates are per second of the period's real length, so a
    /// late report does not inflate them.
    fn report(&mut self, active: usize, pending: usize) {
        let seconds = self.since.elapsed().as_secs_f64().max(0.001);
        let requests_per_sec = (self.requests as f64 / seconds).round() as u64;
        let megabytes_per_sec = self.bytes_read as f64 / seconds / 1_000_000.0;
        let clock = utc_clock();
        println!("[{clock}] Connections: {active} active, {pending} pending");
        println!(
            "[{clock}] Requests: {requests_per_sec}/sec, Bytes: {megabytes_per_sec:.1} MB/sec"
        );
        *self = Stats::new();
    }
}

/// The time of day in UTC as HH:MM:SS (no time-zone database needed).
fn utc_clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

/// Counted from start to exit, for the final stats line.
#[derive(Default)]
struct Totals {
    /// Requests answered.
    requests: u64,
    /// Connections closed because of an error.
    errors: u64,
}

/// What serving a connection left it as.
enum State {
    Open,
    /// Finished normally: the last response was sent and the connection ends.
    Done,
}

/// Does whatever work `ready` allows on one connection, and says whether
/// the connection is over. An Err means this connection is broken (a read
/// or a write failed) and the caller closes it; it never concerns any other
/// connection.
///
/// - When `ready` holds any of READABLE and the client has not closed its
///   side: everything the socket holds is read (edge-triggered: no event
///   comes again for bytes that were already there), then every whole
///   request now in `inbuf` is answered, in order, each response queued
///   behind the last. One read may bring several requests (pipelining), or
///   the end of one and the start of the next: what is not whole yet waits
///   for a later read. A request that cannot be framed is answered 400 and
///   the connection closes after it. After a response that closes the
///   connection, no later request is answered, and the input still
///   buffered is dropped.
/// - Then pending output is written, as far as the socket takes it now.
/// - Ok(Done) once nothing is left to write and either the client has
///   closed its side or the last response closes the connection: the
///   caller ends it (`Conn::finish`, then drop). Ok(Open) otherwise.
fn serve(conn: &mut Conn, ready: EpollFlags, root: &Path) -> io::Result<State> {
    // BEGIN GAP serve
    if ready.intersects(READABLE) && !conn.peer_closed {
        conn.read_all()?;
        // One read can bring many requests (pipelining), or the end of one
        // and the start of the next: answer every whole request, in order,
        // and keep the rest for later. After `Connection: close`, nothing.
        while !conn.closing {
            let head = match conn.next_request() {
                Ok(Some(head)) => head,
                Ok(None) => break,
                // A request that cannot be framed: answer 400 and close.
                Err(e) => {
                    eprintln!("{}: {e}", conn.peer);
                    conn.queue(&error_response(400, "Bad Request", true, true), true);
                    break;
                }
            };
            let (response, close) = respond(&head, root);
            conn.queue(&response, close);
        }
        // Whatever came after the last response that is answered is never
        // answered: let it go rather than hold it until the close.
        if conn.closing {
            conn.inbuf.clear();
        }
    }
    // Write right away rather than waiting for EPOLLOUT: the socket is
    // usually writable, and whatever it does not take waits in outbuf.
    if conn.has_pending_output() {
        conn.flush()?;
    }
    if (conn.peer_closed || conn.closing) && !conn.has_pending_output() {
        return Ok(State::Done);
    }
    Ok(State::Open)
    // END GAP
}

// HTTP: turning one request head into one response. Nothing here touches a
// socket, so every function can be read (and tested) on its own.

/// The response to one request head (as `Conn::next_request` returns it),
/// and whether the connection closes after it.
///
/// - The request line is a method, a target and a version, separated by
///   single spaces; the version is HTTP/1.0 or HTTP/1.1 (any HTTP/1.x), the
///   target begins with `/`. Every header line after it is a name, a colon
///   and a value. A head that is not UTF-8, a request line that is not so,
///   or a header line without its colon: 400 Bad Request, and close.
/// - Keep-alive: an HTTP/1.1 request keeps the connection unless it says
///   `Connection: close`; an HTTP/1.0 request closes it unless it says
///   `Connection: keep-alive`. Header names are case-insensitive, and so
///   are these options; the header's value is a comma-separated list of
///   them (`keep-alive, Upgrade`).
/// - A method other than GET and HEAD: 405 Method Not Allowed (its `Allow`
///   header is written by the given helpers); the connection stays open
///   as above, the request's body having been dropped already.
/// - GET of a file `resolve` finds: 200 with the file's bytes, its length
///   and its type; of anything else: 404.
/// - HEAD: exactly the head GET would get (status, Content-Length and all),
///   for a 404 as for a 200, and not one byte of body.
fn respond(head: &[u8], root: &Path) -> (Vec<u8>, bool) {
    // BEGIN GAP respond
    let Ok(text) = std::str::from_utf8(head) else {
        return (error_response(400, "Bad Request", true, true), true);
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return (error_response(400, "Bad Request", true, true), true);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (error_response(400, "Bad Request", true, true), true);
    }
    // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it; the
    // Connection header overrides either.
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return (error_response(400, "Bad Request", true, true), true);
        };
        // Names in any case (`connection`, `CONNECTION`); the value is a
        // list of options (`keep-alive, Upgrade`), also in any case.
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    // Every other method is refused (response_head adds `Allow`); its body,
    // if any, was dropped by next_request, so the connection goes on.
    if method != "GET" && method != "HEAD" {
        return (
            error_response(405, "Method Not Allowed", close, true),
            close,
        );
    }
    // HEAD: the head of the GET response, 404 included, and no body.
    let with_body = method == "GET";
    let Some(path) = resolve(root, target) else {
        return (error_response(404, "Not Found", close, with_body), close);
    };
    let body = match std::fs::read(&path) {
        Ok(body) => body,
        Err(_) => return (error_response(404, "Not Found", close, with_body), close),
    };
    let mut response = response_head(200, "OK", body.len(), content_type(&path), close);
    if with_body {
        response.extend_from_slice(&body);
    }
    (response, close)
    // END GAP
}

/// The file a request target names under `root`, or None when it names
/// nothing this server may serve.
///
/// - The query (from `?`) and the fragment (from `#`) are no part of the
///   file's path.
/// - The rest is read segment by segment, each a name under the one before,
///   starting at `root`; an empty or `.` segment names nothing new.
/// - Any `..` segment: None, before anything is looked up. The root is a
///   wall: `/../secret.txt` and `/a/../../secret.txt` must never reach a
///   file outside it.
/// - A directory stands for its index.html.
/// - None when no such file exists.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    // BEGIN GAP resolve
    // The query string does not name a file.
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let mut file = root.to_path_buf();
    for component in Path::new(path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => file.push(part),
            Component::CurDir => {}
            // `..` and anything else: refuse rather than leave the root.
            _ => return None,
        }
    }
    if file.is_dir() {
        file.push("index.html");
    }
    file.is_file().then_some(file)
    // END GAP
}

/// The Content-Type for a file, from its extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") | Some("htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Status line and headers, through the blank line. Content-Length is
/// always there: it is how a keep-alive client knows where the body ends.
/// A 405 names the methods this server does serve (`Allow`), as HTTP
/// requires of it.
fn response_head(code: u16, reason: &str, length: usize, kind: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {length}\r\nContent-Type: {kind}\r\n{allow}Connection: {connection}\r\n\r\n"
    )
    .into_bytes()
}

/// An error response with a one-line text body; without the body when
/// `with_body` is false (the answer to HEAD), Content-Length unchanged.
fn error_response(code: u16, reason: &str, close: bool, with_body: bool) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    let mut response = response_head(code, reason, body.len(), "text/plain; charset=utf-8", close);
    if with_body {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

// The epoll backend: the only functions that talk to the epoll instance
// (as redis keeps epoll in ae_epoll.c, under one dispatch loop).

/// The trigger mode every registration carries: edge-triggered.
fn trigger_mode() -> EpollFlags {
    // Every registration, in add and in modify: a modify without EPOLLET
    // quietly turns the socket back to level-triggered.
    EpollFlags::EPOLLET
}

/// A new epoll instance, closed when the returned value is dropped.
fn create_epoll() -> nix::Result<Epoll> {
    // CLOEXEC: a program this server ever ran would not inherit the fd.
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
}

/// Adds the listener to the interest list, edge-triggered like the
/// clients (accept_clients drains it); its events carry LISTENER.
fn register_listener(epoll: &Epoll, listener: &TcpListener) -> nix::Result<()> {
    let interest = EpollFlags::EPOLLIN | trigger_mode();
    epoll.add(listener, EpollEvent::new(interest, LISTENER))
}

/// Adds a new client to the interest list; its events carry its fd number.
fn register_client(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    let interest = conn.interest();
    let token = conn.stream.as_raw_fd() as u64;
    epoll.add(&conn.stream, EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
}

/// Tells epoll about a change in what the connection waits for (EPOLLOUT
/// on while output is pending, EPOLLIN off once the client closed).
fn update_interest(epoll: &Epoll, conn: &mut Conn) -> nix::Result<()> {
    let interest = conn.interest();
    if interest == conn.registered {
        return Ok(());
    }
    let token = conn.stream.as_raw_fd() as u64;
    epoll.modify(&conn.stream, &mut EpollEvent::new(interest, token))?;
    conn.registered = interest;
    Ok(())
}

/// Blocks until at least one registered socket is ready or `deadline`
/// passes (none: wait as long as it takes); fills the front of `events`
/// and returns how many it filled (0 when the deadline came first).
fn wait_for_events(
    epoll: &Epoll,
    events: &mut [EpollEvent],
    deadline: Option<Instant>,
) -> nix::Result<usize> {
    let timeout = match deadline {
        None => EpollTimeout::NONE,
        // Rounded up to whole milliseconds: a timeout of 0 would return at
        // once and spin until the deadline.
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            let millis = left.as_micros().div_ceil(1000).min(1000) as u16;
            EpollTimeout::from(millis)
        }
    };
    epoll.wait(events, timeout)
}

/// Accepts every connection waiting in the listener's queue and registers
/// each with epoll.
fn accept_clients(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    max_clients: usize,
) {
    // Edge-triggered: one event may stand for many queued connections, and
    // none is reported again until a new one arrives. Drain the queue.
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // The queue is empty: back to epoll_wait().
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // A signal interrupted accept(): try again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE...: no reason to stop the server. Come
            // back on the next epoll_wait() wake-up.
            Err(e) => {
                eprintln!("accept failed: {e}");
                return;
            }
        };
        if conns.len() >= max_clients {
            eprintln!("{peer}: refused, {max_clients} clients already connected");
            drop(stream); // accept-then-close: the client sees EOF at once
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        let mut conn = Conn::new(stream, peer);
        if let Err(e) = register_client(epoll, &mut conn) {
            eprintln!("{peer}: cannot register with epoll: {e}");
            continue; // dropping conn closes the socket
        }
        conns.insert(conn.stream.as_raw_fd(), conn);
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}

/// Blocks SIGINT and SIGTERM and returns a signalfd that reports them as
/// readable data instead. Called before any other thread could exist, so
/// the block covers the whole process.
fn open_signal_fd() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    // A blocked signal is not delivered (its default action would kill the
    // process): it stays pending, and the signalfd reads it.
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// The signal the signalfd holds, if any (it is non-blocking).
fn read_signal(signals: &mut SignalFd) -> Option<Signal> {
    match signals.read_signal() {
        Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
        // Nothing to read, or a read error: no signal to act on.
        Ok(None) | Err(_) => None,
    }
}

/// The graceful shutdown, once SIGINT or SIGTERM arrived: no new clients;
/// every request that already arrived is answered; pending output is written
/// (for at most SHUTDOWN_GRACE); every connection gets an orderly close.
fn shut_down(
    epoll: &Epoll,
    listener: &TcpListener,
    conns: &mut HashMap<RawFd, Conn>,
    signal: Signal,
    totals: &mut Totals,
    args: &Args,
) {
    println!("Received {}, shutting down...", signal.as_str());
    // No new clients: those still in the accept queue are reset when the
    // listener closes at exit.
    if let Err(e) = epoll.delete(listener) {
        eprintln!("cannot remove the listener from epoll: {e}");
    }
    println!("Closing {} connections...", conns.len());
    // Bytes that arrived before the signal may still wait in the sockets:
    // read them, so their requests are answered too (and nothing unread is left
    // behind, which would make close() send a reset).
    let mut closing: Vec<RawFd> = conns.keys().copied().collect();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut events = vec![EpollEvent::empty(); args.max_events.max(1)];
    let mut ready = EpollFlags::EPOLLIN;
    while !closing.is_empty() {
        closing.retain(|fd| {
            let Some(conn) = conns.get_mut(fd) else {
                return false;
            };
            let answered = conn.answered;
            let result = serve(conn, ready, &args.root)
                .and_then(|_| update_interest(epoll, conn).map_err(io::Error::from));
            totals.requests += conn.answered - answered;
            match result {
                // Still writing: keep it for the next round.
                Ok(()) if conn.has_pending_output() => true,
                // Everything written: FIN after the last byte, then close.
                Ok(()) => {
                    conn.finish();
                    conns.remove(fd);
                    false
                }
                // Broken (reset by the client...): count it and close.
                Err(e) => {
                    eprintln!("{}: {e} while shutting down", conn.peer);
                    totals.errors += 1;
                    conns.remove(fd);
                    false
                }
            }
        });
        if closing.is_empty() || Instant::now() >= deadline {
            break;
        }
        // Sleep until some socket has room (EPOLLOUT is armed while output
        // is pending), or the grace period ends.
        match wait_for_events(epoll, &mut events, Some(deadline)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("epoll_wait failed while shutting down: {e}");
                break;
            }
        }
        ready = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT;
    }
    if !conns.is_empty() {
        eprintln!(
            "{} clients did not take their responses in time",
            conns.len()
        );
        totals.errors += conns.len() as u64;
        conns.clear();
    }
    println!("All connections closed.");
    println!(
        "Final stats: {} requests served, {} errors",
        totals.requests, totals.errors
    );
}

/// The server: wait in epoll_wait() for any socket (or a signal) to be
/// ready, serve the ready ones, repeat. Returns after a graceful shutdown,
/// or with an error if epoll itself fails.
fn event_loop(listener: &TcpListener, args: &Args) -> io::Result<()> {
    let epoll = create_epoll()?;
    register_listener(&epoll, listener)?;
    let mut signals = open_signal_fd()?;
    epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
    let mut totals = Totals::default();
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); args.max_events.max(1)];
    let mut stats = Stats::new();
    // The next report, once a second; never a wake-up without --stats.
    let mut next_report = args.stats.then(|| Instant::now() + Duration::from_secs(1));
    loop {
        if let Some(at) = next_report {
            if Instant::now() >= at {
                let pending = conns.values().filter(|c| c.has_pending_output()).count();
                stats.report(conns.len(), pending);
                // On schedule, not "a second after this report": a late
                // wake-up does not shift every later report. After a long
                // stall, start the schedule again from now.
                let mut next = at + Duration::from_secs(1);
                if next <= Instant::now() {
                    next = Instant::now() + Duration::from_secs(1);
                }
                next_report = Some(next);
            }
        }
        let ready = match wait_for_events(&epoll, &mut events, next_report) {
            Ok(n) => n,
            // A signal arrived while we waited: just wait again.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..ready] {
            if event.data() == SIGNALS {
                if let Some(signal) = read_signal(&mut signals) {
                    // Level-triggered, a second signal (or SIGTERM after
                    // SIGINT) left unread would wake every epoll_wait() of
                    // the shutdown at once: a busy loop for the whole grace
                    // period. Stop watching the signalfd; later signals stay
                    // blocked and pending until the process exits.
                    if let Err(e) = epoll.delete(&signals) {
                        eprintln!("cannot remove the signalfd from epoll: {e}");
                    }
                    shut_down(&epoll, listener, &mut conns, signal, &mut totals, args);
                    return Ok(());
                }
                continue;
            }
            if event.data() == LISTENER {
                accept_clients(&epoll, listener, &mut conns, args.max_clients);
                continue;
            }
            let fd = event.data() as RawFd;
            // Closed earlier in this same batch: nothing left to serve.
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let (received, answered) = (conn.received, conn.answered);
            let result = serve(conn, event.events(), &args.root);
            stats.bytes_read += conn.received - received;
            stats.requests += conn.answered - answered;
            totals.requests += conn.answered - answered;
            let result = result.and_then(|state| {
                if let State::Open = state {
                    update_interest(&epoll, conn)?;
                }
                Ok(state)
            });
            match result {
                Ok(State::Open) => {}
                Ok(State::Done) => {
                    conn.finish();
                    // Closing the fd (dropping the stream) also removes it
                    // from the interest list: no epoll_ctl(DEL) needed.
                    if let Some(conn) = conns.remove(&fd) {
                        eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                    }
                }
                Err(e) => {
                    totals.errors += 1;
                    if let Some(conn) = conns.remove(&fd) {
                        eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                    }
                }
            }
        }
    }
}
