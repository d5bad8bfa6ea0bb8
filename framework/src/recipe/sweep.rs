//! Sweeps: a grid (optionally a seeded random sample of it) over recipe keys, and the protocol
//! that decides how its settings are used.
//!
//! A *setting* is one point of the grid: swept key → value. Settings of one method are in a fixed
//! *canonical order* (keys sorted, the first key varying slowest, values in the order written);
//! that order names them (`index`) and breaks ties when one is selected.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AdapterConfig, Recipe};

/// Swept keys and the values each takes, e.g. `{ "train.lr" = [1e-3, 3e-3] }`. A key is
/// `train.<key>` (the method's training setting, winning over its own `train` overrides),
/// `adapter.<key>` (a setting of the method itself, e.g. `adapter.token_rank`) or `eval.<key>`
/// (not the splits, which the protocol owns).
pub type SweepGrid = BTreeMap<String, Vec<Value>>;

/// One point of a sweep: swept key → value.
pub type Setting = BTreeMap<String, Value>;

/// How the settings of a sweep are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Every setting is run as given, on the recipe's `eval` splits.
    #[default]
    Fixed,
    /// Every setting is run on train800 → val200; the best one per method × task (mean val200
    /// accuracy over the seeds, ties to the earliest setting in canonical order) is then run on
    /// train800val200 → test. Requires `eval.select = "last"` and the default split pair.
    TuneThenTest,
}

impl Protocol {
    /// Whether this is the default (for `skip_serializing_if`).
    pub fn is_fixed(&self) -> bool {
        *self == Protocol::Fixed
    }
}

/// The recipe's `[sweep]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Keys swept for every method (a method's own `sweep` replaces a key it also sweeps).
    /// Default: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grid: SweepGrid,
    /// Run only this many settings of each method's grid, drawn at random (by `seed`) without
    /// replacement; absent or at least the grid's size runs all of them. Default: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    /// Seed of the draw of `sample`. Default: 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub seed: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl SweepConfig {
    /// Whether nothing is swept here.
    pub fn is_empty(&self) -> bool {
        self.grid.is_empty() && self.sample.is_none() && self.seed == 0
    }
}

/// A setting for people: `train.lr=0.001, adapter.token_rank=4` (strings without quotes).
pub fn label(setting: &Setting) -> String {
    let value = |v: &Value| match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    setting.iter().map(|(k, v)| format!("{k}={}", value(v))).collect::<Vec<_>>().join(", ")
}

/// The key prefixes a sweep may address (see [`SweepGrid`]).
pub const SWEEPABLE: [&str; 3] = ["train.", "adapter.", "eval."];

/// Eval keys the protocol owns, so they cannot be swept.
const PROTOCOL_KEYS: [&str; 3] = ["eval.train_split", "eval.test_split", "eval.val_split"];

/// Why `key` cannot be swept, if it cannot.
pub fn key_problem(key: &str) -> Option<String> {
    let segments_ok =
        key.split('.').all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !segments_ok || !SWEEPABLE.iter().any(|p| key.starts_with(p)) {
        return Some(format!(
            "cannot sweep {key:?}: a swept key is `train.<key>`, `adapter.<key>` or `eval.<key>`"
        ));
    }
    if PROTOCOL_KEYS.contains(&key) {
        return Some(format!("cannot sweep {key:?}: the splits are set by `eval` and `protocol`"));
    }
    // What a method is and how it is named are not settings of it; its training settings are
    // swept as `train.<key>`.
    let method = ["kind", "label", "sweep", "train"];
    key.strip_prefix("adapter.")
        .and_then(|rest| rest.split('.').next())
        .filter(|first| method.contains(first))
        .map(|first| match first {
            "train" => format!("cannot sweep {key:?}: sweep a method's training settings as `train.<key>`"),
            _ => format!("cannot sweep {key:?}: a method's `{first}` is not one of its settings"),
        })
}

/// The merged grid of adapter `ai`: `[sweep.grid]` with the adapter's own `sweep` over it.
pub fn grid_for(recipe: &Recipe, adapter: &AdapterConfig) -> SweepGrid {
    let mut grid = recipe.sweep.grid.clone();
    grid.extend(adapter.sweep().clone());
    grid
}

/// The settings adapter `adapter` runs, in canonical order, each with its index in the full
/// grid; a method with nothing swept has one empty setting. `sample` keeps a seeded subset, still
/// in canonical order.
pub fn settings_for(recipe: &Recipe, adapter: &AdapterConfig) -> Vec<(usize, Setting)> {
    let grid = grid_for(recipe, adapter);
    let all = product(&grid);
    match recipe.sweep.sample {
        Some(n) if n < all.len() => {
            let mut keep = sample_indices(all.len(), n, recipe.sweep.seed);
            keep.sort_unstable();
            keep.into_iter().map(|i| (i, all[i].clone())).collect()
        }
        _ => all.into_iter().enumerate().collect(),
    }
}

/// Every setting of `grid`, first key slowest.
fn product(grid: &SweepGrid) -> Vec<Setting> {
    let mut out = vec![Setting::new()];
    for (key, values) in grid {
        out = out
            .into_iter()
            .flat_map(|s| {
                values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.insert(key.clone(), v.clone());
                    s
                })
            })
            .collect();
    }
    out
}

/// `n` distinct indices below `len`, by a partial Fisher–Yates shuffle driven by SplitMix64: a
/// generator written out here so that a sample (and so the run ids) never changes with a
/// dependency's version.
fn sample_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..len).collect();
    for i in 0..n.min(len) {
        let j = i + (next() % (len - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

/// `recipe` with `setting` applied to adapter `ai`: `train.*` into that adapter's `train`
/// overrides (so it wins over them), `adapter.*` into the adapter entry, `eval.*` into `[eval]`.
pub fn apply(recipe: &Recipe, ai: usize, setting: &Setting) -> Result<Recipe, String> {
    let mut v = serde_json::to_value(recipe).map_err(|e| e.to_string())?;
    // The recipe of one setting sweeps nothing (and so can be checked like any other recipe).
    strip_sweeps(&mut v);
    for (key, value) in setting {
        let segs: Vec<String> = key.split('.').map(str::to_owned).collect();
        let at = ["adapters".to_owned(), ai.to_string()];
        let path: Vec<String> = match segs.first().map(String::as_str) {
            Some("train") => at.into_iter().chain(segs).collect(),
            Some("adapter") => at.into_iter().chain(segs.into_iter().skip(1)).collect(),
            _ => segs,
        };
        set(&mut v, &path, value.clone()).ok_or_else(|| format!("cannot set {key:?}"))?;
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn strip_sweeps(v: &mut Value) {
    if let Value::Object(map) = v {
        map.remove("sweep");
        if let Some(Value::Array(adapters)) = map.get_mut("adapters") {
            for a in adapters.iter_mut().filter_map(Value::as_object_mut) {
                a.remove("sweep");
            }
        }
    }
}

/// Sets `path` in `v`, creating tables on the way; `None` when a segment is not a table or index.
fn set(v: &mut Value, path: &[String], value: Value) -> Option<()> {
    let Some((first, rest)) = path.split_first() else {
        *v = value;
        return Some(());
    };
    let slot = match v {
        Value::Object(map) => map.entry(first.clone()).or_insert_with(|| Value::Object(Default::default())),
        Value::Array(items) => items.get_mut(first.parse::<usize>().ok()?)?,
        _ => return None,
    };
    if !rest.is_empty() && slot.is_null() {
        *slot = Value::Object(Default::default());
    }
    set(slot, rest, value)
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
