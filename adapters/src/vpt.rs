//! Visual prompt tuning (Jia et al., 2022): learned prompt tokens inserted after the class token,
//! once after the patch embedding (shallow), or fresh at every selected block's input and dropped
//! after it (deep). Prompts start uniform in ±√(6 / (3·patch² + width)), as in VPT's code, or
//! normal (std 0.02).

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::recipe::{PromptInit, VptConfig, VptMode};
use losa_framework::vit::{Hooks, Vit};

use crate::common::{Dropout, Head, Init};

/// VPT.
#[derive(Debug)]
pub struct Vpt {
    /// Prompts [1, prompts, width] by the block they enter (block 0 only when shallow).
    pub prompts: BTreeMap<usize, Var>,
    mode: VptMode,
    dropout: Dropout,
    /// The classifier.
    pub head: Head,
}

impl Vpt {
    /// VPT as the recipe configures it, for `vit`.
    pub fn new(config: &VptConfig, vit: &Vit, head: Head, init: &mut Init) -> Result<Self> {
        let shape = vit.config.shape;
        let bound = (6.0 / (3 * shape.patch_size * shape.patch_size + shape.width) as f64).sqrt();
        let blocks = match config.mode {
            VptMode::Shallow => vec![0],
            VptMode::Deep => config.blocks.indices(shape.depth),
        };
        let mut prompts = BTreeMap::new();
        for block in blocks {
            let prompt = match config.init {
                PromptInit::Xavier => init.uniform((1, config.prompts, shape.width), bound)?,
                PromptInit::Normal => init.trunc_normal((1, config.prompts, shape.width), 0.02)?,
            };
            prompts.insert(block, prompt);
        }
        Ok(Self { prompts, mode: config.mode, dropout: Dropout::new(config.dropout, init.fork()), head })
    }

    fn count(&self) -> usize {
        self.prompts.values().next().map_or(0, |p| p.dims()[1])
    }
}

struct VptHooks<'a> {
    vpt: &'a Vpt,
    train: bool,
}

impl Hooks for VptHooks<'_> {
    fn before_block(&self, block: usize, tokens: Tensor) -> Result<Tensor> {
        let Some(prompt) = self.vpt.prompts.get(&block) else { return Ok(tokens) };
        let (b, n, d) = tokens.dims3()?;
        let p = self.vpt.count();
        let prompt = self.vpt.dropout.apply(prompt.as_tensor(), self.train)?.to_dtype(tokens.dtype())?;
        let prompt = prompt.broadcast_as((b, p, d))?;
        Tensor::cat(&[&tokens.narrow(1, 0, 1)?, &prompt, &tokens.narrow(1, 1, n - 1)?], 1)
    }

    fn after_block(&self, block: usize, tokens: Tensor) -> Result<Tensor> {
        if self.vpt.mode == VptMode::Shallow || !self.vpt.prompts.contains_key(&block) {
            return Ok(tokens);
        }
        let n = tokens.dim(1)?;
        let p = self.vpt.count();
        Tensor::cat(&[&tokens.narrow(1, 0, 1)?, &tokens.narrow(1, 1 + p, n - 1 - p)?], 1)
    }
}

impl Adaptation for Vpt {
    fn start_epoch(&self, epoch: u64) {
        self.dropout.start_epoch(epoch);
    }

    fn kind(&self) -> &'static str {
        "vpt"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::FrozenWithGrad
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> =
            self.prompts.iter().map(|(block, p)| (format!("vpt.prompts.{block}"), p.clone())).collect();
        vars.extend(self.head.vars());
        vars
    }

    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor> {
        let hooks = VptHooks { vpt: self, train };
        let tokens = vit.forward(images, &hooks, false)?.tokens;
        self.head.forward(vit, &tokens)
    }
}
