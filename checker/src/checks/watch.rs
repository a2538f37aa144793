//! Watching a server's process while a protocol's driver holds or loads
//! it: the thread count sampled from /proc/PID/status (its peak per phase,
//! and child processes), and the CPU time of an idle window from
//! /proc/PID/stat. Shared by the HTTP (`http_process`, `http_idle_cpu`) and
//! broadcast (`broadcast_process`, `broadcast_idle_cpu`) probes, whose
//! drivers speak the lesson's protocol; the verdicts are the same.

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;

use super::Ctx;
use crate::procfs;
use crate::report::StepOutcome;
use crate::server::Server;

/// A phase of the watch: what the clients were doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Connections open and silent.
    Idle,
    /// Clients sending (or receiving) as fast as the server answers.
    Load,
}

/// The peak thread count of each phase, and child processes seen.
pub struct ThreadWatch {
    pid: Pid,
    allowed: usize,
    pub idle_max: usize,
    pub load_max: usize,
    pub samples: usize,
    /// Readings above `allowed`.
    pub over: usize,
    pub children: Vec<Pid>,
}

impl ThreadWatch {
    /// A watch of `pid`, which may have at most `allowed` threads.
    pub fn new(pid: Pid, allowed: usize) -> ThreadWatch {
        ThreadWatch {
            pid,
            allowed,
            idle_max: 0,
            load_max: 0,
            samples: 0,
            over: 0,
            children: Vec::new(),
        }
    }

    /// Reads `Threads:` once; Err when /proc no longer has the process.
    pub fn sample(&mut self, phase: Phase) -> Result<()> {
        let threads = procfs::threads(self.pid)?;
        self.samples += 1;
        if threads > self.allowed {
            self.over += 1;
        }
        let peak = match phase {
            Phase::Idle => &mut self.idle_max,
            Phase::Load => &mut self.load_max,
        };
        *peak = (*peak).max(threads);
        Ok(())
    }

    /// Looks for child processes (a process per connection or request).
    pub fn sample_children(&mut self) {
        for child in procfs::descendants(self.pid) {
            if !self.children.contains(&child) {
                self.children.push(child);
            }
        }
    }

    /// Samples every millisecond or so until `done()` or `within` passes
    /// (bounded in count as well); children every 50th sample.
    pub fn sample_while(&mut self, within: Duration, done: impl Fn() -> bool) -> Result<()> {
        let until = Instant::now() + within;
        let most = within.as_millis() as usize * 2 + 10;
        for n in 0..most {
            if done() || Instant::now() >= until {
                break;
            }
            self.sample(Phase::Load)?;
            if n % 50 == 0 {
                self.sample_children();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.sample_children();
        Ok(())
    }
}

/// What the probe did in each phase, in the student's terms.
pub struct Setting<'a> {
    /// e.g. "8 keep-alive connections open and idle".
    pub idle: &'a str,
    /// e.g. "4 clients sending GET requests back to back for 1000 ms".
    pub load: &'a str,
    /// The lesson's unit of work: "request", "frame".
    pub unit: &'a str,
}

/// The verdict on a watch: at most `allowed` threads in both phases and no
/// child process. None: it passed.
pub fn thread_verdict(
    watch: &ThreadWatch,
    setting: &Setting,
    server: &mut Server,
) -> Option<StepOutcome> {
    let allowed = watch.allowed;
    let evidence = |server: &mut Server| {
        std::iter::once(format!(
            "/proc/{}/status Threads: at most {} with {}, at most {} with {} ({} of {} readings above {allowed})",
            watch.pid.as_raw(),
            watch.idle_max,
            setting.idle,
            watch.load_max,
            setting.load,
            watch.over,
            watch.samples
        ))
        .chain(Ctx::server_evidence(server))
        .collect::<Vec<_>>()
    };
    if watch.idle_max > allowed {
        return Some(
            StepOutcome::fail(format!(
                "the server had {} threads with {}; at most {allowed} allowed",
                watch.idle_max, setting.idle
            ))
            .cause(format!(
                "threads that exist while connections sit idle belong to the connections: a thread per connection. This lesson's server serves every connection from one event loop on {}",
                threads_word(allowed)
            ))
            .evidence(evidence(server))
            .figure("threads_idle", watch.idle_max)
            .figure("threads_load", watch.load_max),
        );
    }
    if watch.load_max > allowed {
        return Some(
            StepOutcome::fail(format!(
                "the server had {} threads with {} (at most {} with its connections idle); at most {allowed} allowed",
                watch.load_max, setting.load, watch.idle_max
            ))
            .cause(format!(
                "threads that come and go with the traffic: a thread per {} (or threads started on demand). The event loop handles each {} itself, on {}",
                setting.unit,
                setting.unit,
                threads_word(allowed)
            ))
            .evidence(evidence(server))
            .figure("threads_idle", watch.idle_max)
            .figure("threads_load", watch.load_max),
        );
    }
    if !watch.children.is_empty() {
        let pids: Vec<String> = watch.children.iter().map(|p| p.to_string()).collect();
        return Some(
            StepOutcome::fail(format!(
                "the server started {} child process(es) ({})",
                watch.children.len(),
                pids.join(", ")
            ))
            .cause("one process serves every connection: no fork, no child processes")
            .evidence(evidence(server)),
        );
    }
    None
}

fn threads_word(n: usize) -> String {
    if n == 1 {
        "one thread".to_string()
    } else {
        format!("{n} threads")
    }
}

/// The CPU time the server uses over `window`, with its readings.
pub struct CpuWindow {
    pub before: Duration,
    pub after: Duration,
    pub elapsed: Duration,
}

impl CpuWindow {
    pub fn measure(pid: Pid, window: Duration) -> Result<CpuWindow> {
        let before = procfs::cpu_time(pid)?;
        let started = Instant::now();
        std::thread::sleep(window);
        let after = procfs::cpu_time(pid)?;
        Ok(CpuWindow {
            before,
            after,
            elapsed: started.elapsed(),
        })
    }

    pub fn used_ms(&self) -> u128 {
        self.after.saturating_sub(self.before).as_millis()
    }
}

/// The verdict on an idle window: at most `max_cpu_ms`. None: it passed.
pub fn idle_verdict(
    cpu: &CpuWindow,
    max_cpu_ms: u64,
    idle: &str,
    server: &mut Server,
) -> Option<StepOutcome> {
    let used = cpu.used_ms();
    if used <= max_cpu_ms as u128 {
        return None;
    }
    Some(
        StepOutcome::fail(format!(
            "the idle server used {used} ms of CPU in {} ms with {idle} (bound: {max_cpu_ms} ms, a generous tolerance for a loaded machine)",
            cpu.elapsed.as_millis()
        ))
        .cause("the event loop spins while nothing happens: wait in epoll_wait() with no timeout (-1) unless a deadline is due, never 0, and ask for EPOLLOUT only while output is pending (or edge-triggered)")
        .evidence(
            std::iter::once(format!(
                "/proc/{}/stat utime+stime: {:.3} s before, {:.3} s after, with {idle}",
                server.pid,
                cpu.before.as_secs_f64(),
                cpu.after.as_secs_f64()
            ))
            .chain(Ctx::server_evidence(server)),
        )
        .figure("idle_cpu_ms", used),
    )
}

/// The verdict for a server that died while watched, if it did.
pub fn died(server: &mut Server, while_doing: &str) -> Option<StepOutcome> {
    let death = server.death_notice()?;
    Some(
        StepOutcome::fail(format!("the server died {while_doing}"))
            .cause("a client must never end the server")
            .evidence(std::iter::once(death).chain(server.output_tail(20))),
    )
}
