//! Hand-made run records for the unit tests.

use losa_framework::data::vtab::Group;
use losa_framework::recipe::{Selection, Split};
use losa_framework::record::*;

/// A finished run of `adapter` on `task` with test accuracy `accuracy` (a fraction), or a failed
/// run when `accuracy` is `None`. Costs grow with the adapter's name length so methods differ.
pub fn record(
    adapter: &str,
    task: &str,
    group: Option<Group>,
    seed: u64,
    accuracy: Option<f64>,
) -> RunRecord {
    let scale = adapter.len() as u64;
    RunRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        run_id: format!("{task}-{adapter}-s{seed}-0000000000"),
        config: serde_json::json!({ "adapter": { "kind": adapter }, "seed": seed }),
        labels: RecordLabels {
            backbone: "ViT-B/16".into(),
            adapter: adapter.into(),
            adapter_kind: adapter.into(),
            dataset: "vtab1k".into(),
            task: task.into(),
            group,
            classes: Some(10),
            seed,
        },
        status: match accuracy {
            Some(_) => RunStatus::Finished,
            None => RunStatus::Failed { reason: format!("diverged at step {}", 100 + seed) },
        },
        accuracy: accuracy
            .map(|a| vec![SplitAccuracy { split: Split::Test, top1: a, per_class: vec![] }])
            .unwrap_or_default(),
        curves: vec![
            EpochMetrics {
                epoch: 1,
                train_loss: Some(2.0),
                train_accuracy: Some(0.3),
                val_accuracy: None,
                test_accuracy: None,
                lr: None,
            },
            EpochMetrics {
                epoch: 2,
                train_loss: Some(1.0),
                train_accuracy: Some(0.6),
                val_accuracy: None,
                test_accuracy: accuracy,
                lr: None,
            },
        ],
        timing: Timing {
            train_s: 10.0 * scale as f64,
            eval_s: 1.0,
            images_per_s: 1000.0 / scale as f64,
            cache_s: None,
        },
        memory: PeakMemory { bytes: scale << 30, measured: MemoryMeasure::CudaAboveBaseline },
        params: ParamCounts {
            trainable_with_head: scale * 1000 + 7690,
            trainable_without_head: scale * 1000,
            total: 86_000_000,
        },
        adapter_bytes: accuracy.map(|_| scale * 4000),
        feature_cache: false,
        selection: SelectionInfo {
            rule: Selection::Last,
            epoch: Some(2),
            split: Split::Test,
            selected_on_test: false,
        },
        environment: Environment {
            device: "cpu".into(),
            losa_version: "0.1.0".into(),
            candle_version: "0.11.1".into(),
            git_commit: None,
            hostname: Some("test".into()),
            os: "linux x86_64".into(),
        },
        sweep: None,
    }
}
