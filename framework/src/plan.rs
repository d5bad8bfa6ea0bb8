//! The plan: every run a recipe expands to (backbones × adapters × dataset tasks × seeds), each
//! with a stable id derived from what determines its result.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::canonical::{canonical_json, prune_defaults, sha256_hex};
use crate::data::identity::{self, DatasetTask, FileHashes, Missing};
use crate::recipe::{
    BackboneConfig, EvalConfig, PreprocessConfig, Protocol, Recipe, Setting, Split, TrainConfig, sweep,
};
pub use crate::select::{Candidate, Choice, Choices, GroupKey};

/// Hex digits of the config hash kept in a run id.
const ID_HASH_LEN: usize = 10;

/// One run of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    /// Stable id, `<task>-<adapter kind>-s<seed>-<hash>`; `None` while inputs are missing.
    pub id: Option<String>,
    /// Index into `recipe.backbones`.
    pub backbone: usize,
    /// Index into `recipe.adapters`.
    pub adapter: usize,
    /// Index into `recipe.datasets`.
    pub dataset: usize,
    /// The task of that dataset entry.
    pub task: DatasetTask,
    /// The seed.
    pub seed: u64,
    /// Display names, for people: backbone, adapter, dataset kind.
    pub labels: RunLabels,
    /// The canonical config the id hashes (default-valued fields omitted, inputs by content).
    pub config: Value,
    /// Inputs that are not there (the run cannot start until they are).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// The sweep setting and stage; absent when the recipe sweeps nothing under "fixed".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepRun>,
}

/// Where a run stands in a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRun {
    /// The recipe's protocol.
    pub protocol: Protocol,
    /// The stage this run belongs to.
    pub stage: Stage,
    /// The setting's index in its method's grid, in canonical order.
    pub index: usize,
    /// Swept key → value.
    pub setting: Setting,
    /// In the final stage: the mean val200 accuracy that chose the setting (none when the method
    /// has one setting, which needs no tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// In the final stage: every setting tuning compared, with its mean val200 accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Candidate>,
}

/// The stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// `protocol = "fixed"`: the setting as given, on the recipe's splits.
    Fixed,
    /// Tuning: train800 -> val200.
    Tune,
    /// The chosen setting: train800val200 -> test.
    Final,
}

/// Human-readable names of a run's parts.
#[derive(Debug, Clone, Serialize)]
pub struct RunLabels {
    /// The backbone's display name.
    pub backbone: String,
    /// The adapter's display name.
    pub adapter: String,
    /// The dataset's kind.
    pub dataset: String,
}

/// Expands a validated recipe into its runs, in a fixed order: backbone, dataset, task, adapter,
/// sweep setting (canonical order), seed. Under `protocol = "tune_then_test"` these are the
/// tuning runs (of the methods with more than one setting: one setting needs no choosing);
/// [`plan_final`] gives the runs of the chosen settings.
pub fn plan(recipe: &Recipe) -> Vec<RunSpec> {
    let stage = match recipe.protocol {
        Protocol::Fixed => Stage::Fixed,
        Protocol::TuneThenTest => Stage::Tune,
    };
    expand(recipe, stage, |_, ai| {
        let settings = sweep::settings_for(recipe, &recipe.adapters[ai]);
        if stage == Stage::Tune && settings.len() < 2 {
            return vec![];
        }
        settings.into_iter().map(|(i, s)| (i, s, None, vec![])).collect()
    })
}

/// The final runs of `protocol = "tune_then_test"`: each method × task's chosen setting on
/// train800val200 → test with the recipe's seeds. A method with one setting has it without
/// tuning; groups without a choice (tuning unfinished) have no runs yet.
pub fn plan_final(recipe: &Recipe, choices: &Choices) -> Vec<RunSpec> {
    expand(recipe, Stage::Final, |key, ai| match sweep::settings_for(recipe, &recipe.adapters[ai]) {
        only if only.len() == 1 => only.into_iter().map(|(i, s)| (i, s, None, vec![])).collect(),
        _ => choices
            .get(key)
            .map(|c| vec![(c.index, c.setting.clone(), Some(c.val_accuracy), c.scores.clone())])
            .unwrap_or_default(),
    })
}

