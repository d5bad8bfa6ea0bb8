//! `gelu_erf(x + bias)`, the activation of LoSA's low-rank MLPs, with its backward in one pass.
//!
//! Unfused, candle makes two passes forward (add, gelu) and about ten backward (its `gelu_erf`
//! gradient is built from primitives: square, negate, exp, erf, muls and adds, each a full pass).
//! The bias runs along any one dimension, so the token mixer can add its bias per row of
//! `[batch, r_t, width]` without transposing.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, cpu_dispatch, slice};

/// Elements per rayon task.
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

fn gelu_grad<A: Acc>(v: A) -> A {
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
    y.par_chunks_mut(CPU_CHUNK).zip(x.par_chunks(CPU_CHUNK)).enumerate().for_each(|(k, (y, x))| {
        for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            let c = ((k * CPU_CHUNK + i) / op.inner) % op.channels;
            *y = T::store(gelu(x.load() + b[c].load()));
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
    dx.par_chunks_mut(CPU_CHUNK)
        .zip(x.par_chunks(CPU_CHUNK).zip(g.par_chunks(CPU_CHUNK)))
        .enumerate()
        .for_each(|(k, (dx, (x, g)))| {
            for (i, ((dx, &x), &g)) in dx.iter_mut().zip(x).zip(g).enumerate() {
                let c = ((k * CPU_CHUNK + i) / op.inner) % op.channels;
                *dx = T::store(g.load() * gelu_grad(x.load() + b[c].load()));
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
        let dx = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &BiasGeluBwd(*self))?;
        let dbias = if bias.track_op() {
            Some(super::sum_along(&dx, self.channels, self.inner)?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        Ok((Some(dx), dbias))
    }
}

/// `grad · gelu_erf'(x + bias)`, the gradient of [`bias_gelu`] in `x` (and, summed along `dim`,
/// in `bias`), with no graph; `x` and `grad` contiguous, of one shape.
pub(crate) fn bias_gelu_dx(x: &Tensor, bias: &Tensor, grad: &Tensor, dim: usize) -> Result<Tensor> {
    let dims = x.dims();
    let op = BiasGelu { channels: dims[dim], inner: dims[dim + 1..].iter().product() };
    x.apply_op3_no_bwd(bias, grad, &BiasGeluBwd(op))
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
