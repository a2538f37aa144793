//! Deliberately broken *blocking* echo servers, for the w01 lessons' checks
//! (l02 frames, l03 thread per connection, l04 bounded pool): one `--bug`
//! per thing the checker must catch, each differing from a correct server
//! by that one thing.
//!
//! `--bug none` is correct: framed echo, `--max-frame` honoured (an
//! oversize frame is logged and closes that connection), a thread per
//! connection, or a pool of exactly `--workers N` threads when the flag is
//! given (queued clients wait in a channel until a worker frees).
//!
//! It speaks the course's command line (`--port`, `--host`, `--max-frame`,
//! `--workers`, and ignores `--max-clients`), so the checker starts it with
//! `--exec`; `--tag` is ignored and lets a test find its own processes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use epoll_course::fixture::{self, Listen};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bug {
    /// No bug (see the module doc).
    None,
    /// l03: correct frames, but one client at a time (the l02 server).
    OneAtATime,
    /// l02: one read() for the length prefix and one for the payload, as if
    /// a read returned a whole frame.
    OneReadPerFrame,
    /// l02: an empty frame (L = 0) is taken for the end of the connection.
    EmptyFrameCloses,
    /// l02: no `--max-frame` check: an oversize frame is read and echoed.
    OversizeEchoed,
    /// l02: an oversize frame is logged, then the whole server exits.
    OversizeExits,
    /// l02: an oversize frame closes the connection, but nothing is logged.
    OversizeSilent,
    /// l02: the limit taken as exclusive: a frame of exactly `--max-frame`
    /// bytes is refused like an oversize one.
    LimitExclusive,
    /// l02: echoes written with the length prefix little-endian (the
    /// machine's byte order on x86) instead of big-endian.
    PrefixLittleEndian,
    /// l03: every client served from one thread with non-blocking sockets
    /// (concurrent, but not a thread per connection).
    OneThreadMultiplexed,
    /// l04: `--workers` ignored: a thread per connection, unbounded.
    IgnoresWorkers,
    /// l04: a pool with no queue: a client arriving while every worker is
    /// busy is closed at once (lost).
    DropsQueued,
    /// l04: a pool (10 workers unless `--workers`) whose workers keep the
    /// queue's lock while serving (`while let Ok(c) = q.lock()..recv()`
    /// keeps the guard for the loop's body): one client served at a time.
    LockHeldWhileServing,
    /// l04: a pool (10 workers unless `--workers`) with no queue whose
    /// workers take half a second to start: the clients that arrive first,
    /// with no worker ready, are closed at once.
    DropsBeforeWorkersStart,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    bug: Bug,
    #[command(flatten)]
    listen: Listen,
    #[arg(long, default_value_t = 65536)]
    max_frame: usize,
    /// A pool of this many workers instead of a thread per connection.
    #[arg(long)]
    workers: Option<usize>,
    /// Accepted and ignored.
    #[arg(long)]
    max_clients: Option<usize>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = args.listen.bind()?;
    fixture::announce(&listener)?;
    let (bug, max_frame) = (args.bug, args.max_frame);
    match (bug, args.workers) {
        (Bug::OneAtATime, _) => {
            for stream in listener.incoming().flatten() {
                handle(stream, bug, max_frame);
            }
        }
        (Bug::OneThreadMultiplexed, _) => multiplexed(listener, max_frame)?,
        (Bug::LockHeldWhileServing | Bug::DropsBeforeWorkersStart, workers) => {
            pool(listener, workers.unwrap_or(10), bug, max_frame)
        }
        (Bug::IgnoresWorkers, _) | (_, None) => {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || handle(stream, bug, max_frame));
            }
        }
        (_, Some(workers)) => pool(listener, workers, bug, max_frame),
    }
    Ok(())
}

