//! `broadcast`: each frame a client sends must reach every *other* client,
//! in order, and never come back to its sender. For each tier (50, 100,
//! 200, 500 connections, each on a fresh server): connect every subscriber,
//! then the first one publishes `sync` frames until every other one has
//! received one (so the server has accepted them all), then `codes` seeded
//! code frames; every subscriber must receive exactly those codes in order,
//! and the publisher nothing. Reports connection success and delivery rate
//! per tier. Then the slow-subscriber case: one subscriber stops reading
//! while the publisher sends `slow_mib` MiB; another subscriber must still
//! get every byte, and the one that never reads must be disconnected (its
//! pending output passed `--max-pending`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Broadcast {
    /// Connections per tier (the publisher included).
    pub tiers: Vec<usize>,
    /// Code frames published per tier.
    pub codes: usize,
    /// Bound on the sync phase and on the delivery, each, in seconds.
    pub timeout_secs: u64,
    /// MiB published while one subscriber does not read (0: skip).
    pub slow_mib: usize,
    pub args: Vec<String>,
}

impl Default for Broadcast {
    fn default() -> Self {
        Broadcast {
            tiers: vec![50, 100, 200, 500],
            codes: 10,
            timeout_secs: 15,
            slow_mib: 24,
            args: Vec::new(),
        }
    }
}

const SYNC: &[u8] = b"sync";

pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    stress::frame::encode(payload)
}

/// A subscriber: a non-blocking socket and the frames read so far.
pub(super) struct Sub {
    pub(super) stream: TcpStream,
    buf: Vec<u8>,
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) closed: bool,
}

