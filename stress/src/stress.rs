//! The stress engine: many clients at once, each on its own connection,
//! sending seeded frames and checking every echo byte for byte.
//!
//! Each client runs on its own thread, which reads and verifies echoes; for
//! every connection it starts a writer thread that sends the client's
//! [`ClientPlan`] burst by burst. Reading while writing is what keeps a
//! correct *blocking* server from deadlocking: it may block writing an echo
//! while we are still writing the rest of a burst.
//!
//! Nothing here panics on a network error or blocks past the run's timeout:
//! sockets have short timeouts and every wait loops on the deadline.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::frame::{FrameDecoder, DEFAULT_MAX_FRAME, HEADER_LEN};
use crate::plan::ClientPlan;
use crate::report::{describe_payload_mismatch, seconds, MAX_FAILURE_DETAILS};
pub use crate::report::{FailureDetail, FailureKind, StressReport};

/// Socket read and write timeout: how often a blocked thread wakes up to
/// look at the deadline and at the other thread's state.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// First wait before reconnecting after a refusal; doubles up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How often the progress callback may be called.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes asked for per read of echoes.
const READ_BUFFER_LEN: usize = 32 * 1024;

/// Stack of client and writer threads: they keep their buffers on the heap,
/// and small stacks let thousands of clients run at once.
const THREAD_STACK_LEN: usize = 256 * 1024;

/// A silence at least this long before the timeout means the server
/// stopped answering, rather than answering too slowly.
const STOPPED_ANSWERING_AFTER: Duration = Duration::from_secs(1);

/// Default bound on a server's silence towards one client with frames
/// outstanding: a correct server answers within milliseconds, a stalled one
/// never does, so waiting out the whole timeout only slows the verdict.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run against which server.
#[derive(Debug, Clone)]
pub struct StressConfig {
    /// The echo server.
    pub addr: SocketAddr,
    /// Clients, each on its own connection, all at once.
    pub clients: usize,
    /// Frames each client sends.
    pub frames: usize,
    /// Everything random (sizes, split points, pipelining, payload bytes)
    /// derives from it: the same seed replays the same run.
    pub seed: u64,
    /// Bounds the whole run; frames not echoed by then fail.
    pub timeout: Duration,
    /// Largest payload sent (at most `u32::MAX`); it should not exceed the
    /// server's `--max-frame`.
    pub max_payload: usize,
    /// A client whose server sends nothing at all for this long, with
    /// frames outstanding, fails at once ("stopped answering") instead of
    /// waiting for `timeout`. `None`: only `timeout` applies.
    pub stall_timeout: Option<Duration>,
    /// Set by the caller to stop retrying refused connections early, e.g.
    /// once it knows the server process is gone: nothing will ever accept.
    pub give_up: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl StressConfig {
    /// A run of `clients` x `frames` with a 30 s timeout and payloads of up
    /// to [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new(addr: SocketAddr, clients: usize, frames: usize, seed: u64) -> Self {
        StressConfig {
            addr,
            clients,
            frames,
            seed,
            timeout: Duration::from_secs(30),
            max_payload: DEFAULT_MAX_FRAME,
            stall_timeout: Some(STALL_TIMEOUT),
            give_up: None,
        }
    }

