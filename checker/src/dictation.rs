//! The dictation lint: the text a student reads before writing a gap (the
//! stub's comments and `todo!` messages, the README's Concept, Task and
//! Pitfalls, every hint but the last) must not hand them the gap's code.
//!
//! Two rules, both against the solution code the stub leaves out:
//! - no run of three identifiers that runs in that code too (punctuation and
//!   numbers between them do not matter: `mpsc::channel::<Job>()` is
//!   `mpsc channel Job`);
//! - no backticked expression found in that code that is a path, a method
//!   call or a statement (`EpollFlags::EPOLLET`, `windows(4).position(..)`,
//!   `break Ok(())`). A plain value stays allowed, because a contract must
//!   name outcomes: `Ok(None)`, `WouldBlock`.

use std::collections::HashSet;

/// Where a piece of prose comes from (`README.md, Task`) and its text.
pub struct Prose<'a> {
    pub place: String,
    pub text: &'a str,
}

/// Every place where `prose` dictates `hidden` code, one line each.
pub fn findings(hidden: &str, prose: &[Prose]) -> Vec<String> {
    let code = strip_comments(hidden);
    let code_words = identifiers(&strip_strings(&code));
    let code_runs: HashSet<[&str; 3]> = code_words
        .windows(3)
        .map(|w| [w[0].as_str(), w[1].as_str(), w[2].as_str()])
        .collect();
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = Vec::new();
    for piece in prose {
        let words = identifiers(piece.text);
        let mut seen = HashSet::new();
        for w in words.windows(3) {
            let run = [w[0].as_str(), w[1].as_str(), w[2].as_str()];
            if code_runs.contains(&run) && seen.insert(run) {
                found.push(format!(
                    "{}: \"{}\" runs in the gap's code: the text dictates it",
                    piece.place,
                    run.join(" ")
                ));
            }
        }
        for span in backticked(piece.text) {
            if is_expression(span) && occurs_in(span, &squeezed) {
                found.push(format!(
                    "{}: `{span}` is the gap's code: say what must hold, not what to write",
                    piece.place
                ));
            }
        }
    }
    found
}

/// The stub's comments and `todo!` messages, the prose a student reads in
/// the code.
pub fn code_prose(stub: &str) -> String {
    let mut prose = String::new();
    for line in stub.lines() {
        if let Some(at) = comment_start(line) {
            prose.push_str(&line[at..]);
            prose.push('\n');
        }
        if let Some(at) = line.find("todo!(") {
            prose.push_str(&line[at..]);
            prose.push('\n');
        }
    }
    prose
}

