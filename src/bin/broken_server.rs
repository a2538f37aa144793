//! Deliberately broken echo servers, one per `--bug`, for the checker's own
//! tests: each check must be shown to fail on a server with exactly its bug.
//! `--bug none` is a plain correct server (thread per connection, framed),
//! so every fixture differs from a passing server by one thing.
//!
//! It speaks the course's command line (`--port`, `--host`, and accepts the
//! lessons' other flags), so the checker can start it with `--exec`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, park_forever, LessonFlags, Listen};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug: a correct framed echo server.
    None,
    /// Never binds nor prints a listening line; just sleeps.
    NeverListen,
    /// Exits after serving its first client (w01-l01's classic).
    ExitAfterFirstClient,
    /// Serves a while, then exits with a panic mid-run.
    CrashMidRun,
    /// Accepts and reads but never echoes.
    Hang,
    /// When two whole frames are buffered, echoes them as one merged frame.
    MergeFrames,
    /// Flips one payload byte in every 100th frame it echoes.
    CorruptByte,
    /// The client's thread panics on an empty frame (`L = 0`): that client
    /// is dropped while the process lives on and serves the others.
    PanicOnEmptyFrame,
    /// Aborts the whole process when its first whole frame arrives: its
    /// client sees the connection end while the process is still dying.
    AbortOnFirstFrame,
    // Hostile servers: wrong as whole programs, not as echo servers.
    /// Serves correctly while printing endless lines to stdout and stderr.
    FloodOutput,
    /// Prints a `listening on` line for a port nothing listens on.
    WrongPortLine,
    /// Binds and listens but never calls accept.
    BindNoAccept,
    /// Accepts connections but never reads them.
    AcceptNoRead,
    /// Serves correctly but ignores SIGTERM (needs SIGKILL).
    IgnoreSigterm,
    /// Forks a child that serves on the listening socket; the parent waits.
    ForkKeepsPort,
    /// Forks a child that calls setsid() and serves; the parent exits.
    SetsidChild,
    /// Exits with status 0 at once, before listening.
    ExitAtOnce,
    /// Reads without echoing while allocating (and touching) memory
    /// without bound, so only the memory watchdog can end it early.
    EatMemory,
    /// Serves correctly while a second thread spins at 100% CPU.
    Spin,
    // w01-l01's mistakes: a byte echo serving one client at a time (the
    // lesson's server), each with one thing wrong.
    /// Takes `Ok(0)` for "nothing yet" and reads again: it spins on the
    /// closed connection and never accepts the next client.
    SpinOnEof,
    /// Writes back the whole buffer after each read, not the bytes read.
    EchoWholeBuffer,
    /// One `write` per read, its count ignored: a short write loses the
    /// rest of the buffer.
    WriteIgnoresCount,
    /// Unwraps the result of serving a client in the accept loop: the
    /// first client that resets its connection panics the server.
    PanicOnClientError,
}

impl Bug {
    /// The bugs of w01-l01's one-client-at-a-time byte echo.
    fn one_at_a_time(self) -> bool {
        matches!(
            self,
            Bug::SpinOnEof
                | Bug::EchoWholeBuffer
                | Bug::WriteIgnoresCount
                | Bug::PanicOnClientError
        )
    }
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

fn main() -> io::Result<()> {
    let args = Args::parse();
    if args.bug == Bug::NeverListen {
        park_forever();
    }
    if args.bug == Bug::ExitAtOnce {
        return Ok(());
    }
    let listener = args.listen.bind()?;
    if args.bug == Bug::WrongPortLine {
        let unused = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        println!("listening on {unused}");
        drop(listener);
        park_forever();
    }
    fixture::announce(&listener)?;
    start_side_effects(args.bug)?;
    if args.bug == Bug::BindNoAccept {
        park_forever();
    }
    if args.bug.one_at_a_time() {
        serve_one_at_a_time(&listener, args.bug);
    }
    let frames_served = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if args.bug == Bug::AcceptNoRead {
            held.push(stream);
            continue;
        }
        if args.bug == Bug::ExitAfterFirstClient {
            let _ = serve(stream, args.bug, &frames_served);
            return Ok(());
        }
        let counter = frames_served.clone();
        std::thread::spawn(move || {
            if let Err(err) = serve(stream, args.bug, &counter) {
                eprintln!("client error: {err}");
            }
        });
    }
    Ok(())
}

