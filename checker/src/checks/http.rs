//! `http`: correctness probes for an HTTP/1.1 static-file server. The step
//! writes its own document root in a temporary directory (index.html,
//! notes.txt, style.css, and secret.txt *beside* the root), starts the
//! server with `--root <dir>`, and sends, each case on its own connection:
//! GET of each file (status 200, Content-Length, Content-Type, the exact
//! body), HEAD (same headers, no body: the next response on the connection
//! must parse), a missing file (404), a malformed request line (400), `..`
//! paths reaching for secret.txt (404 or 400, never its bytes), a `.`
//! segment (`/./notes.txt` is notes.txt, or a redirect to it), five
//! requests on one keep-alive connection, `Connection: close` (the response,
//! then EOF), a request sent one byte per write, and three pipelined
//! requests in one write (three responses, in order). Then the lesson's
//! contract at its edges: DELETE (405 with `Allow: GET, HEAD`), an
//! HTTP/1.0 request without `Connection: keep-alive` (the response, then
//! EOF), HEAD of a missing file (a 404 head and not one byte after it),
//! `connection: close` in lower case (header names are case-insensitive),
//! a request target without its leading `/` (400 or 404, never the file),
//! request heads of exactly `max_head_bytes` (200), one byte over it (400,
//! then EOF) and never ending (400, then EOF, without waiting for the
//! end), a POST whose body is a whole request and a GET whose body comes
//! in two writes, each followed by a pipelined GET (the body is dropped:
//! the GET is answered, nothing else), and a Content-Length that is not
//! one number, not a number or two that disagree (400, then EOF: RFC 9112
//! section 6.3). Every response must carry Content-Length: it is how a
//! keep-alive client finds its end. The cases run in order and the first
//! that fails ends the step: a server that never answers does not cost
//! every case its timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Pause between the single bytes of the split request, in ms.
    pub byte_pause_ms: u64,
    /// Bound on each response, in seconds.
    pub timeout_secs: u64,
    /// The longest request head (request line, headers and the blank line)
    /// the server must accept, in bytes; a longer one must get 400.
    pub max_head_bytes: usize,
    pub args: Vec<String>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            byte_pause_ms: 2,
            timeout_secs: 5,
            max_head_bytes: 8192,
            args: Vec::new(),
        }
    }
}

/// A temporary document root, removed when dropped.
pub struct DocRoot {
    /// Holds `root/` and `secret.txt` beside it.
    base: PathBuf,
    pub root: PathBuf,
    pub index: Vec<u8>,
    pub notes: Vec<u8>,
    pub style: Vec<u8>,
    pub secret: Vec<u8>,
}

