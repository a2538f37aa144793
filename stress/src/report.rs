//! What a stress run found: the totals, and one [`FailureDetail`] per client
//! that went wrong, worded for a student reading a failed check.

use std::fmt;
use std::time::Duration;

/// Failure details kept in a [`StressReport`]; the rest are only counted.
pub const MAX_FAILURE_DETAILS: usize = 20;

/// Bytes shown on each side of the first difference in a payload mismatch.
const EXCERPT_RADIUS: usize = 8;

/// The outcome of [`run_stress`](crate::stress::run_stress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StressReport {
    /// Clients run.
    pub clients: usize,
    /// Frames sent in total: `clients * frames per client`.
    pub frames: usize,
    /// Frames not correctly echoed. After a mismatch, a close or a timeout,
    /// every remaining frame of that client counts too.
    pub failures: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// New connections made because the server refused one, or closed or
    /// reset it before echoing a single byte.
    pub refused_retries: usize,
    /// Bytes of correctly echoed frames, length prefixes included.
    pub bytes_echoed: u64,
    /// One entry per failed client (at most one each), in client order,
    /// capped at [`MAX_FAILURE_DETAILS`].
    pub failure_details: Vec<FailureDetail>,
    /// Clients that failed, including those beyond the cap on
    /// `failure_details` (so a printer can say "... and N more").
    pub failed_clients: usize,
}

impl StressReport {
    /// The line a run ends with, e.g. `50 clients, 5000 frames, 0 failures`
    /// (the course's proof regexes match it, so its shape never changes).
    pub fn summary_line(&self) -> String {
        format!(
            "{} clients, {} frames, {} failures",
            self.clients, self.frames, self.failures
        )
    }

    /// True when every frame was echoed correctly.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// Why a client's frames failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// An echo differed from the frame sent (length or bytes): frames were
    /// merged, split, dropped, reordered or corrupted.
    Mismatch,
    /// The server closed the connection after echoing something.
    Closed,
    /// The connection was reset after the server echoed something.
    Reset,
    /// The run's timeout expired with frames still unanswered.
    Timeout,
    /// Every connection attempt was refused, or closed before any echo,
    /// until the timeout expired.
    Refused,
    /// Any other I/O error.
    Io,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Mismatch => "mismatch",
            FailureKind::Closed => "closed",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Io => "i/o error",
        })
    }
}

/// The first thing that went wrong for one client.
///
/// Displays as `client 7, frame 42: <message>`, or `client 3: <message>`
/// when no single frame is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetail {
    /// Client index, from 0.
    pub client: usize,
    /// Index (from 0) of the first frame that failed, when one can be named.
    pub frame: Option<usize>,
    pub kind: FailureKind,
    /// What was expected and what happened, without the client/frame prefix.
    pub message: String,
}

impl fmt::Display for FailureDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.client)?;
        if let Some(frame) = self.frame {
            write!(f, ", frame {frame}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Describes two equally long payloads that differ: the first differing
/// offset and a hex excerpt of each around it, the differing byte in
/// brackets. `None` if they are equal.
pub(crate) fn describe_payload_mismatch(expected: &[u8], actual: &[u8]) -> Option<String> {
    let offset = expected.iter().zip(actual).position(|(e, a)| e != a)?;
    Some(format!(
        "payload mismatch at byte {offset} of {}: expected {}, got {}",
        expected.len(),
        hex_excerpt(expected, offset),
        hex_excerpt(actual, offset),
    ))
}

/// Up to [`EXCERPT_RADIUS`] bytes either side of `bytes[center]`, in hex,
/// e.g. `.. 3f a1 [07] 55 ..` (dots where the payload goes on).
pub(crate) fn hex_excerpt(bytes: &[u8], center: usize) -> String {
    let start = center.saturating_sub(EXCERPT_RADIUS);
    let end = (center + EXCERPT_RADIUS + 1).min(bytes.len());
    let mut parts = Vec::with_capacity(end - start + 2);
    if start > 0 {
        parts.push("..".to_string());
    }
    for (i, byte) in bytes.iter().enumerate().take(end).skip(start) {
        if i == center {
            parts.push(format!("[{byte:02x}]"));
        } else {
            parts.push(format!("{byte:02x}"));
        }
    }
    if end < bytes.len() {
        parts.push("..".to_string());
    }
    parts.join(" ")
}

/// A duration in seconds as a person would write it: `30 s`, `2.5 s`.
pub(crate) fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if duration.subsec_millis() == 0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(failures: usize) -> StressReport {
        StressReport {
            clients: 50,
            frames: 5000,
            failures,
            elapsed: Duration::from_millis(410),
            refused_retries: 0,
            bytes_echoed: 0,
            failure_details: Vec::new(),
            failed_clients: 0,
        }
    }

    #[test]
    fn summary_line_has_the_exact_seed_shape() {
        assert_eq!(
            report(0).summary_line(),
            "50 clients, 5000 frames, 0 failures"
        );
        assert!(report(0).passed());
        assert_eq!(
            report(57).summary_line(),
            "50 clients, 5000 frames, 57 failures"
        );
        assert!(!report(57).passed());
    }

    #[test]
    fn detail_names_client_and_frame_when_known() {
        let mismatch = FailureDetail {
            client: 7,
            frame: Some(42),
            kind: FailureKind::Mismatch,
            message: "payload mismatch".to_string(),
        };
        assert_eq!(mismatch.to_string(), "client 7, frame 42: payload mismatch");
        let timeout = FailureDetail {
            frame: None,
            kind: FailureKind::Timeout,
            ..mismatch
        };
        assert_eq!(timeout.to_string(), "client 7: payload mismatch");
    }

    #[test]
    fn payload_mismatch_names_offset_and_both_excerpts() {
        let expected: Vec<u8> = (0..64).collect();
        let mut actual = expected.clone();
        actual[20] = 0xff;
        assert_eq!(
            describe_payload_mismatch(&expected, &actual).unwrap(),
            "payload mismatch at byte 20 of 64: \
             expected .. 0c 0d 0e 0f 10 11 12 13 [14] 15 16 17 18 19 1a 1b 1c .., \
             got .. 0c 0d 0e 0f 10 11 12 13 [ff] 15 16 17 18 19 1a 1b 1c .."
        );
        assert_eq!(describe_payload_mismatch(&expected, &expected), None);
    }

    #[test]
    fn hex_excerpt_clips_at_both_ends() {
        assert_eq!(hex_excerpt(&[1, 2, 3], 0), "[01] 02 03");
        assert_eq!(hex_excerpt(&[1, 2, 3], 2), "01 02 [03]");
    }

    #[test]
    fn seconds_drops_needless_decimals() {
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
    }
}
