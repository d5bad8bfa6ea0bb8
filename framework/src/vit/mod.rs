//! The frozen backbone every method runs on: a Vision Transformer in candle.

mod config;
mod hooks;
mod init;
mod layers;
mod model;
pub mod posembed;

pub use config::VitConfig;
pub use hooks::{Hooks, LinearSite, NoHooks};
pub use init::{random_weights, seeded_normal};
pub use layers::{LayerNorm, Linear};
pub use model::{Block, Features, Vit, map_tensors};

#[cfg(test)]
mod tests;
