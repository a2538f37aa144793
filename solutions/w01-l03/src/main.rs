//! w01-l03 — Thread per connection.
//!
//! The frame server of l02, but every accepted client gets its own thread,
//! so a client that connects and goes quiet no longer blocks everyone else.
//! Each thread costs a stack and a kernel task: the checker counts them in
//! /proc and reports threads and memory per connection.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;

use clap::Parser;

/// Bytes in a frame's length prefix.
const HEADER_LEN: usize = 4;

/// A blocking echo server of length-prefixed frames, a thread per client.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 lets the kernel choose a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// The largest frame payload accepted, in bytes; a longer frame closes
    /// the connection.
    #[arg(long, default_value_t = 65536)]
    max_frame: usize,
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

    accept_loop(&listener, args.max_frame);
    ExitCode::SUCCESS
}

/// Accepts clients forever, each served on a thread of its own.
fn accept_loop(listener: &TcpListener, max_frame: usize) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                // BEGIN GAP accept_loop
                // `move` gives the thread its own stream, peer and limit; the
                // loop goes straight back to accept() while it runs.
                // Builder::spawn returns an error when the OS refuses a new
                // thread (thread::spawn would panic and end the server).
                let spawned = thread::Builder::new()
                    .name(format!("client {peer}"))
                    .spawn(move || handle_client(stream, peer, max_frame));
                if let Err(e) = spawned {
                    // The stream moved into the closure, which was dropped
                    // with the error: the connection is already closed.
                    eprintln!("{peer}: cannot start a thread ({e}); connection dropped");
                }
                // STUB
                // // TODO: give this client a thread of its own and go straight
                // // back to accept(). thread::Builder::new().name(..).spawn(
                // // move || handle_client(stream, peer, max_frame)) moves the
                // // stream into the new thread. Unlike thread::spawn, Builder
                // // returns an Err instead of panicking when the OS refuses a
                // // thread: log it with eprintln! (the connection is dropped).
                // todo!()
                // END GAP
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

/// One client's whole life, on its own thread: serve it, log how it ended.
/// Nothing here may panic: a panic would end this thread only, but an
/// unwrap() on a client's error is still a bug.
fn handle_client(mut stream: TcpStream, peer: SocketAddr, max_frame: usize) {
    eprintln!("{peer}: connected");
    // An error ends this client only: an oversize frame (InvalidData), a
    // client gone mid-frame (UnexpectedEof), a reset.
    match serve_client(&mut stream, max_frame) {
        Ok(frames) => eprintln!("{peer}: closed after {frames} frames"),
        Err(e) => eprintln!("{peer}: {e}; closing the connection"),
    }
    // Returning drops `stream`, which closes the socket; the thread ends.
}

/// Echoes frames until the client closes its side between two frames.
/// Returns the number of frames echoed.
fn serve_client(stream: &mut TcpStream, max_frame: usize) -> io::Result<u64> {
    let mut frames = 0;
    while let Some(payload) = read_frame(stream, max_frame)? {
        write_frame(stream, &payload)?;
        frames += 1;
    }
    Ok(frames)
}

/// Reads one whole frame from a blocking stream, however its bytes are
/// split across reads.
///
/// Returns:
/// - `Ok(Some(payload))`: a complete frame; the payload may be empty.
/// - `Ok(None)`: the client closed its side before the first byte of a
///   frame. That is how a conversation ends; it is not an error.
/// - `Err` of kind `UnexpectedEof`: the client closed in the middle of a
///   frame (inside the length prefix or the payload).
/// - `Err` of kind `InvalidData`: the length prefix is over `max_frame`.
///   The payload is not read: the stream is out of step and must be closed.
/// - any other `Err` from the stream (a reset, say).
fn read_frame(stream: &mut impl Read, max_frame: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    // read() returns whatever has arrived, maybe a single byte: loop until
    // the prefix is whole. A plain read_exact would do it too, but could not
    // tell a clean end (no byte yet) from an end inside the prefix.
    while filled < HEADER_LEN {
        match stream.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a length prefix ({filled} of {HEADER_LEN} bytes)"
                    ),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    // Check the length before allocating or reading anything: a hostile
    // prefix could ask for 4 GiB.
    if len > max_frame {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds --max-frame {max_frame}"),
        ));
    }
    // read_exact loops over short reads itself (and retries Interrupted).
    // For L = 0 it reads nothing and returns at once: an empty frame.
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Writes `payload` as one frame: its 4-byte big-endian length, then the
/// bytes, with a single `write_all` (one buffer, so small frames leave in
/// one segment instead of two).
fn write_frame(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidInput,
            "a frame carries at most u32::MAX bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A reader handing out at most `chunk` bytes per read, as a socket may.
    struct Trickle {
        bytes: Vec<u8>,
        chunk: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            Ok(n)
        }
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            write_frame(&mut out, payload).unwrap();
        }
        out
    }

    #[test]
    fn write_frame_prefixes_the_big_endian_length() {
        assert_eq!(framed(&[b"abc"]), [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(framed(&[b""]), [0, 0, 0, 0]);
    }

    #[test]
    fn frames_split_one_byte_per_read_come_out_whole() {
        let mut r = Trickle {
            bytes: framed(&[b"hello", b"", b"world"]),
            chunk: 1,
        };
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"world");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn an_end_inside_a_frame_is_unexpected_eof() {
        let mut r = Cursor::new(vec![0, 0]);
        assert_eq!(
            read_frame(&mut r, 100).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
        let mut truncated = framed(&[b"truncated"]);
        truncated.truncate(7);
        let mut r = Cursor::new(truncated);
        assert_eq!(
            read_frame(&mut r, 100).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_frame_over_max_frame_is_invalid_data_and_max_frame_itself_is_fine() {
        let mut r = Cursor::new(framed(&[&[1u8; 11]]));
        assert_eq!(
            read_frame(&mut r, 10).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        let mut r = Cursor::new(framed(&[&[1u8; 10]]));
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap().len(), 10);
    }
}
