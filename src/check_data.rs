//! `runner check --data`: open every dataset task of a recipe, read every split its evaluation
//! settings use and decode every image, collecting every problem instead of stopping at the first.

use losa_framework::data::identity::tasks;
use losa_framework::data::{DataError, Dataset};
use losa_framework::plan::splits_read;
use losa_framework::recipe::Recipe;

/// Problems listed in full before the rest are only counted (a missing image folder would
/// otherwise print one line per image).
const LISTED: usize = 100;

/// One line per task that is fine, or every problem found in any task.
pub fn check(recipe: &Recipe) -> Result<Vec<String>, String> {
    // Images are prepared at the backbone's input size; decoding does not depend on it, so the
    // first backbone's size serves for the check.
    let image_size = recipe.backbones.first().map_or(224, |b| b.image_size);
    let splits = splits_read(&recipe.eval);
    let mut ok = Vec::new();
    let mut problems: Vec<DataError> = Vec::new();
    for config in &recipe.datasets {
        for task in tasks(config) {
            tracing::info!("checking {} task {}", config.kind(), task.name);
            let dataset = match Dataset::open(config, &task, image_size) {
                Ok(d) => d,
                Err(e) => {
                    problems.extend(e.into_list());
                    continue;
                }
            };
            let mut counts = Vec::new();
            let before = problems.len();
            for &split in &splits {
                match dataset.split(split).and_then(|s| s.check().map(|()| s.len())) {
                    Ok(n) => counts.push(format!("{split} {n} images")),
                    Err(e) => problems.extend(e.into_list()),
                }
            }
            if problems.len() == before {
                ok.push(format!(
                    "{} {}: {} classes; {}",
                    config.kind(),
                    task.name,
                    dataset.classes(),
                    counts.join(", ")
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(ok);
    }
    // Tasks of one entry share their root: a missing root is one problem, not one per task.
    let mut seen = std::collections::HashSet::new();
    let problems: Vec<String> =
        problems.iter().map(ToString::to_string).filter(|p| seen.insert(p.clone())).collect();
    let mut text = format!("the data has {} problem(s):", problems.len());
    for p in problems.iter().take(LISTED) {
        text.push_str(&format!("\n  - {p}"));
    }
    if problems.len() > LISTED {
        text.push_str(&format!("\n  - ... and {} more", problems.len() - LISTED));
    }
    Err(text)
}
