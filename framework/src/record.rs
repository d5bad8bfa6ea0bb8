//! The run record: everything one run produced, as written to `runs/<recipe>/<run id>/record.json`.
//!
//! It is the one contract between the engine (which fills it) and the reports (which read it), so
//! every number carries its unit in its name or doc, and the file carries a `schema_version`.
//! Accuracies are fractions in [0, 1] (reports show percent); times are seconds; memory and file
//! sizes are bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::vtab::Group;
use crate::recipe::{Selection, Split};

/// The record format this version writes and the newest it reads. Raise it when a field changes
/// meaning or a required field is added (optional fields with defaults need no new version).
pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// Everything one run (one backbone × adapter × task × seed) produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Format version of this record; see [`RECORD_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The run id from the plan, `<task>-<adapter kind>-s<seed>-<hash>`.
    pub run_id: String,
    /// The canonical config JSON the run id hashes (as in the plan's `RunSpec::config`).
    pub config: Value,
    /// Names for people: backbone, adapter, dataset, task, seed.
    pub labels: RecordLabels,
    /// Whether the run finished, and why not.
    pub status: RunStatus,
    /// Accuracy on each split evaluated at the reported epoch (empty when the run failed before).
    #[serde(default)]
    pub accuracy: Vec<SplitAccuracy>,
    /// One point per epoch, in epoch order.
    #[serde(default)]
    pub curves: Vec<EpochMetrics>,
    /// Wall times and throughput.
    pub timing: Timing,
    /// Peak memory of this run and how it was measured.
    pub memory: PeakMemory,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Size in bytes of the saved adapter file (trainable weights, head included); absent when
    /// nothing was saved (e.g. the run failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_bytes: Option<u64>,
    /// Whether training read backbone features from the feature cache instead of running the
    /// backbone every epoch (it changes training time and memory, not results).
    pub feature_cache: bool,
    /// Which epoch's weights give the reported accuracy.
    pub selection: SelectionInfo,
    /// Where and with what the run ran.
    pub environment: Environment,
    /// The run's place in a sweep: protocol, stage, setting and (final stage) the val200 accuracy
    /// that chose it; absent when the recipe sweeps nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::plan::SweepRun>,
}

/// Display names of a run's parts (the plan's labels, plus the task and seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLabels {
    /// The backbone's display name, e.g. "ViT-B/16".
    pub backbone: String,
    /// The adapter's display name: its recipe `label`, else its kind.
    pub adapter: String,
    /// The adapter's kind, e.g. "losa".
    pub adapter_kind: String,
    /// The dataset's kind, e.g. "vtab1k".
    pub dataset: String,
    /// The task's name, e.g. "cifar" (VTAB-1k tasks by their folder name, not an alias).
    pub task: String,
    /// The VTAB-1k group of the task, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// Number of classes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// The seed.
    pub seed: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunStatus {
    /// Trained and evaluated.
    Finished,
    /// Stopped with an error; the reason is for people, e.g. "diverged at step 120".
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// Accuracy on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitAccuracy {
    /// The split.
    pub split: Split,
    /// Top-1 accuracy, a fraction in [0, 1].
    pub top1: f64,
    /// Accuracy of each class (index = label), fractions in [0, 1]; null for a class the split
    /// does not contain; empty when not measured.
    #[serde(default)]
    pub per_class: Vec<Option<f64>>,
}

/// Metrics of one epoch: training loss and accuracy always, validation and test accuracy on the
/// epochs they were evaluated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochMetrics {
    /// The epoch, 1-based (epoch 1 is after the first pass over the training split).
    pub epoch: u32,
    /// Mean training loss over the epoch; absent when it was not finite (a diverged run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Training accuracy over the epoch, a fraction in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Accuracy on the validation split, when one is evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Accuracy on the test split, when it is evaluated during training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// The learning rate of the epoch's last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// Wall times and throughput of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Training wall time in seconds (feature caching included, evaluation excluded).
    pub train_s: f64,
    /// Evaluation wall time in seconds, all evaluations together.
    pub eval_s: f64,
    /// Training images per second: images of all epochs over `train_s`.
    pub images_per_s: f64,
    /// Seconds of `train_s` spent computing backbone features for the feature cache (0 when
    /// they were there already); absent when the run did not use the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_s: Option<f64>,
}

/// Peak memory of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakMemory {
    /// Peak memory in bytes, as measured by `measured`.
    pub bytes: u64,
    /// How it was measured (the two are not comparable with each other).
    pub measured: MemoryMeasure,
}

/// How peak memory was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMeasure {
    /// The process's peak resident memory on the CPU (includes the loaded data and the program).
    CpuProcessPeak,
    /// CUDA device memory allocated above the baseline before the run started.
    CudaAboveBaseline,
}

impl MemoryMeasure {
    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            MemoryMeasure::CpuProcessPeak => "CPU process peak",
            MemoryMeasure::CudaAboveBaseline => "CUDA memory above baseline",
        }
    }
}

