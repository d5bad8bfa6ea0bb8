//! LoSA's side network, `y_i = y_{i−1} + g_i(b_i + y_{i−1})` block after block, as a single
//! differentiable op.
//!
//! Each `g` is a chain of low-rank mixers: `h = z = b + y`, then for each mixer
//! `h = h + Up(act(Down(LN(h)) + bd)) + bu`, and `g = h − z` (so `y + g = h − b`). Built from candle
//! ops this is about twelve graph nodes per mixer, and candle's backward gives every input of
//! every node a fresh zero tensor and adds the node's gradient into it (`GradStore::or_insert`),
//! even for inputs that need none, such as the backbone's features `b`: some fifteen full-size
//! `[batch, tokens, width]` tensors written and read again per block for bookkeeping alone.
//!
//! Here the forward runs without a graph — matmuls on candle's matmul (gemm / cuBLAS); norm,
//! bias + GELU and the residual sums on this module's kernels, one pass each; the rank-sized
//! products that meet a full-size tensor (the up-projection the residual adds, a channel mixer's
//! norm and down-projection, and in the backward the gradient at the normed input, which the
//! norm's backward reads) computed where they are used instead of written out and read back
//! (low_rank.rs, norm_down.rs), and a channel mixer's gradient at its pre-activation with its
//! biases' sums from one read of the gradient at its output (up_grads.rs) — and one graph node
//! with the hand-written backward below carries the gradient to the first block's `y`. Across
//! blocks the network is one chain of mixers (the features enter as constants: `y_i = h − b_i`
//! reaches the next block only through `z = b_{i+1} + y_i`), so one node serves them all, and
//! the stream's gradient passes from block to block without candle's zero-fill and addition (four
//! full-size passes per block). The parameters' gradients, computed in the same backward, go to
//! a [`GradSink`] rather than through the graph (a node has at most three inputs, and routing a
//! gradient to each of eleven small tensors per block through candle's bookkeeping costs some
//! fifty kernel launches per block; see grad_sink.rs). The node keeps each mixer's input `h` and
//! its rank-sized pre-activation and activation; the normed input is recomputed in the backward
//! (one pass over `h`) instead of kept, which saves one full-size tensor per mixer.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, bail};

use super::GradSink;
use super::LowRank;
use super::bias_gelu::bias_gelu_grads;
use super::layer_norm::{layer_norm_dparams, layer_norm_dx, layer_norm_grads};
use super::norm_down::layer_norm_down;
use super::residual::{Terms, residual, residual_storage};
use super::up_grads::channel_up_grads;
use super::{bias_gelu, cast_all, layer_norm, sum_along};
use crate::recipe::Mixer;
use crate::vit::Linear;

/// One low-rank mixer, as [`side_network`] runs it (activation: GELU).
#[derive(Debug, Clone)]
pub struct LowRankMix {
    /// Which axis it mixes: the width (channel) or the tokens (token).
    pub axis: Mixer,
    /// LayerNorm scale and shift over the width, if the mixer normalises its input.
    pub norm: Option<(Tensor, Tensor)>,
    /// `[rank, size]`, size the width (channel) or the number of tokens (token).
    pub down: Tensor,
    /// `[rank]`.
    pub down_bias: Tensor,
    /// `[size, rank]`.
    pub up: Tensor,
    /// `[width]`, if any (added along the width, whichever axis the mixer mixes).
    pub up_bias: Option<Tensor>,
    /// A dropout mask on the activation (zeros and 1/(1 − p)), shaped like it: `[batch, tokens,
    /// rank]` (channel) or `[batch, rank, width]` (token).
    pub mask: Option<Tensor>,
}

impl LowRankMix {
    /// Its parameters in a fixed order: norm scale and shift, down, down bias, up, up bias.
    fn params(&self) -> Vec<&Tensor> {
        let norm = self.norm.iter().flat_map(|(w, b)| [w, b]);
        norm.chain([&self.down, &self.down_bias, &self.up]).chain(&self.up_bias).collect()
    }

