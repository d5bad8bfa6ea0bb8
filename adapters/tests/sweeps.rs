//! `protocol = "tune_then_test"` end to end on the synthetic suite with a tiny ViT: the tuning
//! stage, the choice, the final stage, and resuming between the stages. (Here rather than in the
//! root `tests/` so it runs with the framework and the adapters alone.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use losa_framework::engine::execute::{Options, execute};
use losa_framework::engine::progress::Silent;
use losa_framework::engine::protocol::{choices, execute_protocol};
use losa_framework::plan::{Stage, plan, plan_final};
use losa_framework::recipe::{LoadOptions, Protocol, Recipe, load};

const RECIPE: &str = r#"
name = "sweep"
seeds = [0, 1]
protocol = "tune_then_test"
[[backbones]]
variant = "custom"
width = 32
depth = 2
heads = 2
mlp_dim = 64
patch_size = 8
image_size = 32
random_init = 1
[[adapters]]
kind = "linear_probe"
sweep = { "train.lr" = [1e-2, 1e-5] }
[[datasets]]
kind = "synthetic"
tasks = ["shape"]
image_size = 32
train_size = 32
val_size = 16
test_size = 16
[train]
epochs = 2
warmup_epochs = 0
batch_size = 16
"#;

fn recipe(dir: &Path) -> Recipe {
    let path = dir.join("recipe.toml");
    std::fs::write(&path, RECIPE).unwrap();
    load(&path, &LoadOptions::default()).unwrap()
}

fn options(dir: &Path) -> Options {
    Options { runs_dir: dir.join("runs"), force: false, device: candle_core::Device::Cpu }
}

#[test]
fn tuning_then_the_chosen_setting_on_the_final_splits_and_a_rerun_resumes_between_stages() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, options) = (recipe(dir.path()), options(dir.path()));
    let tuning = plan(&recipe);
    assert_eq!(tuning.len(), 2 * 2);
    assert!(choices(&tuning, &options).is_empty(), "nothing has run");

    // Only the tuning stage ran (say, the job ended there): the protocol picks up from it.
    let first = execute(&recipe, &tuning, &options, &losa_adapters::build, &mut Silent);
    assert_eq!((first.finished, first.failed.len()), (4, 0));
    for r in losa_framework::store::read_records(&options.runs_dir).unwrap() {
        assert_eq!(r.sweep.unwrap().stage, Stage::Tune, "the record says its stage");
    }
    let chosen = choices(&tuning, &options);
    assert_eq!(chosen.len(), 1);
    let choice = chosen.values().next().unwrap();
    assert!(choice.val_accuracy.is_finite() && choice.candidates == 2);

    let both = execute_protocol(&recipe, &options, &losa_adapters::build, &mut Silent);
    assert_eq!((both.skipped, both.finished, both.failed.len()), (4, 2, 0));
    let finals = plan_final(&recipe, &chosen);
    for run in &finals {
        let id = run.id.as_ref().unwrap();
        let sweep = run.sweep.as_ref().unwrap();
        assert_eq!((sweep.stage, sweep.index), (Stage::Final, choice.index));
        let record =
            losa_framework::store::read_record(&options.runs_dir.join(id).join("record.json")).unwrap();
        let splits: Vec<String> = record.accuracy.iter().map(|a| a.split.to_string()).collect();
        assert_eq!(splits, ["test"], "{id}");
        let kept = record.sweep.as_ref().unwrap();
        assert_eq!((kept.protocol, kept.stage), (Protocol::TuneThenTest, Stage::Final));
        assert_eq!((&kept.setting, kept.val_accuracy), (&choice.setting, Some(choice.val_accuracy)));
        let run_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(options.runs_dir.join(id).join("run.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(run_json["eval"]["train_split"], "train800val200");
        assert_eq!(run_json["sweep"]["setting"], serde_json::to_value(&choice.setting).unwrap());
    }

    // Everything finished: a rerun trains nothing and makes the same choice.
    let again = execute_protocol(&recipe, &options, &losa_adapters::build, &mut Silent);
    assert_eq!((again.skipped, again.finished), (6, 0));
    assert_eq!(choices(&tuning, &options), chosen);
}
