//! Every recipe shipped in `recipes/` is valid and points editors at the schema.

use std::collections::BTreeSet;

use crate::support::{repo, runner};

#[test]
fn every_shipped_recipe_validates_and_declares_the_schema() {
    let mut recipes: Vec<_> = std::fs::read_dir(repo().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
    let names: BTreeSet<String> =
        recipes.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for shipped in [
        "smoke.toml",
        "quickstart.toml",
        "pretrain_tiny.toml",
        "vtab_all.toml",
        "vtab_tune.toml",
        "losa_ablations.toml",
    ] {
        assert!(names.contains(shipped), "recipes/{shipped} is missing; found {names:?}");
    }
    for path in &recipes {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("#:schema ./recipe.schema.json\n"),
            "{} lacks the schema line",
            path.display()
        );
        let run = runner(&repo(), &["check", path.to_str().unwrap()], &[]);
        assert_eq!(run.code, 0, "{}: {}", path.display(), run.stderr);
        // The published results a recipe attaches ship with it (paths resolved from the repo root).
        let resolved: toml::Table = toml::from_str(&run.stdout).unwrap();
        if let Some(published) = resolved.get("report").and_then(|r| r.get("published")) {
            let published = repo().join(published.as_str().unwrap());
            assert!(published.is_file(), "{}: {} not found", path.display(), published.display());
        }
        let plan = runner(&repo(), &["plan", path.to_str().unwrap()], &[]);
        assert_eq!(plan.code, 0, "{}: {}", path.display(), plan.stderr);
    }
}

/// The runs of a shipped recipe's plan, from `runner plan --json`.
fn plan_runs(name: &str) -> Vec<serde_json::Value> {
    let path = repo().join("recipes").join(name);
    let run = runner(&repo(), &["plan", "--json", path.to_str().unwrap()], &[]);
    assert_eq!(run.code, 0, "{name}: {}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    v["runs"].as_array().unwrap().clone()
}

/// The recipe's own `seeds`, as written.
fn seeds(name: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(repo().join("recipes").join(name)).unwrap();
    let recipe: toml::Table = toml::from_str(&text).unwrap();
    recipe["seeds"].as_array().unwrap().iter().map(|s| s.as_integer().unwrap() as u64).collect()
}

#[test]
fn vtab_all_plans_every_task_for_five_methods_and_every_seed() {
    let runs = plan_runs("vtab_all.toml");
    let seeds = seeds("vtab_all.toml");
    assert!(!seeds.is_empty());
    assert_eq!(runs.len(), 19 * 5 * seeds.len());
    let tasks: BTreeSet<&str> = runs.iter().map(|r| r["task"]["name"].as_str().unwrap()).collect();
    assert_eq!(tasks.len(), 19);
    let kinds: BTreeSet<&str> =
        runs.iter().map(|r| r["config"]["adapter"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["full", "linear_probe", "lora", "losa", "vpt"]));
    let planned: BTreeSet<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(planned, seeds.iter().copied().collect());
    // The inputs are not on this machine: every run lists them and has no id yet.
    assert!(runs.iter().all(|r| r["id"].is_null() && r["missing"].as_array().is_some_and(|m| !m.is_empty())));
}

#[test]
fn vtab_tune_tunes_each_methods_rates_on_every_task_before_any_final_run() {
    let path = repo().join("recipes/vtab_tune.toml");
    let run = runner(&repo(), &["plan", "--json", path.to_str().unwrap()], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    let seeds = seeds("vtab_tune.toml").len();
    // Rates per method: probe 3, full 3, LoRA 3, VPT 2, LoSA 3.
    assert_eq!(runs.len(), 19 * 14 * seeds);
    assert!(runs.iter().all(|r| r["sweep"]["stage"] == "tune" && r["sweep"]["protocol"] == "tune_then_test"));
    let rates: BTreeSet<String> =
        runs.iter().map(|r| r["sweep"]["setting"]["train.lr"].to_string()).collect();
    assert!(rates.len() >= 5, "{rates:?}");
    assert_eq!(plan["final_runs"].as_array().map(Vec::len), Some(0), "nothing is chosen before tuning");
}

#[test]
fn losa_ablations_label_every_method_and_repeat_no_setting() {
    let runs = plan_runs("losa_ablations.toml");
    let tasks: BTreeSet<&str> = runs.iter().map(|r| r["task"]["name"].as_str().unwrap()).collect();
    let labels: BTreeSet<&str> = runs.iter().map(|r| r["labels"]["adapter"].as_str().unwrap()).collect();
    assert!(
        labels.iter().all(|l| *l != "losa" && *l != "linear_probe"),
        "every method is labelled: {labels:?}"
    );
    let adapters: BTreeSet<String> = runs.iter().map(|r| r["config"]["adapter"].to_string()).collect();
    assert_eq!(adapters.len(), labels.len(), "two labels name the same settings");
    assert_eq!(runs.len(), labels.len() * tasks.len() * seeds("losa_ablations.toml").len());
}
