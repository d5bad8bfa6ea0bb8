//! Training: optimisers, the learning-rate schedule and the cache of frozen-backbone features
//! (the training loop follows in the engine issue).

pub mod features;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod schedule;
