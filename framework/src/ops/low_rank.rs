//! Low-rank products that the ops read without their being written to memory: a LoSA mixer's
//! up-projection `Up(a)` of its rank-sized activation, which a residual adds, and the gradient
//! at its normed input, `dpre·Wd` or `Wdᵀ·dpre`, which the LayerNorm's backward reads. Composed, a
//! GEMM writes the full-size `[batch, tokens, width]` product and the next op reads it back: two
//! of a mixer's full-size passes each time, for a product whose every element is a dot product of
//! length rank (8 by default). The kernels compute each element where they read it instead.

use candle_core::{Result, Tensor, bail};

use super::cpu::Elem;
use crate::recipe::Mixer;

/// A full-size operand of an op: a tensor, or a low-rank product that the op's kernel computes
/// where it reads it.
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    /// A tensor of the op's shape.
    Dense(&'a Tensor),
    /// A product that fits it.
    LowRank(LowRank<'a>),
}

impl<'a> From<&'a Tensor> for Operand<'a> {
    fn from(m: &'a Tensor) -> Self {
        Operand::Dense(m)
    }
}

impl<'a> From<LowRank<'a>> for Operand<'a> {
    fn from(m: LowRank<'a>) -> Self {
        Operand::LowRank(m)
    }
}

impl Operand<'_> {
    /// The tensors it is made of.
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Operand::Dense(m) => vec![m],
            Operand::LowRank(lr) => vec![lr.weight, lr.act],
        }
    }

    /// The operand written out.
    pub(crate) fn materialise(&self) -> Result<Tensor> {
        match self {
            Operand::Dense(m) => Ok((*m).clone()),
            Operand::LowRank(lr) => lr.materialise(),
        }
    }
}

/// A full-size operand, `[batch, tokens, width]`, as the product of a weight and an activation of rank `R`.
#[derive(Debug, Clone, Copy)]
pub struct LowRank<'a> {
    /// Channel: `m[b, t, :] = act[b, t, :]·weightᵀ`, weight `[width, R]`, act `[batch, tokens, R]`
    /// (a channel mixer's `Up`). Token: `m[b] = weight·act[b]`, weight `[tokens, R]`, act
    /// `[batch, R, width]` (a token mixer's).
    pub axis: Mixer,
    /// `[width, R]` or `[tokens, R]`: a mixer's up-projection, or its down-projection transposed
    /// (the backward's `dpre·Wd` is `dpre·(Wdᵀ)ᵀ`, and `Wdᵀ·dpre` is the token form as it is).
    pub weight: &'a Tensor,
    /// `[batch, tokens, R]` or `[batch, R, width]`: the rank-sized activation or gradient.
    pub act: &'a Tensor,
}

impl LowRank<'_> {
    /// `(batch, tokens, width, rank)`, checked against each other and against `out`, the shape
    /// the op reads the operand as; an error names what does not fit.
    pub(crate) fn dims(&self, out: &[usize]) -> Result<[usize; 4]> {
        let (w, a) = (self.weight.dims(), self.act.dims());
        let fits = match (self.axis, out, w, a) {
            (Mixer::Channel, &[b, t, d], &[wd, r], &[ab, at, ar]) => (wd, ab, at, ar) == (d, b, t, r),
            (Mixer::Token, &[b, t, d], &[wt, r], &[ab, ar, ad]) => (wt, ab, ar, ad) == (t, b, r, d),
            _ => false,
        };
        match (fits, out, w) {
            (true, &[b, t, d], &[_, r]) => Ok([b, t, d, r]),
            _ => bail!(
                "low-rank operand: a {:?} product of weight {w:?} and activation {a:?} does not fit {out:?}",
                self.axis
            ),
        }
    }

    /// `m` written out (candle's matmul): where a device's kernel does not take the shapes.
    pub(crate) fn materialise(&self) -> Result<Tensor> {
        match self.axis {
            // One GEMM over all the batch's tokens.
            Mixer::Channel => {
                let (batch, tokens, rank) = self.act.dims3()?;
                let rows = self.act.reshape((batch * tokens, rank))?.matmul(&self.weight.t()?)?;
                rows.reshape((batch, tokens, ()))
            }
            Mixer::Token => self.weight.broadcast_matmul(self.act),
        }
    }
}

/// A [`LowRank`] on the CPU, its weight and activation as contiguous slices: the rows of `a + m`.
pub(crate) struct RowsOf<'a, T: Elem> {
    axis: Mixer,
    weight: &'a [T],
    /// The channel weight transposed to `[R][width]` and widened, once per call, so that each
    /// loop below runs along a row and vectorises (the token weight is read as it is).
    wt: Vec<T::A>,
    act: &'a [T],
    tokens: usize,
    rank: usize,
}

impl<'a, T: Elem> RowsOf<'a, T> {
    pub(crate) fn new(axis: Mixer, weight: &'a [T], act: &'a [T], tokens: usize, rank: usize) -> Self {
        let wt = match axis {
            Mixer::Channel if rank > 0 => {
                let d = weight.len() / rank;
                (0..rank).flat_map(|r| (0..d).map(move |j| weight[j * rank + r].load())).collect()
            }
            _ => Vec::new(),
        };
        Self { axis, weight, wt, act, tokens, rank }
    }

    /// `acc = a_row + m_row` for output row `row` (image `row / tokens`, token `row % tokens`), `m`
    /// summed over the rank in order, in the accumulation type, as the CUDA kernel sums it.
    pub(crate) fn add_into(&self, row: usize, a_row: &[T], acc: &mut [T::A]) {
        let (d, zero) = (acc.len(), <T::A as super::cpu::Acc>::ZERO);
        let (b, t) = (row / self.tokens, row % self.tokens);
        acc.fill(zero);
        for r in 0..self.rank {
            match self.axis {
                Mixer::Channel => {
                    let p = self.act[row * self.rank + r].load();
                    let q = &self.wt[r * d..(r + 1) * d];
                    acc.iter_mut().zip(q).for_each(|(acc, &q)| *acc += p * q);
                }
                Mixer::Token => {
                    let p = self.weight[t * self.rank + r].load();
                    let start = (b * self.rank + r) * d;
                    let q = &self.act[start..start + d];
                    acc.iter_mut().zip(q).for_each(|(acc, q)| *acc += p * q.load());
                }
            }
        }
        acc.iter_mut().zip(a_row).for_each(|(acc, a)| *acc = a.load() + *acc);
    }
}
