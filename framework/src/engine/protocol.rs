//! Executing a recipe by its protocol: "fixed" executes the plan; "tune_then_test" executes the
//! tuning runs, chooses a setting per method × task from their records, then executes the final
//! runs of the choices. Both stages are ordinary runs in the runs folder, so a rerun skips what
//! finished in either stage and the choice is remade from the same records (the same choice).

use std::path::Path;

use super::execute::{Builder, Options, Summary, execute};
use super::progress::Progress;
use crate::plan::{RunSpec, plan, plan_final, shard};
use crate::recipe::{Protocol, Recipe};
use crate::select::{Choices, GroupKey, Outcome, select};
use crate::store::{self, RECORD_FILE};

/// Which stages of `tune_then_test` to execute (under "fixed" there is one stage, executed by
/// `Both` and `Tune`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stages {
    /// The tuning runs, then the final runs of every group whose tuning has ended.
    #[default]
    Both,
    /// The tuning runs only (a Slurm job array's first array).
    Tune,
    /// The final runs of every group whose tuning has ended, only.
    Final,
}

/// A shard: (index, count).
pub type Shard = (usize, usize);

/// The runs of a recipe as far as its runs folder decides them now.
#[derive(Debug, Clone)]
pub struct Stage2 {
    /// The final runs of every group whose tuning has ended with a choice.
    pub finals: Vec<RunSpec>,
    /// Groups still tuning (some tuning run has no record yet).
    pub tuning: Vec<GroupKey>,
    /// Groups whose tuning ended without a choice: every setting has a failed seed.
    pub unchosen: Vec<GroupKey>,
}

/// The second stage of `recipe` as the records in `runs_dir` decide it (empty under "fixed").
pub fn stage2(recipe: &Recipe, runs_dir: &Path) -> Stage2 {
    if recipe.protocol == Protocol::Fixed {
        return Stage2 { finals: vec![], tuning: vec![], unchosen: vec![] };
    }
    let first = plan(recipe);
    let outcome = outcome_in(runs_dir);
    let chosen = select(&first, &outcome);
    let (mut tuning, mut unchosen) = (Vec::new(), Vec::new());
    for run in &first {
        let key = GroupKey::of(run);
        if chosen.contains_key(&key) || tuning.contains(&key) || unchosen.contains(&key) {
            continue;
        }
        let group = first.iter().filter(|r| GroupKey::of(r) == key);
        let pending = group.clone().any(|r| r.id.as_deref().is_none_or(|id| outcome(id) == Outcome::Pending));
        match pending {
            true => tuning.push(key),
            false => unchosen.push(key),
        }
    }
    Stage2 { finals: plan_final(recipe, &chosen), tuning, unchosen }
}

/// The choices the finished tuning runs in `runs_dir` make.
pub fn choices(tuning: &[RunSpec], runs_dir: &Path) -> Choices {
    select(tuning, outcome_in(runs_dir))
}

/// A run's outcome by its record in `runs_dir`.
fn outcome_in(runs_dir: &Path) -> impl Fn(&str) -> Outcome + '_ {
    move |id| Outcome::of(store::read_record(&runs_dir.join(id).join(RECORD_FILE)).ok().as_ref())
}

/// The runs whose results a report of `recipe` shows: the plan under "fixed"; the final runs
/// decided so far under "tune_then_test" (tuning runs score on val200, not on the test split).
pub fn reported_runs(recipe: &Recipe, runs_dir: &Path) -> Vec<RunSpec> {
    match recipe.protocol {
        Protocol::Fixed => plan(recipe),
        Protocol::TuneThenTest => stage2(recipe, runs_dir).finals,
    }
}

/// What [`execute_protocol`] did.
#[derive(Debug, Default)]
pub struct Executed {
    /// Both stages' counts together.
    pub summary: Summary,
    /// Runs it was given in both stages (this shard's).
    pub runs: usize,
    /// The second stage as the records decided it at the end (`None` under "fixed").
    pub stage2: Option<Stage2>,
}

/// Executes `recipe` into `options.runs_dir` by its protocol, shard `shard` of each stage.
pub fn execute_protocol(
    recipe: &Recipe,
    stages: Stages,
    shard_of: Option<Shard>,
    options: &Options,
    build: Builder<'_>,
    progress: &mut dyn Progress,
) -> Executed {
    let sharded = |runs: Vec<RunSpec>| match shard_of {
        Some((index, count)) => shard(runs, index, count),
        None => runs,
    };
    let mut out = Executed::default();
    if stages != Stages::Final || recipe.protocol == Protocol::Fixed {
        let first = sharded(plan(recipe));
        out.runs = first.len();
        out.summary = execute(recipe, &first, options, build, progress);
    }
    if recipe.protocol == Protocol::Fixed || stages == Stages::Tune || out.summary.interrupted {
        return out;
    }
    let decided = stage2(recipe, &options.runs_dir);
    let second = sharded(decided.finals.clone());
    out.runs += second.len();
    let s = execute(recipe, &second, options, build, progress);
    out.summary.finished += s.finished;
    out.summary.skipped += s.skipped;
    out.summary.failed.extend(s.failed);
    out.summary.interrupted = s.interrupted;
    out.stage2 = Some(decided);
    out
}
