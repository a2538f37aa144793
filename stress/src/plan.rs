//! What each stress client sends, decided before any byte is sent.
//!
//! A [`ClientPlan`] fixes, for one client, every frame's payload length, how
//! frames are grouped into back-to-back *bursts* (pipelining), where each
//! burst's writes are split, and the payload bytes themselves. It depends on
//! nothing but `(seed, client index, frames, max_payload)`, so a seed replays
//! a run exactly, whatever the timing, and a failure report can name a frame
//! that anyone can regenerate.

use std::ops::Range;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::frame::{self, HEADER_LEN};

/// At most this many frames are sent before their echoes come back.
pub const MAX_PIPELINED_FRAMES: usize = 8;

/// At most this many bytes (length prefixes included) are sent before their
/// echoes come back, unless a single frame is larger on its own.
pub const MAX_OUTSTANDING_BYTES: usize = 256 * 1024;

/// One client's whole conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    /// The client index this plan was derived from.
    pub client: usize,
    /// Payload length of each frame, in sending order.
    pub frame_lens: Vec<usize>,
    /// Consecutive groups of frames, covering `0..frame_lens.len()` in order.
    pub bursts: Vec<Burst>,
    /// Key of the generator for payload bytes; frame `i` uses stream `i`, so
    /// any frame's bytes can be regenerated on their own.
    payload_key: u64,
}

/// Frames written back to back without waiting for an echo; the next burst
/// is sent only once every frame of this one has been echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// Indices of the frames in this burst.
    pub frames: Range<usize>,
    /// Offsets into the burst's encoded bytes where one write ends and the
    /// next begins: strictly increasing, each inside `1..encoded_len`. Cuts
    /// fall anywhere, including inside a 4-byte length prefix.
    pub cuts: Vec<usize>,
}

impl Burst {
    /// Splits the burst's encoded bytes into the pieces to write, one write
    /// each, in order.
    pub fn chunks<'a>(&'a self, encoded: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let starts = std::iter::once(0).chain(self.cuts.iter().copied());
        let ends = self
            .cuts
            .iter()
            .copied()
            .chain(std::iter::once(encoded.len()));
        starts
            .zip(ends)
            .map(move |(start, end)| &encoded[start..end])
    }
}

impl ClientPlan {
    /// Derives client `client`'s plan of `frames` frames with payloads of at
    /// most `max_payload` bytes. Same arguments, same plan.
    ///
    /// Payload lengths are skewed so runs stay fast while still covering the
    /// extremes: about 60% under 1 KiB, 30% up to 8 KiB and 10% up to
    /// `max_payload`, with 0 and `max_payload` themselves about 3% each.
    pub fn generate(seed: u64, client: usize, frames: usize, max_payload: usize) -> Self {
        // One key for the whole run, one ChaCha stream per client: clients
        // are independent of each other and of how many clients there are.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(client as u64);

        let payload_key = rng.random();
        let frame_lens: Vec<usize> = (0..frames)
            .map(|_| payload_len(&mut rng, max_payload))
            .collect();

        let mut bursts = Vec::new();
        let mut next = 0;
        while next < frames {
            // Half the bursts are a single frame (request, then response);
            // the rest pipeline 2..=8 frames.
            let wanted = if rng.random_bool(0.5) {
                1
            } else {
                rng.random_range(2..=MAX_PIPELINED_FRAMES)
            };
            let start = next;
            let mut encoded_len = 0;
            while next < frames && next - start < wanted {
                let frame_len = HEADER_LEN + frame_lens[next];
                if next > start && encoded_len + frame_len > MAX_OUTSTANDING_BYTES {
                    break;
                }
                encoded_len += frame_len;
                next += 1;
            }
            // A connection's first write is never shorter than a length
            // prefix. When a listen queue overflows, Linux answers with SYN
            // cookies, and a cookie still validates on a data segment that
            // starts up to 3 bytes late: the server would then silently
            // lose a first write of 1-3 bytes. (Seen against socat, whose
            // backlog is 5.) Later bursts split prefixes anywhere.
            let shortest_first_write = if start == 0 { HEADER_LEN } else { 1 };
            let cuts = write_cuts(&mut rng, &frame_lens[start..next], shortest_first_write);
            bursts.push(Burst {
                frames: start..next,
                cuts,
            });
        }

        ClientPlan {
            client,
            frame_lens,
            bursts,
            payload_key,
        }
    }

    /// Number of frames this client sends.
    pub fn frame_count(&self) -> usize {
        self.frame_lens.len()
    }

