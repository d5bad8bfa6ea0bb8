//! A seeded random start, as timm initialises a ViT: truncated normal (std 0.02) for weights and
//! the position embedding, a tiny normal for the class token, zero biases, unit norm scales.
//! ChaCha8 makes the same seed give the same weights on every machine.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::VitConfig;

/// Random weights for `config`, deterministic in `seed`.
pub fn random_weights(config: &VitConfig, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name == "cls_token" {
            normal(&mut rng, n, 1e-6)
        } else if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            truncated_normal(&mut rng, n, 0.02)
        };
        out.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(out)
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let dist = Normal::new(0.0f32, std).expect("a finite, positive standard deviation");
    (0..n).map(|_| dist.sample(rng)).collect()
}

/// Normal(0, std) truncated to ±2·std by resampling (timm's `trunc_normal_(std=.02)` cuts at ±2
/// absolute, which for std 0.02 never binds; cutting at 2·std keeps outliers out of tiny models).
fn truncated_normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let dist = Normal::new(0.0f32, std).expect("a finite, positive standard deviation");
    (0..n)
        .map(|_| {
            loop {
                let v = dist.sample(rng);
                if v.abs() <= 2.0 * std {
                    break v;
                }
            }
        })
        .collect()
}

/// A tensor of Normal(0, std) values, deterministic in `seed` (for tests and benchmarks: candle's
/// own `randn` draws from an unseeded generator).
pub fn seeded_normal(
    shape: impl Into<candle_core::Shape>,
    std: f64,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Normal::new(0.0f64, std).expect("a finite, positive standard deviation");
    let values: Vec<f64> = (0..shape.elem_count()).map(|_| dist.sample(&mut rng)).collect();
    Tensor::from_vec(values, shape, device)
}
