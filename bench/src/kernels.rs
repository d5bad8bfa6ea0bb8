//! Kernel check: each fused op of `losa_framework::ops` (values and gradients) on a device
//! against its CPU fallback on the same random inputs, with the device's outputs pre-filled with
//! NaN (`ops::poison_outputs`), so an element a kernel leaves unwritten fails the check; then the
//! time of each op forward + backward, fused against the unfused composition. Prints pass/fail and
//! timing tables and exits 1 on any failure. `bench/run_gpu.sh` runs it on the GPU.
//! Then the same for the in-place AdamW update (three steps, clipping in the second), and the time
//! of one optimiser step over LoSA's ViT-B/16 parameters, fused against the composition.
//! `--multi-tensor-only` runs only the AdamW check and timing. `--frozen-only` skips the checks and
//! prints only the last table: the frozen forward's ops against
//! the candle ops they replaced, at `--frozen-shape batch,tokens,width,heads` (default ViT-B/16).
//!   kernels [--device cuda|cpu] [--runs 20] [--frozen-only | --multi-tensor-only] [--frozen-shape 64,197,768,12]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Result, Tensor, Var};
use losa_framework::ops;
use losa_framework::recipe::{DeviceSpec, Mixer};
use losa_framework::vit::seeded_normal;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    LayerNorm,
    BiasGelu(usize),
    /// `a + m − minus + plus + bias` (no backward).
    Residual,
    /// The same with `m` a mixer's low-rank up-projection of this rank, never written out;
    /// unfused: candle's matmul writes it, then the residual above adds it.
    LowRank(Mixer, usize),
    /// `LN(h)·Wdᵀ` to this rank (no backward): a channel mixer's forward, or with a projection
    /// per image a token mixer's down-projection gradient; unfused: the norm writes `LN(h)` and
    /// candle's matmul reads it.
    NormDown(usize, Projection),
    /// The LayerNorm's gradients (input, plus an added tensor; scale; shift) for a mixer's
    /// low-rank gradient at its normed input (`dpre·Wd` or `Wdᵀ·dpre`) of this rank, read in place;
    /// unfused: the product written out by candle's matmul first. Output: dx, dw and db
    /// concatenated (one copy on both sides).
    NormGrads(Mixer, usize),
    /// A channel mixer's backward from its output's gradient up to its down-projection (no
    /// backward): `dpre` of this rank, masked or not, and the two biases' sums; unfused: the
    /// GEMM, the mask, the activation's gradient and two column sums. Output: all three
    /// concatenated, the sums cast to the dtype.
    UpGrads(usize, bool),
    /// One LoSA side block (`ops::side_network` of one block), a channel then a token mixer of this
    /// rank.
    Side(usize),
    /// Attention's `softmax(x / 8)` (head_dim 64).
    Softmax,
    /// qkv bias + split into this many heads.
    SplitHeads(usize),
    /// Attention's output `[batch, heads, tokens, head_dim]` back to `[batch, tokens, width]`.
    MergeHeads,
    /// `x + m + bias`, differentiable.
    BiasResidual,
    /// The mean over tokens `first..last` of a frozen LayerNorm (f32 scale and shift, as LoSA's
    /// head reads the backbone's final norm), differentiable in x.
    NormPool(usize, usize),
    /// The training loss over `[batch, classes]` logits with this label smoothing; its labels
    /// follow the logits among the inputs ([`Op::labels`]).
    CrossEntropy(f64),
}

/// The projection of [`Op::NormDown`]: one for all rows (a channel mixer's forward), or one per
/// image (a token mixer's backward, its gradient at the pre-activation).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Projection {
    Shared,
    PerImage,
}

/// The mixers of [`Op::Side`]: channel then token, with norms.
const SIDE: [Mixer; 2] = [Mixer::Channel, Mixer::Token];

impl Op {
    fn name(self) -> String {
        match self {
            Op::LayerNorm => "layer_norm".into(),
            Op::BiasGelu(dim) => format!("bias_gelu(dim {dim})"),
            Op::Residual => "residual".into(),
            Op::LowRank(axis, rank) => format!("residual(low-rank {axis:?}, rank {rank})"),
            Op::NormDown(rank, Projection::Shared) => format!("layer_norm_down(rank {rank})"),
            Op::NormDown(rank, Projection::PerImage) => format!("layer_norm_down(rank {rank}, per image)"),
            Op::NormGrads(axis, rank) => format!("layer_norm_grads(low-rank {axis:?}, rank {rank})"),
            Op::UpGrads(rank, masked) => format!("channel_up_grads(rank {rank}, mask {masked})"),
            Op::Side(rank) => format!("side_network(1 block, rank {rank})"),
            Op::Softmax => "softmax".into(),
            Op::SplitHeads(heads) => format!("split_heads({heads} heads)"),
            Op::MergeHeads => "merge_heads".into(),
            Op::BiasResidual => "bias_residual".into(),
            Op::NormPool(first, last) => format!("layer_norm_pool(tokens {first}..{last})"),
            Op::CrossEntropy(smoothing) => format!("cross_entropy(smoothing {smoothing})"),
        }
    }