/// A pool of `workers` threads taking clients from a channel. Correct: an
/// unbounded channel (queued clients wait). `DropsQueued`: a rendezvous
/// channel and `try_send`, so a client nobody is waiting for is dropped.
fn pool(listener: TcpListener, workers: usize, bug: Bug, max_frame: usize) {
    let (queue_tx, queue_rx) = mpsc::channel::<TcpStream>();
    let (direct_tx, direct_rx): (SyncSender<TcpStream>, Receiver<TcpStream>) =
        mpsc::sync_channel(0);
    // Both kinds of channel hand out the same `Receiver` type.
    let drops = matches!(bug, Bug::DropsQueued | Bug::DropsBeforeWorkersStart);
    let receiver = if drops { direct_rx } else { queue_rx };
    let queue = Arc::new(Mutex::new(receiver));
    for _ in 0..workers {
        let queue = queue.clone();
        if bug == Bug::LockHeldWhileServing {
            std::thread::spawn(move || {
                while let Ok(stream) = queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    handle(stream, bug, max_frame);
                }
            });
            continue;
        }
        std::thread::spawn(move || {
            if bug == Bug::DropsBeforeWorkersStart {
                std::thread::sleep(Duration::from_millis(500));
            }
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                match next {
                    Ok(stream) => handle(stream, bug, max_frame),
                    Err(_) => return,
                }
            }
        });
    }
    for stream in listener.incoming().flatten() {
        if drops {
            if let Err(TrySendError::Full(stream)) = direct_tx.try_send(stream) {
                drop(stream);
            }
        } else if queue_tx.send(stream).is_err() {
            return;
        }
    }
}

/// Serves one client until it closes; logs how it ended when that matters.
fn handle(mut stream: TcpStream, bug: Bug, max_frame: usize) {
    match serve(&mut stream, bug, max_frame) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::InvalidData => match bug {
            Bug::OversizeExits => {
                eprintln!("{err}; exiting");
                std::process::exit(1);
            }
            Bug::OversizeSilent => {}
            _ => eprintln!("{err}; closing the connection"),
        },
        Err(err) => eprintln!("client error: {err}"),
    }
}

fn serve(stream: &mut TcpStream, bug: Bug, max_frame: usize) -> io::Result<()> {
    loop {
        let frame = match bug {
            Bug::OneReadPerFrame => read_frame_one_read(stream)?,
            _ => read_frame(stream, bug, max_frame)?,
        };
        let Some(payload) = frame else { return Ok(()) };
        let len = payload.len() as u32;
        let mut out = if bug == Bug::PrefixLittleEndian {
            len.to_le_bytes().to_vec()
        } else {
            len.to_be_bytes().to_vec()
        };
        out.extend_from_slice(&payload);
        stream.write_all(&out)?;
    }
}

/// A correct blocking read of one frame (with the bug's one difference).
fn read_frame(stream: &mut TcpStream, bug: Bug, max_frame: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        match stream.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 && bug == Bug::EmptyFrameCloses {
        return Ok(None);
    }
    let refused = len > max_frame || (bug == Bug::LimitExclusive && len == max_frame);
    if refused && bug != Bug::OversizeEchoed {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds --max-frame {max_frame}"),
        ));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// The classic bug: one read() is taken for one whole prefix, one more for
/// the whole payload.
fn read_frame_one_read(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    if stream.read(&mut header)? == 0 {
        return Ok(None);
    }
    let len = (u32::from_be_bytes(header) as usize).min(1 << 20);
    let mut payload = vec![0u8; len];
    let n = if len == 0 {
        0
    } else {
        stream.read(&mut payload)?
    };
    payload.truncate(n);
    Ok(Some(payload))
}

/// One thread for everyone: non-blocking sockets visited in turn.
fn multiplexed(listener: TcpListener, max_frame: usize) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut clients: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let mut busy = false;
        while let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(true)?;
            clients.push((stream, Vec::new()));
            busy = true;
        }
        clients.retain_mut(|(stream, pending)| loop {
            match stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    busy = true;
                    pending.extend_from_slice(&chunk[..n]);
                    while pending.len() >= 4 {
                        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
                        if len > max_frame {
                            eprintln!("frame of {len} bytes exceeds --max-frame {max_frame}; closing the connection");
                            return false;
                        }
                        if pending.len() < 4 + len {
                            break;
                        }
                        let frame: Vec<u8> = pending.drain(..4 + len).collect();
                        let _ = stream.set_nonblocking(false);
                        let sent = stream.write_all(&frame);
                        let _ = stream.set_nonblocking(true);
                        if sent.is_err() {
                            return false;
                        }
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        });
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
