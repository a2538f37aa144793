//! w02-l15 — Your own stress client.
//!
// BEGIN SOLUTION
//! Opens `--clients` connections at once (one thread each), sends
//! `--frames` frames on each, one at a time, and checks every echo byte for
//! byte. Each payload says whose it is (`client C frame F`, then seeded
//! filler), so a wrong echo can be named precisely. Connections refused or
//! closed before their first echo are retried with exponential backoff.
//! Last line: `C clients, C*F frames, N failures`; exit 0 only when N is 0.
// STUB
// //! A skeleton: the command line, the threads, the payloads and the last
// //! line are written. Write `run_client`: connect (retrying with backoff
// //! while the server refuses), send each frame, verify each echo byte for
// //! byte, and print a line naming client and frame for every failure.
// END SOLUTION

// BEGIN SOLUTION
// STUB
// #[allow(unused_imports)]
// END SOLUTION
use std::io::{self, ErrorKind, Read, Write};
// BEGIN SOLUTION
// STUB
// #[allow(unused_imports)]
// END SOLUTION
use std::net::TcpStream;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;

/// A stress client for the course's length-prefixed echo protocol.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server port.
    #[arg(long)]
    port: u16,

    /// Connections, all open at once, one thread each.
    #[arg(long, default_value_t = 50)]
    clients: u64,

    /// Frames each client sends, each echo awaited before the next.
    #[arg(long, default_value_t = 100)]
    frames: u64,

    /// Seed for the payloads' filler bytes: the same seed sends the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Connection attempts per client before it gives up.
const CONNECT_ATTEMPTS: u32 = 8;
/// The first retry's pause; it doubles after each refusal, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one echo may take before it counts as lost.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most filler bytes after a payload's `client C frame F` prefix.
const MAX_FILLER: u64 = 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    let address = format!("{}:{}", args.host, args.port);

    let handles: Vec<_> = (0..args.clients)
        .map(|client| {
            let address = address.clone();
            let (frames, seed) = (args.frames, args.seed);
            thread::spawn(move || run_client(&address, client, frames, seed))
        })
        .collect();

    let mut failures = 0;
    for (client, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(failed) => failures += failed,
            // A panic is a bug in this program: count every frame as failed.
            Err(_) => {
                println!("client {client}: thread panicked");
                failures += args.frames;
            }
        }
    }
    println!(
        "{} clients, {} frames, {failures} failures",
        args.clients,
        args.clients * args.frames
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// splitmix64: a tiny, good-enough generator (std has none), so the same
/// seed always yields the same payloads.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The payload of `client`'s frame `frame`: the text `client C frame F`,
/// then 0..=MAX_FILLER seeded bytes. Readable in a packet capture, and any
/// wrong echo says whose frame it was.
fn payload(seed: u64, client: u64, frame: u64) -> Vec<u8> {
    let mut state = seed ^ client.wrapping_mul(0x1000_0000_01B3) ^ frame.rotate_left(32);
    let mut bytes = format!("client {client} frame {frame}").into_bytes();
    let filler = splitmix64(&mut state) % (MAX_FILLER + 1);
    bytes.extend((0..filler).map(|_| splitmix64(&mut state) as u8));
    bytes
}

/// The 4-byte big-endian length, then the payload.
fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

// BEGIN SOLUTION
/// How one frame's round trip ended.
enum Echo {
    /// The exact frame came back.
    Match,
    /// A whole echo came back, different; the stream is still in step
    /// only if the length was right.
    Mismatch { in_step: bool, detail: String },
    /// The server closed the connection before echoing.
    Closed,
    /// Any other error (reset, timeout...).
    Failed(io::Error),
    // STUB
    // /// One client: sends `frames` frames (`payload(seed, client, f)` for f in
    // /// 0..frames, each `encode`d, one echo awaited at a time) and checks each
    // /// echo. Returns how many frames failed.
    // fn run_client(address: &str, client: u64, frames: u64, seed: u64) -> u64 {
    //     // TODO: connect with `TcpStream::connect(address)`. On an error, or when
    //     // the server closes the connection before the first echo (a server at
    //     // capacity accepts and closes at once), wait FIRST_BACKOFF, doubling up
    //     // to MAX_BACKOFF, and try again from frame 0, at most CONNECT_ATTEMPTS
    //     // times. Set a read timeout (ECHO_TIMEOUT) so a silent server cannot
    //     // hang the client.
    //     //
    //     // TODO: for each frame: write it, read the 4-byte header and the payload
    //     // with `read_exact`, and compare with what was sent. On a difference,
    //     // print a line like
    //     //   client 3 frame 42: mismatch: 517 bytes, first difference at byte 516: expected 9c, got 63
    //     // and count a failure. If the connection breaks, or the length is wrong
    //     // (the stream is out of step), count this frame and every later one.
    //     let _ = (
    //         address,
    //         client,
    //         frames,
    //         seed,
    //         CONNECT_ATTEMPTS,
    //         FIRST_BACKOFF,
    //         MAX_BACKOFF,
    //         ECHO_TIMEOUT,
    //     );
    //     todo!()
    // END SOLUTION
}

// BEGIN SOLUTION
/// Sends one frame and reads its echo.
fn round_trip(stream: &mut TcpStream, sent: &[u8]) -> Echo {
    if let Err(e) = stream.write_all(&encode(sent)) {
        return match e.kind() {
            // Reset or closed by the server: the same as a refusal if it
            // happens before the first echo.
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Echo::Closed,
            _ => Echo::Failed(e),
        };
    }
    let mut header = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut header) {
        return match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => Echo::Closed,
            _ => Echo::Failed(e),
        };
    }
    let len = u32::from_be_bytes(header) as usize;
    if len != sent.len() {
        return Echo::Mismatch {
            in_step: false,
            detail: format!(
                "expected a {}-byte frame, got a header announcing {len} bytes",
                sent.len()
            ),
        };
    }
    let mut got = vec![0u8; len];
    if let Err(e) = stream.read_exact(&mut got) {
        return Echo::Failed(e);
    }
    match got.iter().zip(sent).position(|(g, s)| g != s) {
        None => Echo::Match,
        Some(at) => Echo::Mismatch {
            in_step: true,
            detail: format!(
                "{len} bytes, first difference at byte {at}: expected {:02x}, got {:02x}",
                sent[at], got[at]
            ),
        },
    }
}

