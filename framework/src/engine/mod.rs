//! Training: the optimisers, the learning-rate schedule, the loss, the feature cache, the fit
//! loop with its resumable state, and the execution of a plan into a runs folder.

pub mod execute;
pub mod features;
pub mod fit;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod progress;
pub mod protocol;
pub mod resume;
pub mod running;
pub mod schedule;