    /// Random inputs (f64 on the CPU): x, then weight and bias or the bias; for `Side`, `y`, the
    /// mixers' parameters, then the features `b`.
    fn inputs(self, shape: &[usize]) -> Result<Vec<Tensor>> {
        let cpu = Device::Cpu;
        let x = (seeded_normal(shape, 1.5, 1, &cpu)? + 0.3)?;
        let d = shape[shape.len() - 1];
        Ok(match self {
            Op::LayerNorm | Op::NormPool(..) => {
                vec![x, (seeded_normal(d, 0.2, 2, &cpu)? + 1.0)?, seeded_normal(d, 0.2, 3, &cpu)?]
            }
            Op::BiasGelu(dim) => vec![x, seeded_normal(shape[dim], 0.5, 4, &cpu)?],
            Op::Residual => {
                vec![
                    x,
                    seeded_normal(shape, 1.0, 2, &cpu)?,
                    seeded_normal(shape, 1.0, 3, &cpu)?,
                    seeded_normal(shape, 1.0, 5, &cpu)?,
                    seeded_normal(d, 0.5, 4, &cpu)?,
                ]
            }
            Op::LowRank(axis, rank) => {
                let (b, n) = (shape[0], shape[1]);
                let (weight, act) = match axis {
                    Mixer::Channel => (vec![d, rank], vec![b, n, rank]),
                    Mixer::Token => (vec![n, rank], vec![b, rank, d]),
                };
                vec![
                    x,
                    seeded_normal(weight, 0.5, 2, &cpu)?,
                    seeded_normal(act, 1.0, 6, &cpu)?,
                    seeded_normal(shape, 1.0, 3, &cpu)?,
                    seeded_normal(shape, 1.0, 5, &cpu)?,
                    seeded_normal(d, 0.5, 4, &cpu)?,
                ]
            }
            Op::NormDown(rank, projection) => {
                let down = match projection {
                    Projection::Shared => vec![rank, d],
                    Projection::PerImage => vec![shape[0], rank, d],
                };
                vec![
                    x,
                    (seeded_normal(d, 0.2, 2, &cpu)? + 1.0)?,
                    seeded_normal(d, 0.2, 3, &cpu)?,
                    seeded_normal(down, (d as f64).powf(-0.5), 4, &cpu)?,
                ]
            }
            Op::NormGrads(axis, rank) => {
                let (b, n) = (shape[0], shape[1]);
                let (size, dpre) = match axis {
                    Mixer::Channel => (d, vec![b, n, rank]),
                    Mixer::Token => (n, vec![b, rank, d]),
                };
                vec![
                    x,
                    (seeded_normal(d, 0.2, 2, &cpu)? + 1.0)?,
                    seeded_normal(&[rank, size], (size as f64).powf(-0.5), 4, &cpu)?,
                    seeded_normal(dpre, 1.0, 6, &cpu)?,
                    seeded_normal(shape, 1.0, 3, &cpu)?,
                ]
            }
            Op::UpGrads(rank, _) => {
                let rows = [shape[0], shape[1], rank];
                let keep = seeded_normal(&rows, 1.0, 7, &cpu)?.ge(0.0)?.to_dtype(DType::F64)?;
                vec![
                    x,
                    seeded_normal(&[d, rank], 0.2, 2, &cpu)?,
                    seeded_normal(&rows, 1.0, 3, &cpu)?,
                    seeded_normal(rank, 0.5, 4, &cpu)?,
                    (keep * 2.0)?,
                ]
            }
            Op::Softmax => vec![(x * 4.0)?],
            Op::CrossEntropy(_) => vec![(x * 2.0)?],
            Op::SplitHeads(_) => vec![x, seeded_normal(d, 0.5, 2, &cpu)?],
            Op::MergeHeads => vec![x],
            Op::BiasResidual => vec![x, seeded_normal(shape, 1.0, 2, &cpu)?, seeded_normal(d, 0.5, 3, &cpu)?],
            Op::Side(rank) => {
                let n = shape[1];
                let mut seed = 10;
                let mut next = |shape: &[usize], std: f64| {
                    seed += 1;
                    seeded_normal(shape, std, seed, &cpu)
                };
                let mut ts = vec![x];
                for axis in SIDE {
                    let size = if axis == Mixer::Channel { d } else { n };
                    ts.extend([(next(&[d], 0.2)? + 1.0)?, next(&[d], 0.2)?]);
                    let std = (size as f64).powf(-0.5);
                    ts.extend([next(&[rank, size], std)?, next(&[rank], 0.5)?, next(&[size, rank], 0.5)?]);
                    if axis == Mixer::Channel {
                        ts.push(next(&[size], 0.5)?);
                    }
                }
                ts.push(next(shape, 1.0)?);
                ts
            }
        })
    }

    /// The inputs that are not floats, after those of [`Op::inputs`] (cast with them): the class
    /// labels of `CrossEntropy` for `[batch, classes]` logits, classes 3, 10, 17, … wrapping
    /// around.
    fn labels(self, shape: &[usize]) -> Result<Option<Tensor>> {
        let Op::CrossEntropy(_) = self else { return Ok(None) };
        let labels: Vec<u32> = (0..shape[0]).map(|i| ((i * 7 + 3) % shape[1]) as u32).collect();
        Tensor::new(labels, &Device::Cpu).map(Some)
    }

    /// The shape of the op's output for inputs of `shape`.
    fn output_shape(self, shape: &[usize]) -> Vec<usize> {
        match self {
            Op::SplitHeads(heads) => {
                let (b, n, w3) = (shape[0], shape[1], shape[2]);
                vec![3, b, heads, n, w3 / (3 * heads)]
            }
            Op::MergeHeads => vec![shape[0], shape[2], shape[1] * shape[3]],
            Op::NormPool(..) => vec![shape[0], shape[2]],
            Op::NormDown(rank, _) => vec![shape[0], shape[1], rank],
            Op::NormGrads(..) => vec![shape.iter().product::<usize>() + 2 * shape[2]],
            Op::UpGrads(rank, _) => vec![shape[0] * shape[1] * rank + rank + shape[2]],
            Op::CrossEntropy(_) => vec![],
            _ => shape.to_vec(),
        }
    }

    /// How many leading inputs get a gradient.
    fn trainable(self, inputs: usize) -> usize {
        match self {
            Op::Residual | Op::LowRank(..) | Op::NormDown(..) | Op::NormGrads(..) | Op::UpGrads(..) => 0,
            Op::Side(_) => inputs - 1,
            Op::NormPool(..) | Op::CrossEntropy(_) => 1,
            _ => inputs,
        }
    }

