//! `disconnects`: the three ways a client leaves, one connection each, and
//! after each one the server must still be alive and echo a fresh client.
//!
//! 1. Reset mid-frame: half a frame, then SO_LINGER 0 and close (an RST).
//!    The server's next read fails with ECONNRESET: that connection only.
//! 2. Close mid-frame: half a frame, then EOF. Nothing can be echoed; the
//!    server must close its side (the client sees EOF, no bytes).
//! 3. A frame with the EOF right behind it, on `eof_clients` clients at once:
//!    each frame must be echoed and then the connection closed. The FIN is
//!    often already queued behind the frame when the server reads, so a
//!    server that stops reading after the frame (a short read is not
//!    WouldBlock, and edge-triggered epoll reports no new edge for a FIN
//!    that was already there) never closes.
//! 4. Half-close: `half_close_kib` KiB of whole frames, then shutdown(Write),
//!    and only `read_delay_ms` later reading (by then the server has read
//!    the EOF with echoes still queued). EOF ends the client's requests, not its
//!    reading: every echo must arrive, in order, and then EOF. A server
//!    that closes at EOF at once drops the echoes still queued.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use nix::sys::socket::{setsockopt, sockopt};
use serde::Deserialize;

use super::frame_client::{self, connect, read_exactly, read_until_closed, Ending};
use super::{Check, Ctx};
use crate::report::StepOutcome;
use crate::server::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disconnects {
    /// KiB of frames the half-closing client sends before shutdown(Write):
    /// more than the socket buffers hold, so echoes are still queued at EOF.
    pub half_close_kib: usize,
    /// How long the half-closing client waits after shutdown(Write) before
    /// it reads, in ms: time for the server to reach the EOF with echoes
    /// still queued.
    pub read_delay_ms: u64,
    /// Clients that each send one frame and shutdown(Write) at once.
    pub eof_clients: usize,
    /// Bound on each wait (an echo, an EOF), in seconds.
    pub timeout_secs: u64,
    pub args: Vec<String>,
}

impl Default for Disconnects {
    fn default() -> Self {
        Disconnects {
            half_close_kib: 8192,
            read_delay_ms: 1000,
            eof_clients: 50,
            timeout_secs: 10,
            args: Vec::new(),
        }
    }
}

/// Payload bytes per frame of the half-closing client.
const FRAME_SIZE: usize = 16 * 1024;

/// Closes with an RST instead of a FIN: SO_LINGER on with a zero timeout
/// makes close() discard unsent data and reset the connection.
pub(super) fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&stream, sockopt::Linger, &linger);
    drop(stream);
}

/// A new client sends one frame and must get it back: the server survived
/// whatever came before and still accepts and serves. `Err` says what went
/// wrong, in words.
pub(super) fn fresh_client_echoed(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut stream = connect(addr).map_err(|e| format!("a new client could not connect: {e}"))?;
    let frame = stress::frame::encode(b"a fresh client, after the others left");
    stream
        .write_all(&frame)
        .map_err(|e| format!("a new client could not send a frame: {e}"))?;
    match read_exactly(&mut stream, frame.len(), timeout) {
        (got, Ending::Complete) if got == frame => {
            frame_client::close(stream);
            Ok(())
        }
        (_, Ending::Complete) => Err("a new client's echo differs from its frame".into()),
        (got, ending) => Err(format!(
            "a new client got {} of {} bytes back: {}",
            got.len(),
            frame.len(),
            ending.describe()
        )),
    }
}

/// Connects with a small receive buffer (set before connect, so the window
/// the server sees is small from the start): the server's echoes stop
/// fitting in the kernel's buffers after a few hundred KiB and wait in its
/// write buffer, which is what a half-close must not lose.
pub(super) fn connect_small_window(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::RcvBuf, &SMALL_RCVBUF)?;
    // A bounded connect (Linux's connect() honours SO_SNDTIMEO): a server
    // that stopped accepting fills its backlog, and SYN retries would
    // otherwise wait minutes. Then no timeout again, for the writes.
    let bound = nix::sys::time::TimeVal::new(3, 0);
    setsockopt(&fd, sockopt::SendTimeout, &bound)?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    )?;
    Ok(TcpStream::from(fd))
}

/// The half-closing client's receive buffer, in bytes (the kernel doubles it).
const SMALL_RCVBUF: usize = 16 * 1024;

/// Half a frame: the header of a 200-byte frame and 100 of its bytes.
fn half_frame() -> Vec<u8> {
    let whole = stress::frame::encode(&[0x5a; 200]);
    whole[..4 + 100].to_vec()
}

