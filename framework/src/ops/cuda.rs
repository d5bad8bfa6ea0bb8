//! Launches the kernels of kernels.cu (PTX built by build.rs, loaded once per device into the
//! module `losa_ops` through candle's custom-module cache, as candle-nn loads its own kernels).
//! The only module of the crate with `unsafe`: allocating uninitialised device memory and
//! launching a kernel are unsafe in cudarc.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Result, Shape, WithDType, bail, builder_arg};

use super::fast_div::FastDiv;
use crate::recipe::Mixer;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/losa_ops.ptx"));
const MODULE: &str = "losa_ops";
/// Threads per block (a multiple of 32, as `block_sum` needs).
const BLOCK: usize = 256;
/// Rows per block of the LayerNorm scale and shift gradients (at least): each block reduces its
/// rows one after another, so few rows per block keep enough blocks in flight to hide the
/// reductions' latency (256 blocks of 50 rows at ViT-B/16's batch of 64, as before, would leave an
/// H200's 132 SMs mostly waiting; counted, not yet measured).
const PARAM_ROWS: usize = 16;
/// At most this many such blocks: their partial sums, `[blocks, 2, d]` in f32, are summed after.
const PARAM_CHUNKS: usize = 4096;

// SAFETY: FastDiv is `#[repr(C)]`, three u32 (kernels.cu's `struct FastDiv`), valid for any bits.
unsafe impl DeviceRepr for FastDiv {}

/// Readies a CUDA device that was just opened for this crate's use of it: one candle device per
/// process, driven from one host thread (candle launches on the calling thread's default stream;
/// the runner's other threads only decode images), so one stream orders every use of a buffer.
/// Two defaults cost time on every op there (PyTorch avoids both):
/// - cudarc tracks each buffer's uses with two CUDA events (created at each allocation, recorded
///   and waited on at each launch) so that several streams can share buffers. On one stream,
///   which already orders every use, they are pure host overhead.
/// - CUDA's stream-ordered pool hands every free byte back to the driver at each synchronisation
///   (release threshold 0): a training step that synchronises once (to read its loss, or to be
///   timed) then maps its whole working set again, every step. The pool now keeps what it has,
///   as PyTorch's caching allocator does, and still serves every allocation of the process.
pub(crate) fn prepare(dev: &candle_core::cuda_backend::CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    // SAFETY: all work on the device comes from one host thread and so runs on one stream: no
    // buffer is ever used by two streams, the case the events exist for; `DeviceSpec::open` opens
    // one device per process.
    unsafe { dev.disable_event_tracking() };
    let mut keep = u64::MAX;
    // SAFETY: the CUdevice comes from the device's live context; the release threshold is a u64.
    unsafe {
        let pool = result::device::get_default_mem_pool(dev.cuda_stream().context().cu_device()).w()?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .w()?;
    }
    Ok(())
}

/// An input: storage and layout.
type In<'a> = (&'a CudaStorage, &'a Layout);

/// The CUDA storage of an optional input that an op reads besides its operands (a captured
/// tensor, or a flagged extra); an error if it lives on another device.
pub(crate) fn extra_input<'a>(
    input: Option<(&'a candle_core::Storage, &'a Layout)>,
    op: &str,
) -> Result<Option<In<'a>>> {
    match input {
        None => Ok(None),
        Some((candle_core::Storage::Cuda(s), l)) => Ok(Some((s, l))),
        Some(_) => bail!("{op}: inputs on different devices"),
    }
}

/// An element type with kernels, and the type its kernels accumulate in.
trait Kern: CudaDType + DeviceRepr + WithDType {
    type A: CudaDType + DeviceRepr + WithDType;
}
impl Kern for f32 {
    type A = f32;
}
impl Kern for f64 {
    type A = f64;
}
impl Kern for half::f16 {
    type A = f32;
}
impl Kern for half::bf16 {
    type A = f32;
}

macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            other => bail!("losa ops: no CUDA kernel for {other:?}"),
        }
    };
}

/// `by_dtype!` for the kernels that exist for f32, f16 and bf16 only (the LayerNorm's vector path),
/// naming `op` in the error for any other dtype.
macro_rules! by_vector_dtype {
    ($dtype:expr, $op:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            other => bail!("{}: no CUDA kernel for {other:?}", $op),
        }
    };
}

/// The contiguous elements of an input (the ops' wrappers make inputs contiguous).
fn view<'a, T: CudaDType + DeviceRepr>((s, l): In<'a>) -> Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("losa ops: CUDA input must be contiguous"),
    }
}

/// Fills `out` with NaN when `ops::poison_outputs` is on (before a kernel that must overwrite it).
fn poison<T: DeviceRepr>(dev: &candle_core::cuda_backend::CudaDevice, out: &CudaSlice<T>) -> Result<()> {
    if !super::poisoning() || out.is_empty() {
        return Ok(());
    }
    let bytes = out.len() * std::mem::size_of::<T>();
    let func = dev.get_or_load_custom_func("poison_bytes", MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(out);
    builder_arg!(args, bytes as u64);
    // SAFETY: the arguments match `poison_bytes(unsigned char*, uint64_t)`; out holds `bytes` bytes.
    unsafe { args.launch(flat_config(bytes)) }.w()?;
    Ok(())
}

fn kernel<T: Kern>(name: &str) -> String {
    format!("{name}_{}", T::DTYPE.as_str())
}

/// Bytes a thread moves per load or store on the element-wise kernels' vector path (kernels.cu's
/// `VEC_BYTES`).
const VEC_BYTES: usize = 16;

/// Grid-stride loop over `n` elements in vectors of `VEC_BYTES`: a thread per vector; the kernels'
/// element-wise fallback strides over the same grid.
fn vec_config<T>(n: usize) -> LaunchConfig {
    flat_config(n.div_ceil(VEC_BYTES / std::mem::size_of::<T>()))
}

/// Grid-stride loop over `n` elements.
fn flat_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK as u32, 1, 1), shared_mem_bytes: 0 }
}

pub(crate) fn layer_norm_fwd(x: In, w: In, b: In, eps: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), ln_fwd(x, w, b, eps))
}

fn ln_fwd<T: Kern>(x: In, w: In, b: In, eps: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let (shape, d) = (x.1.shape().clone(), w.1.shape().elem_count());
    let (xv, wv, bv) = (view::<T>(x)?, view::<T>(w)?, view::<T>(b)?);
    let el = shape.elem_count();
    // SAFETY: uninitialised until the kernel below writes it; it writes every element (warp r
    // writes all d elements of row r, and all el / d rows get a warp).
    let y = unsafe { dev.alloc::<T>(el)? };
    poison(dev, &y)?;
    if el > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_fwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&xv);
        args.arg(&wv);
        args.arg(&bv);
        args.arg(&y);
        let rows = el / d;
        let config = warp_rows_config(rows)?;
        builder_arg!(args, rows as i32, d as i32, eps);
        // SAFETY: the arguments match `layer_norm_fwd_<dtype>(const T*, const T*, const T*, T*,
        // int, int, double)` in kernels.cu; x and y hold rows·d elements, w and b d.
        unsafe { args.launch(config) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
}

/// The LayerNorm's input gradient, plus `add` (shaped like `x`) if given.
pub(crate) fn layer_norm_bwd_x(
    x: In,
    w: In,
    g: In,
    add: Option<In>,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), ln_bwd_x(x, w, g, add, eps))
}

fn ln_bwd_x<T: Kern>(x: In, w: In, g: In, add: Option<In>, eps: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let (shape, d) = (x.1.shape().clone(), w.1.shape().elem_count());
    let (xv, wv, gv) = (view::<T>(x)?, view::<T>(w)?, view::<T>(g)?);
    // Absent when nothing is added (its flag is 0, never read): `g` in its place.
    let av = add.map(view::<T>).transpose()?;
    let el = shape.elem_count();
    // SAFETY: written in full by the kernel below, as in `ln_fwd`.
    let dx = unsafe { dev.alloc::<T>(el)? };
    poison(dev, &dx)?;
    if el > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_bwd_x"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&xv);
        args.arg(&wv);
        args.arg(&gv);
        args.arg(av.as_ref().unwrap_or(&gv));
        args.arg(&dx);
        let rows = el / d;
        let config = warp_rows_config(rows)?;
        builder_arg!(args, rows as i32, d as i32, eps, add.is_some() as i32);
        // SAFETY: the arguments match `layer_norm_bwd_x_<dtype>(const T*, const T*, const T*,
        // const T*, T*, int, int, double, int)`; x, g, add (read only when flagged) and dx hold
        // rows·d elements, w d.
        unsafe { args.launch(config) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(dx, dev.clone()), shape))
}