    /// The names of the outputs `run` returns: the value, then each trainable input's gradient.
    fn outputs(self) -> Vec<String> {
        let grads: Vec<&str> = match self {
            Op::LayerNorm => vec!["dx", "dweight", "dbias"],
            Op::BiasGelu(_) => vec!["dx", "dbias"],
            Op::Residual | Op::LowRank(..) | Op::NormDown(..) | Op::NormGrads(..) | Op::UpGrads(..) => vec![],
            Op::Softmax => vec!["dx"],
            Op::SplitHeads(_) => vec!["dx", "dbias"],
            Op::MergeHeads | Op::NormPool(..) | Op::CrossEntropy(_) => vec!["dx"],
            Op::BiasResidual => vec!["dx", "dm", "dbias"],
            Op::Side(_) => {
                let mut g = vec!["dy"];
                for axis in SIDE {
                    g.extend(["dnorm.w", "dnorm.b", "ddown", "ddown.b", "dup"]);
                    if axis == Mixer::Channel {
                        g.push("dup.b");
                    }
                }
                g
            }
        };
        std::iter::once("y").chain(grads).map(String::from).collect()
    }

    /// The mixers of `Side` from its inputs (`y` and `b` excluded).
    fn mixes(params: &[Tensor]) -> Vec<ops::LowRankMix> {
        let mut it = params.iter().cloned();
        let mut mixes = Vec::new();
        for axis in SIDE {
            let mut take = || it.next().expect("inputs() lays out every parameter");
            let norm = Some((take(), take()));
            let (down, down_bias, up) = (take(), take(), take());
            let up_bias = (axis == Mixer::Channel).then(&mut take);
            mixes.push(ops::LowRankMix { axis, norm, down, down_bias, up, up_bias, mask: None });
        }
        mixes
    }

    /// The fused op; `side_network` puts its parameters' gradients into `sink`.
    fn fused(self, t: &[Tensor], sink: &ops::GradSink) -> Result<Tensor> {
        match self {
            Op::LayerNorm => ops::layer_norm(&t[0], &t[1], &t[2], 1e-6),
            Op::BiasGelu(dim) => ops::bias_gelu(&t[0], &t[1], dim),
            Op::Residual => {
                ops::residual(&t[0], &t[1], ops::Terms { minus: Some(&t[2]), plus: Some(&t[3]) }, Some(&t[4]))
            }
            Op::LowRank(axis, _) => {
                let update = ops::LowRank { axis, weight: &t[1], act: &t[2] };
                ops::residual(
                    &t[0],
                    update,
                    ops::Terms { minus: Some(&t[3]), plus: Some(&t[4]) },
                    Some(&t[5]),
                )
            }
            Op::NormDown(..) => ops::layer_norm_down(&t[0], &t[1], &t[2], &t[3], 1e-6),
            Op::NormGrads(axis, _) => {
                let down_t = t[2].t()?;
                let dx = ops::LowRank { axis, weight: &down_t, act: &t[3] };
                Self::norm_grads(&t[0], &t[1], dx.into(), &t[4])
            }
            Op::UpGrads(_, masked) => Self::up_grads(t, masked, ops::channel_up_grads),
            Op::Side(_) => {
                let last = t.len() - 1;
                let block = ops::SideBlock { features: t[last].clone(), mixers: Self::mixes(&t[1..last]) };
                ops::side_network(&t[0], &[block], 1e-6, sink)
            }
            Op::Softmax => ops::softmax(&t[0], 0.125),
            Op::SplitHeads(heads) => ops::split_heads(&t[0], &t[1], heads),
            Op::MergeHeads => ops::merge_heads(&t[0]),
            Op::BiasResidual => ops::bias_residual(&t[0], &t[1], &t[2]),
            Op::NormPool(first, last) => {
                let (w, b) = (Self::head_dtype(&t[1])?, Self::head_dtype(&t[2])?);
                ops::layer_norm_pool(&t[0], &w, &b, 1e-6, first..last)
            }
            Op::CrossEntropy(smoothing) => ops::cross_entropy(&t[0], &t[1], smoothing),
        }
    }

    /// `NormGrads`' output: the norm's gradients for `grad` with `add` added, concatenated.
    fn norm_grads(x: &Tensor, w: &Tensor, grad: ops::Operand<'_>, add: &Tensor) -> Result<Tensor> {
        let (dx, dw, db) = ops::layer_norm_grads(x, w, grad, Some(add), 1e-6)?;
        Tensor::cat(&[dx.flatten_all()?, dw.to_dtype(dx.dtype())?, db.to_dtype(dx.dtype())?], 0)
    }

    /// `UpGrads`' output from `f` (the op or its composition) on its inputs: `dpre` and the sums,
    /// concatenated.
    fn up_grads(t: &[Tensor], masked: bool, f: UpGradsFn) -> Result<Tensor> {
        let (rows, rank) = (t[0].dim(0)? * t[0].dim(1)?, t[3].dim(0)?);
        let two = |t: &Tensor, cols: usize| t.reshape((rows, cols));
        let mask = masked.then(|| two(&t[4], rank)).transpose()?;
        let g = f(&two(&t[0], t[0].dim(2)?)?, &t[1], &two(&t[2], rank)?, &t[3], mask.as_ref(), true, true)?;
        let sums = [g.down_bias, g.up_bias].map(|s| s.expect("asked for").to_dtype(g.dpre.dtype()));
        let [down_bias, up_bias] = sums;
        Tensor::cat(&[g.dpre.flatten_all()?, down_bias?, up_bias?], 0)
    }

