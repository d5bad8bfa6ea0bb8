//! AdamW's update of many parameters, in place and with no allocation.
//!
//! Composed from candle ops, one parameter's AdamW step is about fifteen ops, each a kernel launch
//! and a fresh tensor; LoSA has some 130 small parameters, so a step of its optimiser is some 2000
//! launches of kernels that each touch a few thousand elements — time spent launching, not
//! computing. Here a step is one pass over each parameter (on the CPU, two: the moments, then the
//! parameter), and on CUDA one launch serves up to 48 parameters (cuda.rs's multi-tensor table).

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, slice};

const NAME: &str = "adamw_update";
/// Elements per CPU task.
const CHUNK: usize = 1 << 14;

/// One AdamW step's settings shared by its parameters (decoupled weight decay, as PyTorch's
/// `AdamW`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// The moments' decay rates.
    pub betas: [f64; 2],
    /// Added to the second moment's root.
    pub eps: f64,
    /// The step's number, from 1 (for the bias corrections).
    pub step: u64,
}

/// One parameter of an AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParam<'a> {
    /// Updated in place; contiguous.
    pub param: &'a Tensor,
    /// Its gradient, of its dtype and size.
    pub grad: &'a Tensor,
    /// Its moments, `[2, n]`: the first then the second moment of its n elements, in its dtype
    /// (zeros before the first step); updated in place; contiguous.
    pub state: &'a Tensor,
    /// Its weight decay (0 for an exempt one).
    pub weight_decay: f64,
}

/// One AdamW step of every parameter in `params` for its gradient, in place: its moments, then
/// the parameter. Each gradient is scaled by `clip`, a one-element f64 tensor on the parameters'
/// device (the gradient-norm clipping factor, 1 for none), read by the kernel so that nothing
/// waits for it. Computes as the composition `m = m·β1 + g·(1 − β1)`, `v = v·β2 + g²·(1 − β2)`,
/// `p = p·(1 − lr·wd) − m / (√v · (1/√(1 − β2ᵗ)) + eps) · lr/(1 − β1ᵗ)`, in the same order.
/// Parameters, gradients and moments must not share memory.
pub fn adamw_update(params: &[AdamWParam<'_>], clip: &Tensor, step: &AdamWStep) -> Result<()> {
    if clip.dtype() != DType::F64 || clip.elem_count() != 1 {
        bail!("{NAME}: the clipping factor must be one f64");
    }
    if step.step == 0 {
        bail!("{NAME}: steps count from 1");
    }
    for p in params {
        check(p, clip)?;
    }
    let t = step.step.min(i32::MAX as u64) as i32;
    let [b1, b2] = step.betas;
    let inv_root_bc2 = 1.0 / (1.0 - b2.powi(t)).sqrt();
    let step_size = step.lr / (1.0 - b1.powi(t));
    let decay = |p: &AdamWParam| 1.0 - step.lr * p.weight_decay;
    let grads = params.iter().map(|p| p.grad.contiguous()).collect::<Result<Vec<_>>>()?;
    let clip = clip.contiguous()?;
    #[cfg(feature = "cuda")]
    if clip.device().is_cuda() {
        // One multi-tensor pass per dtype (an optimiser's parameters share one in practice).
        for dtype in super::distinct(params.iter().map(|p| p.param.dtype())) {
            let slots: Vec<_> = params
                .iter()
                .zip(&grads)
                .filter(|(p, _)| p.param.dtype() == dtype)
                .map(|(p, g)| (p.param, g, p.state, decay(p)))
                .collect();
            super::cuda::adamw_many(&slots, &clip, [b1, b2, inv_root_bc2, step.eps, step_size])?;
        }
        return Ok(());
    }
    for (p, g) in params.iter().zip(&grads) {
        p.state.inplace_op3(g, &clip, &Moments { betas: step.betas })?;
        let update = Update { decay: decay(p), inv_root_bc2, eps: step.eps, step_size };
        p.param.inplace_op2(p.state, &update)?;
    }
    Ok(())
}

/// That `p` fits: sizes, dtypes, layouts and device.
fn check(p: &AdamWParam, clip: &Tensor) -> Result<()> {
    let n = p.param.elem_count();
    if p.grad.elem_count() != n || p.state.dims() != [2, n] {
        bail!(
            "{NAME}: parameter {:?}, gradient {:?} and state {:?} (expected [2, {n}]) do not fit",
            p.param.dims(),
            p.grad.dims(),
            p.state.dims()
        );
    }
    if p.grad.dtype() != p.param.dtype() || p.state.dtype() != p.param.dtype() {
        bail!("{NAME}: parameter, gradient and state of different dtypes");
    }
    if !p.param.is_contiguous() || !p.state.is_contiguous() {
        bail!("{NAME}: parameter and state must be contiguous");
    }
    let same = |t: &Tensor| t.device().same_device(clip.device());
    if !(same(p.param) && same(p.grad) && same(p.state)) {
        bail!("{NAME}: parameters, gradients, moments and clipping factor on different devices");
    }
    Ok(())
}

/// `state ← (m·β1 + c·g·(1 − β1), v·β2 + (c·g)²·(1 − β2))`, c the clipping factor.
struct Moments {
    betas: [f64; 2],
}

/// `p ← p·decay − m / (√v · inv_root_bc2 + eps) · step_size`.
struct Update {
    decay: f64,
    inv_root_bc2: f64,
    eps: f64,
    step_size: f64,
}

fn moments_cpu<T: Elem>(betas: [f64; 2], clip: f64, state: &mut [T], g: &[T]) {
    let of = <T::A as Acc>::of;
    let (b1, b2, c1, c2, clip) =
        (of(betas[0]), of(betas[1]), of(1.0 - betas[0]), of(1.0 - betas[1]), of(clip));
    let (m, v) = state.split_at_mut(g.len());
    m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((m, v), g)| {
        for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            let g = g.load() * clip;
            *m = T::store(m.load() * b1 + g * c1);
            *v = T::store(v.load() * b2 + g * g * c2);
        }
    });
}

