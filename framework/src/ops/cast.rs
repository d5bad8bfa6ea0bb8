//! Many small tensors cast to one dtype at once.
//!
//! A LoSA side block casts its eleven f32 parameters to the block's bf16 for the forward, and
//! its weights' bf16 gradients back to f32 for the optimiser: as candle casts, one kernel launch
//! and one allocation each, some 180 launches per step that each move a few kilobytes. On CUDA
//! here one launch (per 48 tensors) casts them all into one new buffer, and each result is a view
//! of its part of it (each part starting on a 16-byte boundary, as a fresh tensor does, for the
//! kernels' vector paths). Elsewhere, and for a pair of dtypes without a kernel, each tensor is cast
//! by candle, which gives the same values (one rounding to nearest even).

use candle_core::{DType, Result, Tensor};

/// `tensors`, detached and cast to `dtype` (those already in it unchanged, not copied). On CUDA,
/// the contiguous ones of one source dtype share one buffer, so an in-place update of a result
/// must not follow.
pub fn cast_all(tensors: &[Tensor], dtype: DType) -> Result<Vec<Tensor>> {
    let out: Vec<Option<Tensor>> = tensors.iter().map(|t| (t.dtype() == dtype).then(|| t.detach())).collect();
    #[cfg(feature = "cuda")]
    let out = cuda_casts(tensors, dtype, out)?;
    tensors.iter().zip(out).map(|(t, done)| done.map_or_else(|| t.detach().to_dtype(dtype), Ok)).collect()
}

/// `out` with the tensors the multi-tensor kernels cast: contiguous, non-empty, on a
/// CUDA device, from and to a pair of dtypes with a kernel; grouped by device and source dtype.
#[cfg(feature = "cuda")]
fn cuda_casts(tensors: &[Tensor], dtype: DType, mut out: Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> {
    use candle_core::{Storage, op::BackpropOp};
    let eligible = |t: &Tensor| {
        t.device().is_cuda()
            && t.is_contiguous()
            && t.elem_count() > 0
            && super::cuda::casts(t.dtype(), dtype)
    };
    let mut todo: Vec<usize> =
        (0..tensors.len()).filter(|&i| out[i].is_none() && eligible(&tensors[i])).collect();
    while let Some(&first) = todo.first() {
        let lead = &tensors[first];
        let (group, rest): (Vec<usize>, Vec<usize>) = todo.iter().partition(|&&i| {
            tensors[i].dtype() == lead.dtype() && tensors[i].device().same_device(lead.device())
        });
        todo = rest;
        let members: Vec<&Tensor> = group.iter().map(|&i| &tensors[i]).collect();
        let (storage, starts) = super::cuda::cast_many(lead.device().as_cuda_device()?, &members, dtype)?;
        let total = starts.last().zip(members.last()).map_or(0, |(s, t)| s + t.elem_count());
        let flat = Tensor::from_storage(Storage::Cuda(storage), total, BackpropOp::none(), false);
        for ((&i, t), start) in group.iter().zip(members).zip(starts) {
            out[i] = Some(flat.narrow(0, start, t.elem_count())?.reshape(t.shape())?);
        }
    }
    Ok(out)
}
