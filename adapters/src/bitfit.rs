//! BitFit: only the backbone's bias terms (linear layers, patch embedding and LayerNorms) train,
//! with the head; gradients flow through the frozen weights.

use candle_core::{DType, Result};
use losa_framework::adaptation::BackboneUse;
use losa_framework::vit::Vit;

use crate::common::Head;
use crate::own_backbone::OwnBackbone;

/// BitFit: a copy of `vit` whose biases are variables, and `head`.
pub fn bitfit(vit: &Vit, head: Head, dtype: DType) -> Result<OwnBackbone> {
    OwnBackbone::new("bitfit", BackboneUse::FrozenWithGrad, vit, head, dtype, |name| name.ends_with(".bias"))
}