impl DocRoot {
    pub fn create(seed: u64) -> Result<DocRoot> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir().join(format!(
            "checker-http-{}-{seed}-{nanos}",
            std::process::id()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut index = b"<!doctype html>\n<title>checker</title>\n".to_vec();
        for line in 0..60 {
            index.extend_from_slice(format!("<p>line {line} of seed {seed}</p>\n").as_bytes());
        }
        let notes = format!("plain text, seed {seed}\n").repeat(20).into_bytes();
        let style = b"body { font-family: sans-serif; }\n".to_vec();
        let secret = format!("SECRET-{seed}-outside-the-root\n").into_bytes();
        let docs = DocRoot {
            base,
            root,
            index,
            notes,
            style,
            secret,
        };
        docs.write("root/index.html", &docs.index)?;
        docs.write("root/notes.txt", &docs.notes)?;
        docs.write("root/style.css", &docs.style)?;
        docs.write("secret.txt", &docs.secret)?;
        Ok(docs)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.base.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// `--root <dir>` for the server's command line.
    pub fn args(&self) -> Vec<String> {
        vec!["--root".to_string(), self.root.display().to_string()]
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for DocRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub status_line: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no whole response came back.
#[derive(Debug)]
pub enum Missing {
    /// EOF before any byte of the response.
    ClosedBefore,
    /// EOF or reset in the middle of the response.
    Cut(String),
    Timeout(usize),
    Malformed(String),
    NoContentLength(String),
    Io(String),
}

impl Missing {
    pub fn describe(&self) -> String {
        match self {
            Missing::ClosedBefore => "the server closed the connection without a response".into(),
            Missing::Cut(what) => format!("the response was cut short: {what}"),
            Missing::Timeout(n) => format!("no whole response in time ({n} bytes received)"),
            Missing::Malformed(head) => format!("not an HTTP/1.x response: {head:?}"),
            Missing::NoContentLength(head) => {
                format!("a response without Content-Length: {head:?}")
            }
            Missing::Io(e) => format!("socket error: {e}"),
        }
    }

    /// The id of [`Missing::cause`].
    pub fn cause_id(&self) -> &'static str {
        match self {
            Missing::ClosedBefore => "http.closed-before-response",
            Missing::NoContentLength(_) => "http.no-content-length",
            Missing::Timeout(_) => "http.request-unanswered",
            _ => "http.malformed-response",
        }
    }

    pub fn cause(&self) -> &'static str {
        match self {
            Missing::ClosedBefore => "the connection was closed before this request was answered: keep the connection open after each response (HTTP/1.1 keep-alive is the default) and answer every request in the buffer",
            Missing::NoContentLength(_) => "every response needs `Content-Length: <body bytes>`: without it a keep-alive client cannot tell where the body ends",
            Missing::Timeout(_) => "the request was never fully answered: a request may arrive over many reads, or share a read with the next requests; keep the unparsed bytes and parse again when more arrive",
            _ => "write the status line, the headers, a blank line (`\\r\\n\\r\\n`), then exactly Content-Length body bytes",
        }
    }
}

/// A connection that reads responses one at a time, keeping whatever
/// follows a response (the next pipelined one) for the next call.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Duration,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response; `head_only` for the answer to a HEAD request.
    pub fn response(&mut self, head_only: bool) -> std::result::Result<Response, Missing> {
        let deadline = Instant::now() + self.timeout;
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match self.fill(deadline)? {
                0 if self.buf.is_empty() => return Err(Missing::ClosedBefore),
                0 => return Err(Missing::Cut(format!("EOF after {:?}", excerpt(&self.buf)))),
                _ => {}
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("").to_string();
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or("");
        let status = words.next().and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
            return Err(Missing::Malformed(excerpt(head.as_bytes())));
        };
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(Missing::Malformed(excerpt(head.as_bytes())));
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let Some(length) = length else {
            return Err(Missing::NoContentLength(excerpt(head.as_bytes())));
        };
        let body_len = if head_only { 0 } else { length };
        let total = head_end + 4 + body_len;
        while self.buf.len() < total {
            if self.fill(deadline)? == 0 {
                return Err(Missing::Cut(format!(
                    "EOF after {} of {body_len} body bytes",
                    self.buf.len() - head_end - 4
                )));
            }
        }
        let body = self.buf[head_end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok(Response {
            status,
            status_line,
            headers,
            body,
        })
    }

    /// What the server sends after the last response read, within
    /// `within`: the bytes (a correct server sends none unasked) and
    /// whether it closed the connection (EOF or a reset) in that time.
    pub fn tail(&mut self, within: Duration) -> Tail {
        let deadline = Instant::now() + within;
        let closed = loop {
            match self.fill(deadline) {
                Ok(0) | Err(Missing::Io(_)) => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        Tail {
            bytes: std::mem::take(&mut self.buf),
            closed,
        }
    }

    fn fill(&mut self, deadline: Instant) -> std::result::Result<usize, Missing> {
        let mut chunk = [0u8; 16384];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Missing::Timeout(self.buf.len()));
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Missing::Timeout(self.buf.len()))
                }
                Err(e) => return Err(Missing::Io(e.to_string())),
            }
        }
    }
}

/// What came after a response: see [`HttpConn::tail`].
pub struct Tail {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]).to_string();
    if bytes.len() > 160 {
        format!("{text}...")
    } else {
        text
    }
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: checker\r\n\r\n").into_bytes()
}

/// Why a case failed: what was seen, and the likely cause with its id.
pub struct Failed {
    pub message: String,
    pub id: &'static str,
    pub cause: String,
}

fn failed(message: impl Into<String>, id: &'static str, cause: impl Into<String>) -> Failed {
    Failed {
        message: message.into(),
        id,
        cause: cause.into(),
    }
}

/// One case's verdict: Ok(what passed) or the failure.
type Case = std::result::Result<String, Failed>;