/// Every method × task group of the recipe (backbone, dataset task, adapter), in plan order: the
/// groups a tune_then_test recipe chooses a setting for.
pub fn groups(recipe: &Recipe) -> Vec<GroupKey> {
    let mut out = Vec::new();
    for bi in 0..recipe.backbones.len() {
        for (di, dataset) in recipe.datasets.iter().enumerate() {
            for task in identity::tasks(dataset) {
                for ai in 0..recipe.adapters.len() {
                    out.push(GroupKey { backbone: bi, dataset: di, task: task.name.clone(), adapter: ai });
                }
            }
        }
    }
    out
}

/// Keeps the final runs of shard `index` of `count`. A final run's place is fixed by its group's
/// place among [`groups`] and its seed's among the recipe's seeds, not by which groups are chosen
/// so far, so every shard keeps the same runs however far tuning has come.
pub fn shard_final(recipe: &Recipe, runs: Vec<RunSpec>, index: usize, count: usize) -> Vec<RunSpec> {
    let groups = groups(recipe);
    let seeds = recipe.seeds.len();
    runs.into_iter()
        .filter(|r| {
            let g = groups.iter().position(|g| *g == GroupKey::of(r)).unwrap_or(0);
            let s = recipe.seeds.iter().position(|&s| s == r.seed).unwrap_or(0);
            (g * seeds + s) % count == index
        })
        .collect()
}

/// A stage's settings of one group: (index in canonical order, setting, score that chose it, every
/// setting's score).
type Picked = Vec<(usize, Setting, Option<f64>, Vec<Candidate>)>;

