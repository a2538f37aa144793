//! w02-l15 — Your own stress client.
//!
//! A skeleton: the command line, the threads, the payloads and the last
//! line are written. Write `run_client`: connect (retrying with backoff
//! while the server refuses), send each frame, verify each echo byte for
//! byte, and print a line naming client and frame for every failure.

#[allow(unused_imports)]
use std::io::{self, ErrorKind, Read, Write};
#[allow(unused_imports)]
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

/// One client: sends `frames` frames (`payload(seed, client, f)` for f in
/// 0..frames, each `encode`d, one echo awaited at a time) and checks each
/// echo. Returns how many frames failed.
fn run_client(address: &str, client: u64, frames: u64, seed: u64) -> u64 {
    // TODO: connect with `TcpStream::connect(address)`. On an error, or when
    // the server closes the connection before the first echo (a server at
    // capacity accepts and closes at once), wait FIRST_BACKOFF, doubling up
    // to MAX_BACKOFF, and try again from frame 0, at most CONNECT_ATTEMPTS
    // times. Set a read timeout (ECHO_TIMEOUT) so a silent server cannot
    // hang the client.
    //
    // TODO: for each frame: write it, read the 4-byte header and the payload
    // with `read_exact`, and compare with what was sent. On a difference,
    // print a line like
    //   client 3 frame 42: mismatch: 517 bytes, first difference at byte 516: expected 9c, got 63
    // and count a failure. If the connection breaks, or the length is wrong
    // (the stream is out of step), count this frame and every later one.
    let _ = (
        address,
        client,
        frames,
        seed,
        CONNECT_ATTEMPTS,
        FIRST_BACKOFF,
        MAX_BACKOFF,
        ECHO_TIMEOUT,
    );
    todo!()
}
