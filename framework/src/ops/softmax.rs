//! `softmax(scale · x)` over the last dimension, with its backward: attention's softmax with the
//! `1/√d_head` scaling folded in.
//!
//! candle's fused `softmax_last_dim` has no backward, and the differentiable composition (max,
//! subtract, exp, sum, divide, plus the scaling) is six passes forward and about as many backward
//! over the largest tensor of a ViT block, `[batch, heads, tokens, tokens]`. Forward here: one pass
//! per row; backward: `dx = scale · y · (g − Σ g·y)`, one pass per row from the output `y` (which the
//! graph keeps anyway) and the output gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, cpu_dispatch, slice};

/// `softmax(scale · x)` over the last dimension of `x`, differentiable in `x`.
pub fn softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { scale })
}

#[derive(Clone, Copy)]
struct Softmax {
    scale: f64,
}

fn fwd_cpu<T: Elem>(scale: f64, (x, lx): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    let x = slice(x, lx, "softmax")?;
    let d = lx.dims().last().copied().unwrap_or(1).max(1);
    let scale = T::A::of(scale);
    let mut y = vec![T::store(T::A::ZERO); x.len()];
    // The exponentials go to a per-thread scratch row in the accumulation type, so each is
    // computed once and half types round once.
    let rows = y.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(16);
    rows.for_each_init(Vec::new, |e: &mut Vec<T::A>, (y, x)| {
        let max = x.iter().map(|v| v.load() * scale).fold(None, |m: Option<T::A>, v| match m {
            Some(m) if m >= v => Some(m),
            _ => Some(v),
        });
        let Some(max) = max else { return };
        e.clear();
        e.extend(x.iter().map(|v| (v.load() * scale - max).exp()));
        let mut sum = T::A::ZERO;
        for &v in e.iter() {
            sum += v;
        }
        let inv = T::A::of(1.0) / sum;
        for (y, &v) in y.iter_mut().zip(e.iter()) {
            *y = T::store(v * inv);
        }
    });
    Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "losa-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), fwd_cpu(self.scale; s: l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_fwd((s, l), self.scale)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd(*self)).map(Some)
    }
}

/// `dx = scale · y · (g − Σ g·y)` from `(y, g)`.
struct SoftmaxBwd(Softmax);

fn bwd_cpu<T: Elem>(
    scale: f64,
    (y, ly): (&[T], &Layout),
    (g, lg): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let name = "softmax backward";
    let (y, g) = (slice(y, ly, name)?, slice(g, lg, name)?);
    let d = ly.dims().last().copied().unwrap_or(1).max(1);
    let scale = T::A::of(scale);
    let mut dx = vec![T::store(T::A::ZERO); y.len()];
    dx.par_chunks_mut(d).zip(y.par_chunks(d).zip(g.par_chunks(d))).with_min_len(16).for_each(
        |(dx, (y, g))| {
            let mut dot = T::A::ZERO;
            for (y, g) in y.iter().zip(g) {
                dot += y.load() * g.load();
            }
            for ((dx, y), g) in dx.iter_mut().zip(y).zip(g) {
                *dx = T::store(scale * y.load() * (g.load() - dot));
            }
        },
    );
    Ok((T::to_cpu_storage_owned(dx), ly.shape().clone()))
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "losa-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), bwd_cpu(self.0.scale; s1: l1, s2: l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_bwd((s1, l1), (s2, l2), self.0.scale)
    }
}
