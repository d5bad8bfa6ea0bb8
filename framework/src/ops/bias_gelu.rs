//! `gelu_erf(x + bias)`, the activation of LoSA's low-rank MLPs, with its backward in one pass.
//!
//! Unfused, candle makes two passes forward (add, gelu) and about ten backward (its `gelu_erf`
//! gradient is built from primitives: square, negate, exp, erf, muls and adds, each a full pass).
//! The bias runs along any one dimension, so the token mixer can add its bias per row of
//! `[batch, r_t, width]` without transposing.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, cpu_dispatch, slice};

/// Elements per rayon task, at least.
const CPU_CHUNK: usize = 1 << 14;

/// `gelu_erf(x + bias)` with `bias` ([x.dim(dim)]) added along dimension `dim` of `x`;
/// differentiable in `x` and `bias`.
pub fn bias_gelu(x: &Tensor, bias: &Tensor, dim: usize) -> Result<Tensor> {
    let dims = x.dims();
    if dim >= dims.len() || bias.dims() != [dims[dim]] {
        bail!("bias_gelu: bias {:?} does not fit dimension {dim} of {dims:?}", bias.dims());
    }
    let op = BiasGelu { channels: dims[dim], inner: dims[dim + 1..].iter().product() };
    x.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

/// `x` seen as `[outer, channels, inner]`, the bias along `channels`.
#[derive(Clone, Copy)]
struct BiasGelu {
    channels: usize,
    inner: usize,
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn gelu<A: Acc>(v: A) -> A {
    // candle's `gelu_erf` exactly: (erf(v/√2) + 1) · 0.5 · v.
    (A::erf(v * A::of(std::f64::consts::FRAC_1_SQRT_2)) + A::of(1.0)) * A::of(0.5) * v
}

pub(crate) fn gelu_grad<A: Acc>(v: A) -> A {
    A::of(0.5) * (A::of(1.0) + A::erf(v * A::of(std::f64::consts::FRAC_1_SQRT_2)))
        + v * A::exp(A::of(-0.5) * v * v) * A::of(FRAC_1_SQRT_2PI)
}

fn fwd_cpu<T: Elem>(
    op: BiasGelu,
    (x, lx): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (x, b) = (slice(x, lx, "bias_gelu")?, slice(b, lb, "bias_gelu")?);
    let mut y = vec![T::store(T::A::ZERO); x.len()];
    // One task per row of `channels · inner` elements (no index arithmetic per element).
    let row = (op.channels * op.inner).max(1);
    y.par_chunks_mut(row).zip(x.par_chunks(row)).with_min_len(CPU_CHUNK.div_ceil(row)).for_each(|(y, x)| {
        if op.inner == 1 {
            // The bias along the last dimension (a linear layer's): one bias element per element.
            for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                *y = T::store(gelu(x.load() + b.load()));
            }
            return;
        }
        for ((y, x), b) in y.chunks_mut(op.inner.max(1)).zip(x.chunks(op.inner.max(1))).zip(b) {
            let b = b.load();
            for (y, &x) in y.iter_mut().zip(x) {
                *y = T::store(gelu(x.load() + b));
            }
        }
    });
    Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
}

fn bwd_cpu<T: Elem>(
    op: BiasGelu,
    (x, lx): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
    (g, lg): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let name = "bias_gelu backward";
    let (x, b, g) = (slice(x, lx, name)?, slice(b, lb, name)?, slice(g, lg, name)?);
    let mut dx = vec![T::store(T::A::ZERO); x.len()];
    let (row, inner) = ((op.channels * op.inner).max(1), op.inner.max(1));
    dx.par_chunks_mut(row)
        .zip(x.par_chunks(row).zip(g.par_chunks(row)))
        .with_min_len(CPU_CHUNK.div_ceil(row))
        .for_each(|(dx, (x, g))| {
            if inner == 1 {
                for (((dx, &x), &g), &b) in dx.iter_mut().zip(x).zip(g).zip(b) {
                    *dx = T::store(g.load() * gelu_grad(x.load() + b.load()));
                }
                return;
            }
            for (((dx, x), g), b) in dx.chunks_mut(inner).zip(x.chunks(inner)).zip(g.chunks(inner)).zip(b) {
                let b = b.load();
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    *dx = T::store(g.load() * gelu_grad(x.load() + b));
                }
            }
        });
    Ok((T::to_cpu_storage_owned(dx), lx.shape().clone()))
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "losa-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), fwd_cpu(*self; s1: l1, s2: l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::bias_gelu_fwd((s1, l1), (s2, l2), self.channels, self.inner)
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dbias) = grads(*self, x, bias, &grad.contiguous()?, None, bias.track_op())?;
        let dbias = dbias.map(|d| d.to_dtype(bias.dtype())).transpose()?;
        // Only an input that needs it gets a gradient: candle keeps every returned one to the end.
        Ok((x.track_op().then_some(dx), dbias))
    }
}

/// The gradient of [`bias_gelu`] in `x`, `dx = grad · mask · gelu_erf'(x + bias)` (the mask if
/// given, shaped like `grad`), with no graph; and, with `sum`, the bias's gradient, `dx` summed
/// along `dim` (in the accumulation dtype): `(dx, dbias)`. On CUDA,
/// for a bias along a middle dimension (LoSA's token mixer: `[batch, rank, width]`, the bias
/// along the rank), one launch where the mask's product, the gradient and the sum took three;
/// elsewhere composed, with the same rounding (the mask's product and `dx` rounded to the dtype,
/// the sum of the rounded `dx`).
pub(crate) fn bias_gelu_grads(
    x: &Tensor,
    bias: &Tensor,
    grad: &Tensor,
    mask: Option<&Tensor>,
    dim: usize,
    sum: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dims = x.dims();
    grads(BiasGelu { channels: dims[dim], inner: dims[dim + 1..].iter().product() }, x, bias, grad, mask, sum)
}

/// [`bias_gelu_grads`] for `x` seen as `op` lays it out (its backward's too).
fn grads(
    BiasGelu { channels, inner }: BiasGelu,
    x: &Tensor,
    bias: &Tensor,
    grad: &Tensor,
    mask: Option<&Tensor>,
    sum: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    #[cfg(feature = "cuda")]
    if sum && inner > 1 && x.elem_count() > 0 && x.device().is_cuda() {
        let [x, bias, grad] = [x, bias, grad].map(Tensor::contiguous);
        let mask = mask.map(Tensor::contiguous).transpose()?;
        let (dx, dbias) =
            super::cuda::bias_gelu_bwd_sums([&x?, &bias?, &grad?], mask.as_ref(), [channels, inner])?;
        return Ok((dx, Some(dbias)));
    }
    let grad = match mask {
        Some(mask) => (grad * mask)?,
        None => grad.clone(),
    };
    let dx = x.contiguous()?.apply_op3_no_bwd(
        bias,
        &grad.contiguous()?,
        &BiasGeluBwd(BiasGelu { channels, inner }),
    )?;
    let dbias = sum.then(|| super::sum_along(&dx, channels, inner)).transpose()?;
    Ok((dx, dbias))
}

/// `dx = grad · gelu_erf'(x + bias)` from `(x, bias, grad)`.
struct BiasGeluBwd(BiasGelu);

impl CustomOp3 for BiasGeluBwd {
    fn name(&self) -> &'static str {
        "losa-bias-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), bwd_cpu(self.0; s1: l1, s2: l2, s3: l3))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::bias_gelu_bwd((s1, l1), (s2, l2), (s3, l3), self.0.channels, self.0.inner)
    }
}
