//! `a + m − minus + bias`: a residual addition with its optional bias and subtraction in one pass
//! (candle: one pass per term, each writing a full tensor). [`residual`] builds no graph: LoSA's
//! side network (`ops::side`) routes its gradient itself, which is also why the kernel is reachable
//! at the storage level ([`residual_storage`]), from inside another op's forward.
//! [`bias_residual`], `x + m + bias`, is differentiable: the ViT block's two residual additions,
//! each with the bias of the linear layer before it.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{Elem, slice};

const NAME: &str = "residual";

/// `a + m − minus + bias`, `bias` ([d]) along the last dimension d; `a`, `m` and `minus` of one
/// shape. Has no backward: an input that needs a gradient is an error, not a silent zero.
pub fn residual(a: &Tensor, m: &Tensor, minus: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    if [Some(a), Some(m), minus, bias].into_iter().flatten().any(Tensor::track_op) {
        bail!("{NAME}: has no backward, but an input needs a gradient");
    }
    let (storage, shape) = residual_storage(a, m, minus, bias)?;
    Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
}

/// [`residual`]'s kernel: the output storage and its shape, on the inputs' device.
pub(crate) fn residual_storage(
    a: &Tensor,
    m: &Tensor,
    minus: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<(Storage, Shape)> {
    let d = a.dim(D::Minus1)?;
    for t in [Some(m), minus].into_iter().flatten() {
        if t.dims() != a.dims() {
            bail!("{NAME}: shapes {:?} and {:?} differ", a.dims(), t.dims());
        }
    }
    if let Some(bias) = bias
        && bias.dims() != [d]
    {
        bail!("{NAME}: bias {:?} does not fit the last dimension of {:?}", bias.dims(), a.dims());
    }
    if [Some(m), minus, bias].into_iter().flatten().any(|t| t.dtype() != a.dtype()) {
        bail!("{NAME}: inputs of different dtypes");
    }
    let contiguous = |t: Option<&Tensor>| t.map(Tensor::contiguous).transpose();
    let (a, m, minus, bias) = (a.contiguous()?, m.contiguous()?, contiguous(minus)?, contiguous(bias)?);
    let shape = a.shape().clone();
    let (sa, la) = a.storage_and_layout();
    let (sm, lm) = m.storage_and_layout();
    let minus = minus.as_ref().map(Tensor::storage_and_layout);
    let bias = bias.as_ref().map(Tensor::storage_and_layout);
    let minus = minus.as_ref().map(|(s, l)| (&**s, *l));
    let bias = bias.as_ref().map(|(s, l)| (&**s, *l));
    match (&*sa, &*sm) {
        (Storage::Cpu(sa), Storage::Cpu(sm)) => {
            let extra = |s| super::cpu::extra_input(s, NAME);
            let out = residual_cpu(((sa, la), (sm, lm), extra(minus)?, extra(bias)?), d)?;
            Ok((Storage::Cpu(out), shape))
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(sa), Storage::Cuda(sm)) => {
            let extra = |s| super::cuda::extra_input(s, NAME);
            let out = super::cuda::residual((sa, la), (sm, lm), extra(minus)?, extra(bias)?, d)?;
            Ok((Storage::Cuda(out), shape))
        }
        _ => bail!("{NAME}: no kernel for this device, or inputs on different devices"),
    }
}

type In<'a> = (&'a CpuStorage, &'a Layout);

/// The CPU kernel for the inputs' dtype.
fn residual_cpu(inputs: (In, In, Option<In>, Option<In>), d: usize) -> Result<CpuStorage> {
    match candle_core::backend::BackendStorage::dtype(inputs.0.0) {
        DType::F32 => fwd_cpu::<f32>(inputs, d),
        DType::F64 => fwd_cpu::<f64>(inputs, d),
        DType::F16 => fwd_cpu::<half::f16>(inputs, d),
        DType::BF16 => fwd_cpu::<half::bf16>(inputs, d),
        other => bail!("{NAME}: no kernel for {other:?}"),
    }
}

fn fwd_cpu<T: Elem>((a, m, minus, bias): (In, In, Option<In>, Option<In>), d: usize) -> Result<CpuStorage> {
    fn get<'a, T: Elem>((s, l): In<'a>) -> Result<&'a [T]> {
        slice(s.as_slice::<T>()?, l, NAME)
    }
    let (a, m) = (get::<T>(a)?, get::<T>(m)?);
    let minus = minus.map(get::<T>).transpose()?;
    let bias = bias.map(get::<T>).transpose()?;
    let mut out = vec![T::store(<T::A as super::cpu::Acc>::ZERO); a.len()];
    if d > 0 {
        // One row per task; each variant's loop has no branch inside, so it vectorises.
        out.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(r, o)| {
            let range = r * d..(r + 1) * d;
            let (a, m) = (&a[range.clone()], &m[range.clone()]);
            match (minus.map(|s| &s[range]), bias) {
                (None, None) => o.iter_mut().zip(a.iter().zip(m)).for_each(|(o, (a, m))| {
                    *o = T::store(a.load() + m.load());
                }),
                (None, Some(b)) => o.iter_mut().zip(a.iter().zip(m).zip(b)).for_each(|(o, ((a, m), b))| {
                    *o = T::store(a.load() + m.load() + b.load());
                }),
                (Some(s), None) => o.iter_mut().zip(a.iter().zip(m).zip(s)).for_each(|(o, ((a, m), s))| {
                    *o = T::store(a.load() + m.load() - s.load());
                }),
                (Some(s), Some(b)) => {
                    o.iter_mut().zip(a.iter().zip(m).zip(s).zip(b)).for_each(|(o, (((a, m), s), b))| {
                        *o = T::store(a.load() + m.load() - s.load() + b.load());
                    })
                }
            }
        });
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
        let out = residual_cpu(((s1, l1), (s2, l2), None, Some((s3, l3))), self.d)?;
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
        let out = super::cuda::residual((s1, l1), (s2, l2), None, Some((s3, l3)), self.d)?;
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
