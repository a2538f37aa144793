//! The course's wire protocol: length-prefixed frames.
//!
//! A frame is a 4-byte big-endian `u32` length `L`, then `L` payload bytes,
//! with `0 <= L <= max_frame` (default [`DEFAULT_MAX_FRAME`]). `L = 0` is a
//! valid, empty frame. An echo server sends every frame back unchanged.
//!
//! Two ways to decode, for two kinds of caller:
//! - [`read_frame`] pulls one frame out of a blocking [`Read`], looping over
//!   short reads itself.
//! - [`FrameDecoder`] is fed whatever bytes a non-blocking read produced and
//!   hands out frames once they are whole; it never reads by itself.

use std::io::{self, ErrorKind, Read, Write};

/// The largest payload a frame may carry unless configured otherwise
/// (the servers' `--max-frame` default).
pub const DEFAULT_MAX_FRAME: usize = 65536;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Returns `payload` as one frame: its length prefix, then the payload.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes, which no frame can carry.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(payload, &mut frame);
    frame
}

/// Appends `payload` as one frame to `out`, so several frames can be built in
/// one buffer and sent with a single write.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes, which no frame can carry.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("a frame payload is at most u32::MAX bytes");
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Writes `payload` as one frame to `w` (one `write_all`, so a frame is
/// never interleaved with another writer's bytes on a shared buffer).
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode(payload))
}

/// Reads one whole frame from a blocking reader, however the bytes are split
/// across reads.
///
/// Returns:
/// - `Ok(Some(payload))`: a complete frame (possibly empty).
/// - `Ok(None)`: clean end of stream — EOF before the first byte of a frame.
///   This is how a peer says it is done; it is not an error.
/// - `Err` of kind [`ErrorKind::UnexpectedEof`]: EOF in the middle of a
///   frame (inside the length prefix or the payload).
/// - `Err` of kind [`ErrorKind::InvalidData`]: the length prefix exceeds
///   `max_frame`. The payload is not read, so the stream is out of sync and
///   should be closed.
/// - any other `Err` from `r`, except [`ErrorKind::Interrupted`], which is
///   retried. A read timeout (`WouldBlock`/`TimedOut`) mid-frame loses the
///   bytes already consumed: callers with timeouts should use [`FrameDecoder`].
pub fn read_frame(r: &mut impl Read, max_frame: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "end of stream inside a length prefix ({filled} of {HEADER_LEN} bytes)"
                    ),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }

    let len = check_len(u32::from_be_bytes(header), max_frame)?;
    let mut payload = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match r.read(&mut payload[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("end of stream inside a frame ({filled} of {len} payload bytes)"),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(payload))
}

/// Converts a length prefix to a payload length, rejecting oversized frames.
fn check_len(declared: u32, max_frame: usize) -> io::Result<usize> {
    match usize::try_from(declared) {
        Ok(len) if len <= max_frame => Ok(len),
        _ => Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {declared} bytes exceeds the maximum of {max_frame}"),
        )),
    }
}

