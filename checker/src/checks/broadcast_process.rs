//! `broadcast_process` and `broadcast_idle_cpu`: the process probes of the
//! echo lessons (`process`, `idle_cpu`), driven with the broadcast protocol
//! (each frame goes to every other client, none back to its sender).
//!
//! `broadcast_process` connects `subscribers` clients and a publisher,
//! which publishes `sync` until every subscriber received one; then it
//! reads the thread count while they all sit idle (a thread per
//! connection shows there), and again about every millisecond while the
//! publisher sends `frame_size`-byte frames for `load_ms` (paced, about
//! 4 MB/s) and the subscribers read them (a thread per frame or per
//! fan-out shows there). The peak of each phase must be at most
//! `threads`, with no child process, and every frame must reach every
//! subscriber.
//!
//! `broadcast_idle_cpu` connects `connections` clients, syncs them the
//! same way (so the server has written to every one), and measures the
//! server's CPU time over `window_ms`: at most `max_cpu_ms`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::broadcast::{frame, sync, Sub};
use super::watch::{self, CpuWindow, Phase, Setting, ThreadWatch};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastProcess {
    /// Most threads the server may have, in either phase.
    pub threads: usize,
    /// Subscribers besides the publisher.
    pub subscribers: usize,
    /// How long the publisher sends, in milliseconds.
    pub load_ms: u64,
    /// Payload bytes of each published frame.
    pub frame_size: usize,
    pub args: Vec<String>,
}

