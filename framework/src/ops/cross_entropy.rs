//! The training loss: mean cross-entropy over a batch of logits with label smoothing, forward and
//! backward one op each.
//!
//! Composed from candle ops (log-softmax as max, subtract, exp, sum, log, subtract; the labels'
//! gather; negation and means; the smoothing term's mean and the weighted sum) this is about a
//! dozen ops forward and, with candle's gradient bookkeeping (a zero-filled tensor and an addition
//! for every input of every node), some forty backward, on tensors of a few thousand elements: on
//! a GPU each costs its launch and the host's time, not its bytes, and together they were a tenth
//! of LoSA's step from cached features. Here the forward is one launch (each row's loss, summed in
//! a fixed order, so the result does not vary from run to run) and the backward another, which
//! recomputes each row's softmax from the logits (cheaper than keeping it).
//!
//! With `ε` the smoothing and `C` the classes, row `i`'s loss is PyTorch's
//! `(1 − ε)·(−log p_{y_i}) + ε·mean_c(−log p_c) = lse_i − (1 − ε)·z_{i,y_i} − ε·mean_c z_{i,c}`, and
//! the gradient of the batch mean is `(p − (1 − ε)·onehot(y) − ε/C) / batch` per row.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, on_float, slice};

const NAME: &str = "cross_entropy";

/// The mean over the batch of the cross-entropy of `logits` `[batch, classes]` (f32, f64, f16 or
/// bf16) against `labels` `[batch]` (class indices: u8, u32 or i64), with label smoothing
/// `smoothing` in `[0, 1]` as PyTorch defines it: a scalar in the logits' dtype, computed in f32
/// (f64 for f64), differentiable in the logits. A label out of range is an error on the CPU; on
/// CUDA, where checking would wait for the device, it makes the loss NaN (which a run records as
/// failed).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (batch, classes) = logits.dims2()?;
    if batch == 0 || classes == 0 {
        bail!("{NAME}: logits {:?} must have a row and a class", logits.dims());
    }
    // The kernels step through rows and classes with 32-bit ints, by up to 32 at a time.
    if classes > i32::MAX as usize - 32 || batch > i32::MAX as usize - 32 {
        bail!("{NAME}: logits {:?} too large", logits.dims());
    }
    if labels.dims() != [batch] {
        bail!("{NAME}: labels {:?} for logits {:?}: one label per row", labels.dims(), logits.dims());
    }
    if !(0.0..=1.0).contains(&smoothing) {
        bail!("{NAME}: label smoothing {smoothing} outside [0, 1]");
    }
    let labels = class_indices(labels)?;
    logits.contiguous()?.apply_op2(&labels, Loss { smoothing })
}

/// `labels` as the u32 indices the kernels read; floats are refused, and on the CPU a negative
/// i64 label is an error naming it (on CUDA it wraps to an index out of range, so a NaN loss).
fn class_indices(labels: &Tensor) -> Result<Tensor> {
    match labels.dtype() {
        DType::U8 | DType::U32 => {}
        DType::I64 if labels.device().is_cpu() => {
            let values: Vec<i64> = labels.to_vec1()?;
            if let Some((row, label)) = values.iter().enumerate().find(|(_, l)| **l < 0) {
                bail!("{NAME}: label {label} of row {row} is negative");
            }
        }
        DType::I64 => {}
        other => bail!("{NAME}: labels must be class indices (u8, u32 or i64), not {other:?}"),
    }
    labels.to_dtype(DType::U32)?.contiguous()
}

#[derive(Clone, Copy)]
struct Loss {
    smoothing: f64,
}

/// One row's `(max, Σ exp(z − max))`, with each `exp(z − max)` in `e` (so that the backward
/// computes each exponential once).
fn row_stats<T: Elem>(z: &[T], e: &mut Vec<T::A>) -> (T::A, T::A) {
    let first = z.first().map_or(T::A::ZERO, |v| v.load());
    let max = z.iter().map(|v| v.load()).fold(first, |m, v| if v > m { v } else { m });
    e.clear();
    e.extend(z.iter().map(|v| (v.load() - max).exp()));
    (max, e.iter().fold(T::A::ZERO, |s, &v| s + v))
}

/// `w·v`, or 0 where `w` is: a term with no weight drops out even where `v` is infinite (a logit
/// of −∞ without smoothing leaves the loss finite, as PyTorch's does).
fn weighted<A: Acc>(w: A, v: A) -> A {
    if w == A::ZERO { A::ZERO } else { w * v }
}

