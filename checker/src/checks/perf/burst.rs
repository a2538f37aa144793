//! A long pipelined burst on one connection: `bytes` of small frames (16
//! payload bytes: many frames per byte, which is what a per-frame cost
//! scales with),
//! written in 64 KiB pieces by a writer thread while this thread reads the
//! echoes, timed from the first write to the last echo byte. Echoing is
//! linear work: a burst costs about the same per byte as the reference's.
//! A server that moves the rest of its input buffer forward once per frame
//! (a drain from the front per frame) does work that grows with everything
//! still buffered behind each frame — quadratic in the burst — and takes
//! tens to thousands of times longer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::user_cpu_time;
use crate::checks::frame_client::{connect, exchange, Ending, Piece};

/// Payload bytes per frame of the burst.
pub const PAYLOAD: usize = 16;
/// Bytes per write of the burst.
const PIECE: usize = 64 * 1024;

/// The burst's wire bytes: whole frames of [`PAYLOAD`] bytes, each payload
/// marked with its frame number so a misplaced echo cannot match.
pub fn wire(bytes: usize) -> Vec<u8> {
    let frame_len = 4 + PAYLOAD;
    let frames = (bytes / frame_len).max(1);
    let mut wire = Vec::with_capacity(frames * frame_len);
    for i in 0..frames {
        wire.extend_from_slice(&(PAYLOAD as u32).to_be_bytes());
        let mark = (i as u32).to_be_bytes();
        for j in 0..PAYLOAD {
            wire.push(mark[j % 4] ^ j as u8);
        }
    }
    wire
}

/// How one burst went.
pub enum Run {
    /// Every echo back, identical, after `elapsed`.
    Done {
        elapsed: Duration,
        user_cpu: Duration,
    },
    /// Still not all back when `limit` passed.
    TooSlow {
        limit: Duration,
        received: usize,
        user_cpu: Duration,
    },
    /// The echo was wrong, or the connection failed: what happened.
    Broken(String),
}

/// Sends `wire` to `addr` and reads its echo for at most `limit`.
pub fn run(pid: Pid, addr: SocketAddr, wire: &[u8], limit: Duration) -> Run {
    let mut stream = match connect(addr) {
        Ok(stream) => stream,
        Err(err) => return Run::Broken(format!("connect failed: {err}")),
    };
    let pieces: Vec<Piece> = wire
        .chunks(PIECE)
        .map(|c| Piece::new(c.to_vec(), Duration::ZERO))
        .collect();
    let cpu_before = user_cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let seen = exchange(&mut stream, pieces, wire.len(), limit);
    let elapsed = started.elapsed();
    let user_cpu = user_cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    drop(stream);
    match seen.ending {
        Ending::Complete if seen.received == wire => Run::Done { elapsed, user_cpu },
        Ending::Complete => {
            let at = seen
                .received
                .iter()
                .zip(wire)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            Run::Broken(format!(
                "the echo differs from what was sent at byte {at} (frame {})",
                at / (4 + PAYLOAD)
            ))
        }
        Ending::TimedOut => Run::TooSlow {
            limit,
            received: seen.received.len(),
            user_cpu,
        },
        other => Run::Broken(format!(
            "the connection {} after {} of {} echo bytes",
            other.describe(),
            seen.received.len(),
            wire.len()
        )),
    }
}
