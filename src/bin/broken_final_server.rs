//! Deliberately broken servers for the w03-l19..l22 probes (partial writes,
//! C10K, `--stats`, graceful shutdown), one per `--bug`. `--bug none` is a
//! correct single-threaded edge-triggered epoll server that raises
//! RLIMIT_NOFILE, listens with a backlog of 4,096, prints the stats lines
//! with `--stats` and shuts down in order on SIGINT/SIGTERM (signalfd, out
//! of the epoll set once the shutdown begins): it reads what is waiting in
//! every socket, writes out pending echoes for at most 1.5 s, closes each
//! connection with FIN once its output is written, and counts as errors the
//! connections that failed and those given up on at the deadline. Every
//! other bug differs from it by one thing.
//!
//! Speaks the course's command line (`--port`, `--host`, `listening on`),
//! and accepts and ignores the lessons' other flags.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, LessonFlags, Listen};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug: EPOLLET, EPOLLOUT armed only while output is pending.
    None,
    /// Correct, mio's style: EPOLLIN|EPOLLOUT|EPOLLET registered once.
    EtOutOnce,
    /// Level-triggered with EPOLLOUT armed for good: spins while idle.
    EpolloutAlwaysArmed,
    /// Writes once per event and forgets what write() did not take.
    DropPartialWrite,
    /// Never raises RLIMIT_NOFILE: stuck at the soft limit it was given.
    #[value(name = "cap-1024")]
    Cap1024,
    /// Keeps std's listen backlog of 128.
    SmallBacklog,
    /// Registers the listener level-triggered (clients stay edge-triggered):
    /// out of file descriptors, the queued connections wake epoll_wait at
    /// once, forever.
    LevelTriggeredListener,
    /// Gives every connection its own 64 KiB read buffer, allocated and
    /// touched at accept and kept for the connection's life.
    BufferPerConnection,
    /// With --stats, prints well-formed lines with fixed numbers.
    FakeStats,
    /// Ignores --stats: prints no stats lines.
    NoStats,
    /// On SIGINT/SIGTERM: prints the first line and exits at once, without
    /// writing out pending echoes.
    ExitOnSignal,
    /// Shuts down in order but closes every socket with SO_LINGER 0 (RST).
    ResetOnClose,
    /// On the signal, writes out pending echoes and closes, but never reads
    /// what is still waiting in the sockets (unread input: a reset).
    ShutdownDropsUnreadInput,
    /// Waits for every pending echo to be written, however long it takes:
    /// a client that never reads holds the exit forever.
    NoGraceBound,
    /// Final stats always say 0 errors, even for the connections given up
    /// on at the grace deadline.
    ErrorsNotCounted,
    /// Leaves the signalfd in the (level-triggered) epoll set during the
    /// shutdown, unread: a second signal makes every wait return at once.
    SecondSignalSpins,
    /// Ends the loop with an error when epoll_wait says EINTR (as it does
    /// after SIGSTOP and SIGCONT, with no handler involved).
    EintrIsFatal,
    /// Never blocks SIGINT/SIGTERM: the signal kills it the default way.
    NoSignalHandling,
    /// Prints the shutdown lines to stderr instead of stdout.
    LinesOnStderr,
    /// Prints `Closing N connections...` after a first pass over them, N
    /// counting only those still open then.
    ClosingCountLate,
    /// Final stats leave out the frames echoed during the shutdown.
    RequestsMissTheShutdown,
    /// Counts every connection closed during the shutdown as an error,
    /// even one that got all its echoes.
    EveryCloseAnError,
    /// Waits for writable sockets during the shutdown with a zero timeout:
    /// a busy loop for as long as a client does not read.
    ShutdownPolls,
    /// Keeps every connection open until the whole shutdown is over, even
    /// those whose echoes are all written: their EOF waits for the slowest.
    CloseAtEnd,
    /// Gives up at once: one pass of reads and writes after the signal,
    /// then closes whatever still has output pending (counted as errors),
    /// without waiting for the clients to read it.
    GivesUpAtOnce,
    /// Does not count a connection that fails with an I/O error during the
    /// shutdown (a client's reset) as an error; only those given up on at
    /// the deadline.
    ShutdownFailuresNotCounted,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    lesson: LessonFlags,
}

const LISTENER: u64 = u64::MAX;
const SIGNALS: u64 = u64::MAX - 1;

/// Counted from start to exit, for the final stats line.
#[derive(Default)]
struct Totals {
    /// Frames echoed.
    requests: u64,
    /// Connections that failed with an I/O error, plus those given up on
    /// at the grace deadline with output unsent.
    errors: u64,
}

