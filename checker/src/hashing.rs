//! The hashes a proof carries: of course.yaml, and of the checked crate's
//! source, so an instructor can tie a pasted proof to a repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// How many hex digits of a hash a proof shows.
pub const SHOWN_HEX_DIGITS: usize = 16;

pub fn short(hex: &str) -> &str {
    &hex[..SHOWN_HEX_DIGITS.min(hex.len())]
}

/// sha256 of course.yaml with line endings normalised to LF.
pub fn course_hash(raw: &[u8]) -> String {
    hex(&Sha256::digest(normalise_newlines(raw)))
}

/// sha256 over the crate's `Cargo.toml`, its `Cargo.lock` if it has one, and
/// every file under `src/`, sorted by path, line endings normalised to LF.
/// Each file contributes its relative path and its length, so moving bytes
/// between files changes the hash.
pub fn source_hash(crate_dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    for name in ["Cargo.toml", "Cargo.lock"] {
        if crate_dir.join(name).is_file() {
            files.push(PathBuf::from(name));
        }
    }
    let mut sources = Vec::new();
    collect_files(crate_dir, Path::new("src"), &mut sources)?;
    sources.sort();
    files.extend(sources);
    let mut hasher = Sha256::new();
    for relative in &files {
        let bytes = std::fs::read(crate_dir.join(relative))
            .with_context(|| format!("reading {}", crate_dir.join(relative).display()))?;
        let content = normalise_newlines(&bytes);
        let name = relative.to_string_lossy().replace('\\', "/");
        hasher.update(format!("{name}\n{}\n", content.len()).as_bytes());
        hasher.update(&content);
    }
    Ok(hex(&hasher.finalize()))
}

fn collect_files(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(relative);
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn normalise_newlines(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_lf_sources_hash_the_same() {
        let lf = tempdir_with("fn main() {}\nlet x = 1;\n");
        let crlf = tempdir_with("fn main() {}\r\nlet x = 1;\r\n");
        assert_eq!(source_hash(&lf).unwrap(), source_hash(&crlf).unwrap());
        let other = tempdir_with("fn main() {}\nlet x = 2;\n");
        assert_ne!(source_hash(&lf).unwrap(), source_hash(&other).unwrap());
    }

    fn tempdir_with(main_rs: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "checker-hash-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        std::fs::write(dir.join("src/main.rs"), main_rs).unwrap();
        dir
    }
}