    /// A head's parameter for `NormPool`: f32 (f64 in an f64 check), so that the op's kernels
    /// take it.
    fn head_dtype(t: &Tensor) -> Result<Tensor> {
        t.to_dtype(if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 })
    }

    /// The composition of candle primitives each op replaces.
    fn unfused(self, t: &[Tensor]) -> Result<Tensor> {
        match self {
            Op::LayerNorm => layer_norm_unfused(&t[0], &t[1], &t[2]),
            // As LoSA's head composed it: the stream cast to the head's dtype, the norm, the mean.
            Op::NormPool(first, last) => {
                let (w, b) = (Self::head_dtype(&t[1])?, Self::head_dtype(&t[2])?);
                layer_norm_unfused(&t[0].to_dtype(w.dtype())?, &w, &b)?
                    .narrow(1, first, last - first)?
                    .mean(1)
            }
            Op::BiasGelu(dim) => {
                let mut shape = vec![1; t[0].rank()];
                shape[dim] = t[1].dim(0)?;
                t[0].broadcast_add(&t[1].reshape(shape)?)?.gelu_erf()
            }
            Op::Residual => (&t[0] + &t[1])?.sub(&t[2])?.add(&t[3])?.broadcast_add(&t[4]),
            Op::LowRank(axis, _) => {
                let m = match axis {
                    Mixer::Channel => t[2].broadcast_matmul(&t[1].t()?)?,
                    Mixer::Token => t[1].broadcast_matmul(&t[2])?,
                };
                ops::residual(&t[0], &m, ops::Terms { minus: Some(&t[3]), plus: Some(&t[4]) }, Some(&t[5]))
            }
            // Per image as the token mixer's backward composed it: a batched GEMM.
            Op::NormDown(..) => ops::layer_norm(&t[0], &t[1], &t[2], 1e-6)?
                .broadcast_matmul(&t[3].transpose(D::Minus1, D::Minus2)?),
            Op::NormGrads(axis, _) => {
                let dx = match axis {
                    Mixer::Channel => t[3].broadcast_matmul(&t[2])?,
                    Mixer::Token => t[2].t()?.broadcast_matmul(&t[3])?,
                };
                Self::norm_grads(&t[0], &t[1], (&dx).into(), &t[4])
            }
            Op::UpGrads(_, masked) => Self::up_grads(t, masked, ops::channel_up_grads_composed),
            Op::Softmax => candle_nn::ops::softmax(&(&t[0] * 0.125)?, D::Minus1),
            Op::SplitHeads(heads) => {
                let (b, n, w3) = t[0].dims3()?;
                let split = t[0].broadcast_add(&t[1])?.reshape((b, n, 3, heads, w3 / (3 * heads)))?;
                split.permute((2, 0, 3, 1, 4))?.contiguous()
            }
            Op::MergeHeads => {
                let (b, h, n, hd) = t[0].dims4()?;
                t[0].transpose(1, 2)?.reshape((b, n, h * hd))
            }
            Op::BiasResidual => &t[0] + t[1].broadcast_add(&t[2])?,
            // The composition the training loss was before the fused op.
            Op::CrossEntropy(smoothing) => {
                let logp = candle_nn::ops::log_softmax(&t[0], D::Minus1)?;
                let picked = logp.gather(&t[1].unsqueeze(1)?, 1)?.squeeze(1)?;
                let nll = picked.neg()?.mean_all()?;
                let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
                (nll * (1.0 - smoothing))? + (uniform * smoothing)?
            }
            // LoSA's block as composed before ops::side_network (with the fused norm and bias + GELU).
            Op::Side(_) => {
                let (last, y) = (t.len() - 1, &t[0]);
                let z = (&t[last] + y)?;
                let mut h = z.clone();
                for mix in Self::mixes(&t[1..last]) {
                    let (w, b) = mix.norm.as_ref().expect("Side has norms");
                    let x = ops::layer_norm(&h, w, b, 1e-6)?;
                    let m = match mix.axis {
                        Mixer::Channel => {
                            ops::bias_gelu(&x.broadcast_matmul(&mix.down.t()?)?, &mix.down_bias, 2)?
                                .broadcast_matmul(&mix.up.t()?)?
                        }
                        Mixer::Token => mix.up.broadcast_matmul(&ops::bias_gelu(
                            &mix.down.broadcast_matmul(&x)?,
                            &mix.down_bias,
                            1,
                        )?)?,
                    };
                    h = match &mix.up_bias {
                        Some(bias) => (h + m.broadcast_add(bias)?)?,
                        None => (h + m)?,
                    };
                }
                y + (h - z)?
            }
        }
    }
}

/// [`ops::channel_up_grads`] or its composition.
type UpGradsFn = fn(&Tensor, &Tensor, &Tensor, &Tensor, Option<&Tensor>, bool, bool) -> Result<ops::UpGrads>;

/// The LayerNorm from candle primitives.
fn layer_norm_unfused(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
}

/// The output and the gradient of `sum(f(inputs) · probe)` for each of the first `trainable` inputs,
/// taken from the store that `backward` makes.
fn run(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    backward: impl Fn(&Tensor) -> Result<GradStore>,
    inputs: &[Tensor],
    trainable: usize,
    probe: &Tensor,
) -> Result<Vec<Tensor>> {
    let vars = inputs[..trainable].iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
    let ts: Vec<Tensor> =
        vars.iter().map(|v| v.as_tensor().clone()).chain(inputs[trainable..].iter().cloned()).collect();
    let y = f(&ts)?;
    let mut out = vec![y.clone()];
    if vars.is_empty() {
        return Ok(out);
    }
    // The probe in the output's dtype (a pooled norm's output is in its parameters').
    let grads = backward(&(&y * probe.to_dtype(y.dtype())?)?.sum_all()?)?;
    for v in &vars {
        out.push(grads.get(v.as_tensor()).cloned().ok_or(candle_core::Error::Msg("no gradient".into()))?);
    }
    Ok(out)
}