    fn given_up(&self) -> bool {
        self.give_up
            .as_ref()
            .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Runs the stress test described by `cfg` and reports what it found.
/// Returns within `cfg.timeout` plus well under a second, whatever the server
/// does; every thread it started has been joined by then.
pub fn run_stress(cfg: &StressConfig) -> StressReport {
    run_stress_with_progress(cfg, &|_| {})
}

/// [`run_stress`], calling `progress` with the number of frames verified so
/// far whenever it changed, checked every 100 ms and when the run ends.
/// `progress` is only ever called from the calling thread.
pub fn run_stress_with_progress(
    cfg: &StressConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> StressReport {
    let started = Instant::now();
    let deadline = started
        .checked_add(cfg.timeout)
        .unwrap_or(started + Duration::from_secs(365 * 24 * 3600));
    let max_payload = cfg.max_payload.min(u32::MAX as usize);
    let verified_total = AtomicUsize::new(0);

    let results: Vec<ClientResult> = thread::scope(|scope| {
        // Each client thread holds a sender; the channel disconnects once
        // all of them are gone, which is how this thread knows they are done.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handles: Vec<_> = (0..cfg.clients)
            .map(|client| {
                let done_tx = done_tx.clone();
                let verified_total = &verified_total;
                thread::Builder::new()
                    .name(format!("stress-client-{client}"))
                    .stack_size(THREAD_STACK_LEN)
                    .spawn_scoped(scope, move || {
                        let plan = ClientPlan::generate(cfg.seed, client, cfg.frames, max_payload);
                        let result = run_client(cfg, &plan, deadline, verified_total);
                        // The receiver may be gone already; nothing to do then.
                        let _ = done_tx.send(());
                        result
                    })
            })
            .collect();
        drop(done_tx);

        let mut reported = None;
        loop {
            let all_done = matches!(
                done_rx.recv_timeout(PROGRESS_INTERVAL),
                Err(RecvTimeoutError::Disconnected)
            );
            let verified = verified_total.load(Ordering::Relaxed);
            if reported != Some(verified) {
                progress(verified);
                reported = Some(verified);
            }
            if all_done {
                break;
            }
        }

        handles
            .into_iter()
            .enumerate()
            .map(|(client, handle)| match handle {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    ClientResult::broken(client, "internal error: the client thread panicked")
                }),
                Err(e) => ClientResult::broken(client, &format!("could not start a thread: {e}")),
            })
            .collect()
    });

    let mut report = StressReport {
        clients: cfg.clients,
        frames: cfg.clients.saturating_mul(cfg.frames),
        failures: 0,
        elapsed: started.elapsed(),
        refused_retries: 0,
        bytes_echoed: 0,
        failure_details: Vec::new(),
        failed_clients: 0,
    };
    for result in results {
        report.failures += cfg.frames.saturating_sub(result.verified);
        report.refused_retries += result.refused_retries;
        report.bytes_echoed += result.bytes_echoed;
        if let Some(detail) = result.failure {
            report.failed_clients += 1;
            if report.failure_details.len() < MAX_FAILURE_DETAILS {
                report.failure_details.push(detail);
            }
        }
    }
    report
}

/// How one client ended.
struct ClientResult {
    /// Frames echoed correctly, from frame 0 on.
    verified: usize,
    bytes_echoed: u64,
    refused_retries: usize,
    /// Set exactly when `verified` is short of the client's frames.
    failure: Option<FailureDetail>,
}

impl ClientResult {
    /// A client that never got to talk to the server because of a fault of
    /// this engine, not of the server.
    fn broken(client: usize, message: &str) -> Self {
        ClientResult {
            verified: 0,
            bytes_echoed: 0,
            refused_retries: 0,
            failure: Some(FailureDetail {
                client,
                frame: None,
                kind: FailureKind::Io,
                message: message.to_string(),
            }),
        }
    }
}

/// How one connection ended.
enum Attempt {
    /// Refused, or closed or reset before a single echo byte: the server
    /// may be at capacity or not yet listening, so try again from frame 0.
    Refused(Refusal),
    /// The client is done: `verified` frames were echoed correctly, then
    /// `failure` (if any) ended it.
    Finished {
        verified: usize,
        bytes_echoed: u64,
        failure: Option<FailureDetail>,
    },
}

/// Why a connection attempt got no echo at all.
struct Refusal {
    /// The kind reported if the timeout expires before a connection works.
    kind: FailureKind,
    reason: String,
}

impl Refusal {
    fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Refusal {
            kind,
            reason: reason.into(),
        }
    }
}

