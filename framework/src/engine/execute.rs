//! Executing a plan: every run that has not finished yet is trained, evaluated and written to
//! its folder in the runs folder; finished runs are skipped; a failed run is recorded and the
//! others go on.
//!
//! ```text
//! <runs dir>/<run id>/
//!   run.json             the resolved run: backbone, adapter, dataset task, train, eval, seed
//!   log.txt              one line per epoch and the outcome
//!   running.json         which process has the run (removed when the run ends; see `running`)
//!   resume.safetensors   state after the last finished epoch (removed when the run ends)
//!   adapter.safetensors  what the method trained (finished runs)
//!   curves.csv           per-epoch loss, accuracies and learning rate
//!   record.json          the run record, written last: its presence means the run ended
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::json;

use super::features::{FeatureCache, FeatureKey, SplitFeatures};
use super::fit::{EvalSource, Fit, FitError, FitOutcome, FitResult, TrainSource};
use super::memory;
use super::progress::{Control, Event, Progress};
use crate::adaptation::{Adaptation, BackboneUse, ParamCount, save_adapter};
use crate::backbone::{backbone_dtype, load_backbone};
use crate::data::{DataError, Dataset, EvalLoader, TrainLoader};
use crate::plan::RunSpec;
use crate::recipe::{AdapterConfig, Recipe, Split};
use crate::record::{
    Environment, ParamCounts, PeakMemory, RECORD_SCHEMA_VERSION, RecordLabels, RunRecord, RunStatus,
    SelectionInfo, Timing,
};
use crate::store::{self, RECORD_FILE};
use crate::vit::Vit;

/// File names inside a run folder.
pub const RUN_FILE: &str = "run.json";
/// The run's log.
pub const LOG_FILE: &str = "log.txt";
/// The resume state.
pub const STATE_FILE: &str = "resume.safetensors";
/// The trained weights.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The curves as CSV.
pub const CURVES_FILE: &str = "curves.csv";
/// Where a failed rerun's record goes when a finished record is already there (it is never
/// overwritten by a failure).
pub const FAILED_RECORD_FILE: &str = "record.failed.json";

/// Builds a method for a run: the adapter's config, the backbone, the number of classes, the
/// seed and the dtype of the trainable variables (the adapters crate's `build`).
pub type Builder<'a> =
    &'a dyn Fn(&AdapterConfig, &Vit, usize, u64, DType) -> candle_core::Result<Box<dyn Adaptation>>;

/// How to execute.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runs folder.
    pub runs_dir: PathBuf,
    /// Redo finished runs (a redo that fails keeps the finished record).
    pub force: bool,
    /// The device.
    pub device: Device,
}

/// A run that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// The run id.
    pub id: String,
    /// Why.
    pub reason: String,
    /// Whether the input was at fault (a corrupt image, a bad checkpoint) rather than training.
    pub bad_input: bool,
}

/// What happened to the plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Runs trained to the end now.
    pub finished: usize,
    /// Runs skipped because they had finished before.
    pub skipped: usize,
    /// Runs that failed now.
    pub failed: Vec<Failed>,
    /// Whether the caller stopped the plan before its end.
    pub interrupted: bool,
}

