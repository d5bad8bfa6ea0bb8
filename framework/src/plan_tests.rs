//! Plan expansion and run-id stability.

use std::path::Path;

use super::*;
use crate::recipe::{LoadOptions, load};

const BASE: &str = r#"
name = "p"
seeds = [0, 1]
[[backbones]]
variant = "Ti/16"
image_size = 32
random_init = 0
[[adapters]]
kind = "linear_probe"
[[adapters]]
kind = "losa"
token_rank = 4
[[datasets]]
kind = "synthetic"
tasks = ["shape", "count", "scale"]
"#;

fn runs_in(dir: &Path, text: &str, sets: &[&str]) -> Vec<RunSpec> {
    let path = dir.join("r.toml");
    std::fs::write(&path, text).unwrap();
    let options = LoadOptions { sets: sets.iter().map(|s| s.to_string()).collect(), env: vec![] };
    plan(&load(&path, &options).unwrap())
}

fn ids(text: &str, sets: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    runs_in(dir.path(), text, sets).into_iter().map(|r| r.id.unwrap()).collect()
}

#[test]
fn a_plan_is_backbones_times_tasks_times_adapters_times_seeds_in_a_fixed_order() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs_in(dir.path(), BASE, &[]);
    assert_eq!(runs.len(), 3 * 2 * 2);
    let first: Vec<(&str, &str, u64)> =
        runs.iter().take(4).map(|r| (r.task.name.as_str(), r.labels.adapter.as_str(), r.seed)).collect();
    assert_eq!(
        first,
        [
            ("shape", "linear_probe", 0),
            ("shape", "linear_probe", 1),
            ("shape", "losa", 0),
            ("shape", "losa", 1)
        ]
    );
    assert_eq!(runs[0].task.classes, Some(5));
    let unique: std::collections::BTreeSet<_> = runs.iter().map(|r| r.id.clone().unwrap()).collect();
    assert_eq!(unique.len(), runs.len(), "ids are unique");
    assert!(runs[2].id.as_ref().unwrap().starts_with("shape-losa-s0-"));
}

#[test]
fn run_ids_are_pinned_so_a_change_that_alters_them_is_noticed() {
    // If this fails, finished runs of every existing runs folder would be redone: change the id
    // scheme only on purpose (and say so in the changelog).
    assert_eq!(ids(BASE, &[])[0], "shape-linear_probe-s0-9c2418d649");
}

#[test]
fn ids_ignore_cosmetic_fields_output_paths_and_explicit_defaults() {
    let base = ids(BASE, &[]);
    for sets in [
        &["description=\"words\"", "output.dir=\"elsewhere\"", "report.title=\"T\"", "device=cpu"][..],
        &["name=\"other\""],
        &["train.lr=1e-3", "train.label_smoothing=0.0", "train.augment.hflip=false", "eval.select=last"],
        &[
            "backbones=[{label = \"mine\", variant = \"Ti/16\", image_size = 32, random_init = 0, norm_eps = 1e-6}]",
        ],
        &[
            "adapters=[{kind = \"linear_probe\", label = \"lp\", pool = \"token\"}, {kind = \"losa\", token_rank = 4, channel_rank = 8}]",
        ],
    ] {
        assert_eq!(ids(BASE, sets), base, "{sets:?}");
    }
    // A recipe written in another key order is the same recipe.
    let reordered =
        BASE.replace("seeds = [0, 1]\n", "").replace("name = \"p\"\n", "name = \"p\"\nseeds = [0,1]\n");
    assert_eq!(ids(&reordered, &[]), base);
}

#[test]
fn ids_change_with_anything_that_changes_the_result() {
    let base = ids(BASE, &[]);
    for sets in [
        &["train.lr=3e-4"][..],
        &["adapters=[{kind = \"linear_probe\", pool = \"mean\"}, {kind = \"losa\", token_rank = 2}]"],
        &["datasets=[{kind = \"synthetic\", tasks = [\"shape\", \"count\", \"scale\"], seed = 1}]"],
        &[
            "datasets=[{kind = \"synthetic\", tasks = [\"shape\", \"count\", \"scale\"], preprocess = {normalize = \"imagenet\"}}]",
        ],
        &["backbones=[{variant = \"Ti/16\", image_size = 32, random_init = 1}]"],
        &["eval.every_epochs=5"],
    ] {
        let changed = ids(BASE, sets);
        assert!(changed.iter().zip(&base).all(|(a, b)| a != b), "{sets:?} left some ids unchanged");
    }
    // Only the overridden adapter's runs change.
    let changed = ids(
        BASE,
        &["adapters=[{kind = \"linear_probe\"}, {kind = \"losa\", token_rank = 4, train = {lr = 0.1}}]"],
    );
    assert_eq!(changed[..2], base[..2]);
    assert_ne!(changed[2..4], base[2..4]);
}