/// kernels.cu's `LN_LANE_ELEMS`: the LayerNorm vector path holds at most this many elements of
/// a row per lane.
const LN_LANE_ELEMS: usize = 40;

/// The device's multiprocessors (read once: one device per process).
fn multiprocessors(dev: &candle_core::cuda_backend::CudaDevice) -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&n) = COUNT.get() {
        return Ok(n);
    }
    let attribute = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    let n = dev.cuda_stream().context().attribute(attribute).w()?.max(1) as usize;
    Ok(*COUNT.get_or_init(|| n))
}

/// The zeroed u32 that the one-launch sums count their finished blocks in (kernels.cu's
/// `finish_partials`, which leaves it zeroed again): see [`block_counters`].
fn block_counter(dev: &candle_core::cuda_backend::CudaDevice) -> Result<u64> {
    block_counters(dev, 1)
}

/// At least `n` zeroed u32 that one-launch sums count their finished blocks in, one per sum
/// (each launch leaves the counters it used zeroed again): one buffer per device and host thread
/// (candle launches on the calling thread's stream, and one buffer must serve one stream, whose
/// launches come one after another), made on first use on that stream, grown (zeroed afresh) when
/// a launch needs more, and kept for the process. The device pointer of the first.
fn block_counters(dev: &candle_core::cuda_backend::CudaDevice, n: usize) -> Result<u64> {
    use candle_core::cuda_backend::DeviceId;
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    type Counters = Vec<((DeviceId, std::thread::ThreadId), CudaSlice<u32>)>;
    static COUNTERS: std::sync::Mutex<Counters> = std::sync::Mutex::new(Vec::new());
    let key = (dev.id(), std::thread::current().id());
    let mut counters =
        COUNTERS.lock().map_err(|_| candle_core::Error::Msg("losa ops: counters poisoned".into()))?;
    let at = match counters.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            counters.push((key, dev.alloc_zeros::<u32>(n.max(1))?));
            counters.len() - 1
        }
    };
    if counters[at].1.len() < n {
        // The old buffer is freed in stream order, after the launches that use it.
        counters[at].1 = dev.alloc_zeros::<u32>(n)?;
    }
    let stream = dev.cuda_stream();
    let (ptr, _) = counters[at].1.device_ptr(&stream);
    Ok(ptr)
}

/// The LayerNorm's input gradient (plus `add`) and its scale and shift gradients (`[2, d]` in
/// the accumulation type), in one launch (kernels.cu's `layer_norm_bwd`), when the rows take
/// the vector path: f32, f16 or bf16, a width of whole vectors up to 32 × `LN_LANE_ELEMS`,
/// contiguous inputs on one device and on 16-byte boundaries. `None` otherwise. The sums' order
/// depends on the card's multiprocessor count: the same on one kind of card, run after run.
pub(crate) fn layer_norm_grads(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    g: super::Operand<'_>,
    add: Option<&candle_core::Tensor>,
    eps: f64,
) -> Result<Option<(candle_core::Tensor, candle_core::Tensor)>> {
    match x.dtype() {
        DType::F32 => ln_grads::<f32>(x, w, g, add, eps),
        DType::F16 => ln_grads::<half::f16>(x, w, g, add, eps),
        DType::BF16 => ln_grads::<half::bf16>(x, w, g, add, eps),
        _ => Ok(None),
    }
}

