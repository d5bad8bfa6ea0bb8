//! LayerNorm over the last dimension, with a backward for the input, the scale and the shift.
//!
//! Forward: one pass per row (mean and centred variance, then the affine), as the composition
//! `(x − mean) / sqrt(var + eps) · w + b` that the differentiable ViT path used to build from 8
//! primitives.
//! Backward: `dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂))` in one pass per row
//! (recomputing the row's statistics instead of keeping them: they cost one read of the row,
//! and keeping them would need a second output, which custom ops do not have), and, only when the
//! scale or shift needs a gradient, `dw = Σ g·x̂`, `db = Σ g` over the rows, summed per fixed chunk
//! of rows and then over chunks, so the result does not depend on the number of threads.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::Operand;
use super::cpu::{Acc, Elem, cpu_dispatch, slice};

/// Rows per partial sum of the scale and shift gradients on the CPU.
const CPU_PARAM_ROWS: usize = 64;

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension of `x`, differentiable
/// in all three. `weight` and `bias` are [d] with d the last dimension of `x`, all of one dtype.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [d] || bias.dims() != [d] {
        bail!("layer_norm: weight {:?} and bias {:?} must be [{d}]", weight.dims(), bias.dims());
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Fwd { eps })
}

/// The statistics of one row: mean and 1 / std.
pub(super) fn stats<T: Elem>(x: &[T], eps: f64) -> (T::A, T::A) {
    let n = T::A::of(x.len() as f64);
    let mut s = T::A::ZERO;
    for v in x {
        s += v.load();
    }
    let mean = s / n;
    let mut s2 = T::A::ZERO;
    for v in x {
        let c = v.load() - mean;
        s2 += c * c;
    }
    (mean, T::A::of(1.0) / (s2 / n + T::A::of(eps)).sqrt())
}

/// The forward op.
struct Fwd {
    eps: f64,
}

fn fwd_cpu<T: Elem>(
    eps: f64,
    (x, lx): (&[T], &Layout),
    (w, lw): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (x, w, b) = (slice(x, lx, "layer_norm")?, slice(w, lw, "layer_norm")?, slice(b, lb, "layer_norm")?);
    let d = w.len();
    let mut y = vec![T::store(T::A::ZERO); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(8).for_each(|(y, x)| {
        let (mean, rstd) = stats(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = T::store((x.load() - mean) * rstd * w.load() + b.load());
        }
    });
    Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
}

impl CustomOp3 for Fwd {
    fn name(&self) -> &'static str {
        "losa-layer-norm"
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
        cpu_dispatch!(self.name(), fwd_cpu(self.eps; s1: l1, s2: l2, s3: l3))
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
        super::cuda::layer_norm_fwd((s1, l1), (s2, l2), (s3, l3), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        if !weight.track_op() && !bias.track_op() {
            // A frozen norm (LoSA's head reads the backbone's final norm): skip the reduction.
            return Ok((Some(layer_norm_dx(x, weight, &grad, None, self.eps)?), None, None));
        }
        let (dx, dw, db) = layer_norm_grads(x, weight, (&grad).into(), None, self.eps)?;
        Ok((Some(dx), Some(dw.to_dtype(weight.dtype())?), Some(db.to_dtype(bias.dtype())?)))
    }
}

/// The input gradient of the norm at `x` (contiguous) for the output gradient `grad` (contiguous),
/// plus `add` (shaped like `x`) if given, with no graph: one pass per row. (LoSA's side block adds
/// the stream's gradient so: one pass where a separate sum would be two more.)
pub(crate) fn layer_norm_dx(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    add: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let add = match add {
        Some(a) if a.dims() != x.dims() || a.dtype() != x.dtype() => {
            bail!(
                "layer_norm backward: the added {:?} {:?} does not match {:?}",
                a.dtype(),
                a.dims(),
                x.dims()
            )
        }
        Some(a) => Some(a.contiguous()?),
        None => None,
    };
    x.apply_op3_no_bwd(weight, grad, &BwdX { eps, add })
}

/// The scale and shift gradients `(Σ g·x̂, Σ g)` over the rows, in the accumulation dtype (f32, or
/// f64 for f64), with no graph.
pub(crate) fn layer_norm_dparams(x: &Tensor, grad: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let sums = x.apply_op2_no_bwd(grad, &BwdParams { eps })?.sum(0)?;
    Ok((sums.get(0)?, sums.get(1)?))
}

/// The LayerNorm's gradients at `x` for the output gradient `grad`, with no graph: the input's
/// (plus `add`, shaped like `x`, if given) and the scale's and shift's, `(dx, dw, db)`, the last
/// two in the accumulation dtype (f32, or f64 for f64). On CUDA, for rows its vector path takes
/// (a ViT's), one pass over `x` and `grad` where the input's and the parameters' gradients apart
/// take two and a launch more. `grad` may be a low-rank product (LoSA's gradient at a mixer's
/// normed input), which that kernel computes row by row instead of reading it; elsewhere it is
/// written out first (its elements rounded to the dtype, as the kernel rounds them).
pub fn layer_norm_grads(
    x: &Tensor,
    weight: &Tensor,
    grad: Operand<'_>,
    add: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if let Operand::LowRank(lr) = grad {
        lr.dims(x.dims())?;
    }
    #[cfg(feature = "cuda")]
    let one_pass = x.device().is_cuda() && add.is_none_or(|a| a.dims() == x.dims());
    #[cfg(feature = "cuda")]
    if one_pass && let Some((dx, sums)) = super::cuda::layer_norm_grads(x, weight, grad, add, eps)? {
        return Ok((dx, sums.get(0)?, sums.get(1)?));
    }
    // Written out once: for the same one-pass kernel where it could not read the product in
    // place, else for the two passes below.
    let dense = grad.materialise()?.contiguous()?;
    #[cfg(feature = "cuda")]
    if one_pass
        && matches!(grad, Operand::LowRank(_))
        && let Some((dx, sums)) = super::cuda::layer_norm_grads(x, weight, (&dense).into(), add, eps)?
    {
        return Ok((dx, sums.get(0)?, sums.get(1)?));
    }
    let (dw, db) = layer_norm_dparams(x, &dense, eps)?;
    Ok((layer_norm_dx(x, weight, &dense, add, eps)?, dw, db))
}

/// `dx` (plus `add`) from `(x, weight, grad)`. `add` is contiguous and read through its storage
/// (an op has at most three inputs).
struct BwdX {
    eps: f64,
    add: Option<Tensor>,
}

fn bwd_x_cpu<T: Elem>(
    eps: f64,
    add: Option<(&CpuStorage, &Layout)>,
    (x, lx): (&[T], &Layout),
    (w, lw): (&[T], &Layout),
    (g, lg): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let name = "layer_norm backward";
    let (x, w, g) = (slice(x, lx, name)?, slice(w, lw, name)?, slice(g, lg, name)?);
    let add = add.map(|(s, l)| slice(s.as_slice::<T>()?, l, name)).transpose()?;
    let d = w.len();
    let n = T::A::of(d as f64);
    let mut dx = vec![T::store(T::A::ZERO); x.len()];
    let rows = dx.par_chunks_mut(d).zip(x.par_chunks(d).zip(g.par_chunks(d))).enumerate();
    rows.with_min_len(8).for_each(|(r, (dx, (x, g)))| {
        let (mean, rstd) = stats(x, eps);
        let (mut s1, mut s2) = (T::A::ZERO, T::A::ZERO);
        for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
            let gw = g.load() * w.load();
            s1 += gw;
            s2 += gw * (x.load() - mean) * rstd;
        }
        let (m1, m2) = (s1 / n, s2 / n);
        let grad = |x: T, g: T, w: T| rstd * (g.load() * w.load() - m1 - (x.load() - mean) * rstd * m2);
        let terms = dx.iter_mut().zip(x).zip(g).zip(w);
        match add {
            Some(add) => terms.zip(&add[r * d..(r + 1) * d]).for_each(|((((dx, &x), &g), &w), a)| {
                *dx = T::store(grad(x, g, w) + a.load());
            }),
            None => terms.for_each(|(((dx, &x), &g), &w)| *dx = T::store(grad(x, g, w))),
        }
    });
    Ok((T::to_cpu_storage_owned(dx), lx.shape().clone()))
}

