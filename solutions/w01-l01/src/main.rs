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
    // BEGIN GAP accept_loop
    loop {
        // accept() sleeps until a client connects. While echo_client below is
        // busy with one client, nobody else gets accepted: they wait in the
        // kernel's accept queue (lesson l03 gives each client its own thread).
        match listener.accept() {
            Ok((mut stream, peer)) => {
                eprintln!("{peer}: connected");
                // A failing client is that client's problem: log it and move
                // on, so one broken connection never stops the server.
                match echo_client(&mut stream) {
                    Ok(total) => eprintln!("{peer}: closed after {total} bytes"),
                    Err(e) => eprintln!("{peer}: {e}; dropping the connection"),
                }
                // `stream` is dropped here, which closes the socket.
            }
            // Failing accepts (a client that reset while queued, or running out
            // of file descriptors) are not a reason to stop serving either.
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    // STUB
    // // TODO: loop forever. `listener.accept()` blocks until a client connects
    // // and returns `(stream, peer)`. Pass the stream to `echo_client`, then log
    // // to stderr how it went, with `peer` in the line. An error from one client
    // // (or from accept itself) is logged and the loop goes on to the next one:
    // // it must never end the server.
    // todo!()
    // END GAP
}

/// Echoes everything one client sends until it closes its side.
/// Returns the number of bytes echoed.
fn echo_client(stream: &mut TcpStream) -> io::Result<u64> {
    // BEGIN GAP echo_client
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            // Ok(0) is end of file: the client closed its side and will send
            // nothing more. It is the normal way a conversation ends.
            Ok(0) => return Ok(total),
            Ok(n) => n,
            // A signal interrupted the read before any byte arrived: try again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // read() returns whatever has arrived, which may be part of what the
        // client wrote or several of its writes at once; a byte echo does not
        // care. write_all() loops until every byte is handed to the kernel,
        // because a single write() may take only some of them.
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
    // STUB
    // // TODO: make a buffer (a few KiB) and loop: `stream.read(&mut buf)` blocks
    // // until bytes arrive and returns how many. Ok(0) means the client closed
    // // its side: return the total echoed. Otherwise send back exactly those
    // // bytes with `stream.write_all(&buf[..n])`; a single `write` may take only
    // // some. Retry a read that fails with ErrorKind::Interrupted; return any
    // // other error with `?`.
    // todo!()
    // END GAP
}