impl Sub {
    pub(super) fn connect(addr: SocketAddr) -> std::io::Result<Sub> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_nonblocking(true)?;
        Ok(Sub {
            stream,
            buf: Vec::new(),
            frames: Vec::new(),
            closed: false,
        })
    }

    /// Reads what is there without waiting; splits whole frames off.
    pub(super) fn poll(&mut self) {
        let mut chunk = [0u8; 65536];
        while !self.closed {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        while self.buf.len() >= 4 {
            let len =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                break;
            }
            self.frames.push(self.buf[4..4 + len].to_vec());
            self.buf.drain(..4 + len);
        }
    }

    pub(super) fn synced(&self) -> bool {
        self.frames.iter().any(|f| f == SYNC)
    }

    pub(super) fn codes(&self) -> Vec<&Vec<u8>> {
        self.frames
            .iter()
            .filter(|f| f.as_slice() != SYNC)
            .collect()
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = 0;
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The first subscriber publishes `sync` frames (one every 100 ms) until
/// every other one received one (so the server accepted them all) or
/// `deadline` passed. Returns how many of the others got it; Err when the
/// publisher's connection broke.
pub(super) fn sync(subs: &mut [Sub], deadline: Instant) -> std::io::Result<usize> {
    loop {
        subs[0].send(&frame(SYNC))?;
        std::thread::sleep(Duration::from_millis(100));
        for sub in subs.iter_mut().skip(1) {
            sub.poll();
        }
        if subs.iter().skip(1).all(Sub::synced) || Instant::now() >= deadline {
            return Ok(subs.iter().skip(1).filter(|s| s.synced()).count());
        }
    }
}

struct TierResult {
    connected: usize,
    delivered: usize,
    expected: usize,
}

impl Broadcast {
    /// Connects and syncs `n` subscribers. Err: the failing outcome.
    fn tier(
        &self,
        ctx: &mut Ctx,
        n: usize,
    ) -> Result<std::result::Result<TierResult, StepOutcome>> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(Err(failed)),
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let mut subs = Vec::new();
        for _ in 0..n {
            if let Ok(sub) = Sub::connect(server.addr) {
                subs.push(sub);
            }
        }
        let fail = |server: &mut crate::server::Server,
                    message: String,
                    cause: &str,
                    extra: Vec<String>| {
            StepOutcome::fail(message)
                .cause(cause.to_string())
                .evidence(extra.into_iter().chain(Ctx::server_evidence(server)))
        };
        if subs.len() < 2 {
            return Ok(Err(fail(
                &mut server,
                format!("{n} subscribers: only {} connected", subs.len()),
                "the server stopped accepting connections",
                vec![],
            )));
        }
        // Sync: publish `sync` until every other subscriber got one.
        let Ok(synced) = sync(&mut subs, Instant::now() + timeout) else {
            return Ok(Err(fail(
                &mut server,
                format!("{n} subscribers: the publisher's connection broke during the sync"),
                "the server closed a connected client",
                vec![],
            )));
        };
        let connected = synced + 1;
        if connected < n {
            return Ok(Err(fail(
                &mut server,
                format!("{n} subscribers: {connected} of {n} connected and received the publisher's `sync` frame within {} s (connection success {:.1} %)", self.timeout_secs, 100.0 * connected as f64 / n as f64),
                "every frame must reach every other connected client: accept them all (drain the accept queue) and pass each frame to all of them",
                vec![],
            )));
        }
        // Publish the codes, all in one write.
        let codes: Vec<Vec<u8>> = (0..self.codes)
            .map(|i| {
                format!(
                    "code {n}:{i}:{:016x}",
                    ctx.seed.wrapping_mul(31).wrapping_add(i as u64)
                )
                .into_bytes()
            })
            .collect();
        let batch: Vec<u8> = codes.iter().flat_map(|c| frame(c)).collect();
        if subs[0].send(&batch).is_err() {
            return Ok(Err(fail(
                &mut server,
                format!("{n} subscribers: the publisher's connection broke"),
                "the server closed a connected client",
                vec![],
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            for sub in subs.iter_mut().skip(1) {
                sub.poll();
            }
            let done = subs
                .iter()
                .skip(1)
                .all(|s| s.codes().len() >= codes.len() || s.closed);
            if done || Instant::now() >= deadline {
                break;
            }
        }
        let expected = codes.len() * (n - 1);
        let mut delivered = 0;
        for (i, sub) in subs.iter().enumerate().skip(1) {
            let got = sub.codes();
            delivered += got.iter().zip(&codes).filter(|(g, c)| **g == *c).count();
            if got.len() != codes.len() || got.iter().zip(&codes).any(|(g, c)| *g != c) {
                let shown: Vec<String> = got
                    .iter()
                    .take(3)
                    .map(|g| String::from_utf8_lossy(g).to_string())
                    .collect();
                return Ok(Err(fail(
                    &mut server,
                    format!("{n} subscribers: subscriber {i} received {} code frames (expected the {} published, in order); delivery so far {delivered} of {expected}", got.len(), codes.len()),
                    "each frame must reach every other client, whole and in the order it was sent",
                    vec![format!("published first: {:?}", String::from_utf8_lossy(&codes[0])), format!("subscriber {i} got: {shown:?}{}", if sub.closed { " then EOF" } else { "" })],
                )));
            }
        }
        // The publisher must get nothing back.
        std::thread::sleep(Duration::from_millis(300));
        subs[0].poll();
        if !subs[0].frames.is_empty() {
            return Ok(Err(fail(
                &mut server,
                format!("{n} subscribers: the publisher received {} frames back (its own `sync`/code frames)", subs[0].frames.len()),
                "a frame goes to every OTHER client: skip the sender's own connection",
                vec![format!("publisher got: {:?}", String::from_utf8_lossy(&subs[0].frames[0]))],
            )));
        }
        drop(subs);
        server.stop();
        Ok(Ok(TierResult {
            connected,
            delivered,
            expected,
        }))
    }

    fn slow(&self, ctx: &mut Ctx) -> Result<std::result::Result<String, StepOutcome>> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(Err(failed)),
        };
        let connect = |server: &crate::server::Server| Sub::connect(server.addr);
        let (Ok(mut publisher), Ok(mut reader), Ok(mut stalled)) =
            (connect(&server), connect(&server), connect(&server))
        else {
            return Ok(Err(StepOutcome::fail("slow subscriber: 3 connects failed")
                .cause("the server stopped accepting connections")
                .evidence(Ctx::server_evidence(&mut server))));
        };
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs);
        while !(reader.synced() && stalled.synced()) && Instant::now() < deadline {
            let _ = publisher.send(&frame(SYNC));
            std::thread::sleep(Duration::from_millis(100));
            reader.poll();
            stalled.poll();
        }
        // From here on `stalled` reads nothing.
        let chunk = vec![0x5au8; 64 * 1024];
        let frames = self.slow_mib * 16;
        let total = frames * chunk.len();
        let mut stream = publisher.stream.try_clone()?;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(Duration::from_secs(self.timeout_secs * 2)))?;
        let sender = std::thread::spawn(move || {
            let one = frame(&chunk);
            for _ in 0..frames {
                if stream.write_all(&one).is_err() {
                    return false;
                }
                // Paced (about 20 MB/s): a reading subscriber keeps up, so
                // only the one that never reads falls behind.
                std::thread::sleep(Duration::from_millis(3));
            }
            true
        });
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs * 2);
        let received = |r: &Sub| r.codes().iter().map(|f| f.len()).sum::<usize>();
        while received(&reader) < total && !reader.closed && Instant::now() < deadline {
            reader.poll();
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = received(&reader);
        if got < total {
            drop(server);
            let _ = sender.join();
            return Ok(Err(StepOutcome::fail(format!(
                "slow subscriber: while one subscriber read nothing, the publisher sent {} MiB; a reading subscriber got only {} KiB within {} s{}",
                self.slow_mib, got / 1024, self.timeout_secs * 2, if reader.closed { " and then EOF" } else { "" }
            ))
            .cause("one subscriber that never reads stalled the others: never block on a write (non-blocking sockets, write until WouldBlock, keep the rest in its buffer), and disconnect a subscriber whose pending output passes --max-pending")));
        }
        let _ = sender.join();
        // The stalled subscriber must have been disconnected: drain it and
        // expect EOF or a reset, having received well under everything.
        let mut stalled_bytes = stalled.buf.len();
        stalled.stream.set_nonblocking(false)?;
        stalled
            .stream
            .set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match stalled.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => stalled_bytes += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        if !ended || stalled_bytes >= total {
            return Ok(Err(StepOutcome::fail(format!(
                "slow subscriber: the subscriber that read nothing while {} MiB were published was not disconnected (it read {} KiB afterwards, {})",
                self.slow_mib, stalled_bytes / 1024, if ended { "then EOF" } else { "and the connection stays open" }
            ))
            .cause("a subscriber whose pending output passes --max-pending must be disconnected, or one client that never reads makes the server buffer without bound")
            .evidence(Ctx::server_evidence(&mut server))));
        }
        server.stop();
        Ok(Ok(format!(
            "slow subscriber: {} MiB published while one subscriber read nothing: the other got every byte, the stalled one was disconnected after {} KiB",
            self.slow_mib, stalled_bytes / 1024
        )))
    }
}

