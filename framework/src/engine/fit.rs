//! Training one run: epochs of optimisation steps over the training split (images, or backbone
//! features from the cache), evaluation every N epochs, the selection rule, and the resumable
//! state saved after each epoch.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::features::{FeatureError, SplitFeatures};
use super::loss::{cross_entropy, tally};
use super::memory::Meter;
use super::optim::Optimizer;
use super::progress::{Control, Event, Progress};
use super::resume::{self, Best, Snapshot, State};
use super::schedule::learning_rate;
use crate::adaptation::{Adaptation, Taps};
use crate::data::{DataError, EvalLoader, TrainLoader};
use crate::recipe::{EvalConfig, Selection, Split, TrainConfig};
use crate::record::{EpochMetrics, SplitAccuracy};
use crate::vit::Vit;

/// Why training could not go on (not divergence: that is a [`FitOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// A batch could not be made (a corrupt or missing image).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The feature cache failed.
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// A tensor operation failed (e.g. out of memory).
    #[error("{}", crate::error::Plain(.0))]
    Tensor(#[from] candle_core::Error),
    /// The resume state could not be written or read.
    #[error(transparent)]
    State(#[from] resume::StateError),
}

/// The training split: decoded images, and the backbone features of the same images in split
/// order when the method reads them from the cache. Both give the same epochs: the loader's
/// seeded order, the same batches.
#[derive(Debug, Clone, Copy)]
pub struct TrainSource<'a> {
    /// The images (their order, and the batches when no features are given).
    pub loader: &'a TrainLoader,
    /// Cached features of the loader's images, for a `Frozen` method without augmentation.
    pub features: Option<&'a SplitFeatures>,
}

/// An evaluation split: streamed images, or cached features of them.
#[derive(Debug, Clone, Copy)]
pub struct EvalSource<'a> {
    /// Which split it is.
    pub split: Split,
    /// The images, in split order.
    pub loader: &'a EvalLoader,
    /// Cached features of the same images, in split order.
    pub features: Option<&'a SplitFeatures>,
}

/// What one run trains and on what.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    /// The backbone.
    pub vit: &'a Vit,
    /// The method, freshly built (or to be restored from `state_file`).
    pub adaptation: &'a dyn Adaptation,
    /// The run's training settings (the adapter's overrides applied).
    pub train: &'a TrainConfig,
    /// The evaluation settings.
    pub eval: &'a EvalConfig,
    /// The task's number of classes.
    pub classes: usize,
    /// Where batches go.
    pub device: &'a Device,
    /// The training split.
    pub data: TrainSource<'a>,
    /// The validation split, when the recipe sets one.
    pub val: Option<EvalSource<'a>>,
    /// The split the reported accuracy is measured on.
    pub test: EvalSource<'a>,
    /// Where the resume state is kept: read at the start if there, written after every
    /// `checkpoint_every` epochs. `None`: nothing is saved.
    pub state_file: Option<&'a Path>,
    /// Save the state every this many epochs (0: never).
    pub checkpoint_every: u32,
    /// Measures the run's peak memory (sampled after each backward pass and each evaluation).
    pub memory: Option<&'a Meter>,
}

impl std::fmt::Debug for Fit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fit")
            .field("adaptation", &self.adaptation.kind())
            .field("train", self.train)
            .field("eval", self.eval)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// The numbers of a run that trained to the end, or as far as it got.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitResult {
    /// Accuracy of the selected weights on the validation split (if any) and the test split.
    pub accuracy: Vec<SplitAccuracy>,
    /// One point per epoch.
    pub curves: Vec<EpochMetrics>,
    /// The epoch (1-based) whose weights are reported.
    pub selected_epoch: Option<u32>,
    /// Seconds spent in training steps.
    pub train_s: f64,
    /// Seconds spent evaluating.
    pub eval_s: f64,
    /// Training images processed (all epochs).
    pub images: u64,
    /// The epoch training started at (0 unless resumed).
    pub resumed_at: u32,
}

/// How a fit ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FitOutcome {
    /// Trained and evaluated; the method's variables hold the selected weights.
    Finished(FitResult),
    /// The loss stopped being finite. The step that diverged was applied (the loss is read after
    /// the update, so as not to stall a GPU), so the method's variables are not valid weights.
    Diverged {
        /// "diverged at step N (loss NaN)".
        reason: String,
        /// What was measured until then.
        partial: FitResult,
    },
    /// The caller asked to stop; the last saved state is what a rerun resumes from.
    Interrupted,
}

