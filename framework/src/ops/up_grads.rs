//! A channel mixer's backward from `dm`, the gradient at its output, up to its down-projection,
//! as one op with no graph (LoSA's side network, ops/side.rs, computes its own backward).
//!
//! The mixer's output is `h + a·Wuᵀ + bu` with `a = act(pre + bd)·mask` (rows of
//! `[batch · tokens, ·]`). Its backward needs, from `dm`: the gradient at the pre-activation,
//! `dpre = act'(pre + bd)·mask·(dm·Wu)` (rank-sized), and the biases' gradients `Σ_rows dpre` and
//! `Σ_rows dm`. Composed, that was a GEMM, the mask's product, the activation's gradient and two
//! column sums: five launches, and `dm` (full-size) read twice. Here each row of `dm` is read
//! once: its `rank` dot products with `Wu`'s columns, the activation's gradient and both sums in
//! one pass (on CUDA one launch, the sums finished by its last block in a fixed order). The
//! up-projection's own gradient, `dmᵀ·a`, stays a GEMM. On the CPU the half types take the same
//! pass; f32 and f64 keep the composition, which candle's GEMM makes as fast there.
//!
//! `dm·Wu` is summed in f32 (f64 for f64) and not rounded before the activation's gradient (the
//! composition rounded it to the dtype); `Σ dpre` sums the values before they are rounded to
//! the dtype. The sums are in the accumulation dtype.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, bail};
use rayon::prelude::*;

use candle_core::WithDType;

use super::bias_gelu::{bias_gelu_grads, gelu_grad};
use super::cpu::{Acc, Elem, dot, slice};
use super::sum_along;

const NAME: &str = "channel_up_grads";
/// Rows per rayon task on the CPU, each summed on its own, then the tasks' sums in order.
const CPU_ROWS: usize = 64;

/// What [`channel_up_grads`] returns.
#[derive(Debug)]
pub struct UpGrads {
    /// `[rows, rank]`, of the inputs' dtype.
    pub dpre: Tensor,
    /// `Σ_rows dpre` `[rank]`, if asked for.
    pub down_bias: Option<Tensor>,
    /// `Σ_rows dm` `[width]`, if asked for.
    pub up_bias: Option<Tensor>,
}

/// `dpre = gelu_erf'(pre + down_bias)·mask·(dm·up)` for `dm` `[rows, width]`, `up` `[width,
/// rank]`, `pre` and `mask` `[rows, rank]`, `down_bias` `[rank]`, all of one dtype; with
/// `down_bias_grad` also `Σ_rows dpre`, with `up_bias_grad` `Σ_rows dm` (in f32, f64 for f64).
/// No graph: an input that needs a gradient is an error.
pub fn channel_up_grads(
    dm: &Tensor,
    up: &Tensor,
    pre: &Tensor,
    down_bias: &Tensor,
    mask: Option<&Tensor>,
    down_bias_grad: bool,
    up_bias_grad: bool,
) -> Result<UpGrads> {
    let (rows, width) = dm.dims2()?;
    let rank = down_bias.dim(0)?;
    if down_bias.rank() != 1 || up.dims() != [width, rank] || pre.dims() != [rows, rank] {
        bail!(
            "{NAME}: up {:?}, pre {:?} and down_bias {:?} do not fit dm {:?} (up [{width}, rank], pre [{rows}, rank], down_bias [rank])",
            up.dims(),
            pre.dims(),
            down_bias.dims(),
            dm.dims()
        );
    }
    if let Some(mask) = mask
        && mask.dims() != [rows, rank]
    {
        bail!("{NAME}: mask {:?} must be [{rows}, {rank}], as pre", mask.dims());
    }
    let mut all = vec![dm, up, pre, down_bias];
    all.extend(mask);
    if all.iter().any(|t| t.dtype() != dm.dtype()) {
        bail!("{NAME}: inputs of different dtypes");
    }
    if all.iter().any(|t| t.track_op()) {
        bail!("{NAME}: has no backward, but an input needs a gradient");
    }
    let all: Vec<Tensor> = all.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let (dm, up, pre, bd, mask) = (&all[0], &all[1], &all[2], &all[3], all.get(4));
    let sums = down_bias_grad || up_bias_grad;
    #[cfg(feature = "cuda")]
    if dm.device().is_cuda()
        && let Some((dpre, out)) = super::cuda::channel_up_grads([dm, up, pre, bd], mask, sums, up_bias_grad)?
    {
        let (up_bias, down_bias) = match out {
            Some(out) if up_bias_grad => (Some(out.narrow(0, 0, width)?), Some(out.narrow(0, width, rank)?)),
            Some(out) => (None, Some(out)),
            None => (None, None),
        };
        return Ok(UpGrads { dpre, down_bias: down_bias.filter(|_| down_bias_grad), up_bias });
    }
    // A device or dtype without the kernel (f64 on CUDA, or shapes it does not take); and on the
    // CPU in f32 and f64, where candle's GEMM and the element-wise ops are as fast as this op's
    // one pass or faster (measured at ViT-B and ViT-Ti widths) and round nothing it would not.
    if !dm.device().is_cpu() || matches!(dm.dtype(), DType::F32 | DType::F64) {
        return channel_up_grads_composed(dm, up, pre, bd, mask, down_bias_grad, up_bias_grad);
    }
    let storages: Vec<_> = all.iter().map(Tensor::storage_and_layout).collect();
    let cpu: Vec<(&CpuStorage, &Layout)> = storages
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(s) => Ok((s, *l)),
            _ => bail!("{NAME}: inputs on different devices"),
        })
        .collect::<Result<_>>()?;
    // The half types (the float types composed above): candle's CPU GEMM is slow in them.
    let (dpre, bd_sums, bu_sums) = match dm.dtype() {
        DType::F16 => cpu_grads::<half::f16>(&cpu, [width, rank], sums)?,
        DType::BF16 => cpu_grads::<half::bf16>(&cpu, [width, rank], sums)?,
        other => bail!("{NAME}: no kernel for {other:?}"),
    };
    drop(storages);
    let on_cpu = |s, shape: &[usize]| Tensor::from_storage(Storage::Cpu(s), shape, BackpropOp::none(), false);
    Ok(UpGrads {
        dpre: on_cpu(dpre, &[rows, rank]),
        down_bias: down_bias_grad.then(|| on_cpu(bd_sums, &[rank])),
        up_bias: up_bias_grad.then(|| on_cpu(bu_sums, &[width])),
    })
}