fn expand(recipe: &Recipe, stage: Stage, pick: impl Fn(&GroupKey, usize) -> Picked) -> Vec<RunSpec> {
    let base = stage_recipe(recipe, stage);
    let mut hashes = FileHashes::default();
    let splits = splits_read(&base.eval);
    let backbones: Vec<(Value, Vec<Missing>)> =
        recipe.backbones.iter().map(|b| backbone_identity(b, &mut hashes)).collect();
    let swept = stage != Stage::Fixed
        || !recipe.sweep.grid.is_empty()
        || recipe.adapters.iter().any(|a| !a.sweep().is_empty());
    let mut runs = Vec::new();
    for (bi, backbone) in recipe.backbones.iter().enumerate() {
        for (di, dataset) in recipe.datasets.iter().enumerate() {
            for task in identity::tasks(dataset) {
                let (data_id, mut data_missing) =
                    match identity::identity(dataset, &task, &splits, &mut hashes) {
                        Ok(v) => (v, vec![]),
                        Err(m) => (Value::Null, m),
                    };
                // Tuning needs the final stage's splits too, or the protocol stops half-way: they
                // are checked now (their contents do not enter the tuning runs' ids).
                if stage == Stage::Tune {
                    let finals = splits_read(&stage_recipe(recipe, Stage::Final).eval);
                    if let Err(m) = identity::identity(dataset, &task, &finals, &mut hashes) {
                        let new: Vec<Missing> = m.into_iter().filter(|m| !data_missing.contains(m)).collect();
                        data_missing.extend(new);
                    }
                }
                for ai in 0..recipe.adapters.len() {
                    let key = GroupKey { backbone: bi, dataset: di, task: task.name.clone(), adapter: ai };
                    for (index, setting, val_accuracy, scores) in pick(&key, ai) {
                        // Checks applied every swept value, so this only falls back on a bug.
                        let variant = sweep::apply(&base, ai, &setting).unwrap_or_else(|_| base.clone());
                        let adapter = &variant.adapters[ai];
                        let train = variant.train_for(adapter).unwrap_or_else(|_| variant.train.clone());
                        let info = swept.then(|| SweepRun {
                            protocol: recipe.protocol,
                            stage,
                            index,
                            setting: setting.clone(),
                            val_accuracy,
                            scores: scores.clone(),
                        });
                        for &seed in &recipe.seeds {
                            let mut missing = backbones[bi].1.clone();
                            missing.extend(data_missing.iter().cloned());
                            let config = json!({
                                "backbone": backbones[bi].0,
                                "adapter": adapter_identity(adapter),
                                "train": pruned(&train, &TrainConfig::default()),
                                "dataset": data_id,
                                "preprocess": pruned(dataset.preprocess(), &PreprocessConfig::default()),
                                "eval": pruned(&variant.eval, &EvalConfig::default()),
                                "seed": seed,
                            });
                            let id = missing.is_empty().then(|| {
                                let hash = sha256_hex(canonical_json(&config).as_bytes());
                                format!("{}-{}-s{seed}-{}", task.name, adapter.kind(), &hash[..ID_HASH_LEN])
                            });
                            runs.push(RunSpec {
                                id,
                                backbone: bi,
                                adapter: ai,
                                dataset: di,
                                task: task.clone(),
                                seed,
                                labels: RunLabels {
                                    backbone: backbone.display_name(),
                                    adapter: recipe.adapters[ai].display_name(),
                                    dataset: dataset.kind().into(),
                                },
                                config,
                                missing,
                                sweep: info.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    runs
}

/// The recipe a run trains with: its stage's split pair and its sweep setting applied.
pub fn run_recipe(recipe: &Recipe, spec: &RunSpec) -> Recipe {
    let Some(s) = &spec.sweep else { return recipe.clone() };
    let base = stage_recipe(recipe, s.stage);
    sweep::apply(&base, spec.adapter, &s.setting).unwrap_or(base)
}

/// The recipe with the stage's split pair: tuning trains on train800 and scores on val200 (its
/// "test" split, so the record's accuracy there is the tuning score); the final stage trains on
/// train800val200 and tests on test. Checks keep `tune_then_test` recipes at `select = "last"`.
fn stage_recipe(recipe: &Recipe, stage: Stage) -> Recipe {
    let mut r = recipe.clone();
    let pair = match stage {
        Stage::Fixed => return r,
        Stage::Tune => (Split::Train800, Split::Val200),
        Stage::Final => (Split::Train800Val200, Split::Test),
    };
    (r.eval.train_split, r.eval.test_split) = pair;
    r.eval.val_split = None;
    r
}

/// The splits a run reads: the training and test splits, and the validation split when set.
pub fn splits_read(eval: &EvalConfig) -> Vec<Split> {
    let mut splits = vec![eval.train_split, eval.test_split];
    splits.extend(eval.val_split);
    splits.sort();
    splits.dedup();
    splits
}

fn pruned<T: Serialize>(value: &T, default: &T) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    prune_defaults(&mut v, &serde_json::to_value(default).unwrap_or_default());
    v
}

/// The adapter's settings without its label, sweep and train overrides (those enter as `train`), with
/// default values omitted; `kind` always stays.
fn adapter_identity(adapter: &crate::recipe::AdapterConfig) -> Value {
    let mut v = pruned(adapter, &adapter.defaults());
    if let Value::Object(map) = &mut v {
        map.remove("label");
        map.remove("train");
        map.remove("sweep");
        map.insert("kind".into(), adapter.kind().into());
    }
    v
}

/// The backbone's resolved shape and its weights by content (or the random-start seed).
fn backbone_identity(b: &BackboneConfig, hashes: &mut FileHashes) -> (Value, Vec<Missing>) {
    let shape = b.shape().ok();
    let mut v = json!({
        "shape": shape,
        "image_size": b.image_size,
        "norm_eps": b.norm_eps,
        "dtype": b.dtype,
    });
    prune_defaults(&mut v, &json!({ "image_size": 224, "norm_eps": 1e-6, "dtype": "auto" }));
    let mut missing = Vec::new();
    if let Value::Object(map) = &mut v {
        match (&b.weights, b.random_init) {
            (Some(path), _) => match hashes.get(path, "backbone checkpoint") {
                Ok(h) => drop(map.insert("weights_sha256".into(), h.into())),
                Err(m) => missing.push(m),
            },
            (None, seed) => drop(map.insert("random_init".into(), seed.into())),
        }
    }
    (v, missing)
}

/// Pairs of runs (indices into `runs`) that share an id although they belong to different method
/// entries or settings: one would take the other's result (e.g. two methods whose settings
/// coincide, or swept values that differ only in how they are written, `0` and `0.0`).
pub fn collisions(runs: &[RunSpec]) -> Vec<(usize, usize)> {
    let what = |r: &RunSpec| (r.adapter, r.sweep.as_ref().map(|s| (s.stage, s.index)));
    let mut seen: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let Some(id) = r.id.as_deref() else { continue };
        match seen.get(id) {
            Some(&j) if what(&runs[j]) != what(r) => out.push((j, i)),
            Some(_) => {}
            None => drop(seen.insert(id, i)),
        }
    }
    out
}

/// Keeps the runs of shard `index` of `count` (round-robin over the plan order, so shards are
/// balanced and disjoint, and together cover the plan).
pub fn shard(runs: Vec<RunSpec>, index: usize, count: usize) -> Vec<RunSpec> {
    runs.into_iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, r)| r).collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