impl Check for Broadcast {
    fn summary(&self) -> String {
        format!(
            "broadcast to {:?} subscribers: every code to every other client, in order, none back to the sender; a subscriber that never reads is disconnected, not waited for",
            self.tiers
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut lines = Vec::new();
        for &n in &self.tiers {
            match self.tier(ctx, n)? {
                Ok(r) => {
                    let line = format!(
                        "broadcast: {n} subscribers: connection success {:.1} % ({}/{n}), delivery {:.1} % ({}/{} codes), none back to the sender",
                        100.0 * r.connected as f64 / n as f64,
                        r.connected,
                        100.0 * r.delivered as f64 / r.expected.max(1) as f64,
                        r.delivered,
                        r.expected
                    );
                    ctx.log.detail(&line);
                    lines.push(line);
                }
                Err(failed) => return Ok(failed),
            }
        }
        if self.slow_mib > 0 {
            match self.slow(ctx)? {
                Ok(line) => {
                    ctx.log.detail(&line);
                    lines.push(line);
                }
                Err(failed) => return Ok(failed),
            }
        }
        let mut outcome = StepOutcome::pass(format!(
            "every code delivered to every other subscriber at {:?} connections",
            self.tiers
        ));
        for line in lines {
            outcome = outcome.proof_line(line);
        }
        Ok(outcome)
    }
}