/// What the hostile bugs do beside serving: flood, spin, eat memory,
/// ignore SIGTERM, or hand the port to a forked child.
fn start_side_effects(bug: Bug) -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    match bug {
        Bug::FloodOutput => {
            std::thread::spawn(|| loop {
                println!("flooding stdout flooding stdout flooding stdout flooding stdout");
                eprintln!("flooding stderr flooding stderr flooding stderr flooding stderr");
            });
        }
        Bug::Spin => {
            std::thread::spawn(|| {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            });
        }
        Bug::EatMemory => {
            std::thread::spawn(|| {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is resident, not just reserved.
                    let mut block = vec![0u8; 128 * 1024 * 1024];
                    for page in block.iter_mut().step_by(4096) {
                        *page = 1;
                    }
                    hoard.push(block);
                }
            });
        }
        Bug::IgnoreSigterm => {
            // SAFETY: installs SIG_IGN, no handler code runs.
            unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.map_err(io::Error::from)?;
        }
        Bug::ForkKeepsPort | Bug::SetsidChild => {
            // SAFETY: no other thread exists yet; the child only continues
            // into the ordinary single-threaded serving loop.
            match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
                nix::unistd::ForkResult::Child => {
                    if bug == Bug::SetsidChild {
                        nix::unistd::setsid().map_err(io::Error::from)?;
                    }
                }
                nix::unistd::ForkResult::Parent { .. } => {
                    if bug == Bug::SetsidChild {
                        std::process::exit(0);
                    }
                    park_forever();
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// w01-l01's server: accepts one client, echoes its bytes until it closes,
/// then the next; with `bug`'s mistake.
fn serve_one_at_a_time(listener: &TcpListener, bug: Bug) -> ! {
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        let served = echo_bytes(&mut stream, bug);
        if bug == Bug::PanicOnClientError {
            served.expect("serving a client failed");
        } else if let Err(err) = served {
            eprintln!("client error: {err}");
        }
    }
}

/// Echoes one client's bytes until it closes (w01-l01's `echo_client`),
/// with `bug`'s mistake.
fn echo_bytes(stream: &mut TcpStream, bug: Bug) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) if bug == Bug::SpinOnEof => continue,
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        match bug {
            Bug::EchoWholeBuffer => stream.write_all(&buf)?,
            Bug::WriteIgnoresCount => {
                // The planted bug: the count a short write returns is dropped.
                #[allow(clippy::unused_io_amount)]
                stream.write(&buf[..n])?;
            }
            _ => stream.write_all(&buf[..n])?,
        }
    }
}

/// Echoes frames (or, for the raw bugs, bytes) until the client closes.
fn serve(mut stream: TcpStream, bug: Bug, frames_served: &AtomicUsize) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        if bug == Bug::Hang || bug == Bug::EatMemory {
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut frames = Vec::new();
        while let Some(total) = fixture::whole_frame(&pending) {
            frames.push(pending.drain(..total).collect::<Vec<u8>>());
        }
        if bug == Bug::MergeFrames && frames.len() >= 2 {
            let merged: Vec<u8> = frames.iter().flat_map(|f| f[4..].to_vec()).collect();
            let mut out = (merged.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&merged);
            frames = vec![out];
        }
        for mut frame in frames {
            let served = frames_served.fetch_add(1, Ordering::SeqCst) + 1;
            if bug == Bug::AbortOnFirstFrame {
                eprintln!("simulated crash on the first frame");
                std::process::abort();
            }
            if bug == Bug::CrashMidRun && served == 700 {
                // A panic would end only this thread; a crash ends the process.
                eprintln!("simulated crash after {served} frames");
                std::process::abort();
            }
            if bug == Bug::PanicOnEmptyFrame && frame.len() == 4 {
                panic!("an empty frame has no payload to echo");
            }
            if bug == Bug::CorruptByte && served.is_multiple_of(100) && frame.len() > 4 {
                frame[4] ^= 0xff;
            }
            stream.write_all(&frame)?;
        }
    }
}
