//! Training settings: optimiser, schedule, epochs, batch size, regularisation, augmentation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the trainable parameters are optimised. Every field has a default, so a recipe states only
/// what differs; an adapter's own `train` table overrides single fields of this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser. Default: "adamw" (decoupled weight decay).
    pub optimizer: Optimizer,
    /// Peak learning rate, reached after the warm-up. Default: 1e-3.
    pub lr: f64,
    /// Weight decay coefficient (decoupled for AdamW, L2 for SGD). Default: 1e-4.
    pub weight_decay: f64,
    /// Also decay biases, norm parameters, position embedding, class token and prompts.
    /// Default: false (they are exempt, as in timm and most PETL code).
    pub decay_all: bool,
    /// AdamW moment decay rates [beta1, beta2]. Default: [0.9, 0.999].
    pub betas: [f64; 2],
    /// AdamW epsilon added to the denominator. Default: 1e-8.
    pub eps: f64,
    /// SGD momentum (ignored by AdamW). Default: 0.9.
    pub momentum: f64,
    /// Learning-rate schedule after the warm-up. Default: "cosine".
    pub schedule: Schedule,
    /// Epochs of linear warm-up from 0 to `lr`. Default: 10.
    pub warmup_epochs: u32,
    /// Learning rate at the end of the cosine schedule. Default: 0.0.
    pub min_lr: f64,
    /// Number of passes over the training split. Default: 100.
    pub epochs: u32,
    /// Images per optimisation step. Default: 64.
    pub batch_size: u32,
    /// Label smoothing of the cross-entropy targets, in [0, 1). Default: 0.0.
    pub label_smoothing: f64,
    /// Clip the global gradient L2 norm to this value; absent means no clipping. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Data augmentation of training images. Default: none (the VTAB-1k protocol uses none).
    pub augment: AugmentConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::Adamw,
            lr: 1e-3,
            weight_decay: 1e-4,
            decay_all: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
            momentum: 0.9,
            schedule: Schedule::Cosine,
            warmup_epochs: 10,
            min_lr: 0.0,
            epochs: 100,
            batch_size: 64,
            label_smoothing: 0.0,
            grad_clip: None,
            augment: AugmentConfig::default(),
        }
    }
}

/// Optimiser kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    Adamw,
    /// Stochastic gradient descent with momentum.
    Sgd,
}

/// Learning-rate schedule applied after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Half-cosine decay from `lr` to `min_lr` over the remaining epochs.
    Cosine,
    /// Keep `lr` after the warm-up.
    Constant,
}

/// Training-time augmentation. Off by default; turning any of it on disables the feature cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Random horizontal flip with probability 0.5. Default: false.
    pub hflip: bool,
    /// Random resized crop (Inception-style) to the backbone's image size. Default: false.
    pub random_resized_crop: bool,
    /// Area fraction range [min, max] of the random resized crop. Default: [0.08, 1.0].
    pub crop_scale: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { hflip: false, random_resized_crop: false, crop_scale: [0.08, 1.0] }
    }
}

impl AugmentConfig {
    /// Whether any augmentation is on (the feature cache needs identical images every epoch).
    pub fn any(&self) -> bool {
        self.hflip || self.random_resized_crop
    }
}