/// After a response that should end the connection: EOF (or a reset)
/// within 2 s, and not one byte more.
fn closes_after(what: &str, conn: &mut HttpConn, id: &'static str, cause: &str) -> Case {
    let tail = conn.tail(Duration::from_secs(2));
    if !tail.bytes.is_empty() {
        return Err(failed(
            format!(
                "{what}: {} more bytes after the response: {:?}",
                tail.bytes.len(),
                excerpt(&tail.bytes)
            ),
            "http.bytes-after-the-response",
            "one request gets one response, whose body is exactly Content-Length bytes",
        ));
    }
    if tail.closed {
        Ok(format!("{what}: response, then EOF"))
    } else {
        Err(failed(
            format!("{what}: the connection was still open 2 s after the response"),
            id,
            cause,
        ))
    }
}

/// After the last response of a case on a connection that stays open:
/// nothing more within `within`.
fn nothing_more(
    what: &str,
    conn: &mut HttpConn,
    within: Duration,
    id: &'static str,
    cause: &str,
) -> Case {
    let tail = conn.tail(within);
    if tail.bytes.is_empty() {
        Ok(String::new())
    } else {
        Err(failed(
            format!(
                "{what}: {} bytes came after the last expected response: {:?}",
                tail.bytes.len(),
                excerpt(&tail.bytes)
            ),
            id,
            cause,
        ))
    }
}

/// A 405 that names exactly GET and HEAD in `Allow` (any order, any spacing).
fn check_405(what: &str, r: &Response) -> Case {
    if r.status != 405 {
        return Err(failed(
            format!("{what}: status line {:?}, expected 405", r.status_line),
            "http.not-405",
            "this server serves GET and HEAD only: any other method is `405 Method Not Allowed`",
        ));
    }
    let Some(allow) = r.header("allow") else {
        return Err(failed(
            format!("{what}: a 405 without an `Allow` header"),
            "http.405-without-allow",
            "a 405 response must say which methods are served: `Allow: GET, HEAD`",
        ));
    };
    let mut methods: Vec<&str> = allow
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    methods.sort_unstable();
    if methods != ["GET", "HEAD"] {
        return Err(failed(
            format!("{what}: `Allow: {allow}`, expected the methods GET and HEAD"),
            "http.405-without-allow",
            "`Allow` lists the methods this server serves, GET and HEAD, no more",
        ));
    }
    Ok(format!("{what}: 405, Allow: {allow}"))
}

/// A GET of `path` whose head is exactly `total` bytes long, padded with an
/// `X-Filler` header; `terminated` false leaves the head without its end.
fn long_head(path: &str, total: usize, terminated: bool) -> Vec<u8> {
    let start = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ");
    let end = if terminated { "\r\n\r\n" } else { "" };
    let fill = total.saturating_sub(start.len() + end.len());
    let mut head = start.into_bytes();
    head.extend(std::iter::repeat_n(b'a', fill));
    head.extend_from_slice(end.as_bytes());
    head
}

fn missing(what: &str, m: Missing) -> Failed {
    failed(format!("{what}: {}", m.describe()), m.cause_id(), m.cause())
}

/// Checks a 200 response against the file it should carry.
fn check_file(what: &str, r: &Response, body: &[u8], kind: &str, head_only: bool) -> Case {
    if r.status != 200 {
        return Err(failed(
            format!("{what}: status line {:?}, expected 200", r.status_line),
            "http.file-not-served",
            "a file that exists under --root is answered `HTTP/1.1 200 OK`",
        ));
    }
    let length = r.header("content-length").unwrap_or("");
    if length != body.len().to_string() {
        return Err(failed(
            format!(
                "{what}: Content-Length {length}, the file has {} bytes",
                body.len()
            ),
            "http.wrong-content-length",
            "Content-Length is the file's size in bytes (for HEAD too)",
        ));
    }
    let ctype = r.header("content-type").unwrap_or("(none)");
    if !ctype.starts_with(kind) {
        return Err(failed(
            format!("{what}: Content-Type {ctype:?}, expected {kind}"),
            "http.wrong-content-type",
            "pick Content-Type from the extension: .html text/html, .txt text/plain, .css text/css",
        ));
    }
    if !head_only && r.body != body {
        return Err(failed(
            format!(
                "{what}: the body differs from the file ({} bytes, starting {:?})",
                r.body.len(),
                excerpt(&r.body)
            ),
            "http.wrong-body",
            "send the file's bytes unchanged after the blank line",
        ));
    }
    Ok(format!("{what}: 200, Content-Length {length}, {ctype}"))
}

