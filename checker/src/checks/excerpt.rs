//! Showing bytes to people: what was sent and what came back, around the
//! first byte where they differ, in hex with an ASCII column.

/// Bytes shown before and after the first difference.
const CONTEXT: usize = 8;

pub fn first_difference(expected: &[u8], actual: &[u8]) -> Option<usize> {
    let common = expected.len().min(actual.len());
    (0..common)
        .find(|&i| expected[i] != actual[i])
        .or((expected.len() != actual.len()).then_some(common))
}

/// Evidence lines comparing an expected echo with the actual one.
pub fn compare(expected: &[u8], actual: &[u8]) -> Vec<String> {
    let Some(at) = first_difference(expected, actual) else {
        return vec![format!("{} bytes, identical", expected.len())];
    };
    let from = at.saturating_sub(CONTEXT);
    let mut lines = vec![format!(
        "expected {} bytes, got {} bytes; first difference at byte {at}",
        expected.len(),
        actual.len()
    )];
    lines.push(format!(
        "expected @{from}: {}",
        hex_ascii(window(expected, from))
    ));
    lines.push(format!(
        "actual   @{from}: {}",
        hex_ascii(window(actual, from))
    ));
    lines.push(format!(
        "{:>w$}^^ byte {at}",
        "",
        w = 12 + digits(from) + 3 * (at - from)
    ));
    lines
}

fn window(bytes: &[u8], from: usize) -> &[u8] {
    let from = from.min(bytes.len());
    &bytes[from..(from + 2 * CONTEXT).min(bytes.len())]
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// `68 65 6c 6c 6f  |hello|`
pub fn hex_ascii(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(nothing)".into();
    }
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let ascii: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{} |{ascii}|", hex.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_differing_byte_is_found_and_marked() {
        assert_eq!(first_difference(b"hello", b"hello"), None);
        assert_eq!(first_difference(b"hello", b"help!"), Some(3));
        assert_eq!(first_difference(b"hello", b"hell"), Some(4));
        let lines = compare(b"hello world", b"hello wOrld");
        assert!(lines[0].contains("first difference at byte 7"), "{lines:?}");
        let marker_column = lines[3].find('^').unwrap();
        let actual_hex_start = lines[2].find(": ").unwrap() + 2;
        assert_eq!(marker_column, actual_hex_start + 3 * 7, "{lines:#?}");
    }
}
