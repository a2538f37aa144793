//! `frames`: the framing cases every frame server must survive, blocking
//! (`read_frame`, w01-l02) or not (a per-connection buffer, w02-l07). Each
//! case runs on its own connection, opened after the previous one closed,
//! so a server that serves one client at a time passes too:
//!
//! 1. frames sent one byte per write, with small pauses (short reads);
//! 2. frames whose 4-byte length prefix is split across writes;
//! 3. an empty frame (`L = 0`), then a frame after it;
//! 4. 64 frames of assorted sizes (some empty) pipelined in one write;
//! 5. a frame of 64 KiB (the default `--max-frame`, which is allowed).
//!
//! Every echo is checked byte for byte and in order; a failure names the
//! case, the frame and shows a hex excerpt of where it differs.

use std::time::Duration;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use stress::frame::{encode, DEFAULT_MAX_FRAME, HEADER_LEN};

use super::frame_client::{self, Ending, Piece};
use super::{Check, Ctx};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Frames {
    /// Pause between the 1-byte writes, in milliseconds.
    pub byte_pause_ms: u64,
    /// Frames pipelined in one write.
    pub pipelined: usize,
    /// Payload of the large frame (at most the server's `--max-frame`).
    pub large: usize,
    /// How long one case may wait for its echoes.
    pub timeout_secs: u64,
    /// Flags beyond the lesson's `server_args`.
    pub args: Vec<String>,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            byte_pause_ms: 3,
            pipelined: 64,
            large: DEFAULT_MAX_FRAME,
            timeout_secs: 5,
            args: Vec::new(),
        }
    }
}

/// One case: what is sent (frames and how they are cut into writes), and
/// what to tell the student when its echo is wrong.
struct Case {
    name: String,
    payloads: Vec<Vec<u8>>,
    /// Sent one after another, each waiting for its own echoes, so a case
    /// tests only its own thing: only the pipelined case has more than one
    /// frame in flight.
    rounds: Vec<Round>,
    /// The cause's id (see `StepOutcome::cause_as`) and its words.
    cause_id: &'static str,
    cause: &'static str,
}

/// Some frames of a case (`frames` of them, next in `payloads`) and the
/// writes that carry them.
struct Round {
    frames: usize,
    pieces: Vec<Piece>,
}

impl Round {
    fn new(frames: usize, pieces: Vec<Piece>) -> Self {
        Round { frames, pieces }
    }
}

impl Frames {
    fn cases(&self, seed: u64) -> Vec<Case> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pause = Duration::from_millis(self.byte_pause_ms);
        let gap = Duration::from_millis(30);
        let mut cases = Vec::new();

        // 1. One byte per write: every read() returns whatever arrived, here
        //    a single byte, never a whole frame.
        let payloads = vec![
            b"sent one byte per write".to_vec(),
            random_bytes(&mut rng, 9),
        ];
        let rounds = payloads
            .iter()
            .map(|payload| {
                let bytes = encode(payload);
                Round::new(
                    1,
                    bytes
                        .into_iter()
                        .map(|b| Piece::new(vec![b], pause))
                        .collect(),
                )
            })
            .collect();
        cases.push(Case {
            name: "1 byte per write".into(),
            payloads,
            rounds,
            cause_id: "frames.split-read",
            cause: "one read() is not one frame: TCP hands over whatever has arrived, here one byte at a time. Loop until all 4 bytes of the length prefix are in, then until all L payload bytes are (read_exact does both)",
        });

        // 2. The length prefix split after 1, 2 and 3 of its 4 bytes, the
        //    payload split too.
        let mut payloads = Vec::new();
        let mut rounds = Vec::new();
        for cut in 1..HEADER_LEN {
            let payload = random_bytes(&mut rng, 100 + cut);
            let wire = encode(&payload);
            let middle = HEADER_LEN + payload.len() / 2;
            rounds.push(Round::new(
                1,
                vec![
                    Piece::new(wire[..cut].to_vec(), gap),
                    Piece::new(wire[cut..middle].to_vec(), gap),
                    Piece::new(wire[middle..].to_vec(), Duration::ZERO),
                ],
            ));
            payloads.push(payload);
        }
        cases.push(Case {
            name: "split length prefix".into(),
            payloads,
            rounds,
            cause_id: "frames.split-prefix",
            cause: "the 4-byte length prefix can arrive in pieces too: read it with read_exact (or loop) before decoding it, never with a single read()",
        });

