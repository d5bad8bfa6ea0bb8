//! The losa framework: recipes, plans and run identity, the ViT backbone and its checkpoints (data and engine follow).
#![warn(missing_docs)]

pub mod adaptation;
pub mod backbone;
pub mod canonical;
pub mod checkpoint;
pub mod data;
pub mod embed;
pub mod engine;
pub mod plan;
pub mod recipe;
pub mod vit;
