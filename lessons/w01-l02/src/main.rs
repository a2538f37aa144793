//! w01-l02 — Length-prefixed frames.
//!
//! TCP carries bytes, not messages. This server gives them a shape: a 4-byte
//! big-endian length `L`, then `L` bytes. The stub gives you the reference
//! l01 server, moved onto frames: the command line (with `--max-frame`), the
//! listening line, the accept loop and `serve_client`, which echoes frame
//! after frame. Write `read_frame` and `write_frame` to the contracts in
//! their doc comments; the unit tests at the bottom try them on a reader
//! that hands out one byte at a time (`cargo test`). Still one client at a
//! time.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

use clap::Parser;

/// Bytes in a frame's length prefix.
#[allow(dead_code)] // given for `read_frame` and `write_frame`: unused until you write them
const HEADER_LEN: usize = 4;

/// A blocking echo server of length-prefixed frames, one client at a time.
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

/// Serves clients one after another, forever.
fn accept_loop(listener: &TcpListener, max_frame: usize) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                eprintln!("{peer}: connected");
                // An error ends this client only: an oversize frame
                // (InvalidData), a client gone mid-frame (UnexpectedEof), a
                // reset. Log it, drop the stream (closing it), serve the next.
                match serve_client(&mut stream, max_frame) {
                    Ok(frames) => eprintln!("{peer}: closed after {frames} frames"),
                    Err(e) => eprintln!("{peer}: {e}; closing the connection"),
                }
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
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

/// Reads the next frame from a blocking stream, whatever pieces its bytes
/// arrive in. A frame is a 4-byte big-endian length `L`, then `L` bytes of
/// payload, and `L` may be 0. A read hands over whatever has arrived so
/// far, from a single byte up; nothing past the end of this frame may be
/// consumed, because those bytes begin the next one.
///
/// Returns:
/// - `Ok(Some(bytes))`: the payload of one whole frame, empty when `L` is 0.
/// - `Ok(None)`: the client closed its side before the first byte of a
///   frame. That is how a conversation ends; it is not an error.
/// - an error of kind `UnexpectedEof`: the client closed in the middle of a
///   frame, inside the length prefix or inside the payload.
/// - an error of kind `InvalidData` when `L` is over `max_frame` (a frame of
///   exactly `max_frame` bytes is allowed), its message naming `L` and the
///   limit. It is returned as soon as the prefix is known, before any room
///   is made for the payload or any of it is read: the stream is out of step
///   and the caller logs the message and closes this connection.
/// - any other error of the stream (a reset, say), as it came. A read
///   interrupted by a signal (`Interrupted`) is no error: read again.
///
/// Whatever a client sends, the function returns: it never panics or ends
/// the process, so one bad client costs one connection, not the server.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn read_frame(stream: &mut impl Read, max_frame: usize) -> io::Result<Option<Vec<u8>>> {
    todo!("gap `read_frame`: write it to the contract in its doc comment")
}

/// Sends `payload` as one frame: its length as 4 big-endian bytes (most
/// significant first, the order the client decodes), then the payload. An
/// empty payload is a frame of 4 zero bytes.
///
/// Returns `Ok(())` once every byte of the frame is handed to the kernel:
/// one write may take only part of what it is given. Prefix and payload go
/// out in a single buffer, so a small frame leaves in one segment rather
/// than two (a second small write can wait a round trip behind the first).
/// A payload too long for a 4-byte length is an error of kind
/// `InvalidInput`, with nothing sent; any error of the stream (a reset, a
/// closed peer) is returned as it came, and ends this client.
#[allow(unused_variables)] // the stub's todo!() leaves the parameters unused
fn write_frame(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    todo!("gap `write_frame`: write it to the contract in its doc comment")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, ErrorKind};

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

    /// A reader whose first read fails with `first_error`, then hands out
    /// `bytes` (and then end of file).
    struct FailsOnce {
        first_error: Option<ErrorKind>,
        bytes: Cursor<Vec<u8>>,
    }

    impl Read for FailsOnce {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.first_error.take() {
                Some(kind) => Err(kind.into()),
                None => self.bytes.read(buf),
            }
        }
    }

    #[test]
    fn an_interrupted_read_is_read_again() {
        let mut r = FailsOnce {
            first_error: Some(ErrorKind::Interrupted),
            bytes: Cursor::new(framed(&[b"again"])),
        };
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"again");
    }

    #[test]
    fn any_other_read_error_is_returned_as_it_came() {
        let mut r = FailsOnce {
            first_error: Some(ErrorKind::ConnectionReset),
            bytes: Cursor::new(Vec::new()),
        };
        assert_eq!(
            read_frame(&mut r, 100).unwrap_err().kind(),
            ErrorKind::ConnectionReset
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
