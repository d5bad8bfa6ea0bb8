//! The built-in procedural suite's tasks (image generation follows in the data issue).

/// A task of the procedural suite: what the label of a sprite image encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticTask {
    /// Name as written in recipes.
    pub name: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// What the label means.
    pub description: &'static str,
}

/// The downstream tasks, then the upstream (pretraining) task.
pub const TASKS: [SyntheticTask; 6] = [
    SyntheticTask {
        name: "location", classes: 16, description: "which cell of a 4×4 grid holds the sprite"
    },
    SyntheticTask { name: "orientation", classes: 16, description: "the sprite's rotation in 16 steps" },
    SyntheticTask { name: "scale", classes: 6, description: "the sprite's size in 6 steps" },
    SyntheticTask { name: "shape", classes: 5, description: "the sprite's shape" },
    SyntheticTask { name: "count", classes: 8, description: "how many sprites (1 to 8)" },
    SyntheticTask { name: "upstream", classes: 40, description: "shape × colour (pretraining task)" },
];

/// Name of the pretraining task, which "all" leaves out.
pub const UPSTREAM: &str = "upstream";

/// Expands task names and "all" into tasks, in recipe order, without repeats.
/// `key` is the recipe key path of the list, for the problems.
pub fn expand(
    names: &[String],
    key: &[String],
) -> Result<Vec<&'static SyntheticTask>, Vec<(Vec<String>, String)>> {
    let known: Vec<&str> = TASKS.iter().map(|t| t.name).chain(["all"]).collect();
    super::expand_names(names, key, "synthetic", &known, |name| match name {
        "all" => TASKS.iter().filter(|t| t.name != UPSTREAM).collect(),
        _ => TASKS.iter().filter(|t| t.name == name).collect(),
    })
}
