//! Column sums of a `[rows, cols]` matrix in the accumulation dtype: the gradient of a bias
//! added to every row; and channel sums of an `[outer, channels, inner]` tensor, the gradient of a
//! bias along a middle dimension (LoSA's token mixer's down-projection bias), in one launch on
//! CUDA where candle's composition widened the tensor and reduced it twice (three launches, two
//! with a copy of their layout). One pass over the matrix (each of up to [`CHUNKS`] chunks of rows summed
//! apart, then the chunks' sums added, in a fixed order: deterministic), where candle's
//! composition widened a half-precision matrix to f32 (a full copy), summed a dimension of one
//! (another), then reduced the rows with each thread block striding down one column.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::cpu::{Acc, Elem, cpu_dispatch, slice};

const NAME: &str = "column_sums";
/// At most this many chunks of rows, each summed on its own.
const CHUNKS: usize = 64;
/// At least this many rows per chunk.
const MIN_ROWS: usize = 64;

/// Σ over the rows of `t` viewed as `[rows, cols]`, in f32 (f64 for f64).
pub(crate) fn column_sums(t: &Tensor, cols: usize) -> Result<Tensor> {
    if cols == 0 || !t.elem_count().is_multiple_of(cols) {
        bail!("{NAME}: {:?} is not a whole number of rows of {cols}", t.dims());
    }
    let rows = t.elem_count() / cols;
    let wide = if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    if rows == 0 {
        return Tensor::zeros(cols, wide, t.device());
    }
    let (chunks, per) = chunking(rows);
    let t = t.contiguous()?.reshape((rows, cols))?;
    t.apply_op1_no_bwd(&ColumnSums { chunks, per })
}

/// Σ over `outer` and `inner` of `t` viewed as `[outer, channels, inner]`, in f32 (f64 for f64).
pub(crate) fn channel_sums(t: &Tensor, channels: usize, inner: usize) -> Result<Tensor> {
    if channels == 0 || inner == 0 || !t.elem_count().is_multiple_of(channels * inner) {
        bail!("{NAME}: {:?} is not a whole number of [{channels}, {inner}] blocks", t.dims());
    }
    let outer = t.elem_count() / (channels * inner);
    let wide = if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    if outer == 0 {
        return Tensor::zeros(channels, wide, t.device());
    }
    let t = t.contiguous()?.reshape((outer, channels, inner))?;
    t.apply_op1_no_bwd(&ChannelSums { per: channel_chunk(outer, channels) })
}

/// The outer rows per chunk of a channel sum over `outer` rows (at least one): enough (channel,
/// chunk) blocks to keep a GPU busy, about 256.
pub(crate) fn channel_chunk(outer: usize, channels: usize) -> usize {
    let chunks = 256usize.div_ceil(channels.max(1)).clamp(1, outer.max(1));
    outer.div_ceil(chunks).max(1)
}

/// The sums `[channels]`: chunk k summing outer rows `k·per ..` of each channel, then the chunks'
/// sums added in order (on CUDA in the same launch).
struct ChannelSums {
    per: usize,
}

fn channel_sums_cpu<T: Elem>(s: &ChannelSums, (x, l): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    let x = slice(x, l, NAME)?;
    let &[_, channels, inner] = l.dims() else { bail!("{NAME}: channel sums need [outer, channels, inner]") };
    let parts: Vec<Vec<T::A>> = x
        .par_chunks(s.per * channels * inner)
        .map(|rows| {
            let mut acc = vec![<T::A as Acc>::ZERO; channels];
            for row in rows.chunks(inner).enumerate() {
                let (i, row) = row;
                acc[i % channels] += row.iter().fold(<T::A as Acc>::ZERO, |a, v| a + v.load());
            }
            acc
        })
        .collect();
    let sums = add_in_order(parts.iter().map(Vec::as_slice), channels);
    Ok((WithDType::to_cpu_storage_owned(sums), Shape::from(channels)))
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(NAME, channel_sums_cpu(self; s: l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::channel_sums((s, l), self.per)
    }
}

/// The chunks' partial sums (each `n` long) added element by element, chunk after chunk: the
/// order the CUDA kernels' last block adds them in.
fn add_in_order<'a, A: Acc + 'a>(parts: impl Iterator<Item = &'a [A]>, n: usize) -> Vec<A> {
    let mut sums = vec![A::ZERO; n];
    for part in parts {
        sums.iter_mut().zip(part).for_each(|(s, p)| *s += *p);
    }
    sums
}

/// `(chunks, rows per chunk)` for `rows` rows.
fn chunking(rows: usize) -> (usize, usize) {
    let chunks = rows.div_ceil(MIN_ROWS).clamp(1, CHUNKS);
    let per = rows.div_ceil(chunks);
    (rows.div_ceil(per), per)
}

/// The sums `[cols]`: chunk k summing rows `k·per ..`, then the chunks' sums added in order (on
/// CUDA in the same launch, kernels.cu's `finish_partials`).
struct ColumnSums {
    chunks: usize,
    per: usize,
}

fn sums_cpu<T: Elem>(s: &ColumnSums, (x, l): (&[T], &Layout)) -> Result<(CpuStorage, Shape)> {
    let x = slice(x, l, NAME)?;
    let cols = l.dims()[1];
    let mut out = vec![<T::A as Acc>::ZERO; s.chunks * cols];
    out.par_chunks_mut(cols).zip(x.par_chunks(s.per * cols)).for_each(|(acc, rows)| {
        for row in rows.chunks(cols) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v.load());
        }
    });
    let sums = add_in_order(out.chunks(cols), cols);
    Ok((WithDType::to_cpu_storage_owned(sums), Shape::from(cols)))
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_dispatch!(NAME, sums_cpu(self; s: l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::column_sums((s, l), self.chunks, self.per)
    }
}
