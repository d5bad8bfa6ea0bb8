//! What the engine tells its caller while it works. The engine never prints: the runner turns
//! these events into progress bars or log lines, and tests use them to stop a run at a fixed step.

use crate::recipe::Split;
use crate::record::{EpochMetrics, RunRecord};

/// One thing that happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The plan starts: `runs` runs, of which `finished` are already done and will be skipped.
    PlanStarted {
        /// Runs in the plan (or shard).
        runs: usize,
        /// Runs whose finished record is already there.
        finished: usize,
    },
    /// A run starts (or resumes).
    RunStarted {
        /// 0-based position in the plan.
        index: usize,
        /// The run id.
        id: &'a str,
        /// "<task> · <adapter> · seed <seed>", for people.
        title: &'a str,
        /// The epoch it starts at (0 unless resumed).
        from_epoch: u32,
        /// Epochs in total.
        epochs: u32,
        /// Optimisation steps per epoch.
        steps_per_epoch: usize,
    },
    /// A run is skipped because its finished record is there.
    RunSkipped {
        /// The run id.
        id: &'a str,
    },
    /// Backbone features of a split are being taken from the feature cache (computed now if
    /// they are not there yet).
    Caching {
        /// The split.
        split: Split,
        /// Its number of images.
        images: usize,
    },
    /// One optimisation step finished.
    Step {
        /// 0-based epoch.
        epoch: u32,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// The step's loss.
        loss: f64,
        /// The learning rate it used.
        lr: f64,
        /// Training images per second over the epoch so far.
        images_per_s: f64,
    },
    /// A split is being evaluated.
    Evaluating {
        /// The split.
        split: Split,
    },
    /// An epoch ended (evaluations included).
    EpochEnded {
        /// Its metrics.
        metrics: &'a EpochMetrics,
    },
    /// A run ended, finished or failed; its record is written.
    RunEnded {
        /// The record.
        record: &'a RunRecord,
    },
}

/// Whether the engine should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now, as if the process were killed: the current run keeps its last saved state (to
    /// resume from) and gets no record; no further run starts.
    Stop,
}

/// Receives the engine's events.
pub trait Progress {
    /// Called for each event; returning [`Control::Stop`] interrupts the plan.
    fn event(&mut self, event: Event<'_>) -> Control;
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&mut self, _event: Event<'_>) -> Control {
        Control::Continue
    }
}
