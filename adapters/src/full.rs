//! Full finetuning: every backbone weight and the head train. Its variables carry timm's names, so
//! its adapter file is a timm-style checkpoint (how the project pretrains its own small ViT).

use candle_core::{DType, Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::vit::{Grad, NoHooks, Vit};

use crate::common::Head;
use crate::own_backbone::with_trained;

/// Full finetuning.
#[derive(Debug)]
pub struct Full {
    vit: Vit,
    vars: Vec<(String, Var)>,
    /// The classifier.
    pub head: Head,
}

impl Full {
    /// A trainable copy of `vit` (in `dtype`) and `head`.
    pub fn new(vit: &Vit, head: Head, dtype: DType) -> Result<Self> {
        let (vit, vars) = with_trained(vit, dtype, |_| true)?;
        Ok(Self { vit, vars, head })
    }

    /// The trained backbone.
    pub fn backbone(&self) -> &Vit {
        &self.vit
    }
}

impl Adaptation for Full {
    fn kind(&self) -> &'static str {
        "full"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::Trainable
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.iter().cloned().chain(self.head.vars()).collect()
    }

    fn forward(&self, _vit: &Vit, images: &Tensor, _train: bool) -> Result<Tensor> {
        let images = images.to_dtype(self.vit.pos_embed.dtype())?;
        let tokens = self.vit.forward(&images, &NoHooks, Grad::Through, false)?.tokens;
        self.head.forward(&self.vit, &tokens)
    }
}