/// A batch of network inputs: images, or cached backbone outputs.
enum Input {
    Images(Tensor),
    Taps(Taps),
}

impl Fit<'_> {
    /// Trains, evaluates and selects; reports progress to `progress`.
    pub fn run(&self, progress: &mut dyn Progress) -> Result<FitOutcome, FitError> {
        let vars = self.adaptation.trainable();
        let mut optimizer = Optimizer::new(self.train, vars.clone());
        let steps_per_epoch = self.data.loader.batches_per_epoch();
        let mut state = State::default();
        let mut best: Option<Snapshot> = None;
        if let Some(file) = self.state_file.filter(|f| f.is_file()) {
            let (saved, snapshot) =
                resume::load(file, &vars, &mut optimizer, self.device).map_err(|mut e| {
                    e.reason.push_str(" (it does not fit this run; `--force` starts the run over)");
                    e
                })?;
            (state, best) = (saved, snapshot);
        }
        let mut result = FitResult {
            curves: state.curves.clone(),
            train_s: state.train_s,
            eval_s: state.eval_s,
            images: state.images,
            resumed_at: state.epoch,
            ..Default::default()
        };
        let mut step = state.steps as usize;
        for epoch in state.epoch..self.train.epochs {
            self.adaptation.start_epoch(u64::from(epoch));
            let started = Instant::now();
            let (mut loss_sum, mut seen) = (0.0, 0u64);
            let (mut correct, mut tallied) = (vec![0u64; self.classes], vec![0u64; self.classes]);
            for (i, batch) in self.batches(epoch).enumerate() {
                let (input, labels) = batch?;
                let lr = learning_rate(self.train, step, steps_per_epoch);
                let logits = self.logits(&input, true)?;
                let loss = cross_entropy(&logits, &labels, self.train.label_smoothing)?;
                let grads = self.adaptation.backward(&loss)?;
                if let Some(m) = self.memory {
                    m.sample(); // activations and gradients are both held now: the step's peak
                }
                optimizer.step(&grads, lr)?;
                drop(grads);
                // Read only now: on a GPU, reading the loss waits for the device, and reading it
                // before the backward would leave the device idle while the backward is queued.
                // A diverged step's update is applied, but the run ends here as failed.
                let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                step += 1;
                if !value.is_finite() {
                    result.train_s += started.elapsed().as_secs_f64();
                    let reason = format!("diverged at step {step} (loss {value})");
                    return Ok(FitOutcome::Diverged { reason, partial: result });
                }
                let n = labels.dim(0)? as u64;
                (loss_sum, seen) = (loss_sum + value * n as f64, seen + n);
                tally(&logits, &labels, self.classes, &mut correct, &mut tallied)?;
                let images_per_s = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let event =
                    Event::Step { epoch, step: i + 1, steps: steps_per_epoch, loss: value, lr, images_per_s };
                if progress.event(event) == Control::Stop {
                    return Ok(FitOutcome::Interrupted);
                }
            }
            result.train_s += started.elapsed().as_secs_f64();
            result.images += seen;
            let mut metrics = EpochMetrics {
                epoch: epoch + 1,
                train_loss: Some(loss_sum / seen.max(1) as f64),
                train_accuracy: Some(correct.iter().sum::<u64>() as f64 / seen.max(1) as f64),
                val_accuracy: None,
                test_accuracy: None,
                lr: Some(learning_rate(self.train, step.saturating_sub(1), steps_per_epoch)),
            };
            if self.evaluates_after(epoch) {
                let started = Instant::now();
                if let Some(val) = &self.val {
                    metrics.val_accuracy = Some(self.evaluate(val, progress)?.top1);
                }
                if self.eval.select == Selection::BestTest {
                    metrics.test_accuracy = Some(self.evaluate(&self.test, progress)?.top1);
                }
                result.eval_s += started.elapsed().as_secs_f64();
                let score = match self.eval.select {
                    Selection::Last => None,
                    Selection::BestVal => metrics.val_accuracy,
                    Selection::BestTest => metrics.test_accuracy,
                };
                // Strictly better only: on a tie the earlier epoch stays selected.
                if let Some(score) = score.filter(|s| best.as_ref().is_none_or(|b| *s > b.best.score)) {
                    best = Some(Snapshot::take(&vars, Best { epoch: epoch + 1, score })?);
                }
            }
            result.curves.push(metrics);
            let done = epoch + 1;
            let due = self.checkpoint_every > 0 && done.is_multiple_of(self.checkpoint_every);
            if let (Some(file), true) = (self.state_file, due && done < self.train.epochs) {
                let state = State {
                    epoch: done,
                    steps: step as u64,
                    curves: result.curves.clone(),
                    train_s: result.train_s,
                    eval_s: result.eval_s,
                    images: result.images,
                };
                resume::save(file, &state, &vars, &optimizer, best.as_ref())?;
            }
            let metrics = result.curves.last().cloned().unwrap_or_default();
            if progress.event(Event::EpochEnded { metrics: &metrics }) == Control::Stop {
                return Ok(FitOutcome::Interrupted);
            }
        }
        result.selected_epoch = match (self.eval.select, &best) {
            (Selection::Last, _) | (_, None) => Some(self.train.epochs),
            (_, Some(snapshot)) => {
                snapshot.restore(&vars)?;
                Some(snapshot.best.epoch)
            }
        };
        let started = Instant::now();
        if let Some(val) = &self.val {
            result.accuracy.push(self.evaluate(val, progress)?);
        }
        result.accuracy.push(self.evaluate(&self.test, progress)?);
        result.eval_s += started.elapsed().as_secs_f64();
        Ok(FitOutcome::Finished(result))
    }

    /// Whether the splits are evaluated after `epoch` (0-based): every `every_epochs`, and always
    /// after the last.
    fn evaluates_after(&self, epoch: u32) -> bool {
        let done = epoch + 1;
        done == self.train.epochs
            || (self.eval.every_epochs > 0 && done.is_multiple_of(self.eval.every_epochs))
    }

    /// The batches of training epoch `epoch`: the loader's seeded order, as images or as cached
    /// features of the same images.
    fn batches(&self, epoch: u32) -> Box<dyn Iterator<Item = Result<(Input, Tensor), FitError>> + '_> {
        let loader = self.data.loader;
        match self.data.features {
            None => Box::new(
                loader
                    .epoch(u64::from(epoch))
                    .map(|b| b.map(|b| (Input::Images(b.images), b.labels)).map_err(FitError::from)),
            ),
            Some(features) => {
                let order = loader.order(u64::from(epoch));
                let chunks: Vec<Vec<usize>> =
                    order.chunks(loader.batch_size()).map(<[usize]>::to_vec).collect();
                Box::new(chunks.into_iter().map(move |ids| {
                    let (taps, labels) = features.batch(&ids, self.device)?;
                    Ok((Input::Taps(taps), labels))
                }))
            }
        }
    }

    fn logits(&self, input: &Input, train: bool) -> candle_core::Result<Tensor> {
        match input {
            Input::Images(images) => self.adaptation.forward(self.vit, images, train),
            Input::Taps(taps) => self.adaptation.forward_taps(self.vit, taps, train),
        }
    }

    /// Top-1 and per-class accuracy of the current weights on a split.
    fn evaluate(
        &self,
        source: &EvalSource<'_>,
        progress: &mut dyn Progress,
    ) -> Result<SplitAccuracy, FitError> {
        progress.event(Event::Evaluating { split: source.split });
        let (mut correct, mut seen) = (vec![0u64; self.classes], vec![0u64; self.classes]);
        match source.features {
            Some(features) => {
                let ids: Vec<usize> = (0..features.len()).collect();
                for chunk in ids.chunks(self.eval.batch_size.max(1) as usize) {
                    let (taps, labels) = features.batch(chunk, self.device)?;
                    let logits = self.logits(&Input::Taps(taps), false)?;
                    tally(&logits, &labels, self.classes, &mut correct, &mut seen)?;
                }
            }
            None => {
                for batch in source.loader.batches() {
                    let batch = batch?;
                    let logits = self.logits(&Input::Images(batch.images), false)?;
                    tally(&logits, &batch.labels, self.classes, &mut correct, &mut seen)?;
                }
            }
        }
        if let Some(m) = self.memory {
            m.sample();
        }
        let total: u64 = seen.iter().sum();
        let per_class =
            correct.iter().zip(&seen).map(|(&c, &s)| (s > 0).then(|| c as f64 / s as f64)).collect();
        Ok(SplitAccuracy {
            split: source.split,
            top1: correct.iter().sum::<u64>() as f64 / total.max(1) as f64,
            per_class,
        })
    }
}