/// Parameter counts of the adapted model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamCounts {
    /// Trainable parameters, the classification head included.
    pub trainable_with_head: u64,
    /// Trainable parameters without the classification head (what VTAB-1k papers report).
    pub trainable_without_head: u64,
    /// All parameters: backbone, adaptation and head.
    pub total: u64,
}

/// How the reported epoch was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionInfo {
    /// The recipe's selection rule.
    pub rule: Selection,
    /// The epoch whose weights are reported, when the run got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// The split the reported accuracy is measured on (the recipe's `eval.test_split`).
    pub split: Split,
    /// Whether the reported number was chosen by looking at the test split (reports label it).
    pub selected_on_test: bool,
}

/// The software and machine a run ran on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The compute device, e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub device: String,
    /// losa's version.
    pub losa_version: String,
    /// candle's version.
    pub candle_version: String,
    /// The git commit losa was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The machine's host name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The operating system, e.g. "linux x86_64".
    pub os: String,
}

impl EpochMetrics {
    /// One line for people: "epoch 3: loss 1.2345, train 45.00%, val 50.00%, lr 1.0e-3" (the
    /// accuracies that were not measured are left out).
    pub fn summary(&self) -> String {
        let percent = |v: f64| format!("{:.2}%", v * 100.0);
        let mut line = format!("epoch {}: loss {:.4}", self.epoch, self.train_loss.unwrap_or(f64::NAN));
        for (name, value) in
            [("train", self.train_accuracy), ("val", self.val_accuracy), ("test", self.test_accuracy)]
        {
            if let Some(v) = value {
                line.push_str(&format!(", {name} {}", percent(v)));
            }
        }
        if let Some(lr) = self.lr {
            line.push_str(&format!(", lr {lr:.3e}"));
        }
        line
    }
}

impl Environment {
    /// This build on this machine, running on the device described as `device`.
    pub fn current(device: &str) -> Self {
        Self {
            device: device.to_owned(),
            losa_version: env!("CARGO_PKG_VERSION").to_owned(),
            candle_version: env!("LOSA_CANDLE_VERSION").to_owned(),
            git_commit: option_env!("LOSA_GIT_COMMIT").map(str::to_owned),
            hostname: hostname(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// This machine's host name, when known.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Names this process among every writer of a shared folder: the host name and the process id
/// (process ids repeat across the nodes of a cluster that share a file system). Part of the name
/// of every temporary file that is renamed into place.
pub fn writer_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host: String = hostname()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        format!("{host}.{}", std::process::id())
    })
}

impl RunRecord {
    /// Whether the run finished.
    pub fn finished(&self) -> bool {
        self.status == RunStatus::Finished
    }

    /// The failure reason, when the run failed.
    pub fn failure(&self) -> Option<&str> {
        match &self.status {
            RunStatus::Finished => None,
            RunStatus::Failed { reason } => Some(reason),
        }
    }

    /// The reported top-1 accuracy (a fraction): the selection's split, if the run finished.
    pub fn reported_accuracy(&self) -> Option<f64> {
        self.finished()
            .then(|| self.accuracy.iter().find(|a| a.split == self.selection.split))
            .flatten()
            .map(|a| a.top1)
    }

    /// Checks what the types cannot: the version, fractions in [0, 1], finite non-negative times,
    /// and that a finished run has its reported accuracy. Returns `key: problem` lines.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.schema_version == 0 || self.schema_version > RECORD_SCHEMA_VERSION {
            out.push(format!(
                "schema_version: this losa reads versions 1 to {RECORD_SCHEMA_VERSION}, found {} \
                 (written by a newer losa?)",
                self.schema_version
            ));
        }
        let mut fraction = |key: String, v: f64| {
            if !(0.0..=1.0).contains(&v) {
                out.push(format!("{key}: expected a fraction in [0, 1], found {v} (percent?)"));
            }
        };
        for (i, a) in self.accuracy.iter().enumerate() {
            fraction(format!("accuracy[{i}].top1"), a.top1);
            for (c, v) in a.per_class.iter().enumerate() {
                if let Some(v) = v {
                    fraction(format!("accuracy[{i}].per_class[{c}]"), *v);
                }
            }
        }
        for (i, p) in self.curves.iter().enumerate() {
            let named = [
                ("train_accuracy", p.train_accuracy),
                ("val_accuracy", p.val_accuracy),
                ("test_accuracy", p.test_accuracy),
            ];
            for (name, v) in named {
                if let Some(v) = v {
                    fraction(format!("curves[{i}].{name}"), v);
                }
            }
        }
        let t = &self.timing;
        for (name, v) in [("train_s", t.train_s), ("eval_s", t.eval_s), ("images_per_s", t.images_per_s)] {
            if !(v.is_finite() && v >= 0.0) {
                out.push(format!("timing.{name}: expected a non-negative number, found {v}"));
            }
        }
        if self.params.trainable_without_head > self.params.trainable_with_head {
            out.push("params: trainable_without_head exceeds trainable_with_head".into());
        }
        if self.finished() && self.reported_accuracy().is_none() {
            out.push(format!(
                "accuracy: the run finished but has no accuracy on the selection's split \"{}\"",
                self.selection.split
            ));
        }
        out
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
pub(crate) mod tests;
