//! Methods that train tensors of a copy of the backbone (full finetuning, BitFit): one type, the
//! methods differ only in which tensors train.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse};
use losa_framework::vit::{NoHooks, Vit, VitConfig};

use crate::common::Head;

/// A copy of the backbone (without its head) some of whose tensors are variables, and a head.
#[derive(Debug)]
pub struct OwnBackbone {
    kind: &'static str,
    backbone_use: BackboneUse,
    vit: Vit,
    vars: Vec<(String, Var)>,
    /// The classifier.
    pub head: Head,
}

impl OwnBackbone {
    /// Copies `vit` in `dtype`, making the tensors `trained` selects variables.
    pub fn new(
        kind: &'static str,
        backbone_use: BackboneUse,
        vit: &Vit,
        head: Head,
        dtype: DType,
        trained: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let config = VitConfig { num_classes: None, pre_logits: None, ..vit.config };
        let source: HashMap<String, Tensor> = vit.tensors().into_iter().collect();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut vars = Vec::new();
        for (name, _) in config.tensor_shapes() {
            let t = source
                .get(&name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("backbone lacks {name}")))?
                .to_dtype(dtype)?;
            if trained(&name) {
                let var = Var::from_tensor(&t)?;
                tensors.insert(name.clone(), var.as_tensor().clone());
                vars.push((name, var));
            } else {
                tensors.insert(name, t);
            }
        }
        Ok(Self { kind, backbone_use, vit: Vit::new(config, &tensors)?, vars, head })
    }

    /// The (partly) trained backbone.
    pub fn backbone(&self) -> &Vit {
        &self.vit
    }
}

impl Adaptation for OwnBackbone {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn backbone_use(&self) -> BackboneUse {
        self.backbone_use
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.iter().cloned().chain(self.head.vars()).collect()
    }

    /// Runs its own copy of the backbone; the frozen one passed in is not used.
    fn forward(&self, _vit: &Vit, images: &Tensor, _train: bool) -> Result<Tensor> {
        let images = images.to_dtype(self.vit.pos_embed.dtype())?;
        let tokens = self.vit.forward(&images, &NoHooks, false)?.tokens;
        self.head.forward(&self.vit, &tokens)
    }
}
