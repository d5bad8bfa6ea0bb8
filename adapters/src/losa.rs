//! LoSA (Mercea et al., CVPR 2024): a side network refines the frozen backbone's block outputs
//! `b_1..b_L`: `y_0 = b_L`, `y_i = y_{i-1} + g_i(b_i + y_{i-1})` for every block i that feeds it,
//! and the head reads `y_L` through the backbone's final norm. The backbone runs forward only and
//! its outputs are detached: no gradient ever reaches it, and its outputs can be cached.
//!
//! Each `g_i` is a low-rank mixer (the paper leaves its internals open; these are the defaults of
//! ../shared/REFERENCE.md §1): `H = Z`, then for each mixer in order `H = H + Mix(H)`, and `g(Z) = H − Z`;
//! `ChannelMix(X) = act(LN(X)·Wdᵀ + bd)·Wuᵀ + bu` over the width (d → r → d) and
//! `TokenMix(X) = (act(LN(X)ᵀ·Wdᵀ + bd)·Wuᵀ)ᵀ = Wu·act(Wd·LN(X) + bd)` over the tokens
//! (n → r_t → n), computed in the second form (no transposes). The token mixer's
//! up-projection has no bias: it would add one constant to every channel of a token, which the
//! LayerNorm over channels that reads the stream next (a mixer's or the head's) removes — a
//! parameter without effect (a finite-difference test found its gradient exactly zero).
//! Down-projections are LeCun normal, up-projections zero, so `g ≡ 0` and training starts as a
//! linear probe.
//!
//! The side network computes in the backbone's dtype by default (`side_dtype`): on a bf16
//! backbone its activations are bf16 and its f32 parameters are cast for each step, as PyTorch's
//! bf16 autocast runs it; gradients and optimiser state stay f32. Its traffic over the
//! `[batch, tokens, width]` features, which is its cost on a GPU, halves.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Shape, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse, Taps, compute_taps};
use losa_framework::ops;
use losa_framework::recipe::{Activation, LosaConfig, Mixer, MixerNorm, SideDtype};
use losa_framework::vit::{LayerNorm, Linear, Vit};

use crate::common::{Dropout, Head, Init, activate};

/// One low-rank MLP of a mixer, with its input norm.
#[derive(Debug)]
pub struct LowRank {
    /// Which axis it mixes.
    pub axis: Mixer,
    /// LayerNorm scale and shift over the width, when the recipe asks for a norm.
    pub norm: Option<(Var, Var)>,
    /// [rank, size]: size = width (channel) or tokens (token).
    pub down: Var,
    /// [rank].
    pub down_bias: Var,
    /// [size, rank], zero at the start.
    pub up: Var,
    /// [size], zero at the start; channel mixers only (see the module docs).
    pub up_bias: Option<Var>,
}

/// LoSA's side network and head.
#[derive(Debug)]
pub struct Losa {
    /// The mixer g_i of each feeding block i (0-based), its low-rank MLPs in order.
    pub mixers: BTreeMap<usize, Vec<LowRank>>,
    activation: Activation,
    dropout: Dropout,
    side_dtype: SideDtype,
    /// Where the fused side blocks put their parameters' gradients (see `Adaptation::backward`).
    grads: ops::GradSink,
    depth: usize,
    /// The classifier on the final norm of y_L.
    pub head: Head,
}

impl Losa {
    /// LoSA as the recipe configures it, for `vit`.
    pub fn new(config: &LosaConfig, vit: &Vit, head: Head, init: &mut Init) -> Result<Self> {
        let d = vit.config.shape.width;
        let n = vit.config.num_tokens();
        let mut mixers = BTreeMap::new();
        for block in config.blocks.indices(vit.config.shape.depth) {
            let mut parts = Vec::new();
            for &axis in &config.mixers {
                let (size, rank) = match axis {
                    Mixer::Channel => (d, config.channel_rank),
                    Mixer::Token => (n, config.token_rank),
                };
                let norm = match config.norm {
                    MixerNorm::LayerNorm => Some((init.ones(d)?, init.zeros(d)?)),
                    MixerNorm::None => None,
                };
                parts.push(LowRank {
                    axis,
                    norm,
                    down: init.lecun_normal((rank, size), size)?,
                    down_bias: init.zeros(rank)?,
                    up: init.zeros((size, rank))?,
                    up_bias: (axis == Mixer::Channel).then(|| init.zeros(size)).transpose()?,
                });
            }
            mixers.insert(block, parts);
        }
        let dropout = Dropout::new(config.dropout, init.fork());
        Ok(Self {
            mixers,
            activation: config.activation,
            dropout,
            side_dtype: config.side_dtype,
            grads: ops::GradSink::new(init.device())?,
            depth: vit.config.shape.depth,
            head,
        })
    }

