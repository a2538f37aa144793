//! The client side shared by the frame probes (`frames`, `oversize`,
//! `concurrency`, `pool`): connecting, sending bytes in planned pieces while
//! reading the echo on the same connection, and telling which frame an echo
//! went wrong in.
//!
//! Writing and reading happen on two threads, so a correct blocking server
//! that echoes while the client is still sending never deadlocks the probe.
//! Every wait is bounded by a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stress::frame::{encode, HEADER_LEN};

use super::excerpt;

/// How long a connect may take before the probe gives up on it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with a bounded wait; TCP_NODELAY so that each write leaves as
/// its own segment (a 1-byte write must reach the server as 1 byte).
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How reading an expected number of bytes ended.
#[derive(Debug)]
pub enum Ending {
    /// All the expected bytes arrived (they may still differ).
    Complete,
    /// The server closed the connection first.
    Eof,
    /// The deadline passed first.
    TimedOut,
    /// The connection failed (a reset, usually).
    Failed(std::io::Error),
}

impl Ending {
    /// The connection is gone: closed or reset by the server.
    pub fn is_closed(&self) -> bool {
        match self {
            Ending::Eof => true,
            Ending::Failed(err) => matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// In words, for messages: "closed", "reset", "timed out"...
    pub fn describe(&self) -> String {
        match self {
            Ending::Complete => "completed".into(),
            Ending::Eof => "closed".into(),
            Ending::TimedOut => "timed out".into(),
            Ending::Failed(err) if err.kind() == ErrorKind::ConnectionReset => "reset".into(),
            Ending::Failed(err) => format!("failed ({err})"),
        }
    }
}

/// Reads until `want` bytes arrived, EOF, an error, or `timeout`.
pub fn read_exactly(stream: &mut TcpStream, want: usize, timeout: Duration) -> (Vec<u8>, Ending) {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::with_capacity(want.min(1 << 20));
    let mut chunk = vec![0u8; 64 * 1024];
    while received.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return (received, Ending::TimedOut);
        }
        let room = (want - received.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return (received, Ending::Eof),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (received, Ending::TimedOut)
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return (received, Ending::Failed(err)),
        }
    }
    (received, Ending::Complete)
}

/// Waits up to `timeout` for the server to close the connection; returns how
/// it ended and any bytes that arrived first (which a probe may forbid).
pub fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Ending) {
    // Cap what is kept: a server echoing a huge frame is wrong anyway.
    read_exactly(stream, 16 << 20, timeout)
}

/// One write of the plan, and the pause after it.
#[derive(Debug, Clone)]
pub struct Piece {
    pub bytes: Vec<u8>,
    pub pause: Duration,
}

impl Piece {
    pub fn new(bytes: Vec<u8>, pause: Duration) -> Self {
        Piece { bytes, pause }
    }
}

/// What [`exchange`] saw.
pub struct Exchange {
    pub received: Vec<u8>,
    pub ending: Ending,
    /// The first write that failed, if any (the server closed or reset).
    pub write_error: Option<std::io::Error>,
}

/// Sends `payload` as one frame in one write and reads until its echo is
/// in, EOF, an error or `timeout`. Returns the frame sent and the exchange.
pub fn echo_frame(
    stream: &mut TcpStream,
    payload: &[u8],
    timeout: Duration,
) -> (Vec<u8>, Exchange) {
    let sent = encode(payload);
    let exchange = exchange(
        stream,
        vec![Piece::new(sent.clone(), Duration::ZERO)],
        sent.len(),
        timeout,
    );
    (sent, exchange)
}

/// Sends `pieces` (one write each, pausing after each) from a writer thread
/// while this thread reads until `expected_len` bytes came back, EOF, an
/// error, or `timeout` (counted from the first write).
pub fn exchange(
    stream: &mut TcpStream,
    pieces: Vec<Piece>,
    expected_len: usize,
    timeout: Duration,
) -> Exchange {
    let writer_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(err) => {
            return Exchange {
                received: Vec::new(),
                ending: Ending::Failed(err),
                write_error: None,
            }
        }
    };
    let deadline = Instant::now() + timeout;
    let writer = std::thread::spawn(move || write_pieces(writer_stream, pieces, deadline));
    let (received, ending) = read_exactly(stream, expected_len, timeout);
    // The writer is bounded by the same deadline (write timeout and pauses).
    let write_error = writer.join().unwrap_or(None);
    Exchange {
        received,
        ending,
        write_error,
    }
}

fn write_pieces(
    mut stream: TcpStream,
    pieces: Vec<Piece>,
    deadline: Instant,
) -> Option<std::io::Error> {
    for piece in pieces {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(std::io::Error::new(
                ErrorKind::TimedOut,
                "the probe's deadline passed while sending",
            ));
        }
        let _ = stream.set_write_timeout(Some(left));
        if let Err(err) = stream.write_all(&piece.bytes) {
            return Some(err);
        }
        if !piece.pause.is_zero() {
            std::thread::sleep(piece.pause.min(left));
        }
    }
    None
}

/// Closes the client's side, so a blocking server sees EOF and moves on.
pub fn close(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    drop(stream);
}

/// The wire bytes of `payloads`, framed, back to back.
pub fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
    payloads.iter().flat_map(|p| encode(p)).collect()
}

/// Which frame a byte offset of the echo stream falls in:
/// `(frame index, offset of that frame's first byte)`.
pub fn frame_at(payloads: &[Vec<u8>], offset: usize) -> (usize, usize) {
    let mut start = 0;
    for (i, payload) in payloads.iter().enumerate() {
        let end = start + HEADER_LEN + payload.len();
        if offset < end {
            return (i, start);
        }
        start = end;
    }
    (payloads.len().saturating_sub(1), start)
}

/// Evidence lines for an echo stream that differs from the expected frames:
/// which frame (1-based), its size, and a hex excerpt of that frame.
pub fn describe_difference(payloads: &[Vec<u8>], received: &[u8]) -> Vec<String> {
    let expected = framed(payloads);
    let Some(at) = excerpt::first_difference(&expected, received) else {
        return vec![format!("{} bytes echoed, identical", expected.len())];
    };
    let (index, frame_start) = frame_at(payloads, at);
    let frame_end = frame_start + HEADER_LEN + payloads.get(index).map_or(0, Vec::len);
    let mut lines = vec![format!(
        "{} of {} echoed bytes arrived; the echo first goes wrong in frame {} of {} (a frame of {} payload bytes, bytes {frame_start}..{frame_end} of the stream)",
        received.len(),
        expected.len(),
        index + 1,
        payloads.len(),
        payloads.get(index).map_or(0, Vec::len),
    )];
    let actual_frame = &received[frame_start.min(received.len())..frame_end.min(received.len())];
    lines.extend(excerpt::compare(
        &expected[frame_start..frame_end],
        actual_frame,
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_the_frame_they_fall_in() {
        let payloads = vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()];
        assert_eq!(frame_at(&payloads, 0), (0, 0));
        assert_eq!(frame_at(&payloads, 5), (0, 0));
        assert_eq!(frame_at(&payloads, 6), (1, 6));
        assert_eq!(frame_at(&payloads, 10), (2, 10));
        assert_eq!(frame_at(&payloads, 16), (2, 10));
    }

    #[test]
    fn a_missing_empty_frame_is_blamed_on_the_empty_frame() {
        let payloads = vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()];
        let received = framed(&[b"ab".to_vec(), b"xyz".to_vec()]);
        let lines = describe_difference(&payloads, &received);
        assert!(
            lines[0].contains("frame 2 of 3 (a frame of 0 payload bytes"),
            "{lines:?}"
        );
    }
}
