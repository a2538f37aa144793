//! Deliberately broken poll() echo servers for the robustness lessons
//! (w02-l12 backpressure, w02-l13 bad input, w02-l14 idle timeouts), one
//! bug per `--bug`. `--bug none` is a correct single-threaded poll() server
//! with `--max-pending`, logging and closing on bad input, and
//! `--idle-timeout`, so every fixture differs from a passing server by
//! exactly one thing.
//!
//! It speaks the course's command line, so the checker starts it with `--exec`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, Listen};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug.
    None,
    /// Reads every client whatever its pending output: buffers without bound.
    NoBackpressure,
    /// Pauses a client at --max-pending and never reads it again.
    NeverResume,
    /// Exits the whole process on an oversize frame.
    DieOnBadInput,
    /// Closes a bad client without a word on stderr.
    SilentClose,
    /// Ignores --idle-timeout: idle clients stay forever.
    NoIdleTimeout,
    /// Times clients from their connect, not their last activity.
    TimeoutFromConnect,
    /// With --idle-timeout, polls with timeout 0: spins while idle.
    BusyWaitDeadline,
    /// Takes a frame of exactly --max-frame bytes for an oversize one.
    MaxFrameRejected,
    /// Looks for a frame only with more than its 4 header bytes buffered:
    /// an empty frame sent alone is never echoed.
    HeaderAloneWaits,
    /// Not a server: a correct w02-l15 stress client.
    Client,
    /// A client that counts echoes without comparing them.
    ClientCountsOnly,
    /// A client that gives up on a refused connection.
    ClientNoRetry,
    /// A client whose mismatch line names the wrong frame (off by one).
    ClientWrongFrame,
    /// A correct client whose payloads are random bytes (no `client C
    /// frame F` text, some empty) and whose clients count from 1.
    ClientRandomPayloads,
    /// ClientRandomPayloads naming the wrong frame (off by one).
    ClientRandomWrongFrame,
    /// A client that stops at its first mismatch and counts every frame
    /// it did not send as failed, though the length was right.
    ClientStopsAtMismatch,
    /// A client whose mismatch line names another client than the one
    /// its payload (`client C frame F`) says it is.
    ClientWrongClient,
    /// A client that retries a refusal at once, without waiting.
    ClientNoBackoff,
    /// A client that retries refusals without end (no attempt budget).
    ClientRetriesForever,
    /// A client that gives up at once when the connect itself is refused
    /// (retries only closes before the first echo).
    ClientNoConnectRetry,
    /// A client that counts a connection lost mid-run as one failure.
    ClientLostCountsOne,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    /// The server's address; in the client modes, the one to connect to.
    #[command(flatten)]
    listen: Listen,
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,
    #[arg(long, default_value_t = 65536)]
    max_frame: u32,
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_pending: usize,
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Client modes only.
    #[arg(long, default_value_t = 1)]
    clients: u64,
    #[arg(long, default_value_t = 1)]
    frames: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    peer_closed: bool,
    ever_paused: bool,
    last_active: Instant,
}

impl Conn {
    fn wants_input(&self, args: &Args) -> bool {
        if self.peer_closed {
            return false;
        }
        match args.bug {
            Bug::NoBackpressure => true,
            Bug::NeverResume => !self.ever_paused && self.outbuf.len() < args.max_pending,
            _ => self.outbuf.len() < args.max_pending,
        }
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    if matches!(
        args.bug,
        Bug::Client
            | Bug::ClientCountsOnly
            | Bug::ClientNoRetry
            | Bug::ClientWrongFrame
            | Bug::ClientRandomPayloads
            | Bug::ClientRandomWrongFrame
            | Bug::ClientStopsAtMismatch
            | Bug::ClientWrongClient
            | Bug::ClientNoBackoff
            | Bug::ClientRetriesForever
            | Bug::ClientNoConnectRetry
            | Bug::ClientLostCountsOne
    ) {
        std::process::exit(client_main(&args));
    }
    let listener = args.listen.bind()?;
    fixture::announce(&listener)?;
    listener.set_nonblocking(true)?;
    let idle = args.idle_timeout.map(Duration::from_secs);
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for c in &conns {
            let mut ev = PollFlags::empty();
            if c.wants_input(&args) {
                ev |= PollFlags::POLLIN;
            }
            if !c.outbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), ev));
        }
        let timeout = match (idle, args.bug) {
            (Some(_), Bug::NoIdleTimeout) | (None, _) => PollTimeout::NONE,
            (Some(_), Bug::BusyWaitDeadline) => PollTimeout::ZERO,
            (Some(limit), _) => match conns.iter().map(|c| c.last_active + limit).min() {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::NONE)
                }
            },
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        for i in (0..conns.len()).rev() {
            let events = ready[i + 1];
            let result = if events.is_empty() {
                Ok(false)
            } else {
                serve(&mut conns[i], events, &args)
            };
            match result {
                Ok(false) => {}
                Ok(true) => {
                    conns.swap_remove(i);
                }
                Err(e) => {
                    let conn = conns.swap_remove(i);
                    if e.kind() == ErrorKind::InvalidData {
                        if args.bug == Bug::DieOnBadInput {
                            std::process::exit(3);
                        }
                        if args.bug == Bug::SilentClose {
                            continue;
                        }
                    }
                    eprintln!("{}: {e}; closing", conn.peer);
                }
            }
        }
        if let (Some(limit), false) = (idle, args.bug == Bug::NoIdleTimeout) {
            let now = Instant::now();
            conns.retain(|c| {
                let keep = now < c.last_active + limit;
                if !keep {
                    eprintln!("{}: idle for {} s; closing", c.peer, limit.as_secs());
                }
                keep
            });
        }
        if ready[0].contains(PollFlags::POLLIN) {
            while let Ok((stream, peer)) = listener.accept() {
                if conns.len() >= args.max_clients {
                    continue;
                }
                let _ = stream.set_nonblocking(true);
                conns.push(Conn {
                    stream,
                    peer,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    peer_closed: false,
                    ever_paused: false,
                    last_active: Instant::now(),
                });
            }
        }
    }
}