    /// `g_i(z)` for the mixers of one block, composed from candle ops in `z`'s dtype (the
    /// parameters cast to it, differentiably): the path of activations other than GELU, and the
    /// reference that `ops::side_network` is tested against.
    pub(crate) fn mix(&self, parts: &[LowRank], z: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
        let cast = |v: &Var| v.as_tensor().to_dtype(z.dtype());
        let mut h = z.clone();
        for p in parts {
            let x = match &p.norm {
                Some((w, b)) => LayerNorm { weight: cast(w)?, bias: cast(b)?, eps }.forward(&h)?,
                None => h.clone(),
            };
            let (down, up) = (&cast(&p.down)?, &cast(&p.up)?);
            let y = match p.axis {
                // [batch, tokens, width] · Wdᵀ → [batch, tokens, rank] → · Wuᵀ → [batch, tokens, width],
                // each as a linear layer (one GEMM over all the batch's tokens).
                Mixer::Channel => {
                    let linear = |w: &Tensor| Linear { weight: w.clone(), bias: None };
                    let a = self.act(&linear(down).forward(&x)?, &cast(&p.down_bias)?, 2)?;
                    linear(up).forward(&self.dropout.apply(&a, train)?)?
                }
                // Wd [r_t, tokens] · X [batch, tokens, width] → [batch, r_t, width], then
                // Wu [tokens, r_t] · A → [batch, tokens, width]: the matmul from the left mixes the
                // tokens with no transposed copy of X or of the result (the paper's `(·)ᵀ`).
                Mixer::Token => {
                    let a = self.act(&down.broadcast_matmul(&x)?, &cast(&p.down_bias)?, 1)?;
                    up.broadcast_matmul(&self.dropout.apply(&a, train)?)?
                }
            };
            h = match &p.up_bias {
                Some(bias) => (h + y.broadcast_add(&cast(bias)?)?)?,
                None => (h + y)?,
            };
        }
        h - z
    }