/// Rows per rayon task: a batch's logits are a few thousand values, fewer than it takes to repay
/// handing work to another thread.
fn min_rows(classes: usize) -> usize {
    (1 << 15) / classes + 1
}

/// The labels as class indices, each checked against `classes`.
fn checked_labels<'a>(labels: &'a CpuStorage, layout: &Layout, classes: usize) -> Result<&'a [u32]> {
    let labels = slice(labels.as_slice::<u32>()?, layout, NAME)?;
    if let Some((row, label)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= classes) {
        bail!("{NAME}: label {label} of row {row} is out of range for {classes} classes");
    }
    Ok(labels)
}

impl Loss {
    fn cpu<T: Elem>(&self, z: &[T], lz: &Layout, labels: &[u32]) -> Result<(CpuStorage, Shape)> {
        let z = slice(z, lz, NAME)?;
        let classes = lz.dims()[1];
        let keep = T::A::of(1.0 - self.smoothing);
        let spread = T::A::of(self.smoothing);
        let rows: Vec<T::A> = z
            .par_chunks(classes)
            .zip(labels.par_iter())
            .with_min_len(min_rows(classes))
            .map_init(Vec::new, |e, (z, &y)| {
                let (max, sum) = row_stats(z, e);
                // lse − (1 − ε)·z_y − ε·mean z with the max taken out of each term (keep + spread
                // is 1), so that large logits do not cancel.
                let gap = z.iter().fold(T::A::ZERO, |s, v| s + (max - v.load())) / T::A::of(classes as f64);
                sum.ln() + weighted(keep, max - z[y as usize].load()) + weighted(spread, gap)
            })
            .collect();
        // Summed in row order (the kernel sums each warp's rows, then the warps', also in a fixed
        // order, so each device's loss is the same in every run; the two differ by rounding).
        let total = rows.iter().fold(T::A::ZERO, |s, &v| s + v);
        let loss = T::store(total / T::A::of(rows.len() as f64));
        Ok((T::to_cpu_storage_owned(vec![loss]), Shape::from(())))
    }
}

impl CustomOp2 for Loss {
    fn name(&self) -> &'static str {
        "losa-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let labels = checked_labels(s2, l2, l1.dims()[1])?;
        on_float!(NAME, s1, z => self.cpu(z, l1, labels))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cross_entropy_fwd((s1, l1), (s2, l2), self.smoothing)
    }

    fn bwd(
        &self,
        z: &Tensor,
        labels: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = z.apply_op3_no_bwd(labels, &grad.contiguous()?, &LossBwd(*self))?;
        Ok((Some(dz), None))
    }
}

/// The logits' gradient from `(logits, labels, grad)`, `grad` the loss's (a scalar).
struct LossBwd(Loss);

impl LossBwd {
    fn cpu<T: Elem>(
        &self,
        z: &[T],
        lz: &Layout,
        labels: &[u32],
        (g, lg): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let z = slice(z, lz, NAME)?;
        let classes = lz.dims()[1];
        let Some(&g) = slice(g.as_slice::<T>()?, lg, NAME)?.first() else {
            bail!("{NAME}: no gradient for the loss")
        };
        let scale = g.load() / T::A::of((z.len() / classes) as f64);
        let (keep, spread) = (T::A::of(1.0 - self.0.smoothing), T::A::of(self.0.smoothing / classes as f64));
        let mut dz = vec![T::store(T::A::ZERO); z.len()];
        let rows = dz.par_chunks_mut(classes).zip(z.par_chunks(classes)).zip(labels.par_iter());
        let rows = rows.with_min_len(min_rows(classes));
        rows.for_each_init(Vec::new, |e, ((dz, z), &y)| {
            let (_, sum) = row_stats(z, e);
            let inv = T::A::of(1.0) / sum;
            for (c, (dz, &e)) in dz.iter_mut().zip(e.iter()).enumerate() {
                let p = e * inv;
                let target = if c == y as usize { keep + spread } else { spread };
                *dz = T::store(scale * (p - target));
            }
        });
        Ok((T::to_cpu_storage_owned(dz), lz.shape().clone()))
    }
}

impl CustomOp3 for LossBwd {
    fn name(&self) -> &'static str {
        "losa-cross-entropy-bwd"
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
        let labels = checked_labels(s2, l2, l1.dims()[1])?;
        on_float!(NAME, s1, z => self.cpu(z, l1, labels, (s3, l3)))
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
        super::cuda::cross_entropy_bwd((s1, l1), (s2, l2), (s3, l3), self.0.smoothing)
    }
}
