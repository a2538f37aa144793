//! The student's progress: which lessons passed or failed, when, and how
//! many hints were shown. Kept in `.checker/progress.json` beside
//! course.yaml (git-ignored). Only a real run of `lessons/<id>` writes it:
//! runs with `--solution`, `--path` or `--exec` never do.
//!
//! The file, documented for the curious:
//! ```json
//! { "lessons": { "w01-l01": { "status": "passed", "at": "2026-11-22T10:00:00Z", "seed": 4821 } },
//!   "hints_shown": { "w01-l01": 2 } }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::course::Course;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LessonStatus {
    Passed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub status: LessonStatus,
    /// RFC 3339, UTC.
    pub at: String,
    pub seed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub lessons: BTreeMap<String, Attempt>,
    #[serde(default)]
    pub hints_shown: BTreeMap<String, usize>,
}

/// `.checker/progress.json` beside course.yaml; `CHECKER_STATE_DIR`
/// moves it (the checker's own tests keep theirs out of the checkout).
fn path(course: &Course) -> PathBuf {
    match std::env::var_os("CHECKER_STATE_DIR") {
        Some(dir) => PathBuf::from(dir).join("progress.json"),
        None => course.root.join(".checker/progress.json"),
    }
}

impl Progress {
    /// The saved progress; an absent or unreadable file is a fresh start.
    pub fn load(course: &Course) -> Progress {
        std::fs::read_to_string(path(course))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, course: &Course) -> Result<()> {
        let file = path(course);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        // Write then rename, so an interrupted write never loses progress.
        let temporary = file.with_extension("json.tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &file)
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(())
    }

    /// Records a run. The newest run wins, so a lesson that passed and then
    /// broke shows as failed until it passes again.
    pub fn record(&mut self, lesson_id: &str, passed: bool, seed: u64) {
        let status = if passed {
            LessonStatus::Passed
        } else {
            LessonStatus::Failed
        };
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        self.lessons
            .insert(lesson_id.to_string(), Attempt { status, at, seed });
    }

    pub fn status(&self, lesson_id: &str) -> Option<&Attempt> {
        self.lessons.get(lesson_id)
    }

    pub fn passed(&self, lesson_id: &str) -> bool {
        self.status(lesson_id).map(|a| a.status) == Some(LessonStatus::Passed)
    }
}