    /// Its parameters and mask, in [`LowRankMix::params`] order then the mask.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.params();
        all.extend(&self.mask);
        all
    }

    /// This mixer with `tensors` (from [`LowRankMix::tensors`], cast) in place of its own.
    fn with(&self, tensors: &mut impl Iterator<Item = Tensor>) -> Result<Self> {
        let mut next =
            || tensors.next().ok_or_else(|| candle_core::Error::Msg("side_network: too few tensors".into()));
        let norm = match &self.norm {
            Some(_) => Some((next()?, next()?)),
            None => None,
        };
        let (down, down_bias, up) = (next()?, next()?, next()?);
        let up_bias = self.up_bias.as_ref().map(|_| next()).transpose()?;
        let mask = self.mask.as_ref().map(|_| next()).transpose()?;
        Ok(Self { axis: self.axis, norm, down, down_bias, up, up_bias, mask })
    }

    /// `LN(h)`, or `h` with no norm.
    fn normed(&self, h: &Tensor, eps: f64) -> Result<Tensor> {
        match &self.norm {
            Some((w, b)) => layer_norm(h, w, b, eps),
            None => Ok(h.clone()),
        }
    }

    /// `Down(LN(h))` before its bias: `x·Wdᵀ` [batch, tokens, rank] (with a norm, one op that
    /// never writes the normed `x`; without, a linear layer: one GEMM over all the batch's tokens)
    /// or `Wd·x` [batch, rank, width].
    fn down(&self, h: &Tensor, eps: f64) -> Result<Tensor> {
        match (self.axis, &self.norm) {
            (Mixer::Channel, Some((w, b))) => layer_norm_down(h, w, b, &self.down, eps),
            (Mixer::Channel, None) => Linear { weight: self.down.clone(), bias: None }.forward(h),
            (Mixer::Token, _) => self.down.broadcast_matmul(&self.normed(h, eps)?),
        }
    }

    /// The dimension of the pre-activation that the down bias runs along.
    fn rank_dim(&self) -> usize {
        match self.axis {
            Mixer::Channel => 2,
            Mixer::Token => 1,
        }
    }

    /// `act(pre + bd)`, dropped out.
    fn activation(&self, pre: &Tensor) -> Result<Tensor> {
        let a = bias_gelu(pre, &self.down_bias, self.rank_dim())?;
        match &self.mask {
            Some(mask) => a * mask,
            None => Ok(a),
        }
    }

    /// `Up(a)` before its bias, `a·Wuᵀ` or `Wu·a` ([batch, tokens, width]), as the residual adds
    /// it: computed where it is added, never written out.
    fn up<'a>(&'a self, a: &'a Tensor) -> LowRank<'a> {
        LowRank { axis: self.axis, weight: &self.up, act: a }
    }
}

/// One block of the side network: the frozen backbone's block output `b_i` and the mixers of
/// `g_i`, in order.
#[derive(Debug, Clone)]
pub struct SideBlock {
    /// `[batch, tokens, width]`, of the stream's dtype; never differentiated.
    pub features: Tensor,
    /// At least one.
    pub mixers: Vec<LowRankMix>,
}

