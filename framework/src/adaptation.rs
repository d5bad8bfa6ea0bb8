//! The contract between an adaptation method and the rest of the framework: what it trains, how it
//! uses the backbone, and how it turns images (or cached backbone outputs) into logits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

use crate::vit::{NoHooks, Vit};

/// How a method uses the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneUse {
    /// Forward only and no gradient through it: its outputs can be computed once and cached.
    Frozen,
    /// Weights frozen, but gradients flow through its computation (to prompts, LoRA, biases).
    FrozenWithGrad,
    /// Its weights are trained.
    Trainable,
}

/// Backbone outputs a frozen-backbone method reads: the outputs of the blocks it taps (in the
/// order of [`Adaptation::taps`]) and the final normed tokens.
#[derive(Debug, Clone)]
pub struct Taps {
    /// Outputs of the tapped blocks, [batch, tokens, width] each.
    pub blocks: Vec<Tensor>,
    /// The last block's tokens after the final norm.
    pub tokens: Tensor,
}

/// An adaptation method, built for one backbone and one task.
pub trait Adaptation {
    /// The recipe `kind`.
    fn kind(&self) -> &'static str;

    /// How it uses the backbone.
    fn backbone_use(&self) -> BackboneUse;

    /// Every variable it trains, by name; the classification head's names start with `head.`.
    fn trainable(&self) -> Vec<(String, Var)>;

    /// Blocks (0-based) whose outputs it reads from the frozen backbone, sorted; empty when it
    /// reads only the final tokens. Used only when `backbone_use` is `Frozen`.
    fn taps(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Called before each training epoch (0-based): methods with random streams (dropout) restart
    /// them at that epoch's stream, so a resumed run continues exactly as an uninterrupted one.
    fn start_epoch(&self, _epoch: u64) {}

    /// Logits for a batch of images [batch, 3, H, W]; `train` turns dropout on.
    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> Result<Tensor>;

    /// Logits from precomputed backbone outputs. Only methods with a `Frozen` backbone support it.
    fn forward_taps(&self, _vit: &Vit, _taps: &Taps, _train: bool) -> Result<Tensor> {
        candle_core::bail!("{} trains through the backbone: it cannot run from cached features", self.kind())
    }

    /// The gradients of `loss` (computed from this method's logits) for its variables: candle's
    /// backward, plus, for a method whose ops compute their parameters' gradients outside
    /// candle's graph (LoSA's side blocks, through an `ops::GradSink`), those. Always take a
    /// method's gradients through this: `loss.backward()` alone may miss some.
    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        loss.backward()
    }
}

/// Runs the frozen backbone once and keeps what a frozen-backbone method reads. The outputs are
/// detached, so no gradient path into the backbone exists and its activations are freed.
pub fn compute_taps(vit: &Vit, images: &Tensor, taps: &[usize]) -> Result<Taps> {
    let out = vit.forward(images, &NoHooks, !taps.is_empty())?;
    let blocks = taps.iter().map(|&i| out.blocks[i].detach()).collect();
    Ok(Taps { blocks, tokens: out.tokens.detach() })
}

/// Parameter counts of a method: what it trains beside the head, and the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    /// Trainable parameters without the classification head.
    pub without_head: usize,
    /// Parameters of the classification head.
    pub head: usize,
}

impl ParamCount {
    /// Trainable parameters with the head.
    pub fn with_head(&self) -> usize {
        self.without_head + self.head
    }

    /// Counts the variables of a built method.
    pub fn of(adaptation: &dyn Adaptation) -> Self {
        let mut count = ParamCount { without_head: 0, head: 0 };
        for (name, var) in adaptation.trainable() {
            match name.starts_with("head.") {
                true => count.head += var.elem_count(),
                false => count.without_head += var.elem_count(),
            }
        }
        count
    }
}

/// Why adapter weights could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdapterFileError {
    /// Reading or writing failed.
    #[error("adapter file {}: {reason}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file's tensors do not match the method's variables.
    #[error("adapter file {} does not fit this {kind} adapter: {reason}", path.display())]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// The method's kind.
        kind: String,
        /// Every difference.
        reason: String,
    },
}

/// Saves exactly what the method trained (f32 safetensors, atomically) with `metadata`; returns
/// the file size in bytes.
pub fn save_adapter(
    adaptation: &dyn Adaptation,
    path: &Path,
    metadata: HashMap<String, String>,
) -> std::result::Result<u64, AdapterFileError> {
    let io = |reason: String| AdapterFileError::Io { path: path.to_owned(), reason };
    let mut tensors = Vec::new();
    for (name, var) in adaptation.trainable() {
        let t = var
            .as_tensor()
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|e| io(e.to_string()))?;
        tensors.push((name, t));
    }
    let mut metadata = metadata;
    metadata.insert("kind".into(), adaptation.kind().into());
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| io(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| io(e.to_string()))?;
    readable_by_all(path);
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| io(e.to_string()))
}

/// safetensors writes through a private temporary file (mode 0600); trained weights are results to
/// share like the records beside them (0644).
fn readable_by_all(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Loads weights saved by [`save_adapter`] into the method's variables; names and shapes must
/// match exactly.
pub fn load_adapter(adaptation: &dyn Adaptation, path: &Path) -> std::result::Result<(), AdapterFileError> {
    let io = |reason: String| AdapterFileError::Io { path: path.to_owned(), reason };
    let mut stored = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| io(e.to_string()))?;
    let vars = adaptation.trainable();
    let mut problems = Vec::new();
    for (name, var) in &vars {
        match stored.get(name) {
            None => problems.push(format!("missing {name} {:?}", var.dims())),
            Some(t) if t.dims() != var.dims() => {
                problems.push(format!("{name}: expected {:?}, found {:?}", var.dims(), t.dims()))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = stored.keys().filter(|k| !vars.iter().any(|(n, _)| n == *k)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected {k}")));
    if !problems.is_empty() {
        return Err(AdapterFileError::Mismatch {
            path: path.to_owned(),
            kind: adaptation.kind().into(),
            reason: problems.join("; "),
        });
    }
    for (name, var) in vars {
        let t = stored.remove(&name).unwrap_or_else(|| var.as_tensor().clone());
        let t =
            t.to_dtype(var.dtype()).and_then(|t| t.to_device(var.device())).map_err(|e| io(e.to_string()))?;
        var.set(&t).map_err(|e| io(e.to_string()))?;
    }
    Ok(())
}
