//! `idle_timeout`: the server is started with `--idle-timeout N`. An active
//! client sends a frame every `active_interval_ms` and must get every echo
//! for `active_secs` (it is never idle for long, so it must never be
//! closed). Meanwhile `idle_clients` connect and send nothing, and one more
//! sends one frame, gets its echo and then goes quiet: each must be closed
//! by the server (EOF or reset) between `min_close_ms` and `max_close_ms`
//! after its last traffic. Over the whole window the server's CPU time
//! (/proc/PID/stat) stays under `max_cpu_ms`: a loop that polls with timeout
//! 0 to watch its deadlines spins and fails.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::hold::{read_echo, Echoed};
use super::{Check, Ctx};
use crate::procfs;
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleTimeout {
    /// Passed as `--idle-timeout`.
    pub idle_timeout_secs: u64,
    /// An idle client closed sooner than this (ms after its last traffic) fails.
    pub min_close_ms: u64,
    /// An idle client still open this long after its last traffic fails.
    pub max_close_ms: u64,
    /// Clients that connect and send nothing (one more goes quiet after an echo).
    pub idle_clients: usize,
    /// How long the active client keeps sending, in seconds.
    pub active_secs: u64,
    /// The active client's pause between frames, in ms.
    pub active_interval_ms: u64,
    /// Most CPU time the server may use over the whole window, in ms.
    pub max_cpu_ms: u64,
    pub args: Vec<String>,
}

impl Default for IdleTimeout {
    fn default() -> Self {
        IdleTimeout {
            idle_timeout_secs: 2,
            min_close_ms: 1500,
            max_close_ms: 4000,
            idle_clients: 3,
            active_secs: 4,
            active_interval_ms: 500,
            max_cpu_ms: 400,
            args: Vec::new(),
        }
    }
}

/// A client that should be closed for idling.
struct Idler {
    name: String,
    stream: TcpStream,
    quiet_since: Instant,
    closed_after: Option<Duration>,
}

/// True when the server has closed (or reset) `stream`; never blocks.
fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false, // unexpected bytes: not a close
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => false,
        Err(_) => true,
    }
}

/// The echo broken with --idle-timeout set (not the timeout's own bug).
const ECHO_BROKEN: &str = "idle_timeout.echo-broken";
const ECHO_BROKEN_CAUSE: &str =
    "with --idle-timeout set, the server must still accept and echo as before";

/// One frame and its echo; `Err((what, closed))` says what went wrong and
/// whether the server closed (or reset) the connection.
fn echo_once(stream: &mut TcpStream, text: &str) -> std::result::Result<(), (String, bool)> {
    let frame = stress::frame::encode(text.as_bytes());
    stream
        .write_all(&frame)
        .map_err(|e| (format!("sending failed: {e}"), true))?;
    match read_echo(stream, frame.len(), Instant::now() + Duration::from_secs(2)) {
        Echoed::Complete(got) if got == frame => Ok(()),
        Echoed::Complete(_) => Err(("the echo differs".into(), false)),
        Echoed::Eof(_) => Err(("the server closed the connection".into(), true)),
        Echoed::TimedOut(got) => Err((
            format!("{} of {} bytes echoed within 2 s", got.len(), frame.len()),
            false,
        )),
        Echoed::Failed(_, err) => Err((format!("the connection failed: {err}"), true)),
    }
}

