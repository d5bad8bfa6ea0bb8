//! Evaluation settings: which splits train and test, how the reported epoch is chosen.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A data split. The names are VTAB-1k's and every dataset kind uses them: `train800` is the
/// training part, `val200` the held-out validation part, `train800val200` both, `test` the test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Split {
    /// Training part (800 images in VTAB-1k).
    #[serde(rename = "train800")]
    Train800,
    /// Validation part (200 images in VTAB-1k), disjoint from `train800`.
    #[serde(rename = "val200")]
    Val200,
    /// `train800` and `val200` together (1000 images in VTAB-1k).
    #[serde(rename = "train800val200")]
    Train800Val200,
    /// The test set.
    #[serde(rename = "test")]
    Test,
}

impl Split {
    /// All splits, in the usual order.
    pub const ALL: [Split; 4] = [Split::Train800, Split::Val200, Split::Train800Val200, Split::Test];

    /// The split's name as written in recipes and list files.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train800 => "train800",
            Split::Val200 => "val200",
            Split::Train800Val200 => "train800val200",
            Split::Test => "test",
        }
    }

    /// Whether the two splits share images.
    pub fn overlaps(self, other: Split) -> bool {
        use Split::*;
        self == other
            || matches!(
                (self, other),
                (Train800Val200, Train800 | Val200) | (Train800 | Val200, Train800Val200)
            )
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which epoch's weights give the reported result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The weights after the last epoch (the VTAB-1k protocol).
    Last,
    /// The evaluated epoch with the best accuracy on `val_split`, which must not overlap `train_split`.
    BestVal,
    /// The evaluated epoch with the best test accuracy. Common in PETL code, but it selects on the
    /// test set: never a default, and reports label such results.
    BestTest,
}

/// Which splits a run trains and is evaluated on, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Split the adaptation trains on. Default: "train800val200".
    pub train_split: Split,
    /// Split the final accuracy is measured on. Default: "test".
    pub test_split: Split,
    /// Split evaluated during training (for curves and `best_val`); absent means none.
    /// Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_split: Option<Split>,
    /// Which epoch is reported. Default: "last".
    pub select: Selection,
    /// Evaluate every this many epochs during training (0: only after the last epoch). Default: 10.
    pub every_epochs: u32,
    /// Images per evaluation batch (no gradients are kept, so it can exceed the training batch).
    /// Default: 256.
    pub batch_size: u32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            train_split: Split::Train800Val200,
            test_split: Split::Test,
            val_split: None,
            select: Selection::Last,
            every_epochs: 10,
            batch_size: 256,
        }
    }
}
