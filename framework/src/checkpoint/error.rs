//! What can be wrong with a checkpoint.

use std::path::PathBuf;

use crate::vit::VitConfig;

/// Why a checkpoint could not be used. All of these are bad input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file is missing, truncated, or not a checkpoint format we read.
    #[error("cannot read checkpoint {}: {reason}", path.display())]
    Unreadable {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file parsed but its tensors cannot be converted.
    #[error("invalid checkpoint {}: {reason}", path.display())]
    Invalid {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The tensors do not fit the architecture the recipe asks for.
    #[error("{}", mismatch_message(path, config, missing, unexpected, wrong_shape))]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The architecture asked for.
        config: Box<VitConfig>,
        /// Tensors the architecture needs that the checkpoint lacks, with their shapes.
        missing: Vec<String>,
        /// Tensors the checkpoint has that the architecture does not use.
        unexpected: Vec<String>,
        /// Tensors of the wrong shape.
        wrong_shape: Vec<String>,
    },
    /// Writing a checkpoint failed.
    #[error("cannot write checkpoint {}: {reason}", path.display())]
    Save {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn mismatch_message(
    path: &std::path::Path,
    config: &VitConfig,
    missing: &[String],
    unexpected: &[String],
    wrong_shape: &[String],
) -> String {
    let s = &config.shape;
    let mut text = format!(
        "checkpoint {} does not fit a ViT of width {}, depth {}, MLP {}, patch {} at {} px \
         (check the recipe's backbone variant and sizes):",
        path.display(),
        s.width,
        s.depth,
        s.mlp_dim,
        s.patch_size,
        config.image_size
    );
    for (title, items) in [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)] {
        if !items.is_empty() {
            text.push_str(&format!("\n  {title} ({}):", items.len()));
            for item in items {
                text.push_str(&format!("\n    {item}"));
            }
        }
    }
    text
}
