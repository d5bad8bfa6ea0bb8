//! Attention's qkv bias and head split in one pass: `[batch, tokens, 3·d]` (the qkv projection
//! before its bias) to `[3, batch, heads, tokens, d/heads]`, contiguous, with the bias added, so
//! that q, k and v are contiguous views for the attention matmuls. Composed from candle ops this
//! is a bias pass, a permuted view, then one strided copy each for q, k and v (four passes writing
//! a full tensor each); the backward is the inverse permutation in one pass, and the bias
//! gradient a sum. [`merge_heads`] is the same inverse permutation for attention's output,
//! `[batch, heads, tokens, d/heads]` to `[batch, tokens, d]`, in place of candle's generic strided
//! copy of the transposed tensor.

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
    let op = Heads { parts: 3, batch, tokens, heads, head_dim: width3 / (3 * heads) };
    x.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

/// Attention's output `[batch, heads, tokens, head_dim]` as `[batch, tokens, heads·head_dim]`
/// (each token's heads side by side), contiguous; differentiable.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (batch, heads, tokens, head_dim) = x.dims4()?;
    x.contiguous()?
        .apply_op1(Regroup { heads: Heads { parts: 1, batch, tokens, heads, head_dim }, split: false })
}

/// The geometry of one split: `[batch, tokens, parts, heads, head_dim]` to `[parts, batch, heads,
/// tokens, head_dim]` (3 parts for q, k and v; 1 for attention's output).
#[derive(Clone, Copy)]
struct Heads {
    parts: usize,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Heads {
    /// The offset in `[batch, tokens, parts, heads, head_dim]` of output row `r` (of head_dim
    /// elements) of `[parts, batch, heads, tokens, head_dim]`.
    fn source(self, r: usize) -> usize {
        let (n, r) = (r % self.tokens, r / self.tokens);
        let (h, r) = (r % self.heads, r / self.heads);
        let (b, s) = (r % self.batch, r / self.batch);
        (((b * self.tokens + n) * self.parts + s) * self.heads + h) * self.head_dim
    }

    /// The inverse of [`Heads::source`]: the output row of input row `q` (of head_dim elements) of
    /// `[batch, tokens, parts, heads, head_dim]`.
    fn target(self, q: usize) -> usize {
        let (h, q) = (q % self.heads, q / self.heads);
        let (s, q) = (q % self.parts, q / self.parts);
        let (n, b) = (q % self.tokens, q / self.tokens);
        ((s * self.batch + b) * self.heads + h) * self.tokens + n
    }

    /// The bias offset of output row `r`.
    fn bias(self, r: usize) -> usize {
        let r = r / self.tokens;
        let (h, s) = (r % self.heads, r / (self.heads * self.batch));
        (s * self.heads + h) * self.head_dim
    }

    /// The split shape.
    fn shape(self) -> Shape {
        match self.parts {
            1 => Shape::from((self.batch, self.heads, self.tokens, self.head_dim)),
            parts => Shape::from((parts, self.batch, self.heads, self.tokens, self.head_dim)),
        }
    }

    /// The merged shape.
    fn merged(self) -> Shape {
        Shape::from((self.batch, self.tokens, self.parts * self.heads * self.head_dim))
    }

    /// `[batch, tokens, parts, heads, head_dim]` for the CUDA kernels.
    #[cfg(feature = "cuda")]
    fn dims(self) -> [usize; 5] {
        [self.batch, self.tokens, self.parts, self.heads, self.head_dim]
    }
}

fn fwd_cpu<T: Elem>(
    op: Heads,
    (x, lx): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
) -> Result<(CpuStorage, Shape)> {
    split_cpu(op, x, lx, Some(slice(b, lb, "split_heads")?))
}

/// The split, with the bias added if there is one.
fn split_cpu<T: Elem>(op: Heads, x: &[T], lx: &Layout, b: Option<&[T]>) -> Result<(CpuStorage, Shape)> {
    let x = slice(x, lx, "split_heads")?;
    let hd = op.head_dim.max(1);
    let mut y = vec![T::store(<T::A as super::cpu::Acc>::ZERO); x.len()];
    y.par_chunks_mut(hd).enumerate().with_min_len(64).for_each(|(r, y)| {
        let src = &x[op.source(r)..][..hd];
        match b {
            Some(b) => {
                for ((y, x), b) in y.iter_mut().zip(src).zip(&b[op.bias(r)..][..hd]) {
                    *y = T::store(x.load() + b.load());
                }
            }
            None => y.copy_from_slice(src),
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
        let out = super::cuda::split_heads((s1, l1), Some((s2, l2)), self.dims(), true)?;
        Ok((out, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op1_no_bwd(&Regroup { heads: *self, split: false })?;
        let dbias = if bias.track_op() {
            Some(super::sum_along(&dx, self.parts * self.heads * self.head_dim, 1)?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        // Only an input that needs it gets a gradient: candle keeps every returned one to the end.
        Ok((x.track_op().then_some(dx), dbias))
    }
}

/// The permutation without a bias, either way: to head order (`split`, `[batch, tokens,
/// parts·heads·head_dim]` to `[parts, batch, heads, tokens, head_dim]`) or back to token order.
/// Back to token order it is split_heads' backward (no graph) and [`merge_heads`]; each direction's
/// backward is the other.
struct Regroup {
    heads: Heads,
    split: bool,
}

fn merge_cpu<T: Elem>(op: Heads, (g, lg): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    let g = slice(g, lg, "merge_heads")?;
    let hd = op.head_dim.max(1);
    let mut dx = vec![T::store(<T::A as super::cpu::Acc>::ZERO); g.len()];
    // One token's row per task: its parts × heads pieces of head_dim, each from its own place.
    let pieces = op.parts * op.heads;
    dx.par_chunks_mut(hd * pieces).enumerate().with_min_len(8).for_each(|(token, dx)| {
        for (k, dx) in dx.chunks_mut(hd).enumerate() {
            dx.copy_from_slice(&g[op.target(token * pieces + k) * hd..][..hd]);
        }
    });
    Ok((T::to_cpu_storage_owned(dx), op.merged()))
}

fn regroup_cpu<T: Elem>(op: &Regroup, (x, lx): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    match op.split {
        true => split_cpu(op.heads, x, lx, None),
        false => merge_cpu(op.heads, (x, lx)),
    }
}

impl CustomOp1 for Regroup {
    fn name(&self) -> &'static str {
        match self.split {
            true => "losa-split-heads-no-bias",
            false => "losa-merge-heads",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(self.name(), regroup_cpu(self; s: l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::split_heads((s, l), None, self.heads.dims(), self.split)?;
        let shape = if self.split { self.heads.shape() } else { self.heads.merged() };
        Ok((out, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Regroup { heads: self.heads, split: !self.split };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
