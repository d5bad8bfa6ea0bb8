//! The plan: every run a recipe expands to (backbones × adapters × dataset tasks × seeds), each
//! with a stable id derived from what determines its result.

use serde::Serialize;
use serde_json::{Value, json};

use crate::canonical::{canonical_json, prune_defaults, sha256_hex};
use crate::data::identity::{self, DatasetTask, FileHashes, Missing};
use crate::recipe::{BackboneConfig, EvalConfig, PreprocessConfig, Recipe, Split, TrainConfig};

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
/// seed.
pub fn plan(recipe: &Recipe) -> Vec<RunSpec> {
    let mut hashes = FileHashes::default();
    let splits = splits_read(&recipe.eval);
    let backbones: Vec<(Value, Vec<Missing>)> =
        recipe.backbones.iter().map(|b| backbone_identity(b, &mut hashes)).collect();
    let mut runs = Vec::new();
    for (bi, backbone) in recipe.backbones.iter().enumerate() {
        for (di, dataset) in recipe.datasets.iter().enumerate() {
            for task in identity::tasks(dataset) {
                let (data_id, data_missing) = match identity::identity(dataset, &task, &splits, &mut hashes) {
                    Ok(v) => (v, vec![]),
                    Err(m) => (Value::Null, m),
                };
                for (ai, adapter) in recipe.adapters.iter().enumerate() {
                    let train = recipe.train_for(adapter).unwrap_or_else(|_| recipe.train.clone());
                    for &seed in &recipe.seeds {
                        let mut missing = backbones[bi].1.clone();
                        missing.extend(data_missing.iter().cloned());
                        let config = json!({
                            "backbone": backbones[bi].0,
                            "adapter": adapter_identity(adapter),
                            "train": pruned(&train, &TrainConfig::default()),
                            "dataset": data_id,
                            "preprocess": pruned(dataset.preprocess(), &PreprocessConfig::default()),
                            "eval": pruned(&recipe.eval, &EvalConfig::default()),
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
                                adapter: adapter.display_name(),
                                dataset: dataset.kind().into(),
                            },
                            config,
                            missing,
                        });
                    }
                }
            }
        }
    }
    runs
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

/// The adapter's settings without its label and train overrides (those enter as `train`), with
/// default values omitted; `kind` always stays.
fn adapter_identity(adapter: &crate::recipe::AdapterConfig) -> Value {
    let mut v = pruned(adapter, &adapter.defaults());
    if let Value::Object(map) = &mut v {
        map.remove("label");
        map.remove("train");
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

/// Keeps the runs of shard `index` of `count` (round-robin over the plan order, so shards are
/// balanced and disjoint, and together cover the plan).
pub fn shard(runs: Vec<RunSpec>, index: usize, count: usize) -> Vec<RunSpec> {
    runs.into_iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, r)| r).collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
