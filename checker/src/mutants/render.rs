//! docs/MUTANTS.md, rendered from every committed per-lesson result (a
//! lesson never run shows "not run"; a result whose key no longer matches
//! is shown, marked stale).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::listing::CARGO_MUTANTS_VERSION;
use super::results::{Counts, Freshness, LessonResult, MIN_VIABLE_FOR_SCORE};
use super::verdict::{Verdict, TIMING_DEPENDENT_STEPS};

/// One lesson as the report shows it.
pub struct Row {
    pub id: String,
    pub title: String,
    pub result: Option<LessonResult>,
    pub freshness: Freshness,
}

/// Recorded equivalent mutants: (lesson, mutant name) → reason.
pub type Equivalents = BTreeMap<(String, String), String>;

pub fn render(rows: &[Row], equivalents: &Equivalents) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Mutation testing of the lessons' gap functions\n");
    let _ = writeln!(
        w,
        "<!-- Written by `checker mutants` from docs/mutants/*.json: rerun it (or `checker mutants --render`), never edit this file. -->\n"
    );
    let _ = writeln!(
        w,
        "Each lesson's gap functions (the code its student writes: `gaps:` in course.yaml) are mutated by \
         cargo-mutants {CARGO_MUTANTS_VERSION}, and every mutant of them is put through the lesson's own check: \
         `checker <id> --path <mutated copy of the solution> --format json --seed <derived from the mutant's name>`. \
         A mutant the checker fails is **caught**; one it passes **survived**: a bug a student could ship with a \
         passing proof. How to run it and how each verdict is decided: \
         [docs/maintainers.md](maintainers.md#mutation-testing).\n"
    );
    let _ = writeln!(
        w,
        "**Score** = caught ÷ viable, viable = generated − unviable. Timed-out and erred mutants stay in the \
         denominator (they were not caught), and so do survivors recorded as equivalent in \
         `docs/mutants/equivalent.yaml`: the *equiv.* column counts them among the survivors, with their reasons \
         below. A lesson with fewer than {MIN_VIABLE_FOR_SCORE} viable mutants is not scored.\n"
    );

    // The summary table.
    let _ = writeln!(w, "## Summary\n");
    let _ = writeln!(
        w,
        "| lesson | gaps | generated | caught | survived | equiv. | unviable | timeout | error | score | run |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut total = Counts::default();
    let mut total_equivalent = 0;
    let (mut scored_caught, mut scored_viable) = (0, 0);
    let mut unscored: Vec<String> = Vec::new();
    let mut not_run: Vec<String> = Vec::new();
    for row in rows {
        let Some(result) = &row.result else {
            let why = match &row.freshness {
                Freshness::Unreadable(err) => format!("unreadable result: {err}"),
                _ => "not run".to_string(),
            };
            if why == "not run" {
                not_run.push(row.id.clone());
            } else {
                unscored.push(format!("{}: {why}", row.id));
            }
            let _ = writeln!(
                w,
                "| [{id}](#{anchor}) {title} | | | | | | | | | — | {why} |",
                id = row.id,
                anchor = anchor(&row.id, &row.title),
                title = row.title,
            );
            continue;
        };
        let counts = Counts::of(result);
        let equivalent = equivalent_survivors(result, equivalents);
        total = add(total, counts);
        total_equivalent += equivalent;
        let score = match counts.score(&result.gaps) {
            Ok(score) => {
                scored_caught += counts.caught;
                scored_viable += counts.viable();
                percent(score)
            }
            Err(why) => {
                unscored.push(format!("{}: {why}", row.id));
                "not scored".to_string()
            }
        };
        let _ = writeln!(
            w,
            "| [{id}](#{anchor}) {title} | {gaps} | {g} | {c} | {s} | {e} | {u} | {t} | {x} | {score} | {run} |",
            id = row.id,
            anchor = anchor(&row.id, &row.title),
            title = row.title,
            gaps = result.gaps.len(),
            g = counts.generated,
            c = counts.caught,
            s = counts.survived,
            e = equivalent,
            u = counts.unviable,
            t = counts.timeout,
            x = counts.error,
            run = run_cell(result, &row.freshness),
        );
    }
    let overall = if scored_viable > 0 {
        format!(
            "{} (scored lessons)",
            percent(scored_caught as f64 / scored_viable as f64)
        )
    } else {
        "—".to_string()
    };
    let _ = writeln!(
        w,
        "| **all lessons** | | {} | {} | {} | {} | {} | {} | {} | {overall} | |\n",
        total.generated,
        total.caught,
        total.survived,
        total_equivalent,
        total.unviable,
        total.timeout,
        total.error
    );
    if !not_run.is_empty() {
        unscored.push(format!("not run yet: {}", not_run.join(", ")));
    }
    if !unscored.is_empty() {
        let _ = writeln!(w, "Not scored:\n");
        for line in &unscored {
            let _ = writeln!(w, "- {line}");
        }
        let _ = writeln!(w);
    }

    exclusions(w, rows);

    // Stale equivalence records: they match no survivor of a current run.
    let stale_records: Vec<&(String, String)> = equivalents
        .keys()
        .filter(|(lesson, name)| {
            !rows.iter().any(|row| {
                row.id == *lesson
                    && row.result.as_ref().is_some_and(|r| {
                        r.mutants
                            .iter()
                            .any(|m| m.name == *name && m.verdict == Verdict::Survived)
                    })
            })
        })
        .collect();
    if !stale_records.is_empty() {
        let _ = writeln!(
            w,
            "## Equivalence records that match no survivor\n\nThese entries of `docs/mutants/equivalent.yaml` name no surviving mutant of the committed results (the code moved, or the checker now catches it): update or remove them.\n"
        );
        for (lesson, name) in stale_records {
            let _ = writeln!(w, "- {lesson}: `{name}`");
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Lessons\n");
    for row in rows {
        lesson_section(w, row, equivalents);
    }
    out
}

fn exclusions(w: &mut String, rows: &[Row]) {
    let _ = writeln!(w, "## Exclusions and skips\n");
    let _ = writeln!(
        w,
        "Everything not mutated, or mutated but not run, and why:\n\n\
         - **Outside the gaps.** Only mutants inside a lesson's `gaps:` functions run; those cargo-mutants lists \
         elsewhere in the solution (the code the stub already gives the student, `main`, argument parsing) are not \
         run: the *outside gaps* count of each lesson below. Mutants outside any function (constants, statics) \
         belong to no gap.\n\
         - **cargo-mutants' own exclusions** ([mutants.rs](https://mutants.rs/mutants.html)): `#[cfg(test)]` code \
         and test functions, functions marked `#[mutants::skip]` (none in the solutions), `unsafe` functions, \
         methods named `new`, functions with an empty body, the arguments of `with_capacity` calls (its \
         `skip_calls` default), and anything inside a macro call (`println!`, `format!`, `vec!`, ...): cargo-mutants \
         does not mutate macro arguments.\n\
         - **Error values** (`docs/mutants/mutants.toml`): a function returning a `Result` is also replaced by \
         `Err(::std::io::Error::other(\"mutant\"))` and by `Err(::nix::errno::Errno::EIO)`; whichever does not \
         type-check for that function (or a crate without nix) is unviable, and counted so.\n\
         - **Timing-dependent kills** (`{steps}`): a mutant caught at one of these steps is run again with the \
         same seed and counts as caught only if caught again; otherwise the repeat's verdict stands.\n\
         - **Errors** (the checker exited 2, crashed, or printed no JSON result) are rerun once and never count \
         as caught.\n\
         - **No step is left out**: every run is the lesson's own `verify` list, unchanged, stopping at the first \
         failing step as a student's run does.\n",
        steps = TIMING_DEPENDENT_STEPS.join("`, `")
    );
    let quiet: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let result = row.result.as_ref()?;
            (!result.gaps_without_mutants.is_empty()).then(|| {
                format!(
                    "- {}: {} (cargo-mutants generates no mutant of {})",
                    row.id,
                    code_list(&result.gaps_without_mutants),
                    if result.gaps_without_mutants.len() == 1 {
                        "it"
                    } else {
                        "them"
                    }
                )
            })
        })
        .collect();
    if !quiet.is_empty() {
        let _ = writeln!(w, "Gap functions without mutants:\n");
        for line in quiet {
            let _ = writeln!(w, "{line}");
        }
        let _ = writeln!(w);
    }
}