/// The cases, in order, each run only while every case before it passed:
/// a server that fails one is not kept waiting through the others (a
/// server that never answers would cost every case its whole timeout).
struct Cases {
    done: Vec<(String, Case)>,
}

impl Cases {
    fn run(&mut self, what: impl Into<String>, case: impl FnOnce() -> Case) {
        if self.done.iter().all(|(_, result)| result.is_ok()) {
            let what = what.into();
            let result = case();
            self.done.push((what, result));
        }
    }
}

impl Http {
    fn cases(&self, addr: SocketAddr, docs: &DocRoot) -> Vec<(String, Case)> {
        let timeout = Duration::from_secs(self.timeout_secs);
        let open = |what: &str| {
            HttpConn::connect(addr, timeout).map_err(|e| {
                failed(
                    format!("{what}: connect failed: {e}"),
                    "http.stopped-accepting",
                    "the server stopped accepting connections",
                )
            })
        };
        let sent = |conn: &mut HttpConn, what: &str, bytes: &[u8]| {
            conn.send(bytes).map_err(|e| {
                failed(
                    format!("{what}: send failed: {e}"),
                    "http.reset",
                    "the server reset the connection before the request was sent",
                )
            })
        };
        let exchange = |what: &str,
                        request: &[u8],
                        head_only: bool|
         -> std::result::Result<Response, Failed> {
            let mut conn = open(what)?;
            sent(&mut conn, what, request)?;
            conn.response(head_only).map_err(|m| missing(what, m))
        };
        let mut cases = Cases { done: Vec::new() };

        let what = "GET /index.html";
        cases.run(what, || {
            exchange(what, &get("/index.html"), false)
                .and_then(|r| check_file(what, &r, &docs.index, "text/html", false))
        });
        let what = "GET /notes.txt";
        cases.run(what, || {
            exchange(what, &get("/notes.txt"), false)
                .and_then(|r| check_file(what, &r, &docs.notes, "text/plain", false))
        });

        let what = "HEAD /index.html, then GET /style.css on the same connection";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(&mut conn, what, b"HEAD /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            let r = conn.response(true).map_err(|m| missing("HEAD /index.html", m))?;
            check_file("HEAD /index.html", &r, &docs.index, "text/html", true)?;
            conn.send(&get("/style.css")).map_err(|e| {
                failed(
                    format!("{what}: send failed: {e}"),
                    "http.closed-before-response",
                    "the server closed the connection after the HEAD response",
                )
            })?;
            let r = conn.response(false).map_err(|m| {
                if matches!(m, Missing::ClosedBefore) {
                    return missing("GET /style.css after HEAD (the same connection)", m);
                }
                let lost = missing("GET /style.css after HEAD", m);
                failed(lost.message, "http.head-with-body", "a HEAD response has the headers of the GET (Content-Length included) but no body: bytes sent after its blank line are taken for the next response")
            })?;
            check_file("GET /style.css after HEAD", &r, &docs.style, "text/css", false)
        });

        let what = "GET /missing.html";
        cases.run(what, || {
            exchange(what, &get("/missing.html"), false).and_then(|r| {
                if r.status == 404 {
                    Ok(format!("{what}: 404"))
                } else {
                    Err(failed(
                        format!("{what}: status line {:?}, expected 404", r.status_line),
                        "http.missing-not-404",
                        "a file that does not exist is `404 Not Found`",
                    ))
                }
            })
        });

        let what = "a malformed request line `BOGUS`";
        cases.run(what, || {
            exchange(what, b"BOGUS\r\n\r\n", false).and_then(|r| {
                if r.status == 400 {
                    Ok(format!("{what}: 400"))
                } else {
                    Err(failed(
                        format!("{what}: status line {:?}, expected 400", r.status_line),
                        "http.malformed-request-accepted",
                        "a request line that is not `METHOD TARGET HTTP/1.x` is `400 Bad Request`",
                    ))
                }
            })
        });

