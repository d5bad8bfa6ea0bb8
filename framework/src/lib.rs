//! The losa framework: recipes, plans and run identity (backbone, data and engine follow).
#![warn(missing_docs)]

pub mod canonical;
pub mod data;
pub mod plan;
pub mod recipe;
