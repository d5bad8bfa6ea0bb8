//! `a + m − minus + plus + bias`: a residual addition with its optional terms in one pass (candle:
//! one pass per term, each writing a full tensor). [`residual`] builds no graph: LoSA's
//! side network (`ops::side`) routes its gradient itself, which is also why the kernel is reachable
//! at the storage level ([`residual_storage`]), from inside another op's forward.
//! [`bias_residual`], `x + m + bias`, is differentiable: the ViT block's two residual additions,
//! each with the bias of the linear layer before it.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Elem, slice};
use super::low_rank::{LowRank, Operand, RowsOf};
use crate::recipe::Mixer;

const NAME: &str = "residual";

/// `a + m − minus + plus + bias`, `bias` ([d]) along the last dimension d; `a`, `minus` and
/// `plus` of one shape, `m` a tensor of that shape or a [`LowRank`] product that fits it. Has no
/// backward: an input that needs a gradient is an error, not a silent zero.
pub fn residual<'a>(
    a: &Tensor,
    m: impl Into<Operand<'a>>,
    terms: Terms<'_>,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let m = m.into();
    let inputs = [Some(a), terms.minus, terms.plus, bias].into_iter().flatten().chain(m.tensors());
    if inputs.into_iter().any(Tensor::track_op) {
        bail!("{NAME}: has no backward, but an input needs a gradient");
    }
    let (storage, shape) = residual_storage(a, m, terms, bias)?;
    Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
}

/// The optional full-size terms of a [`residual`]: one subtracted, one added (LoSA's side network
/// swaps one block's features for the next block's so: `z_{i+1} = h + m + bu − b_i + b_{i+1}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Terms<'a> {
    /// Subtracted.
    pub minus: Option<&'a Tensor>,
    /// Added.
    pub plus: Option<&'a Tensor>,
}

/// [`residual`]'s kernel: the output storage and its shape, on the inputs' device.
pub(crate) fn residual_storage(
    a: &Tensor,
    m: Operand<'_>,
    terms: Terms<'_>,
    bias: Option<&Tensor>,
) -> Result<(Storage, Shape)> {
    let Terms { minus, plus } = terms;
    let d = a.dim(D::Minus1)?;
    for t in [minus, plus].into_iter().flatten().chain(match m {
        Operand::Dense(m) => Some(m),
        Operand::LowRank(_) => None,
    }) {
        if t.dims() != a.dims() {
            bail!("{NAME}: shapes {:?} and {:?} differ", a.dims(), t.dims());
        }
    }
    let low_rank = match m {
        Operand::LowRank(lr) => Some((lr, lr.dims(a.dims())?)),
        Operand::Dense(_) => None,
    };
    if let Some(bias) = bias
        && bias.dims() != [d]
    {
        bail!("{NAME}: bias {:?} does not fit the last dimension of {:?}", bias.dims(), a.dims());
    }
    if [minus, plus, bias].into_iter().flatten().chain(m.tensors()).any(|t| t.dtype() != a.dtype()) {
        bail!("{NAME}: inputs of different dtypes");
    }
    // A device whose kernel does not take a low-rank update's shapes gets it written out.
    let dense = match low_rank {
        Some((lr, dims)) if !kernel_takes(a, lr, dims) => Some(lr.materialise()?),
        _ => None,
    };
    // m itself, or the low-rank weight then its activation.
    let (m, act) = match (&dense, m) {
        (Some(m), _) | (None, Operand::Dense(m)) => (m.contiguous()?, None),
        (None, Operand::LowRank(lr)) => (lr.weight.contiguous()?, Some(lr.act.contiguous()?)),
    };
    let contiguous = |t: Option<&Tensor>| t.map(Tensor::contiguous).transpose();
    let a = a.contiguous()?;
    let (minus, plus, bias) = (contiguous(minus)?, contiguous(plus)?, contiguous(bias)?);
    let shape = a.shape().clone();
    let (sa, la) = a.storage_and_layout();
    let (sm, lm) = m.storage_and_layout();
    let [act, minus, plus, bias] =
        [&act, &minus, &plus, &bias].map(|t| t.as_ref().map(Tensor::storage_and_layout));
    let [act, minus, plus, bias] = [&act, &minus, &plus, &bias].map(|t| t.as_ref().map(|(s, l)| (&**s, *l)));
    match (&*sa, &*sm) {
        (Storage::Cpu(sa), Storage::Cpu(sm)) => {
            let extra = |s| super::cpu::extra_input(s, NAME);
            let terms = [extra(minus)?, extra(plus)?, extra(bias)?];
            let m = match (low_rank, extra(act)?) {
                (Some((lr, [_, tokens, _, rank])), Some(act)) => {
                    Addend::LowRank { axis: lr.axis, weight: (sm, lm), act, tokens, rank }
                }
                _ => Addend::Dense((sm, lm)),
            };
            let out = residual_cpu((sa, la), m, terms, d)?;
            Ok((Storage::Cpu(out), shape))
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(sa), Storage::Cuda(sm)) => {
            let extra = |s| super::cuda::extra_input(s, NAME);
            let terms = [extra(minus)?, extra(plus)?, extra(bias)?];
            let out = match (low_rank, extra(act)?) {
                (Some((lr, dims)), Some(act)) => {
                    super::cuda::low_rank_residual((sa, la), lr.axis, (sm, lm), act, dims, terms)?
                }
                _ => super::cuda::residual((sa, la), (sm, lm), terms, d)?,
            };
            Ok((Storage::Cuda(out), shape))
        }
        _ => bail!("{NAME}: no kernel for this device, or inputs on different devices"),
    }
}