fn update_cpu<T: Elem>(u: &Update, p: &mut [T], state: &[T]) {
    let of = <T::A as Acc>::of;
    let (decay, inv, eps, step) = (of(u.decay), of(u.inv_root_bc2), of(u.eps), of(u.step_size));
    let (m, v) = state.split_at(p.len());
    p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((p, m), v)| {
        for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
            let denom = v.load().sqrt() * inv + eps;
            *p = T::store(p.load() * decay - m.load() / denom * step);
        }
    });
}

/// A contiguous storage's elements, mutable.
fn slice_mut<'a, T>(data: &'a mut [T], layout: &Layout) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!("{NAME}: output must be contiguous"),
    }
}

/// Calls `$f::<T>($extra.., dst, src)` with `T` the storages' common element type.
macro_rules! dispatch_mut {
    ($f:ident($($extra:expr),*; $dst:ident : $ld:ident, $src:ident : $ls:ident)) => {{
        use candle_core::CpuStorage as C;
        match ($dst, $src) {
            (C::F32(d), C::F32(s)) => $f::<f32>($($extra,)* slice_mut(d, $ld)?, slice(s, $ls, NAME)?),
            (C::F64(d), C::F64(s)) => $f::<f64>($($extra,)* slice_mut(d, $ld)?, slice(s, $ls, NAME)?),
            (C::F16(d), C::F16(s)) => $f::<half::f16>($($extra,)* slice_mut(d, $ld)?, slice(s, $ls, NAME)?),
            (C::BF16(d), C::BF16(s)) => $f::<half::bf16>($($extra,)* slice_mut(d, $ld)?, slice(s, $ls, NAME)?),
            _ => bail!("{NAME}: needs f32, f64, f16 or bf16 tensors of one dtype"),
        }
    }};
}

/// The clipping factor, from a one-element f64 storage.
fn clip_value(s: &CpuStorage, l: &Layout) -> Result<f64> {
    match s {
        CpuStorage::F64(v) => Ok(slice(v, l, NAME)?[0]),
        _ => bail!("{NAME}: the clipping factor must be f64"),
    }
}

impl InplaceOp3 for Moments {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(
        &self,
        state: &mut CpuStorage,
        ls: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        clip: &CpuStorage,
        lc: &Layout,
    ) -> Result<()> {
        let clip = clip_value(clip, lc)?;
        dispatch_mut!(moments_cpu(self.betas, clip; state: ls, g: lg));
        Ok(())
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, state: &CpuStorage, ls: &Layout) -> Result<()> {
        dispatch_mut!(update_cpu(self; p: lp, state: ls));
        Ok(())
    }
}
