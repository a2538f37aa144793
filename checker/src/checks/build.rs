//! `build`: compile the checked crate in release mode. Compiler errors are
//! the student's to fix (a failed step); a missing cargo is the tool's.

use anyhow::Result;
use serde::Deserialize;

use super::{Check, Ctx, Subject};
use crate::build::{build, BuildOutcome};
use crate::report::StepOutcome;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {}

impl Check for Build {
    fn summary(&self) -> String {
        "cargo build --release".into()
    }

    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        let dir = match &ctx.subject {
            Subject::Crate { dir, .. } => dir.clone(),
            Subject::Exec { .. } => {
                return Ok(StepOutcome::skip(
                    "nothing to build: --exec runs a ready command",
                ))
            }
        };
        ctx.log.detail(format!("building {}", dir.display()));
        match build(&dir)? {
            BuildOutcome::Built { binary, seconds } => {
                let message = format!("built {} in {seconds:.1} s", binary.display());
                ctx.binary = Some(binary);
                Ok(StepOutcome::pass(message).figure("seconds", format!("{seconds:.1}")))
            }
            BuildOutcome::Failed { errors, summary } => Ok(StepOutcome::fail(format!(
                "the crate does not compile: {summary}"
            ))
            .cause("a compiler error (quoted below): fix it, then run the checker again")
            .evidence(errors)),
        }
    }
}
