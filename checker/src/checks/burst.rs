//! `burst`: one client sends a burst of frames (256 KiB by default) in a
//! single write, and must get every echo back, in order, within a generous
//! bound. The bytes reach the server in a few large segments: an
//! edge-triggered server that reads once per event leaves the rest in the
//! kernel buffer, gets no further event for it, and stalls until the bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::excerpt;
use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Burst {
    /// Total bytes written at once (whole frames).
    pub bytes: usize,
    /// Payload bytes per frame (each frame is 4 more).
    pub payload: usize,
    /// Bound on getting every echo back.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            bytes: 256 * 1024,
            payload: 1020,
            timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

impl Check for Burst {
    fn summary(&self) -> String {
        format!(
            "one client writes {} KiB of {}-byte frames at once; every echo within {} s",
            self.bytes / 1024,
            self.payload,
            self.timeout_secs
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let frame_len = self.payload + 4;
        let frames = (self.bytes / frame_len).max(1);
        let mut sent = Vec::with_capacity(frames * frame_len);
        for i in 0..frames {
            let payload: Vec<u8> = (0..self.payload)
                .map(|j| (i.wrapping_mul(31) ^ j ^ ctx.seed as usize) as u8)
                .collect();
            stress::frame::encode_into(&payload, &mut sent);
        }
        let mut stream = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(StepOutcome::fail(format!("connect failed: {err}"))
                    .cause_as("burst.no-accept", "the server does not accept connections")
                    .evidence(Ctx::server_evidence(&mut server)))
            }
        };
        let reader = stream.try_clone()?;
        // The write runs on its own thread so a server that stops reading
        // cannot block the checker: the reader's deadline bounds the step.
        let burst = sent.clone();
        let writer = std::thread::spawn(move || stream.write_all(&burst));
        let timeout = Duration::from_secs(self.timeout_secs);
        let (received, ending) = read_until(reader, sent.len(), timeout);
        let write_result = if writer.is_finished() {
            writer.join().ok()
        } else {
            None
        };
        let whole = received.len() / frame_len;
        ctx.log.detail(format!(
            "sent {frames} frames ({} bytes) in one write; {} bytes came back",
            sent.len(),
            received.len()
        ));
        let summary = format!(
            "sent {frames} frames ({} bytes) in one write_all",
            sent.len()
        );
        if received.len() == sent.len() && received == sent {
            if let Some(death) = server.death_notice() {
                return Ok(StepOutcome::fail(format!("{death} after the burst"))
                    .cause_as("burst.died-after-the-burst", "the server must keep running")
                    .evidence(Ctx::server_evidence(&mut server)));
            }
            return Ok(StepOutcome::pass(format!("{summary}; all echoed in order"))
                .figure("burst_bytes", sent.len())
                .proof_line(format!(
                    "burst: {frames} frames ({} KiB) in one write, all echoed",
                    sent.len() / 1024
                )));
        }
        if let Some(at) = excerpt::first_difference(&sent, &received) {
            if at < received.len() {
                let mut evidence = excerpt::compare(&sent, &received);
                evidence.extend(Ctx::server_evidence(&mut server));
                return Ok(StepOutcome::fail(format!(
                    "{summary}; the echo differs from what was sent at byte {at} (frame {})",
                    at / frame_len
                ))
                .cause_as("burst.framing", "framing: frames merged, split, dropped or reordered when many arrive in one read")
                .evidence(evidence));
            }
        }
        let death = server.death_notice();
        let mut evidence = vec![format!("the reader ended with: {ending}")];
        if write_result.is_none() {
            evidence.push(
                "the checker's write had not finished either: the server stopped reading".into(),
            );
        }
        evidence.extend(Ctx::server_evidence(&mut server));
        Ok(StepOutcome::fail(format!(
            "{summary}; {} bytes ({whole} whole frames) came back within {} s (bound generous: a correct server needs well under 1 s)",
            received.len(),
            self.timeout_secs
        ))
        .cause_as(
            if death.is_some() {
                "burst.died"
            } else {
                "burst.read-stall"
            },
            match death {
                Some(death) => format!("{death} during the burst: read its output below"),
                None => "the server stopped reading while bytes were still waiting: with EPOLLET, epoll reports new data once, so each event must be read until WouldBlock; bytes left in the kernel buffer are never reported again".into(),
            },
        )
        .figure("echoed_bytes", received.len())
        .evidence(evidence))
    }
}

/// Reads up to `want` bytes within `timeout`; returns them and how it ended.
fn read_until(mut stream: TcpStream, want: usize, timeout: Duration) -> (Vec<u8>, String) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, "timeout".into());
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return (got, "EOF: the server closed the connection".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return (got, format!("read error: {e}")),
        }
    }
    (got, "complete".into())
}
