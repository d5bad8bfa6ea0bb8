//! A channel mixer's first step, `LN(h)·Wdᵀ`: each row's LayerNorm projected to the mixer's rank,
//! as one op with no graph (LoSA's side network, ops/side.rs, computes its own backward).
//!
//! Composed, the norm writes a full-size normed copy of the `[batch, tokens, width]` stream and a
//! GEMM reads it back to make a `[batch, tokens, rank]` result: two full-size passes and a launch
//! per channel mixer. Here each row is read once and `rank` values are written. The normed row is
//! rounded to the stream's dtype before the projection, as the norm's output tensor was, and the
//! projection sums in f32 (f64 for f64), as the GEMM does.
//!
//! The projection may also differ per image (`down` `[batch, rank, d]`): a token mixer's backward
//! needs `Σ_b dpre_b·LN(h_b)ᵀ` for its down-projection's gradient, which is this op with the
//! gradient at the pre-activation `dpre` `[batch, rank, d]` as the weight, summed over the batch
//! (ops/side.rs); composed, it recomputed the normed stream and wrote it out for a batched GEMM.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, dot, slice};
use super::layer_norm::{layer_norm, stats};

const NAME: &str = "layer_norm_down";

/// `LN(h)·downᵀ` for `h` `[batch, tokens, d]`, the norm's `weight` and `bias` `[d]`, `down`
/// `[rank, d]` (or `[batch, rank, d]`, one projection per image), all of one dtype: `[batch,
/// tokens, rank]`, with no graph (an input that needs a gradient is an error).
pub fn layer_norm_down(
    h: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    down: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (batch, tokens, d) = h.dims3()?;
    let rows = batch * tokens;
    // The rows that share a projection: all of them, or an image's tokens.
    let (rank, per_weight) = match *down.dims() {
        [rank, dd] if dd == d => (rank, rows),
        [images, rank, dd] if images == batch && dd == d => (rank, tokens),
        _ => bail!("{NAME}: down {:?} must be [rank, {d}] or [{batch}, rank, {d}]", down.dims()),
    };
    if d == 0 || weight.dims() != [d] || bias.dims() != [d] {
        bail!("{NAME}: weight {:?} and bias {:?} do not fit rows of {d}", weight.dims(), bias.dims());
    }
    if [weight, bias, down].iter().any(|t| t.dtype() != h.dtype()) {
        bail!("{NAME}: inputs of different dtypes");
    }
    if [h, weight, bias, down].iter().any(|t| t.track_op()) {
        bail!("{NAME}: has no backward, but an input needs a gradient");
    }
    let [h, weight, bias, down] = [h, weight, bias, down].map(Tensor::contiguous);
    let (h, weight, bias, down) = (h?, weight?, bias?, down?);
    let shape = (batch, tokens, rank);
    if rows == 0 || rank == 0 {
        return Tensor::zeros(shape, h.dtype(), h.device());
    }
    let storages = [&h, &weight, &bias, &down].map(Tensor::storage_and_layout);
    let [(sh, lh), (sw, lw), (sb, lb), (sd, ld)] = &storages;
    let storage = match (&**sh, &**sw, &**sb, &**sd) {
        (Storage::Cpu(sh), Storage::Cpu(sw), Storage::Cpu(sb), Storage::Cpu(sd)) => {
            let inputs = [(sh, *lh), (sw, *lw), (sb, *lb), (sd, *ld)];
            Storage::Cpu(cpu(inputs, [d, rank, per_weight], eps)?)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(sh), Storage::Cuda(sw), Storage::Cuda(sb), Storage::Cuda(sd)) => {
            let inputs = [(sh, *lh), (sw, *lw), (sb, *lb), (sd, *ld)];
            Storage::Cuda(super::cuda::layer_norm_down(inputs, [rows, d, rank, per_weight], eps)?)
        }
        // A device without the kernel composes it.
        _ => {
            drop(storages);
            let normed = layer_norm(&h, &weight, &bias, eps)?;
            if down.rank() == 3 {
                return normed.matmul(&down.transpose(1, 2)?);
            }
            return normed.reshape((rows, d))?.matmul(&down.t()?)?.reshape(shape);
        }
    };
    Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
}

type In<'a> = (&'a CpuStorage, &'a Layout);

/// `dims`: d, rank, and the rows that share a projection (consecutive, each run its own).
fn cpu(inputs: [In; 4], dims: [usize; 3], eps: f64) -> Result<CpuStorage> {
    match candle_core::backend::BackendStorage::dtype(inputs[0].0) {
        DType::F32 => fwd_cpu::<f32>(inputs, dims, eps),
        DType::F64 => fwd_cpu::<f64>(inputs, dims, eps),
        DType::F16 => fwd_cpu::<half::f16>(inputs, dims, eps),
        DType::BF16 => fwd_cpu::<half::bf16>(inputs, dims, eps),
        other => bail!("{NAME}: no kernel for {other:?}"),
    }
}

fn fwd_cpu<T: Elem>(inputs: [In; 4], [d, rank, per_weight]: [usize; 3], eps: f64) -> Result<CpuStorage> {
    let get = |(s, l): In| -> Result<Vec<T::A>> {
        Ok(slice(s.as_slice::<T>()?, l, NAME)?.iter().map(|v| v.load()).collect())
    };
    let (s, l) = inputs[0];
    let h = slice(s.as_slice::<T>()?, l, NAME)?;
    let (w, b, down) = (get(inputs[1])?, get(inputs[2])?, get(inputs[3])?);
    let zero = T::A::ZERO;
    let mut pre = vec![T::store(zero); h.len() / d * rank];
    pre.par_chunks_mut(rank).zip(h.par_chunks(d)).enumerate().with_min_len(8).for_each_init(
        || vec![zero; d],
        |x, (row, (pre, h))| {
            let down = &down[row / per_weight * rank * d..][..rank * d];
            let (mean, rstd) = stats(h, eps);
            // The normed row, rounded to T as the norm's output tensor holds it.
            for (((x, h), &w), &b) in x.iter_mut().zip(h).zip(&w).zip(&b) {
                *x = T::store((h.load() - mean) * rstd * w + b).load();
            }
            for (pre, down) in pre.iter_mut().zip(down.chunks(d)) {
                *pre = T::store(dot(x, down));
            }
        },
    );
    Ok(T::to_cpu_storage_owned(pre))
}