/// Reassembles frames from bytes that arrive in arbitrary pieces, for
/// non-blocking callers: [`push`](Self::push) what a read returned, then
/// [`pop`](Self::pop) until it returns `Ok(None)`.
///
/// The decoder never sees the socket, so it cannot tell a clean EOF from one
/// mid-frame by itself: at EOF, the stream ended cleanly exactly when
/// [`is_empty`](Self::is_empty) is true; otherwise
/// [`buffered_len`](Self::buffered_len) bytes of an unfinished frame are lost.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first byte not yet handed out; everything before it is
    /// consumed and dropped at the next `push`.
    start: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop consumed bytes first, so the buffer holds at most one
        // unfinished frame plus what was just pushed.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame's payload out of the buffer.
    ///
    /// Returns:
    /// - `Ok(Some(payload))`: a whole frame was buffered (possibly empty).
    /// - `Ok(None)`: no whole frame is buffered yet — not even its length
    ///   prefix, or not all of its payload. Push more bytes and try again.
    /// - `Err` of kind [`ErrorKind::InvalidData`]: the next length prefix
    ///   exceeds `max_frame`. Nothing is consumed; the stream is out of sync.
    pub fn pop(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(declared) = self.declared_len() else {
            return Ok(None);
        };
        let len = check_len(declared, self.max_frame)?;
        let payload_start = self.start + HEADER_LEN;
        if self.buf.len() - payload_start < len {
            return Ok(None);
        }
        let payload = self.buf[payload_start..payload_start + len].to_vec();
        self.start = payload_start + len;
        Ok(Some(payload))
    }

    /// The length the next frame's prefix declares, once all 4 bytes of it
    /// are buffered (`None` before that). Lets a caller that knows what
    /// length to expect reject a wrong frame without waiting for its payload.
    pub fn declared_len(&self) -> Option<u32> {
        let header = self.buf.get(self.start..self.start + HEADER_LEN)?;
        let header: [u8; HEADER_LEN] = header.try_into().ok()?;
        Some(u32::from_be_bytes(header))
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when no byte of an unfinished frame is buffered: an EOF now
    /// would be a clean end of stream.
    pub fn is_empty(&self) -> bool {
        self.buffered_len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A reader that returns at most `chunk` bytes per read, like a socket
    /// delivering a frame in pieces.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn encode_prefixes_big_endian_length() {
        assert_eq!(encode(b"abc"), [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(encode(b""), [0, 0, 0, 0]);
        assert_eq!(&encode(&[7u8; 258])[..4], [0, 0, 1, 2]);
    }

    #[test]
    fn encode_into_appends_after_existing_bytes() {
        let mut out = encode(b"one");
        encode_into(b"", &mut out);
        encode_into(b"two", &mut out);
        assert_eq!(
            out,
            [&encode(b"one")[..], &[0, 0, 0, 0], &encode(b"two")].concat()
        );
    }

    #[test]
    fn write_frame_writes_an_encoded_frame() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hi").unwrap();
        assert_eq!(out, encode(b"hi"));
    }

    #[test]
    fn read_frame_returns_frames_then_none_at_clean_eof() {
        let bytes = [encode(b"hello"), encode(b""), encode(b"world")].concat();
        let mut r = Cursor::new(bytes);
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"world");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn read_frame_survives_one_byte_reads() {
        let payload: Vec<u8> = (0..=255).collect();
        let bytes = [encode(&payload), encode(b"x")].concat();
        let mut r = Trickle {
            bytes: &bytes,
            chunk: 1,
        };
        assert_eq!(read_frame(&mut r, 1000).unwrap().unwrap(), payload);
        assert_eq!(read_frame(&mut r, 1000).unwrap().unwrap(), b"x");
        assert!(read_frame(&mut r, 1000).unwrap().is_none());
    }

    #[test]
    fn read_frame_eof_inside_length_prefix_is_unexpected_eof() {
        let mut r = Cursor::new(vec![0, 0]);
        let err = read_frame(&mut r, 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_frame_eof_inside_payload_is_unexpected_eof() {
        let mut bytes = encode(b"truncated");
        bytes.truncate(7);
        let err = read_frame(&mut Cursor::new(bytes), 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_frame_rejects_oversized_length_as_invalid_data() {
        let mut r = Cursor::new(encode(&[1u8; 11]));
        let err = read_frame(&mut r, 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        // Exactly max_frame is allowed.
        let mut r = Cursor::new(encode(&[1u8; 10]));
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap().len(), 10);
    }

    #[test]
    fn read_frame_accepts_a_default_max_frame() {
        let payload = vec![0xa5; DEFAULT_MAX_FRAME];
        let mut r = Cursor::new(encode(&payload));
        assert_eq!(
            read_frame(&mut r, DEFAULT_MAX_FRAME).unwrap().unwrap(),
            payload
        );
    }

    #[test]
    fn decoder_returns_none_until_a_frame_is_whole() {
        let bytes = encode(b"split me");
        let mut decoder = FrameDecoder::new(100);
        assert!(decoder.pop().unwrap().is_none());
        for (i, byte) in bytes.iter().enumerate() {
            assert!(
                decoder.pop().unwrap().is_none(),
                "frame popped after {i} bytes"
            );
            assert_eq!(decoder.declared_len().is_some(), i >= HEADER_LEN);
            decoder.push(&[*byte]);
        }
        assert_eq!(decoder.declared_len(), Some(8));
        assert_eq!(decoder.pop().unwrap().unwrap(), b"split me");
        assert!(decoder.pop().unwrap().is_none());
        assert!(decoder.is_empty());
    }

    #[test]
    fn decoder_pops_several_frames_from_one_push() {
        let bytes = [encode(b"a"), encode(b""), encode(b"ccc"), encode(b"dd")].concat();
        let mut decoder = FrameDecoder::new(100);
        // The last frame arrives in two pieces.
        decoder.push(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.pop().unwrap().unwrap(), b"a");
        assert_eq!(decoder.pop().unwrap().unwrap(), b"");
        assert_eq!(decoder.pop().unwrap().unwrap(), b"ccc");
        assert!(decoder.pop().unwrap().is_none());
        assert_eq!(decoder.buffered_len(), HEADER_LEN + 1);
        assert!(!decoder.is_empty());
        decoder.push(&bytes[bytes.len() - 1..]);
        assert_eq!(decoder.pop().unwrap().unwrap(), b"dd");
        assert!(decoder.is_empty());
    }

    #[test]
    fn decoder_rejects_oversized_length_without_consuming_it() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(&encode(b"12345"));
        assert_eq!(decoder.pop().unwrap_err().kind(), ErrorKind::InvalidData);
        assert_eq!(decoder.declared_len(), Some(5));
        assert_eq!(decoder.buffered_len(), HEADER_LEN + 5);
    }
}
