//! course.yaml: loading, and every check that makes it sound. Errors name
//! the file, the lesson and the field, so a maintainer can fix them blind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;

use crate::checks::{Step, StepKind};

/// The file as written; see `Course` for the checked form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseFile {
    course: CourseInfo,
    lessons: Vec<Lesson>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CourseInfo {
    pub title: String,
    pub version: String,
}

/// How a lesson's stub relates to its solution (checked by `validate`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StubStyle {
    /// The solution with `// TODO:` gaps and `todo!()` bodies.
    #[default]
    Gaps,
    /// A complete-looking program with planted bugs to find (w02-l16).
    BugHunt,
    /// A skeleton of a different program (w02-l15's client).
    Skeleton,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Lesson {
    pub id: String,
    pub title: String,
    pub order: u32,
    pub part: String,
    pub duration_minutes: u32,
    pub xp: u32,
    pub kind: String,
    /// The student's crate, relative to course.yaml.
    pub stub: PathBuf,
    /// The reference solution crate, relative to course.yaml.
    pub solution: PathBuf,
    #[serde(default)]
    pub stub_style: StubStyle,
    /// The functions the student writes (`fn_name` or `Type::method`): the
    /// scope of `checker mutants` (docs/MUTANTS.md).
    #[serde(default)]
    pub gaps: Vec<String>,
    /// The fewest code lines the gaps may hold (default 25, never under 12),
    /// with the reason a lesson's idea is smaller.
    #[serde(default)]
    pub floor: Option<Floor>,
    /// The mistakes a student can make in the gaps, each planted by a fixture
    /// server that `checker validate` runs (rendered into the README).
    #[serde(default)]
    pub pitfalls: Vec<Pitfall>,
    /// Set while a lesson still has its old fill-in-the-blank stub: its
    /// floor and dictation findings are warnings, not problems, until the
    /// rewrite lands (the reason names the issue).
    #[serde(default)]
    pub rewrite_pending: Option<String>,
    /// Flags every server start of this lesson gets (after `--port 0`).
    #[serde(default)]
    pub server_args: Vec<String>,
    pub hints: Vec<String>,
    /// The hints that apply to a diagnosed cause, by cause id
    /// (`pool.drops-unserved: 3`): a failure with that cause quotes these
    /// instead of its step's.
    #[serde(default)]
    pub causes: std::collections::BTreeMap<String, crate::checks::HintRefs>,
    pub verify: Vec<Step>,
    pub proof: Proof,
}

/// A mistake a student can make in a gap, shown failing by a fixture.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Pitfall {
    /// The gap function it is made in (one of `gaps:`).
    pub gap: String,
    /// The mistake and its consequence, in the student's terms (one line of
    /// the README's Pitfalls).
    pub text: String,
    /// The fixture that makes it: `<binary in src/bin> <bug>`, run as
    /// `<binary> --bug <bug>`.
    pub fixture: String,
    /// The step it fails, and the cause id that failure prints.
    pub step: String,
    pub cause: String,
}

impl Pitfall {
    /// `(binary, bug)` of `fixture`.
    pub fn fixture_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.fixture.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(binary), Some(bug), None) => Some((binary, bug)),
            _ => None,
        }
    }
}

/// A lesson's own floor for its gaps' code lines (see `Lesson::floor`).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    pub lines: usize,
    pub reason: String,
}

/// Code lines a lesson's gaps hold at least, unless it says otherwise.
pub const DEFAULT_FLOOR: usize = 25;
/// No lesson's own floor is lower (the bug hunt has none).
pub const LOWEST_FLOOR: usize = 12;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    #[serde(rename = "type")]
    pub kind: String,
    pub instructions: String,
    pub regex_patterns: Vec<String>,
}

/// A loaded, validated course.
#[derive(Debug)]
pub struct Course {
    pub path: PathBuf,
    pub root: PathBuf,
    pub info: CourseInfo,
    pub lessons: Vec<Lesson>,
    /// The raw bytes, for the course hash in proofs.
    pub raw: Vec<u8>,
}

impl Course {
    pub fn lesson(&self, id: &str) -> Option<&Lesson> {
        self.lessons.iter().find(|l| l.id == id)
    }

    pub fn lesson_or_suggest(&self, id: &str) -> Result<&Lesson> {
        if let Some(lesson) = self.lesson(id) {
            return Ok(lesson);
        }
        let ids: Vec<&str> = self.lessons.iter().map(|l| l.id.as_str()).collect();
        bail!(
            "no lesson `{id}` in {}; lessons are: {}",
            self.path.display(),
            ids.join(", ")
        )
    }

    pub fn stub_dir(&self, lesson: &Lesson) -> PathBuf {
        self.root.join(&lesson.stub)
    }

    pub fn solution_dir(&self, lesson: &Lesson) -> PathBuf {
        self.root.join(&lesson.solution)
    }

    pub fn readme_path(&self, lesson: &Lesson) -> PathBuf {
        self.stub_dir(lesson).join("README.md")
    }
}

