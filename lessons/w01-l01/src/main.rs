//! w01-l01 — Blocking echo server.
//!
//! The simplest server there is: accept one client, send back every byte it
//! sends until it closes its side, then accept the next one. Every call blocks
//! the one and only thread, which is fine for one client and is exactly the
//! problem the rest of the course solves.
//!
//! Given: the command line, binding the listener and printing the
//! `listening on` line (the checker reads the port from it). Yours: the two
//! functions at the end, `accept_loop` and `echo_client`, each written to
//! the contract in its doc comment (README.md, Task).

use std::io;
// The traits that give a TcpStream its read and write methods: the two
// functions you write need them.
#[allow(unused_imports)]
use std::io::{Read, Write};
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

/// Serves clients one after another, for as long as the server runs: it
/// never returns.
///
/// Receives the listening socket, already bound and announced. Each round
/// waits for the next client to connect (the wait blocks the only thread:
/// expected in this lesson), has [`echo_client`] serve that connection,
/// closes it once [`echo_client`] is done, and starts over. It logs to
/// stderr, with the client's address, that a client arrived and how its
/// connection ended.
///
/// What each outcome means:
/// - A client was served to its end (`Ok`, with the byte count): log it and
///   take the next client.
/// - Serving a client failed (`Err`: it reset the connection, or vanished
///   mid-echo). That ends this one client, never the server: log the error
///   and take the next client. Nothing a client does may stop the server,
///   so no panic and no early return here.
/// - Accepting failed (`Err`: a client that gave up while it waited in the
///   queue, or no file descriptor left): log it and wait for the next one.
#[allow(unused_variables)] // the stub's todo!() leaves the parameter unused
fn accept_loop(listener: &TcpListener) {
    todo!("gap `accept_loop`: write it to the contract in its doc comment")
}

/// Sends one client back every byte it sends, in order, until it closes its
/// side; returns how many bytes were echoed.
///
/// Receives the connected socket of one client; its reads and writes block
/// the thread until the kernel has something for them. The bytes arrive as
/// a stream, not as messages: one read hands over whatever has arrived so
/// far, from a single byte up to the room you give it, and where reads split
/// the client's writes does not matter to a byte echo.
///
/// What each outcome of a read means:
/// - `Ok(n)` with n > 0: n new bytes. Send back exactly those n, all of them,
///   before reading again. A write may accept fewer bytes than it was given
///   (a short write, when the kernel's send buffer is full or a signal
///   arrives mid-way); the rest must still be sent, or the client's stream
///   has a hole in it.
/// - `Ok(0)`: end of file. The client has closed its side and will send
///   nothing more: this is the normal end of the conversation, not "no data
///   yet". Return the total echoed.
/// - `Err` of kind `Interrupted`: a signal arrived before any byte did;
///   nothing was lost, read again.
/// - Any other `Err` (for example a reset, `ConnectionReset`): the
///   connection is broken; return the error for the caller to log. A failed
///   write is returned the same way.
///
/// Afterwards every byte received has been sent back; closing the
/// connection is the caller's job.
#[allow(dead_code)] // called by accept_loop once it is written, not by the stub's todo!()
#[allow(unused_variables)] // the stub's todo!() leaves the parameter unused
fn echo_client(stream: &mut TcpStream) -> io::Result<u64> {
    todo!("gap `echo_client`: write it to the contract in its doc comment")
}
