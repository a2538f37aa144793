//! The committed results (docs/mutants/<id>.json), the key that says
//! whether one is still current, and the recorded equivalent mutants
//! (docs/mutants/equivalent.yaml).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::listing::CARGO_MUTANTS_VERSION;
use super::verdict::{Attempt, Verdict};
use crate::course::{Course, Lesson};
use crate::hashing;

/// Where the committed results live, relative to the course root.
pub const RESULTS_DIR: &str = "docs/mutants";
/// cargo-mutants' configuration for the course (error values).
pub const CONFIG_FILE: &str = "docs/mutants/mutants.toml";
pub const EQUIVALENT_FILE: &str = "docs/mutants/equivalent.yaml";
pub const REPORT_FILE: &str = "docs/MUTANTS.md";

pub fn results_dir(course: &Course) -> PathBuf {
    course.root.join(RESULTS_DIR)
}

pub fn result_path(course: &Course, id: &str) -> PathBuf {
    results_dir(course).join(format!("{id}.json"))
}

/// What a lesson's mutation run depends on; a result is current while
/// every part hashes the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    /// The solution crate (hashing::source_hash: Cargo.toml, src/).
    pub solution: String,
    /// The checker's sources (checker/Cargo.toml, checker/src/).
    pub checker: String,
    /// The stress library's sources.
    pub stress: String,
    /// The lesson's course.yaml entry (parsed and re-serialised, so
    /// comments and the other lessons do not count).
    pub course_entry: String,
    /// docs/mutants/mutants.toml.
    pub config: String,
    pub cargo_mutants: String,
}

impl KeyParts {
    /// The key: one hash over every part.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, value) in self.named() {
            hasher.update(format!("{name}={value}\n").as_bytes());
        }
        hex(&hasher.finalize())
    }

    fn named(&self) -> [(&'static str, &str); 6] {
        [
            ("solution", &self.solution),
            ("checker", &self.checker),
            ("stress", &self.stress),
            ("course entry", &self.course_entry),
            ("mutants.toml", &self.config),
            ("cargo-mutants", &self.cargo_mutants),
        ]
    }

    /// The parts that differ from `other`, named for people.
    pub fn changed_since(&self, other: &KeyParts) -> Vec<&'static str> {
        self.named()
            .into_iter()
            .zip(other.named())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, _), _)| name)
            .collect()
    }

    /// The parts for `lesson` as the working tree has them now.
    pub fn now(course: &Course, lesson: &Lesson) -> Result<KeyParts> {
        let config = course.root.join(CONFIG_FILE);
        let config =
            std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
        Ok(KeyParts {
            solution: hashing::source_hash(&course.solution_dir(lesson))?,
            checker: hashing::source_hash(&course.root.join("checker"))?,
            stress: hashing::source_hash(&course.root.join("stress"))?,
            course_entry: course_entry_hash(&course.raw, &lesson.id)?,
            config: hex(&Sha256::digest(&config)),
            cargo_mutants: CARGO_MUTANTS_VERSION.to_string(),
        })
    }
}