impl CustomOp3 for BwdX {
    fn name(&self) -> &'static str {
        "losa-layer-norm-bwd-x"
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
        let add = self.add.as_ref().map(Tensor::storage_and_layout);
        let add = super::cpu::extra_input(add.as_ref().map(|(s, l)| (&**s, *l)), self.name())?;
        cpu_dispatch!(self.name(), bwd_x_cpu(self.eps, add; s1: l1, s2: l2, s3: l3))
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
        let add = self.add.as_ref().map(Tensor::storage_and_layout);
        let add = super::cuda::extra_input(add.as_ref().map(|(s, l)| (&**s, *l)), self.name())?;
        super::cuda::layer_norm_bwd_x((s1, l1), (s2, l2), (s3, l3), add, self.eps)
    }
}

/// Partial sums `[chunks, 2, d]` of `(g·x̂, g)` over chunks of rows, from `(x, grad)`, in the
/// accumulation dtype (f32, or f64 for f64).
pub(crate) struct BwdParams {
    pub(crate) eps: f64,
}

fn bwd_params_cpu<T: Elem>(
    eps: f64,
    d: usize,
    (x, lx): (&[T], &Layout),
    (g, lg): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let name = "layer_norm backward";
    let (x, g) = (slice(x, lx, name)?, slice(g, lg, name)?);
    let chunk = CPU_PARAM_ROWS * d;
    let partials: Vec<Vec<T::A>> = x
        .par_chunks(chunk)
        .zip(g.par_chunks(chunk))
        .map(|(x, g)| {
            let mut acc = vec![T::A::ZERO; 2 * d];
            for (x, g) in x.chunks(d).zip(g.chunks(d)) {
                let (mean, rstd) = stats(x, eps);
                let (dw, db) = acc.split_at_mut(d);
                for (((dw, db), &x), &g) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(g) {
                    *dw += g.load() * (x.load() - mean) * rstd;
                    *db += g.load();
                }
            }
            acc
        })
        .collect();
    let chunks = partials.len();
    let flat: Vec<T::A> = partials.into_iter().flatten().collect();
    Ok((<T::A as candle_core::WithDType>::to_cpu_storage_owned(flat), Shape::from((chunks, 2, d))))
}

impl CustomOp2 for BwdParams {
    fn name(&self) -> &'static str {
        "losa-layer-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&0);
        if d == 0 || l1.shape().elem_count() == 0 {
            bail!("{}: empty input", self.name());
        }
        cpu_dispatch!(self.name(), bwd_params_cpu(self.eps, d; s1: l1, s2: l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm_bwd_params((s1, l1), (s2, l2), self.eps)
    }
}