        // 3. The empty frame, then a frame after it on the same connection.
        let payloads = vec![Vec::new(), b"the frame after the empty one".to_vec()];
        let rounds = one_frame_per_round(&payloads);
        cases.push(Case {
            name: "empty frame".into(),
            payloads,
            rounds,
            cause_id: "frames.empty-frame",
            cause: "L = 0 is a valid frame: send back its 4 zero bytes and keep reading. Reading 0 payload bytes is not end of file (a read into an empty buffer returns Ok(0) at once)",
        });

        // 4. Many frames in one write: one read() may return several frames.
        let payloads: Vec<Vec<u8>> = (0..self.pipelined)
            .map(|i| {
                let len = match i % 8 {
                    0 => 0,
                    1 => 1,
                    7 => rng.random_range(1000..3000),
                    _ => rng.random_range(2..300),
                };
                random_bytes(&mut rng, len)
            })
            .collect();
        let rounds = vec![Round::new(
            payloads.len(),
            vec![Piece::new(frame_client::framed(&payloads), Duration::ZERO)],
        )];
        cases.push(Case {
            name: "pipelined in one write".into(),
            payloads,
            rounds,
            cause_id: "frames.pipelined",
            cause: "several frames can arrive in one read(): echo each one, in order, and keep the bytes after a frame for the next one (a blocking server's read_exact does this for you; a poll server keeps them in the connection's read buffer)",
        });

        // 5. The largest allowed frame, then a small one.
        let payloads = vec![
            random_bytes(&mut rng, self.large),
            b"after the large frame".to_vec(),
        ];
        let rounds = one_frame_per_round(&payloads);
        cases.push(Case {
            name: format!("{} KiB frame", self.large / 1024),
            payloads,
            rounds,
            cause_id: "frames.large-frame",
            cause: "a frame of exactly --max-frame bytes (65536 by default) is allowed: size the payload buffer from L, read all of it, and write it all back (write_all)",
        });
        cases
    }
}

