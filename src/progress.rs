//! The terminal side of the engine's events: progress bars for the plan and the current run on
//! a terminal, log lines otherwise (`--quiet`, or stderr redirected to a file).

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use losa_framework::engine::progress::{Control, Event, Progress};
use losa_framework::record::RunRecord;

/// Progress as log lines: a line per run start and end, and per evaluated epoch.
#[derive(Debug, Default)]
pub struct Lines;

impl Progress for Lines {
    fn event(&mut self, event: Event<'_>) -> Control {
        match event {
            Event::PlanStarted { runs, finished } => {
                tracing::info!("{runs} run(s) in the plan, {finished} finished before")
            }
            Event::RunStarted { index, title, from_epoch, epochs, .. } if from_epoch > 0 => {
                tracing::info!("run {}: {title}: resuming at epoch {from_epoch} of {epochs}", index + 1)
            }
            Event::RunStarted { index, title, epochs, .. } => {
                tracing::info!("run {}: {title}: {epochs} epochs", index + 1)
            }
            Event::RunSkipped { id } => tracing::debug!("{id}: finished before, skipped"),
            Event::Caching { split, images } => {
                tracing::info!("backbone features of {split} ({images} images): from the feature cache")
            }
            Event::EpochEnded { metrics: m } if m.val_accuracy.is_some() || m.test_accuracy.is_some() => {
                tracing::info!("{}", m.summary())
            }
            Event::EpochEnded { metrics: m } => tracing::debug!("{}", m.summary()),
            Event::RunEnded { record } => match record.failure() {
                None => tracing::info!("{}", outcome(record)),
                Some(_) => tracing::warn!("{}", outcome(record)),
            },
            Event::Step { .. } | Event::Evaluating { .. } => {}
        }
        Control::Continue
    }
}

/// Bars on the terminal: one for the plan, one for the current run (epoch, step, loss, images/s,
/// ETA); finished runs are printed above them.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    plan: ProgressBar,
    run: Option<ProgressBar>,
    epochs: u32,
}

impl Bars {
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let plan = multi.add(ProgressBar::new(0));
        plan.set_style(style(
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} runs {msg} ({elapsed_precise})",
        ));
        plan.set_prefix("plan");
        Self { multi, plan, run: None, epochs: 0 }
    }
}

impl Progress for Bars {
    fn event(&mut self, event: Event<'_>) -> Control {
        match event {
            Event::PlanStarted { runs, finished } => {
                self.plan.set_length(runs as u64);
                self.plan.set_position(finished as u64);
                if finished > 0 {
                    self.plan.set_message(format!("({finished} finished before)"));
                }
            }
            Event::RunSkipped { .. } => {}
            Event::RunStarted { title, from_epoch, epochs, steps_per_epoch, .. } => {
                let bar = self.multi.add(ProgressBar::new(u64::from(epochs) * steps_per_epoch as u64));
                bar.set_style(style("{prefix} [{bar:30.green/white}] {msg} ETA {eta}"));
                bar.set_prefix(title.to_owned());
                bar.set_position(u64::from(from_epoch) * steps_per_epoch as u64);
                bar.reset_eta();
                bar.enable_steady_tick(Duration::from_millis(250));
                self.epochs = epochs;
                self.run = Some(bar);
            }
            Event::Caching { split, images } => {
                if let Some(bar) = &self.run {
                    bar.set_message(format!("feature cache: backbone features of {split} ({images} images)"));
                }
            }
            Event::Step { epoch, step, steps, loss, images_per_s, .. } => {
                if let Some(bar) = &self.run {
                    bar.inc(1);
                    bar.set_message(format!(
                        "epoch {}/{} step {step}/{steps} loss {loss:.4} {images_per_s:.0} img/s",
                        epoch + 1,
                        self.epochs
                    ));
                }
            }
            Event::Evaluating { split } => {
                if let Some(bar) = &self.run {
                    bar.set_message(format!("evaluating {split}"));
                }
            }
            Event::EpochEnded { metrics }
                if metrics.val_accuracy.is_some() || metrics.test_accuracy.is_some() =>
            {
                let _ = self.multi.println(format!("  {}", metrics.summary()));
            }
            Event::EpochEnded { .. } => {}
            Event::RunEnded { record } => {
                if let Some(bar) = self.run.take() {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                let _ = self.multi.println(outcome(record));
                self.plan.inc(1);
            }
        }
        Control::Continue
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.plan.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// "✓ cifar · losa · seed 0: test 71.20% in 12.3 s (cached features)", or the failure.
fn outcome(r: &RunRecord) -> String {
    let l = &r.labels;
    let what = format!("{} · {} · seed {}", l.task, l.adapter, l.seed);
    match r.failure() {
        None => format!(
            "✓ {what}: {} {} in {:.1} s{}",
            r.selection.split,
            percent(r.reported_accuracy()),
            r.timing.train_s + r.timing.eval_s,
            if r.feature_cache { " (cached features)" } else { "" }
        ),
        Some(reason) => format!("✗ {what}: {reason}"),
    }
}
