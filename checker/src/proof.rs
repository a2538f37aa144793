//! The proof block: what a run prints for the student to paste, and the one
//! rule that grades it — the verdict line `result: PASS <id>` *and* every
//! one of the lesson's `proof.regex_patterns`. The regexes alone are no
//! verdict: the seed's `0 failures` also matches `10 failures`.

use crate::course::Lesson;

const BEGIN: &str = "----- BEGIN PROOF ";
const END: &str = "----- END PROOF ";
const DASHES: &str = " -----";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBlock {
    pub lesson_id: String,
    /// The lines between the BEGIN and END markers.
    pub body: Vec<String>,
}

impl ProofBlock {
    pub fn render(&self) -> String {
        let mut text = format!("{BEGIN}{}{DASHES}\n", self.lesson_id);
        for line in &self.body {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!("{END}{}{DASHES}\n", self.lesson_id));
        text
    }

    pub fn verdict_line(passed: bool, lesson_id: &str) -> String {
        format!(
            "result: {} {lesson_id}",
            if passed { "PASS" } else { "FAIL" }
        )
    }

    fn says_pass(&self) -> bool {
        let pass = Self::verdict_line(true, &self.lesson_id);
        let verdicts: Vec<&String> = self
            .body
            .iter()
            .filter(|l| l.starts_with("result:"))
            .collect();
        verdicts.len() == 1 && verdicts[0].trim_end() == pass
    }
}

/// Why a block does not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    NoPassVerdict,
    PatternMissing(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoPassVerdict => {
                write!(f, "the block has no `result: PASS` line for its lesson")
            }
            Rejection::PatternMissing(p) => write!(f, "the proof pattern `{p}` does not match"),
        }
    }
}

/// Grades one block against its lesson: empty means it passes.
pub fn rejections(block: &ProofBlock, lesson: &Lesson) -> Vec<Rejection> {
    let mut found = Vec::new();
    if !block.says_pass() {
        found.push(Rejection::NoPassVerdict);
    }
    let text = block.render();
    for (pattern, regex) in lesson
        .proof
        .regex_patterns
        .iter()
        .zip(lesson.proof_regexes())
    {
        if !regex.is_match(&text) {
            found.push(Rejection::PatternMissing(pattern.clone()));
        }
    }
    found
}

/// What a scan of pasted text found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Block(ProofBlock),
    /// A BEGIN line whose block never ended (cut off, or a second BEGIN
    /// or a mismatched END came first).
    Truncated {
        lesson_id: String,
        reason: String,
    },
}

/// Every proof block in pasted text. Tolerates what pasting does to text:
/// CRLF, surrounding chat, Markdown quoting (`> `), tabs and indentation.
pub fn scan(text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut open: Option<ProofBlock> = None;
    for raw in text.lines() {
        let line = clean_pasted_line(raw);
        if let Some(id) = marker_id(&line, BEGIN) {
            if let Some(unfinished) = open.take() {
                found.push(Found::Truncated {
                    lesson_id: unfinished.lesson_id,
                    reason: "a new BEGIN line came before its END line".into(),
                });
            }
            open = Some(ProofBlock {
                lesson_id: id,
                body: Vec::new(),
            });
        } else if let Some(id) = marker_id(&line, END) {
            match open.take() {
                Some(block) if block.lesson_id == id => found.push(Found::Block(block)),
                Some(block) => found.push(Found::Truncated {
                    lesson_id: block.lesson_id,
                    reason: format!("its END line names another lesson ({id})"),
                }),
                None => {}
            }
        } else if let Some(block) = open.as_mut() {
            block.body.push(line);
        }
    }
    if let Some(unfinished) = open {
        found.push(Found::Truncated {
            lesson_id: unfinished.lesson_id,
            reason: "the paste ends before its END line".into(),
        });
    }
    found
}

