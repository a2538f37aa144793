//! w01-l01 — Blocking echo server.
//!
//! The simplest server there is: accept one client, send back every byte it
//! sends until it closes its side, then accept the next one. Every call blocks
//! the one and only thread, which is fine for one client and is exactly the
//! problem the rest of the course solves.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

use clap::Parser;

/// A blocking TCP echo server that serves one client at a time.
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

fn main() -> ExitCode {
    let args = Args::parse();

    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    // Print the address the kernel really gave us: with `--port 0` only the
    // listener knows the port, and the checker reads it from this line.
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {local}");

    accept_loop(&listener);
    ExitCode::SUCCESS
}

/// Serves clients one after another, forever.
fn accept_loop(listener: &TcpListener) {
    // TODO: loop forever. `listener.accept()` blocks until a client connects
    // and returns `(stream, peer)`. Pass the stream to `echo_client`, then log
    // to stderr how it went, with `peer` in the line. An error from one client
    // (or from accept itself) is logged and the loop goes on to the next one:
    // it must never end the server.
    todo!()
}

/// Echoes everything one client sends until it closes its side.
/// Returns the number of bytes echoed.
fn echo_client(stream: &mut TcpStream) -> io::Result<u64> {
    // TODO: make a buffer (a few KiB) and loop: `stream.read(&mut buf)` blocks
    // until bytes arrive and returns how many. Ok(0) means the client closed
    // its side: return the total echoed. Otherwise send back exactly those
    // bytes with `stream.write_all(&buf[..n])`; a single `write` may take only
    // some. Retry a read that fails with ErrorKind::Interrupted; return any
    // other error with `?`.
    todo!()
}