impl Check for IdleTimeout {
    fn summary(&self) -> String {
        format!(
            "--idle-timeout {}: {} silent clients and 1 quiet after an echo closed {}-{} ms after their last traffic; a client sending every {} ms kept {} s; CPU under {} ms",
            self.idle_timeout_secs,
            self.idle_clients,
            self.min_close_ms,
            self.max_close_ms,
            self.active_interval_ms,
            self.active_secs,
            self.max_cpu_ms
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut args = self.args.clone();
        args.extend([
            "--idle-timeout".to_string(),
            self.idle_timeout_secs.to_string(),
        ]);
        let mut server = match ctx.start_server(&args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let connect = |name: &str| {
            TcpStream::connect_timeout(&server.addr, Duration::from_secs(3))
                .map_err(|e| format!("{name}: connect failed: {e}"))
        };
        let setup = (|| -> std::result::Result<(TcpStream, Vec<Idler>), String> {
            let mut active = connect("active client")?;
            let _ = active.set_nodelay(true);
            echo_once(&mut active, "active client, frame 0")
                .map_err(|(e, _)| format!("active client, frame 0: {e}"))?;
            let mut idlers = Vec::new();
            for n in 1..=self.idle_clients {
                let name = format!("silent client {n}");
                let stream = connect(&name)?;
                idlers.push(Idler {
                    name,
                    stream,
                    quiet_since: Instant::now(),
                    closed_after: None,
                });
            }
            let name = "client quiet after one echo".to_string();
            let mut stream = connect(&name)?;
            echo_once(&mut stream, "one frame, then silence")
                .map_err(|(e, _)| format!("{name}: {e}"))?;
            idlers.push(Idler {
                name,
                stream,
                quiet_since: Instant::now(),
                closed_after: None,
            });
            for idler in &idlers {
                idler
                    .stream
                    .set_nonblocking(true)
                    .map_err(|e| format!("{}: {e}", idler.name))?;
            }
            Ok((active, idlers))
        })();
        let (mut active, mut idlers) = match setup {
            Ok(clients) => clients,
            Err(what) => {
                return Ok(StepOutcome::fail(what)
                    .cause_as(ECHO_BROKEN, ECHO_BROKEN_CAUSE)
                    .evidence(Ctx::server_evidence(&mut server)))
            }
        };
        ctx.log.detail(format!(
            "1 active client, {} idle clients connected; watching for {} s",
            idlers.len(),
            self.active_secs
        ));

        let Ok(cpu_before) = procfs::cpu_time(server.pid) else {
            return Ok(
                StepOutcome::fail("the server exited while its clients were connecting")
                    .cause_as(
                        "idle_timeout.died-while-connecting",
                        "with --idle-timeout set, the server must keep running and serving",
                    )
                    .evidence(Ctx::server_evidence(&mut server)),
            );
        };
        let started = Instant::now();
        let window = Duration::from_secs(self.active_secs)
            .max(Duration::from_millis(self.max_close_ms + 200));
        let interval = Duration::from_millis(self.active_interval_ms.max(50));
        let mut next_frame = started + interval;
        let mut frames = 1;
        let mut active_failure = None;
        // Bounded: one pass per 20 ms until the window ends.
        while started.elapsed() < window {
            let now = Instant::now();
            if now >= next_frame && started.elapsed() < Duration::from_secs(self.active_secs) {
                if let Err((what, closed)) =
                    echo_once(&mut active, &format!("active client, frame {frames}"))
                {
                    active_failure = Some((
                        format!(
                            "active client, frame {frames} ({:.1} s in, one frame every {} ms): {what}",
                            started.elapsed().as_secs_f64(),
                            self.active_interval_ms
                        ),
                        closed,
                    ));
                    break;
                }
                frames += 1;
                next_frame += interval;
            }
            for idler in idlers.iter_mut().filter(|i| i.closed_after.is_none()) {
                if is_closed(&mut idler.stream) {
                    idler.closed_after = Some(idler.quiet_since.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu = procfs::cpu_time(server.pid)
            .unwrap_or(cpu_before)
            .saturating_sub(cpu_before);
        let watched = started.elapsed();
        let closes: Vec<String> = idlers
            .iter()
            .map(|i| match i.closed_after {
                Some(after) => format!(
                    "{}: closed {} ms after its last traffic",
                    i.name,
                    after.as_millis()
                ),
                None => format!(
                    "{}: still open after {} ms",
                    i.name,
                    i.quiet_since.elapsed().as_millis()
                ),
            })
            .collect();
        for line in &closes {
            ctx.log.detail(line);
        }
        let tolerance = format!(
            "tolerance: closed between {} and {} ms after the last traffic, for --idle-timeout {}",
            self.min_close_ms, self.max_close_ms, self.idle_timeout_secs
        );
        let evidence = |server: &mut crate::server::Server| {
            closes
                .iter()
                .cloned()
                .chain(std::iter::once(tolerance.clone()))
                .chain(Ctx::server_evidence(server))
                .collect::<Vec<_>>()
        };
        if let Some(death) = server.death_notice() {
            return Ok(
                StepOutcome::fail(format!("the server died while clients idled: {death}"))
                    .cause_as(
                        "idle_timeout.died",
                        "closing an idle client must never end the server",
                    )
                    .evidence(evidence(&mut server)),
            );
        }
        // Closed although it sent every 500 ms: timed out as if idle. An
        // echo that is only wrong or late is not that.
        if let Some((what, closed)) = active_failure {
            let failed = StepOutcome::fail(what);
            let failed = if closed {
                failed.cause_as("idle_timeout.active-client-closed", "a client that sends every 500 ms is never idle for --idle-timeout: reset its deadline (last_active = now) whenever bytes move on it, and measure idleness from there, not from its connect")
            } else {
                failed.cause_as(ECHO_BROKEN, ECHO_BROKEN_CAUSE)
            };
            return Ok(failed.evidence(evidence(&mut server)));
        }
        if let Some(early) = idlers.iter().find(|i| {
            i.closed_after
                .is_some_and(|after| after < Duration::from_millis(self.min_close_ms))
        }) {
            return Ok(StepOutcome::fail(format!(
                "{} was closed too early ({} ms after its last traffic, --idle-timeout {})",
                early.name,
                early.closed_after.unwrap_or_default().as_millis(),
                self.idle_timeout_secs
            ))
            .cause_as("idle_timeout.closed-too-early", "an idle client must be given the whole --idle-timeout (in seconds) before it is closed")
            .evidence(evidence(&mut server)));
        }
        if let Some(open) = idlers.iter().find(|i| i.closed_after.is_none()) {
            return Ok(StepOutcome::fail(format!(
                "{} was still open {} ms after its last traffic (--idle-timeout {}, bound {} ms)",
                open.name,
                open.quiet_since.elapsed().as_millis(),
                self.idle_timeout_secs,
                self.max_close_ms
            ))
            .cause_as("idle_timeout.not-closed", "idle clients are not closed in time: poll() must wake at the nearest deadline (its timeout = the time left until the earliest last_active + idle-timeout), and each wake-up must close every connection whose deadline has passed")
            .evidence(evidence(&mut server)));
        }
        let cpu_ms = cpu.as_millis();
        if cpu_ms > self.max_cpu_ms as u128 {
            return Ok(StepOutcome::fail(format!(
                "the server used {cpu_ms} ms of CPU in {} ms while its clients idled and one sent a frame every {} ms (bound {} ms, generous for a loaded machine)",
                watched.as_millis(),
                self.active_interval_ms,
                self.max_cpu_ms
            ))
            .cause_as("idle_timeout.spins", "the loop spins while waiting for deadlines: give poll() the time left until the nearest deadline (rounded up to a whole millisecond), never 0, and -1 when no client can time out")
            .evidence(evidence(&mut server))
            .figure("idle_timeout_cpu_ms", cpu_ms));
        }
        let slowest = idlers
            .iter()
            .filter_map(|i| i.closed_after)
            .max()
            .unwrap_or_default();
        Ok(StepOutcome::pass(format!(
            "{} idle clients closed within {} ms of their last traffic (bound {}-{} ms); the active client got {frames} echoes over {} s; {cpu_ms} ms of CPU (bound {} ms)",
            idlers.len(),
            slowest.as_millis(),
            self.min_close_ms,
            self.max_close_ms,
            self.active_secs,
            self.max_cpu_ms
        ))
        .figure("idle_timeout_cpu_ms", cpu_ms)
        .proof_line(format!(
            "idle_timeout: --idle-timeout {}: {} idle clients closed {}-{} ms after their last traffic, a client sending every {} ms kept {} s, CPU under {} ms",
            self.idle_timeout_secs,
            idlers.len(),
            self.min_close_ms,
            self.max_close_ms,
            self.active_interval_ms,
            self.active_secs,
            self.max_cpu_ms
        )))
    }
}
