//! Linear probe: a classifier on the frozen backbone's pooled final features; nothing else trains.

use candle_core::{Result, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse, Taps, compute_taps};
use losa_framework::vit::Vit;

use crate::common::Head;

/// The linear probe.
#[derive(Debug)]
pub struct LinearProbe {
    /// The classifier.
    pub head: Head,
}

impl Adaptation for LinearProbe {
    fn kind(&self) -> &'static str {
        "linear_probe"
    }

    fn backbone_use(&self) -> BackboneUse {
        BackboneUse::Frozen
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.head.vars()
    }

    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_taps(vit, &compute_taps(vit, images, &[])?, train)
    }

    fn forward_taps(&self, vit: &Vit, taps: &Taps, _train: bool) -> Result<Tensor> {
        self.head.forward(vit, &taps.tokens)
    }
}
