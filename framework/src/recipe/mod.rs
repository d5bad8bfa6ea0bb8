//! The recipe language: what a researcher writes in TOML, layered and validated.
//!
//! Every type here is pure data. Fields carry `///` docs with units and defaults (they become the
//! hover text in editors through the JSON Schema), unknown keys are rejected everywhere, and
//! [`load`](load::load) reports every problem of a recipe at once.

mod adapter;
mod backbone;
mod checks;
mod dataset;
mod device;
mod error;
mod eval;
mod load;
mod overrides;
mod schema;
mod slurm;
pub mod sweep;
mod train;
mod validate;

pub use adapter::*;
pub use backbone::*;
pub use dataset::*;
pub use device::DeviceSpec;
pub(crate) use error::did_you_mean;
pub use error::{Problem, RecipeError};
pub use eval::*;
pub use load::{LoadOptions, load};
pub use overrides::TrainOverrides;
pub use schema::{recipe_schema, schema_json};
pub use slurm::SlurmConfig;
pub use sweep::*;
pub use train::*;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A recipe: the backbones × adapters × datasets × seeds to run, and how to train and evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "losa recipe")]
pub struct Recipe {
    /// Name of the comparison; letters, digits, '.', '_' and '-'. Runs go to `runs/<name>/` unless
    /// `output.dir` says otherwise. Required.
    pub name: String,
    /// Free text shown at the top of the report. Default: "".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Seeds; every run is repeated once per seed and reports show mean ± std. Default: [0].
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Backbones to adapt (usually one). Required, at least one.
    pub backbones: Vec<BackboneConfig>,
    /// Adaptation methods to compare. Required, at least one.
    pub adapters: Vec<AdapterConfig>,
    /// Datasets (each may expand into several tasks). Required, at least one.
    pub datasets: Vec<DatasetConfig>,
    /// Training settings shared by every method (each may override them in its own `train`).
    #[serde(default)]
    pub train: TrainConfig,
    /// Settings to sweep for every method (each may add its own in its `sweep`). Default: none.
    #[serde(default, skip_serializing_if = "SweepConfig::is_empty")]
    pub sweep: SweepConfig,
    /// How swept settings are used: "fixed" runs each as given; "tune_then_test" picks the best
    /// per method × task on train800 → val200 and runs it on train800val200 → test.
    /// Default: "fixed".
    #[serde(default, skip_serializing_if = "Protocol::is_fixed")]
    pub protocol: Protocol,
    /// Split pair, selection rule and evaluation interval.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Compute device: "auto", "cpu", "cuda" or "cuda:N". Default: "auto".
    #[serde(default)]
    pub device: DeviceSpec,
    /// Where results go.
    #[serde(default)]
    pub output: OutputConfig,
    /// The generated report.
    #[serde(default)]
    pub report: ReportConfig,
    /// Resources of the Slurm jobs of `runner submit` (partition, GPUs, time, ...). They never
    /// change a run's id.
    #[serde(default)]
    pub slurm: SlurmConfig,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Where results are written. Paths here are relative to the working directory, not the recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The runs folder of this recipe (one sub-folder per run, plus `report/`); `--out` overrides
    /// it. Default: "runs/<name>".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Folder of the shared feature cache. Default: "<dir>/cache".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Cached features kept in memory up to this many GiB; beyond it they are memory-mapped from
    /// `cache_dir`. Default: 4.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_memory_gib: Option<f64>,
    /// Number format of cached features: "auto" (the backbone's own: exact), "f16" or "bf16"
    /// (half the memory, within half-precision rounding) or "f32". Default: "auto".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dtype: Option<BackboneDtype>,
    /// Train methods that keep the backbone frozen (and use no augmentation) from cached backbone
    /// features instead of running the backbone every epoch. It changes time and memory, not
    /// results. Default: true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_cache: Option<bool>,
    /// Save a run's state (weights, optimiser, curves) every this many epochs, so an interrupted
    /// run resumes from there; 0 never saves. Default: 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u32>,
}

impl OutputConfig {
    /// The feature cache folder: `cache_dir`, else `<runs_dir>/cache`.
    pub fn cache_dir(&self, runs_dir: &std::path::Path) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| runs_dir.join("cache"))
    }

    /// The feature cache's memory budget in bytes (default 4 GiB).
    pub fn cache_memory_bytes(&self) -> u64 {
        (self.cache_memory_gib.unwrap_or(4.0).max(0.0) * (1u64 << 30) as f64) as u64
    }
}

/// Settings of the generated report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Write the report when the plan finishes. Default: true.
    pub enabled: bool,
    /// Title of the report. Default: the recipe's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// CSV of published results shown beside this recipe's own, marked as published (one row per
    /// method, one column per task; see `recipes/vtab1k_published.csv`). Relative to the recipe
    /// file. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-input-path" = true))]
    pub published: Option<PathBuf>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { enabled: true, title: None, published: None }
    }
}

impl Recipe {
    /// The runs folder of this recipe: `output.dir`, else `runs/<name>`.
    pub fn runs_dir(&self) -> PathBuf {
        self.output.dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&self.name))
    }

    /// The training settings of adapter `i`: `[train]` with its overrides merged in.
    pub fn train_for(&self, adapter: &AdapterConfig) -> Result<TrainConfig, serde_json::Error> {
        adapter.train_overrides().apply(&self.train)
    }
}

#[cfg(test)]
mod tests;