    /// The payload of frame `frame`: seeded random bytes of
    /// `frame_lens[frame]` length (random rather than a pattern, so a server
    /// that echoes zeros or stale buffer contents fails).
    ///
    /// # Panics
    /// If `frame` is out of range.
    pub fn payload(&self, frame: usize) -> Vec<u8> {
        // ChaCha8 picks each frame's key; SplitMix64 expands it into bytes.
        // Runs move hundreds of megabytes, and dependencies such as
        // rand_chacha build unoptimised in this workspace's debug profile,
        // where ChaCha alone would take longer than the network.
        let mut rng = ChaCha8Rng::seed_from_u64(self.payload_key);
        rng.set_stream(frame as u64);
        let mut state = rng.next_u64();
        let mut payload = vec![0u8; self.frame_lens[frame]];
        for chunk in payload.chunks_mut(8) {
            let word = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        payload
    }

    /// Appends every frame of `burst`, encoded, to `out`.
    pub fn encode_burst(&self, burst: &Burst, out: &mut Vec<u8>) {
        for frame in burst.frames.clone() {
            frame::encode_into(&self.payload(frame), out);
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, fast generator whose output
/// passes BigCrush — plenty for payload bytes.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Draws one payload length (see [`ClientPlan::generate`] for the mix).
fn payload_len(rng: &mut ChaCha8Rng, max_payload: usize) -> usize {
    let (low, high) = match rng.random_range(0..100) {
        0..=2 => (0, 0),
        3..=5 => (max_payload, max_payload),
        6..=61 => (1, 1023),
        62..=91 => (1024, 8192),
        _ => (8193, max_payload),
    };
    // A small max_payload squeezes every bucket into 0..=max_payload.
    let high = high.min(max_payload);
    rng.random_range(low.min(high)..=high)
}

/// Chooses where to split the writes of a burst of frames with these
/// payload lengths; no cut falls before `shortest_first_write`.
fn write_cuts(
    rng: &mut ChaCha8Rng,
    frame_lens: &[usize],
    shortest_first_write: usize,
) -> Vec<usize> {
    let encoded_len: usize = frame_lens.iter().map(|len| HEADER_LEN + len).sum();
    let header_starts: Vec<usize> = frame_lens
        .iter()
        .scan(0, |offset, len| {
            let start = *offset;
            *offset += HEADER_LEN + len;
            Some(start)
        })
        .collect();
    let any_header = |rng: &mut ChaCha8Rng| header_starts[rng.random_range(0..header_starts.len())];

    let mut cuts = Vec::new();
    match rng.random_range(0..100) {
        // The whole burst in one write: many frames in one segment.
        0..=34 => {}
        // A few cuts anywhere.
        35..=69 => {
            for _ in 0..rng.random_range(1..=3) {
                cuts.push(rng.random_range(1..encoded_len));
            }
        }
        // One cut inside a length prefix, and maybe one anywhere.
        70..=89 => {
            cuts.push(any_header(rng) + rng.random_range(1..HEADER_LEN));
            if rng.random_bool(0.5) {
                cuts.push(rng.random_range(1..encoded_len));
            }
        }
        // One length prefix written a byte at a time.
        _ => {
            let start = any_header(rng);
            cuts.extend((1..=HEADER_LEN).map(|i| start + i));
        }
    }
    cuts.retain(|&cut| cut >= shortest_first_write && cut < encoded_len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_identical_plans_and_payloads() {
        for client in [0, 1, 49] {
            let a = ClientPlan::generate(1234, client, 200, 65536);
            let b = ClientPlan::generate(1234, client, 200, 65536);
            assert_eq!(a, b);
            for frame in [0, 17, 199] {
                assert_eq!(a.payload(frame), b.payload(frame));
            }
        }
    }

    #[test]
    fn seeds_and_clients_give_different_plans() {
        let base = ClientPlan::generate(1, 0, 100, 65536);
        assert_ne!(
            base.frame_lens,
            ClientPlan::generate(2, 0, 100, 65536).frame_lens
        );
        assert_ne!(
            base.frame_lens,
            ClientPlan::generate(1, 1, 100, 65536).frame_lens
        );
    }

    #[test]
    fn a_client_plan_does_not_depend_on_other_clients() {
        // Client 3 of a 4-client run and of a 50-client run are the same.
        let plan = ClientPlan::generate(99, 3, 10, 65536);
        assert_eq!(plan.client, 3);
        assert_eq!(plan, ClientPlan::generate(99, 3, 10, 65536));
    }

    #[test]
    fn bursts_cover_every_frame_in_order_within_the_window() {
        let plan = ClientPlan::generate(7, 0, 2000, 65536);
        let mut next = 0;
        let mut pipelined = 0;
        for burst in &plan.bursts {
            assert_eq!(burst.frames.start, next);
            assert!(!burst.frames.is_empty());
            assert!(burst.frames.len() <= MAX_PIPELINED_FRAMES);
            let encoded_len: usize = plan.frame_lens[burst.frames.clone()]
                .iter()
                .map(|len| HEADER_LEN + len)
                .sum();
            assert!(burst.frames.len() == 1 || encoded_len <= MAX_OUTSTANDING_BYTES);
            assert!(burst.cuts.windows(2).all(|w| w[0] < w[1]));
            assert!(burst.cuts.iter().all(|&cut| cut > 0 && cut < encoded_len));
            if burst.frames.len() > 1 {
                pipelined += 1;
            }
            next = burst.frames.end;
        }
        assert_eq!(next, 2000);
        assert!(pipelined > 100, "only {pipelined} pipelined bursts");
    }

    #[test]
    fn payload_lengths_are_skewed_small_but_reach_both_extremes() {
        let plan = ClientPlan::generate(5, 0, 5000, 65536);
        let lens = &plan.frame_lens;
        let count = |pred: &dyn Fn(usize) -> bool| lens.iter().filter(|&&len| pred(len)).count();
        assert!(lens.iter().all(|&len| len <= 65536));
        assert!(count(&|len| len == 0) > 50);
        assert!(count(&|len| len == 65536) > 50);
        let small = count(&|len| len < 1024);
        assert!((2500..3500).contains(&small), "{small} of 5000 under 1 KiB");
        let large = count(&|len| len > 8192);
        assert!((500..1000).contains(&large), "{large} of 5000 over 8 KiB");
    }

    #[test]
    fn a_small_max_payload_bounds_every_frame() {
        let plan = ClientPlan::generate(5, 0, 500, 10);
        assert!(plan.frame_lens.iter().all(|&len| len <= 10));
        assert!(plan.frame_lens.contains(&10));
        let empty_only = ClientPlan::generate(5, 0, 50, 0);
        assert!(empty_only.frame_lens.iter().all(|&len| len == 0));
    }

    #[test]
    fn some_cuts_fall_inside_a_length_prefix() {
        let plan = ClientPlan::generate(11, 0, 1000, 65536);
        let inside_prefix = plan.bursts.iter().any(|burst| {
            let mut start = 0;
            plan.frame_lens[burst.frames.clone()].iter().any(|len| {
                let header = start + 1..start + HEADER_LEN;
                start += HEADER_LEN + len;
                burst.cuts.iter().any(|cut| header.contains(cut))
            })
        });
        assert!(inside_prefix);
    }

    #[test]
    fn a_connection_never_starts_with_a_write_shorter_than_a_length_prefix() {
        for client in 0..500 {
            let plan = ClientPlan::generate(21, client, 5, 65536);
            let first_cut = plan.bursts[0].cuts.first().copied();
            assert!(
                first_cut.is_none_or(|cut| cut >= HEADER_LEN),
                "client {client}: {first_cut:?}"
            );
        }
    }

    #[test]
    fn chunks_reassemble_the_encoded_burst() {
        let plan = ClientPlan::generate(3, 0, 300, 65536);
        for burst in &plan.bursts {
            let mut encoded = Vec::new();
            plan.encode_burst(burst, &mut encoded);
            let chunks: Vec<&[u8]> = burst.chunks(&encoded).collect();
            assert_eq!(chunks.len(), burst.cuts.len() + 1);
            assert!(chunks.iter().all(|chunk| !chunk.is_empty()));
            assert_eq!(chunks.concat(), encoded);
        }
    }

    #[test]
    fn payloads_are_random_not_zeros() {
        let plan = ClientPlan::generate(1, 0, 200, 65536);
        let mut long_frames = (0..200).filter(|&frame| plan.frame_lens[frame] >= 64);
        let (first, second) = (long_frames.next().unwrap(), long_frames.next().unwrap());
        let payload = plan.payload(first);
        assert!(payload.iter().filter(|&&b| b != 0).count() > payload.len() / 2);
        // Each frame has its own bytes, so a server echoing a stale frame fails.
        assert_ne!(payload[..64], plan.payload(second)[..64]);
    }
}