/// max |a − b| / max |b|, or infinity if `a` has a non-finite element (an unwritten NaN).
fn scaled_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f64> = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let b: Vec<f64> = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    if a.iter().any(|v| !v.is_finite()) || a.len() != b.len() {
        return Ok(f64::INFINITY);
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    Ok(a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-4,
        DType::F16 => 5e-3,
        _ => 4e-2,
    }
}

fn median_ms(device: &Device, runs: usize, f: impl Fn() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> std::process::ExitCode {
    match check() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: kernels [--device cuda|cpu] [--runs 20] [--frozen-only | --multi-tensor-only] \
                     [--frozen-shape 64,197,768,12]";

fn check() -> std::result::Result<bool, String> {
    let (mut device, mut runs, mut frozen_only, mut frozen) =
        (DeviceSpec::Auto, 20usize, false, [64, 197, 768, 12]);
    let mut multi_tensor_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--frozen-only" {
            frozen_only = true;
            continue;
        }
        if flag == "--multi-tensor-only" {
            multi_tensor_only = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => device = value.parse()?,
            "--runs" => runs = value.parse().map_err(|e| format!("--runs: {e}"))?,
            "--frozen-shape" => {
                let dims: Vec<usize> = value
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| format!("--frozen-shape: {e}"))?;
                frozen =
                    dims.try_into().map_err(|_| "--frozen-shape: batch,tokens,width,heads".to_string())?;
            }
            other => return Err(format!("unknown flag {other}; {USAGE}")),
        }
    }
    let device = device.open().map_err(|e| e.to_string())?;
    if multi_tensor_only {
        return multi_tensor(&device, runs).map_err(|e| e.to_string());
    }
    let ok = if frozen_only {
        true
    } else {
        let ops = check_on(&device, runs).map_err(|e| e.to_string())?;
        multi_tensor(&device, runs).map_err(|e| e.to_string())? && ops
    };
    frozen_table(&device, runs, frozen).map_err(|e| e.to_string())?;
    Ok(ok)
}