/// [`channel_up_grads`] as it was composed before (and still is where the op has no kernel): a
/// GEMM, the mask's product, the activation's gradient, then a column sum for each bias (`dm·up`
/// rounded to the dtype, and the rounded `dpre` summed). For the `kernels` benchmark, which
/// times the op against it.
pub fn channel_up_grads_composed(
    dm: &Tensor,
    up: &Tensor,
    pre: &Tensor,
    down_bias: &Tensor,
    mask: Option<&Tensor>,
    down_bias_grad: bool,
    up_bias_grad: bool,
) -> Result<UpGrads> {
    let (dpre, down_bias) = bias_gelu_grads(pre, down_bias, &dm.matmul(up)?, mask, 1, down_bias_grad)?;
    let up_bias = up_bias_grad.then(|| sum_along(dm, dm.dim(1)?, 1)).transpose()?;
    Ok(UpGrads { dpre, down_bias, up_bias })
}

/// `(dpre, Σ dpre, Σ dm)` on the CPU from `[dm, up, pre, bd, mask?]`; the sums (empty without
/// `sums`) over runs of [`CPU_ROWS`] rows, then over the runs in order.
fn cpu_grads<T: Elem>(
    inputs: &[(&CpuStorage, &Layout)],
    [width, rank]: [usize; 2],
    sums: bool,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    let get = |i: usize| -> Result<&[T]> {
        let (s, l) = inputs[i];
        slice(s.as_slice::<T>()?, l, NAME)
    };
    let (dm, up, pre, bd) = (get(0)?, get(1)?, get(2)?, get(3)?);
    let mask = if inputs.len() > 4 { Some(get(4)?) } else { None };
    let zero = T::A::ZERO;
    // Wu's columns, each contiguous: [rank, width].
    let mut cols = vec![zero; rank * width];
    for (c, row) in up.chunks(rank).enumerate() {
        for (j, v) in row.iter().enumerate() {
            cols[j * width + c] = v.load();
        }
    }
    let bd: Vec<T::A> = bd.iter().map(|v| v.load()).collect();
    let mut dpre = vec![T::store(zero); pre.len()];
    // Each run's (Σ dpre, Σ dm).
    let parts: Vec<[Vec<T::A>; 2]> = dpre
        .par_chunks_mut(CPU_ROWS * rank)
        .zip(dm.par_chunks(CPU_ROWS * width))
        .enumerate()
        .map(|(run, (dpre, dm))| {
            let (mut bd_sum, mut bu_sum) = (vec![zero; rank], vec![zero; if sums { width } else { 0 }]);
            let mut row = vec![zero; width];
            for (r, (dpre, dm)) in dpre.chunks_mut(rank).zip(dm.chunks(width)).enumerate() {
                for (x, v) in row.iter_mut().zip(dm) {
                    *x = v.load();
                }
                if sums {
                    bu_sum.iter_mut().zip(&row).for_each(|(s, &x)| *s += x);
                }
                let at = (run * CPU_ROWS + r) * rank;
                for (j, out) in dpre.iter_mut().enumerate() {
                    let da = dot(&row, &cols[j * width..][..width]);
                    let mut g = gelu_grad(pre[at + j].load() + bd[j]);
                    if let Some(mask) = mask {
                        g *= mask[at + j].load();
                    }
                    let v = g * da;
                    *out = T::store(v);
                    bd_sum[j] += v;
                }
            }
            [bd_sum, bu_sum]
        })
        .collect();
    let (mut bd_sums, mut bu_sums) = (vec![zero; rank], vec![zero; if sums { width } else { 0 }]);
    for [bd_part, bu_part] in &parts {
        bd_sums.iter_mut().zip(bd_part).for_each(|(s, &p)| *s += p);
        bu_sums.iter_mut().zip(bu_part).for_each(|(s, &p)| *s += p);
    }
    Ok((
        T::to_cpu_storage_owned(dpre),
        T::A::to_cpu_storage_owned(bd_sums),
        T::A::to_cpu_storage_owned(bu_sums),
    ))
}
