//! A classifier's read of a token sequence: the mean over a range of tokens of their LayerNorm,
//! `mean_t LN(x_t)·w + b`, as one op.
//!
//! LoSA's head reads the side network's `[batch, tokens, width]` output (in the backbone's dtype,
//! bf16 on a GPU) through the backbone's frozen final norm and pools it, in f32. Composed, that is
//! an f32 copy of the whole stream, the norm over every token, a strided mean, and in the backward
//! the mean's broadcast, the narrow's zero padding, the norm's backward and the cast back: about
//! ten full-size f32 passes and a dozen launches for a `[batch, width]` result. Here the forward
//! reads the stream once (the affine commutes with the mean, so it is applied once per image to
//! the sums of the normalised rows) and the backward writes the stream's gradient in one pass,
//! zero outside the pooled tokens. The norm is frozen: with a scale or shift that needs a
//! gradient, or dtypes the op does not pair, it composes the same result from candle ops.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, on_float, slice};
use super::layer_norm;
use super::layer_norm::stats;

const NAME: &str = "layer_norm_pool";

/// The mean over `tokens` of `LN(x_t)·weight + bias` for `x` `[batch, tokens, d]`: `[batch, d]`
/// in the dtype of `weight` and `bias` (`[d]`), computed in f32 (f64 for f64) from `x`'s values;
/// differentiable in `x`, and in `weight` and `bias` through the composed path.
pub fn layer_norm_pool(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    tokens: Range<usize>,
) -> Result<Tensor> {
    let (_, n, d) = x.dims3()?;
    if d == 0 {
        bail!("{NAME}: tokens of width 0");
    }
    if weight.dims() != [d] || bias.dims() != [d] {
        bail!("{NAME}: weight {:?} and bias {:?} must be [{d}]", weight.dims(), bias.dims());
    }
    if tokens.is_empty() || tokens.end > n {
        bail!("{NAME}: tokens {tokens:?} of a sequence of {n}");
    }
    let acc = match x.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let frozen = !weight.track_op() && !bias.track_op();
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    if frozen && weight.dtype() == acc && bias.dtype() == acc && fused_on_device(&x, &weight, &bias)? {
        return x.apply_op1(Fwd { weight, bias, eps, tokens });
    }
    let normed = layer_norm(&x.to_dtype(weight.dtype())?, &weight, &bias, eps)?;
    normed.narrow(1, tokens.start, tokens.len())?.mean(1)
}

/// Whether the op's own kernels take these inputs on their device: always on the CPU; on CUDA,
/// rows of the LayerNorm's vector path (see cuda.rs).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn fused_on_device(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return super::cuda::norm_pool_fits(x, weight, bias);
    }
    Ok(x.device().is_cpu())
}

/// The CPU slice of a captured tensor (the scale, the shift) in the accumulation type.
fn captured<A: candle_core::WithDType>(
    t: &Tensor,
    f: impl FnOnce(&[A]) -> Result<CpuStorage>,
) -> Result<CpuStorage> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*s else { bail!("{NAME}: inputs on different devices") };
    f(slice(s.as_slice::<A>()?, l, NAME)?)
}

/// The forward op on `x`; the scale and shift are captured (frozen).
struct Fwd {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    tokens: Range<usize>,
}

impl Fwd {
    fn cpu<T: Elem>(&self, x: &[T], lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(x, lx, NAME)?;
        let &[batch, n, d] = lx.dims() else { bail!("{NAME}: x must be [batch, tokens, d]") };
        let scale = T::A::of(1.0 / self.tokens.len() as f64);
        let storage = captured::<T::A>(&self.weight, |w| {
            captured::<T::A>(&self.bias, |b| {
                let mut out = vec![T::A::ZERO; batch * d];
                out.par_chunks_mut(d).zip(x.par_chunks(n * d)).for_each(|(out, image)| {
                    // The normalised rows' sums, then the affine once (as the kernel does).
                    for row in image.chunks(d).take(self.tokens.end).skip(self.tokens.start) {
                        let (mean, rstd) = stats(row, self.eps);
                        for (o, v) in out.iter_mut().zip(row) {
                            *o += (v.load() - mean) * rstd;
                        }
                    }
                    for ((o, &w), &b) in out.iter_mut().zip(w).zip(b) {
                        *o = *o * scale * w + b;
                    }
                });
                Ok(<T::A as candle_core::WithDType>::to_cpu_storage_owned(out))
            })
        })?;
        Ok((storage, Shape::from((batch, d))))
    }
}

impl CustomOp1 for Fwd {
    fn name(&self) -> &'static str {
        "losa-layer-norm-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        on_float!(NAME, s, x => self.cpu(x, l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm_pool_fwd((s, l), &self.weight, &self.bias, self.tokens.clone(), self.eps)
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let bwd = Bwd { weight: self.weight.clone(), eps: self.eps, tokens: self.tokens.clone() };
        x.apply_op2_no_bwd(&grad.contiguous()?, &bwd).map(Some)
    }
}

/// The input gradient, from `(x, grad)` with `grad` `[batch, d]` in the accumulation type: for a
/// pooled token the LayerNorm's input gradient for `grad / tokens`, elsewhere 0.
struct Bwd {
    weight: Tensor,
    eps: f64,
    tokens: Range<usize>,
}

impl Bwd {
    fn cpu<T: Elem>(&self, x: &[T], lx: &Layout, g: &CpuStorage, lg: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(x, lx, NAME)?;
        let g = slice(g.as_slice::<T::A>()?, lg, NAME)?;
        let &[_, n, d] = lx.dims() else { bail!("{NAME}: x must be [batch, tokens, d]") };
        let (scale, width) = (T::A::of(1.0 / self.tokens.len() as f64), T::A::of(d as f64));
        let storage = captured::<T::A>(&self.weight, |w| {
            let mut dx = vec![T::store(T::A::ZERO); x.len()];
            let images = dx.par_chunks_mut(n * d).zip(x.par_chunks(n * d)).zip(g.par_chunks(d));
            images.for_each(|((dx, image), g)| {
                // Every pooled row of an image has the same output gradient: its product with
                // the scale and that product's mean are the image's.
                let gw: Vec<T::A> = g.iter().zip(w).map(|(&g, &w)| g * scale * w).collect();
                let m1 = gw.iter().fold(T::A::ZERO, |s, &v| s + v) / width;
                let rows = dx.chunks_mut(d).zip(image.chunks(d));
                for (dx, x) in rows.take(self.tokens.end).skip(self.tokens.start) {
                    let (mean, rstd) = stats(x, self.eps);
                    let xhat = |v: T| (v.load() - mean) * rstd;
                    let m2 = gw.iter().zip(x).fold(T::A::ZERO, |s, (&v, &x)| s + v * xhat(x)) / width;
                    for ((dx, &gw), &x) in dx.iter_mut().zip(&gw).zip(x) {
                        *dx = T::store(rstd * (gw - m1 - xhat(x) * m2));
                    }
                }
            });
            Ok(T::to_cpu_storage_owned(dx))
        })?;
        Ok((storage, lx.shape().clone()))
    }
}

impl CustomOp2 for Bwd {
    fn name(&self) -> &'static str {
        "losa-layer-norm-pool-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        on_float!(NAME, s1, x => self.cpu(x, l1, s2, l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm_pool_bwd((s1, l1), (s2, l2), &self.weight, self.tokens.clone(), self.eps)
    }
}
