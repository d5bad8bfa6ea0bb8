//! Executing a recipe by its protocol: "fixed" executes the plan; "tune_then_test" executes the
//! tuning runs, chooses a setting per method × task from their records, then executes the final
//! runs of the choices. Both stages are ordinary runs in the runs folder, so a rerun skips what
//! finished in either stage and the choice is remade from the same records (the same choice).

use super::execute::{Builder, Options, Summary, execute};
use super::progress::Progress;
use crate::plan::{RunSpec, plan, plan_final};
use crate::recipe::{Protocol, Recipe};
use crate::select::{Choices, Outcome, select};
use crate::store::{self, RECORD_FILE};

/// Executes `recipe` into `options.runs_dir` by its protocol; the summary counts both stages.
pub fn execute_protocol(
    recipe: &Recipe,
    options: &Options,
    build: Builder<'_>,
    progress: &mut dyn Progress,
) -> Summary {
    let first = plan(recipe);
    let mut summary = execute(recipe, &first, options, build, progress);
    if recipe.protocol == Protocol::Fixed || summary.interrupted {
        return summary;
    }
    let last = plan_final(recipe, &choices(&first, options));
    let second = execute(recipe, &last, options, build, progress);
    summary.finished += second.finished;
    summary.skipped += second.skipped;
    summary.failed.extend(second.failed);
    summary.interrupted = second.interrupted;
    summary
}

/// The choices the finished tuning runs in the runs folder make.
pub fn choices(tuning: &[RunSpec], options: &Options) -> Choices {
    select(tuning, |id| {
        let record = store::read_record(&options.runs_dir.join(id).join(RECORD_FILE)).ok();
        Outcome::of(record.as_ref())
    })
}
