//! Choosing the setting of a sweep from its finished tuning runs (`protocol = "tune_then_test"`).
//!
//! The rule: per backbone × dataset task × method, the setting with the highest val200 accuracy
//! averaged over the tuning seeds (in the recipe's seed order, so the mean is the same float on
//! every machine). Equal means (to 1e-9) go to the setting that comes first in canonical order (see
//! [`crate::recipe::sweep`]), so a choice never depends on which run finished first. A setting
//! with a failed seed is out (a diverging learning rate must lose, not block the others). A group
//! is chosen only once every one of its tuning runs has ended; the runs folder then keeps the choice
//! ([`crate::engine::protocol`]), so a failed tuning run that a later `runner run` retries cannot
//! change it under final runs that already exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::RunSpec;
use crate::recipe::{Setting, Split};
use crate::record::RunRecord;

/// The runs compared by one choice: a backbone, a dataset task and a method.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// Index into `recipe.backbones`.
    pub backbone: usize,
    /// Index into `recipe.datasets`.
    pub dataset: usize,
    /// The task's name.
    pub task: String,
    /// Index into `recipe.adapters`.
    pub adapter: usize,
}

impl GroupKey {
    /// The group of a run.
    pub fn of(run: &RunSpec) -> Self {
        Self {
            backbone: run.backbone,
            dataset: run.dataset,
            task: run.task.name.clone(),
            adapter: run.adapter,
        }
    }
}

/// The setting chosen for a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its index in canonical order.
    pub index: usize,
    /// Swept key → value.
    pub setting: Setting,
    /// Its mean val200 accuracy over the tuning seeds.
    pub val_accuracy: f64,
    /// Every setting compared, in canonical order.
    pub scores: Vec<Candidate>,
}

/// One setting as tuning scored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Its index in canonical order.
    pub index: usize,
    /// Swept key → value.
    pub setting: Setting,
    /// Its mean val200 accuracy over the tuning seeds; `None` when a seed failed.
    pub val_accuracy: Option<f64>,
}

/// The choice of every group whose tuning has ended.
pub type Choices = BTreeMap<GroupKey, Choice>;

/// How a tuning run ended, as far as selection is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Not run yet (or its inputs are missing).
    Pending,
    /// Ended without a score.
    Failed,
    /// Its val200 accuracy.
    Scored(f64),
}

impl Outcome {
    /// The outcome a run's record (if any) says: the top-1 accuracy on val200, the split tuning
    /// runs are tested on.
    pub fn of(record: Option<&RunRecord>) -> Self {
        let Some(record) = record else { return Outcome::Pending };
        if !record.finished() {
            return Outcome::Failed;
        }
        match record.accuracy.iter().find(|a| a.split == Split::Val200) {
            Some(a) => Outcome::Scored(a.top1),
            None => Outcome::Failed,
        }
    }
}

/// Chooses a setting per group from the tuning runs (see the module docs for the rule);
/// `outcome` gives each run's outcome by id.
pub fn select(tuning: &[RunSpec], outcome: impl Fn(&str) -> Outcome) -> Choices {
    // group → setting index → (setting, outcomes in plan (seed) order)
    let mut groups: BTreeMap<GroupKey, BTreeMap<usize, (Setting, Vec<Outcome>)>> = BTreeMap::new();
    for run in tuning {
        let (index, setting) =
            run.sweep.as_ref().map_or((0, Setting::new()), |s| (s.index, s.setting.clone()));
        let o = run.id.as_deref().map_or(Outcome::Pending, &outcome);
        groups
            .entry(GroupKey::of(run))
            .or_default()
            .entry(index)
            .or_insert_with(|| (setting, Vec::new()))
            .1
            .push(o);
    }
    let mut choices = Choices::new();
    for (key, settings) in groups {
        if settings.values().flat_map(|(_, o)| o).any(|o| *o == Outcome::Pending) {
            continue;
        }
        let mut scores = Vec::new();
        for (index, (setting, outcomes)) in settings {
            let scored: Option<Vec<f64>> =
                outcomes.iter().map(|o| if let Outcome::Scored(s) = o { Some(*s) } else { None }).collect();
            let mean = scored.filter(|s| !s.is_empty()).map(|s| s.iter().sum::<f64>() / s.len() as f64);
            scores.push(Candidate { index, setting, val_accuracy: mean });
        }
        // Settings come in canonical order and only a strictly higher mean replaces the best, so
        // a tie keeps the earlier one. Means compare at 1e-9: accuracies are fractions of a few
        // thousand images, and the same scores summed in another order may differ in the last bit.
        let level = |v: f64| (v * 1e9).round();
        let best =
            scores.iter().filter_map(|c| Some((c, c.val_accuracy?))).fold(None, |best, (c, v)| match best {
                Some((_, b)) if level(v) <= level(b) => best,
                _ => Some((c, v)),
            });
        if let Some((b, val_accuracy)) = best {
            let choice =
                Choice { index: b.index, setting: b.setting.clone(), val_accuracy, scores: scores.clone() };
            choices.insert(key, choice);
        }
    }
    choices
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