/// The byte offset of a `//` comment outside any string literal.
fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn strip_comments(code: &str) -> String {
    code.lines()
        .map(|l| comment_start(l).map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Code with its string and char literals blanked (log messages are not the
/// code a student is told).
fn strip_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push(' ');
            }
            '\'' => {
                // A char literal ('x', '\n'), else a lifetime ('a).
                let rest: String = chars.clone().take(3).collect();
                let literal = rest.starts_with('\\') || rest.chars().nth(1) == Some('\'');
                if literal {
                    while let Some(d) = chars.next() {
                        match d {
                            '\\' => {
                                chars.next();
                            }
                            '\'' => break,
                            _ => {}
                        }
                    }
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The identifiers and keywords of `text`, in order; numbers are skipped.
fn identifiers(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, words: &mut Vec<String>| {
        if current
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && current != "_"
        {
            words.push(std::mem::take(current));
        } else {
            current.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            current.push(c);
        } else {
            flush(&mut current, &mut words);
        }
    }
    flush(&mut current, &mut words);
    words
}

/// The `code spans` of markdown or a comment.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`')
        .enumerate()
        .filter(|(i, s)| i % 2 == 1 && !s.trim().is_empty())
        .map(|(_, s)| s.trim())
        .collect()
}

const STATEMENT_KEYWORDS: [&str; 9] = [
    "break", "continue", "return", "let", "match", "if", "while", "loop", "for",
];

/// A path, a method call or a statement of two identifiers or more; a plain
/// value (`Ok(None)`) is an outcome a contract names.
fn is_expression(span: &str) -> bool {
    let words = identifiers(span);
    if words.len() < 2 {
        return false;
    }
    // `.name`, but not a range's `..n`.
    let method_call = span.char_indices().any(|(i, c)| {
        c == '.'
            && !span[..i].ends_with('.')
            && span[i + 1..].starts_with(|d: char| d.is_ascii_alphabetic())
    });
    span.contains("::") || method_call || STATEMENT_KEYWORDS.contains(&words[0].as_str())
}

/// Whether `span` (with `..` or `…` standing for anything) is in the code.
fn occurs_in(span: &str, squeezed_code: &str) -> bool {
    let span: String = span.chars().filter(|c| !c.is_whitespace()).collect();
    let span = span.replace('…', "..");
    let mut rest = squeezed_code;
    for piece in span.split("..").filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dictates(code: &str, text: &str) -> bool {
        !findings(
            code,
            &[Prose {
                place: "p".into(),
                text,
            }],
        )
        .is_empty()
    }

    /// The five TODOs the trials copied (issue 14): each is caught.
    #[test]
    fn the_trials_dictations_are_caught() {
        let cases = [
            (
                "if n == 0 {\n    break Ok(());\n}\n",
                "TODO: on end of file `break Ok(())`.",
            ),
            (
                "let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;\n",
                "register with `EpollFlags::EPOLLET` as well",
            ),
            (
                "let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;\n",
                "open it with SignalFd::with_flags(&mask, SFD_NONBLOCK | SFD_CLOEXEC)",
            ),
            (
                "let end = buf.windows(4).position(|w| w == b\"\\r\\n\\r\\n\")?;\n",
                "find the blank line with `windows(4).position(..)`",
            ),
            (
                "let (sender, receiver) = mpsc::channel::<Job>();\nlet receiver = Arc::new(Mutex::new(receiver));\n",
                "make a queue with `mpsc::channel::<Job>()`",
            ),
            (
                "let (sender, receiver) = mpsc::channel::<Job>();\nlet receiver = Arc::new(Mutex::new(receiver));\n",
                "share it: Arc::new(Mutex::new(receiver))",
            ),
        ];
        for (code, text) in cases {
            assert!(dictates(code, text), "not caught: {text}");
        }
    }

    #[test]
    fn contracts_may_name_outcomes_and_ideas() {
        let code = "match stream.read(&mut buf) {\n    Ok(0) => return Ok(None),\n    Err(e) if e.kind() == ErrorKind::WouldBlock => break,\n}\n";
        for text in [
            "`Ok(0)` means the peer closed its side: the result is `Ok(None)`.",
            "a read that fails with `WouldBlock` has drained the socket",
            "read until the kernel has nothing more, then stop",
            "`Ok(Some(frame))` once a whole frame is in",
            "echo `&buf[..n]`, the bytes this read returned",
        ] {
            assert!(!dictates(code, text), "flagged: {text}");
        }
    }

    #[test]
    fn a_line_of_code_in_words_is_dictation() {
        let code = "Ok(0) => return Ok(None),\n";
        assert!(dictates(code, "on end of file, return `Ok(None)`"));
    }

    #[test]
    fn strings_and_comments_in_the_code_are_not_its_code() {
        let code =
            "eprintln!(\"closing the idle client\"); // close the idle client now\nlet c = 'x';\n";
        assert!(!dictates(code, "closing the idle client is the lesson"));
        assert!(!dictates(code, "close the idle client"));
    }

    #[test]
    fn code_prose_is_comments_and_todo_messages() {
        let stub =
            "let url = \"http://x\"; // why\nfn f() {\n    todo!(\"gap `f`: write it\")\n}\n";
        assert_eq!(code_prose(stub), "// why\ntodo!(\"gap `f`: write it\")\n");
    }
}
