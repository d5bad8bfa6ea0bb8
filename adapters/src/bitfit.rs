//! BitFit: only the backbone's bias terms (linear layers, patch embedding and LayerNorms) train,
//! with the head; gradients flow through the frozen weights.

use candle_core::{DType, Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::vit::{Grad, NoHooks, Vit};

use crate::common::Head;
use crate::own_backbone::with_trained;

/// BitFit.
#[derive(Debug)]
pub struct Bitfit {
    vit: Vit,
    vars: Vec<(String, Var)>,
    /// The classifier.
    pub head: Head,
}

impl Bitfit {
    /// A copy of `vit` whose biases are variables.
    pub fn new(vit: &Vit, head: Head, dtype: DType) -> Result<Self> {
        let (vit, vars) = with_trained(vit, dtype, |name| name.ends_with(".bias"))?;
        Ok(Self { vit, vars, head })
    }
}

impl Adaptation for Bitfit {
    fn kind(&self) -> &'static str {
        "bitfit"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::FrozenWithGrad
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
