//! Full finetuning: every backbone weight and the head train. Its variables carry timm's names, so
//! its adapter file is a timm-style checkpoint (how the project pretrains its own small ViT).

use candle_core::{DType, Result};
use losa_framework::adaptation::BackboneUse;
use losa_framework::vit::Vit;

use crate::common::Head;
use crate::own_backbone::OwnBackbone;

/// Full finetuning: a trainable copy of `vit` (in `dtype`) and `head`.
pub fn full(vit: &Vit, head: Head, dtype: DType) -> Result<OwnBackbone> {
    OwnBackbone::new("full", BackboneUse::Trainable, vit, head, dtype, |_| true)
}
