//! What the deliberately broken servers in `src/bin` share, so that each of
//! them shows only its own bugs: the course's command line (`--port`,
//! `--host`), the `listening on` line the checker waits for, the frame
//! arithmetic, and the read and write loops of a non-blocking socket done
//! right. A fixture that breaks one of these writes its own version beside
//! its bug instead.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The flags every fixture takes alike: `#[command(flatten)]` it into the
/// fixture's own `Args` beside `--bug` and the lesson flags it reads.
#[derive(clap::Args, Debug, Clone)]
pub struct Listen {
    /// 0 lets the kernel pick; the checker reads the port off `listening on`.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Ignored: lets a test find exactly its own processes in /proc.
    #[arg(long)]
    pub tag: Option<String>,
}

/// The lessons' other flags, for the fixtures that take them as they come
/// (`#[command(flatten)]`): a fixture reads those it honours, and the rest
/// are accepted so that any lesson's command line starts it.
#[derive(clap::Args, Debug, Clone)]
pub struct LessonFlags {
    #[arg(long)]
    pub max_clients: Option<usize>,
    #[arg(long)]
    pub max_frame: Option<usize>,
    #[arg(long)]
    pub max_events: Option<usize>,
    #[arg(long)]
    pub max_pending: Option<usize>,
    #[arg(long)]
    pub stats: bool,
}

impl Listen {
    /// A listener on `--host` and `--port` (std's backlog of 128), not yet
    /// announced: a fixture may change it before [`announce`].
    pub fn bind(&self) -> io::Result<TcpListener> {
        TcpListener::bind((self.host.as_str(), self.port))
    }
}

/// Prints the course's `listening on ADDR` line.
pub fn announce(listener: &TcpListener) -> io::Result<()> {
    println!("listening on {}", listener.local_addr()?);
    Ok(())
}

/// Sleeps for good: a thread or process that must stay but do nothing.
pub fn park_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The size of the whole frame (4-byte big-endian length, then payload) at
/// the front of `buf`, once every byte of it has arrived.
pub fn whole_frame(buf: &[u8]) -> Option<usize> {
    let header: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let total = 4 + u32::from_be_bytes(header) as usize;
    (buf.len() >= total).then_some(total)
}

/// Like [`whole_frame`], and an `InvalidData` error as soon as a header
/// announces a payload over `max_frame` (before the payload arrives).
pub fn whole_frame_within(buf: &[u8], max_frame: u32) -> io::Result<Option<usize>> {
    if let Some(header) = buf.get(..4) {
        let len = u32::from_be_bytes(header.try_into().expect("four bytes"));
        if len > max_frame {
            return Err(io::Error::new(ErrorKind::InvalidData, "oversize frame"));
        }
    }
    Ok(whole_frame(buf))
}

/// Moves every whole frame at the front of `inbuf` to the end of
/// `outbuf`, in order; returns how many.
pub fn move_whole_frames(inbuf: &mut Vec<u8>, outbuf: &mut Vec<u8>) -> u64 {
    let mut start = 0;
    let mut frames = 0;
    while let Some(total) = whole_frame(&inbuf[start..]) {
        outbuf.extend_from_slice(&inbuf[start..start + total]);
        start += total;
        frames += 1;
    }
    inbuf.drain(..start);
    frames
}

/// Reads a non-blocking socket until it would block, appending to `inbuf`.
/// `Ok(true)` when the peer has closed its side (EOF), `Ok(false)` when it
/// is still open, `Err` when the connection is broken.
pub fn read_until_blocked(
    stream: &mut TcpStream,
    chunk: &mut [u8],
    inbuf: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `outbuf` as a non-blocking socket takes and removes
/// it from the front (the rest waits for the next writable event); false
/// when the connection is broken.
pub fn flush(stream: &mut TcpStream, outbuf: &mut Vec<u8>) -> bool {
    let mut written = 0;
    let ok = loop {
        if written == outbuf.len() {
            break true;
        }
        match stream.write(&outbuf[written..]) {
            Ok(0) => break false,
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    outbuf.drain(..written);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn a_frame_is_whole_only_once_its_last_byte_arrived() {
        let bytes = frame(b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(whole_frame(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(whole_frame(&bytes), Some(9));
        assert_eq!(whole_frame(&frame(b"")), Some(4));
    }

    #[test]
    fn an_oversize_header_is_refused_before_its_payload() {
        let header = 70_000u32.to_be_bytes();
        assert!(whole_frame_within(&header, 65_536).is_err());
        assert_eq!(whole_frame_within(&header[..3], 65_536).unwrap(), None);
        assert_eq!(whole_frame_within(&frame(b"ok"), 65_536).unwrap(), Some(6));
    }

    #[test]
    fn whole_frames_move_in_order_and_a_partial_one_stays() {
        let mut inbuf = [frame(b"one"), frame(b"two"), frame(b"three")].concat();
        inbuf.truncate(inbuf.len() - 2);
        let mut outbuf = b"pending".to_vec();
        assert_eq!(move_whole_frames(&mut inbuf, &mut outbuf), 2);
        assert_eq!(
            outbuf,
            [b"pending".to_vec(), frame(b"one"), frame(b"two")].concat()
        );
        assert_eq!(inbuf, frame(b"three")[..7].to_vec());
    }
}
