use super::*;

/// A record as the engine writes it: every field, in the documented units.
pub(crate) const EXAMPLE: &str = r#"{
  "schema_version": 1,
  "run_id": "dtd-losa-s0-0123456789",
  "config": { "adapter": { "kind": "losa" }, "seed": 0 },
  "labels": {
    "backbone": "ViT-B/16", "adapter": "losa", "adapter_kind": "losa", "dataset": "vtab1k",
    "task": "dtd", "group": "natural", "classes": 47, "seed": 0
  },
  "status": { "state": "finished" },
  "accuracy": [
    { "split": "test", "top1": 0.725, "per_class": [0.5, 1.0] },
    { "split": "train800val200", "top1": 0.99 }
  ],
  "curves": [
    { "epoch": 10, "train_loss": 1.5, "train_accuracy": 0.6 },
    { "epoch": 20, "train_loss": 0.4, "train_accuracy": 0.9, "test_accuracy": 0.7 }
  ],
  "timing": { "train_s": 120.5, "eval_s": 10.0, "images_per_s": 830.0 },
  "memory": { "bytes": 2500000000, "measured": "cuda_above_baseline" },
  "params": { "trainable_with_head": 226000, "trainable_without_head": 190000, "total": 86000000 },
  "adapter_bytes": 904000,
  "feature_cache": true,
  "selection": { "rule": "last", "epoch": 20, "split": "test", "selected_on_test": false },
  "environment": {
    "device": "cuda:0 (NVIDIA H100)", "losa_version": "0.1.0", "candle_version": "0.11.1",
    "git_commit": "69e5202", "hostname": "node1", "os": "linux x86_64"
  }
}"#;

pub(crate) fn example() -> RunRecord {
    serde_json::from_str(EXAMPLE).unwrap()
}

#[test]
fn the_documented_example_reads_and_round_trips() {
    let r = example();
    assert_eq!(r.labels.group, Some(Group::Natural));
    assert_eq!(r.reported_accuracy(), Some(0.725));
    assert_eq!(r.memory.measured, MemoryMeasure::CudaAboveBaseline);
    assert_eq!(r.curves[0].val_accuracy, None);
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    let again: RunRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(again, r);
}

#[test]
fn a_failed_run_has_a_reason_and_no_reported_accuracy() {
    let mut r = example();
    r.status = RunStatus::Failed { reason: "diverged at step 120".into() };
    assert_eq!(r.failure(), Some("diverged at step 120"));
    assert_eq!(r.reported_accuracy(), None);
    assert!(r.problems().is_empty());
    let json = serde_json::to_value(&r.status).unwrap();
    assert_eq!(json, serde_json::json!({ "state": "failed", "reason": "diverged at step 120" }));
}

#[test]
fn problems_catch_percentages_newer_versions_and_a_missing_reported_split() {
    let mut r = example();
    r.accuracy[0].top1 = 72.5;
    r.schema_version = RECORD_SCHEMA_VERSION + 1;
    r.timing.train_s = f64::NAN;
    let p = r.problems();
    assert!(p.iter().any(|m| m.starts_with("accuracy[0].top1: expected a fraction")), "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("schema_version:")), "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("timing.train_s:")), "{p:?}");

    let mut r = example();
    r.selection.split = Split::Val200;
    assert_eq!(r.reported_accuracy(), None);
    assert!(r.problems().iter().any(|m| m.contains("no accuracy on the selection's split \"val200\"")));
}
