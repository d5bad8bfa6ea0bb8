//! Executing a recipe by its protocol: "fixed" executes the plan; "tune_then_test" executes the
//! tuning runs, chooses a setting per method × task from their records, then executes the final
//! runs of the choices. Both stages are ordinary runs in the runs folder, so a rerun skips what
//! finished in either stage. Each choice is stored in the runs folder (`choices/`) when it is made
//! and kept from then on (`--force` makes it again), so final runs never lose their choice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::execute::{Builder, Options, Summary, execute};
use super::progress::Progress;
use crate::canonical::sha256_hex;
use crate::plan::{RunSpec, plan_final, shard, shard_final};
use crate::recipe::{Protocol, Recipe};
use crate::select::{Choice, Choices, GroupKey, Outcome, select};
use crate::store::{self, RECORD_FILE, write_atomic};

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

/// The final stage as far as the runs folder decides it now.
#[derive(Debug, Clone)]
pub struct Stage2 {
    /// The final runs of every group with a choice (and of the methods with one setting).
    pub finals: Vec<RunSpec>,
    /// Groups still tuning (some tuning run has no record yet).
    pub tuning: Vec<GroupKey>,
    /// Groups whose tuning ended without a choice: every setting has a failed seed.
    pub unchosen: Vec<GroupKey>,
}

/// Folder of the stored choices inside the runs folder: one file per method × task group.
pub const CHOICES_DIR: &str = "choices";

/// How [`decide`] treats the stored choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choosing {
    /// Use a stored choice; otherwise choose from the records, storing nothing (`plan`, `status`,
    /// the report).
    Read,
    /// Use a stored choice; otherwise choose from the records and store the choice.
    Store,
    /// Choose from the records again and store that (`--force`).
    Remake,
}

/// The second stage of `recipe`, whose plan (`plan(recipe)`, the tuning runs) is `tuning`, as the
/// runs folder decides it now (empty under "fixed"). Nothing is written.
pub fn stage2(recipe: &Recipe, tuning: &[RunSpec], runs_dir: &Path) -> Stage2 {
    decide(recipe, tuning, runs_dir, Choosing::Read)
}

/// The second stage: each group's stored choice if there is one (a choice, once made, stays: a
/// failed tuning run that a later run retries must not change it under existing final runs),
/// else the choice its tuning records make.
fn decide(recipe: &Recipe, first: &[RunSpec], runs_dir: &Path, choosing: Choosing) -> Stage2 {
    if recipe.protocol == Protocol::Fixed {
        return Stage2 { finals: vec![], tuning: vec![], unchosen: vec![] };
    }
    let outcome = outcome_in(runs_dir);
    let made = select(first, &outcome);
    let (mut chosen, mut tuning, mut unchosen) = (Choices::new(), Vec::new(), Vec::new());
    for runs in groups_of(first) {
        let key = GroupKey::of(&runs[0]);
        let file = choice_file(runs_dir, runs);
        let stored = match (&file, choosing) {
            (Some(f), Choosing::Read | Choosing::Store) => read_choice(f),
            _ => None,
        };
        if let Some(choice) = stored {
            chosen.insert(key, choice);
        } else if let Some(choice) = made.get(&key) {
            if let (Some(f), Choosing::Store | Choosing::Remake) = (&file, choosing) {
                // A choice that cannot be stored is still made; the next run tries again.
                let _ = write_choice(f, runs, choice);
            }
            chosen.insert(key, choice.clone());
        } else if runs.iter().any(|r| r.id.as_deref().is_none_or(|id| outcome(id) == Outcome::Pending)) {
            tuning.push(key);
        } else {
            unchosen.push(key);
        }
    }
    Stage2 { finals: plan_final(recipe, &chosen), tuning, unchosen }
}

/// The failed tuning runs of groups with a stored choice: their tuning is over, so such a run (a
/// diverging learning rate, a crash) is not run again — it could change nothing, and would fail
/// every rerun. `--force` runs them again.
fn tuning_over(tuning: &[RunSpec], runs_dir: &Path) -> Vec<Option<String>> {
    let outcome = outcome_in(runs_dir);
    let mut over = Vec::new();
    for runs in groups_of(tuning) {
        if choice_file(runs_dir, runs).is_some_and(|f| f.is_file()) {
            let failed =
                runs.iter().filter(|r| r.id.as_deref().is_some_and(|id| outcome(id) == Outcome::Failed));
            over.extend(failed.map(|r| r.id.clone()));
        }
    }
    over
}

/// The tuning runs of each method × task group: consecutive in plan order (backbone, dataset,
/// task, adapter, then setting and seed).
fn groups_of(tuning: &[RunSpec]) -> impl Iterator<Item = &[RunSpec]> {
    tuning.chunk_by(|a, b| GroupKey::of(a) == GroupKey::of(b))
}

