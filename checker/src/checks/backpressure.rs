//! `backpressure`: one client pushes `bytes` of frames from one thread and
//! reads its echoes from another, starting only after `delay_ms`. The
//! server's resident memory (VmRSS, sampled every 50 ms) must stay within
//! `max_growth_mib` of what it was before, and every echoed byte must come
//! back, in order. A server without backpressure reads everything the client
//! sends and buffers the echoes: its RSS grows by about `bytes` and it fails;
//! one that pauses reading and never resumes stalls the echo and fails too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backpressure {
    /// Bytes the client pushes (whole frames of `frame_size` payload bytes).
    pub bytes: usize,
    /// Payload bytes per frame.
    pub frame_size: usize,
    /// How long the client waits before it starts reading, in ms.
    pub delay_ms: u64,
    /// Most the server's RSS may grow over its baseline, in MiB.
    pub max_growth_mib: u64,
    /// Bound on the whole exchange once the client reads, in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            bytes: 64 * 1024 * 1024,
            frame_size: 16 * 1024,
            delay_ms: 3000,
            max_growth_mib: 32,
            timeout_secs: 60,
            args: Vec::new(),
        }
    }
}

/// How the reading thread's verification ended.
enum Verified {
    All,
    Differs { at: usize },
    Short { got: usize, why: String },
}

/// Reads `wire.len()` bytes before `deadline`, comparing as it goes.
fn read_and_verify(stream: &mut TcpStream, wire: &[u8], deadline: Instant) -> Verified {
    let mut got = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    while got < wire.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Verified::Short {
                got,
                why: "the echo stopped coming".into(),
            };
        }
        let room = (wire.len() - got).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => {
                return Verified::Short {
                    got,
                    why: "the server closed the connection".into(),
                }
            }
            Ok(n) => {
                if let Some(at) = chunk[..n]
                    .iter()
                    .zip(&wire[got..got + n])
                    .position(|(a, b)| a != b)
                {
                    return Verified::Differs { at: got + at };
                }
                got += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Verified::Short {
                    got,
                    why: "the echo stopped coming".into(),
                }
            }
            Err(e) => {
                return Verified::Short {
                    got,
                    why: format!("reading failed: {e}"),
                }
            }
        }
    }
    Verified::All
}

