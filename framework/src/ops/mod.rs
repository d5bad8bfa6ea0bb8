//! Fused, differentiable ops as candle custom ops (issue 10).
//!
//! candle's fused `layer_norm` has no backward, and its element-wise ops each make one pass over
//! memory (and keep one tensor for backward), so a differentiable LayerNorm or a bias + GELU built
//! from primitives is 5–10 passes forward and as many backward. These ops do each in one pass
//! forward and one or two backward, on the CPU (`cpu_fwd`, rayon over rows) and on CUDA
//! (`cuda_fwd`, kernels in `kernels.cu`, compiled to PTX by `build.rs` with nvcc as candle-kernels
//! does, and loaded once per device). Matmuls stay on candle's matmul (gemm / cuBLAS).
//!
//! The ops: `layer_norm`, `bias_gelu`, `softmax` (scaled), `split_heads` (qkv bias + head split),
//! `merge_heads` (attention's output back into token order), `bias_residual` (the ViT block's
//! residual sums with their bias), `residual` (no graph; what it adds may be a `LowRank` product,
//! computed where it is added: low_rank.rs), and `side_network`, LoSA's side network as
//! a single op with a hand-written backward (see side.rs), which hands its parameters' gradients over
//! through a `GradSink` (grad_sink.rs); `adamw_update`, the optimiser's step for
//! many parameters, in place; `layer_norm_down`, a channel mixer's norm and down-projection in
//! one read of each row, and with a projection per image a token mixer's down-projection
//! gradient (norm_down.rs, inside the side network); `cast_all`, many small tensors cast at once; `layer_norm_pool`, a
//! head's norm and pooling of a token sequence (norm_pool.rs); `cross_entropy`, the training loss
//! (cross_entropy.rs); and, inside the
//! backward passes, one-pass column sums for bias gradients (column_sums.rs).
//!
//! Every op takes f32, f64, f16 and bf16 and computes in f32 (f64 for f64), rounding once at the
//! end; its backward is built from these ops and cheap primitives (sums), so gradients of
//! gradients are not supported.

mod adamw;
mod bias_gelu;
#[cfg(test)]
mod block_tests;
mod cast;
mod column_sums;
mod cpu;
mod cross_entropy;
#[cfg(test)]
mod cross_entropy_tests;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(feature = "cuda", test))]
mod fast_div;
mod grad_sink;
mod heads;
mod layer_norm;
mod low_rank;
mod norm_down;
mod norm_pool;
#[cfg(test)]
mod norm_pool_tests;
mod residual;
mod side;
#[cfg(test)]
mod side_tests;
mod softmax;
#[cfg(test)]
mod tests;
mod up_grads;
#[cfg(test)]
mod up_grads_tests;

pub use adamw::{AdamWParam, AdamWStep, adamw_update};
pub use bias_gelu::bias_gelu;
pub use cast::cast_all;
pub use cross_entropy::cross_entropy;
#[cfg(feature = "cuda")]
pub(crate) use cuda::prepare as prepare_cuda;
pub use grad_sink::GradSink;
pub use heads::{merge_heads, split_heads};
pub use layer_norm::{layer_norm, layer_norm_grads};
pub use low_rank::{LowRank, Operand};
pub use norm_down::layer_norm_down;
pub use norm_pool::layer_norm_pool;
pub use residual::{Terms, bias_residual, residual};
pub use side::{LowRankMix, SideBlock, side_network};
pub use softmax::softmax;
pub use up_grads::{UpGrads, channel_up_grads, channel_up_grads_composed};

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

static POISON: AtomicBool = AtomicBool::new(false);

/// A checking aid: while on, the CUDA ops fill each output with NaN before their kernel runs, so
/// that an element a kernel fails to write shows up as NaN (`bench/src/kernels.rs`). Off by
/// default; CPU ops build their outputs element by element and ignore it.
pub fn poison_outputs(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

#[cfg(feature = "cuda")]
fn poisoning() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// The distinct dtypes of `dtypes`, in order of first appearance.
pub(crate) fn distinct(dtypes: impl IntoIterator<Item = DType>) -> Vec<DType> {
    let mut seen = Vec::new();
    for d in dtypes {
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    seen
}

/// `t` viewed as `[outer, channels, inner]`, summed over `outer` and `inner`: the gradient of a
/// bias added along `channels`. Half types are summed in f32 (candle's CPU sum accumulates in the
/// tensor's dtype, and a bf16 sum over batch × tokens elements loses most of its digits), so the
/// result is in the accumulation dtype. One pass (column_sums.rs): column sums for a bias along
/// the last dimension (`inner` 1, the common and large case), channel sums otherwise.
pub(crate) fn sum_along(t: &Tensor, channels: usize, inner: usize) -> Result<Tensor> {
    match inner {
        1 => column_sums::column_sums(t, channels),
        _ => column_sums::channel_sums(t, channels, inner),
    }
}