impl Check for Disconnects {
    fn summary(&self) -> String {
        format!(
            "clients reset mid-frame, close mid-frame, send a frame with EOF behind it ({} at once) and half-close with {} KiB of echoes pending; the server survives each and serves the next client",
            self.eof_clients, self.half_close_kib
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let addr = server.addr;
        // Each case: its name, the likely cause when it fails (its id and
        // words), and the client.
        type Case = fn(&Disconnects, SocketAddr, Duration) -> Result<String, String>;
        let cases: [(&str, &str, &str, Case); 4] = [
            (
                "reset mid-frame",
                RESET_ENDS_THE_SERVER,
                "a reset is an error of that one connection (ECONNRESET from read or write): close it and keep serving; never unwrap() or `?` it out of the event loop",
                Disconnects::reset_mid_frame,
            ),
            (
                "close mid-frame",
                "disconnects.close-mid-frame",
                "a read of 0 (EOF) with half a frame buffered: drop the partial frame and close the connection; the client sees EOF",
                Disconnects::close_mid_frame,
            ),
            (
                "frame with EOF behind it",
                "disconnects.eof-behind-a-frame-missed",
                "the client's EOF came right behind its last frame: after echoing, the server must still see the EOF and close; read until a read returns 0 or WouldBlock (or, with epoll, check EPOLLRDHUP) before deciding a socket has nothing more to say",
                Disconnects::frame_then_eof,
            ),
            (
                "half-close",
                "disconnects.half-close-drops-echoes",
                "EOF means the client sends no more, not that it stopped reading: keep writing the echoes already queued, and close only once the write buffer is empty",
                Disconnects::half_close,
            ),
        ];
        for (case, cause_id, cause, client) in cases {
            let result = client(self, addr, timeout).and_then(|detail| {
                fresh_client_echoed(addr, timeout)
                    .map(|()| detail)
                    .map_err(|e| format!("after a client's {case}, {e}"))
            });
            // A dead server explains any failure best: give it a moment to be
            // reaped, then say so.
            let result = result.map_err(|message| {
                match server.death_notice_within(Duration::from_millis(200)) {
                    Some(death) => format!("the server died after a client's {case}: {death}"),
                    None => message,
                }
            });
            match result {
                Ok(detail) => ctx
                    .log
                    .detail(format!("{case}: {detail}; the next client was echoed")),
                Err(message) => {
                    let failed = fail(&mut server, message, cause_id, cause);
                    // A reset the server turns into its own end: that cause
                    // explains the death.
                    return Ok(if cause_id == RESET_ENDS_THE_SERVER {
                        failed.explains_death(cause_id)
                    } else {
                        failed
                    });
                }
            }
        }
        Ok(StepOutcome::pass(format!(
            "reset mid-frame, close mid-frame, {} frames with EOF behind them and half-close survived; {} KiB echoed in full after a half-close",
            self.eof_clients, self.half_close_kib
        ))
        .figure("half_close_kib", self.half_close_kib)
        .figure("eof_clients", self.eof_clients)
        .proof_line(format!(
            "disconnects: reset and close mid-frame survived, {} KiB echoed in full after a half-close",
            self.half_close_kib
        ))
        .proof_line(format!(
            "disconnects: {} clients sent a frame with EOF right behind it: each echoed, then closed",
            self.eof_clients
        )))
    }
}

/// The reset mid-frame case's cause: a reset is that connection's error.
const RESET_ENDS_THE_SERVER: &str = "disconnects.reset-ends-the-server";

/// A failed outcome with its likely cause (`cause_id`, see
/// `StepOutcome::cause_as`), quoting the server's output.
pub(super) fn fail(
    server: &mut Server,
    message: String,
    cause_id: &str,
    cause: &str,
) -> StepOutcome {
    StepOutcome::fail(message)
        .cause_as(cause_id, cause)
        .evidence(Ctx::server_evidence(server))
}

impl Disconnects {
    fn reset_mid_frame(&self, addr: SocketAddr, _timeout: Duration) -> Result<String, String> {
        let mut stream = connect(addr).map_err(|e| format!("connect failed: {e}"))?;
        let half = half_frame();
        stream
            .write_all(&half)
            .map_err(|e| format!("sending half a frame failed: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
        reset(stream);
        Ok(format!("sent {} of 204 bytes, then an RST", half.len()))
    }

    fn close_mid_frame(&self, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
        let mut stream = connect(addr).map_err(|e| format!("connect failed: {e}"))?;
        let half = half_frame();
        stream
            .write_all(&half)
            .map_err(|e| format!("sending half a frame failed: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
        let _ = stream.shutdown(Shutdown::Write);
        match read_until_closed(&mut stream, timeout) {
            (got, Ending::Eof) if got.is_empty() => {
                Ok(format!("sent {} of 204 bytes, then EOF; the server closed", half.len()))
            }
            (got, ending) if ending.is_closed() => Err(format!(
                "after half a frame and EOF, the server sent {} bytes before closing (nothing was complete to echo)",
                got.len()
            )),
            (got, ending) => Err(format!(
                "after half a frame and EOF, the server did not close the connection within {} s ({}, {} bytes received)",
                timeout.as_secs(),
                ending.describe(),
                got.len()
            )),
        }
    }

    fn frame_then_eof(&self, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
        let clients = self.eof_clients.max(1);
        let mut streams = Vec::with_capacity(clients);
        for client in 0..clients {
            streams
                .push(connect(addr).map_err(|e| format!("client {client}: connect failed: {e}"))?);
        }
        let frames: Vec<Vec<u8>> = (0..clients)
            .map(|client| {
                frame_client::framed(&[format!("last words of client {client}").into_bytes()])
            })
            .collect();
        // All of them first, each frame and its FIN back to back, so the
        // server finds both queued on many sockets when it reads: corked,
        // the frame waits for the FIN and both leave in one segment, however
        // loaded the machine (else they may arrive in two wake-ups, and a
        // server that stops after a short read would see the EOF anyway).
        for (client, (stream, frame)) in streams.iter_mut().zip(&frames).enumerate() {
            crate::server::cork(stream)
                .and_then(|()| stream.write_all(frame))
                .and_then(|()| stream.shutdown(Shutdown::Write))
                .map_err(|e| format!("client {client}: sending a frame and EOF failed: {e}"))?;
        }
        for (client, (stream, frame)) in streams.iter_mut().zip(&frames).enumerate() {
            let (got, ending) = read_exactly(stream, frame.len(), timeout);
            if !matches!(ending, Ending::Complete) || got != *frame {
                return Err(format!(
                    "client {client} sent one frame of {} bytes with EOF right behind it; got back {} bytes, then the connection {}",
                    frame.len(),
                    got.len(),
                    ending.describe()
                ));
            }
            closes_after_the_echoes(
                stream,
                timeout,
                &format!("client {client}"),
                &format!(
                    "client {client} sent one frame with EOF right behind it: the echo came back"
                ),
            )?;
        }
        Ok(format!(
            "{clients} clients each sent a frame and EOF back to back: every frame echoed, then EOF"
        ))
    }

    fn half_close(&self, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
        let mut stream = connect_small_window(addr).map_err(|e| format!("connect failed: {e}"))?;
        let frames = (self.half_close_kib * 1024 / FRAME_SIZE).max(1);
        let payloads: Vec<Vec<u8>> = (0..frames)
            .map(|i| {
                (0..FRAME_SIZE)
                    .map(|j| (i * 31 + j * 7 % 251) as u8)
                    .collect()
            })
            .collect();
        let wire = frame_client::framed(&payloads);
        // Bounded: a server that stops reading must not hang the probe.
        let _ = stream.set_write_timeout(Some(timeout));
        stream.write_all(&wire).map_err(|e| {
            format!(
                "sending {} KiB of frames before reading failed: {e}",
                wire.len() / 1024
            )
        })?;
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(Write) failed: {e}"))?;
        std::thread::sleep(Duration::from_millis(self.read_delay_ms));
        let (got, ending) = read_exactly(&mut stream, wire.len(), timeout);
        if !matches!(ending, Ending::Complete) {
            return Err(format!(
                "half-close: sent {} frames ({} KiB), then shutdown(Write), reading from {} ms later; got back {} of {} bytes, then the connection {}",
                frames,
                wire.len() / 1024,
                self.read_delay_ms,
                got.len(),
                wire.len(),
                ending.describe()
            ));
        }
        if got != wire {
            let mut lines = frame_client::describe_difference(&payloads, &got);
            lines.insert(
                0,
                "half-close: the echoes differ from the frames sent".into(),
            );
            return Err(lines.join("; "));
        }
        closes_after_the_echoes(
            &mut stream,
            timeout,
            "half-close",
            "half-close: every echo arrived",
        )?;
        Ok(format!(
            "{frames} frames ({} KiB) then shutdown(Write): all echoed, then EOF",
            wire.len() / 1024
        ))
    }
}

/// After a client's last echo: the server closes (EOF) and sends nothing
/// more, within `timeout`. `who` and `echoed` begin the failure messages.
fn closes_after_the_echoes(
    stream: &mut TcpStream,
    timeout: Duration,
    who: &str,
    echoed: &str,
) -> Result<(), String> {
    match read_until_closed(stream, timeout) {
        (extra, Ending::Eof) if extra.is_empty() => Ok(()),
        (extra, ending) if ending.is_closed() => Err(format!(
            "{who}: {} bytes more than were sent came back",
            extra.len()
        )),
        (_, ending) => Err(format!(
            "{echoed}, but the server did not close the connection within {} s ({})",
            timeout.as_secs(),
            ending.describe()
        )),
    }
}