impl Check for Backpressure {
    fn summary(&self) -> String {
        format!(
            "one client pushes {} MiB of frames and reads only after {} ms; server RSS grows under {} MiB, every byte back in order",
            self.bytes / (1024 * 1024),
            self.delay_ms,
            self.max_growth_mib
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let frame_size = self.frame_size.max(1);
        let count = self.bytes.div_ceil(frame_size + 4).max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let mut wire = Vec::with_capacity(count * (frame_size + 4));
        let mut payload = vec![0u8; frame_size];
        for _ in 0..count {
            rng.fill_bytes(&mut payload);
            stress::frame::encode_into(&payload, &mut wire);
        }
        let wire = Arc::new(wire);

        // One echo first, so the baseline is a server already serving.
        let warm = stress::frame::encode(b"backpressure warm-up");
        let warmed = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
            Ok(mut stream) => {
                stream.write_all(&warm).is_ok()
                    && matches!(
                        read_echo(&mut stream, warm.len(), Instant::now() + Duration::from_secs(5)),
                        Echoed::Complete(ref got) if *got == warm
                    )
            }
            Err(_) => false,
        };
        if !warmed {
            return Ok(StepOutcome::fail(format!(
                "no echo of a {}-byte frame within 5 s",
                warm.len()
            ))
            .cause_as(
                "backpressure.no-echo",
                "the server must echo a small frame before its memory can be watched",
            )
            .evidence(Ctx::server_evidence(&mut server)));
        }
        std::thread::sleep(Duration::from_millis(100));
        let Ok(baseline) = procfs::rss_kib(server.pid) else {
            return Ok(
                StepOutcome::fail("the server exited after echoing one small frame")
                    .cause_as(
                        "backpressure.died-after-a-client",
                        "the server must keep running after serving a client",
                    )
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        };

        let client = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(3)) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(StepOutcome::fail(format!("connect failed: {err}"))
                    .cause_as(
                        "backpressure.no-accept",
                        "the server does not accept connections",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
            }
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let delay = Duration::from_millis(self.delay_ms);
        let mut writer = client.try_clone()?;
        writer.set_write_timeout(Some(delay + timeout))?;
        let mut reader = client.try_clone()?;
        let to_send = Arc::clone(&wire);
        let sender = std::thread::spawn(move || writer.write_all(&to_send));
        let expected = Arc::clone(&wire);
        let receiver = std::thread::spawn(move || {
            std::thread::sleep(delay);
            read_and_verify(&mut reader, &expected, Instant::now() + timeout)
        });
        ctx.log.detail(format!(
            "pushing {count} frames ({} bytes) from one thread; reading them from another after {} ms; server RSS {baseline} KiB before",
            wire.len(),
            self.delay_ms
        ));

        // Sample RSS until both threads are done (each bounded by its own
        // timeout; this loop by their sum plus a margin).
        let limit = Instant::now() + delay + timeout + Duration::from_secs(5);
        let mut peak = baseline;
        while !(sender.is_finished() && receiver.is_finished()) && Instant::now() < limit {
            match procfs::rss_kib(server.pid) {
                Ok(rss) => peak = peak.max(rss),
                Err(_) => break, // the server is gone: judged below
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Unblocks both threads if they are still waiting.
        let _ = client.shutdown(Shutdown::Both);
        let sent = match sender.join() {
            Ok(result) => result.err().map(|e| e.to_string()),
            Err(_) => Some("the sending thread panicked".into()),
        };
        let verified = receiver.join().unwrap_or(Verified::Short {
            got: 0,
            why: "the reading thread panicked".into(),
        });
        let growth_kib = peak.saturating_sub(baseline);
        let growth_mib = growth_kib as f64 / 1024.0;
        ctx.log.detail(format!(
            "server RSS: {baseline} KiB before, peak {peak} KiB (+{growth_mib:.1} MiB)"
        ));

        if let Some(death) = server.death_notice() {
            let failed = StepOutcome::fail(
                "the server died while a client pushed frames faster than it read its echoes",
            );
            let cause = "a client that does not read must never end the server: stop reading from it while its pending output is over --max-pending";
            // Stopped by the checker for its memory: buffering without
            // bound is what ended it. Any other death has its own story.
            let failed = if death.starts_with("the checker stopped the server") {
                failed.death_cause("backpressure.unbounded-buffering-ends-the-server", cause)
            } else {
                failed.cause_as("backpressure.died", cause)
            };
            return Ok(failed.evidence(std::iter::once(death).chain(server.output_tail(20))));
        }
        if growth_kib > self.max_growth_mib * 1024 {
            return Ok(StepOutcome::fail(format!(
                "the server's RSS grew by {growth_mib:.1} MiB (from {baseline} KiB to {peak} KiB) while one client pushed {} MiB and read nothing for {} ms (bound: {} MiB, generous next to the 4 MiB --max-pending default)",
                wire.len() / (1024 * 1024),
                self.delay_ms,
                self.max_growth_mib
            ))
            .cause_as("backpressure.unbounded-buffering", "the server keeps reading from a client whose echoes it cannot send, and buffers them all: while a connection's outbuf holds --max-pending bytes or more, leave POLLIN out of its interest (and don't read it); add it back once flush drains outbuf")
            .evidence(Ctx::server_evidence(&mut server))
            .figure("rss_growth_kib", growth_kib));
        }
        let differs = matches!(verified, Verified::Differs { .. });
        let problem = match verified {
            Verified::All => None,
            Verified::Differs { at } => Some(format!(
                "the echo differs from what was sent at byte {at} (frame {}): bytes were lost or reordered",
                at / (frame_size + 4)
            )),
            Verified::Short { got, why } => Some(format!(
                "{why} after {got} of {} bytes (bound {} s once reading started)",
                wire.len(),
                self.timeout_secs
            )),
        };
        if let Some(problem) = problem {
            let mut evidence = vec![format!(
                "sent {count} frames of {frame_size} payload bytes ({} bytes), reading from {} ms on",
                wire.len(),
                self.delay_ms
            )];
            if let Some(err) = sent {
                evidence.push(format!("sending stopped: {err}"));
            }
            evidence.extend(Ctx::server_evidence(&mut server));
            let id = if differs {
                "backpressure.bytes-lost"
            } else {
                "backpressure.never-resumes"
            };
            return Ok(StepOutcome::fail(format!("backpressure: {problem}"))
                .cause_as(id, "pausing a client must not lose or stall its data: stop reading only while its outbuf is at --max-pending, keep every unread byte in the kernel, and resume reading (POLLIN again) as soon as flush brings outbuf under the limit")
                .evidence(evidence)
                .figure("rss_growth_kib", growth_kib));
        }
        Ok(StepOutcome::pass(format!(
            "{} bytes echoed in order to a client that read only after {} ms; server RSS grew {growth_mib:.1} MiB (bound {} MiB)",
            wire.len(),
            self.delay_ms,
            self.max_growth_mib
        ))
        .figure("rss_growth_kib", growth_kib)
        .proof_line(format!(
            "backpressure: {} MiB echoed in order to a client reading after {} ms, server RSS grew under {} MiB",
            wire.len() / (1024 * 1024),
            self.delay_ms,
            self.max_growth_mib
        )))
    }
}
