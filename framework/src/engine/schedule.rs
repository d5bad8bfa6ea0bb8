//! The learning rate at each optimisation step: linear warm-up, then cosine decay (or constant).

use crate::recipe::{Schedule, TrainConfig};

/// The learning rate for step `step` (0-based) of a run with `steps_per_epoch` steps per epoch:
/// over the warm-up it rises linearly to `lr` (reaching it at the warm-up's last step), then it
/// follows a half cosine to `min_lr` at the last step, or stays at `lr`.
pub fn learning_rate(train: &TrainConfig, step: usize, steps_per_epoch: usize) -> f64 {
    let warmup = train.warmup_epochs as usize * steps_per_epoch;
    let total = (train.epochs as usize * steps_per_epoch).max(1);
    if step < warmup {
        return train.lr * (step + 1) as f64 / warmup as f64;
    }
    match train.schedule {
        Schedule::Constant => train.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).saturating_sub(1).max(1);
            let progress = ((step - warmup) as f64 / span as f64).min(1.0);
            train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_rises_linearly_then_the_cosine_falls_to_min_lr() {
        let train = TrainConfig { lr: 1.0, min_lr: 0.1, epochs: 10, warmup_epochs: 2, ..Default::default() };
        let lr = |step| learning_rate(&train, step, 5);
        assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(4) - 0.5).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12, "the cosine starts at lr");
        assert!((lr(49) - 0.1).abs() < 1e-12, "and ends at min_lr on the last step");
        let mid = lr(10 + 39 / 2);
        assert!((mid - 0.55).abs() < 0.02, "{mid}");
        assert!((10..49).all(|s| lr(s + 1) <= lr(s)), "monotone after the warm-up");
        let constant = TrainConfig { schedule: Schedule::Constant, warmup_epochs: 0, ..train };
        assert!((0..50).all(|s| learning_rate(&constant, s, 5) == 1.0));
    }
}
