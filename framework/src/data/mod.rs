//! Datasets: task tables, opening a task's splits (VTAB-1k lists, image folders, IDX files, the
//! procedural suite), image decoding and preprocessing, batches for the engine, and dataset
//! identity for run ids.
//!
//! Typical use: [`Dataset::open`] a task of a recipe's dataset entry, then build a
//! [`TrainLoader`] on its training split (decoded once, kept in memory, shuffled per epoch) and
//! an [`EvalLoader`] on each evaluation split (decoded batch by batch).

mod dataset;
mod error;
pub mod folder;
pub mod identity;
pub mod idx;
pub mod image;
pub mod list;
mod loader;
mod seeded;
mod sprites;
pub mod synthetic;
pub mod vtab;

pub use dataset::{Dataset, ImageRef, Sample, SplitData};
pub use error::DataError;
pub use image::load_image;
pub use loader::{Batch, EvalLoader, TrainLoader};
pub use sprites::{Shape, Sprite};

/// Expands the task names of a recipe list with `select` (several tasks for a group name, none for
/// an unknown name), in order and without repeats; unknown names become problems at `key[i]`,
/// with the nearest of `known` suggested.
pub(crate) fn expand_names<T: PartialEq>(
    names: &[String],
    key: &[String],
    what: &str,
    known: &[&str],
    select: impl Fn(&str) -> Vec<T>,
) -> Result<Vec<T>, Vec<(Vec<String>, String)>> {
    let mut tasks = Vec::new();
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push((key.to_vec(), "no tasks given; expected task names or \"all\"".to_owned()));
    }
    for (i, name) in names.iter().enumerate() {
        let selected = select(name);
        if selected.is_empty() {
            let hint = crate::recipe::did_you_mean(name, known.iter().copied());
            let mut at = key.to_vec();
            at.push(i.to_string());
            problems.push((at, format!("unknown {what} task \"{name}\"{hint}")));
        }
        for t in selected {
            if !tasks.contains(&t) {
                tasks.push(t);
            }
        }
    }
    if problems.is_empty() { Ok(tasks) } else { Err(problems) }
}