/// Each frame in one write of its own, sent once the previous one's echo
/// is back.
fn one_frame_per_round(payloads: &[Vec<u8>]) -> Vec<Round> {
    payloads
        .iter()
        .map(|p| Round::new(1, vec![Piece::new(encode(p), Duration::ZERO)]))
        .collect()
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// Whether `received` is the frames of `payloads` with every length prefix
/// little-endian: each frame that arrived whole has its payload right and
/// its prefix byte-reversed, and at least one of those prefixes reads
/// differently in the two orders (an empty frame's zeros show nothing).
fn prefixes_reversed(payloads: &[Vec<u8>], received: &[u8]) -> bool {
    let mut at = 0;
    let mut order_shown = false;
    for payload in payloads {
        let end = at + HEADER_LEN + payload.len();
        let Some(frame) = received.get(at..end) else {
            break;
        };
        let Ok(len) = u32::try_from(payload.len()) else {
            return false;
        };
        if frame[..HEADER_LEN] != len.to_le_bytes() || frame[HEADER_LEN..] != payload[..] {
            return false;
        }
        order_shown |= len.to_le_bytes() != len.to_be_bytes();
        at = end;
    }
    order_shown
}

impl Check for Frames {
    fn summary(&self) -> String {
        format!(
            "frames sent 1 byte per write, with split length prefixes, empty, {} pipelined in one write, and of {} bytes",
            self.pipelined, self.large
        )
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let mut server = match ctx.start_server(&self.args)? {
            Ok(server) => server,
            Err(failed) => return Ok(failed),
        };
        let timeout = Duration::from_secs(self.timeout_secs);
        let mut echoed = 0usize;
        for case in self.cases(ctx.seed) {
            let expected = frame_client::framed(&case.payloads);
            let writes: usize = case.rounds.iter().map(|r| r.pieces.len()).sum();
            ctx.log.detail(format!(
                "{}: {} frames, {} bytes in {writes} writes",
                case.name,
                case.payloads.len(),
                expected.len(),
            ));
            let mut stream = match frame_client::connect(server.addr) {
                Ok(stream) => stream,
                Err(err) => {
                    return Ok(StepOutcome::fail(format!(
                        "{}: connecting to {} failed: {err}",
                        case.name, server.addr
                    ))
                    .cause_as(
                        "frames.stopped-accepting",
                        "the server stopped accepting connections after the previous case",
                    )
                    .evidence(Ctx::server_evidence(&mut server)))
                }
            };
            // Every echo of the case so far, compared against all its frames.
            let mut received: Vec<u8> = Vec::with_capacity(expected.len());
            let mut failure = None;
            let mut closed_unechoed = false;
            let mut next_frame = 0;
            for round in case.rounds {
                let frames = &case.payloads[next_frame..next_frame + round.frames];
                next_frame += round.frames;
                let round_len = frame_client::framed(frames).len();
                let exchange =
                    frame_client::exchange(&mut stream, round.pieces, round_len, timeout);
                let start = received.len();
                received.extend_from_slice(&exchange.received);
                let what = match &exchange.ending {
                    Ending::Complete if received[start..] == expected[start..start + round_len] => {
                        continue
                    }
                    Ending::Complete => "the echo differs from what was sent".to_string(),
                    ending if ending.is_closed() => format!(
                        "the server {} the connection before echoing every frame",
                        ending.describe()
                    ),
                    Ending::TimedOut => format!("no complete echo within {} s", self.timeout_secs),
                    other => format!("reading the echo {}", other.describe()),
                };
                closed_unechoed = exchange.ending.is_closed();
                failure = Some((what, exchange.write_error));
                break;
            }
            frame_client::close(stream);
            if let Some((what, write_error)) = failure {
                let mut evidence = frame_client::describe_difference(&case.payloads, &received);
                if let Some(err) = write_error {
                    evidence.push(format!("sending failed too: {err}"));
                }
                evidence.extend(Ctx::server_evidence(&mut server));
                // The payloads came back right, their prefixes reversed: the
                // reading was fine, the echo's prefix is written in the
                // wrong byte order, whatever the case was about.
                let (cause_id, cause) = if prefixes_reversed(&case.payloads, &received) {
                    (
                        "frames.prefix-byte-order",
                        "every payload came back right, but each length prefix byte-reversed (little-endian, the machine's order on x86): write L big-endian, most significant byte first, as it is read",
                    )
                } else {
                    (case.cause_id, case.cause)
                };
                let outcome = StepOutcome::fail(format!("{}: {what}", case.name))
                    .cause_as(cause_id, cause)
                    .evidence(evidence)
                    .figure("frames_echoed", echoed);
                if received.is_empty() && closed_unechoed {
                    // Closed before any echo: in the pool lesson, ask the
                    // pool whether it drops clients (the framing is given).
                    return Ok(super::pool::diagnosis::closed_unechoed(
                        ctx,
                        server.addr,
                        outcome,
                    ));
                }
                return Ok(outcome);
            }
            echoed += case.payloads.len();
            ctx.log
                .detail(format!("{}: every echo exact, in order", case.name));
        }
        if let Some(death) = server.death_notice() {
            return Ok(StepOutcome::fail(format!("{death} after the last case"))
                .cause_as(
                    "frames.died-after-a-client",
                    "the server must keep running after a client leaves",
                )
                .evidence(Ctx::server_evidence(&mut server)));
        }
        Ok(StepOutcome::pass(format!(
            "5 framing cases, {echoed} frames echoed exactly and in order"
        ))
        .figure("frames_echoed", echoed)
        .proof_line(format!(
            "frames: 1 byte per write, split length prefixes, empty, {} pipelined in one write, {} KiB — {echoed} frames echoed exactly",
            self.pipelined,
            self.large / 1024
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn little_endian(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn an_echo_with_little_endian_prefixes_is_recognised() {
        let payloads = vec![b"abc".to_vec(), Vec::new(), vec![7u8; 300]];
        assert!(prefixes_reversed(&payloads, &little_endian(&payloads)));
        // Part of the echo is enough, once a prefix shows the order.
        let echo = little_endian(&payloads);
        assert!(prefixes_reversed(&payloads, &echo[..9]));
    }

    #[test]
    fn a_right_echo_or_other_damage_is_not_blamed_on_the_byte_order() {
        let payloads = vec![b"abc".to_vec(), vec![7u8; 300]];
        assert!(!prefixes_reversed(
            &payloads,
            &frame_client::framed(&payloads)
        ));
        let mut wrong_payload = little_endian(&payloads);
        wrong_payload[5] ^= 1;
        assert!(!prefixes_reversed(&payloads, &wrong_payload));
        // Only empty frames: their prefix is the same either way.
        let empties = vec![Vec::new(), Vec::new()];
        assert!(!prefixes_reversed(&empties, &little_endian(&empties)));
        assert!(!prefixes_reversed(&payloads, &[]));
    }
}