/// Runs one client to the end: connects, retrying with backoff while the
/// server refuses, and verifies every echo of its plan.
fn run_client(
    cfg: &StressConfig,
    plan: &ClientPlan,
    deadline: Instant,
    verified_total: &AtomicUsize,
) -> ClientResult {
    let total = plan.frame_count();
    if total == 0 {
        return ClientResult {
            verified: 0,
            bytes_echoed: 0,
            refused_retries: 0,
            failure: None,
        };
    }

    let mut attempts = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut last_refusal: Option<Refusal> = None;
    // Retry until the deadline itself: a server may start listening late.
    loop {
        attempts += 1;
        let refusal = match connect(cfg.addr, deadline) {
            Ok(stream) => {
                match run_connection(
                    &stream,
                    plan,
                    cfg.timeout,
                    cfg.stall_timeout,
                    deadline,
                    verified_total,
                ) {
                    Attempt::Refused(refusal) => refusal,
                    Attempt::Finished {
                        verified,
                        bytes_echoed,
                        failure,
                    } => {
                        return ClientResult {
                            verified,
                            bytes_echoed,
                            refused_retries: attempts - 1,
                            failure,
                        }
                    }
                }
            }
            Err(refusal) => refusal,
        };
        // Running out of time to connect is not news; keep the real reason.
        if refusal.kind != FailureKind::Timeout || last_refusal.is_none() {
            last_refusal = Some(refusal);
        }

        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || cfg.given_up() {
            break;
        }
        thread::sleep(backoff.min(remaining));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if Instant::now() >= deadline {
            break;
        }
    }

    let refusal = last_refusal
        .unwrap_or_else(|| Refusal::new(FailureKind::Timeout, "no time left to connect"));
    let message = format!(
        "no connection got an echo before the {} timeout expired: {attempts} attempt(s) \
         refused, or closed before any echo (last: {}); {total} frames not echoed",
        seconds(cfg.timeout),
        refusal.reason,
    );
    ClientResult {
        verified: 0,
        bytes_echoed: 0,
        refused_retries: attempts - 1,
        failure: Some(FailureDetail {
            client: plan.client,
            frame: None,
            kind: refusal.kind,
            message,
        }),
    }
}

/// Connects with whatever time is left and sets the socket up for the run.
fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, Refusal> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Refusal::new(
            FailureKind::Timeout,
            "no time left to connect",
        ));
    }
    let stream = TcpStream::connect_timeout(&addr, remaining).map_err(|e| {
        let kind = match e.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted => FailureKind::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => FailureKind::Timeout,
            _ => FailureKind::Io,
        };
        Refusal::new(kind, format!("connect to {addr}: {e}"))
    })?;
    // Without TCP_NODELAY, Nagle's algorithm would hold back the pieces of
    // a split write, so the server would not see the split, and each piece
    // could wait on a delayed ACK (40 ms).
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(POLL_INTERVAL)))
        .and_then(|()| stream.set_write_timeout(Some(POLL_INTERVAL)))
        .map_err(|e| Refusal::new(FailureKind::Io, format!("socket setup: {e}")))?;
    Ok(stream)
}

/// Runs one connection: a writer thread sends the plan while this thread
/// reads and verifies the echoes.
fn run_connection(
    stream: &TcpStream,
    plan: &ClientPlan,
    timeout: Duration,
    stall_timeout: Option<Duration>,
    deadline: Instant,
    verified_total: &AtomicUsize,
) -> Attempt {
    let window = Window::default();
    thread::scope(|scope| {
        let writer = thread::Builder::new()
            .name(format!("stress-writer-{}", plan.client))
            .stack_size(THREAD_STACK_LEN)
            .spawn_scoped(scope, || write_plan(stream, plan, &window, deadline));
        let writer = match writer {
            Ok(writer) => writer,
            Err(e) => {
                return Attempt::Finished {
                    verified: 0,
                    bytes_echoed: 0,
                    failure: Some(FailureDetail {
                        client: plan.client,
                        frame: None,
                        kind: FailureKind::Io,
                        message: format!("could not start a writer thread: {e}"),
                    }),
                }
            }
        };

        let attempt = verify_echoes(
            stream,
            plan,
            &window,
            timeout,
            stall_timeout,
            deadline,
            verified_total,
        );

        window.stop();
        if !matches!(attempt, Attempt::Finished { failure: None, .. }) {
            // Unblocks a writer stuck in write(); the connection is over.
            let _ = stream.shutdown(Shutdown::Both);
        }
        // The writer only returns; a panic there would be a bug in this
        // engine, and must not take the caller down with it.
        let _ = writer.join();
        attempt
    })
}