/// The digest line a run adds to its block: a hash over the lesson id and
/// every other body line (whitespace runs folded, so re-wrapping by a chat
/// tool does not matter). It catches a line edited or removed after the
/// run. It is no signature: anyone with the checker's source can recompute
/// it; `checker grade --rerun` is the real check (docs/instructors.md).
pub fn digest_line(lesson_id: &str, body: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(format!("epoll-course proof v1\n{lesson_id}\n").as_bytes());
    for line in body.iter().filter(|l| !l.starts_with(DIGEST_PREFIX)) {
        let folded: Vec<&str> = line.split_whitespace().collect();
        hasher.update(folded.join(" ").as_bytes());
        hasher.update(b"\n");
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{DIGEST_PREFIX}{hex}")
}

const DIGEST_PREFIX: &str = "digest: ";

impl ProofBlock {
    /// Whether the block's digest line matches its other lines.
    pub fn digest_intact(&self) -> Option<bool> {
        let written = self.body.iter().find(|l| l.starts_with(DIGEST_PREFIX))?;
        Some(*written == digest_line(&self.lesson_id, &self.body))
    }

    /// A `key value` from the header line, e.g. `seed` or `source`.
    pub fn header_value(&self, key: &str) -> Option<String> {
        let header = self.body.first()?;
        header
            .split(" · ")
            .find_map(|part| part.strip_prefix(&format!("{key} ")))
            .map(|v| v.trim().to_string())
    }
}

fn clean_pasted_line(raw: &str) -> String {
    let mut line = raw.trim_end_matches('\r').trim();
    while let Some(rest) = line.strip_prefix('>') {
        line = rest.trim_start();
    }
    line.replace('\t', " ").trim_end().to_string()
}

fn marker_id(line: &str, marker: &str) -> Option<String> {
    let id = line.strip_prefix(marker)?.strip_suffix(DASHES)?;
    Some(id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(body: &[&str]) -> ProofBlock {
        ProofBlock {
            lesson_id: "w02-l16".into(),
            body: body.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn find_blocks(text: &str) -> Vec<ProofBlock> {
        scan(text)
            .into_iter()
            .filter_map(|f| match f {
                Found::Block(b) => Some(b),
                Found::Truncated { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_digest_catches_an_edited_line_but_not_rewrapped_whitespace() {
        let mut body: Vec<String> = vec![
            "checker 0.1.0 · seed 5".into(),
            "stress run 1/3: 50 clients, 5000 frames, 10 failures".into(),
            "result: FAIL w02-l16".into(),
        ];
        body.push(digest_line("w02-l16", &body));
        let block = ProofBlock {
            lesson_id: "w02-l16".into(),
            body: body.clone(),
        };
        assert_eq!(block.digest_intact(), Some(true));
        let mut spaced = block.clone();
        spaced.body[1] = spaced.body[1].replace(' ', "  ");
        assert_eq!(spaced.digest_intact(), Some(true));
        let mut edited = block.clone();
        edited.body[1] = edited.body[1].replace("10 failures", "0 failures");
        assert_eq!(edited.digest_intact(), Some(false));
        let mut removed = block.clone();
        removed.body.remove(1);
        assert_eq!(removed.digest_intact(), Some(false));
        assert_eq!(block.header_value("seed").as_deref(), Some("5"));
    }

    #[test]
    fn a_block_cut_off_before_its_end_is_reported_truncated() {
        let text = "----- BEGIN PROOF w02-l16 -----\nchecker 0.1.0\nstress run 1/3";
        assert!(
            matches!(&scan(text)[..], [Found::Truncated { lesson_id, .. }] if lesson_id == "w02-l16")
        );
    }

    #[test]
    fn rendered_blocks_are_found_again_through_quoting_and_crlf() {
        let original = block(&[
            "checker 0.1.0",
            "stress run 1/3: 50 clients, 5000 frames, 0 failures",
            "result: PASS w02-l16",
        ]);
        let pasted = format!(
            "here is my run:\r\n```\r\n{}```\r\n",
            original
                .render()
                .lines()
                .map(|l| format!(">   {l}\r\n"))
                .collect::<String>()
        );
        assert_eq!(find_blocks(&pasted), vec![original]);
    }

    #[test]
    fn a_fail_verdict_is_not_a_pass_whatever_else_it_says() {
        assert!(!block(&["10 failures", "result: FAIL w02-l16"]).says_pass());
        assert!(!block(&["result: PASS w02-l16", "result: FAIL w02-l16"]).says_pass());
        assert!(!block(&["result: PASS w01-l01"]).says_pass());
        assert!(block(&["result: PASS w02-l16"]).says_pass());
    }
}
