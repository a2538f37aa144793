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

/// Every proof block in pasted text. Tolerates what pasting does to text:
/// CRLF, surrounding chat, Markdown quoting (`> `) and indentation.
pub fn find_blocks(text: &str) -> Vec<ProofBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<ProofBlock> = None;
    for raw in text.lines() {
        let line = clean_pasted_line(raw);
        if let Some(id) = marker_id(&line, BEGIN) {
            open = Some(ProofBlock {
                lesson_id: id,
                body: Vec::new(),
            });
        } else if let Some(id) = marker_id(&line, END) {
            if let Some(block) = open.take() {
                if block.lesson_id == id {
                    blocks.push(block);
                }
            }
        } else if let Some(block) = open.as_mut() {
            block.body.push(line);
        }
    }
    blocks
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