/// Executes `runs` (a plan or shard of `recipe`) into `options.runs_dir`.
pub fn execute(
    recipe: &Recipe,
    runs: &[RunSpec],
    options: &Options,
    build: Builder<'_>,
    progress: &mut dyn Progress,
) -> Summary {
    let mut summary = Summary::default();
    let finished: Vec<bool> = runs.iter().map(|r| finished_before(options, r)).collect();
    progress.event(Event::PlanStarted {
        runs: runs.len(),
        finished: finished.iter().filter(|f| **f && !options.force).count(),
    });
    let cache_dir = recipe.output.cache_dir(&options.runs_dir);
    let cache_dtype = recipe.output.cache_dtype.map(|d| backbone_dtype(d, &options.device));
    let mut cache = FeatureCache::new(cache_dir, recipe.output.cache_memory_bytes(), cache_dtype);
    let mut loaded = Loaded::default();
    for (index, (spec, done)) in runs.iter().zip(finished).enumerate() {
        let Some(id) = spec.id.clone() else {
            summary.failed.push(Failed {
                id: format!("run {} ({})", index + 1, spec.task.name),
                reason: "inputs are missing".into(),
                bad_input: true,
            });
            continue;
        };
        if done && !options.force {
            progress.event(Event::RunSkipped { id: &id });
            summary.skipped += 1;
            continue;
        }
        // A swept run trains with its stage's splits and its setting applied.
        let swept;
        let recipe = match &spec.sweep {
            None => recipe,
            Some(_) => {
                swept = crate::plan::run_recipe(recipe, spec);
                &swept
            }
        };
        let run = Run { recipe, spec, id: &id, dir: options.runs_dir.join(&id), options };
        match run.execute(index, &mut loaded, &mut cache, build, progress) {
            Ended::Finished => summary.finished += 1,
            Ended::Failed(f) => summary.failed.push(f),
            Ended::Interrupted => {
                summary.interrupted = true;
                break;
            }
        }
    }
    summary
}

fn finished_before(options: &Options, spec: &RunSpec) -> bool {
    let Some(id) = &spec.id else { return false };
    store::read_record(&options.runs_dir.join(id).join(RECORD_FILE)).is_ok_and(|r| r.finished())
}

/// The backbone and dataset of the previous run, kept while the next run uses the same ones
/// (the plan orders runs backbone, dataset, task, adapter, seed).
#[derive(Default)]
struct Loaded {
    backbone: Option<(usize, Vit)>,
    dataset: Option<((usize, String), Dataset)>,
}

enum Ended {
    Finished,
    Failed(Failed),
    Interrupted,
}

/// Why a run could not train; bad input is reported as such.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Other(String),
}

impl RunError {
    fn bad_input(&self) -> bool {
        matches!(self, RunError::Data(_) | RunError::Input(_) | RunError::Fit(FitError::Data(_)))
    }
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        RunError::Other(crate::error::Plain(&e).to_string())
    }
}

struct Run<'a> {
    recipe: &'a Recipe,
    spec: &'a RunSpec,
    id: &'a str,
    dir: PathBuf,
    options: &'a Options,
}

/// What a run measured besides the fit.
struct Measured {
    classes: usize,
    group: Option<crate::data::vtab::Group>,
    params: ParamCounts,
    feature_cache: bool,
    cache_s: f64,
}

