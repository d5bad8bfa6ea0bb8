//! Attention's qkv bias and head split in one pass: `[batch, tokens, 3·d]` (the qkv projection
//! before its bias) to `[3, batch, heads, tokens, d/heads]`, contiguous, with the bias added, so
//! that q, k and v are contiguous views for the attention matmuls. Composed from candle ops this
//! is a bias pass, a permuted view, then one strided copy each for q, k and v (four passes writing
//! a full tensor each); the backward is the inverse permutation in one pass, and the bias
//! gradient a sum.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Elem, cpu_dispatch, slice};

/// `x + bias` ([batch, tokens, 3·d], bias [3·d]) split into `[3, batch, heads, tokens, d/heads]`;
/// differentiable in both.
pub fn split_heads(x: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, tokens, width3) = x.dims3()?;
    if heads == 0 || width3 % (3 * heads) != 0 || bias.dims() != [width3] {
        bail!(
            "split_heads: {:?} with bias {:?} does not split into 3 × {heads} heads",
            x.dims(),
            bias.dims()
        );
    }
    let op = Heads { batch, tokens, heads, head_dim: width3 / (3 * heads) };
    x.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

/// The geometry of one split.
#[derive(Clone, Copy)]
struct Heads {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Heads {
    /// The offset in `[batch, tokens, 3, heads, head_dim]` of output row `r` (of head_dim
    /// elements) of `[3, batch, heads, tokens, head_dim]`.
    fn source(self, r: usize) -> usize {
        let (n, r) = (r % self.tokens, r / self.tokens);
        let (h, r) = (r % self.heads, r / self.heads);
        let (b, s) = (r % self.batch, r / self.batch);
        (((b * self.tokens + n) * 3 + s) * self.heads + h) * self.head_dim
    }

    /// The inverse of [`Heads::source`]: the output row of input row `q` (of head_dim elements) of
    /// `[batch, tokens, 3, heads, head_dim]`.
    fn target(self, q: usize) -> usize {
        let (h, q) = (q % self.heads, q / self.heads);
        let (s, q) = (q % 3, q / 3);
        let (n, b) = (q % self.tokens, q / self.tokens);
        ((s * self.batch + b) * self.heads + h) * self.tokens + n
    }

    /// The bias offset of output row `r`.
    fn bias(self, r: usize) -> usize {
        let r = r / self.tokens;
        let (h, s) = (r % self.heads, r / (self.heads * self.batch));
        (s * self.heads + h) * self.head_dim
    }

    fn shape(self) -> Shape {
        Shape::from((3, self.batch, self.heads, self.tokens, self.head_dim))
    }
}

fn fwd_cpu<T: Elem>(
    op: Heads,
    (x, lx): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (x, b) = (slice(x, lx, "split_heads")?, slice(b, lb, "split_heads")?);
    let hd = op.head_dim.max(1);
    let mut y = vec![T::store(<T::A as super::cpu::Acc>::ZERO); x.len()];
    y.par_chunks_mut(hd).enumerate().with_min_len(64).for_each(|(r, y)| {
        let (src, bias) = (&x[op.source(r)..][..hd], &b[op.bias(r)..][..hd]);
        for ((y, x), b) in y.iter_mut().zip(src).zip(bias) {
            *y = T::store(x.load() + b.load());
        }
    });
    Ok((T::to_cpu_storage_owned(y), op.shape()))
}

impl CustomOp2 for Heads {
    fn name(&self) -> &'static str {
        "losa-split-heads"
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
        let dims = [self.batch, self.tokens, self.heads, self.head_dim];
        let out = super::cuda::split_heads((s1, l1), Some((s2, l2)), dims, true)?;
        Ok((out, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op1_no_bwd(&Merge(*self))?;
        let dbias = if bias.track_op() {
            let width3 = 3 * self.heads * self.head_dim;
            Some(super::sum_along(&dx, width3, 1)?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        // Only an input that needs it gets a gradient: candle keeps every returned one to the end.
        Ok((x.track_op().then_some(dx), dbias))
    }
}

/// The inverse permutation, `[3, batch, heads, tokens, head_dim]` to `[batch, tokens, 3·d]`.
struct Merge(Heads);

fn merge_cpu<T: Elem>(op: Heads, (g, lg): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    let g = slice(g, lg, "split_heads backward")?;
    let hd = op.head_dim.max(1);
    let mut dx = vec![T::store(<T::A as super::cpu::Acc>::ZERO); g.len()];
    dx.par_chunks_mut(hd).enumerate().with_min_len(64).for_each(|(q, dx)| {
        dx.copy_from_slice(&g[op.target(q) * hd..][..hd]);
    });
    let width3 = 3 * op.heads * op.head_dim;
    Ok((T::to_cpu_storage_owned(dx), Shape::from((op.batch, op.tokens, width3))))
}

impl CustomOp1 for Merge {
    fn name(&self) -> &'static str {
        "losa-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), merge_cpu(self.0; s: l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let op = self.0;
        let dims = [op.batch, op.tokens, op.heads, op.head_dim];
        let out = super::cuda::split_heads((s, l), None, dims, false)?;
        Ok((out, Shape::from((op.batch, op.tokens, 3 * op.heads * op.head_dim))))
    }
}