    /// One block's mixers as `ops::side_network` takes them, with this step's dropout masks drawn
    /// in the order [`Losa::mix`] draws them (so both give the same result).
    fn side_mixes(&self, parts: &[LowRank], y: &Tensor, train: bool) -> Result<Vec<ops::LowRankMix>> {
        let (batch, tokens, width) = y.dims3()?;
        parts
            .iter()
            .map(|p| {
                let rank = p.down.dim(0)?;
                let shape = match p.axis {
                    Mixer::Channel => Shape::from((batch, tokens, rank)),
                    Mixer::Token => Shape::from((batch, rank, width)),
                };
                Ok(ops::LowRankMix {
                    axis: p.axis,
                    norm: p.norm.as_ref().map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone())),
                    down: p.down.as_tensor().clone(),
                    down_bias: p.down_bias.as_tensor().clone(),
                    up: p.up.as_tensor().clone(),
                    up_bias: p.up_bias.as_ref().map(|b| b.as_tensor().clone()),
                    mask: self.dropout.mask(&shape, y.dtype(), y.device(), train)?,
                })
            })
            .collect()
    }

    /// `act(a + bias)`, the bias along dimension `dim` of `a`: GELU (the default) in one fused op
    /// with a one-pass backward (losa_framework::ops), other activations composed.
    fn act(&self, a: &Tensor, bias: &Tensor, dim: usize) -> Result<Tensor> {
        if matches!(self.activation, Activation::Gelu) {
            return ops::bias_gelu(a, bias, dim);
        }
        let mut shape = vec![1; a.rank()];
        shape[dim] = bias.dim(0)?;
        activate(&a.broadcast_add(&bias.reshape(shape)?)?, self.activation)
    }

    /// The logits, each side block fused into one op or composed (`fused` needs GELU).
    pub(crate) fn forward_with(&self, vit: &Vit, taps: &Taps, train: bool, fused: bool) -> Result<Tensor> {
        if fused && !matches!(self.activation, Activation::Gelu) {
            candle_core::bail!("losa: the fused side blocks compute GELU, not {:?}", self.activation);
        }
        // The side network computes in the backbone's dtype (as under autocast) or in the
        // parameters' own; the head and the final norm in the parameters'.
        let params = self.head.weight.dtype();
        let dtype = match (self.side_dtype, taps.blocks.first()) {
            (SideDtype::Backbone, Some(b)) => b.dtype(),
            _ => params,
        };
        let order = self.taps();
        let block = |i: usize| -> Result<Tensor> {
            let at = order
                .iter()
                .position(|&t| t == i)
                .ok_or_else(|| candle_core::Error::Msg(format!("block {i} not tapped")))?;
            taps.blocks[at].to_dtype(dtype)
        };
        let mut y = block(self.depth - 1)?;
        let eps = vit.config.norm_eps;
        if fused {
            // All side blocks as one op (ops::side_network).
            let blocks = self
                .mixers
                .iter()
                .map(|(&i, parts)| {
                    Ok(ops::SideBlock { features: block(i)?, mixers: self.side_mixes(parts, &y, train)? })
                })
                .collect::<Result<Vec<_>>>()?;
            if !blocks.is_empty() {
                y = ops::side_network(&y, &blocks, eps, &self.grads)?;
            }
        } else {
            for (&i, parts) in &self.mixers {
                let z = (block(i)? + &y)?;
                y = (&y + self.mix(parts, &z, eps, train)?)?;
            }
        }
        // The backbone's final norm (frozen, but differentiable in y), pooled, then the head, so
        // that with g ≡ 0 this is exactly the linear probe on the backbone's final features; in
        // the head's dtype, in one op (ops::layer_norm_pool: the norm of only the pooled tokens,
        // read once). Detached: the norm's parameters are the backbone's and get no gradient.
        let (weight, bias) =
            (vit.norm.weight.detach().to_dtype(params)?, vit.norm.bias.detach().to_dtype(params)?);
        let tokens = vit.pooled_tokens(y.dim(1)?, self.head.pool)?;
        self.head.classify(&ops::layer_norm_pool(&y, &weight, &bias, vit.norm.eps, tokens)?)
    }
}

impl Adaptation for Losa {
    fn start_epoch(&self, epoch: u64) {
        self.dropout.start_epoch(epoch);
    }

    fn kind(&self) -> &'static str {
        "losa"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::Frozen
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (block, parts) in &self.mixers {
            for p in parts {
                let axis = match p.axis {
                    Mixer::Channel => "channel",
                    Mixer::Token => "token",
                };
                let n = format!("losa.blocks.{block}.{axis}");
                if let Some((w, b)) = &p.norm {
                    vars.push((format!("{n}.norm.weight"), w.clone()));
                    vars.push((format!("{n}.norm.bias"), b.clone()));
                }
                vars.push((format!("{n}.down.weight"), p.down.clone()));
                vars.push((format!("{n}.down.bias"), p.down_bias.clone()));
                vars.push((format!("{n}.up.weight"), p.up.clone()));
                if let Some(bias) = &p.up_bias {
                    vars.push((format!("{n}.up.bias"), bias.clone()));
                }
            }
        }
        vars.extend(self.head.vars());
        vars
    }

    /// The feeding blocks and the last block (whose output is `y_0`).
    fn taps(&self) -> Vec<usize> {
        let mut taps: Vec<usize> = self.mixers.keys().copied().chain([self.depth - 1]).collect();
        taps.sort_unstable();
        taps.dedup();
        taps
    }

    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_taps(vit, &compute_taps(vit, images, &self.taps())?, train)
    }

    /// candle's backward, with the fused side blocks' parameter gradients added from the sink.
    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.grads.backward(loss)
    }

    fn forward_taps(&self, vit: &Vit, taps: &Taps, train: bool) -> Result<Tensor> {
        // GELU (the default): the side network as one op with a hand-written backward
        // (ops::side_network);
        // other activations composed from candle ops.
        self.forward_with(vit, taps, train, matches!(self.activation, Activation::Gelu))
    }
}