/// Forward only, as the frozen backbone runs them: each fused op of a ViT block against the
/// candle ops it replaced, for `[batch, tokens, width]` activations and `heads` heads.
fn frozen_table(device: &Device, runs: usize, [b, n, d, heads]: [usize; 4]) -> Result<()> {
    println!(
        "\n# frozen forward ops, batch {b}, tokens {n}, width {d}, {heads} heads: median of {runs} runs on {device:?} (ms)"
    );
    println!("| op | dtype | losa | replaced candle ops | candle / losa |");
    println!("|---|---|---:|---:|---:|");
    let hd = d / heads;
    let scale = (hd as f64).powf(-0.5);
    for dtype in [DType::F32, DType::BF16] {
        let t = |shape: &[usize], seed: u64| {
            seeded_normal(shape, 1.0, seed, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
        };
        let (x, w, bias) = (t(&[b, n, d], 1)?, t(&[d], 2)?, t(&[d], 3)?);
        let (qkv, qkv_bias) = (t(&[b, n, 3 * d], 4)?, t(&[3 * d], 5)?);
        let scores = t(&[b, heads, n, n], 6)?;
        let attended = t(&[b, heads, n, hd], 10)?;
        let (hidden, hidden_bias) = (t(&[b, n, 4 * d], 7)?, t(&[4 * d], 8)?);
        let m = t(&[b, n, d], 9)?;
        type Pair<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>, Box<dyn Fn() -> Result<()> + 'a>);
        let pairs: Vec<Pair> = vec![
            (
                "layer_norm",
                Box::new(|| ops::layer_norm(&x, &w, &bias, 1e-6).map(|_| ())),
                Box::new(|| candle_nn::ops::layer_norm(&x, &w, &bias, 1e-6).map(|_| ())),
            ),
            (
                "split_heads (+ q scaling before)",
                Box::new(|| ops::split_heads(&qkv, &qkv_bias, heads).map(|_| ())),
                Box::new(|| {
                    let s = qkv
                        .broadcast_add(&qkv_bias)?
                        .reshape((b, n, 3, heads, hd))?
                        .permute((2, 0, 3, 1, 4))?;
                    let _q = (s.get(0)?.contiguous()? * scale)?;
                    let _k = s.get(1)?.contiguous()?;
                    s.get(2)?.contiguous().map(|_| ())
                }),
            ),
            (
                "merge_heads",
                Box::new(|| ops::merge_heads(&attended).map(|_| ())),
                Box::new(|| attended.transpose(1, 2)?.reshape((b, n, d)).map(|_| ())),
            ),
            (
                "softmax (scaled)",
                Box::new(|| ops::softmax(&scores, scale).map(|_| ())),
                Box::new(|| candle_nn::ops::softmax_last_dim(&scores).map(|_| ())),
            ),
            (
                "bias_residual",
                Box::new(|| ops::bias_residual(&x, &m, &bias).map(|_| ())),
                Box::new(|| (&x + m.broadcast_add(&bias)?).map(|_| ())),
            ),
            (
                "bias_gelu (fc1)",
                Box::new(|| ops::bias_gelu(&hidden, &hidden_bias, 2).map(|_| ())),
                Box::new(|| hidden.broadcast_add(&hidden_bias)?.gelu_erf().map(|_| ())),
            ),
        ];
        for (name, ours, theirs) in &pairs {
            let (ours, theirs) = (median_ms(device, runs, ours)?, median_ms(device, runs, theirs)?);
            println!("| {name} | {dtype:?} | {ours:.3} | {theirs:.3} | {:.2} |", theirs / ours);
        }
    }
    Ok(())
}

fn check_on(device: &Device, runs: usize) -> Result<bool> {
    ops::poison_outputs(true);
    let cases: Vec<(Op, Vec<usize>)> = vec![
        (Op::LayerNorm, vec![64, 197, 768]),
        (Op::LayerNorm, vec![64, 197, 192]),
        (Op::LayerNorm, vec![3, 5, 50]),
        // The widest rows of the vector path (ViT-H's 1280) and, past it, the element path.
        (Op::LayerNorm, vec![2, 5, 1280]),
        (Op::LayerNorm, vec![2, 5, 1288]),
        (Op::BiasGelu(2), vec![64, 197, 8]),
        (Op::BiasGelu(1), vec![64, 8, 768]),
        (Op::BiasGelu(1), vec![7, 5, 3]),
        (Op::Residual, vec![64, 197, 768]),
        (Op::Residual, vec![7, 5, 3]),
        // LoSA's mixers on ViT-B/16; small odd shapes (the element path); a channel weight past
        // a block's shared memory (rank 40 at width 768 in f32 and bf16: written out, composed).
        (Op::LowRank(Mixer::Channel, 8), vec![64, 197, 768]),
        (Op::LowRank(Mixer::Token, 8), vec![64, 197, 768]),
        (Op::LowRank(Mixer::Channel, 3), vec![7, 5, 3]),
        (Op::LowRank(Mixer::Token, 3), vec![7, 5, 3]),
        (Op::LowRank(Mixer::Channel, 40), vec![2, 5, 768]),
        // A channel mixer's norm and down-projection on ViT-B/16 and ViT-Ti; small odd widths and
        // one past the vector path (the element path).
        (Op::NormDown(8, Projection::Shared), vec![64, 197, 768]),
        (Op::NormDown(8, Projection::Shared), vec![64, 197, 192]),
        (Op::NormDown(3, Projection::Shared), vec![3, 7, 10]),
        (Op::NormDown(4, Projection::Shared), vec![2, 5, 1288]),
        // A token mixer's down-projection gradient (a projection per image), on ViT-B/16 and on
        // small odd shapes and the element path.
        (Op::NormDown(8, Projection::PerImage), vec![64, 197, 768]),
        (Op::NormDown(3, Projection::PerImage), vec![3, 7, 10]),
        (Op::NormDown(2, Projection::PerImage), vec![3, 5, 1288]),
        // The same for the norm's backward, on the one-pass kernel's shapes (rank 1 included) and
        // on a width past it (written out there).
        (Op::NormGrads(Mixer::Channel, 8), vec![64, 197, 768]),
        (Op::NormGrads(Mixer::Token, 8), vec![64, 197, 768]),
        (Op::NormGrads(Mixer::Channel, 1), vec![4, 197, 192]),
        (Op::NormGrads(Mixer::Token, 3), vec![4, 197, 192]),
        (Op::NormGrads(Mixer::Channel, 3), vec![3, 7, 10]),
        // A channel mixer's backward up to its down-projection on ViT-B/16 and ViT-Ti; ranks past
        // a block's chunk of eight; rows of an odd count of vectors; a width of no whole vectors
        // (composed on the GPU).
        (Op::UpGrads(8, true), vec![64, 197, 768]),
        (Op::UpGrads(8, false), vec![64, 197, 192]),
        (Op::UpGrads(11, true), vec![3, 7, 48]),
        (Op::UpGrads(8, true), vec![2, 5, 1288]),
        (Op::UpGrads(3, false), vec![3, 7, 10]),
        (Op::Side(8), vec![64, 197, 768]),
        (Op::Side(8), vec![64, 197, 192]),
        (Op::Side(3), vec![3, 7, 10]),
        (Op::Softmax, vec![64, 12, 197, 197]),
        (Op::Softmax, vec![3, 2, 5, 37]),
        // Rows past the register-cached length (ViT-B/16 at 384 px: 577 tokens).
        (Op::Softmax, vec![2, 3, 4, 577]),
        (Op::SplitHeads(12), vec![64, 197, 2304]),
        (Op::SplitHeads(3), vec![2, 5, 36]),
        (Op::MergeHeads, vec![64, 12, 197, 64]),
        (Op::MergeHeads, vec![2, 3, 5, 4]),
        (Op::BiasResidual, vec![64, 197, 768]),
        (Op::BiasResidual, vec![7, 5, 3]),
        // LoSA's head on ViT-B/16: the patch tokens' mean, and the class token; then small odd
        // shapes, and a width past the vector path (composed on the GPU).
        (Op::NormPool(1, 197), vec![64, 197, 768]),
        (Op::NormPool(0, 1), vec![64, 197, 768]),
        (Op::NormPool(2, 7), vec![3, 7, 48]),
        (Op::NormPool(1, 5), vec![2, 5, 1288]),
        // The loss on a VTAB batch (64 images; 100 classes, CIFAR-100's; 397, SUN397's) and on
        // a small odd one.
        (Op::CrossEntropy(0.0), vec![64, 100]),
        (Op::CrossEntropy(0.1), vec![64, 397]),
        (Op::CrossEntropy(0.1), vec![3, 5]),
    ];
    let mut ok = true;
    println!("# fused ops on {device:?} against the CPU fallback (error = max |device − cpu| / max |cpu|)");
    println!("| op | shape | dtype | output | error | tolerance | result |");
    println!("|---|---|---|---|---:|---:|---|");
    for (op, shape) in &cases {
        // f64 on the small odd shapes only: on ViT-B shapes its CPU reference is the slow part of
        // the whole check, and the f64 kernels share their code with the others.
        let large = shape.iter().product::<usize>() > 1 << 20;
        let dtypes: &[DType] = if large {
            &[DType::F32, DType::BF16, DType::F16]
        } else {
            &[DType::F32, DType::BF16, DType::F16, DType::F64]
        };
        for &dtype in dtypes {
            let mut inputs: Vec<Tensor> =
                op.inputs(shape)?.iter().map(|t| t.to_dtype(dtype)).collect::<Result<_>>()?;
            inputs.extend(op.labels(shape)?);
            let probe = seeded_normal(op.output_shape(shape), 1.0, 9, &Device::Cpu)?.to_dtype(dtype)?;
            let trainable = op.trainable(inputs.len());
            let (cpu_sink, sink) = (ops::GradSink::new(&Device::Cpu)?, ops::GradSink::new(device)?);
            let cpu = run(|t| op.fused(t, &cpu_sink), |l| cpu_sink.backward(l), &inputs, trainable, &probe)?;
            let on_device: Vec<Tensor> = inputs.iter().map(|t| t.to_device(device)).collect::<Result<_>>()?;
            let probe = probe.to_device(device)?;
            let dev = run(|t| op.fused(t, &sink), |l| sink.backward(l), &on_device, trainable, &probe)?;
            for ((name, a), b) in op.outputs().iter().zip(&dev).zip(&cpu) {
                let err = scaled_err(a, b)?;
                let pass = err <= tolerance(dtype);
                ok &= pass;
                println!(
                    "| {} | {shape:?} | {dtype:?} | {name} | {err:.2e} | {:.0e} | {} |",
                    op.name(),
                    tolerance(dtype),
                    if pass { "pass" } else { "FAIL" }
                );
            }
        }
    }
    ops::poison_outputs(false);
    println!("\n# forward + backward, median of {runs} runs on {device:?} (ms)");
    println!("| op | shape | dtype | fused | unfused | unfused / fused |");
    println!("|---|---|---|---:|---:|---:|");
    for (op, shape) in &cases {
        for dtype in [DType::F32, DType::BF16] {
            let mut inputs: Vec<Tensor> = op
                .inputs(shape)?
                .iter()
                .map(|t| t.to_dtype(dtype)?.to_device(device))
                .collect::<Result<_>>()?;
            inputs.extend(op.labels(shape)?.map(|l| l.to_device(device)).transpose()?);
            let probe = seeded_normal(op.output_shape(shape), 1.0, 9, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?;
            let trainable = op.trainable(inputs.len());
            let sink = ops::GradSink::new(device)?;
            let fused = median_ms(device, runs, || {
                run(|t| op.fused(t, &sink), |l| sink.backward(l), &inputs, trainable, &probe).map(|_| ())
            })?;
            let unfused = median_ms(device, runs, || {
                run(|t| op.unfused(t), Tensor::backward, &inputs, trainable, &probe).map(|_| ())
            })?;
            println!(
                "| {} | {shape:?} | {dtype:?} | {fused:.3} | {unfused:.3} | {:.2} |",
                op.name(),
                unfused / fused
            );
        }
    }
    println!("\nkernel check: {}", if ok { "all pass" } else { "FAILURES above" });
    Ok(ok)
}

/// The parameter shapes of LoSA's default side network and head on ViT-B/16 (width 768, 197
/// tokens, ranks 8, 100 classes): per block a channel mixer (norm, down, its bias, up, its bias)
/// and a token mixer (norm, down, its bias, up).
fn losa_b16_shapes() -> Vec<Vec<usize>> {
    let (d, n, r) = (768, 197, 8);
    let mut shapes = Vec::new();
    for _ in 0..12 {
        shapes.extend([vec![d], vec![d], vec![r, d], vec![r], vec![d, r], vec![d]]);
        shapes.extend([vec![d], vec![d], vec![r, n], vec![r], vec![n, r]]);
    }
    shapes.extend([vec![100, d], vec![100]]);
    shapes
}

/// AdamW composed from candle ops, as the optimiser ran it before `ops::adamw_update`:
/// `(p, m, v)`.
fn adamw_composed(
    p: &Tensor,
    g: &Tensor,
    (m, v): (&Tensor, &Tensor),
    h: &ops::AdamWStep,
) -> Result<[Tensor; 3]> {
    let [b1, b2] = h.betas;
    let (m, v) = (((m * b1)? + (g * (1.0 - b1))?)?, ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?);
    let t = h.step as i32;
    let denom = ((v.sqrt()? / (1.0 - b2.powi(t)).sqrt())? + h.eps)?;
    let p = (p - ((&m / denom)? * (h.lr / (1.0 - b1.powi(t))))?)?;
    Ok([p, m, v])
}

/// Tensors of LoSA's B/16 shapes, seeded, in `dtype` on `device`.
fn shaped(shapes: &[Vec<usize>], std: f64, seed: u64, dtype: DType, device: &Device) -> Result<Vec<Tensor>> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            seeded_normal(s.as_slice(), std, seed + i as u64, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)
        })
        .collect()
}