/// Whether this device's kernel takes a low-rank update of `dims` (`[batch, tokens, width, rank]`):
/// always on the CPU; on CUDA see `cuda::low_rank_fits`.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn kernel_takes(a: &Tensor, lr: LowRank<'_>, dims: [usize; 4]) -> bool {
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        return super::cuda::low_rank_fits(lr.axis, dims, a.dtype());
    }
    a.device().is_cpu()
}

type In<'a> = (&'a CpuStorage, &'a Layout);

/// The `m` of a CPU residual: a tensor, or a [`LowRank`]'s weight and activation.
enum Addend<'a> {
    Dense(In<'a>),
    LowRank { axis: Mixer, weight: In<'a>, act: In<'a>, tokens: usize, rank: usize },
}

/// The CPU kernel for the inputs' dtype; `terms`: minus, plus and bias, each optional.
fn residual_cpu(a: In, m: Addend, terms: [Option<In>; 3], d: usize) -> Result<CpuStorage> {
    match candle_core::backend::BackendStorage::dtype(a.0) {
        DType::F32 => fwd_cpu::<f32>(a, m, terms, d),
        DType::F64 => fwd_cpu::<f64>(a, m, terms, d),
        DType::F16 => fwd_cpu::<half::f16>(a, m, terms, d),
        DType::BF16 => fwd_cpu::<half::bf16>(a, m, terms, d),
        other => bail!("{NAME}: no kernel for {other:?}"),
    }
}

/// An [`Addend`] as slices of `T`.
enum Rows<'a, T: Elem> {
    Dense(&'a [T]),
    LowRank(RowsOf<'a, T>),
}

fn fwd_cpu<T: Elem>(a: In, m: Addend, [minus, plus, bias]: [Option<In>; 3], d: usize) -> Result<CpuStorage> {
    fn get<'a, T: Elem>((s, l): In<'a>) -> Result<&'a [T]> {
        slice(s.as_slice::<T>()?, l, NAME)
    }
    let a = get::<T>(a)?;
    let [minus, plus, bias] = [minus, plus, bias].map(|t| t.map(get::<T>).transpose());
    let (minus, plus, bias) = (minus?, plus?, bias?);
    let m = match m {
        Addend::Dense(m) => Rows::Dense(get::<T>(m)?),
        Addend::LowRank { axis, weight, act, tokens, rank } => {
            Rows::LowRank(RowsOf::new(axis, get::<T>(weight)?, get::<T>(act)?, tokens, rank))
        }
    };
    let zero = <T::A as super::cpu::Acc>::ZERO;
    let mut out = vec![T::store(zero); a.len()];
    if d > 0 {
        // One row per task, summed in the accumulation type in the kernel's order (a + m, − minus,
        // + plus, + bias) and rounded once; one loop per term, each without a branch inside, so
        // that it vectorises.
        let rows = out.par_chunks_mut(d).enumerate().with_min_len(16);
        rows.for_each_init(
            || vec![zero; d],
            |acc, (r, o)| {
                let range = r * d..(r + 1) * d;
                match &m {
                    Rows::Dense(m) => {
                        let (a, m) = (&a[range.clone()], &m[range.clone()]);
                        acc.iter_mut().zip(a).zip(m).for_each(|((acc, a), m)| *acc = a.load() + m.load());
                    }
                    Rows::LowRank(lr) => lr.add_into(r, &a[range.clone()], acc),
                }
                if let Some(s) = minus {
                    acc.iter_mut().zip(&s[range.clone()]).for_each(|(acc, s)| *acc -= s.load());
                }
                if let Some(p) = plus {
                    acc.iter_mut().zip(&p[range]).for_each(|(acc, p)| *acc += p.load());
                }
                if let Some(b) = bias {
                    acc.iter_mut().zip(b).for_each(|(acc, b)| *acc += b.load());
                }
                o.iter_mut().zip(acc.iter()).for_each(|(o, &acc)| *o = T::store(acc));
            },
        );
    }
    Ok(T::to_cpu_storage_owned(out))
}

/// `x + m + bias`, `bias` ([d]) along the last dimension; differentiable in all three (the
/// gradient of `x` and `m` is the output's, that of `bias` its sum over the rows).
pub fn bias_residual(x: &Tensor, m: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if m.dims() != x.dims() || bias.dims() != [d] {
        bail!("bias_residual: {:?} + {:?} + bias {:?} do not fit", x.dims(), m.dims(), bias.dims());
    }
    x.contiguous()?.apply_op3(&m.contiguous()?, &bias.contiguous()?, BiasResidual { d })
}

struct BiasResidual {
    d: usize,
}

impl CustomOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "losa-bias-residual"
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
        // The residual kernel with a bias and nothing to subtract, as on CUDA.
        let out = residual_cpu((s1, l1), Addend::Dense((s2, l2)), [None, None, Some((s3, l3))], self.d)?;
        Ok((out, l1.shape().clone()))
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
        let out = super::cuda::residual((s1, l1), (s2, l2), [None, None, Some((s3, l3))], self.d)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        m: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dbias = if bias.track_op() {
            Some(super::sum_along(grad, self.d, 1)?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        Ok((x.track_op().then(|| grad.clone()), m.track_op().then(|| grad.clone()), dbias))
    }
}