impl Lesson {
    /// The code lines this lesson's gaps must hold; `None` for the bug hunt,
    /// whose student changes lines rather than writing them.
    pub fn floor_lines(&self) -> Option<usize> {
        match (&self.floor, self.stub_style) {
            (_, StubStyle::BugHunt) => None,
            (Some(floor), _) => Some(floor.lines),
            (None, _) => Some(DEFAULT_FLOOR),
        }
    }

    /// The compiled proof regexes (they compiled at load time).
    pub fn proof_regexes(&self) -> Vec<Regex> {
        self.proof
            .regex_patterns
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .collect()
    }
}

/// Finds course.yaml: from the current directory upwards, else the one this
/// checker was built from.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            let candidate = dir.join("course.yaml");
            if candidate.is_file() {
                return Ok(candidate);
            }
            if !dir.pop() {
                break;
            }
        }
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../course.yaml");
    if built_from.is_file() {
        return Ok(built_from);
    }
    bail!("no course.yaml in this directory or above it; run the checker inside the course repository or pass --course FILE")
}

pub fn load(path: &Path) -> Result<Course> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let file = parse(path, &text)?;
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let course = Course {
        path: path.to_path_buf(),
        root,
        info: file.course,
        lessons: file.lessons,
        raw,
    };
    check_sound(&course)?;
    Ok(course)
}

/// Parses the YAML, turning serde's path (`lessons[3].verify[1].stress.clients`)
/// into `lesson w02-l16, field verify[1].stress.clients`.
fn parse(path: &Path, text: &str) -> Result<CourseFile> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, CourseFile>(deserializer) {
        Ok(file) => Ok(file),
        Err(err) => {
            let field_path = err.path().to_string();
            let inner = err.into_inner();
            let (lesson, field) = split_lesson_path(text, &field_path);
            match lesson {
                Some(lesson) => bail!(
                    "{}: lesson {lesson}, field `{field}`: {inner}",
                    path.display()
                ),
                None => bail!("{}: field `{field}`: {inner}", path.display()),
            }
        }
    }
}

/// `lessons[3].verify[1]` → (`w02-l16 (lessons[3])`, `verify[1]`), reading the
/// id of lesson 3 from the raw YAML (the typed parse failed).
fn split_lesson_path(text: &str, field_path: &str) -> (Option<String>, String) {
    let Some(rest) = field_path.strip_prefix("lessons[") else {
        return (None, field_path.to_string());
    };
    let Some((index, field)) = rest.split_once(']') else {
        return (None, field_path.to_string());
    };
    let field = field.trim_start_matches('.').to_string();
    let field = if field.is_empty() {
        "(the entry itself)".to_string()
    } else {
        field
    };
    let id = index.parse::<usize>().ok().and_then(|i| {
        let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        value
            .get("lessons")?
            .get(i)?
            .get("id")?
            .as_str()
            .map(str::to_string)
    });
    let name = match id {
        Some(id) => format!("{id} (lessons[{index}])"),
        None => format!("lessons[{index}]"),
    };
    (Some(name), field)
}

