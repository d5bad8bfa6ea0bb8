//! Training: optimisers and the learning-rate schedule (the training loop follows in the engine
//! issue).

pub mod loss;
pub mod memory;
pub mod optim;
pub mod schedule;