/// `y_i = y_{i−1} + g_i(b_i + y_{i−1})` for the blocks in order, from `y_0 = y` (see the module
/// docs): `y_L`, differentiable in `y`, never in the features. Features and stream are
/// `[batch, tokens, width]`, of one dtype, in which the network computes (matmuls, norms and
/// activations, as an autocast region would); the parameters may be of another dtype (f32 master
/// weights for a bf16 network) and are cast once per call. Each parameter is a variable or a
/// constant (a tensor computed from a variable is refused: its gradient would arrive after
/// candle's backward and never reach the variable). The backward puts every variable's gradient
/// into `sink`, in its own dtype (the weights' computed by matrix products in the network's
/// dtype, the sums for norms and biases accumulated in f32): they reach a gradient store through
/// [`GradSink::deliver`] or [`GradSink::backward`], not through candle's `backward` alone. All on
/// one device.
pub fn side_network(y: &Tensor, blocks: &[SideBlock], eps: f64, sink: &GradSink) -> Result<Tensor> {
    if blocks.is_empty() || blocks.iter().any(|b| b.mixers.is_empty()) {
        bail!("side_network: every block needs mixers, and there must be a block");
    }
    if y.rank() != 3 {
        bail!("side_network: the stream {:?} must be [batch, tokens, width]", y.dims());
    }
    for (i, b) in blocks.iter().map(|b| &b.features).enumerate() {
        if b.dims() != y.dims() {
            bail!("side_network: block {i}'s features {:?} and the stream {:?} differ", b.dims(), y.dims());
        }
        if b.dtype() != y.dtype() {
            bail!(
                "side_network: block {i}'s features in {:?} and the stream in {:?} must be of one dtype",
                b.dtype(),
                y.dtype()
            );
        }
    }
    let mixers: Vec<&LowRankMix> = blocks.iter().flat_map(|b| &b.mixers).collect();
    let params: Vec<Tensor> = mixers.iter().flat_map(|m| m.params()).cloned().collect();
    if params.iter().any(|p| p.track_op() && !p.is_variable()) {
        bail!("side_network: a parameter computed from a variable; pass the variable itself");
    }
    // Detached, in the network's dtype (f32 master weights cast once per call, as autocast casts
    // them), all in one multi-tensor cast.
    let all: Vec<Tensor> = mixers.iter().flat_map(|m| m.tensors()).cloned().collect();
    let mut cast = cast_all(&all, y.dtype())?.into_iter();
    let mixers: Vec<LowRankMix> = mixers.iter().map(|m| m.with(&mut cast)).collect::<Result<_>>()?;
    let (mut inputs, mut pres, mut acts, mut last) = (Vec::new(), Vec::new(), Vec::new(), None);
    let features: Vec<Tensor> =
        blocks.iter().map(|b| b.features.detach().contiguous()).collect::<Result<_>>()?;
    // The first block's input z = b_1 + y; each later block's comes from the last residual of the
    // block before.
    let mut h = residual(&features[0], &y.detach(), Terms::default(), None)?;
    let mut chain = mixers.iter();
    for (i, block) in blocks.iter().enumerate() {
        for k in 0..block.mixers.len() {
            let Some(mix) = chain.next() else { bail!("side_network: mixers lost") };
            let pre = mix.down(&h, eps)?;
            let a = mix.activation(&pre)?;
            let bias = mix.up_bias.as_ref();
            let next = if k + 1 < block.mixers.len() {
                Some(residual(&h, mix.up(&a), Terms::default(), bias)?)
            } else if let Some(next) = features.get(i + 1) {
                // The next block's z = y_i + b_{i+1} = h + m + bu − b_i + b_{i+1}, in one pass
                // (y_i itself is never needed).
                let terms = Terms { minus: Some(&features[i]), plus: Some(next) };
                Some(residual(&h, mix.up(&a), terms, bias)?)
            } else {
                last = Some(features[i].clone());
                None
            };
            inputs.push(h.clone());
            pres.push(pre);
            acts.push(a);
            if let Some(next) = next {
                h = next;
            }
        }
    }
    let last = Mutex::new(last);
    let op = SideNetwork { mixers, params, sink: sink.clone(), inputs, pres, acts, last, eps };
    y.apply_op2(sink.handle(), op)
}

/// The graph node of one [`side_network`]: its inputs are `y_0` and the sink's handle (standing
/// for the parameters); its forward writes `y_L = h + m + bu − b_L` (the last mixer's residual,
/// with `−z + y` folded in).
struct SideNetwork {
    /// Every block's mixers in order, detached, in the network's compute dtype.
    mixers: Vec<LowRankMix>,
    /// The parameters as given, in [`LowRankMix::params`] order, mixer by mixer.
    params: Vec<Tensor>,
    /// Where the backward puts their gradients.
    sink: GradSink,
    /// Each mixer's input `h` (a block's first: `z = b + y`).
    inputs: Vec<Tensor>,
    /// Each mixer's pre-activation `Down(LN(h))` without its bias (rank-sized).
    pres: Vec<Tensor>,
    /// Each mixer's activation, dropped out (rank-sized; kept, as recomputing it costs an erf per
    /// element, which dominates the element-wise work on the CPU).
    acts: Vec<Tensor>,
    /// What only the forward reads, until it consumes it: `b_L` (detached, contiguous). Dropped
    /// then, so the graph does not hold a copy of the features (on CUDA an f32 copy of the bf16
    /// block output) through the backward.
    last: Mutex<Option<Tensor>>,
    eps: f64,
}

