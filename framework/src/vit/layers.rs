//! The ViT's building blocks. candle's fused `layer_norm` and `softmax_last_dim` return no
//! gradient for their inputs, and no error (../shared/DESIGN.md); the norm here is this crate's
//! fused op with a backward (`crate::ops::layer_norm`), so one path serves frozen forwards and
//! methods that train through the backbone alike.

use candle_core::{Module, Result, Tensor};

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
    /// Normalises `x` over its last dimension (differentiable in all three; a graph node is built
    /// only when an input needs a gradient).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