impl Default for BroadcastProcess {
    fn default() -> Self {
        BroadcastProcess {
            threads: 1,
            subscribers: 8,
            load_ms: 1500,
            frame_size: 1024,
            args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastIdleCpu {
    /// Connected clients (the publisher of the sync frames included).
    pub connections: usize,
    /// How long the server is watched, in milliseconds.
    pub window_ms: u64,
    /// Most CPU time the server may use in the window, in milliseconds.
    pub max_cpu_ms: u64,
    pub args: Vec<String>,
}

impl Default for BroadcastIdleCpu {
    fn default() -> Self {
        BroadcastIdleCpu {
            connections: 10,
            window_ms: 2000,
            max_cpu_ms: 200,
            args: Vec::new(),
        }
    }
}

/// How long the sync may take.
const SYNC_WITHIN: Duration = Duration::from_secs(10);

/// Connects `n` clients (the first is the publisher) and syncs them.
/// Err: the failing outcome.
fn connect_synced(
    addr: SocketAddr,
    n: usize,
    server: &mut Server,
) -> std::result::Result<Vec<Sub>, Box<StepOutcome>> {
    let mut subs = Vec::new();
    for i in 1..=n {
        match Sub::connect(addr) {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                return Err(Box::new(
                    StepOutcome::fail(format!("client {i} of {n}: connect failed: {e}"))
                        .cause("the server stopped accepting connections")
                        .evidence(Ctx::server_evidence(server)),
                ))
            }
        }
    }
    let synced = match sync(&mut subs, Instant::now() + SYNC_WITHIN) {
        Ok(synced) => synced,
        Err(e) => {
            return Err(Box::new(
                StepOutcome::fail(format!(
                    "the publisher's connection broke while it published `sync`: {e}"
                ))
                .cause("the server closed a connected client")
                .evidence(Ctx::server_evidence(server)),
            ))
        }
    };
    if synced + 1 < n {
        return Err(Box::new(
            StepOutcome::fail(format!(
            "{synced} of the {} other clients received the publisher's `sync` frame within {} s",
            n - 1,
            SYNC_WITHIN.as_secs()
        ))
            .cause("every frame must reach every other connected client")
            .evidence(Ctx::server_evidence(server)),
        ));
    }
    Ok(subs)
}

impl Check for BroadcastProcess {
    fn summary(&self) -> String {
        format!(
            "with {} subscribers idle, then while frames are broadcast to them for {} ms: at most {} thread(s) and no child process (/proc read every ms)",
            self.subscribers, self.load_ms, self.threads
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let mut subs = match connect_synced(server.addr, self.subscribers + 1, &mut server) {
            Ok(subs) => subs,
            Err(failed) => return Ok(*failed),
        };
        // Let a thread or child started per connection come into being.
        std::thread::sleep(Duration::from_millis(300));
        let mut watch = ThreadWatch::new(server.pid, self.threads);
        for _ in 0..20 {
            if watch.sample(Phase::Idle).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        watch.sample_children();
        if let Some(dead) = watch::died(&mut server, "with its subscribers connected") {
            return Ok(dead);
        }
        ctx.log.detail(format!(
            "{} subscribers and a publisher connected and idle: at most {} thread(s)",
            self.subscribers, watch.idle_max
        ));
        // The subscribers' `sync` frames are behind us: count from here.
        for sub in subs.iter_mut() {
            sub.poll();
            sub.frames.clear();
        }

        let mut publisher = subs.remove(0);
        let sent = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_millis(self.load_ms);
        let payload = vec![0x42u8; self.frame_size];
        let publishing = {
            let sent = Arc::clone(&sent);
            std::thread::spawn(move || {
                let batch: Vec<u8> = (0..4).flat_map(|_| frame(&payload)).collect();
                while Instant::now() < until {
                    if publisher.send(&batch).is_err() {
                        return Err(publisher);
                    }
                    sent.fetch_add(4, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(publisher)
            })
        };
        let reading = {
            let sent = Arc::clone(&sent);
            let drain = until + Duration::from_secs(5);
            std::thread::spawn(move || loop {
                for sub in subs.iter_mut() {
                    sub.poll();
                }
                let target = sent.load(Ordering::Relaxed);
                let all = subs.iter().all(|s| s.codes().len() >= target || s.closed);
                if (Instant::now() >= until && all) || Instant::now() >= drain {
                    return subs;
                }
                std::thread::sleep(Duration::from_millis(1));
            })
        };
        let sampled = watch.sample_while(Duration::from_millis(self.load_ms + 7000), || {
            publishing.is_finished() && reading.is_finished()
        });
        let publisher = publishing.join();
        let subs = reading
            .join()
            .map_err(|_| anyhow::anyhow!("a broadcast reader thread panicked"))?;
        if let Some(dead) = watch::died(&mut server, "while frames were broadcast") {
            return Ok(dead);
        }
        sampled?;
        let sent = sent.load(Ordering::Relaxed);
        let idle = format!(
            "{} subscribers and a publisher connected and idle",
            self.subscribers
        );
        let busy = format!(
            "{}-byte frames broadcast to {} subscribers for {} ms",
            self.frame_size, self.subscribers, self.load_ms
        );
        ctx.log.detail(format!(
            "{sent} {busy}: at most {} thread(s) ({} readings of /proc)",
            watch.load_max, watch.samples
        ));
        let setting = Setting {
            idle: &idle,
            load: &busy,
            unit: "frame",
        };
        if let Some(failed) = watch::thread_verdict(&watch, &setting, &mut server) {
            return Ok(failed);
        }
        if !matches!(publisher, Ok(Ok(_))) {
            return Ok(StepOutcome::fail(format!(
                "the publisher's connection broke after {sent} frames"
            ))
            .cause("the server closed a connected client")
            .evidence(Ctx::server_evidence(&mut server)));
        }
        let size = self.frame_size;
        for (i, sub) in subs.iter().enumerate() {
            // `sync` frames aside (a late one may still come in).
            let got = sub.codes();
            let whole = got.iter().filter(|f| f.len() == size).count();
            if whole != sent || got.len() != sent {
                return Ok(StepOutcome::fail(format!(
                    "subscriber {} received {} frames ({whole} of {size} bytes) of the {sent} published{}",
                    i + 1,
                    got.len(),
                    if sub.closed { ", then EOF" } else { "" }
                ))
                .cause("each frame must reach every other client, whole and in order")
                .evidence(Ctx::server_evidence(&mut server)));
            }
        }
        Ok(StepOutcome::pass(format!(
            "{} thread(s) at most, no child process: {} with {idle}, {} with {sent} {busy}",
            watch.idle_max.max(watch.load_max),
            watch.idle_max,
            watch.load_max
        ))
        .figure("threads_idle", watch.idle_max)
        .figure("threads_load", watch.load_max)
        .figure("frames_published", sent)
        .proof_line(format!(
            "broadcast_process: at most {} thread(s), 0 child processes, with {} subscribers idle and while frames were broadcast to them",
            watch.idle_max.max(watch.load_max),
            self.subscribers
        )))
    }
}

impl Check for BroadcastIdleCpu {
    fn summary(&self) -> String {
        format!(
            "{} clients connected, synced and idle: server CPU time over {} ms stays under {} ms",
            self.connections, self.window_ms, self.max_cpu_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let subs = match connect_synced(server.addr, self.connections.max(2), &mut server) {
            Ok(subs) => subs,
            Err(failed) => return Ok(*failed),
        };
        // Let the sync frames' work finish before the window opens.
        std::thread::sleep(Duration::from_millis(200));
        let cpu = CpuWindow::measure(server.pid, Duration::from_millis(self.window_ms));
        if let Some(dead) = watch::died(&mut server, "while its clients were idle") {
            return Ok(dead);
        }
        let cpu = cpu?;
        let idle = format!("{} clients connected and idle", subs.len());
        ctx.log.detail(format!(
            "{idle}: {} ms of CPU in {} ms",
            cpu.used_ms(),
            cpu.elapsed.as_millis()
        ));
        if let Some(failed) = watch::idle_verdict(&cpu, self.max_cpu_ms, &idle, &mut server) {
            return Ok(failed);
        }
        drop(subs);
        Ok(StepOutcome::pass(format!(
            "{} ms of CPU in {} ms with {idle} (bound {} ms)",
            cpu.used_ms(),
            cpu.elapsed.as_millis(),
            self.max_cpu_ms
        ))
        .figure("idle_cpu_ms", cpu.used_ms())
        .proof_line(format!(
            "broadcast_idle_cpu: under {} ms of CPU in {} ms with {idle}",
            self.max_cpu_ms, self.window_ms
        )))
    }
}