        let what = "a request target without its leading `/` (`GET notes.txt HTTP/1.1`)";
        cases.run(what, || {
            exchange(
                what,
                b"GET notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                false,
            )
            .and_then(|r| {
                if r.status == 400 || r.status == 404 {
                    Ok(format!("{what}: {}", r.status))
                } else {
                    Err(failed(
                        format!("{what}: status line {:?}, expected 400 (or 404)", r.status_line),
                        "http.malformed-request-accepted",
                        "a request target is a path beginning with `/` (`GET /notes.txt`): any other target is `400 Bad Request`, as is a version that is not HTTP/1.x",
                    ))
                }
            })
        });

        for target in ["/../secret.txt", "/notes.txt/../../secret.txt"] {
            let what = format!("GET {target} (secret.txt lies beside the root)");
            cases.run(what.clone(), || {
                exchange(&what, &get(target), false).and_then(|r| {
                    let leaked = r
                        .body
                        .windows(docs.secret.len())
                        .any(|w| w == docs.secret.as_slice());
                    if leaked || !(r.status == 404 || r.status == 400) {
                        Err(failed(
                            format!(
                                "{what}: status line {:?}{}",
                                r.status_line,
                                if leaked {
                                    ", and the body holds secret.txt"
                                } else {
                                    ""
                                }
                            ),
                            "http.path-leaves-the-root",
                            "a `..` segment climbs out of the document root: answer 404 or 400 for any path with `..`",
                        ))
                    } else {
                        Ok(format!("{what}: {}", r.status))
                    }
                })
            });
        }

        let what = "GET /./notes.txt (a `.` segment)";
        cases.run(what, || {
            exchange(what, &get("/./notes.txt"), false).and_then(|r| {
                // A redirect to the clean path is a correct answer too.
                if (300..400).contains(&r.status) && r.header("location").is_some() {
                    return Ok(format!("{what}: {} to {}", r.status, r.header("location").unwrap_or("")));
                }
                if r.status != 200 {
                    return Err(failed(
                        format!("{what}: status line {:?}, expected 200 with notes.txt", r.status_line),
                        "http.dot-segment-refused",
                        "a `.` segment names the directory it is in: `/./notes.txt` is `/notes.txt` (only `..` climbs, and only `..` is refused)",
                    ));
                }
                check_file(what, &r, &docs.notes, "text/plain", false)
            })
        });

        let what = "5 GET requests one after another on one keep-alive connection";
        cases.run(what, || {
            let mut conn = open(what)?;
            for i in 1..=5 {
                conn.send(&get("/index.html")).map_err(|e| {
                    failed(
                        format!("{what}: request {i}: send failed: {e}"),
                        Missing::ClosedBefore.cause_id(),
                        Missing::ClosedBefore.cause(),
                    )
                })?;
                let label = format!("keep-alive request {i} of 5");
                let r = conn.response(false).map_err(|m| missing(&label, m))?;
                check_file(&label, &r, &docs.index, "text/html", false)?;
            }
            Ok(format!("{what}: 5 responses"))
        });

