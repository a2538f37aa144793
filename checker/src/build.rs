//! Building the checked crate with cargo (release), and finding its binary
//! from cargo's JSON messages — so any crate, in the workspace or not, works.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A student's build may be slow on a cold cache, but never hangs the checker.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// How many lines of compiler output a failed build quotes.
const QUOTED_ERROR_LINES: usize = 60;

pub enum BuildOutcome {
    Built {
        binary: PathBuf,
        seconds: f64,
    },
    /// The crate did not compile: the compiler's own words.
    Failed {
        errors: Vec<String>,
        summary: String,
    },
}

/// `cargo build --release` for the crate at `crate_dir`.
pub fn build(crate_dir: &Path) -> Result<BuildOutcome> {
    let manifest = crate_dir.join("Cargo.toml");
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("no crate at {} (missing Cargo.toml)", crate_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;

    // Rendered diagnostics arrive on stderr; read it on its own thread so
    // neither pipe can fill up and stall cargo.
    let mut stderr = child.stderr.take().context("cargo stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().context("cargo stdout")?;
    let stdout_reader = std::thread::spawn(move || {
        let mut binaries = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(binary) = binary_from_message(&line) {
                binaries.push(binary);
            }
        }
        binaries
    });

    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "cargo build did not finish within {} s",
                BUILD_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr_text = stderr_reader.join().unwrap_or_default();
    let binaries = stdout_reader.join().unwrap_or_default();

    if !status.success() {
        let errors = compiler_errors(&stderr_text);
        let summary = stderr_text
            .lines()
            .rev()
            .find(|l| l.contains("could not compile") || l.starts_with("error"))
            .unwrap_or("cargo build failed")
            .trim()
            .to_string();
        return Ok(BuildOutcome::Failed { errors, summary });
    }
    let binary = pick_binary(&manifest, binaries)?;
    Ok(BuildOutcome::Built {
        binary,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A built binary: (its crate's manifest, target name, path).
type Artifact = (PathBuf, String, PathBuf);

fn binary_from_message(line: &str) -> Option<Artifact> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let executable = message.get("executable")?.as_str()?;
    let target = message.get("target")?;
    let is_bin = target
        .get("kind")?
        .as_array()?
        .iter()
        .any(|k| k.as_str() == Some("bin"));
    if !is_bin {
        return None;
    }
    let manifest = message.get("manifest_path")?.as_str()?;
    Some((
        PathBuf::from(manifest),
        target.get("name")?.as_str()?.to_string(),
        PathBuf::from(executable),
    ))
}

/// The crate's own binary: exactly one, or the one named like the package.
fn pick_binary(manifest: &Path, artifacts: Vec<Artifact>) -> Result<PathBuf> {
    let own: Vec<Artifact> = artifacts
        .into_iter()
        .filter(|(m, _, _)| m.canonicalize().ok().as_deref() == Some(manifest))
        .collect();
    match own.len() {
        0 => anyhow::bail!(
            "{} built no binary: the crate needs a src/main.rs (or a [[bin]] target)",
            manifest.display()
        ),
        1 => Ok(own.into_iter().next().expect("one").2),
        _ => {
            let package = manifest
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let names: Vec<String> = own.iter().map(|(_, n, _)| n.clone()).collect();
            own.into_iter()
                .find(|(_, name, _)| *name == package)
                .map(|(_, _, path)| path)
                .with_context(|| {
                    format!(
                        "{} builds several binaries ({}); keep one server binary per lesson crate",
                        manifest.display(),
                        names.join(", ")
                    )
                })
        }
    }
}

/// The interesting part of cargo's stderr: from the first error on, capped.
fn compiler_errors(stderr: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let errors_from = lines
        .iter()
        .position(|l| l.starts_with("error"))
        .unwrap_or(0);
    lines[errors_from..]
        .iter()
        .take(QUOTED_ERROR_LINES)
        .map(|l| l.to_string())
        .collect()
}
