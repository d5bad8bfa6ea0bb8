//! Adaptation methods, one file per recipe `kind`, each implementing the framework's
//! [`Adaptation`] trait, and the one place that builds them from a recipe: [`build`].

mod adaptformer;
mod bitfit;
mod common;
mod full;
mod linear_probe;
mod lora;
mod losa;
mod own_backbone;
pub mod params;
pub mod peft;
mod vpt;

pub use adaptformer::Adaptformer;
pub use bitfit::bitfit;
pub use common::{Dropout, Head, Init};
pub use full::full;
pub use linear_probe::LinearProbe;
pub use lora::{Lora, LoraPair, Target};
pub use losa::Losa;
pub use own_backbone::OwnBackbone;
pub use vpt::Vpt;

use candle_core::{DType, Result};
use losa_framework::adaptation::Adaptation;
use losa_framework::recipe::AdapterConfig;
use losa_framework::vit::Vit;

/// Builds the method `config` describes on `vit` for a task of `classes` classes. Its variables
/// are `dtype` (f32 in training) and start from `seed`: the same seed gives the same start.
pub fn build(
    config: &AdapterConfig,
    vit: &Vit,
    classes: usize,
    seed: u64,
    dtype: DType,
) -> Result<Box<dyn Adaptation>> {
    let mut init = Init::new(seed, vit.pos_embed.device(), dtype);
    let head = Head::new(&mut init, vit.width(), classes, config.pool())?;
    Ok(match config {
        AdapterConfig::LinearProbe(_) => Box::new(LinearProbe { head }),
        AdapterConfig::Full(_) => Box::new(full(vit, head, dtype)?),
        AdapterConfig::Bitfit(_) => Box::new(bitfit(vit, head, dtype)?),
        AdapterConfig::Lora(c) => Box::new(Lora::new(c, vit, head, &mut init)?),
        AdapterConfig::Vpt(c) => Box::new(Vpt::new(c, vit, head, &mut init)?),
        AdapterConfig::Losa(c) => Box::new(Losa::new(c, vit, head, &mut init)?),
        AdapterConfig::Adaptformer(c) => Box::new(Adaptformer::new(c, vit, head, &mut init)?),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod peft_tests;