/// Reads what arrived, writes out every pending echo (for at most 1.5 s),
/// closes each connection once its output is written (with a reset for
/// `reset-on-close`), counts what failed or was given up on, prints the rest.
fn shut_down(epoll: &Epoll, conns: &mut HashMap<RawFd, Conn>, bug: Bug, totals: &mut Totals) {
    use std::time::{Duration, Instant};
    if bug != Bug::ClosingCountLate {
        say(bug, &format!("Closing {} connections...", conns.len()));
    }
    let deadline = match bug {
        Bug::NoGraceBound => None,
        Bug::GivesUpAtOnce => Some(Instant::now()),
        _ => Some(Instant::now() + Duration::from_millis(1500)),
    };
    let mut events = vec![EpollEvent::empty(); 1024];
    // close-at-end: finished connections wait here until the end.
    let mut finished = Vec::new();
    let mut printed_closing = false;
    loop {
        let fds: Vec<RawFd> = conns.keys().copied().collect();
        for fd in fds {
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let read_ok = bug == Bug::ShutdownDropsUnreadInput || read_in(conn);
            let mut echoed = 0;
            let alive = read_ok && echo_and_flush(conn, bug, &mut echoed);
            if bug != Bug::RequestsMissTheShutdown {
                totals.requests += echoed;
            }
            if alive && !conn.outbuf.is_empty() {
                continue;
            }
            let Some(conn) = conns.remove(&fd) else {
                continue;
            };
            let failed = !alive && bug != Bug::ShutdownFailuresNotCounted;
            if failed || bug == Bug::EveryCloseAnError {
                totals.errors += 1;
            }
            match bug {
                Bug::ResetOnClose => {
                    let linger = nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    let _ = nix::sys::socket::setsockopt(
                        &conn.stream,
                        nix::sys::socket::sockopt::Linger,
                        &linger,
                    );
                }
                // Not closed yet: closed with the rest at the very end.
                Bug::CloseAtEnd => finished.push(conn),
                _ => {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
            }
        }
        if bug == Bug::ClosingCountLate && !printed_closing {
            say(bug, &format!("Closing {} connections...", conns.len()));
            printed_closing = true;
        }
        if conns.is_empty() || deadline.is_some_and(|at| Instant::now() >= at) {
            break;
        }
        let wait_ms = if bug == Bug::ShutdownPolls { 0u16 } else { 10 };
        let _ = epoll.wait(&mut events, EpollTimeout::from(wait_ms));
    }
    // Given up on at the deadline, output still unsent: errors.
    totals.errors += conns.len() as u64;
    conns.clear();
    drop(finished);
    say(bug, "All connections closed.");
    let errors = if bug == Bug::ErrorsNotCounted {
        0
    } else {
        totals.errors
    };
    say(
        bug,
        &format!(
            "Final stats: {} requests served, {errors} errors",
            totals.requests
        ),
    );
}

/// A shutdown line: on stdout (on stderr for `lines-on-stderr`).
fn say(bug: Bug, line: &str) {
    if bug == Bug::LinesOnStderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

struct Conn {
    stream: TcpStream,
    /// `buffer-per-connection`: this connection's own read buffer.
    own_buffer: Vec<u8>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closed: bool,
    out_armed: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    if args.bug != Bug::Cap1024 {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let listener = args.listen.bind()?;
    if args.bug != Bug::SmallBacklog {
        // Linux lets listen() be called again to change the backlog.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4096)?)?;
    }
    listener.set_nonblocking(true)?;
    fixture::announce(&listener)?;
    let stats = args.lesson.stats && args.bug != Bug::NoStats;
    epoll_loop(&listener, args.bug, stats)
}

/// Prints the two stats lines (fixed numbers for `fake-stats`).
fn report(bug: Bug, active: usize, pending: usize, requests: u64, bytes: u64, secs: f64) {
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    let clock = format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60);
    if bug == Bug::FakeStats {
        println!("[{clock}] Connections: 10 active, 0 pending");
        println!("[{clock}] Requests: 1000/sec, Bytes: 1.0 MB/sec");
        return;
    }
    let rate = (requests as f64 / secs).round() as u64;
    let mb = bytes as f64 / secs / 1_000_000.0;
    println!("[{clock}] Connections: {active} active, {pending} pending");
    println!("[{clock}] Requests: {rate}/sec, Bytes: {mb:.1} MB/sec");
}

/// Reads until WouldBlock; false when the connection is broken.
fn read_in(conn: &mut Conn) -> bool {
    let mut chunk = [0u8; 16384];
    let buffer: &mut [u8] = if conn.own_buffer.is_empty() {
        &mut chunk
    } else {
        &mut conn.own_buffer
    };
    match fixture::read_until_blocked(&mut conn.stream, buffer, &mut conn.inbuf) {
        Ok(eof) => {
            conn.closed |= eof;
            true
        }
        Err(_) => false,
    }
}

/// Moves whole frames to `outbuf` and writes what the socket takes.
fn echo_and_flush(conn: &mut Conn, bug: Bug, requests: &mut u64) -> bool {
    *requests += fixture::move_whole_frames(&mut conn.inbuf, &mut conn.outbuf);
    if bug == Bug::DropPartialWrite {
        let ok =
            !matches!(conn.stream.write(&conn.outbuf), Err(e) if e.kind() != ErrorKind::WouldBlock);
        conn.outbuf.clear();
        return ok;
    }
    fixture::flush(&mut conn.stream, &mut conn.outbuf)
}

fn epoll_loop(listener: &TcpListener, bug: Bug, stats: bool) -> io::Result<()> {
    use std::time::{Duration, Instant};
    let second = Duration::from_secs(1);
    let mut next_report = stats.then(|| Instant::now() + second);
    let (mut requests, mut bytes, mut since) = (0u64, 0u64, Instant::now());
    // Frames echoed and connections failed over the whole run, for the
    // final stats line.
    let mut totals = Totals::default();
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.add(nix::sys::signal::Signal::SIGTERM);
    if bug != Bug::NoSignalHandling {
        mask.thread_block()?;
    }
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    let et = if bug == Bug::EpolloutAlwaysArmed {
        EpollFlags::empty()
    } else {
        EpollFlags::EPOLLET
    };
    // The interest a client is registered with at accept time.
    let first_interest = match bug {
        Bug::EtOutOnce | Bug::EpolloutAlwaysArmed => {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | et
        }
        _ => EpollFlags::EPOLLIN | et,
    };
    let modifies = !matches!(bug, Bug::EtOutOnce | Bug::EpolloutAlwaysArmed);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let listener_trigger = if bug == Bug::LevelTriggeredListener {
        EpollFlags::empty()
    } else {
        et
    };
    epoll.add(
        listener,
        EpollEvent::new(EpollFlags::EPOLLIN | listener_trigger, LISTENER),
    )?;
    epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 1024];
    loop {
        if let Some(at) = next_report {
            if Instant::now() >= at {
                let pending = conns.values().filter(|c| !c.outbuf.is_empty()).count();
                let secs = since.elapsed().as_secs_f64().max(0.001);
                report(bug, conns.len(), pending, requests, bytes, secs);
                totals.requests += requests;
                (requests, bytes, since) = (0, 0, Instant::now());
                next_report = Some((at + second).max(Instant::now()));
            }
        }
        let timeout = match next_report {
            None => EpollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                EpollTimeout::from(left.as_micros().div_ceil(1000).min(1000) as u16)
            }
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) if bug != Bug::EintrIsFatal => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..n] {
            if event.data() == SIGNALS {
                if let Ok(Some(info)) = signals.read_signal() {
                    let name = if info.ssi_signo == 2 {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    say(bug, &format!("Received {name}, shutting down..."));
                    if bug == Bug::ExitOnSignal {
                        std::process::exit(0);
                    }
                    if bug != Bug::SecondSignalSpins {
                        // A second signal stays pending and changes nothing.
                        epoll.delete(&signals)?;
                    }
                    totals.requests += requests;
                    shut_down(&epoll, &mut conns, bug, &mut totals);
                    return Ok(());
                }
                continue;
            }
            if event.data() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let fd = stream.as_raw_fd();
                            if epoll
                                .add(&stream, EpollEvent::new(first_interest, fd as u64))
                                .is_ok()
                            {
                                conns.insert(
                                    fd,
                                    Conn {
                                        stream,
                                        own_buffer: match bug {
                                            Bug::BufferPerConnection => vec![0xA5; 64 * 1024],
                                            _ => Vec::new(),
                                        },
                                        inbuf: Vec::new(),
                                        outbuf: Vec::new(),
                                        closed: false,
                                        out_armed: false,
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept failed: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let fd = event.data() as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let mut alive = true;
            let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
            if event.events().intersects(readable) && !conn.closed {
                let before = conn.inbuf.len();
                alive = read_in(conn);
                bytes += (conn.inbuf.len() - before) as u64;
            }
            alive = alive && echo_and_flush(conn, bug, &mut requests);
            // A broken connection is an error; one the client finished is not.
            let failed = !alive;
            if alive && conn.closed && conn.outbuf.is_empty() {
                alive = false;
            }
            if alive && modifies {
                let want_out = !conn.outbuf.is_empty();
                if want_out != conn.out_armed {
                    let mut flags = EpollFlags::EPOLLIN | et;
                    if want_out {
                        flags |= EpollFlags::EPOLLOUT;
                    }
                    alive = epoll
                        .modify(&conn.stream, &mut EpollEvent::new(flags, fd as u64))
                        .is_ok();
                    conn.out_armed = want_out;
                }
            }
            if !alive {
                totals.errors += u64::from(failed);
                conns.remove(&fd);
            }
        }
    }
}