fn ln_grads<T: Kern>(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    g: super::Operand<'_>,
    add: Option<&candle_core::Tensor>,
    eps: f64,
) -> Result<Option<(candle_core::Tensor, candle_core::Tensor)>> {
    const OP: &str = "layer_norm backward";
    let (d, el) = (w.elem_count(), x.elem_count());
    if d == 0 || el == 0 || padded::<T>(d) != d || d > 32 * LN_LANE_ELEMS {
        return Ok(None);
    }
    // A low-rank g is read through its description (checked by `low_rank_args`); a dense one is
    // the kernel's `g`.
    let (g, lr) = match g {
        super::Operand::Dense(g) => (g, None),
        super::Operand::LowRank(lr) => match low_rank_args::<T>(lr, x.dims())? {
            Some(args) => (x, Some(args)),
            None => return Ok(None),
        },
    };
    let mut tensors = vec![x, w, g];
    tensors.extend(add);
    let fits = |t: &&candle_core::Tensor| {
        t.is_contiguous() && t.dtype() == T::DTYPE && t.device().same_device(x.device())
    };
    if !tensors.iter().all(fits) {
        return Ok(None);
    }
    let ptrs: Vec<u64> = tensors.iter().map(|t| raw::<T>(t, OP).map(|(p, _)| p)).collect::<Result<_>>()?;
    if ptrs.iter().any(|p| !p.is_multiple_of(VEC_BYTES as u64)) {
        return Ok(None);
    }
    let dev = x.device().as_cuda_device()?;
    let rows = el / d;
    let blocks = rows.div_ceil(BLOCK / 32).min(multiprocessors(dev)?);
    if rows + blocks * BLOCK / 32 > i32::MAX as usize {
        bail!("{OP}: {rows} rows is too many for one launch");
    }
    let shared = 2 * d * std::mem::size_of::<T::A>();
    // SAFETY: the kernel writes every element of dx (each row gets a warp of the grid-stride
    // loop, and a row's lanes write all its vectors), all 2·d elements of every block's partial,
    // and (its last block) all 2·d sums.
    let (dx, partial, sums) =
        unsafe { (dev.alloc::<T>(el)?, dev.alloc::<T::A>(blocks * 2 * d)?, dev.alloc::<T::A>(2 * d)?) };
    poison(dev, &dx)?;
    poison(dev, &sums)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_bwd"), MODULE, PTX)?;
    let mut args = func.builder();
    // Absent when nothing is added (its flag is 0, never read): `g` in its place.
    builder_arg!(args, ptrs[0], ptrs[1], ptrs[2], *ptrs.get(3).unwrap_or(&ptrs[2]));
    args.arg(&dx);
    args.arg(&partial);
    args.arg(&sums);
    let counter = block_counter(dev)?;
    builder_arg!(args, rows as i32, d as i32, eps, add.is_some() as i32, counter);
    // Without a low-rank g, a description that is never read (its flag is 0).
    let lr_args = match lr {
        Some(args) => args,
        None => LowRankArgs::unused()?,
    };
    args.arg(&lr_args);
    builder_arg!(args, lr.is_some() as i32);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: the arguments match `layer_norm_bwd_<dtype>(const T*, const T*, const T*, const T*,
    // T*, A*, A*, int, int, double, int, unsigned int*, LowRankOf<T>, int)`; x, g (read only
    // without a low-rank g), add (read only when flagged) and dx hold rows·d elements, w d,
    // partial blocks·2·d, sums 2·d, the counter one zeroed u32, the low-rank description (read
    // only when flagged) addresses its tensors within their elements (`low_rank_args`), and the
    // dynamic shared memory holds 2·d accumulators (at most 10 KB: d ≤ 1280).
    unsafe { args.launch(config) }.w()?;
    Ok(Some((tensor(dx, dev, x.shape().clone()), tensor(sums, dev, (2, d)))))
}

/// A kernel's output as a tensor with no graph.
fn tensor<T: CudaDType + DeviceRepr>(
    out: CudaSlice<T>,
    dev: &candle_core::cuda_backend::CudaDevice,
    shape: impl Into<Shape>,
) -> candle_core::Tensor {
    let storage = candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    candle_core::Tensor::from_storage(storage, shape, candle_core::op::BackpropOp::none(), false)
}

/// Threads per block of `channel_up_grads` at most (kernels.cu's `UP_THREADS`), ranks per block
/// (`UP_RANKS`).
const UP_THREADS: usize = 384;
const UP_RANKS: usize = 8;

/// A channel mixer's backward from `dm` up to its down-projection (ops/up_grads.rs), in one
/// launch (kernels.cu's `channel_up_grads`): `dpre` and, with `sums`, `[Σ dm (with up_bias) ;
/// Σ dpre]` in f32. `None` where the kernel does not take the tensors: f32, f16 or bf16, all
/// contiguous on one device, dm on a 16-byte boundary with rows of whole vectors, a row's
/// vectors at most `UP_THREADS`. Like the LayerNorm's, the sums' order depends on the card's
/// multiprocessor count.
pub(crate) fn channel_up_grads(
    [dm, up, pre, bd]: [&candle_core::Tensor; 4],
    mask: Option<&candle_core::Tensor>,
    sums: bool,
    up_bias: bool,
) -> Result<Option<(candle_core::Tensor, Option<candle_core::Tensor>)>> {
    match dm.dtype() {
        DType::F32 => up_grads::<f32>([dm, up, pre, bd], mask, sums, up_bias),
        DType::F16 => up_grads::<half::f16>([dm, up, pre, bd], mask, sums, up_bias),
        DType::BF16 => up_grads::<half::bf16>([dm, up, pre, bd], mask, sums, up_bias),
        _ => Ok(None),
    }
}

fn up_grads<T: Kern>(
    [dm, up, pre, bd]: [&candle_core::Tensor; 4],
    mask: Option<&candle_core::Tensor>,
    sums: bool,
    up_bias: bool,
) -> Result<Option<(candle_core::Tensor, Option<candle_core::Tensor>)>> {
    use candle_core::Tensor;
    const OP: &str = "channel_up_grads";
    let (rows, width) = dm.dims2()?;
    let rank = bd.elem_count();
    let vectors = width / (VEC_BYTES / std::mem::size_of::<T>());
    if rows == 0 || rank == 0 || padded::<T>(width) != width || vectors == 0 || vectors > UP_THREADS {
        return Ok(None);
    }
    let mut tensors = vec![dm, up, pre, bd];
    tensors.extend(mask);
    let fits =
        |t: &&Tensor| t.is_contiguous() && t.dtype() == T::DTYPE && t.device().same_device(dm.device());
    if !tensors.iter().all(fits) {
        return Ok(None);
    }
    let ptrs: Vec<u64> = tensors.iter().map(|t| raw::<T>(t, OP).map(|(p, _)| p)).collect::<Result<_>>()?;
    if !ptrs[0].is_multiple_of(VEC_BYTES as u64) {
        return Ok(None);
    }
    // The kernel's row indices (and one step of rows past the last) fit an int.
    let ints = [rows + UP_THREADS, width, rank].map(i32::try_from);
    let [Ok(_), Ok(width_i), Ok(rank_i)] = ints else {
        return Ok(None);
    };
    let rows_i = rows as i32;
    let dev = dm.device().as_cuda_device()?;
    // A warp's worth of lanes per row, and as many groups of rows in flight as fit UP_THREADS.
    let lanes = vectors.next_multiple_of(32);
    let groups = (UP_THREADS / lanes).max(1);
    let chunks = rank.div_ceil(UP_RANKS);
    // One block per multiprocessor and chunk of ranks, each a run of rows (the partials, one
    // [width + rank] row per block, are summed by the last block, so not many more).
    let per = rows.div_ceil(multiprocessors(dev)?).max(1);
    let blocks = rows.div_ceil(per);
    let n = if up_bias { width + rank } else { rank };
    let shared = (2 * groups * lanes + groups * 32 + width) * std::mem::size_of::<f32>();
    // SAFETY: the kernel writes every element of dpre (each row's `rank` values by warp 0 of the
    // group that takes the row, in the block whose chunk of ranks holds them), with sums every
    // element of each block's partial row (Σ dm by chunk 0, Σ dpre by each chunk for its ranks)
    // and, its last block, all n sums.
    let (dpre, partial, out) = unsafe {
        (
            dev.alloc::<T>(rows * rank)?,
            dev.alloc::<f32>(if sums { blocks * n } else { 1 })?,
            dev.alloc::<f32>(n)?,
        )
    };
    poison(dev, &dpre)?;
    poison(dev, &out)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>(OP), MODULE, PTX)?;
    let mut args = func.builder();
    // Without a mask (its flag is 0, never read): pre in its place.
    builder_arg!(args, ptrs[0], ptrs[1], ptrs[2], ptrs[3], *ptrs.get(4).unwrap_or(&ptrs[2]));
    args.arg(&dpre);
    args.arg(&partial);
    args.arg(&out);
    let counter = block_counter(dev)?;
    builder_arg!(
        args,
        rows_i,
        width_i,
        rank_i,
        per as i32,
        mask.is_some() as i32,
        sums as i32,
        up_bias as i32,
        counter
    );
    let config = LaunchConfig {
        grid_dim: (blocks as u32, chunks as u32, 1),
        block_dim: (lanes as u32, groups as u32, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: the arguments match `channel_up_grads_<dtype>(const T*, const T*, const T*, const
    // T*, const T*, T*, float*, float*, int, int, int, int, int, int, int, unsigned int*)`; dm
    // holds rows·width elements, up width·rank, pre, mask (read only when flagged) and dpre
    // rows·rank, bd rank, partial blocks·n (read and written only with sums), out n, the counter
    // one zeroed u32; the block has at most UP_THREADS threads (the kernel's launch bound), and
    // the dynamic shared memory holds its 2·groups·lanes + 32·groups + width floats (at most
    // 2·384 + 32·12 + 3072: 17 KB).
    unsafe { args.launch(config) }.w()?;
    Ok(Some((tensor(dpre, dev, (rows, rank)), sums.then(|| tensor(out, dev, n)))))
}

/// kernels.cu's `LowRankOf<T>`: a low-rank operand for a kernel to compute where it reads it,
/// element (b, t, j) = Σ_r p[b·pb + t·pt + r·pr] · q[b·qb + r·qr + j].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LowRankArgs {
    p: u64,
    q: u64,
    pb: u32,
    pt: u32,
    pr: u32,
    qb: u32,
    qr: u32,
    rank: i32,
    tokens: FastDiv,
}

// SAFETY: `#[repr(C)]`: two device pointers, five u32, an i32 and a FastDiv, as kernels.cu's
// `LowRankOf<T>` (whose pointers are 8 bytes); valid for any bits.
unsafe impl DeviceRepr for LowRankArgs {}

impl LowRankArgs {
    /// A description for a kernel whose flag says there is none: never read.
    fn unused() -> Result<Self> {
        let tokens = FastDiv::new(1)?;
        Ok(Self { p: 0, q: 0, pb: 0, pt: 0, pr: 0, qb: 0, qr: 0, rank: 0, tokens })
    }
}

/// The description of `lr` for a kernel that reads it in whole vectors along the width (the
/// LayerNorm backward's vector path), if its layout allows: an activation of `T`, contiguous and
/// 16-byte aligned, a weight contiguous or the transpose of a contiguous one, and (channel) the
/// weight's rows along the width contiguous and 16-byte aligned: the mixer's `Wdᵀ`, as
/// ops/side.rs passes it. None otherwise (the caller writes the operand out). `out`: the shape
/// of the operand, `[batch, tokens, width]`.
fn low_rank_args<T: Kern>(lr: super::LowRank<'_>, out: &[usize]) -> Result<Option<LowRankArgs>> {
    const OP: &str = "low-rank operand";
    let [_, tokens, d, rank] = lr.dims(out)?;
    let fits = |t: &candle_core::Tensor| {
        t.dtype() == T::DTYPE && t.elem_count() < 1 << 31 && t.device().same_device(lr.act.device())
    };
    let on_device = lr.act.device().is_cuda() && lr.act.is_contiguous();
    if !on_device || !fits(lr.weight) || !fits(lr.act) || tokens == 0 || d == 0 || rank > IN_PLACE_RANK {
        return Ok(None);
    }
    // The weight's base pointer and strides (rows, columns) in elements.
    let (w, [s0, s1]) = if lr.weight.is_contiguous() {
        (raw::<T>(lr.weight, OP)?.0, [rank, 1])
    } else if lr.weight.t()?.is_contiguous() {
        (raw::<T>(&lr.weight.t()?, OP)?.0, [1, lr.weight.dim(0)?])
    } else {
        return Ok(None);
    };
    let act = raw::<T>(lr.act, OP)?.0;
    let size = std::mem::size_of::<T>();
    // With rank 1 the stride between ranks is never taken (and candle calls a [W, 1] view of a
    // [1, W] tensor contiguous, with stride 1): 0, which any alignment allows.
    let s1 = if rank > 1 { s1 } else { 0 };
    let vector = |ptr: u64, stride: usize| {
        ptr.is_multiple_of(VEC_BYTES as u64) && (stride * size).is_multiple_of(VEC_BYTES)
    };
    let u =
        |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{OP}: {v} is too large")));
    let tokens_div = FastDiv::new(tokens)?;
    Ok(match lr.axis {
        // act [batch, tokens, rank] per row; the weight [width, rank] read as q[r][j] = w[j·s0 + r·s1].
        Mixer::Channel if s0 == 1 && vector(w, s1) => Some(LowRankArgs {
            p: act,
            q: w,
            pb: u(tokens * rank)?,
            pt: u(rank)?,
            pr: 1,
            qb: 0,
            qr: u(s1)?,
            rank: rank as i32,
            tokens: tokens_div,
        }),
        Mixer::Channel => None,
        // The weight [tokens, rank] per token; act [batch, rank, width] per image.
        Mixer::Token if vector(act, d) => Some(LowRankArgs {
            p: w,
            q: act,
            pb: 0,
            pt: u(s0)?,
            pr: u(s1)?,
            qb: u(rank * d)?,
            qr: u(d)?,
            rank: rank as i32,
            tokens: tokens_div,
        }),
        Mixer::Token => None,
    })
}

pub(crate) fn layer_norm_bwd_params(x: In, g: In, eps: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), ln_bwd_params(x, g, eps))
}

