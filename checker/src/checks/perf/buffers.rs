//! Buffers given back: `connections` connections, one after another, each
//! sends a burst of `wire` bytes before reading any echo (so the server's
//! input and output buffers both have to hold a good part of it), reads
//! the whole echo, and then stays open and idle. After a pause, the
//! server's RSS is compared with what it was before the first burst.
//!
//! A server that gives back the memory of buffers once they are empty
//! reuses it for the next burst: RSS grows by about one burst, however many
//! connections took one. A server whose buffers keep the capacity a burst
//! grew keeps every connection's share for as long as it stays open.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use nix::unistd::Pid;

use crate::checks::frame_client::{connect, read_exactly, Ending};
use crate::procfs;

/// How long the client waits for its own burst to be taken before it
/// starts reading anyway (a server with backpressure stops reading while
/// its output for the connection is full).
const SEND_FIRST_FOR: Duration = Duration::from_secs(3);

/// What the probe saw.
pub enum Held {
    /// RSS before the first burst and after the pause, in KiB.
    Measured { before_kib: u64, after_kib: u64 },
    /// An echo went wrong: what happened.
    Broken(String),
}

/// Runs the bursts; `Err` only when /proc could not be read.
pub fn run(
    pid: Pid,
    addr: SocketAddr,
    connections: usize,
    wire: &[u8],
    pause: Duration,
    timeout: Duration,
) -> anyhow::Result<Held> {
    let before_kib = procfs::rss_kib(pid)?;
    let mut open: Vec<TcpStream> = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut stream = match connect(addr) {
            Ok(stream) => stream,
            Err(err) => {
                return Ok(Held::Broken(format!(
                    "connection {} of {connections}: connect failed: {err}",
                    i + 1
                )))
            }
        };
        let (sent_tx, sent_rx) = mpsc::channel();
        let writer = match stream.try_clone() {
            Ok(mut writer) => {
                let bytes = wire.to_vec();
                let _ = writer.set_write_timeout(Some(timeout));
                std::thread::spawn(move || {
                    let result = writer.write_all(&bytes);
                    let _ = sent_tx.send(());
                    result
                })
            }
            Err(err) => return Ok(Held::Broken(format!("cannot clone a socket: {err}"))),
        };
        let _ = sent_rx.recv_timeout(SEND_FIRST_FOR);
        let (received, ending) = read_exactly(&mut stream, wire.len(), timeout);
        let write_result = writer.join();
        let problem = match ending {
            Ending::Complete if received == wire => None,
            Ending::Complete => Some("the echo differs from what was sent".to_string()),
            other => Some(format!(
                "the connection {} after {} of {} echo bytes",
                other.describe(),
                received.len(),
                wire.len()
            )),
        };
        if let Some(problem) = problem {
            let write_note = match write_result {
                Ok(Err(err)) => format!(" (sending failed: {err})"),
                _ => String::new(),
            };
            return Ok(Held::Broken(format!(
                "connection {} of {connections}: {problem}{write_note}",
                i + 1
            )));
        }
        open.push(stream);
    }
    std::thread::sleep(pause);
    let after_kib = procfs::rss_kib(pid)?;
    drop(open);
    Ok(Held::Measured {
        before_kib,
        after_kib,
    })
}