impl Run<'_> {
    fn execute(
        &self,
        index: usize,
        loaded: &mut Loaded,
        cache: &mut FeatureCache,
        build: Builder<'_>,
        progress: &mut dyn Progress,
    ) -> Ended {
        if let Err(e) = self.prepare() {
            return Ended::Failed(Failed { id: self.id.into(), reason: e, bad_input: false });
        }
        // Removed when this function returns, after the record is written.
        let _running = super::running::Marker::create(&self.dir);
        let meter = memory::Meter::start(&self.options.device);
        let mut log = Log::open(&self.dir.join(LOG_FILE), progress);
        let outcome = self.train(index, loaded, cache, build, &meter, &mut log);
        let peak = meter.peak();
        let (status, result, measured) = match outcome {
            Ok((FitOutcome::Interrupted, _, _)) => {
                log.line("interrupted; a rerun resumes from the last saved epoch");
                return Ended::Interrupted;
            }
            Ok((FitOutcome::Finished(result), measured, adapter_bytes)) => {
                (RunStatus::Finished, result, Some((measured, adapter_bytes)))
            }
            Ok((FitOutcome::Diverged { reason, partial }, measured, _)) => {
                (RunStatus::Failed { reason }, partial, Some((measured, None)))
            }
            Err(e) => {
                let bad = e.bad_input();
                let reason = e.to_string();
                let record = self.record(
                    RunStatus::Failed { reason: reason.clone() },
                    FitResult::default(),
                    None,
                    peak,
                );
                self.write_record(&record, &mut log);
                return Ended::Failed(Failed { id: self.id.into(), reason, bad_input: bad });
            }
        };
        let record = self.record(status, result, measured, peak);
        self.write_record(&record, &mut log);
        let _ = std::fs::remove_file(self.dir.join(STATE_FILE));
        match record.failure() {
            None => Ended::Finished,
            Some(reason) => {
                Ended::Failed(Failed { id: self.id.into(), reason: reason.into(), bad_input: false })
            }
        }
    }

    /// Creates the run folder and writes the resolved run; with `--force`, drops the saved state.
    fn prepare(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        if self.options.force {
            let _ = std::fs::remove_file(self.dir.join(STATE_FILE));
        }
        let adapter = &self.recipe.adapters[self.spec.adapter];
        let run = json!({
            "run_id": self.id,
            "seed": self.spec.seed,
            "labels": self.spec.labels,
            "task": self.spec.task,
            "backbone": self.recipe.backbones[self.spec.backbone],
            "adapter": adapter,
            "dataset": self.recipe.datasets[self.spec.dataset],
            "train": self.recipe.train_for(adapter).map_err(|e| e.to_string())?,
            "eval": self.recipe.eval,
            "config": self.spec.config,
            "sweep": self.spec.sweep,
        });
        let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join(RUN_FILE), text.as_bytes())
    }

    /// Loads what the run needs, trains it, saves its weights.
    fn train(
        &self,
        index: usize,
        loaded: &mut Loaded,
        cache: &mut FeatureCache,
        build: Builder<'_>,
        meter: &memory::Meter,
        progress: &mut dyn Progress,
    ) -> Result<(FitOutcome, Measured, Option<u64>), RunError> {
        let (recipe, spec, device) = (self.recipe, self.spec, &self.options.device);
        let backbone_config = &recipe.backbones[spec.backbone];
        if loaded.backbone.as_ref().is_none_or(|(i, _)| *i != spec.backbone) {
            loaded.backbone = None; // free the previous one first
            let vit = load_backbone(backbone_config, device).map_err(|e| RunError::Input(e.to_string()))?;
            loaded.backbone = Some((spec.backbone, vit));
        }
        let dataset_key = (spec.dataset, spec.task.name.clone());
        if loaded.dataset.as_ref().is_none_or(|(k, _)| *k != dataset_key) {
            loaded.dataset = None;
            let d = Dataset::open(&recipe.datasets[spec.dataset], &spec.task, backbone_config.image_size)?;
            loaded.dataset = Some((dataset_key, d));
        }
        let (Some((_, vit)), Some((_, dataset))) = (&loaded.backbone, &loaded.dataset) else {
            return Err(RunError::Other("backbone or dataset not loaded".into()));
        };
        let adapter = &recipe.adapters[spec.adapter];
        let train = recipe.train_for(adapter).map_err(|e| RunError::Input(e.to_string()))?;
        let eval = &recipe.eval;
        let classes = dataset.classes();
        let adaptation = build(adapter, vit, classes, spec.seed, DType::F32)?;
        let loader = TrainLoader::new(
            dataset,
            &dataset.split(eval.train_split)?,
            &train.augment,
            spec.seed,
            train.batch_size as usize,
            device,
        )?;
        let eval_loader = |split: Split| -> Result<EvalLoader, DataError> {
            EvalLoader::new(dataset, dataset.split(split)?, eval.batch_size as usize, device)
        };
        let test = eval_loader(eval.test_split)?;
        let val = eval.val_split.map(eval_loader).transpose()?;
        let cached = recipe.output.feature_cache.unwrap_or(true)
            && adaptation.backbone_use() == BackboneUse::Frozen
            && !train.augment.any();
        let title = format!("{} · {} · seed {}", spec.task.name, spec.labels.adapter, spec.seed);
        let state_file = self.dir.join(STATE_FILE);
        let from_epoch = if state_file.is_file() { peek_epoch(&state_file) } else { 0 };
        let control = progress.event(Event::RunStarted {
            index,
            id: self.id,
            title: &title,
            from_epoch,
            epochs: train.epochs,
            steps_per_epoch: loader.batches_per_epoch(),
        });
        if control == Control::Stop {
            return Ok((
                FitOutcome::Interrupted,
                self.measured(vit, &*adaptation, dataset, false, 0.0),
                None,
            ));
        }
        let started = Instant::now();
        let taps = adaptation.taps();
        let mut features =
            |split: Split, images: usize, batches: Batches<'_>| -> Result<SplitFeatures, RunError> {
                progress.event(Event::Caching { split, images });
                let key = FeatureKey {
                    backbone: spec.config["backbone"].clone(),
                    dataset: spec.config["dataset"].clone(),
                    preprocess: spec.config["preprocess"].clone(),
                    split,
                };
                Ok(cache.features(&key, vit, &taps, batches).map_err(FitError::from)?)
            };
        let (train_features, val_features) = match cached {
            true => {
                let t = features(eval.train_split, loader.len(), Box::new(loader.sequential()) as Batches)?;
                let v = match (&val, eval.val_split) {
                    (Some(v), Some(split)) => {
                        Some(features(split, v.len(), Box::new(v.batches()) as Batches)?)
                    }
                    _ => None,
                };
                (Some(t), v)
            }
            false => (None, None),
        };
        let cache_s = started.elapsed().as_secs_f64();
        let fit = Fit {
            vit,
            adaptation: &*adaptation,
            train: &train,
            eval,
            classes,
            device,
            data: TrainSource { loader: &loader, features: train_features.as_ref() },
            val: val.as_ref().zip(eval.val_split).map(|(loader, split)| EvalSource {
                split,
                loader,
                features: val_features.as_ref(),
            }),
            test: EvalSource { split: eval.test_split, loader: &test, features: None },
            state_file: Some(&state_file),
            checkpoint_every: recipe.output.checkpoint_every.unwrap_or(1),
            memory: Some(meter),
        };
        let outcome = fit.run(progress)?;
        let measured = self.measured(vit, &*adaptation, dataset, cached, cache_s);
        let adapter_bytes = match &outcome {
            FitOutcome::Finished(result) => {
                write_curves(&self.dir.join(CURVES_FILE), &result.curves).map_err(RunError::Other)?;
                let metadata = [("run_id".to_owned(), self.id.to_owned())].into();
                Some(
                    save_adapter(&*adaptation, &self.dir.join(ADAPTER_FILE), metadata)
                        .map_err(|e| RunError::Other(e.to_string()))?,
                )
            }
            _ => None,
        };
        Ok((outcome, measured, adapter_bytes))
    }

    fn measured(
        &self,
        vit: &Vit,
        adaptation: &dyn Adaptation,
        dataset: &Dataset,
        feature_cache: bool,
        cache_s: f64,
    ) -> Measured {
        let count = ParamCount::of(adaptation);
        let backbone: usize =
            vit.tensors().iter().filter(|(n, _)| !is_classifier(n)).map(|(_, t)| t.elem_count()).sum();
        // Methods that train the backbone train a copy of it: its parameters are counted once.
        let total = match adaptation.backbone_use() {
            BackboneUse::Trainable => backbone + count.head,
            _ => backbone + count.with_head(),
        };
        Measured {
            classes: dataset.classes(),
            group: dataset.group(),
            params: ParamCounts {
                trainable_with_head: count.with_head() as u64,
                trainable_without_head: count.without_head as u64,
                total: total as u64,
            },
            feature_cache,
            cache_s,
        }
    }

    fn record(
        &self,
        status: RunStatus,
        result: FitResult,
        measured: Option<(Measured, Option<u64>)>,
        memory: PeakMemory,
    ) -> RunRecord {
        let spec = self.spec;
        let adapter = &self.recipe.adapters[spec.adapter];
        let (measured, adapter_bytes) = match measured {
            Some((m, bytes)) => (Some(m), bytes),
            None => (None, None),
        };
        let cache_s = measured.as_ref().map_or(0.0, |m| m.cache_s);
        let train_s = result.train_s + cache_s;
        let eval = &self.recipe.eval;
        RunRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            run_id: self.id.to_owned(),
            config: spec.config.clone(),
            labels: RecordLabels {
                backbone: spec.labels.backbone.clone(),
                adapter: spec.labels.adapter.clone(),
                adapter_kind: adapter.kind().to_owned(),
                dataset: spec.labels.dataset.clone(),
                task: spec.task.name.clone(),
                group: measured.as_ref().and_then(|m| m.group).or(spec.task.group),
                classes: measured.as_ref().map(|m| m.classes).or(spec.task.classes),
                seed: spec.seed,
            },
            status,
            accuracy: result.accuracy,
            curves: result.curves,
            timing: Timing {
                train_s,
                eval_s: result.eval_s,
                images_per_s: if train_s > 0.0 { result.images as f64 / train_s } else { 0.0 },
                cache_s: measured.as_ref().filter(|m| m.feature_cache).map(|m| m.cache_s),
            },
            memory,
            params: measured.as_ref().map(|m| m.params.clone()).unwrap_or(ParamCounts {
                trainable_with_head: 0,
                trainable_without_head: 0,
                total: 0,
            }),
            adapter_bytes,
            feature_cache: measured.as_ref().is_some_and(|m| m.feature_cache),
            selection: SelectionInfo {
                rule: eval.select,
                epoch: result.selected_epoch,
                split: eval.test_split,
                selected_on_test: eval.select == crate::recipe::Selection::BestTest,
            },
            environment: Environment::current(&describe(&self.options.device)),
            sweep: self.spec.sweep.clone(),
        }
    }

    /// Writes the record; a failure never replaces a finished record (it goes beside it).
    fn write_record(&self, record: &RunRecord, log: &mut Log<'_>) {
        let existing = self.dir.join(RECORD_FILE);
        let keep_finished = !record.finished() && store::read_record(&existing).is_ok_and(|r| r.finished());
        let result = match keep_finished {
            true => store::write_record_file(&self.dir.join(FAILED_RECORD_FILE), record),
            false => store::write_record(&self.dir, record),
        };
        match (result, record.failure()) {
            (Err(e), _) => log.line(&format!("cannot write the record: {e}")),
            (Ok(_), None) => log.line("finished"),
            (Ok(_), Some(reason)) => log.line(&format!("failed: {reason}")),
        }
        log.progress.event(Event::RunEnded { record });
    }
}

