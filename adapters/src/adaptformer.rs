//! AdaptFormer (Chen et al., 2022): a bottleneck MLP in parallel with each selected block's MLP,
//! reading the residual stream the MLP branch reads and scaled:
//! `x + mlp(norm2(x)) + scale·up(relu(down(x)))`, as in the official code (no adapter norm).
//! `down` is kaiming-uniform and `up` zero, so training starts from the backbone.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::recipe::AdaptformerConfig;
use losa_framework::vit::{Hooks, Linear, Vit};

use crate::common::{Dropout, Head, Init};

/// One bottleneck adapter.
#[derive(Debug)]
pub struct Bottleneck {
    /// [bottleneck, width].
    pub down: Var,
    /// [bottleneck].
    pub down_bias: Var,
    /// [width, bottleneck].
    pub up: Var,
    /// [width].
    pub up_bias: Var,
}

/// AdaptFormer.
#[derive(Debug)]
pub struct Adaptformer {
    /// Adapters by block.
    pub adapters: BTreeMap<usize, Bottleneck>,
    scale: f64,
    dropout: Dropout,
    /// The classifier.
    pub head: Head,
}

impl Adaptformer {
    /// AdaptFormer as the recipe configures it, for `vit`.
    pub fn new(config: &AdaptformerConfig, vit: &Vit, head: Head, init: &mut Init) -> Result<Self> {
        let d = vit.config.shape.width;
        let b = config.bottleneck;
        let mut adapters = BTreeMap::new();
        for block in config.blocks.indices(vit.config.shape.depth) {
            let adapter = Bottleneck {
                down: init.kaiming_uniform((b, d), d)?,
                down_bias: init.zeros(b)?,
                up: init.zeros((d, b))?,
                up_bias: init.zeros(d)?,
            };
            adapters.insert(block, adapter);
        }
        Ok(Self { adapters, scale: config.scale, dropout: Dropout::new(config.dropout, init.fork()), head })
    }
}

struct AdaptformerHooks<'a> {
    method: &'a Adaptformer,
    train: bool,
}

impl Hooks for AdaptformerHooks<'_> {
    fn mlp_parallel(&self, block: usize, residual: &Tensor) -> Result<Option<Tensor>> {
        let Some(a) = self.method.adapters.get(&block) else { return Ok(None) };
        let x = residual.to_dtype(a.down.dtype())?;
        // As linear layers: one GEMM over all tokens of the batch, not one per image.
        let linear =
            |w: &Var, b: &Var| Linear { weight: w.as_tensor().clone(), bias: Some(b.as_tensor().clone()) };
        let h = linear(&a.down, &a.down_bias).forward(&x)?.relu()?;
        let h = self.method.dropout.apply(&h, self.train)?;
        let y = linear(&a.up, &a.up_bias).forward(&h)?;
        Ok(Some((y * self.method.scale)?.to_dtype(residual.dtype())?))
    }
}

impl Adaptation for Adaptformer {
    fn start_epoch(&self, epoch: u64) {
        self.dropout.start_epoch(epoch);
    }

    fn kind(&self) -> &'static str {
        "adaptformer"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::FrozenWithGrad
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (block, a) in &self.adapters {
            let n = format!("adaptformer.blocks.{block}");
            vars.push((format!("{n}.down.weight"), a.down.clone()));
            vars.push((format!("{n}.down.bias"), a.down_bias.clone()));
            vars.push((format!("{n}.up.weight"), a.up.clone()));
            vars.push((format!("{n}.up.bias"), a.up_bias.clone()));
        }
        vars.extend(self.head.vars());
        vars
    }

    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor> {
        let hooks = AdaptformerHooks { method: self, train };
        let tokens = vit.forward(images, &hooks, false)?.tokens;
        self.head.forward(vit, &tokens)
    }
}
