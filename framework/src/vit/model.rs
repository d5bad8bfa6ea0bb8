//! The Vision Transformer: patch embedding, class token, position embedding, pre-norm blocks with
//! a fused qkv projection, final norm, and an optional head, with field names mirroring timm's.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{Result, Tensor};

use super::config::VitConfig;
use super::hooks::{Hooks, LinearSite};
use super::layers::{LayerNorm, Linear};
use crate::ops;
use crate::recipe::Pool;

/// One transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Fused query/key/value projection, [3·d, d].
    pub qkv: Linear,
    /// Attention output projection.
    pub proj: Linear,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// MLP first layer, [mlp, d].
    pub fc1: Linear,
    /// MLP second layer, [d, mlp].
    pub fc2: Linear,
}

/// A Vision Transformer.
#[derive(Debug, Clone)]
pub struct Vit {
    /// Its architecture.
    pub config: VitConfig,
    /// Patch projection as a linear map of flattened patches: weight [d, 3, p, p], bias [d].
    pub patch_embed: Linear,
    /// [1, 1, d].
    pub cls_token: Tensor,
    /// [1, tokens, d].
    pub pos_embed: Tensor,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Linear + tanh before the head (Google's ImageNet-21k checkpoints), if any.
    pub pre_logits: Option<Linear>,
    /// Classification head, if any.
    pub head: Option<Linear>,
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Features {
    /// Each block's output tokens (before the final norm), when asked for.
    pub blocks: Vec<Tensor>,
    /// The last block's tokens after the final norm, [batch, tokens, d].
    pub tokens: Tensor,
}

impl Vit {
    /// Builds the model from tensors named as timm names them (shapes checked by the loader).
    pub fn new(config: VitConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))
        };
        let linear = |prefix: &str| -> Result<Linear> {
            Ok(Linear {
                weight: get(&format!("{prefix}.weight"))?,
                bias: Some(get(&format!("{prefix}.bias"))?),
            })
        };
        let norm = |prefix: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: get(&format!("{prefix}.weight"))?,
                bias: get(&format!("{prefix}.bias"))?,
                eps: config.norm_eps,
            })
        };
        let blocks = (0..config.shape.depth)
            .map(|i| {
                Ok(Block {
                    norm1: norm(&format!("blocks.{i}.norm1"))?,
                    qkv: linear(&format!("blocks.{i}.attn.qkv"))?,
                    proj: linear(&format!("blocks.{i}.attn.proj"))?,
                    norm2: norm(&format!("blocks.{i}.norm2"))?,
                    fc1: linear(&format!("blocks.{i}.mlp.fc1"))?,
                    fc2: linear(&format!("blocks.{i}.mlp.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            patch_embed: linear("patch_embed.proj")?,
            cls_token: get("cls_token")?,
            pos_embed: get("pos_embed")?,
            blocks,
            norm: norm("norm")?,
            pre_logits: config.pre_logits.map(|_| linear("pre_logits.fc")).transpose()?,
            head: config.num_classes.map(|_| linear("head")).transpose()?,
        })
    }

    /// Every tensor under its timm name (the inverse of [`Vit::new`]).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("cls_token".to_owned(), self.cls_token.clone()),
            ("pos_embed".to_owned(), self.pos_embed.clone()),
        ];
        let mut linear = |name: String, l: &Linear| {
            out.push((format!("{name}.weight"), l.weight.clone()));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.clone()));
            }
        };
        linear("patch_embed.proj".into(), &self.patch_embed);
        for (i, b) in self.blocks.iter().enumerate() {
            linear(format!("blocks.{i}.attn.qkv"), &b.qkv);
            linear(format!("blocks.{i}.attn.proj"), &b.proj);
            linear(format!("blocks.{i}.mlp.fc1"), &b.fc1);
            linear(format!("blocks.{i}.mlp.fc2"), &b.fc2);
        }
        if let Some(p) = &self.pre_logits {
            linear("pre_logits.fc".into(), p);
        }
        if let Some(h) = &self.head {
            linear("head".into(), h);
        }
        let mut norm = |name: String, n: &LayerNorm| {
            out.push((format!("{name}.weight"), n.weight.clone()));
            out.push((format!("{name}.bias"), n.bias.clone()));
        };
        for (i, b) in self.blocks.iter().enumerate() {
            norm(format!("blocks.{i}.norm1"), &b.norm1);
            norm(format!("blocks.{i}.norm2"), &b.norm2);
        }
        norm("norm".into(), &self.norm);
        out
    }

    /// Patch embedding, class token and position embedding: [batch, 3, H, W] → [batch, tokens, d].
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.config.shape.patch_size;
        let (gh, gw) = (h / p, w / p);
        if c != 3 || h != self.config.image_size || w != self.config.image_size {
            candle_core::bail!(
                "expected images of shape [batch, 3, {s}, {s}], found {:?}",
                images.dims(),
                s = self.config.image_size
            );
        }
        // Images arrive in f32 from the loader; the backbone computes in its own dtype (bf16 by
        // default on CUDA). A no-op when they already agree.
        let images = images.to_dtype(self.patch_embed.weight.dtype())?;
        // A stride-p convolution is a linear map of each flattened (channel, row, column) patch.
        let patches = images
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.config.shape.width;
        let weight = self.patch_embed.weight.reshape((d, c * p * p))?;
        let proj = Linear { weight, bias: self.patch_embed.bias.clone() };
        let x = proj.forward(&patches)?.reshape((b, gh * gw, d))?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)
    }

    /// Block `i` applied to `x` [batch, tokens, d], with the method's hooks.
    pub fn block(&self, i: usize, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let blk = &self.blocks[i];
        let linear = |site: LinearSite, layer: &Linear, input: &Tensor| -> Result<Tensor> {
            let y = layer.forward(input)?;
            match hooks.linear_delta(i, site, input)? {
                Some(delta) => y + delta,
                None => Ok(y),
            }
        };
        // Each linear layer's bias is added by the fused op that reads its output next (head
        // split, bias + GELU, residual sum; crate::ops): one pass fewer per layer, each way.
        let weight_only = |l: &Linear| Linear { weight: l.weight.clone(), bias: None };
        let d = x.dim(2)?;
        let heads = self.config.shape.heads;
        let qkv = linear(LinearSite::Qkv, &weight_only(&blk.qkv), &blk.norm1.forward(x)?)?;
        // [3, batch, heads, tokens, head_dim]: q, k and v are contiguous views.
        let qkv = ops::split_heads(&qkv, &bias_or_zeros(&blk.qkv, 3 * d, x)?, heads)?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        // softmax(q·kᵀ / √head_dim), the scaling folded into the softmax's pass.
        let attn = ops::softmax(&q.matmul(&k.t()?)?, ((d / heads) as f64).powf(-0.5))?;
        let out = ops::merge_heads(&attn.matmul(&v)?)?;
        let proj = linear(LinearSite::Proj, &weight_only(&blk.proj), &out)?;
        let x = ops::bias_residual(x, &proj, &bias_or_zeros(&blk.proj, d, x)?)?;
        let h = blk.norm2.forward(&x)?;
        let h = linear(LinearSite::Fc1, &weight_only(&blk.fc1), &h)?;
        let h = ops::bias_gelu(&h, &bias_or_zeros(&blk.fc1, h.dim(2)?, &x)?, 2)?;
        let mut mlp = linear(LinearSite::Fc2, &weight_only(&blk.fc2), &h)?;
        if let Some(parallel) = hooks.mlp_parallel(i, &x)? {
            mlp = (mlp + parallel)?;
        }
        ops::bias_residual(&x, &mlp, &bias_or_zeros(&blk.fc2, d, &x)?)
    }

    /// The full forward pass up to the final norm; `keep_blocks` also returns every block's output.
    pub fn forward(&self, images: &Tensor, hooks: &dyn Hooks, keep_blocks: bool) -> Result<Features> {
        let mut x = self.embed(images)?;
        let mut blocks = Vec::new();
        for i in 0..self.blocks.len() {
            x = hooks.before_block(i, x)?;
            x = self.block(i, &x, hooks)?;
            x = hooks.after_block(i, x)?;
            if keep_blocks {
                blocks.push(x.clone());
            }
        }
        let tokens = self.norm.forward(&x)?;
        Ok(Features { blocks, tokens })
    }

    /// Every block's output tokens, for side networks.
    pub fn forward_features(&self, images: &Tensor, hooks: &dyn Hooks) -> Result<Vec<Tensor>> {
        Ok(self.forward(images, hooks, true)?.blocks)
    }

    /// The positions that `pool` reads of a sequence of `tokens`: the class token (position 0), or
    /// the patch tokens (the last `num_patches` positions, so prompts inserted after the class
    /// token are left out). An error for a sequence without its patch tokens.
    pub fn pooled_tokens(&self, tokens: usize, pool: Pool) -> Result<Range<usize>> {
        let patches = self.config.num_patches();
        if tokens < patches.max(1) {
            candle_core::bail!("pool: a sequence of {tokens} tokens, fewer than the {patches} patches");
        }
        Ok(match pool {
            Pool::Token => 0..1,
            Pool::Mean => tokens - patches..tokens,
        })
    }

    /// Pools normed tokens [batch, tokens, d] into [batch, d]: the class token, or the mean of the
    /// patch tokens ([`Vit::pooled_tokens`]).
    pub fn pool(&self, tokens: &Tensor, pool: Pool) -> Result<Tensor> {
        let range = self.pooled_tokens(tokens.dim(1)?, pool)?;
        let pooled = tokens.narrow(1, range.start, range.len())?;
        match pool {
            // A copy, not the strided view: its rows lie `tokens × d` apart, and candle's CUDA
            // matmul (cuBLAS) takes no such row stride, so the head's product would fail there.
            Pool::Token => pooled.squeeze(1)?.contiguous(),
            Pool::Mean => pooled.mean(1),
        }
    }

    /// The checkpoint's own logits for pooled features: `head(tanh(pre_logits(f)))`, if it has a head.
    pub fn logits(&self, pooled: &Tensor) -> Result<Option<Tensor>> {
        let Some(head) = &self.head else { return Ok(None) };
        let x = match &self.pre_logits {
            Some(p) => p.forward(pooled)?.tanh()?,
            None => pooled.clone(),
        };
        head.forward(&x).map(Some)
    }

    /// The width of pooled features.
    pub fn width(&self) -> usize {
        self.config.shape.width
    }
}

/// The layer's bias, or zeros of `len` (the dtype and device of `like`) for a layer without one.
fn bias_or_zeros(layer: &Linear, len: usize, like: &Tensor) -> Result<Tensor> {
    match &layer.bias {
        Some(bias) => Ok(bias.clone()),
        None => Tensor::zeros(len, like.dtype(), like.device()),
    }
}

/// Applies `f` to every tensor of a map (e.g. a dtype or device change).
pub fn map_tensors(
    tensors: HashMap<String, Tensor>,
    f: impl Fn(Tensor) -> Result<Tensor>,
) -> Result<HashMap<String, Tensor>> {
    tensors.into_iter().map(|(k, v)| Ok((k, f(v)?))).collect()
}
