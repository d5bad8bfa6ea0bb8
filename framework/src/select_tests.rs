//! The selection rule: best mean val accuracy, ties to canonical order, only complete groups.

use std::collections::HashMap;

use super::*;
use crate::plan::{Stage, plan, plan_final};
use crate::recipe::Recipe;

const RECIPE: &str = r#"
name = "t"
seeds = [0, 1]
protocol = "tune_then_test"
[[backbones]]
variant = "Ti/16"
image_size = 32
random_init = 0
[[adapters]]
kind = "linear_probe"
[[datasets]]
kind = "synthetic"
tasks = ["shape"]
[sweep]
grid = { "train.lr" = [0.1, 0.2, 0.3] }
"#;

fn recipe() -> Recipe {
    toml::from_str(RECIPE).unwrap()
}

/// Scores by (setting index, seed).
fn scored(runs: &[RunSpec], score: impl Fn(usize, u64) -> Outcome) -> HashMap<String, Outcome> {
    runs.iter().map(|r| (r.id.clone().unwrap(), score(r.sweep.as_ref().unwrap().index, r.seed))).collect()
}

fn choose(runs: &[RunSpec], outcomes: &HashMap<String, Outcome>) -> Choices {
    select(runs, |id| outcomes.get(id).copied().unwrap_or(Outcome::Pending))
}

#[test]
fn the_best_mean_over_seeds_is_chosen() {
    let runs = plan(&recipe());
    assert_eq!(runs.len(), 3 * 2);
    assert!(runs.iter().all(|r| r.sweep.as_ref().unwrap().stage == Stage::Tune));
    // Setting 1 has the best single run; setting 2 the best mean.
    let table = [[0.5, 0.5], [0.9, 0.1], [0.6, 0.6]];
    let outcomes = scored(&runs, |i, s| Outcome::Scored(table[i][s as usize]));
    let choices = choose(&runs, &outcomes);
    let choice = choices.values().next().unwrap();
    assert_eq!(choice.index, 2);
    assert_eq!(choice.setting["train.lr"], serde_json::json!(0.3));
    assert_eq!(choice.val_accuracy, 0.6);
    let means: Vec<Option<f64>> = choice.scores.iter().map(|c| c.val_accuracy).collect();
    assert_eq!(means, [Some(0.5), Some(0.5), Some(0.6)], "every setting's mean, in canonical order");
}

#[test]
fn a_tie_goes_to_the_earliest_setting_in_canonical_order() {
    let runs = plan(&recipe());
    let outcomes = scored(&runs, |i, _| Outcome::Scored(if i == 0 { 0.2 } else { 0.7 }));
    // Whatever order the runs are seen in, the choice is the same.
    let mut reversed = runs.clone();
    reversed.reverse();
    for runs in [runs, reversed] {
        assert_eq!(choose(&runs, &outcomes).values().next().unwrap().index, 1);
    }
}

#[test]
fn a_group_waits_for_all_its_runs_and_failed_settings_are_out() {
    let runs = plan(&recipe());
    let mut outcomes = scored(&runs, |i, _| Outcome::Scored(i as f64 / 10.0));
    let last = runs.last().unwrap().id.clone().unwrap();
    outcomes.remove(&last);
    assert!(choose(&runs, &outcomes).is_empty(), "one pending run holds the choice back");
    outcomes.insert(last, Outcome::Failed);
    let choice = choose(&runs, &outcomes).into_values().next().unwrap();
    assert_eq!(choice.index, 1, "the failed setting 2 is out");
    assert_eq!(choice.scores[2].val_accuracy, None);
}

#[test]
fn equal_means_tie_even_when_their_sums_differ_in_the_last_bit() {
    // 0.815 + 0.925 + 0.83 and 0.815 + 0.83 + 0.925 are different doubles; the means are equal.
    let r: Recipe = toml::from_str(&RECIPE.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")).unwrap();
    let runs = plan(&r);
    let (a, b) = ([0.815, 0.925, 0.83], [0.815, 0.83, 0.925]);
    assert_ne!(a.iter().sum::<f64>(), b.iter().sum::<f64>(), "the premise: the sums differ");
    for (first, second) in [(a, b), (b, a)] {
        let outcomes = scored(&runs, |i, s| match i {
            0 => Outcome::Scored(first[s as usize]),
            1 => Outcome::Scored(second[s as usize]),
            _ => Outcome::Scored(0.1),
        });
        assert_eq!(choose(&runs, &outcomes).values().next().unwrap().index, 0);
    }
}

#[test]
fn a_method_with_one_setting_is_not_tuned_and_goes_straight_to_its_final_runs() {
    let head = RECIPE.split("[[adapters]]").next().unwrap();
    let text = format!(
        "{head}[[adapters]]\nkind = \"linear_probe\"\nsweep = {{ \"train.lr\" = [0.1, 0.2] }}\n\
         [[adapters]]\nkind = \"losa\"\nsweep = {{ \"train.lr\" = [0.2] }}\n\
         [[datasets]]\nkind = \"synthetic\"\ntasks = [\"shape\"]\n"
    );
    let r: Recipe = toml::from_str(&text).unwrap();
    let tune = plan(&r);
    assert!(tune.iter().all(|t| t.adapter == 0), "only the method with two settings tunes");
    assert_eq!(tune.len(), 2 * 2);
    let fin = plan_final(&r, &Choices::new());
    assert_eq!(fin.len(), 2, "the one-setting method's final runs, before any choice");
    assert!(fin.iter().all(|f| f.adapter == 1 && f.sweep.as_ref().unwrap().val_accuracy.is_none()));
}

#[test]
fn final_runs_use_the_choice_on_the_final_splits_with_their_own_stable_ids() {
    let r = recipe();
    let tune = plan(&r);
    let outcomes = scored(&tune, |i, _| Outcome::Scored(i as f64));
    let choices = choose(&tune, &outcomes);
    let fin = plan_final(&r, &choices);
    assert_eq!(fin.len(), 2, "one run per recipe seed");
    let s = fin[0].sweep.as_ref().unwrap();
    assert_eq!((s.stage, s.index, s.val_accuracy), (Stage::Final, 2, Some(2.0)));
    assert_eq!(fin[0].config["eval"], serde_json::json!({}), "the default split pair");
    assert_eq!(tune[0].config["eval"]["train_split"], "train800");
    let tune_ids: Vec<_> = tune.iter().map(|r| r.id.clone()).collect();
    assert!(fin.iter().all(|f| !tune_ids.contains(&f.id)));
    assert_eq!(plan_final(&r, &choices)[0].id, fin[0].id);
    assert!(plan_final(&r, &Choices::new()).is_empty());
}
