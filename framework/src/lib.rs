//! The losa framework: recipes, plans and run identity, datasets, the ViT backbone and its
//! checkpoints, run records and the runs folder (the engine follows).
#![warn(missing_docs)]

pub mod adaptation;
pub mod backbone;
pub mod canonical;
pub mod checkpoint;
pub mod data;
pub mod embed;
pub mod engine;
pub mod error;
pub mod ops;
pub mod plan;
pub mod recipe;
pub mod record;
pub mod select;
pub mod store;
pub mod vit;
