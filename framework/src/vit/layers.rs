//! The ViT's building blocks, each with a fast fused path and a differentiable path.
//!
//! candle's fused `layer_norm` and `softmax_last_dim` return no gradient for their inputs, and no
//! error (../shared/DESIGN.md). Methods that train through the backbone (LoRA, VPT, full
//! finetuning) therefore run the `Grad::Through` path, built from ops that all have a backward
//! (for LayerNorm, this crate's fused op with a backward, `crate::ops::layer_norm`); frozen
//! forwards (LoSA's backbone, linear probing, evaluation) use candle's fused ops.

use candle_core::{D, DType, Module, Result, Tensor};

/// Whether gradients must flow through the backbone's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grad {
    /// Forward only: fused kernels, no graph kept.
    Frozen,
    /// Gradients flow through the backbone (to its weights or to inputs and hooks).
    Through,
}

/// `y = x Wᵀ + b`, weights in PyTorch's [out, in] layout.
#[derive(Debug, Clone)]
pub struct Linear {
    /// [out, in].
    pub weight: Tensor,
    /// [out].
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Applies the layer to `x` of shape [..., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
    }
}

/// LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale, [d].
    pub weight: Tensor,
    /// Shift, [d].
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor, grad: Grad) -> Result<Tensor> {
        match (grad, x.dtype()) {
            (Grad::Frozen, DType::F32 | DType::F16 | DType::BF16) => {
                candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
            }
            // One fused pass forward and backward (crate::ops) instead of 8 primitive ops and their
            // saved tensors; it also takes f64, which candle's fused kernel lacks (gradient checks).
            _ => crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor, grad: Grad) -> Result<Tensor> {
    match grad {
        Grad::Frozen => candle_nn::ops::softmax_last_dim(x),
        Grad::Through => candle_nn::ops::softmax(x, D::Minus1),
    }
}