impl SideNetwork {
    fn output(&self) -> Result<(Storage, Shape)> {
        let last = self.last.lock().ok().and_then(|mut last| last.take());
        let (Some(features), Some(h), Some(a), Some(mix)) =
            (last, self.inputs.last(), self.acts.last(), self.mixers.last())
        else {
            bail!("side_network: forward ran twice");
        };
        let terms = Terms { minus: Some(&features), plus: None };
        residual_storage(h, mix.up(a).into(), terms, mix.up_bias.as_ref())
    }

    /// The gradients of mixer `k`'s parameters (in [`LowRankMix::params`] order, in the
    /// accumulation dtype; when `params`) and of its input `h_k` (when `input`), for `dm`, the
    /// gradient of its output `h_{k+1} = h_k + Up(..) + bu`: `dm` plus the gradient through the
    /// mixer, summed in the norm's backward pass. What is not asked for is not computed: the first
    /// block's stream is the backbone's detached output and needs no gradient.
    fn mixer_grads(
        &self,
        k: usize,
        dm: &Tensor,
        params: bool,
        input: bool,
    ) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        let (mix, h, pre, a) = (&self.mixers[k], &self.inputs[k], &self.pres[k], &self.acts[k]);
        let (batch, tokens, width) = dm.dims3()?;
        let rank = mix.down.dim(0)?;
        let mut grads = Vec::new();
        // dpre: the gradient at the pre-activation, [batch, tokens, rank] (channel) or [batch,
        // rank, width] (token).
        let up_bias = params && mix.up_bias.is_some();
        let dpre = match mix.axis {
            // m = a·Wuᵀ over rows r = (batch, token): dWu = dmᵀ·a, da = dm·Wu, dWd = dpreᵀ·x,
            // dx = dpre·Wd, as [rows, ·] matrices; dpre and the biases' sums from one read of dm.
            Mixer::Channel => {
                let rows = batch * tokens;
                let dm2 = dm.reshape((rows, width))?;
                let by_row = |t: &Tensor| t.reshape((rows, rank));
                let mask = mix.mask.as_ref().map(by_row).transpose()?;
                let pre = by_row(pre)?;
                let g =
                    channel_up_grads(&dm2, &mix.up, &pre, &mix.down_bias, mask.as_ref(), params, up_bias)?;
                if params {
                    let x = mix.normed(h, self.eps)?;
                    let d_down = g.dpre.t()?.matmul(&x.reshape((rows, width))?)?;
                    let d_up = dm2.t()?.matmul(&by_row(a)?)?;
                    let Some(d_down_bias) = g.down_bias else { bail!("side_network: no down-bias sum") };
                    grads.extend([d_down, d_down_bias, d_up]);
                    grads.extend(g.up_bias);
                }
                g.dpre.reshape((batch, tokens, rank))?
            }
            // m = Wu·a per image: dWu = Σ dm·aᵀ, da = Wuᵀ·dm, dWd = Σ dpre·xᵀ, dx = Wdᵀ·dpre.
            Mixer::Token => {
                let da = mix.up.t()?.broadcast_matmul(dm)?;
                // The mask, the activation's gradient and the down bias's sum in one launch.
                let (dpre, d_down_bias) =
                    bias_gelu_grads(pre, &mix.down_bias, &da, mix.mask.as_ref(), 1, params)?;
                if params {
                    let per_image = |t: Tensor| sum_along(&t, t.elem_count() / batch, 1);
                    // dWd = Σ_b dpre_b·LN(h_b)ᵀ; with a norm, as the norm and projection op with
                    // dpre_b as image b's projection ([batch, tokens, rank]), so that the normed
                    // stream is never written out.
                    let d_down = match &mix.norm {
                        Some((w, b)) => per_image(layer_norm_down(h, w, b, &dpre, self.eps)?)?
                            .reshape((tokens, rank))?
                            .t()?
                            .contiguous()?,
                        None => per_image(dpre.matmul(&h.transpose(1, 2)?)?)?.reshape((rank, tokens))?,
                    };
                    let d_up = per_image(dm.matmul(&a.transpose(1, 2)?)?)?.reshape((tokens, rank))?;
                    let Some(d_down_bias) = d_down_bias else { bail!("side_network: no down-bias sum") };
                    grads.extend([d_down, d_down_bias, d_up]);
                    if up_bias {
                        grads.push(sum_along(dm, width, 1)?);
                    }
                }
                dpre
            }
        };
        // The gradient at the mixer's normed input, dpre·Wd or Wdᵀ·dpre: a low-rank product that
        // the kernels below compute where they read it, for `h_k` and for the norm's parameters.
        let down_t = mix.down.t()?;
        let dx = LowRank { axis: mix.axis, weight: &down_t, act: &dpre };
        let Some((w, _)) = &mix.norm else {
            // h_{k+1} = h_k + Up(..): dh_k = dm + dx, one residual.
            return Ok((grads, input.then(|| residual(dm, dx, Terms::default(), None)).transpose()?));
        };
        // The norm's gradients: for its input (plus the residual's `dm`), its parameters, or both
        // (in one pass on CUDA, reading dx as its product).
        let dh = match (params, input) {
            (false, false) => None,
            (false, true) => Some(layer_norm_dx(h, w, &dx.materialise()?, Some(dm), self.eps)?),
            (true, false) => {
                let (dw, db) = layer_norm_dparams(h, &dx.materialise()?, self.eps)?;
                grads.splice(0..0, [dw, db]);
                None
            }
            (true, true) => {
                let (dh, dw, db) = layer_norm_grads(h, w, dx.into(), Some(dm), self.eps)?;
                grads.splice(0..0, [dw, db]);
                Some(dh)
            }
        };
        Ok((grads, dh))
    }
}