/// sha256 of one lesson's entry in course.yaml, parsed and serialised again.
pub fn course_entry_hash(raw: &[u8], id: &str) -> Result<String> {
    let value: serde_yaml::Value =
        serde_yaml::from_slice(raw).context("course.yaml is not YAML")?;
    let entry = value
        .get("lessons")
        .and_then(|l| l.as_sequence())
        .and_then(|lessons| {
            lessons
                .iter()
                .find(|l| l.get("id").and_then(|i| i.as_str()) == Some(id))
        })
        .with_context(|| format!("no lesson {id} in course.yaml"))?;
    let text = serde_yaml::to_string(entry)?;
    Ok(hex(&Sha256::digest(text.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One lesson's run, as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LessonResult {
    pub lesson: String,
    pub key: String,
    pub key_parts: KeyParts,
    /// The `gaps:` the run was limited to.
    pub gaps: Vec<String>,
    /// Gaps cargo-mutants made no mutant of (`new`, an empty body).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps_without_mutants: Vec<String>,
    /// When it ran (RFC 3339, UTC) and how long it took, baseline included.
    pub date: String,
    pub seconds: f64,
    pub baseline: Baseline,
    /// Mutants cargo-mutants listed outside the gaps (not run).
    pub outside_gaps: usize,
    pub mutants: Vec<MutantResult>,
}

/// The unmutated solution's runs, and the bound they set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub seeds: Vec<u64>,
    /// Each checker run of the unmutated copy (all passed).
    pub run_seconds: Vec<f64>,
    /// One rebuild of the copy after a change to its source.
    pub rebuild_seconds: f64,
    /// Each mutant's run is stopped after this long (a timeout).
    pub bound_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutantResult {
    /// cargo-mutants' name (`src/main.rs:130:9: replace ... with ...`).
    pub name: String,
    pub function: String,
    pub genre: String,
    pub seed: u64,
    pub verdict: Verdict,
    /// The step that caught it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub seconds: f64,
    pub attempts: Vec<Attempt>,
    /// The mutation, kept for every mutant that was not caught or unviable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The counts a lesson is reported with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub generated: usize,
    pub caught: usize,
    pub survived: usize,
    pub unviable: usize,
    pub timeout: usize,
    pub error: usize,
}

/// Fewer viable mutants than this and a lesson's score says too little.
pub const MIN_VIABLE_FOR_SCORE: usize = 15;

impl Counts {
    pub fn of(result: &LessonResult) -> Counts {
        let mut counts = Counts {
            generated: result.mutants.len(),
            ..Counts::default()
        };
        for mutant in &result.mutants {
            match mutant.verdict {
                Verdict::Caught => counts.caught += 1,
                Verdict::Survived => counts.survived += 1,
                Verdict::Unviable => counts.unviable += 1,
                Verdict::Timeout => counts.timeout += 1,
                Verdict::Error => counts.error += 1,
            }
        }
        counts
    }

    /// Every mutant that compiled: caught, survived, timed out or errored.
    pub fn viable(&self) -> usize {
        self.generated - self.unviable
    }

    /// caught ÷ viable, or why there is no score.
    pub fn score(&self, gaps: &[String]) -> std::result::Result<f64, String> {
        if gaps.is_empty() {
            return Err("no `gaps:` listed in course.yaml".into());
        }
        if self.viable() < MIN_VIABLE_FOR_SCORE {
            return Err(format!(
                "{} viable mutant{}, fewer than {MIN_VIABLE_FOR_SCORE}",
                self.viable(),
                if self.viable() == 1 { "" } else { "s" }
            ));
        }
        Ok(self.caught as f64 / self.viable() as f64)
    }
}

/// Whether a lesson's committed result matches the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    Current,
    /// The parts that changed since the run.
    Stale(Vec<&'static str>),
    Missing,
    /// The file is there but does not load (or the key cannot be computed).
    Unreadable(String),
}

pub fn load(course: &Course, id: &str) -> Result<Option<LessonResult>> {
    let path = result_path(course, id);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let result =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(result))
}

pub fn save(course: &Course, result: &LessonResult) -> Result<()> {
    let path = result_path(course, &result.lesson);
    std::fs::create_dir_all(results_dir(course))?;
    let text = serde_json::to_string_pretty(result)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The committed result of `lesson`, if any, and whether it is current.
pub fn freshness(course: &Course, lesson: &Lesson) -> (Option<LessonResult>, Freshness) {
    let result = match load(course, &lesson.id) {
        Ok(Some(result)) => result,
        Ok(None) => return (None, Freshness::Missing),
        Err(err) => return (None, Freshness::Unreadable(format!("{err:#}"))),
    };
    let freshness = match KeyParts::now(course, lesson) {
        Ok(now) if now.key() == result.key => Freshness::Current,
        Ok(now) => Freshness::Stale(now.changed_since(&result.key_parts)),
        Err(err) => Freshness::Unreadable(format!("{err:#}")),
    };
    (Some(result), freshness)
}

/// A survivor no correct check can catch, with the reason a reader can
/// verify in the code. It stays a survivor in the score.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Equivalent {
    pub lesson: String,
    pub mutant: String,
    pub reason: String,
}

/// docs/mutants/equivalent.yaml, keyed by (lesson, mutant name).
pub fn equivalents(root: &Path) -> Result<BTreeMap<(String, String), String>> {
    let path = root.join(EQUIVALENT_FILE);
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let list: Option<Vec<Equivalent>> =
        serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let mut map = BTreeMap::new();
    for entry in list.unwrap_or_default() {
        if entry.reason.trim().len() < 20 {
            anyhow::bail!(
                "{}: {} `{}`: the reason must say why no correct check can tell it apart (a sentence a reader can verify)",
                path.display(),
                entry.lesson,
                entry.mutant
            );
        }
        map.insert((entry.lesson, entry.mutant), entry.reason);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            solution: "s".into(),
            checker: "c".into(),
            stress: "t".into(),
            course_entry: "e".into(),
            config: "m".into(),
            cargo_mutants: "27.1.0".into(),
        }
    }

    #[test]
    fn the_key_changes_with_every_part_and_names_what_changed() {
        let base = parts();
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.key());
        let edits: [fn(&mut KeyParts); 6] = [
            |p| p.solution.push('1'),
            |p| p.checker.push('1'),
            |p| p.stress.push('1'),
            |p| p.course_entry.push('1'),
            |p| p.config.push('1'),
            |p| p.cargo_mutants = "27.2.0".into(),
        ];
        for edit in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert!(seen.insert(changed.key()), "{changed:?} kept the key");
            assert_eq!(changed.changed_since(&base).len(), 1);
        }
        assert_eq!(base.key(), parts().key());
        let mut two = base.clone();
        two.checker.push('x');
        two.solution.push('x');
        assert_eq!(two.changed_since(&base), ["solution", "checker"]);
    }

    #[test]
    fn the_course_entry_hash_ignores_comments_and_other_lessons() {
        let a = "lessons:\n  - id: w01-l01\n    title: A\n  - id: w01-l02\n    title: B\n";
        let b = "# a comment\nlessons:\n  - id: w01-l01\n    title: A   # inline\n  - id: w01-l02\n    title: C\n";
        let c = "lessons:\n  - id: w01-l01\n    title: A2\n";
        let hash = |raw: &str, id| course_entry_hash(raw.as_bytes(), id).unwrap();
        assert_eq!(hash(a, "w01-l01"), hash(b, "w01-l01"));
        assert_ne!(hash(a, "w01-l02"), hash(b, "w01-l02"));
        assert_ne!(hash(a, "w01-l01"), hash(c, "w01-l01"));
        assert!(course_entry_hash(a.as_bytes(), "w09-l99").is_err());
    }

    #[test]
    fn the_score_is_caught_over_viable_and_needs_fifteen_viable() {
        let counts = Counts {
            generated: 20,
            caught: 12,
            survived: 2,
            unviable: 4,
            timeout: 1,
            error: 1,
        };
        assert_eq!(counts.viable(), 16);
        assert_eq!(counts.score(&["f".into()]), Ok(12.0 / 16.0));
        assert!(counts.score(&[]).unwrap_err().contains("no `gaps:`"));
        let few = Counts {
            unviable: 6,
            ..counts
        };
        assert!(few.score(&["f".into()]).unwrap_err().contains("14 viable"));
    }
}