type Batches<'a> = Box<dyn Iterator<Item = Result<crate::data::Batch, DataError>> + 'a>;

fn is_classifier(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("pre_logits.")
}

/// The epoch a saved state would resume at (0 when it cannot be read; the fit reports why).
fn peek_epoch(path: &Path) -> u32 {
    super::resume::peek(path).map_or(0, |s| s.epoch)
}

/// A device for records: "cpu", or "cuda:N".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The per-epoch curves as CSV.
fn write_curves(path: &Path, curves: &[crate::record::EpochMetrics]) -> Result<(), String> {
    let cell = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut text = String::from("epoch,train_loss,train_accuracy,val_accuracy,test_accuracy,lr\n");
    for m in curves {
        text.push_str(&format!(
            "{},{},{},{},{},{}\n",
            m.epoch,
            cell(m.train_loss),
            cell(m.train_accuracy),
            cell(m.val_accuracy),
            cell(m.test_accuracy),
            cell(m.lr)
        ));
    }
    write_atomic(path, text.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    store::write_atomic(path, bytes).map(|_| ()).map_err(|e| e.to_string())
}

/// Passes events on, and appends to the run's log file: one line per epoch and the outcome, each
/// stamped with the seconds since this process took up the run.
struct Log<'a> {
    file: Option<std::fs::File>,
    started: Instant,
    progress: &'a mut dyn Progress,
}

impl<'a> Log<'a> {
    fn open(path: &Path, progress: &'a mut dyn Progress) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
        Self { file, started: Instant::now(), progress }
    }

    fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "[{:>9.1}s] {text}", self.started.elapsed().as_secs_f64());
        }
    }
}

impl Progress for Log<'_> {
    fn event(&mut self, event: Event<'_>) -> Control {
        match event {
            Event::RunStarted { id, from_epoch: 0, epochs, .. } => {
                self.line(&format!("run {id}: starting, {epochs} epochs"))
            }
            Event::RunStarted { id, from_epoch, epochs, .. } => {
                self.line(&format!("run {id}: resuming after epoch {from_epoch} of {epochs}"))
            }
            Event::EpochEnded { metrics } => self.line(&metrics.summary()),
            _ => {}
        }
        self.progress.event(event)
    }
}