impl CustomOp2 for SideNetwork {
    fn name(&self) -> &'static str {
        "losa-side-network"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        match self.output()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => bail!("side_network: features and stream on different devices"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.output()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => bail!("side_network: features and stream on different devices"),
        }
    }

    fn bwd(
        &self,
        y: &Tensor,
        _handle: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Mixer k's output is h_{k+1} = h_k + m_k + bu_k, within a block and across a block's end
        // alike (the next block's z = b_{i+1} + y_i = h + m + bu − b_i + b_{i+1}, the features
        // constants), so dL/dh_k = dL/dh_{k+1} + (through mixer k), from dL/dh_K = grad; and the
        // first block's z = b + y gives dL/dy = dL/dh_0.
        let params = self.params.iter().any(Tensor::track_op);
        let mut dh = grad.contiguous()?;
        let mut per_mixer = Vec::with_capacity(self.mixers.len());
        for k in (0..self.mixers.len()).rev() {
            let (grads, input) = self.mixer_grads(k, &dh, params, k > 0 || y.track_op())?;
            per_mixer.push(grads);
            if let Some(input) = input {
                dh = input;
            }
        }
        // Each variable's gradient in its own dtype, cast together (one launch on CUDA).
        let grads: Vec<(&Tensor, Tensor)> = self
            .params
            .iter()
            .zip(per_mixer.into_iter().rev().flatten())
            .filter(|(p, _)| p.track_op())
            .collect();
        for dtype in super::distinct(grads.iter().map(|(p, _)| p.dtype())) {
            let (params, group): (Vec<&Tensor>, Vec<Tensor>) =
                grads.iter().filter(|(p, _)| p.dtype() == dtype).map(|(p, g)| (*p, g.clone())).unzip();
            for (p, g) in params.into_iter().zip(cast_all(&group, dtype)?) {
                self.sink.put(p, g)?;
            }
        }
        Ok((y.track_op().then_some(dh), None))
    }
}