/// The file of a group's choice, named by its tuning runs (a changed grid is a new choice);
/// `None` while a run has no id (inputs missing).
fn choice_file(runs_dir: &Path, runs: &[RunSpec]) -> Option<PathBuf> {
    let mut ids: Vec<&str> = runs.iter().map(|r| r.id.as_deref()).collect::<Option<_>>()?;
    ids.sort_unstable();
    let first = runs.first()?;
    let hash = sha256_hex(ids.join("\n").as_bytes());
    let kind = first.id.as_deref()?.split('-').nth(1).unwrap_or("method");
    Some(runs_dir.join(CHOICES_DIR).join(format!("{}-{kind}-{}.json", first.task.name, &hash[..10])))
}

/// A stored choice, with what it was chosen from.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    task: String,
    method: String,
    tuning_runs: Vec<String>,
    choice: Choice,
}

fn read_choice(path: &Path) -> Option<Choice> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Stored>(&text).ok().map(|s| s.choice)
}

fn write_choice(path: &Path, runs: &[RunSpec], choice: &Choice) -> Result<(), String> {
    let first = runs.first().ok_or("no runs")?;
    let stored = Stored {
        task: first.task.name.clone(),
        method: first.labels.adapter.clone(),
        tuning_runs: runs.iter().filter_map(|r| r.id.clone()).collect(),
        choice: choice.clone(),
    };
    let dir = path.parent().ok_or("no folder")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&stored).map_err(|e| e.to_string())?;
    write_atomic(path, text).map(|_| ()).map_err(|e| e.to_string())
}

/// A run's outcome by its record in `runs_dir`.
fn outcome_in(runs_dir: &Path) -> impl Fn(&str) -> Outcome + '_ {
    move |id| Outcome::of(store::read_record(&runs_dir.join(id).join(RECORD_FILE)).ok().as_ref())
}

/// The runs whose results a report of `recipe` (with plan `plan`) shows: the plan under "fixed";
/// the final runs decided so far under "tune_then_test" (tuning runs score on val200, not on the
/// test split).
pub fn reported_runs(recipe: &Recipe, plan: &[RunSpec], runs_dir: &Path) -> Vec<RunSpec> {
    match recipe.protocol {
        Protocol::Fixed => plan.to_vec(),
        Protocol::TuneThenTest => stage2(recipe, plan, runs_dir).finals,
    }
}

/// What [`execute_protocol`] did.
#[derive(Debug, Default)]
pub struct Executed {
    /// Both stages' counts together.
    pub summary: Summary,
    /// Runs it was given in both stages (this shard's).
    pub runs: usize,
    /// Failed tuning runs not run again because their group's choice is made (see `runs`).
    pub not_retried: usize,
    /// The second stage as the records decided it at the end (`None` under "fixed").
    pub stage2: Option<Stage2>,
}

/// Executes `recipe`, whose plan is `plan` (passed in: planning hashes every input file, a
/// checkpoint of gigabytes included, so a command plans once), into `options.runs_dir` by its
/// protocol, shard `shard_of` of each stage.
pub fn execute_protocol(
    recipe: &Recipe,
    plan: &[RunSpec],
    stages: Stages,
    shard_of: Option<Shard>,
    options: &Options,
    build: Builder<'_>,
    progress: &mut dyn Progress,
) -> Executed {
    let mut out = Executed::default();
    if stages != Stages::Final || recipe.protocol == Protocol::Fixed {
        let over = match options.force {
            false => tuning_over(plan, &options.runs_dir),
            true => vec![],
        };
        let first: Vec<RunSpec> = match shard_of {
            Some((index, count)) => shard(plan.to_vec(), index, count),
            None => plan.to_vec(),
        };
        out.runs = first.len();
        let first: Vec<RunSpec> = first.into_iter().filter(|r| !over.contains(&r.id)).collect();
        out.not_retried = out.runs - first.len();
        out.summary = execute(recipe, &first, options, build, progress);
    }
    if recipe.protocol == Protocol::Fixed || stages == Stages::Tune || out.summary.interrupted {
        return out;
    }
    let choosing = if options.force { Choosing::Remake } else { Choosing::Store };
    let decided = decide(recipe, plan, &options.runs_dir, choosing);
    let second = match shard_of {
        Some((index, count)) => shard_final(recipe, decided.finals.clone(), index, count),
        None => decided.finals.clone(),
    };
    out.runs += second.len();
    let s = execute(recipe, &second, options, build, progress);
    out.summary.finished += s.finished;
    out.summary.skipped += s.skipped;
    out.summary.failed.extend(s.failed);
    out.summary.interrupted = s.interrupted;
    out.stage2 = Some(decided);
    out
}