        let what = "GET with `Connection: close`";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(
                &mut conn,
                what,
                b"GET /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )?;
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            check_file(what, &r, &docs.notes, "text/plain", false)?;
            closes_after(
                what,
                &mut conn,
                "http.not-closed-after-close",
                "after a request with `Connection: close`, close the connection once the response is written",
            )
        });

        let what = "GET /index.html sent one byte per write";
        cases.run(what, || {
            let mut conn = open(what)?;
            for byte in get("/index.html") {
                conn.send(&[byte]).map_err(|e| {
                    failed(
                        format!("{what}: send failed: {e}"),
                        "http.split-request-refused",
                        "the server closed a connection whose request was incomplete",
                    )
                })?;
                std::thread::sleep(Duration::from_millis(self.byte_pause_ms));
            }
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            check_file(what, &r, &docs.index, "text/html", false)
        });

        let what = "3 pipelined requests in one write (index.html, notes.txt, style.css)";
        cases.run(what, || {
            let mut conn = open(what)?;
            let mut batch = get("/index.html");
            batch.extend(get("/notes.txt"));
            batch.extend(get("/style.css"));
            sent(&mut conn, what, &batch)?;
            let expected: [(&str, &[u8], &str); 3] = [
                ("index.html", &docs.index, "text/html"),
                ("notes.txt", &docs.notes, "text/plain"),
                ("style.css", &docs.style, "text/css"),
            ];
            for (i, (name, body, kind)) in expected.iter().enumerate() {
                let label = format!("pipelined response {} of 3 ({name})", i + 1);
                let r = conn.response(false).map_err(|m| {
                    let lost = missing(&label, m);
                    failed(lost.message, "http.pipelined-unanswered", format!("{}; one read may hold several requests: answer each, in order, before waiting again", lost.cause))
                })?;
                check_file(&label, &r, body, kind, false)?;
            }
            Ok(format!("{what}: 3 responses in order"))
        });

        let what = "DELETE /notes.txt";
        cases.run(what, || {
            exchange(
                what,
                b"DELETE /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                false,
            )
            .and_then(|r| check_405(what, &r))
        });

        let what = "GET /notes.txt HTTP/1.0, without `Connection: keep-alive`";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(&mut conn, what, b"GET /notes.txt HTTP/1.0\r\n\r\n")?;
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            check_file(what, &r, &docs.notes, "text/plain", false)?;
            closes_after(
                what,
                &mut conn,
                "http.http10-kept-open",
                "HTTP/1.0 closes the connection after each response unless the request says `Connection: keep-alive`: look at the request line's version too",
            )
        });

        let what = "HEAD /missing.html, then GET /style.css on the same connection";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(&mut conn, what, b"HEAD /missing.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            let r = conn.response(true).map_err(|m| missing("HEAD /missing.html", m))?;
            if r.status != 404 {
                return Err(failed(
                    format!("HEAD /missing.html: status line {:?}, expected 404", r.status_line),
                    "http.missing-not-404",
                    "a file that does not exist is `404 Not Found`, for HEAD as for GET",
                ));
            }
            let no_body = "the answer to HEAD is a head only, whatever its status: the 404's Content-Length tells the size of the body a GET would get, and no body follows";
            let closing = r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let tail = conn.tail(Duration::from_millis(300));
            if !tail.bytes.is_empty() {
                return Err(failed(
                    format!(
                        "HEAD /missing.html: {} bytes followed the 404's head: {:?}",
                        tail.bytes.len(),
                        excerpt(&tail.bytes)
                    ),
                    "http.head-with-body",
                    no_body,
                ));
            }
            if closing || tail.closed {
                return Ok(format!("{what}: 404 head, no body, then the server closed"));
            }
            sent(&mut conn, what, &get("/style.css"))?;
            let r = conn.response(false).map_err(|m| {
                let lost = missing("GET /style.css after HEAD /missing.html", m);
                failed(lost.message, "http.head-with-body", format!("{}; {no_body}", lost.cause))
            })?;
            check_file(
                "GET /style.css after HEAD /missing.html",
                &r,
                &docs.style,
                "text/css",
                false,
            )?;
            Ok(format!("{what}: 404 head, no body; the GET answered"))
        });

        let what = "GET with `connection: close` (the header name in lower case)";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(
                &mut conn,
                what,
                b"GET /notes.txt HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
            )?;
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            check_file(what, &r, &docs.notes, "text/plain", false)?;
            closes_after(
                what,
                &mut conn,
                "http.connection-header-case",
                "header names are case-insensitive: `connection: close` is `Connection: close` (compare names with eq_ignore_ascii_case)",
            )
        });

        let limit = self.max_head_bytes;
        let what = format!("a request head of exactly {limit} bytes (the limit)");
        cases.run(what.clone(), || {
            exchange(&what, &long_head("/notes.txt", limit, true), false).and_then(|r| {
                if r.status == 400 {
                    return Err(failed(
                        format!("{what}: status line {:?}, expected 200", r.status_line),
                        "http.head-limit-too-small",
                        format!("a request head of up to {limit} bytes is served: the limit on a head is {limit} bytes, request line, headers and the blank line together"),
                    ));
                }
                check_file(&what, &r, &docs.notes, "text/plain", false)
            })
        });

        let over = limit + 1;
        let too_long = format!("a request head longer than {limit} bytes is answered `400 Bad Request` and the connection closed");
        let what = format!("a whole request head of {over} bytes (the limit is {limit})");
        cases.run(what.clone(), || {
            let mut conn = open(&what)?;
            sent(&mut conn, &what, &long_head("/notes.txt", over, true))?;
            let r = conn.response(false).map_err(|m| {
                if matches!(m, Missing::ClosedBefore) {
                    let lost = missing(&what, m);
                    return failed(lost.message, "http.closed-without-400", format!("{too_long}: answer 400 before closing"));
                }
                missing(&what, m)
            })?;
            if r.status != 400 {
                return Err(failed(
                    format!("{what}: status line {:?}, expected 400", r.status_line),
                    "http.no-head-limit",
                    format!("{too_long}; the limit holds for a head that did end, too: check where it ends"),
                ));
            }
            closes_after(&what, &mut conn, "http.not-closed-after-400", &too_long)
                .map(|_| format!("{what}: 400, then EOF"))
        });

        let endless = 2 * limit;
        let what = format!("a request head that never ends ({endless} bytes sent)");
        cases.run(what.clone(), || {
            let mut conn = open(&what)?;
            sent(&mut conn, &what, &long_head("/notes.txt", endless, false))?;
            let r = conn.response(false).map_err(|m| {
                let (timed_out, closed) = (
                    matches!(m, Missing::Timeout(_)),
                    matches!(m, Missing::ClosedBefore),
                );
                let lost = missing(&what, m);
                if timed_out {
                    failed(lost.message, "http.head-limit-waits-for-the-end", format!("{too_long}, without waiting for its end: once {limit} bytes hold no blank line, the head is too long (else one client grows the buffer without bound)"))
                } else if closed {
                    failed(lost.message, "http.closed-without-400", format!("{too_long}: answer 400 before closing"))
                } else {
                    lost
                }
            })?;
            if r.status != 400 {
                return Err(failed(
                    format!("{what}: status line {:?}, expected 400", r.status_line),
                    "http.no-head-limit",
                    too_long.clone(),
                ));
            }
            closes_after(&what, &mut conn, "http.not-closed-after-400", &too_long)
                .map(|_| format!("{what}: 400, then EOF"))
        });

        let smuggled = get("/notes.txt");
        let what = format!(
            "POST /notes.txt with a {}-byte body that is itself a GET request, then GET /style.css, in one write",
            smuggled.len()
        );
        let dropped = "a request's body (Content-Length bytes after its head, whatever the method) is dropped: it is never read as the next request";
        cases.run(what.clone(), || {
            let mut conn = open(&what)?;
            let mut batch = format!("POST /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", smuggled.len()).into_bytes();
            batch.extend_from_slice(&smuggled);
            batch.extend(get("/style.css"));
            sent(&mut conn, &what, &batch)?;
            let r = conn.response(false).map_err(|m| missing("POST /notes.txt", m))?;
            check_405("POST /notes.txt", &r)?;
            let r = conn.response(false).map_err(|m| {
                let closed = matches!(m, Missing::ClosedBefore);
                let lost = missing("GET /style.css after the POST", m);
                if closed {
                    failed(lost.message, "http.closed-after-405", format!("a 405 keeps the connection (unless the request said `Connection: close`): {dropped}"))
                } else {
                    lost
                }
            })?;
            if r.status == 200 && r.body == docs.notes {
                return Err(failed(
                    "GET /style.css after the POST: the second response carries notes.txt: the POST's body was answered as a request",
                    "http.body-parsed-as-request",
                    dropped,
                ));
            }
            check_file("GET /style.css after the POST", &r, &docs.style, "text/css", false)
                .map_err(|f| Failed {
                    message: format!("{} (the bytes after the POST's head were its body, then this GET)", f.message),
                    ..f
                })?;
            nothing_more(&what, &mut conn, Duration::from_millis(300), "http.body-parsed-as-request", dropped)?;
            Ok(format!("{what}: 405 with Allow, then style.css, nothing else"))
        });

        let body = get("/style.css");
        let split = body.len() / 3;
        let what = format!(
            "GET /index.html with a {}-byte body in two writes, then GET /notes.txt",
            body.len()
        );
        let later = "a body may arrive over several reads: drop what has come, and remember how much is still to come";
        cases.run(what.clone(), || {
            let mut conn = open(&what)?;
            let mut first = format!("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            first.extend_from_slice(&body[..split]);
            sent(&mut conn, &what, &first)?;
            std::thread::sleep(Duration::from_millis(100));
            let mut second = body[split..].to_vec();
            second.extend(get("/notes.txt"));
            sent(&mut conn, &what, &second)?;
            let r = conn
                .response(false)
                .map_err(|m| missing("GET /index.html with a body", m))?;
            check_file("GET /index.html with a body", &r, &docs.index, "text/html", false)?;
            let rest = body.len() - split;
            let r = conn.response(false).map_err(|m| {
                let closed = matches!(m, Missing::ClosedBefore);
                let lost = missing("GET /notes.txt after the body", m);
                let message = format!("{} (the body's last {rest} bytes came in a second write, with this GET)", lost.message);
                if closed {
                    failed(message, "http.body-split-lost", later)
                } else {
                    Failed { message, ..lost }
                }
            })?;
            if r.status != 200 || r.body != docs.notes {
                return Err(failed(
                    format!("GET /notes.txt after the body: status line {:?} with {} body bytes, expected notes.txt (the body's last {rest} bytes came in a second write, right before this GET)", r.status_line, r.body.len()),
                    "http.body-split-lost",
                    later,
                ));
            }
            nothing_more(&what, &mut conn, Duration::from_millis(300), "http.body-split-lost", later)?;
            Ok(format!("{what}: index.html, then notes.txt, nothing else"))
        });

        let unframed = "a request whose Content-Length is not one number cannot be framed (where does its body end?): answer `400 Bad Request` and close the connection (RFC 9112, section 6.3)";
        let what = "GET /notes.txt with `Content-Length: twelve`";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(
                &mut conn,
                what,
                b"GET /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: twelve\r\n\r\n",
            )?;
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            if r.status != 400 {
                return Err(failed(
                    format!("{what}: status line {:?}, expected 400", r.status_line),
                    "http.bad-content-length-accepted",
                    unframed,
                ));
            }
            closes_after(what, &mut conn, "http.not-closed-after-400", unframed)
                .map(|_| format!("{what}: 400, then EOF"))
        });

        let what = "GET /notes.txt with two Content-Length headers that disagree (4 and 6, then 6 body bytes)";
        cases.run(what, || {
            let mut conn = open(what)?;
            sent(
                &mut conn,
                what,
                b"GET /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nContent-Length: 6\r\n\r\nabcdef",
            )?;
            let r = conn.response(false).map_err(|m| missing(what, m))?;
            if r.status != 400 {
                return Err(failed(
                    format!("{what}: status line {:?}, expected 400", r.status_line),
                    "http.bad-content-length-accepted",
                    format!("{unframed}; two Content-Length headers with different values are not one number: which one frames the request is anyone's guess (request smuggling lives there)"),
                ));
            }
            closes_after(what, &mut conn, "http.not-closed-after-400", unframed)
                .map(|_| format!("{what}: 400, then EOF"))
        });
        cases.done
    }
}