/// Ok(true): done, close quietly. Err: close (InvalidData = bad input).
fn serve(conn: &mut Conn, ready: PollFlags, args: &Args) -> io::Result<bool> {
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    if ready.intersects(readable) && conn.wants_input(args) {
        let mut chunk = [0u8; 65536];
        match conn.stream.read(&mut chunk) {
            Ok(0) => conn.peer_closed = true,
            Ok(n) => {
                conn.inbuf.extend_from_slice(&chunk[..n]);
                if args.bug != Bug::TimeoutFromConnect {
                    conn.last_active = Instant::now();
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let least = if args.bug == Bug::HeaderAloneWaits {
            5
        } else {
            4
        };
        while conn.inbuf.len() >= least {
            let len =
                u32::from_be_bytes([conn.inbuf[0], conn.inbuf[1], conn.inbuf[2], conn.inbuf[3]]);
            if len > args.max_frame || (args.bug == Bug::MaxFrameRejected && len == args.max_frame)
            {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "frame of {len} bytes is larger than --max-frame {}",
                        args.max_frame
                    ),
                ));
            }
            let total = 4 + len as usize;
            if conn.inbuf.len() < total {
                break;
            }
            conn.outbuf.extend(conn.inbuf.drain(..total));
        }
    }
    let mut written = 0;
    let mut failed = None;
    while written < conn.outbuf.len() {
        match conn.stream.write(&conn.outbuf[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    conn.outbuf.drain(..written);
    if let Some(e) = failed {
        return Err(e);
    }
    if conn.outbuf.len() >= args.max_pending {
        conn.ever_paused = true;
    }
    Ok(conn.peer_closed && conn.outbuf.is_empty())
}

/// The w02-l15 client modes: `clients` threads, `frames` frames each.
fn client_main(args: &Args) -> i32 {
    let address = format!("{}:{}", args.listen.host, args.listen.port);
    let handles: Vec<_> = (0..args.clients)
        .map(|c| {
            let (address, frames, seed, bug) = (address.clone(), args.frames, args.seed, args.bug);
            std::thread::spawn(move || one_client(&address, c, frames, seed, bug))
        })
        .collect();
    let failures: u64 = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(args.frames))
        .sum();
    println!(
        "{} clients, {} frames, {failures} failures",
        args.clients,
        args.clients * args.frames
    );
    i32::from(failures != 0)
}

fn one_client(address: &str, c: u64, frames: u64, seed: u64, bug: Bug) -> u64 {
    let attempts = match bug {
        Bug::ClientNoRetry => 1,
        Bug::ClientRetriesForever => u32::MAX,
        _ => 8,
    };
    let mut failures = 0;
    let mut attempt = 0;
    'connect: loop {
        attempt += 1;
        if attempt > attempts {
            println!("client {c}: gave up connecting");
            return frames;
        }
        if attempt > 1 && bug != Bug::ClientNoBackoff {
            // 50 ms, doubling, at most 1 s.
            std::thread::sleep(Duration::from_millis(
                (50u64 << (attempt - 2).min(5)).min(1000),
            ));
        }
        let Ok(mut stream) = TcpStream::connect(address) else {
            if bug == Bug::ClientNoConnectRetry {
                println!("client {c}: connect refused, giving up");
                return frames;
            }
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let random = matches!(bug, Bug::ClientRandomPayloads | Bug::ClientRandomWrongFrame);
        for f in 0..frames {
            let payload = if random {
                random_payload(seed, c, f)
            } else {
                let mut payload = format!("client {c} frame {f} ").into_bytes();
                payload.extend((0..((seed + c + f) % 200)).map(|i| (i * 7 + seed) as u8));
                payload
            };
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let mut echo = vec![0u8; frame.len()];
            let ok = stream.write_all(&frame).is_ok() && stream.read_exact(&mut echo).is_ok();
            if !ok {
                if f == 0 {
                    continue 'connect;
                }
                println!("client {c} frame {f}: connection lost");
                if bug == Bug::ClientLostCountsOne {
                    return failures + 1;
                }
                return failures + frames - f;
            }
            if bug != Bug::ClientCountsOnly && echo != frame {
                let named = if matches!(bug, Bug::ClientWrongFrame | Bug::ClientRandomWrongFrame) {
                    f + 1
                } else {
                    f
                };
                if random {
                    let at = frame
                        .iter()
                        .zip(&echo)
                        .position(|(s, g)| s != g)
                        .unwrap_or(0);
                    println!(
                        "client {} frame {named}: mismatch at byte {at}: expected [{:02x}] got [{:02x}]",
                        c + 1,
                        frame[at],
                        echo[at]
                    );
                } else {
                    // Its neighbour: another client of the same run.
                    let client = if bug == Bug::ClientWrongClient {
                        c ^ 1
                    } else {
                        c
                    };
                    println!(
                        "client {client} frame {named}: mismatch: expected {} bytes, got different bytes",
                        frame.len()
                    );
                }
                failures += 1;
                if bug == Bug::ClientStopsAtMismatch {
                    return failures + frames - f - 1;
                }
            }
        }
        return failures;
    }
}

/// Seeded random payload bytes, 0 to 2,040 of them: no text at all.
fn random_payload(seed: u64, c: u64, f: u64) -> Vec<u8> {
    let mut state = seed ^ (c << 32) ^ f.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u8
    };
    let len = next() as usize * 8;
    (0..len).map(|_| next()).collect()
}