fn ln_bwd_params<T: Kern>(x: In, g: In, eps: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let d = *x.1.dims().last().unwrap_or(&0);
    let el = x.1.shape().elem_count();
    if d == 0 || el == 0 {
        bail!("layer_norm backward: empty input");
    }
    let rows = el / d;
    let per = rows.div_ceil(PARAM_CHUNKS).max(PARAM_ROWS);
    let chunks = rows.div_ceil(per);
    let shared = 2 * d * std::mem::size_of::<T::A>();
    // 48 KiB per block in all: the dynamic accumulators and the kernel's static `buf[32]`.
    if shared + 32 * std::mem::size_of::<T::A>() > 48 * 1024 {
        bail!("layer_norm backward: width {d} needs more than 48 KiB of shared memory");
    }
    let (xv, gv) = (view::<T>(x)?, view::<T>(g)?);
    // SAFETY: block k writes all 2·d elements of partial k, and all `chunks` blocks are launched.
    let partial = unsafe { dev.alloc::<T::A>(chunks * 2 * d)? };
    poison(dev, &partial)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_bwd_params"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    args.arg(&gv);
    args.arg(&partial);
    builder_arg!(args, rows as i32, per as i32, d as i32, eps);
    let config = LaunchConfig {
        grid_dim: (chunks as u32, 1, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: the arguments match `layer_norm_bwd_params_<dtype>(const T*, const T*, A*, int, int,
    // int, double)`; x and g hold rows·d elements, partial chunks·2·d, and the dynamic shared
    // memory holds the 2·d accumulators.
    unsafe { args.launch(config) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(partial, dev.clone()), Shape::from((chunks, 2, d))))
}

pub(crate) fn bias_gelu_fwd(x: In, b: In, channels: usize, inner: usize) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), bg_fwd(x, b, channels, inner))
}

fn bg_fwd<T: Kern>(x: In, b: In, channels: usize, inner: usize) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let shape = x.1.shape().clone();
    let n = shape.elem_count();
    let (xv, bv) = (view::<T>(x)?, view::<T>(b)?);
    // SAFETY: the grid-stride loop below writes every one of the n elements.
    let y = unsafe { dev.alloc::<T>(n)? };
    poison(dev, &y)?;
    if n > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("bias_gelu_fwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&xv);
        args.arg(&bv);
        args.arg(&y);
        let (channels, inner) = (FastDiv::new(channels)?, FastDiv::new(inner)?);
        builder_arg!(args, n as u64);
        args.arg(&channels);
        args.arg(&inner);
        // SAFETY: the arguments match `bias_gelu_fwd_<dtype>(const T*, const T*, T*, uint64_t,
        // FastDiv, FastDiv)`; x and y hold n elements, bias `channels`.
        unsafe { args.launch(vec_config::<T>(n)) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
}

pub(crate) fn bias_gelu_bwd(
    x: In,
    b: In,
    g: In,
    channels: usize,
    inner: usize,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), bg_bwd(x, b, g, channels, inner))
}

fn bg_bwd<T: Kern>(x: In, b: In, g: In, channels: usize, inner: usize) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let shape = x.1.shape().clone();
    let n = shape.elem_count();
    let (xv, bv, gv) = (view::<T>(x)?, view::<T>(b)?, view::<T>(g)?);
    // SAFETY: the grid-stride loop below writes every one of the n elements.
    let dx = unsafe { dev.alloc::<T>(n)? };
    poison(dev, &dx)?;
    if n > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("bias_gelu_bwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&xv);
        args.arg(&bv);
        args.arg(&gv);
        args.arg(&dx);
        let (channels, inner) = (FastDiv::new(channels)?, FastDiv::new(inner)?);
        builder_arg!(args, n as u64);
        args.arg(&channels);
        args.arg(&inner);
        // SAFETY: the arguments match `bias_gelu_bwd_<dtype>(const T*, const T*, const T*, T*,
        // uint64_t, FastDiv, FastDiv)`; x, g and dx hold n elements, bias `channels`.
        unsafe { args.launch(flat_config(n)) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(dx, dev.clone()), shape))
}

/// `bias_gelu_bwd` along a middle dimension (x viewed as `[outer, channels, inner]`; the
/// gradient and the mask, if any, shaped like x; all contiguous, of one dtype, on x's device)
/// with the gradient masked first, and the bias's gradient summed in the same launch (chunks of
/// outer rows as `channel_sums`', then the chunks in order): `(dx, sums)`, the sums
/// `[channels]` in the accumulation type.
pub(crate) fn bias_gelu_bwd_sums(
    [x, b, g]: [&candle_core::Tensor; 3],
    mask: Option<&candle_core::Tensor>,
    [channels, inner]: [usize; 2],
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    by_dtype!(x.dtype(), bg_bwd_sums([x, b, g], mask, [channels, inner]))
}