/// Sends the plan, one burst at a time: a burst is written (split at its
/// planned cuts) only once every earlier frame has been echoed, which keeps
/// at most one burst (8 frames, 256 KiB) outstanding.
fn write_plan(stream: &TcpStream, plan: &ClientPlan, window: &Window, deadline: Instant) {
    let mut socket = stream;
    let mut encoded = Vec::new();
    for burst in &plan.bursts {
        if !window.wait_for_echoes(burst.frames.start, deadline) {
            return;
        }
        encoded.clear();
        plan.encode_burst(burst, &mut encoded);
        for chunk in burst.chunks(&encoded) {
            match write_chunk(&mut socket, chunk, window, deadline) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    window.record_write_error(e);
                    return;
                }
            }
        }
    }
}

/// Writes all of `chunk`, retrying on timeouts until the deadline.
/// `Ok(false)`: gave up because the reader stopped or time ran out.
fn write_chunk(
    socket: &mut &TcpStream,
    mut chunk: &[u8],
    window: &Window,
    deadline: Instant,
) -> io::Result<bool> {
    while !chunk.is_empty() {
        if window.is_stopped() || Instant::now() >= deadline {
            return Ok(false);
        }
        match socket.write(chunk) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => chunk = &chunk[written..],
            // The server is not reading (yet): look at the clock, try again.
            Err(e) if is_retryable(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads echoes until every frame of the plan has been verified, or
/// something goes wrong.
fn verify_echoes(
    stream: &TcpStream,
    plan: &ClientPlan,
    window: &Window,
    timeout: Duration,
    stall_timeout: Option<Duration>,
    deadline: Instant,
    verified_total: &AtomicUsize,
) -> Attempt {
    let mut check = EchoCheck::new(plan);
    let mut socket = stream;
    let mut buffer = vec![0u8; READ_BUFFER_LEN];
    loop {
        if let Err(mismatch) = check.verify_buffered(window, verified_total) {
            return check.failed(Some(check.verified), FailureKind::Mismatch, mismatch);
        }
        if check.verified == plan.frame_count() {
            return check.finished(None);
        }
        if Instant::now() >= deadline {
            return check.timed_out(timeout);
        }
        if let Some(stall) = stall_timeout.filter(|s| check.last_received_at.elapsed() >= *s) {
            return check.stalled(stall);
        }
        match socket.read(&mut buffer) {
            Ok(0) => return check.closed(),
            Ok(n) => {
                acknowledge_now(stream);
                check.receive(&buffer[..n]);
            }
            Err(e) if is_retryable(&e) => {
                // Quiet for a poll interval: if the writer failed, no echo
                // of the unsent frames will ever come.
                if let Some(e) = window.take_write_error() {
                    let (kind, what) = describe_connection_error(&e, "sending");
                    return check.lost(kind, what);
                }
            }
            Err(e) => {
                let (kind, what) = describe_connection_error(&e, "reading");
                return check.lost(kind, what);
            }
        }
    }
}

/// The reading side of one connection: echo bytes received so far, and how
/// many frames they proved echoed correctly.
struct EchoCheck<'a> {
    plan: &'a ClientPlan,
    decoder: FrameDecoder,
    /// Frames echoed correctly so far; also the index of the next echo.
    verified: usize,
    bytes_received: u64,
    bytes_echoed: u64,
    last_received_at: Instant,
}

impl<'a> EchoCheck<'a> {
    fn new(plan: &'a ClientPlan) -> Self {
        EchoCheck {
            plan,
            // Lengths are checked against the plan before a frame is popped,
            // so the decoder's own limit never applies.
            decoder: FrameDecoder::new(u32::MAX as usize),
            verified: 0,
            bytes_received: 0,
            bytes_echoed: 0,
            last_received_at: Instant::now(),
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
        self.bytes_received += bytes.len() as u64;
        self.last_received_at = Instant::now();
    }

    /// Compares every whole echo buffered with the frame sent. `Err` holds
    /// the description of the first mismatch.
    fn verify_buffered(
        &mut self,
        window: &Window,
        verified_total: &AtomicUsize,
    ) -> Result<(), String> {
        let total = self.plan.frame_count();
        while self.verified < total {
            let frame = self.verified;
            let expected_len = self.plan.frame_lens[frame];
            // A wrong length is reported as soon as the prefix arrives: the
            // payload it announces may never come.
            let Some(declared) = self.decoder.declared_len() else {
                return Ok(());
            };
            if u64::from(declared) != expected_len as u64 {
                return Err(length_mismatch(self.plan, frame, declared));
            }
            let echoed = match self.decoder.pop() {
                Ok(Some(echoed)) => echoed,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            if let Some(mismatch) = describe_payload_mismatch(&self.plan.payload(frame), &echoed) {
                return Err(format!("{mismatch}{}", not_checked(total - frame - 1)));
            }
            self.verified += 1;
            self.bytes_echoed += (HEADER_LEN + expected_len) as u64;
            verified_total.fetch_add(1, Ordering::Relaxed);
            window.set_echoed(self.verified);
        }
        Ok(())
    }

    /// The client is done: passed if `failure` is `None`.
    fn finished(&self, failure: Option<FailureDetail>) -> Attempt {
        Attempt::Finished {
            verified: self.verified,
            bytes_echoed: self.bytes_echoed,
            failure,
        }
    }

    fn failed(&self, frame: Option<usize>, kind: FailureKind, message: String) -> Attempt {
        self.finished(Some(FailureDetail {
            client: self.plan.client,
            frame,
            kind,
            message,
        }))
    }

    /// The server sent nothing at all for `stall` with frames outstanding.
    fn stalled(&self, stall: Duration) -> Attempt {
        let total = self.plan.frame_count();
        let mut message = format!(
            "{} of {total} frames echoed, then the server stopped answering: nothing received for {}",
            self.verified,
            seconds(stall)
        );
        if !self.decoder.is_empty() {
            message += &format!(
                " ({} bytes of frame {}'s echo received)",
                self.decoder.buffered_len(),
                self.verified
            );
        }
        self.failed(None, FailureKind::Timeout, message)
    }

    fn timed_out(&self, timeout: Duration) -> Attempt {
        let total = self.plan.frame_count();
        let silence = self.last_received_at.elapsed();
        let mut message = format!(
            "{} of {total} frames echoed when the {} timeout expired",
            self.verified,
            seconds(timeout)
        );
        if !self.decoder.is_empty() {
            message += &format!(
                " ({} bytes of frame {}'s echo received)",
                self.decoder.buffered_len(),
                self.verified
            );
        }
        if self.bytes_received == 0 || silence >= STOPPED_ANSWERING_AFTER {
            message += &format!(
                "; the server stopped answering (nothing received for the last {:.1} s)",
                silence.as_secs_f64()
            );
        } else {
            message += "; the server was still answering, but too slowly";
        }
        self.failed(None, FailureKind::Timeout, message)
    }

    /// The server closed the connection (EOF) before every echo came back.
    fn closed(&self) -> Attempt {
        if self.decoder.is_empty() {
            return self.lost(
                FailureKind::Closed,
                "the server closed the connection".into(),
            );
        }
        let what = format!(
            "the server closed the connection in the middle of an echo ({} of {} bytes received)",
            self.decoder.buffered_len(),
            HEADER_LEN + self.plan.frame_lens[self.verified],
        );
        self.lost(FailureKind::Closed, what)
    }

    /// The connection is gone. Before any echo byte that is a refusal, to be
    /// retried; after, the rest of this client's frames fail.
    fn lost(&self, kind: FailureKind, what: String) -> Attempt {
        if self.bytes_received == 0 {
            return Attempt::Refused(Refusal::new(
                FailureKind::Refused,
                format!("{what} before any echo"),
            ));
        }
        let total = self.plan.frame_count();
        let message = format!(
            "{what} after {} of {total} frames were echoed; {} frames not echoed",
            self.verified,
            total - self.verified
        );
        self.failed(Some(self.verified), kind, message)
    }
}

/// Describes an echo whose length prefix differs from the frame sent, with
/// a guess at the usual framing bug behind it.
fn length_mismatch(plan: &ClientPlan, frame: usize, declared: u32) -> String {
    let expected = plan.frame_lens[frame];
    let declared_len = declared as usize;
    let header = declared
        .to_be_bytes()
        .map(|byte| format!("{byte:02x}"))
        .join(" ");
    let next_len = plan.frame_lens.get(frame + 1).copied();
    let guess = match next_len {
        Some(next)
            if declared_len == expected + next || declared_len == expected + HEADER_LEN + next =>
        {
            format!("; frames {frame} and {} look merged into one", frame + 1)
        }
        Some(next) if declared_len == next => {
            format!(
                "; frame {frame} looks dropped: that is frame {}'s length",
                frame + 1
            )
        }
        _ if declared_len < expected => "; the echo is shorter: was the frame split?".to_string(),
        _ => String::new(),
    };
    format!(
        "length mismatch: expected an echo of {expected} bytes, got a length prefix of \
         {declared} ({header}){guess}{}",
        not_checked(plan.frame_count() - frame - 1)
    )
}

/// The tail of a mismatch message: a mismatch leaves the stream out of
/// sync, so nothing after it can be checked.
fn not_checked(later_frames: usize) -> String {
    if later_frames == 0 {
        String::new()
    } else {
        format!("; {later_frames} later frames of this client not checked")
    }
}

/// Asks the kernel to acknowledge received data at once instead of up to
/// 40 ms later. A server without TCP_NODELAY that writes an echo in two
/// pieces (length, then payload) holds the second piece until the first is
/// acknowledged (Nagle's algorithm); with a delayed ACK, every such echo
/// would cost 40 ms and the run would measure the ACK timer, not the server.
/// Quick-ACK mode lapses after a while, so this is repeated after each read.
#[cfg(target_os = "linux")]
fn acknowledge_now(stream: &TcpStream) {
    // Only a speed-up: if it fails, the run is just slower.
    let _ = rustix::net::sockopt::set_tcp_quickack(stream, true);
}

#[cfg(not(target_os = "linux"))]
fn acknowledge_now(_stream: &TcpStream) {}

/// Errors that only mean "nothing happened within the socket timeout".
fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Classifies an error that ended a connection, and words it.
fn describe_connection_error(e: &io::Error, doing: &str) -> (FailureKind, String) {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => (
            FailureKind::Reset,
            format!("the server reset the connection ({e})"),
        ),
        ErrorKind::BrokenPipe => (
            FailureKind::Closed,
            format!("the server closed the connection ({e})"),
        ),
        _ => (FailureKind::Io, format!("{doing} failed ({e})")),
    }
}

/// What the reader and the writer of one connection tell each other.
#[derive(Default)]
struct Window {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Default)]
struct WindowState {
    /// Frames echoed and verified so far.
    echoed: usize,
    /// The reader is done; the writer should stop.
    stopped: bool,
    /// Why the writer gave up, for the reader to report.
    write_error: Option<io::Error>,
}

impl Window {
    fn lock(&self) -> MutexGuard<'_, WindowState> {
        // Neither side panics while holding the lock; if one did, the
        // counters are still meaningful.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `frames` frames have been echoed. False if the reader
    /// stopped or the deadline passed first.
    fn wait_for_echoes(&self, frames: usize, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            if state.echoed >= frames {
                return true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            state = match self.changed.wait_timeout(state, remaining) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn set_echoed(&self, frames: usize) {
        self.lock().echoed = frames;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    fn record_write_error(&self, e: io::Error) {
        self.lock().write_error = Some(e);
    }

    fn take_write_error(&self) -> Option<io::Error> {
        self.lock().write_error.take()
    }
}
