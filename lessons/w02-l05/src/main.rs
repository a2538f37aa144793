//! w02-l05 — Non-blocking sockets.
//!
//! One thread serves every client: every socket is non-blocking, so no call
//! ever sleeps, and one loop visits the listener and every connection in
//! turn. Raw bytes are echoed as they come (frames pass unchanged).
//!
//! The stub gives you the command line, the listening socket and its
//! listening line (`main`), and the two types the loop works with: `Conn`
//! (one client) and `Progress` (what one visit to it did). Write the three
//! functions below to the contracts in their doc comments: `serve` (the
//! loop), `accept_clients` and `Conn::echo_available`.

// Until those three are written, the code that calls them and what they
// use go unused (and clippy would have `conns` a slice, with nothing
// pushed onto it yet): delete the next line once they are, so the
// compiler's warnings speak for your code again.
#![allow(dead_code, unused_imports, unused_variables, clippy::ptr_arg)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// A single-threaded echo server on non-blocking sockets.
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

/// How long the loop naps after a pass in which nothing happened.
const NAP: Duration = Duration::from_millis(1);

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
    println!("listening on {local}");

    match serve(&listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server: one thread serves every client, for ever.
///
/// Receives the listener as `main` bound it: still blocking, its address
/// already announced. Before anything else the listener must become
/// non-blocking, because an accept that may sleep until the next client
/// connects stops the whole server meanwhile. If that fails, the error is
/// returned (`main` reports it and exits); otherwise the function never
/// returns.
///
/// Then it goes round, pass after pass:
/// - every client waiting in the listener's queue is taken in
///   (`accept_clients`);
/// - every connection is visited once (`Conn::echo_available`); one whose
///   visit says it is closed or broken is dropped at once (dropping a `Conn`
///   closes its socket), with a line on stderr saying which and how many
///   are left, and no other connection is disturbed;
/// - a pass in which nothing happened (no client taken in, no byte echoed)
///   ends in a nap of `NAP`, so a server nobody talks to uses next to no
///   CPU; a pass that did something goes straight on to the next one.
///
/// No other thread, no call that may block: a client that sends nothing
/// must never keep the others waiting.
fn serve(listener: &TcpListener) -> io::Result<()> {
    todo!("gap `serve`: write it to the contract in its doc comment")
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
}

/// What one visit to a connection did.
enum Progress {
    /// Bytes were read and written back.
    Echoed,
    /// The client had sent nothing new (or the read was interrupted).
    Nothing,
    /// The client closed its side (read returned 0).
    Closed,
}

impl Conn {
    /// Echoes what the client has sent since the last visit, if anything.
    ///
    /// The socket is non-blocking, so the one read this visit makes returns
    /// at once. Whatever it brings is written back, all of it, before the
    /// function returns: bytes go back as they came, so frames pass
    /// unchanged. A write the client does not make room for is an error of
    /// this connection for now (lesson l08 makes the server wait for it).
    ///
    /// - `Echoed`: some bytes came and went back.
    /// - `Nothing`: no byte was waiting (WouldBlock: the read would have had
    ///   to wait), or a signal came first (Interrupted). Neither is an
    ///   error: the connection stays, and the next pass looks again.
    /// - `Closed`: the read returned 0, the client closed its side. At a
    ///   frame's boundary or in the middle of one alike: what came was
    ///   echoed already, nothing is held back.
    /// - `Err`: anything else (a reset, ...): this connection is broken.
    ///   The caller closes it, and only it.
    fn echo_available(&mut self) -> io::Result<Progress> {
        todo!("gap `echo_available`: write it to the contract in its doc comment")
    }
}

/// Takes in every client waiting in the listener's queue, and says whether
/// there was any.
///
/// The listener is non-blocking. Each accepted connection joins `conns`
/// (with a line on stderr) only once it is non-blocking itself: it does not
/// inherit that mode from the listener, and a single blocking socket puts
/// the whole server to sleep in its first read. One that cannot be made
/// non-blocking is logged and dropped, and accepting goes on.
///
/// What each accept can say:
/// - a connection: taken in as above; then accept again, for several
///   clients may be waiting at once;
/// - WouldBlock: the queue is empty. The normal end of every call, not an
///   error: return, logging nothing (it happens on every pass);
/// - Interrupted: a signal came first: return, the next pass asks again;
/// - any other error (ECONNABORTED, a client that left while queued;
///   EMFILE or ENFILE, no file descriptor free): log it and return. It
///   never ends the server, and accept is not asked again at once: at
///   EMFILE the same error comes back for as long as clients wait, and a
///   loop that retries it never gets back to the clients it holds.
///
/// Returns true if at least one connection was added to `conns`.
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>) -> bool {
    todo!("gap `accept_clients`: write it to the contract in its doc comment")
}