/// Everything serde cannot check: shapes, uniqueness, order, folders, regexes.
fn check_sound(course: &Course) -> Result<()> {
    let file = course.path.display();
    let id_shape = Regex::new(r"^w(\d\d)-l(\d\d)$").expect("static regex");
    let gap_shape = Regex::new(r"^[A-Za-z_]\w*(::[A-Za-z_]\w*)*$").expect("static regex");
    let mut seen = HashSet::new();
    let mut previous_order = 0;
    for lesson in &course.lessons {
        let at = |field: &str| format!("{file}: lesson {}, field `{field}`", lesson.id);
        let Some(caps) = id_shape.captures(&lesson.id) else {
            bail!("{}: must look like w02-l16 (wNN-lNN)", at("id"));
        };
        if !seen.insert(lesson.id.clone()) {
            bail!("{}: the id is used by an earlier lesson too", at("id"));
        }
        let number: u32 = caps[2].parse().expect("two digits");
        if lesson.order != number {
            bail!(
                "{}: is {} but the id says lesson {number}; order is the l-number",
                at("order"),
                lesson.order
            );
        }
        if lesson.order <= previous_order {
            bail!("{}: lessons must be listed in order", at("order"));
        }
        previous_order = lesson.order;
        if lesson.part != format!("w{}", &caps[1]) {
            bail!(
                "{}: is `{}` but the id says w{}",
                at("part"),
                lesson.part,
                &caps[1]
            );
        }
        if lesson.title.trim().is_empty() {
            bail!("{}: is empty", at("title"));
        }
        if lesson.kind != "lesson" {
            bail!(
                "{}: is `{}`; only `lesson` is known",
                at("kind"),
                lesson.kind
            );
        }
        if lesson.proof.kind != "paste" {
            bail!(
                "{}: is `{}`; only `paste` is known",
                at("proof.type"),
                lesson.proof.kind
            );
        }
        for (field, dir) in [("stub", &lesson.stub), ("solution", &lesson.solution)] {
            let full = course.root.join(dir);
            if !full.join("Cargo.toml").is_file() {
                bail!("{}: {} has no Cargo.toml", at(field), full.display());
            }
        }
        if !course.readme_path(lesson).is_file() {
            bail!(
                "{}: {} is missing",
                at("stub"),
                course.readme_path(lesson).display()
            );
        }
        if lesson.proof.regex_patterns.is_empty() {
            bail!("{}: needs at least one pattern", at("proof.regex_patterns"));
        }
        for (i, pattern) in lesson.proof.regex_patterns.iter().enumerate() {
            if let Err(err) = Regex::new(pattern) {
                bail!(
                    "{}: does not compile: {err}",
                    at(&format!("proof.regex_patterns[{i}]"))
                );
            }
        }
        if lesson.hints.is_empty() {
            bail!("{}: needs at least one hint", at("hints"));
        }
        let mut gaps_seen = HashSet::new();
        for (i, gap) in lesson.gaps.iter().enumerate() {
            if !gap_shape.is_match(gap) {
                bail!(
                    "{}: `{gap}` is not a function name (`fn_name` or `Type::method`)",
                    at(&format!("gaps[{i}]"))
                );
            }
            if !gaps_seen.insert(gap) {
                bail!("{}: `{gap}` is listed twice", at(&format!("gaps[{i}]")));
            }
        }
        if let Some(floor) = &lesson.floor {
            if floor.lines < LOWEST_FLOOR {
                bail!(
                    "{}: {} is under {LOWEST_FLOOR}, the lowest floor a lesson may set",
                    at("floor.lines"),
                    floor.lines
                );
            }
            if floor.reason.trim().is_empty() {
                bail!(
                    "{}: say why this lesson's idea is smaller",
                    at("floor.reason")
                );
            }
        }
        for (i, pitfall) in lesson.pitfalls.iter().enumerate() {
            let at = |field: &str| at(&format!("pitfalls[{i}].{field}"));
            if !lesson.gaps.contains(&pitfall.gap) {
                bail!(
                    "{}: `{}` is not one of the lesson's gaps ({})",
                    at("gap"),
                    pitfall.gap,
                    lesson.gaps.join(", ")
                );
            }
            if pitfall.fixture_parts().is_none() {
                bail!(
                    "{}: `{}` must be `<fixture binary> <bug>`",
                    at("fixture"),
                    pitfall.fixture
                );
            }
            if !lesson.verify.iter().any(|s| s.name() == pitfall.step) {
                bail!(
                    "{}: `{}` is not a step of this lesson's verify list",
                    at("step"),
                    pitfall.step
                );
            }
            if !crate::checks::causes::CAUSE_IDS.contains(&pitfall.cause.as_str()) {
                bail!(
                    "{}: `{}` is not a registered cause id (checker/src/checks/causes.rs)",
                    at("cause"),
                    pitfall.cause
                );
            }
            if pitfall.text.trim().is_empty() {
                bail!("{}: say what goes wrong", at("text"));
            }
        }
        if matches!(&lesson.rewrite_pending, Some(reason) if reason.trim().is_empty()) {
            bail!("{}: name what the rewrite waits for", at("rewrite_pending"));
        }
        if !matches!(lesson.verify.first(), Some(step) if matches!(step.kind, StepKind::Build(_))) {
            bail!("{}: must start with `build`", at("verify"));
        }
        if lesson.verify.len() < 2 {
            bail!("{}: needs at least one step after `build`", at("verify"));
        }
        for (cause, refs) in &lesson.causes {
            if !crate::checks::causes::CAUSE_IDS.contains(&cause.as_str()) {
                bail!(
                    "{}: no step gives the cause `{cause}` (the ids are listed in checker/src/checks/causes.rs)",
                    at(&format!("causes.{cause}"))
                );
            }
            for number in refs.clone().into_vec() {
                if number == 0 || number > lesson.hints.len() {
                    bail!(
                        "{}: hint {number} does not exist; the lesson has hints 1 to {}",
                        at(&format!("causes.{cause}")),
                        lesson.hints.len()
                    );
                }
            }
        }
        for (i, step) in lesson.verify.iter().enumerate() {
            for &number in &step.hints {
                if number == 0 || number > lesson.hints.len() {
                    bail!(
                        "{}: hint {number} does not exist; the lesson has hints 1 to {}",
                        at(&format!("verify[{i}].hint")),
                        lesson.hints.len()
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_in_a_step_names_the_lesson_and_the_field() {
        let yaml = "course: {title: t, version: '1'}\nlessons:\n  - id: w01-l01\n    title: x\n    order: 1\n    part: w01\n    duration_minutes: 1\n    xp: 1\n    kind: lesson\n    stub: a\n    solution: b\n    hints: [h]\n    verify:\n      - build\n      - stress: {clientz: 3}\n    proof: {type: paste, instructions: i, regex_patterns: [x]}\n";
        let err = parse(Path::new("course.yaml"), yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("course.yaml"), "{err}");
        assert!(err.contains("lesson w01-l01"), "{err}");
        assert!(err.contains("verify[1].stress.clientz"), "{err}");
    }
}