/// The multi-tensor ops on `device` against the CPU: AdamW (parameters and moments after three
/// steps, the second clipped; more tensors than one launch takes, of varied sizes and weight
/// decays) and `cast_all` (between f32 and each other float type); then each timed over LoSA's
/// B/16 parameters against one op per tensor.
fn multi_tensor(device: &Device, runs: usize) -> Result<bool> {
    let mut ok = true;
    ops::poison_outputs(true);
    // 61 tensors (two launches on CUDA) of 1 to 40 001 elements.
    let shapes: Vec<Vec<usize>> = (0..61).map(|i| vec![if i == 7 { 40_001 } else { 1 + 37 * i }]).collect();
    println!(
        "\n# adamw_update on {device:?} against the CPU, {} tensors in one update, after 3 steps (error as above)",
        shapes.len()
    );
    println!("| dtype | output | error | tolerance | result |");
    println!("|---|---|---:|---:|---|");
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let run_on = |dev: &Device| -> Result<(Vec<Var>, Vec<Tensor>)> {
            let params = shaped(&shapes, 1.0, 1, dtype, dev)?
                .iter()
                .map(Var::from_tensor)
                .collect::<Result<Vec<_>>>()?;
            let states = params
                .iter()
                .map(|p| Tensor::zeros((2, p.elem_count()), dtype, dev))
                .collect::<Result<Vec<_>>>()?;
            for (step, clip) in [(1u64, 1.0), (2, 0.7), (3, 1.0)] {
                let grads = shaped(&shapes, 0.1, 100 * step, dtype, dev)?;
                let h = ops::AdamWStep { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, step };
                let slots: Vec<_> = params
                    .iter()
                    .zip(&grads)
                    .zip(&states)
                    .enumerate()
                    .map(|(i, ((p, grad), state))| ops::AdamWParam {
                        param: p.as_tensor(),
                        grad,
                        state,
                        weight_decay: if i % 2 == 0 { 0.05 } else { 0.0 },
                    })
                    .collect();
                ops::adamw_update(&slots, &Tensor::new(&[clip], dev)?, &h)?;
            }
            Ok((params, states))
        };
        let (cpu, dev) = (run_on(&Device::Cpu)?, run_on(device)?);
        let flat = |ts: Vec<Tensor>| -> Result<Tensor> {
            let ts =
                ts.iter().map(|t| t.flatten_all()?.to_device(&Device::Cpu)).collect::<Result<Vec<_>>>()?;
            Tensor::cat(&ts, 0)
        };
        let params = |vars: &[Var]| flat(vars.iter().map(|v| v.as_tensor().clone()).collect());
        for (name, a, b) in
            [("parameters", params(&dev.0)?, params(&cpu.0)?), ("moments", flat(dev.1)?, flat(cpu.1)?)]
        {
            let err = scaled_err(&a, &b)?;
            let pass = err <= tolerance(dtype);
            ok &= pass;
            let verdict = if pass { "pass" } else { "FAIL" };
            println!("| {dtype:?} | {name} | {err:.2e} | {:.0e} | {verdict} |", tolerance(dtype));
        }
    }
    let losa = losa_b16_shapes();
    println!(
        "\n# cast_all on {device:?} against the CPU, in one call: LoSA's {} B/16 parameters, or the {} tensors above (exact: error 0)",
        losa.len(),
        shapes.len()
    );
    println!("| tensors | from | to | error | result |");
    println!("|---|---|---|---:|---|");
    let pairs =
        [DType::BF16, DType::F16, DType::F64].into_iter().flat_map(|d| [(DType::F32, d), (d, DType::F32)]);
    for ((from, to), (name, set)) in
        pairs.flat_map(|p| [(p, ("LoSA B/16", &losa)), (p, ("odd sizes", &shapes))])
    {
        let host = shaped(set, 1.0, 1, from, &Device::Cpu)?;
        let on_device = host.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?;
        let (a, b) = (ops::cast_all(&on_device, to)?, ops::cast_all(&host, to)?);
        let mut err = 0.0f64;
        for (a, b) in a.iter().zip(&b) {
            err = err.max(scaled_err(a, b)?);
        }
        ok &= err == 0.0;
        println!("| {name} | {from:?} | {to:?} | {err:.2e} | {} |", if err == 0.0 { "pass" } else { "FAIL" });
    }
    ops::poison_outputs(false);

    let total: usize = losa.iter().map(|s| s.iter().product::<usize>()).sum();
    let h = ops::AdamWStep { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, step: 3 };
    let params = shaped(&losa, 1.0, 1, DType::F32, device)?
        .iter()
        .map(Var::from_tensor)
        .collect::<Result<Vec<_>>>()?;
    let grads = shaped(&losa, 0.1, 500, DType::F32, device)?;
    let states = params
        .iter()
        .map(|p| Tensor::zeros((2, p.elem_count()), DType::F32, device))
        .collect::<Result<Vec<_>>>()?;
    let slots: Vec<_> = params
        .iter()
        .zip(&grads)
        .zip(&states)
        .map(|((p, grad), state)| ops::AdamWParam { param: p.as_tensor(), grad, state, weight_decay: 0.0 })
        .collect();
    let clip = Tensor::new(&[1.0f64], device)?;
    let together = median_ms(device, runs, || ops::adamw_update(&slots, &clip, &h))?;
    let each =
        median_ms(device, runs, || slots.iter().try_for_each(|s| ops::adamw_update(&[*s], &clip, &h)))?;
    let composed = median_ms(device, runs, || {
        params.iter().zip(&slots).try_for_each(|(p, s)| {
            let (m, v) = (s.state.get(0)?.reshape(p.shape())?, s.state.get(1)?.reshape(p.shape())?);
            let [new, _, _] = adamw_composed(p.as_tensor(), s.grad, (&m, &v), &h)?;
            p.set(&new)
        })
    })?;
    let cast_together = median_ms(device, runs, || ops::cast_all(&grads, DType::BF16).map(|_| ()))?;
    let cast_each =
        median_ms(device, runs, || grads.iter().try_for_each(|g| g.to_dtype(DType::BF16).map(|_| ())))?;
    println!(
        "\n# over LoSA's ViT-B/16 parameters ({} tensors, {total} f32 values), median of {runs} runs on {device:?} (ms)",
        losa.len()
    );
    println!("| op | all in one call | one call per tensor | composed (candle ops) |");
    println!("|---|---:|---:|---:|");
    println!("| AdamW step (adamw_update) | {together:.3} | {each:.3} | {composed:.3} |");
    println!("| f32 to bf16 (cast_all / to_dtype) | {cast_together:.3} | {cast_each:.3} | |");
    Ok(ok)
}
