//! w01-l04 — When threads run out: a bounded pool.
//!
//! A thread per client (l03) lets any number of clients make any number of
//! threads. Here a fixed pool of `--workers N` threads serves the clients:
//! the accept loop queues each connection on a channel, an idle worker takes
//! it and serves it until it closes. At most N clients are served at once;
//! the others wait in the queue, connected but unanswered, until a worker
//! frees. Bounded resources, paid for in waiting.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use clap::Parser;

/// Bytes in a frame's length prefix.
const HEADER_LEN: usize = 4;

/// A blocking echo server of length-prefixed frames, served by a fixed pool
/// of worker threads.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 lets the kernel choose a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// The largest frame payload accepted, in bytes; a longer frame closes
    /// the connection.
    #[arg(long, default_value_t = 65536)]
    max_frame: usize,

    /// Worker threads: at most this many clients are served at once; the
    /// others wait in a queue.
    #[arg(long, default_value_t = 10)]
    workers: usize,
}

/// A connection waiting for a worker.
struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    /// When it was queued, to log how long it waited.
    queued_at: Instant,
}

fn main() -> ExitCode {
    let args = Args::parse();

    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    // Print the address the kernel really gave us: with `--port 0` only the
    // listener knows the port, and the checker reads it from this line.
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.workers == 0 {
        eprintln!("error: --workers must be at least 1");
        return ExitCode::FAILURE;
    }
    let queue = match start_workers(args.workers, args.max_frame) {
        Ok(queue) => queue,
        Err(e) => {
            eprintln!("error: cannot start {} worker threads: {e}", args.workers);
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {local}");

    accept_loop(&listener, &queue);
    ExitCode::SUCCESS
}

/// Starts `workers` threads, all taking jobs from one queue, and returns
/// the sending end of that queue.
fn start_workers(workers: usize, max_frame: usize) -> io::Result<Sender<Job>> {
    // BEGIN GAP start_workers
    // An unbounded channel is the waiting room: a client queued while every
    // worker is busy stays there until one frees, it is never dropped.
    let (sender, receiver) = mpsc::channel::<Job>();
    // One receiver shared by every worker: the mutex lets one take a job at
    // a time.
    let receiver = Arc::new(Mutex::new(receiver));
    for id in 1..=workers {
        let receiver = Arc::clone(&receiver);
        thread::Builder::new()
            .name(format!("worker {id}"))
            .spawn(move || worker_loop(id, &receiver, max_frame))?;
    }
    Ok(sender)
    // STUB
    // // TODO: make the queue with mpsc::channel::<Job>() (unbounded: a client
    // // queued while every worker is busy waits there, it is never dropped).
    // // Share the receiver: Arc::new(Mutex::new(receiver)). Start `workers`
    // // threads with thread::Builder (name them `worker {id}`; `?` on spawn),
    // // each running worker_loop(id, &receiver, max_frame) on its own
    // // Arc::clone. Return the sender.
    // todo!()
    // END GAP
}

/// One worker: take the next queued client, serve it until it leaves, and
/// go back to the queue, forever.
fn worker_loop(id: usize, queue: &Mutex<Receiver<Job>>, max_frame: usize) {
    // BEGIN GAP worker_loop
    loop {
        // The guard is a temporary dropped at the end of this statement: the
        // lock is held while waiting for a job (the other idle workers wait
        // on the lock instead), never while serving one. A poisoned lock
        // (another worker panicked holding it) still holds a good receiver.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = next else {
            // Every sender is gone: the server is shutting down.
            return;
        };
        eprintln!(
            "{}: worker {id} takes it after {:.2} s in the queue",
            job.peer,
            job.queued_at.elapsed().as_secs_f64()
        );
        handle_client(job.stream, job.peer, max_frame);
    }
    // STUB
    // // TODO: loop forever: take the next job with
    // // `queue.lock().unwrap_or_else(|e| e.into_inner()).recv()` in one
    // // statement, so the lock is released before serving. Err from recv()
    // // means every sender is gone: return. Log which worker took which peer
    // // and how long it waited (job.queued_at.elapsed()), then
    // // handle_client(job.stream, job.peer, max_frame).
    // todo!()
    // END GAP
}

/// Accepts clients forever and queues each one for the pool.
fn accept_loop(listener: &TcpListener, queue: &Sender<Job>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                // BEGIN GAP accept_loop
                // The accept loop never serves anyone itself: it hands the
                // connection over and goes straight back to accept(), so
                // clients keep being accepted (and queued) while every
                // worker is busy.
                let job = Job {
                    stream,
                    peer,
                    queued_at: Instant::now(),
                };
                if queue.send(job).is_err() {
                    // Only possible once every worker has ended.
                    eprintln!("{peer}: no worker left to serve it; stopping");
                    return;
                }
                // STUB
                // // TODO: never serve here: wrap the stream in a Job (peer,
                // // queued_at: Instant::now()) and send it on `queue`, then go
                // // straight back to accept(). send() fails only once every
                // // worker has ended: log it and return.
                // todo!()
                // END GAP
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

/// One client, on a worker: serve it, log how it ended. Nothing here may
/// panic: a panicking worker is gone for good and the pool shrinks by one.
fn handle_client(mut stream: TcpStream, peer: SocketAddr, max_frame: usize) {
    eprintln!("{peer}: connected");
    // An error ends this client only: an oversize frame (InvalidData), a
    // client gone mid-frame (UnexpectedEof), a reset.
    match serve_client(&mut stream, max_frame) {
        Ok(frames) => eprintln!("{peer}: closed after {frames} frames"),
        Err(e) => eprintln!("{peer}: {e}; closing the connection"),
    }
    // Returning drops `stream`, which closes the socket; the worker is free.
}

/// Echoes frames until the client closes its side between two frames.
/// Returns the number of frames echoed.
fn serve_client(stream: &mut TcpStream, max_frame: usize) -> io::Result<u64> {
    let mut frames = 0;
    while let Some(payload) = read_frame(stream, max_frame)? {
        write_frame(stream, &payload)?;
        frames += 1;
    }
    Ok(frames)
}

/// Reads one whole frame from a blocking stream, however its bytes are
/// split across reads.
///
/// Returns:
/// - `Ok(Some(payload))`: a complete frame; the payload may be empty.
/// - `Ok(None)`: the client closed its side before the first byte of a
///   frame. That is how a conversation ends; it is not an error.
/// - `Err` of kind `UnexpectedEof`: the client closed in the middle of a
///   frame (inside the length prefix or the payload).
/// - `Err` of kind `InvalidData`: the length prefix is over `max_frame`.
///   The payload is not read: the stream is out of step and must be closed.
/// - any other `Err` from the stream (a reset, say).
fn read_frame(stream: &mut impl Read, max_frame: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    // read() returns whatever has arrived, maybe a single byte: loop until
    // the prefix is whole. A plain read_exact would do it too, but could not
    // tell a clean end (no byte yet) from an end inside the prefix.
    while filled < HEADER_LEN {
        match stream.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a length prefix ({filled} of {HEADER_LEN} bytes)"
                    ),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    // Check the length before allocating or reading anything: a hostile
    // prefix could ask for 4 GiB.
    if len > max_frame {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds --max-frame {max_frame}"),
        ));
    }
    // read_exact loops over short reads itself (and retries Interrupted).
    // For L = 0 it reads nothing and returns at once: an empty frame.
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Writes `payload` as one frame: its 4-byte big-endian length, then the
/// bytes, with a single `write_all` (one buffer, so small frames leave in
/// one segment instead of two).
fn write_frame(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidInput,
            "a frame carries at most u32::MAX bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A reader handing out at most `chunk` bytes per read, as a socket may.
    struct Trickle {
        bytes: Vec<u8>,
        chunk: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            Ok(n)
        }
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            write_frame(&mut out, payload).unwrap();
        }
        out
    }

    #[test]
    fn write_frame_prefixes_the_big_endian_length() {
        assert_eq!(framed(&[b"abc"]), [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(framed(&[b""]), [0, 0, 0, 0]);
    }

    #[test]
    fn frames_split_one_byte_per_read_come_out_whole() {
        let mut r = Trickle {
            bytes: framed(&[b"hello", b"", b"world"]),
            chunk: 1,
        };
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"world");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn an_end_inside_a_frame_is_unexpected_eof() {
        let mut r = Cursor::new(vec![0, 0]);
        assert_eq!(
            read_frame(&mut r, 100).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
        let mut truncated = framed(&[b"truncated"]);
        truncated.truncate(7);
        let mut r = Cursor::new(truncated);
        assert_eq!(
            read_frame(&mut r, 100).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_frame_over_max_frame_is_invalid_data_and_max_frame_itself_is_fine() {
        let mut r = Cursor::new(framed(&[&[1u8; 11]]));
        assert_eq!(
            read_frame(&mut r, 10).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        let mut r = Cursor::new(framed(&[&[1u8; 10]]));
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap().len(), 10);
    }
}