#[test]
fn weights_are_identified_by_content_not_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.safetensors"), b"weights-1").unwrap();
    std::fs::create_dir(dir.path().join("moved")).unwrap();
    std::fs::write(dir.path().join("moved/b.safetensors"), b"weights-1").unwrap();
    let with = |path: &str| BASE.replace("random_init = 0", &format!("weights = \"{path}\""));
    let a = runs_in(dir.path(), &with("a.safetensors"), &[]);
    let b = runs_in(dir.path(), &with("moved/b.safetensors"), &[]);
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(a[0].config["backbone"]["weights_sha256"].as_str().unwrap().len(), 64);
    std::fs::write(dir.path().join("a.safetensors"), b"weights-2").unwrap();
    assert_ne!(runs_in(dir.path(), &with("a.safetensors"), &[])[0].id, a[0].id);

    let missing = runs_in(dir.path(), &with("none.safetensors"), &[]);
    assert!(missing.iter().all(|r| r.id.is_none()));
    assert_eq!(missing[0].missing[0].path, dir.path().join("none.safetensors"));
}

#[test]
fn vtab_tasks_are_identified_by_their_split_lists_under_any_root_or_alias() {
    let dir = tempfile::tempdir().unwrap();
    let make = |root: &str, folder: &str, train: &str| {
        let task = dir.path().join(root).join(folder);
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(task.join("train800val200.txt"), train).unwrap();
        std::fs::write(task.join("test.txt"), "images/test/000000.jpg 3\n").unwrap();
    };
    make("v1", "cifar", "images/train800val200/000000.jpg 1\n");
    make("v2", "cifar100", "images/train800val200/000000.jpg 1\n");
    make("v3", "cifar", "images/train800val200/000000.jpg 2\n");
    let text = |root: &str| {
        BASE.replace("kind = \"synthetic\"", &format!("kind = \"vtab1k\"\nroot = \"{root}\""))
            .replace("[\"shape\", \"count\", \"scale\"]", "[\"cifar100\"]")
    };
    let id = |root: &str| runs_in(dir.path(), &text(root), &[])[0].id.clone().unwrap();
    assert_eq!(id("v1"), id("v2"), "moved root, alias folder name");
    assert_ne!(id("v1"), id("v3"), "different list content");
    assert!(id("v1").starts_with("cifar-linear_probe-s0-"), "the canonical task name");

    let runs = runs_in(dir.path(), &text("v1"), &["eval.train_split=train800", "eval.val_split=val200"]);
    let missing: Vec<_> = runs[0].missing.iter().map(|m| m.path.file_name().unwrap().to_owned()).collect();
    assert_eq!(missing, ["train800.txt", "val200.txt"], "each split the run reads is required");
}

#[test]
fn shards_are_disjoint_balanced_and_cover_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs_in(dir.path(), BASE, &[]);
    let all: Vec<_> = runs.iter().map(|r| r.id.clone()).collect();
    let mut seen = Vec::new();
    for i in 0..5 {
        let part = shard(runs.clone(), i, 5);
        assert!((2..=3).contains(&part.len()));
        seen.extend(part.into_iter().map(|r| r.id));
    }
    seen.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn a_fixed_sweep_runs_every_setting_with_its_own_id_and_a_plain_recipe_is_unchanged() {
    let swept = format!("{BASE}[sweep]\ngrid = {{ \"train.lr\" = [0.1, 0.2] }}\n");
    let dir = tempfile::tempdir().unwrap();
    let runs = runs_in(dir.path(), &swept, &[]);
    assert_eq!(runs.len(), 3 * 2 * 2 * 2);
    let unique: std::collections::BTreeSet<_> = runs.iter().map(|r| r.id.clone().unwrap()).collect();
    assert_eq!(unique.len(), runs.len());
    let s = runs[0].sweep.as_ref().unwrap();
    assert_eq!((s.stage, s.index), (Stage::Fixed, 0));
    assert_eq!(runs[0].config["train"]["lr"], serde_json::json!(0.1));
    // A setting equal to the plain recipe's own value is the same run as without the sweep.
    let plain = runs_in(dir.path(), BASE, &["train.lr=0.1"]);
    assert!(plain.iter().all(|r| r.sweep.is_none()));
    assert_eq!(plain[0].id, runs[0].id);
}

#[test]
fn a_swept_value_that_breaks_the_recipe_is_reported_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        format!("{BASE}[sweep]\ngrid = {{ \"train.lr\" = [0.1, \"fast\"], \"seeds\" = [1] }}\n"),
    )
    .unwrap();
    let err = load(&path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("train.lr = \"fast\""), "{err}");
    assert!(err.contains("cannot sweep \"seeds\""), "{err}");
    std::fs::write(&path, format!("{BASE}[sweep]\ngrid = {{ \"train.lr\" = [0.1, 0.1] }}\n")).unwrap();
    let err = load(&path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("expected distinct values"), "{err}");
}