fn bg_bwd_sums<T: Kern>(
    [x, b, g]: [&candle_core::Tensor; 3],
    mask: Option<&candle_core::Tensor>,
    [channels, inner]: [usize; 2],
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    const OP: &str = "bias_gelu backward";
    let el = x.elem_count();
    let outer = el / (channels * inner).max(1);
    let per = super::column_sums::channel_chunk(outer, channels);
    let chunks = outer.div_ceil(per);
    let mut tensors = vec![x, b, g];
    tensors.extend(mask);
    for t in &tensors {
        if t.dtype() != T::DTYPE || !t.is_contiguous() || !t.device().same_device(x.device()) {
            bail!("{OP}: inputs of different dtypes or devices, or not contiguous");
        }
    }
    if g.dims() != x.dims() || mask.is_some_and(|m| m.dims() != x.dims()) || b.elem_count() != channels {
        bail!("{OP}: the gradient {:?} and mask must be shaped like x {:?}", g.dims(), x.dims());
    }
    let ints = [outer, channels, inner, per].map(i32::try_from);
    let [Ok(outer_i), Ok(channels_i), Ok(inner_i), Ok(per_i)] = ints else {
        bail!("{OP}: [{outer}, {channels}, {inner}] is too large for one launch");
    };
    let ptrs: Vec<u64> = tensors.iter().map(|t| raw::<T>(t, OP).map(|(p, _)| p)).collect::<Result<_>>()?;
    let dev = x.device().as_cuda_device()?;
    // SAFETY: block (c, k) writes every element of channel c in outer rows k·per .. (k + 1)·per
    // of dx and element c of row k of partial; the grid covers every channel and all `chunks`
    // rows, and the last block to finish writes all channels' sums.
    let (dx, partial, sums) =
        unsafe { (dev.alloc::<T>(el)?, dev.alloc::<T::A>(chunks * channels)?, dev.alloc::<T::A>(channels)?) };
    poison(dev, &dx)?;
    poison(dev, &sums)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("bias_gelu_bwd_sums"), MODULE, PTX)?;
    let mut args = func.builder();
    // Without a mask (its flag is 0, never read): g in its place.
    builder_arg!(args, ptrs[0], ptrs[1], ptrs[2], *ptrs.get(3).unwrap_or(&ptrs[2]));
    args.arg(&dx);
    args.arg(&partial);
    args.arg(&sums);
    builder_arg!(args, outer_i, channels_i, inner_i, per_i, mask.is_some() as i32, block_counter(dev)?);
    let config = LaunchConfig {
        grid_dim: (channels as u32, chunks as u32, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `bias_gelu_bwd_sums_<dtype>(const T*, const T*, const T*, const
    // T*, T*, A*, A*, int, int, int, int, int, unsigned int*)`; x, g, mask (read only when
    // flagged) and dx hold outer·channels·inner elements, bias channels, partial chunks·channels,
    // sums channels, the counter one zeroed u32.
    unsafe { args.launch(config) }.w()?;
    Ok((tensor(dx, dev, x.shape().clone()), tensor(sums, dev, channels)))
}

/// `a + m − minus + plus + bias`; `terms`: minus, plus and bias, each optional.
pub(crate) fn residual(a: In, m: In, terms: [Option<In>; 3], d: usize) -> Result<CudaStorage> {
    by_dtype!(a.0.dtype(), res_fwd(a, m, terms, d))
}

fn res_fwd<T: Kern>(a: In, m: In, terms: [Option<In>; 3], d: usize) -> Result<CudaStorage> {
    let dev = &a.0.device;
    let n = a.1.shape().elem_count();
    let (av, mv) = (view::<T>(a)?, view::<T>(m)?);
    let [minus, plus, bias] = terms.map(|t| t.map(view::<T>).transpose());
    let (minus, plus, bias) = (minus?, plus?, bias?);
    // SAFETY: the grid-stride loop below writes every one of the n elements.
    let out = unsafe { dev.alloc::<T>(n)? };
    poison(dev, &out)?;
    if n > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("residual_fwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&av);
        args.arg(&mv);
        // Absent terms are passed as `a` and never read (their flags are 0).
        args.arg(minus.as_ref().unwrap_or(&av));
        args.arg(plus.as_ref().unwrap_or(&av));
        args.arg(bias.as_ref().unwrap_or(&av));
        args.arg(&out);
        let d = FastDiv::new(d)?;
        builder_arg!(args, n as u64);
        args.arg(&d);
        builder_arg!(args, minus.is_some() as i32, plus.is_some() as i32, bias.is_some() as i32);
        // SAFETY: the arguments match `residual_fwd_<dtype>(const T*, const T*, const T*, const T*,
        // const T*, T*, uint64_t, FastDiv, int, int, int)`; a, m, minus and plus (when flagged)
        // and out hold n elements, bias (when flagged) d.
        unsafe { args.launch(vec_config::<T>(n)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// Bytes of shared memory a block may have without opting in: the channel weight of a low-rank
/// residual is staged there.
const SHARED_BYTES: usize = 48 * 1024;

/// The largest rank whose products the kernels compute where they read them: each element costs
/// a multiply-add per rank on the ordinary cores, which past this loses to writing the product
/// out with a tensor-core GEMM.
const IN_PLACE_RANK: usize = 16;

/// Whether [`low_rank_residual`] takes a product of `[batch, tokens, width, rank]` in `dtype`: a
/// 32-bit element index, rank at most [`IN_PLACE_RANK`], and a channel weight that fits one
/// block's shared memory (rank 16 at ViT-B's width in bf16); other products are written out and
/// added by [`residual`].
pub(crate) fn low_rank_fits(axis: Mixer, [b, t, d, r]: [usize; 4], dtype: DType) -> bool {
    let small = b.saturating_mul(t).saturating_mul(d) < 1 << 31 && r <= IN_PLACE_RANK;
    small && (axis == Mixer::Token || r * d * dtype.size_in_bytes() <= SHARED_BYTES)
}

/// `a + m − minus + plus + bias`, `m` the low-rank product of `w` and `act` (ops/low_rank.rs) for
/// `dims` = `[batch, tokens, width, rank]`, which [`low_rank_fits`]; `terms`: minus, plus and bias,
/// each optional.
pub(crate) fn low_rank_residual(
    a: In,
    axis: Mixer,
    w: In,
    act: In,
    dims: [usize; 4],
    terms: [Option<In>; 3],
) -> Result<CudaStorage> {
    by_dtype!(a.0.dtype(), lr_res(a, axis, w, act, dims, terms))
}

fn lr_res<T: Kern>(
    a: In,
    axis: Mixer,
    w: In,
    act: In,
    [batch, tokens, d, rank]: [usize; 4],
    terms: [Option<In>; 3],
) -> Result<CudaStorage> {
    let dev = &a.0.device;
    let n = batch * tokens * d;
    if !low_rank_fits(axis, [batch, tokens, d, rank], T::DTYPE) {
        bail!("residual: no CUDA kernel for a low-rank product of {:?}", [batch, tokens, d, rank]);
    }
    let (av, wv, actv) = (view::<T>(a)?, view::<T>(w)?, view::<T>(act)?);
    let [minus, plus, bias] = terms.map(|t| t.map(view::<T>).transpose());
    let (minus, plus, bias) = (minus?, plus?, bias?);
    // SAFETY: the grid-stride loops below write every one of the n elements.
    let out = unsafe { dev.alloc::<T>(n)? };
    poison(dev, &out)?;
    if n > 0 {
        let channel = axis == Mixer::Channel;
        let mut config = vec_config::<T>(n);
        if channel {
            // Each block stages the weight once: no more blocks than can be resident (4 per SM,
            // the kernel's launch bounds).
            let resident = 4 * multiprocessors(dev)?;
            config.grid_dim.0 = config.grid_dim.0.min(resident as u32);
            config.shared_mem_bytes = (rank * d * std::mem::size_of::<T>()) as u32;
        }
        let func = dev.get_or_load_custom_func(&kernel::<T>("low_rank_residual"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&av);
        args.arg(&wv);
        args.arg(&actv);
        // Absent terms are passed as `a` and never read (their flags are 0).
        args.arg(minus.as_ref().unwrap_or(&av));
        args.arg(plus.as_ref().unwrap_or(&av));
        args.arg(bias.as_ref().unwrap_or(&av));
        args.arg(&out);
        let (width, tokens) = (FastDiv::new(d)?, FastDiv::new(tokens)?);
        builder_arg!(args, n as u32);
        args.arg(&width);
        args.arg(&tokens);
        builder_arg!(args, rank as i32, channel as i32);
        builder_arg!(args, minus.is_some() as i32, plus.is_some() as i32, bias.is_some() as i32);
        // SAFETY: the arguments match `low_rank_residual_<dtype>(const T*, const T*, const T*,
        // const T*, const T*, const T*, T*, uint32_t, FastDiv, FastDiv, int, int, int, int, int)`;
        // a, out, minus and plus (when flagged) hold n = batch·tokens·d elements, bias (when
        // flagged) d, w d·rank (channel) or tokens·rank (token), act batch·tokens·rank (channel) or
        // batch·rank·d (token), as `LowRank::dims` checked; the channel weight fits the block's
        // shared memory (`low_rank_fits`), which `shared_mem_bytes` sizes.
        unsafe { args.launch(config) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// One warp per row: blocks of `BLOCK / 32` rows.
fn warp_rows_config(rows: usize) -> Result<LaunchConfig> {
    let per_block = BLOCK / 32;
    // The kernels index rows with 32-bit ints (one warp of 32 threads per row).
    if rows > i32::MAX as usize / 32 {
        bail!("losa ops: {rows} rows is too many for one launch");
    }
    let blocks = rows.div_ceil(per_block) as u32;
    Ok(LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (BLOCK as u32, 1, 1), shared_mem_bytes: 0 })
}

/// `LN(x)·downᵀ` per row (ops/norm_down.rs): inputs x `[rows, d]`, the norm's weight and bias
/// `[d]`, down `[rows / per_weight, rank, d]` (a projection for each run of `per_weight` rows: an
/// image's tokens, or all rows), all contiguous; `[rows, rank]`.
pub(crate) fn layer_norm_down(inputs: [In; 4], dims: [usize; 4], eps: f64) -> Result<CudaStorage> {
    by_dtype!(inputs[0].0.dtype(), ln_down(inputs, dims, eps))
}

fn ln_down<T: Kern>(
    [x, w, b, down]: [In; 4],
    [rows, d, rank, per_weight]: [usize; 4],
    eps: f64,
) -> Result<CudaStorage> {
    let dev = &x.0.device;
    let (Ok(d_i), Ok(rank_i), Ok(per_i)) = (i32::try_from(d), i32::try_from(rank), i32::try_from(per_weight))
    else {
        bail!(
            "layer_norm_down: {rows} rows of {d} (projections per {per_weight}) to rank {rank} is too large for one launch"
        );
    };
    let [xv, wv, bv, dv] = [x, w, b, down].map(view::<T>);
    let (xv, wv, bv, dv) = (xv?, wv?, bv?, dv?);
    // SAFETY: warp r writes all `rank` values of row r (its lane 0), and all rows get a warp.
    let pre = unsafe { dev.alloc::<T>(rows * rank)? };
    poison(dev, &pre)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_down"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    args.arg(&wv);
    args.arg(&bv);
    args.arg(&dv);
    args.arg(&pre);
    builder_arg!(args, rows as i32, d_i, rank_i, per_i, eps);
    // SAFETY: the arguments match `layer_norm_down_<dtype>(const T*, const T*, const T*, const T*,
    // T*, int, int, int, int, double)`; x holds rows·d elements, w and b d, down (rows /
    // per_weight)·rank·d, pre rows·rank (`warp_rows_config` refuses rows past the kernels' 32-bit
    // row index).
    unsafe { args.launch(warp_rows_config(rows)?) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(pre, dev.clone()))
}

pub(crate) fn softmax_fwd(x: In, scale: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), sm_fwd(x, scale))
}

fn sm_fwd<T: Kern>(x: In, scale: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let shape = x.1.shape().clone();
    let (el, d) = (shape.elem_count(), *shape.dims().last().unwrap_or(&1));
    let xv = view::<T>(x)?;
    // SAFETY: warp r writes all d elements of row r, and all el / d rows get a warp.
    let y = unsafe { dev.alloc::<T>(el)? };
    poison(dev, &y)?;
    if el > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("softmax_fwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&xv);
        args.arg(&y);
        builder_arg!(args, (el / d) as i32, d as i32, scale);
        // SAFETY: the arguments match `softmax_fwd_<dtype>(const T*, T*, int, int, double)`; x and y
        // hold el = rows · d elements.
        unsafe { args.launch(warp_rows_config(el / d)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
}

pub(crate) fn softmax_bwd(y: In, g: In, scale: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(y.0.dtype(), sm_bwd(y, g, scale))
}

fn sm_bwd<T: Kern>(y: In, g: In, scale: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &y.0.device;
    let shape = y.1.shape().clone();
    let (el, d) = (shape.elem_count(), *shape.dims().last().unwrap_or(&1));
    let (yv, gv) = (view::<T>(y)?, view::<T>(g)?);
    // SAFETY: warp r writes all d elements of row r, and all el / d rows get a warp.
    let dx = unsafe { dev.alloc::<T>(el)? };
    poison(dev, &dx)?;
    if el > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("softmax_bwd"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&yv);
        args.arg(&gv);
        args.arg(&dx);
        builder_arg!(args, (el / d) as i32, d as i32, scale);
        // SAFETY: the arguments match `softmax_bwd_<dtype>(const T*, const T*, T*, int, int,
        // double)`; y, g and dx hold el = rows · d elements.
        unsafe { args.launch(warp_rows_config(el / d)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(dx, dev.clone()), shape))
}

/// The mean cross-entropy of `z` `[rows, classes]` against u32 `labels`: one block sums every row's
/// loss in a fixed order (kernels.cu); a scalar.
pub(crate) fn cross_entropy_fwd(z: In, labels: In, smoothing: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(z.0.dtype(), ce_fwd(z, labels, smoothing))
}

fn ce_fwd<T: Kern>(z: In, labels: In, smoothing: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &z.0.device;
    let &[rows, classes] = z.1.dims() else { bail!("cross_entropy: logits must be [batch, classes]") };
    let (zv, lv) = (view::<T>(z)?, view::<u32>(labels)?);
    // SAFETY: thread 0 of the one block writes the one element.
    let loss = unsafe { dev.alloc::<T>(1)? };
    poison(dev, &loss)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("cross_entropy_fwd"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&zv);
    args.arg(&lv);
    args.arg(&loss);
    builder_arg!(args, rows as i32, classes as i32, smoothing);
    let one_block =
        LaunchConfig { grid_dim: (1, 1, 1), block_dim: (BLOCK as u32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments match `cross_entropy_fwd_<dtype>(const T*, const uint32_t*, T*, int,
    // int, double)`; z holds rows · classes elements and labels rows (`ops::cross_entropy` checks
    // both, and that they fit an int).
    unsafe { args.launch(one_block) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(loss, dev.clone()), Shape::from(())))
}

/// The logits' gradient for the loss's gradient `g` (one element): a warp per row.
pub(crate) fn cross_entropy_bwd(z: In, labels: In, g: In, smoothing: f64) -> Result<(CudaStorage, Shape)> {
    by_dtype!(z.0.dtype(), ce_bwd(z, labels, g, smoothing))
}

fn ce_bwd<T: Kern>(z: In, labels: In, g: In, smoothing: f64) -> Result<(CudaStorage, Shape)> {
    let dev = &z.0.device;
    let shape = z.1.shape().clone();
    let &[rows, classes] = shape.dims() else { bail!("cross_entropy: logits must be [batch, classes]") };
    let (zv, lv, gv) = (view::<T>(z)?, view::<u32>(labels)?, view::<T>(g)?);
    if gv.len() != 1 {
        bail!("cross_entropy: the loss's gradient must be one element, not {}", gv.len());
    }
    // SAFETY: warp r writes all classes elements of row r, and all rows get a warp.
    let dz = unsafe { dev.alloc::<T>(rows * classes)? };
    poison(dev, &dz)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("cross_entropy_bwd"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&zv);
    args.arg(&lv);
    args.arg(&gv);
    args.arg(&dz);
    builder_arg!(args, rows as i32, classes as i32, smoothing);
    // SAFETY: the arguments match `cross_entropy_bwd_<dtype>(const T*, const uint32_t*, const T*,
    // T*, int, int, double)`; z and dz hold rows · classes elements, labels rows, g one.
    unsafe { args.launch(warp_rows_config(rows)?) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dz, dev.clone()), shape))
}

/// `split`: `[batch, tokens, 3·d]` + bias to `[3, batch, heads, tokens, hd]`; otherwise (no bias)
/// the inverse permutation. `dims`: batch, tokens, heads, hd.
/// `dims` = [batch, tokens, parts, heads, head_dim]: the split (with the bias, if any) or, with
/// `split` false, its inverse.
pub(crate) fn split_heads(src: In, bias: Option<In>, dims: [usize; 5], split: bool) -> Result<CudaStorage> {
    by_dtype!(src.0.dtype(), heads(src, bias, dims, split))
}

fn heads<T: Kern>(src: In, bias: Option<In>, dims: [usize; 5], split: bool) -> Result<CudaStorage> {
    let dev = &src.0.device;
    let n = src.1.shape().elem_count();
    let sv = view::<T>(src)?;
    // Absent when there is no bias (its flag is 0, never read): `src` in its place.
    let bv = bias.map(view::<T>).transpose()?;
    // SAFETY: the permutation is a bijection over the n elements and every thread of the grid-stride
    // loop writes its element, so every element is written.
    let dst = unsafe { dev.alloc::<T>(n)? };
    poison(dev, &dst)?;
    if n > 0 {
        let func = dev.get_or_load_custom_func(&kernel::<T>("split_heads"), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&sv);
        args.arg(bv.as_ref().unwrap_or(&sv));
        args.arg(&dst);
        let [batch, tokens, parts, heads, hd] = dims;
        let [batch, tokens, heads, hd] = [batch, tokens, heads, hd].map(FastDiv::new);
        let (batch, tokens, heads, hd) = (batch?, tokens?, heads?, hd?);
        builder_arg!(args, n as u64);
        args.arg(&batch);
        args.arg(&tokens);
        builder_arg!(args, parts as i32);
        args.arg(&heads);
        args.arg(&hd);
        builder_arg!(args, split as i32, bias.is_some() as i32);
        // SAFETY: the arguments match `split_heads_<dtype>(const T*, const T*, T*, uint64_t, FastDiv,
        // FastDiv, int, FastDiv, FastDiv, int, int)`; src and dst hold n = batch · tokens · parts ·
        // heads · hd elements, bias (read only when flagged) parts · heads · hd.
        unsafe { args.launch(vec_config::<T>(n)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
}

/// Tensors per launch of a multi-tensor kernel (kernels.cu's `MANY`): their device pointers
/// travel in the kernel's parameters (at most 2 KB of the 4 KB that every card takes).
const MANY: usize = 48;

/// kernels.cu's `CastTable`.
#[repr(C)]
struct CastTable {
    src: [u64; MANY],
    dst: [u64; MANY],
    ends: [u64; MANY],
    count: i32,
}

/// kernels.cu's `AdamWTable`.
#[repr(C)]
struct AdamWTable {
    p: [u64; MANY],
    g: [u64; MANY],
    state: [u64; MANY],
    ends: [u64; MANY],
    decay: [f64; MANY],
    count: i32,
}

// SAFETY: both are `#[repr(C)]` copies of kernels.cu's structs (arrays of u64 and f64, then an
// int), valid for any bits; the kernels read them as their `__grid_constant__` parameter.
unsafe impl DeviceRepr for CastTable {}
unsafe impl DeviceRepr for AdamWTable {}

/// A contiguous CUDA tensor's device pointer (at its first element) and element count, as `T`.
/// Read under its storage's lock, released before returning: candle's storage locks are not
/// re-entrant, and the tensors of one multi-tensor launch may share a storage (views of one
/// buffer, as `cast_all` makes). The caller's borrow keeps the buffer alive, and one
/// stream orders every use of it (cudarc's per-buffer events, which `prepare` turns off, would be
/// recorded here rather than after the launch).
fn raw<T: Kern>(t: &candle_core::Tensor, op: &str) -> Result<(u64, usize)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*s else { bail!("{op}: a tensor not on a CUDA device") };
    let v = view::<T>((s, l))?;
    let stream = s.device.cuda_stream();
    let (ptr, _) = v.device_ptr(&stream);
    Ok((ptr, v.len()))
}

/// `x` rounded up to a whole number of `VEC_BYTES` in elements of `T`.
fn padded<T>(x: usize) -> usize {
    x.next_multiple_of(VEC_BYTES / std::mem::size_of::<T>())
}

/// Whether [`cast_many`] has a kernel from `from` to `to`: between f32 and each other float type.
pub(crate) fn casts(from: DType, to: DType) -> bool {
    matches!(
        (from, to),
        (DType::F32, DType::BF16 | DType::F16 | DType::F64)
            | (DType::BF16 | DType::F16 | DType::F64, DType::F32)
    )
}

/// The contiguous `tensors` (of dtype `S`, non-empty, on `dev`) cast to `D` into one new buffer,
/// one launch per `MANY` tensors, and where each starts in it (in elements): every start on a
/// 16-byte boundary, so that the results take the kernels' vector paths as fresh tensors do.
pub(crate) fn cast_many(
    dev: &candle_core::cuda_backend::CudaDevice,
    tensors: &[&candle_core::Tensor],
    to: DType,
) -> Result<(CudaStorage, Vec<usize>)> {
    let Some(first) = tensors.first() else { bail!("cast_all: no tensors") };
    match (first.dtype(), to) {
        (DType::F32, DType::BF16) => cast_group::<f32, half::bf16>(dev, tensors),
        (DType::F32, DType::F16) => cast_group::<f32, half::f16>(dev, tensors),
        (DType::F32, DType::F64) => cast_group::<f32, f64>(dev, tensors),
        (DType::BF16, DType::F32) => cast_group::<half::bf16, f32>(dev, tensors),
        (DType::F16, DType::F32) => cast_group::<half::f16, f32>(dev, tensors),
        (DType::F64, DType::F32) => cast_group::<f64, f32>(dev, tensors),
        (from, to) => bail!("cast_all: no CUDA kernel from {from:?} to {to:?}"),
    }
}

fn cast_group<S: Kern, D: Kern>(
    dev: &candle_core::cuda_backend::CudaDevice,
    tensors: &[&candle_core::Tensor],
) -> Result<(CudaStorage, Vec<usize>)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let sources = tensors.iter().map(|t| raw::<S>(t, "cast_all")).collect::<Result<Vec<_>>>()?;
    let starts: Vec<usize> = sources
        .iter()
        .scan(0, |at, &(_, n)| {
            let start = *at;
            *at = padded::<D>(start + n);
            Some(start)
        })
        .collect();
    let total = starts.last().zip(sources.last()).map_or(0, |(s, (_, n))| s + n);
    // SAFETY: uninitialised; the launches below write every element of every tensor's part
    // (starts[k] .. starts[k] + n_k); the padding between parts is never read.
    let out = unsafe { dev.alloc::<D>(total)? };
    poison(dev, &out)?;
    let stream = dev.cuda_stream();
    let (base, _) = out.device_ptr(&stream);
    let func = dev.get_or_load_custom_func(
        &format!("cast_many_{}_{}", S::DTYPE.as_str(), D::DTYPE.as_str()),
        MODULE,
        PTX,
    )?;
    let size = std::mem::size_of::<D>() as u64;
    for (chunk, at) in sources.chunks(MANY).zip(starts.chunks(MANY)) {
        let mut table =
            CastTable { src: [0; MANY], dst: [0; MANY], ends: [0; MANY], count: chunk.len() as i32 };
        let mut end = 0;
        for (k, (&(ptr, n), &start)) in chunk.iter().zip(at).enumerate() {
            end += n as u64;
            (table.src[k], table.dst[k], table.ends[k]) = (ptr, base + start as u64 * size, end);
        }
        if end == 0 {
            continue;
        }
        let mut args = func.builder();
        args.arg(&table);
        // SAFETY: the arguments match `cast_many_<from>_<to>(CastTable)`; each entry's source is a
        // live contiguous tensor of S holding its count of elements, and its destination the
        // same count of elements of `out`, within it and apart from every other entry's.
        unsafe { args.launch(flat_config(end as usize)) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), starts))
}

/// One parameter of a multi-tensor AdamW step: parameter, gradient, moments `[2, n]`, and
/// `1 − lr·weight_decay`.
pub(crate) type AdamWSlot<'a> =
    (&'a candle_core::Tensor, &'a candle_core::Tensor, &'a candle_core::Tensor, f64);

/// AdamW in place for `slots` (contiguous, of one dtype, on `clip`'s CUDA device), one launch
/// per `MANY` parameters; `h` = (β1, β2, 1/√(1 − β2ᵗ), eps, step size).
pub(crate) fn adamw_many(slots: &[AdamWSlot], clip: &candle_core::Tensor, h: [f64; 5]) -> Result<()> {
    let Some((p, ..)) = slots.first() else { return Ok(()) };
    by_dtype!(p.dtype(), adamw_group(slots, clip, h))
}

fn adamw_group<T: Kern>(slots: &[AdamWSlot], clip: &candle_core::Tensor, h: [f64; 5]) -> Result<()> {
    const OP: &str = "adamw_update";
    let dev = clip.device().as_cuda_device()?;
    let (clip_ptr, _) = raw::<f64>(clip, OP)?;
    let ptrs = slots
        .iter()
        .map(|(p, g, s, _)| Ok([raw::<T>(p, OP)?, raw::<T>(g, OP)?, raw::<T>(s, OP)?]))
        .collect::<Result<Vec<_>>>()?;
    // The kernel writes the parameters and moments through these pointers: check that no two of
    // them overlap and that no gradient overlaps one, as candle's in-place ops check on the CPU.
    let size = std::mem::size_of::<T>() as u64;
    let range = |&(ptr, n): &(u64, usize)| (ptr, ptr + n as u64 * size);
    let mut writes: Vec<(u64, u64)> =
        ptrs.iter().flat_map(|[p, _, s]| [range(p), range(s)]).filter(|(a, b)| a < b).collect();
    writes.sort_unstable();
    // Disjoint and sorted by start, the writes are sorted by end too.
    let overlaps = |(a, b): (u64, u64)| {
        let k = writes.partition_point(|w| w.1 <= a);
        a < b && k < writes.len() && writes[k].0 < b
    };
    if writes.windows(2).any(|w| w[1].0 < w[0].1) || ptrs.iter().any(|[_, g, _]| overlaps(range(g))) {
        bail!("{OP}: parameters, gradients and moments must not share memory");
    }
    let func = dev.get_or_load_custom_func(&kernel::<T>("adamw_many"), MODULE, PTX)?;
    for (chunk, slots) in ptrs.chunks(MANY).zip(slots.chunks(MANY)) {
        let mut table = AdamWTable {
            p: [0; MANY],
            g: [0; MANY],
            state: [0; MANY],
            ends: [0; MANY],
            decay: [0.0; MANY],
            count: chunk.len() as i32,
        };
        let mut end = 0;
        for (k, ([p, g, s], slot)) in chunk.iter().zip(slots).enumerate() {
            end += p.1 as u64;
            (table.p[k], table.g[k], table.state[k], table.ends[k], table.decay[k]) =
                (p.0, g.0, s.0, end, slot.3);
        }
        if end == 0 {
            continue;
        }
        let mut args = func.builder();
        args.arg(&table);
        builder_arg!(args, clip_ptr, h[0], h[1], h[2], h[3], h[4]);
        // SAFETY: the arguments match `adamw_many_<dtype>(AdamWTable, const double*, double,
        // double, double, double, double)`; each entry points at a live contiguous parameter and
        // gradient of its count of elements and at moments of twice that (checked by the
        // caller), clip_ptr at one f64; the kernel writes parameters and moments, which overlap
        // neither each other nor a gradient (checked above).
        unsafe { args.launch(flat_config(end as usize)) }.w()?;
    }
    Ok(())
}

/// Column sums of a `[rows, cols]` input: per chunk of `per` rows, then over the chunks in
/// order, in one launch; `[cols]` in the accumulation type.
pub(crate) fn column_sums(x: In, chunks: usize, per: usize) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), col_sums(x, chunks, per))
}

fn col_sums<T: Kern>(x: In, chunks: usize, per: usize) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let &[rows, cols] = x.1.dims() else { bail!("column_sums: input must be [rows, cols]") };
    let (Ok(rows_i), Ok(cols_i), Ok(per_i)) = (i32::try_from(rows), i32::try_from(cols), i32::try_from(per))
    else {
        bail!("column_sums: {rows} × {cols} is too large for one launch");
    };
    let xv = view::<T>(x)?;
    // SAFETY: block (i, k) writes columns 32·i .. 32·i + 31 (those below cols) of row k of
    // partial, the grid covers every column and all `chunks` rows, and the last block to finish
    // writes all cols sums.
    let (partial, sums) = unsafe { (dev.alloc::<T::A>(chunks * cols)?, dev.alloc::<T::A>(cols)?) };
    poison(dev, &sums)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("column_sums"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    args.arg(&partial);
    args.arg(&sums);
    builder_arg!(args, rows_i, cols_i, per_i, block_counter(dev)?);
    let config = LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `column_sums_<dtype>(const T*, A*, A*, int, int, int, unsigned
    // int*)`; x holds rows·cols elements, partial chunks·cols, sums cols, the counter one zeroed
    // u32.
    unsafe { args.launch(config) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(sums, dev.clone()), Shape::from(cols)))
}

/// Sums of an `[outer, channels, inner]` input over outer and inner: per chunk of `per` outer rows
/// and channel, then over the chunks in order, in one launch; `[channels]` in the accumulation
/// type.
pub(crate) fn channel_sums(x: In, per: usize) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.0.dtype(), chan_sums(x, per))
}

fn chan_sums<T: Kern>(x: In, per: usize) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let &[outer, channels, inner] = x.1.dims() else {
        bail!("channel_sums: input must be [outer, channels, inner]")
    };
    let ints = [outer, channels, inner, per].map(i32::try_from);
    let [Ok(outer_i), Ok(channels_i), Ok(inner_i), Ok(per_i)] = ints else {
        bail!("channel_sums: {:?} is too large for one launch", x.1.dims());
    };
    let chunks = outer.div_ceil(per.max(1));
    let xv = view::<T>(x)?;
    // SAFETY: block (c, k) writes element c of row k of partial, the grid covers every channel and
    // all `chunks` rows, and the last block to finish writes all channels' sums.
    let (partial, sums) = unsafe { (dev.alloc::<T::A>(chunks * channels)?, dev.alloc::<T::A>(channels)?) };
    poison(dev, &sums)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("channel_sums"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    args.arg(&partial);
    args.arg(&sums);
    builder_arg!(args, outer_i, channels_i, inner_i, per_i, block_counter(dev)?);
    let config = LaunchConfig {
        grid_dim: (channels as u32, chunks as u32, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `channel_sums_<dtype>(const T*, A*, A*, int, int, int, int,
    // unsigned int*)`; x holds outer·channels·inner elements, partial chunks·channels, sums
    // channels, the counter one zeroed u32.
    unsafe { args.launch(config) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(sums, dev.clone()), Shape::from(channels)))
}

/// Whether `layer_norm_pool`'s kernels take these (contiguous) tensors: rows of the LayerNorm
/// vector path (f32, f16 or bf16, a width of whole vectors up to 32 × `LN_LANE_ELEMS`, x on a
/// 16-byte boundary), an f32 scale and shift (read one value at a time), and a shape that fits
/// one launch ([`pool_dims`]).
pub(crate) fn norm_pool_fits(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> Result<bool> {
    const OP: &str = "layer_norm_pool";
    let d = w.elem_count();
    let x_ptr = match x.dtype() {
        DType::F32 if padded::<f32>(d) == d => raw::<f32>(x, OP)?.0,
        DType::F16 if padded::<half::f16>(d) == d => raw::<half::f16>(x, OP)?.0,
        DType::BF16 if padded::<half::bf16>(d) == d => raw::<half::bf16>(x, OP)?.0,
        _ => return Ok(false),
    };
    let dtypes = w.dtype() == DType::F32 && b.dtype() == DType::F32;
    let n = x.dims().get(1).copied().unwrap_or(0);
    Ok(dtypes && x_ptr.is_multiple_of(VEC_BYTES as u64) && pool_dims(x.layout(), &(0..n), d).is_ok())
}

/// `[batch, tokens, d]`, and `tokens`, the pooled range, `d` as the kernels' ints, if the
/// kernels take them: a batch of 1 to 65535 (grid y), a non-empty range within the tokens, rows of
/// the vector path, and row indices within 32-bit ints.
fn pool_dims(x: &Layout, tokens: &std::ops::Range<usize>, d: usize) -> Result<([usize; 3], [i32; 4])> {
    let &[batch, n, width] = x.dims() else { bail!("layer_norm_pool: x must be [batch, tokens, d]") };
    let fits = width == d
        && (1..=65535).contains(&batch)
        && !tokens.is_empty()
        && tokens.end <= n
        && (1..=32 * LN_LANE_ELEMS).contains(&d)
        && batch * n <= i32::MAX as usize / 32;
    match [n, tokens.start, tokens.end, d].map(i32::try_from) {
        [Ok(n_i), Ok(first), Ok(last), Ok(d_i)] if fits => Ok(([batch, n, d], [n_i, first, last, d_i])),
        _ => bail!("layer_norm_pool: no kernel for {:?}, tokens {tokens:?}, width {d}", x.dims()),
    }
}

/// The pooled LayerNorm's forward (kernels.cu's `layer_norm_pool_fwd`) for inputs that
/// [`norm_pool_fits`] takes: `[batch, d]` f32, in one launch.
pub(crate) fn layer_norm_pool_fwd(
    x: In,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
    tokens: std::ops::Range<usize>,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    by_vector_dtype!(x.0.dtype(), "layer_norm_pool", pool_fwd(x, w, b, tokens, eps))
}

fn pool_fwd<T: Kern>(
    x: In,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
    tokens: std::ops::Range<usize>,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "layer_norm_pool";
    let dev = &x.0.device;
    let ([batch, _, d], [n, first, last, d_i]) = pool_dims(x.1, &tokens, w.elem_count())?;
    let xv = view::<T>(x)?;
    let (wp, bp) = (raw::<f32>(w, OP)?.0, raw::<f32>(b, OP)?.0);
    // Blocks per image: about two blocks per multiprocessor in all, none without a row.
    let chunks = (2 * multiprocessors(dev)?).div_ceil(batch).clamp(1, tokens.len().div_ceil(BLOCK / 32));
    // SAFETY: block (c, i) writes all d elements of partial[c][i], the grid covers every c and i,
    // and the last of image i's blocks to finish writes its d outputs.
    let (partial, out) = unsafe { (dev.alloc::<f32>(chunks * batch * d)?, dev.alloc::<f32>(batch * d)?) };
    poison(dev, &out)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_pool_fwd"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    builder_arg!(args, wp, bp);
    args.arg(&partial);
    args.arg(&out);
    builder_arg!(args, n, first, last, d_i, eps, block_counters(dev, batch)?);
    let config = LaunchConfig {
        grid_dim: (chunks as u32, batch as u32, 1),
        block_dim: (BLOCK as u32, 1, 1),
        shared_mem_bytes: (d * std::mem::size_of::<f32>()) as u32,
    };
    // SAFETY: the arguments match `layer_norm_pool_fwd_<dtype>(const T*, const float*, const
    // float*, float*, float*, int, int, int, int, double, unsigned int*)`; x holds batch·n·d
    // elements, w and b d, partial chunks·batch·d, out batch·d, the counters batch zeroed u32,
    // and the dynamic shared memory d accumulators (at most 5 KB: d ≤ 1280).
    unsafe { args.launch(config) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((batch, d))))
}

/// The pooled LayerNorm's input gradient (kernels.cu's `layer_norm_pool_bwd`) from `x` and the
/// output gradient `g` (`[batch, d]` f32), for inputs that [`norm_pool_fits`] takes.
pub(crate) fn layer_norm_pool_bwd(
    x: In,
    g: In,
    w: &candle_core::Tensor,
    tokens: std::ops::Range<usize>,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    by_vector_dtype!(x.0.dtype(), "layer_norm_pool", pool_bwd(x, g, w, tokens, eps))
}

fn pool_bwd<T: Kern>(
    x: In,
    g: In,
    w: &candle_core::Tensor,
    tokens: std::ops::Range<usize>,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let ([batch, n, d], [n_i, first, last, d_i]) = pool_dims(x.1, &tokens, w.elem_count())?;
    if g.1.dims() != [batch, d] {
        bail!("layer_norm_pool backward: gradient {:?} for [{batch}, {d}]", g.1.dims());
    }
    let (xv, gv) = (view::<T>(x)?, view::<f32>(g)?);
    let wp = raw::<f32>(w, "layer_norm_pool")?.0;
    let rows = batch * n;
    // SAFETY: written in full by the kernel below: warp r writes all d elements of row r (zeros
    // outside the pooled tokens), and all rows get a warp.
    let dx = unsafe { dev.alloc::<T>(rows * d)? };
    poison(dev, &dx)?;
    let func = dev.get_or_load_custom_func(&kernel::<T>("layer_norm_pool_bwd"), MODULE, PTX)?;
    let mut args = func.builder();
    args.arg(&xv);
    builder_arg!(args, wp);
    args.arg(&gv);
    args.arg(&dx);
    builder_arg!(args, rows as i32, n_i, first, last, d_i, eps);
    // SAFETY: the arguments match `layer_norm_pool_bwd_<dtype>(const T*, const float*, const
    // float*, T*, int, int, int, int, int, double)`; x and dx hold rows·d elements, w d, g batch·d.
    unsafe { args.launch(warp_rows_config(rows)?) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dx, dev.clone()), x.1.shape().clone()))
}
