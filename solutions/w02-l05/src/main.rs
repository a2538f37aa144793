//! w02-l05 — Non-blocking sockets.
//!
//! One thread serves every client. The listener and each client socket are
//! non-blocking: accept() and read() return WouldBlock instead of sleeping,
//! so the loop can visit every connection in turn and none can hold the
//! others up. Raw bytes are echoed as they come (frames pass unchanged).
//!
//! With no poll() yet, the loop has to nap a little when a whole pass found
//! nothing to do; the next lesson replaces the nap with poll().

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
    // BEGIN GAP main
    // A blocking accept() would sleep until the next client connects, and
    // nobody already connected would be served meanwhile.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("error: cannot make the listener non-blocking: {e}");
        return ExitCode::FAILURE;
    }
    // STUB
    // // TODO: make the listener non-blocking (`listener.set_nonblocking(true)`);
    // // on error, print it to stderr and return ExitCode::FAILURE. Without it,
    // // accept() sleeps until one more client connects and nobody is served.
    // END GAP
    println!("listening on {local}");

    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut busy = accept_clients(&listener, &mut conns);
        // Backwards, so swap_remove only moves connections already visited.
        for i in (0..conns.len()).rev() {
            match conns[i].echo_available() {
                Ok(Progress::Echoed) => busy = true,
                Ok(Progress::Nothing) => {}
                Ok(Progress::Closed) => {
                    let conn = conns.swap_remove(i); // dropping it closes the socket
                    eprintln!("{}: closed ({} active)", conn.peer, conns.len());
                }
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    eprintln!("{}: {e}; closing ({} active)", conn.peer, conns.len());
                }
            }
        }
        if !busy {
            std::thread::sleep(NAP);
        }
    }
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
    /// The client had sent nothing new (the read said WouldBlock).
    Nothing,
    /// The client closed its side (read returned 0).
    Closed,
}

impl Conn {
    /// Reads what the client has sent, if anything, and writes it back.
    ///
    /// - Ok(Echoed): some bytes came and were echoed.
    /// - Ok(Nothing): no bytes waiting; the read returned WouldBlock at once
    ///   instead of sleeping. Not an error: try again on the next pass.
    /// - Ok(Closed): clean EOF, or EOF in the middle of a frame alike: bytes
    ///   are echoed as they come, so nothing is left over either way.
    /// - Err(e): the connection is broken (reset by the client, ...).
    fn echo_available(&mut self) -> io::Result<Progress> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                // The client closed its side: nothing more will come.
                Ok(0) => return Ok(Progress::Closed),
                // Echo exactly what this read brought. write_all on a
                // non-blocking socket can fail with WouldBlock when the
                // client does not read; lesson l08 deals with that.
                Ok(n) => {
                    self.stream.write_all(&chunk[..n])?;
                    return Ok(Progress::Echoed);
                }
                // BEGIN GAP echo_available
                // Nothing there now: move on to the next connection.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Progress::Nothing),
                // STUB
                // // TODO: an `ErrorKind::WouldBlock` error means no bytes are
                // // waiting: return Ok(Progress::Nothing) and visit the next one.
                // END GAP
                // A signal interrupted the call: just try again.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Anything else belongs to this connection only.
                Err(e) => return Err(e),
            }
        }
    }
}

/// Accepts every connection waiting in the listener's queue; true if any.
fn accept_clients(listener: &TcpListener, conns: &mut Vec<Conn>) -> bool {
    let mut accepted = false;
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            // BEGIN GAP accept_clients
            // The queue is empty: back to serving the connected clients.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return accepted,
            // STUB
            // // TODO: `ErrorKind::WouldBlock` means the queue is empty: return
            // // `accepted` and go back to serving the connected clients.
            // END GAP
            // A signal interrupted the call: just try again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE...: not a reason to stop the server.
            Err(e) => {
                eprintln!("accept failed: {e}");
                return accepted;
            }
        };
        // BEGIN GAP accept_clients
        // An accepted socket does not inherit O_NONBLOCK from the listener:
        // set it on each one, or the first read() puts the server to sleep.
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("{peer}: cannot make the socket non-blocking: {e}");
            continue;
        }
        // STUB
        // // TODO: make `stream` non-blocking (it does not inherit O_NONBLOCK
        // // from the listener); on error, log it with `peer` and `continue`.
        // END GAP
        accepted = true;
        conns.push(Conn { stream, peer });
        eprintln!("{peer}: connected ({} active)", conns.len());
    }
}