/// Connects, retrying with exponential backoff while the server refuses.
fn connect_with_retry(address: &str, client: u64, attempt: &mut u32) -> io::Result<TcpStream> {
    loop {
        *attempt += 1;
        match TcpStream::connect(address) {
            Ok(stream) => {
                stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if *attempt < CONNECT_ATTEMPTS => {
                backoff(client, *attempt, &e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps before retry number `attempt`: 50 ms, 100 ms, 200 ms... up to 1 s.
fn backoff(client: u64, attempt: u32, why: &str) {
    let pause = FIRST_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(10))
        .min(MAX_BACKOFF);
    eprintln!(
        "client {client}: {why}; retrying in {} ms",
        pause.as_millis()
    );
    thread::sleep(pause);
}

/// One client: sends `frames` frames and checks each echo. Returns how many
/// frames failed; prints a line for each.
fn run_client(address: &str, client: u64, frames: u64, seed: u64) -> u64 {
    let mut attempt = 0;
    // A connection refused, or accepted and closed before its first echo
    // (a server at capacity), is retried from frame 0.
    let (mut stream, first) = loop {
        let mut stream = match connect_with_retry(address, client, &mut attempt) {
            Ok(stream) => stream,
            Err(e) => {
                println!("client {client}: cannot connect after {attempt} attempts: {e}");
                return frames;
            }
        };
        if frames == 0 {
            return 0;
        }
        let sent = payload(seed, client, 0);
        match round_trip(&mut stream, &sent) {
            Echo::Closed if attempt < CONNECT_ATTEMPTS => {
                backoff(client, attempt, "closed before the first echo (refused)");
            }
            Echo::Closed => {
                println!("client {client}: refused {attempt} times, giving up");
                return frames;
            }
            first => break (stream, judge(client, 0, first)),
        }
    };
    let mut failures = match first {
        Judged::Ok => 0,
        Judged::Failed => 1,
        Judged::Lost => return frames,
    };
    for f in 1..frames {
        let sent = payload(seed, client, f);
        match judge(client, f, round_trip(&mut stream, &sent)) {
            Judged::Ok => {}
            Judged::Failed => failures += 1,
            // The stream cannot be trusted any more: this frame and every
            // later one are failures.
            Judged::Lost => return failures + (frames - f),
        }
    }
    failures
}

/// What one echo means for the count.
enum Judged {
    Ok,
    /// This frame failed; the connection is still usable.
    Failed,
    /// This frame failed and the connection is unusable.
    Lost,
}

/// Prints the line for a failed echo, naming client and frame.
fn judge(client: u64, frame: u64, echo: Echo) -> Judged {
    match echo {
        Echo::Match => Judged::Ok,
        Echo::Mismatch { in_step, detail } => {
            println!("client {client} frame {frame}: mismatch: {detail}");
            if in_step {
                Judged::Failed
            } else {
                Judged::Lost
            }
        }
        Echo::Closed => {
            println!(
                "client {client} frame {frame}: the server closed the connection before echoing"
            );
            Judged::Lost
        }
        Echo::Failed(e) => {
            println!("client {client} frame {frame}: {e}");
            Judged::Lost
        }
    }
}

// END SOLUTION