impl Check for Http {
    fn summary(&self) -> String {
        format!("HTTP/1.1: GET, HEAD, 404, 400, 405, `..`, keep-alive, Connection: close, HTTP/1.0, a head limit of {} bytes, request bodies and their Content-Length, split and pipelined requests, against a temporary --root", self.max_head_bytes)
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let docs = DocRoot::create(ctx.seed)?;
        let mut args = self.args.clone();
        args.extend(docs.args());
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        ctx.log
            .detail(format!("document root: {}", docs.path().display()));
        let results = self.cases(server.addr, &docs);
        let total = results.len();
        for (what, result) in results {
            match result {
                Ok(line) => ctx.log.detail(format!("ok: {line}")),
                Err(f) => {
                    return Ok(StepOutcome::fail(f.message)
                        .cause_as(f.id, f.cause)
                        .evidence(
                            std::iter::once(format!("case: {what}"))
                                .chain(Ctx::server_evidence(&mut server)),
                        ))
                }
            }
        }
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail("the server died during the HTTP probes")
                .cause("a client's request must never end the server")
                .evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        Ok(StepOutcome::pass(format!("{total} HTTP cases answered correctly"))
            .figure("http_cases", total)
            .proof_line(format!(
                "http: {total} cases: GET and HEAD with Content-Length and Content-Type, 404 (HEAD without a body), 400, 405 with Allow, `..` refused, keep-alive, Connection: close in any case, HTTP/1.0 closes, heads over {} bytes refused, bodies dropped, a Content-Length that is not one number refused, split and pipelined requests",
                self.max_head_bytes
            )))
    }
}
