//! LoRA: `W x + (alpha/rank)·B A x` on chosen linear layers of the frozen backbone. A is
//! kaiming-uniform, B zero, so training starts from the backbone. The fused `qkv` projection is
//! adapted whole (`qkv`) or through its q, k, v slices.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::recipe::{LoraConfig, LoraTarget};
use losa_framework::vit::{Hooks, Linear, LinearSite, Vit};

use crate::common::{Dropout, Head, Init};

/// One low-rank update.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// [rank, in].
    pub a: Var,
    /// [out, rank].
    pub b: Var,
}

/// LoRA.
#[derive(Debug)]
pub struct Lora {
    /// Updates by (block, target).
    pub pairs: BTreeMap<(usize, Target), LoraPair>,
    /// alpha / rank.
    pub scale: f64,
    dropout: Dropout,
    /// Width of the backbone (the size of each q, k, v slice).
    width: usize,
    /// The classifier.
    pub head: Head,
}

/// A LoRA target with a total order (for stable variable names and files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The fused projection whole.
    Qkv,
    /// A slice of it (0 = q, 1 = k, 2 = v).
    Slice(usize),
    /// The attention output projection.
    Proj,
    /// MLP first layer.
    Fc1,
    /// MLP second layer.
    Fc2,
}

impl Target {
    /// From the recipe's target.
    pub fn of(t: LoraTarget) -> Self {
        match t {
            LoraTarget::Qkv => Target::Qkv,
            LoraTarget::Q => Target::Slice(0),
            LoraTarget::K => Target::Slice(1),
            LoraTarget::V => Target::Slice(2),
            LoraTarget::Proj => Target::Proj,
            LoraTarget::Fc1 => Target::Fc1,
            LoraTarget::Fc2 => Target::Fc2,
        }
    }

    /// The name in variable names: qkv, q, k, v, proj, fc1, fc2.
    pub fn name(self) -> &'static str {
        match self {
            Target::Qkv => "qkv",
            Target::Slice(0) => "q",
            Target::Slice(1) => "k",
            Target::Slice(_) => "v",
            Target::Proj => "proj",
            Target::Fc1 => "fc1",
            Target::Fc2 => "fc2",
        }
    }

    fn site(self) -> LinearSite {
        match self {
            Target::Qkv | Target::Slice(_) => LinearSite::Qkv,
            Target::Proj => LinearSite::Proj,
            Target::Fc1 => LinearSite::Fc1,
            Target::Fc2 => LinearSite::Fc2,
        }
    }

    /// (in, out) of the adapted map for a ViT of width `d` and MLP width `m`.
    pub fn dims(self, d: usize, m: usize) -> (usize, usize) {
        match self {
            Target::Qkv => (d, 3 * d),
            Target::Slice(_) | Target::Proj => (d, d),
            Target::Fc1 => (d, m),
            Target::Fc2 => (m, d),
        }
    }
}

impl Lora {
    /// LoRA as the recipe configures it, for `vit`.
    pub fn new(config: &LoraConfig, vit: &Vit, head: Head, init: &mut Init) -> Result<Self> {
        let shape = vit.config.shape;
        let mut pairs = BTreeMap::new();
        for block in config.blocks.indices(shape.depth) {
            for &t in &config.targets {
                let target = Target::of(t);
                let (fan_in, out) = target.dims(shape.width, shape.mlp_dim);
                let pair = LoraPair {
                    a: init.kaiming_uniform((config.rank, fan_in), fan_in)?,
                    b: init.zeros((out, config.rank))?,
                };
                pairs.insert((block, target), pair);
            }
        }
        let dropout = Dropout::new(config.dropout, init.fork());
        Ok(Self { pairs, scale: config.alpha / config.rank as f64, dropout, width: shape.width, head })
    }

    /// LoRA from given pairs (PEFT import).
    pub fn from_pairs(
        pairs: BTreeMap<(usize, Target), LoraPair>,
        scale: f64,
        width: usize,
        head: Head,
    ) -> Self {
        Self { pairs, scale, dropout: Dropout::new(0.0, 0), width, head }
    }

    fn hooks(&self, train: bool) -> LoraHooks<'_> {
        LoraHooks { lora: self, train }
    }
}

struct LoraHooks<'a> {
    lora: &'a Lora,
    train: bool,
}

impl Hooks for LoraHooks<'_> {
    fn linear_delta(&self, block: usize, site: LinearSite, input: &Tensor) -> Result<Option<Tensor>> {
        let lora = self.lora;
        let parts: Vec<(&Target, &LoraPair)> = lora
            .pairs
            .range((block, Target::Qkv)..=(block, Target::Fc2))
            .filter(|(k, _)| k.1.site() == site)
            .map(|(k, p)| (&k.1, p))
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        let x = lora.dropout.apply(input, self.train)?.to_dtype(parts[0].1.a.dtype())?;
        // As linear layers: one GEMM over all tokens of the batch, not one per image.
        let low_rank = |p: &LoraPair| -> Result<Tensor> {
            let (a, b) = (p.a.as_tensor().clone(), p.b.as_tensor().clone());
            Linear { weight: b, bias: None }.forward(&Linear { weight: a, bias: None }.forward(&x)?)?
                * lora.scale
        };
        let mut delta: Option<Tensor> = None;
        let mut add = |t: Tensor| -> Result<()> {
            delta = Some(match delta.take() {
                Some(d) => (d + t)?,
                None => t,
            });
            Ok(())
        };
        for (target, pair) in parts {
            match target {
                Target::Slice(s) => {
                    // Place the slice's update in its third of the fused output.
                    let y = low_rank(pair)?;
                    let mut lead: Vec<usize> = y.dims().to_vec();
                    let d = lora.width;
                    let zeros = |n: usize, lead: &mut Vec<usize>| {
                        *lead.last_mut().expect("a LoRA output has a last dimension") = n;
                        Tensor::zeros(lead.as_slice(), y.dtype(), y.device())
                    };
                    let mut pieces = Vec::new();
                    if *s > 0 {
                        pieces.push(zeros(s * d, &mut lead)?);
                    }
                    if *s < 2 {
                        let after = zeros((2 - s) * d, &mut lead)?;
                        pieces.push(y);
                        pieces.push(after);
                    } else {
                        pieces.push(y);
                    }
                    add(Tensor::cat(&pieces, candle_core::D::Minus1)?)?;
                }
                _ => add(low_rank(pair)?)?,
            }
        }
        delta.map(|d| d.to_dtype(input.dtype())).transpose()
    }
}

impl Adaptation for Lora {
    fn start_epoch(&self, epoch: u64) {
        self.dropout.start_epoch(epoch);
    }

    fn kind(&self) -> &'static str {
        "lora"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::FrozenWithGrad
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for ((block, target), pair) in &self.pairs {
            let name = format!("lora.blocks.{block}.{}", target.name());
            vars.push((format!("{name}.lora_A"), pair.a.clone()));
            vars.push((format!("{name}.lora_B"), pair.b.clone()));
        }
        vars.extend(self.head.vars());
        vars
    }

    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor> {
        let tokens = vit.forward(images, &self.hooks(train), false)?.tokens;
        self.head.forward(vit, &tokens)
    }
}