fn lesson_section(w: &mut String, row: &Row, equivalents: &Equivalents) {
    let _ = writeln!(w, "### {} {}\n", row.id, row.title);
    let Some(result) = &row.result else {
        let _ = writeln!(
            w,
            "Not run: `checker mutants {}` writes docs/mutants/{}.json.\n",
            row.id, row.id
        );
        return;
    };
    let counts = Counts::of(result);
    let freshness = match &row.freshness {
        Freshness::Current => "current".to_string(),
        Freshness::Stale(parts) => {
            format!("**stale**: {} changed since this run", parts.join(", "))
        }
        Freshness::Missing => "missing".to_string(),
        Freshness::Unreadable(err) => format!("key not computable: {err}"),
    };
    let _ = writeln!(
        w,
        "Gaps: {}. {} mutants in them ({} outside the gaps not run). Ran {} in {}; each run bounded at {:.0} s \
         (the unmutated solution passed {} runs, longest {:.1} s; a rebuild takes {:.1} s). Result {freshness}.\n",
        if result.gaps.is_empty() {
            "none listed".to_string()
        } else {
            code_list(&result.gaps)
        },
        counts.generated,
        result.outside_gaps,
        date_of(&result.date),
        duration(result.seconds),
        result.baseline.bound_seconds,
        result.baseline.run_seconds.len(),
        result
            .baseline
            .run_seconds
            .iter()
            .cloned()
            .fold(0.0, f64::max),
        result.baseline.rebuild_seconds,
    );
    let mut by_step: BTreeMap<&str, usize> = BTreeMap::new();
    for mutant in &result.mutants {
        if mutant.verdict == Verdict::Caught {
            *by_step
                .entry(mutant.step.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
    }
    if !by_step.is_empty() {
        let mut steps: Vec<(&str, usize)> = by_step.into_iter().collect();
        steps.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = steps.iter().map(|(s, n)| format!("`{s}` {n}")).collect();
        let _ = writeln!(w, "Caught by step: {}.\n", list.join(", "));
    }

    let survivors: Vec<_> = result
        .mutants
        .iter()
        .filter(|m| m.verdict == Verdict::Survived)
        .collect();
    if survivors.is_empty() {
        let _ = writeln!(w, "No survivors.\n");
    } else {
        let _ = writeln!(w, "Survivors ({}):\n", survivors.len());
        for mutant in survivors {
            let key = (result.lesson.clone(), mutant.name.clone());
            let reason = match equivalents.get(&key) {
                Some(reason) => format!("**equivalent** (still counted as survived): {reason}"),
                None => "no reason recorded yet: a bug the lesson's checks miss, unless shown equivalent in docs/mutants/equivalent.yaml".to_string(),
            };
            mutant_entry(w, mutant, &reason);
        }
    }
    for (verdict, title) in [(Verdict::Timeout, "Timed out"), (Verdict::Error, "Errors")] {
        let listed: Vec<_> = result
            .mutants
            .iter()
            .filter(|m| m.verdict == verdict)
            .collect();
        if listed.is_empty() {
            continue;
        }
        let _ = writeln!(w, "{title} ({}):\n", listed.len());
        for mutant in listed {
            let what = mutant
                .attempts
                .last()
                .and_then(|a| a.message.clone())
                .unwrap_or_default();
            mutant_entry(w, mutant, &what);
        }
    }
    let unviable: Vec<_> = result
        .mutants
        .iter()
        .filter(|m| m.verdict == Verdict::Unviable)
        .collect();
    if !unviable.is_empty() {
        let _ = writeln!(
            w,
            "<details><summary>Unviable ({}): they do not compile</summary>\n",
            unviable.len()
        );
        for mutant in unviable {
            let _ = writeln!(w, "- `{}`", mutant.name);
        }
        let _ = writeln!(w, "\n</details>\n");
    }
}

fn mutant_entry(w: &mut String, mutant: &super::results::MutantResult, reason: &str) {
    let _ = writeln!(w, "- `{}` (seed {})  ", mutant.name, mutant.seed);
    let _ = writeln!(w, "  {reason}");
    if let Some(note) = &mutant.note {
        let _ = writeln!(w, "  ({note})");
    }
    if let Some(diff) = &mutant.diff {
        let _ = writeln!(w, "\n  ```diff");
        for line in narrow_diff(diff, DIFF_CONTEXT).lines() {
            let _ = writeln!(w, "  {line}");
        }
        let _ = writeln!(w, "  ```");
    }
    let _ = writeln!(w);
}

/// Context lines the report shows around a mutation (cargo-mutants
/// writes 8; the committed results keep them all).
const DIFF_CONTEXT: usize = 3;

/// `diff` with each hunk cut to `context` lines around its changes, the
/// hunk headers renumbered to match.
fn narrow_diff(diff: &str, context: usize) -> String {
    let mut out = String::new();
    let mut lines = diff.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(header) = line.strip_prefix("@@ -") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let numbers: Vec<usize> = header
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .filter_map(|n| n.parse().ok())
            .collect();
        let mut body: Vec<&str> = Vec::new();
        while let Some(next) = lines.peek() {
            if next.starts_with("@@ ") {
                break;
            }
            body.push(lines.next().unwrap_or_default());
        }
        let changed = |l: &&str| l.starts_with('-') || l.starts_with('+');
        let (Some(first), Some(last), [old_start, _, new_start, _]) = (
            body.iter().position(changed),
            body.iter().rposition(changed),
            numbers.as_slice(),
        ) else {
            // Not a hunk this function understands: keep it whole.
            out.push_str(line);
            out.push('\n');
            for l in body {
                out.push_str(l);
                out.push('\n');
            }
            continue;
        };
        let from = first.saturating_sub(context);
        let to = (last + context + 1).min(body.len());
        let kept = &body[from..to];
        let skipped = &body[..from];
        let old_skipped = skipped.iter().filter(|l| !l.starts_with('+')).count();
        let new_skipped = skipped.iter().filter(|l| !l.starts_with('-')).count();
        let old_len = kept.iter().filter(|l| !l.starts_with('+')).count();
        let new_len = kept.iter().filter(|l| !l.starts_with('-')).count();
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            old_start + old_skipped,
            new_start + new_skipped
        ));
        for l in kept {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn add(a: Counts, b: Counts) -> Counts {
    Counts {
        generated: a.generated + b.generated,
        caught: a.caught + b.caught,
        survived: a.survived + b.survived,
        unviable: a.unviable + b.unviable,
        timeout: a.timeout + b.timeout,
        error: a.error + b.error,
    }
}

fn equivalent_survivors(result: &LessonResult, equivalents: &Equivalents) -> usize {
    result
        .mutants
        .iter()
        .filter(|m| {
            m.verdict == Verdict::Survived
                && equivalents.contains_key(&(result.lesson.clone(), m.name.clone()))
        })
        .count()
}

fn run_cell(result: &LessonResult, freshness: &Freshness) -> String {
    let when = format!("{}, {}", date_of(&result.date), duration(result.seconds));
    match freshness {
        Freshness::Current => when,
        Freshness::Stale(_) => format!("{when}, **stale**"),
        Freshness::Missing | Freshness::Unreadable(_) => format!("{when}, key unknown"),
    }
}

fn percent(score: f64) -> String {
    format!("{:.0} %", score * 100.0)
}

fn code_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn date_of(rfc3339: &str) -> &str {
    rfc3339.split('T').next().unwrap_or(rfc3339)
}

/// `48 s`, `3 min 05 s`.
pub fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    if whole < 60 {
        format!("{whole} s")
    } else {
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// GitHub's anchor for the heading `### <id> <title>`.
fn anchor(id: &str, title: &str) -> String {
    format!("{id} {title}")
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutants::results::{Baseline, KeyParts, MutantResult};
    use crate::mutants::verdict::Attempt;

    fn mutant(name: &str, verdict: Verdict, step: Option<&str>) -> MutantResult {
        MutantResult {
            name: name.into(),
            function: "echo_client".into(),
            genre: "FnValue".into(),
            seed: 7,
            verdict,
            step: step.map(str::to_string),
            note: None,
            seconds: 2.0,
            attempts: vec![Attempt {
                verdict,
                step: step.map(str::to_string),
                ended: "exit 1".into(),
                seconds: 2.0,
                message: Some(format!("{name} went wrong")),
            }],
            diff: matches!(verdict, Verdict::Survived | Verdict::Timeout)
                .then(|| format!("--- src/main.rs\n+++ {name}\n@@ -1 +1 @@\n-a\n+b\n")),
        }
    }

    fn result(mutants: Vec<MutantResult>) -> LessonResult {
        let parts = KeyParts {
            solution: "s".into(),
            checker: "c".into(),
            stress: "t".into(),
            course_entry: "e".into(),
            config: "m".into(),
            cargo_mutants: "27.1.0".into(),
        };
        LessonResult {
            lesson: "w01-l01".into(),
            key: parts.key(),
            key_parts: parts,
            gaps: vec!["echo_client".into(), "accept_loop".into()],
            gaps_without_mutants: vec![],
            date: "2026-12-01T20:00:00Z".into(),
            seconds: 125.0,
            baseline: Baseline {
                seeds: vec![1, 2, 3],
                run_seconds: vec![1.2, 1.4, 1.3],
                rebuild_seconds: 2.0,
                bound_seconds: 60.0,
            },
            outside_gaps: 4,
            mutants,
        }
    }

    #[test]
    fn the_report_counts_scores_and_lists_every_survivor_with_its_diff_and_reason() {
        let mut mutants: Vec<MutantResult> = (0..14)
            .map(|i| mutant(&format!("caught {i}"), Verdict::Caught, Some("echo")))
            .collect();
        mutants.push(mutant("lives on", Verdict::Survived, None));
        mutants.push(mutant("equal twin", Verdict::Survived, None));
        mutants.push(mutant("no compile", Verdict::Unviable, Some("build")));
        mutants.push(mutant("slow", Verdict::Timeout, None));
        let rows = vec![
            Row {
                id: "w01-l01".into(),
                title: "Blocking echo server".into(),
                result: Some(result(mutants)),
                freshness: Freshness::Stale(vec!["checker"]),
            },
            Row {
                id: "w01-l02".into(),
                title: "Length-prefixed frames".into(),
                result: None,
                freshness: Freshness::Missing,
            },
        ];
        let mut equivalents = Equivalents::new();
        equivalents.insert(
            ("w01-l01".into(), "equal twin".into()),
            "both branches print the same line".into(),
        );
        equivalents.insert(
            ("w01-l01".into(), "long gone".into()),
            "no longer generated".into(),
        );
        let text = render(&rows, &equivalents);
        // 18 generated, 1 unviable: 17 viable, 14 caught.
        assert!(
            text.contains("| [w01-l01](#w01-l01-blocking-echo-server) Blocking echo server | 2 | 18 | 14 | 2 | 1 | 1 | 1 | 0 | 82 % | 2026-12-01, 2 min 05 s, **stale** |"),
            "{text}"
        );
        assert!(text.contains("| [w01-l02](#w01-l02-length-prefixed-frames) Length-prefixed frames | | | | | | | | | — | not run |"), "{text}");
        assert!(text.contains("- not run yet: w01-l02"), "{text}");
        assert!(
            text.contains("**stale**: checker changed since this run"),
            "{text}"
        );
        assert!(text.contains("Caught by step: `echo` 14."), "{text}");
        // Every survivor, with its diff and its reason.
        assert!(text.contains("- `lives on` (seed 7)"), "{text}");
        assert!(text.contains("  +++ lives on"), "{text}");
        assert!(text.contains("no reason recorded yet"), "{text}");
        assert!(
            text.contains(
                "**equivalent** (still counted as survived): both branches print the same line"
            ),
            "{text}"
        );
        assert!(text.contains("Timed out (1):"), "{text}");
        assert!(text.contains("- `no compile`"), "{text}");
        // A record that matches no survivor is called out, not dropped.
        assert!(text.contains("- w01-l01: `long gone`"), "{text}");
        assert!(text.contains("4 outside the gaps not run"), "{text}");
    }

    #[test]
    fn a_survivors_diff_is_shown_with_three_lines_of_context() {
        let diff = "--- src/main.rs\n+++ replace * with +\n@@ -10,9 +10,9 @@\n a\n b\n c\n d\n-x * 2\n+x + 2\n e\n f\n g\n h\n";
        assert_eq!(
            narrow_diff(diff, 3),
            "--- src/main.rs\n+++ replace * with +\n@@ -11,7 +11,7 @@\n b\n c\n d\n-x * 2\n+x + 2\n e\n f\n g\n"
        );
        // A deletion-only body keeps its counts straight.
        let body = "@@ -5,4 +5,2 @@\n a\n-b\n-c\n d\n";
        assert_eq!(narrow_diff(body, 0), "@@ -6,2 +6,0 @@\n-b\n-c\n");
    }

    #[test]
    fn a_lesson_with_few_viable_mutants_is_not_scored_and_says_why() {
        let mutants = vec![
            mutant("a", Verdict::Caught, Some("echo")),
            mutant("b", Verdict::Caught, Some("start")),
        ];
        let rows = vec![Row {
            id: "w01-l01".into(),
            title: "Blocking echo server".into(),
            result: Some(result(mutants)),
            freshness: Freshness::Current,
        }];
        let text = render(&rows, &Equivalents::new());
        assert!(
            text.contains("| not scored | 2026-12-01, 2 min 05 s |"),
            "{text}"
        );
        assert!(
            text.contains("- w01-l01: 2 viable mutants, fewer than 15"),
            "{text}"
        );
        assert!(
            text.contains("Caught by step: `echo` 1, `start` 1."),
            "{text}"
        );
        assert!(text.contains("No survivors."), "{text}");
    }
}
