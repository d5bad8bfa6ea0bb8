//! The state a run saves after each epoch so an interrupted run resumes where it stopped: the
//! trained variables, the optimiser's moments, the step count, the curves and times so far, and
//! the weights the selection rule holds. One safetensors file (the counters as JSON metadata),
//! written atomically, so a reader sees the old state or the new one, never half of one.
//!
//! Nothing random is saved: data order, augmentation and dropout are functions of the run's seed
//! and the epoch, so they continue identically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optim::Optimizer;
use crate::record::EpochMetrics;

/// The metadata key holding [`State`] as JSON.
const STATE_KEY: &str = "losa.resume";

/// Counters and measurements up to the last finished epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Epochs finished.
    pub epoch: u32,
    /// Optimisation steps taken.
    pub steps: u64,
    /// One point per finished epoch.
    pub curves: Vec<EpochMetrics>,
    /// Training seconds so far.
    pub train_s: f64,
    /// Evaluation seconds so far.
    pub eval_s: f64,
    /// Training images so far.
    pub images: u64,
}

/// The best evaluated epoch so far under the selection rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The epoch, 1-based.
    pub epoch: u32,
    /// Its score (validation or test accuracy).
    pub score: f64,
}

/// A copy of the trained variables at the best epoch.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Which epoch, with what score.
    pub best: Best,
    tensors: Vec<(String, Tensor)>,
}

impl Snapshot {
    /// Copies the variables' current values (a deep copy: `Var::set` writes in place).
    pub fn take(vars: &[(String, Var)], best: Best) -> candle_core::Result<Self> {
        let tensors = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { best, tensors })
    }

    /// Writes the copied values back into the variables.
    pub fn restore(&self, vars: &[(String, Var)]) -> candle_core::Result<()> {
        for ((_, var), (_, t)) in vars.iter().zip(&self.tensors) {
            var.set(t)?;
        }
        Ok(())
    }
}

/// Why the state could not be saved or read.
#[derive(Debug, thiserror::Error)]
#[error("resume state {}: {reason}", path.display())]
pub struct StateError {
    /// The state file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    state: State,
    best: Option<Best>,
}

/// Saves the state, the variables, the optimiser and the best snapshot to `path` atomically.
pub fn save(
    path: &Path,
    state: &State,
    vars: &[(String, Var)],
    optimizer: &Optimizer,
    best: Option<&Snapshot>,
) -> Result<(), StateError> {
    let err = |reason: String| StateError { path: path.to_owned(), reason };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in vars {
        tensors.push((format!("param.{name}"), var.as_tensor().clone()));
    }
    for (name, t) in optimizer.state().map_err(|e| err(e.to_string()))? {
        tensors.push((format!("optim.{name}"), t));
    }
    if let Some(snapshot) = best {
        for (name, t) in &snapshot.tensors {
            tensors.push((format!("best.{name}"), t.clone()));
        }
    }
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| err(e.to_string()))?;
    let saved = Saved { state: state.clone(), best: best.map(|b| b.best) };
    let json = serde_json::to_string(&saved).map_err(|e| err(e.to_string()))?;
    let metadata = HashMap::from([(STATE_KEY.to_owned(), json)]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension(format!("{}.tmp", crate::record::writer_tag()));
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// The counters of a saved state, without loading its tensors (`None` if it cannot be read).
/// Reads only the file's header (an 8-byte length, then JSON): the tensors after it can be
/// gigabytes (a fully finetuned backbone with its optimiser moments).
pub fn peek(path: &Path) -> Option<State> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    let mut header = Vec::new();
    file.take(len as u64).read_to_end(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let json = header.get("__metadata__")?.get(STATE_KEY)?.as_str()?;
    serde_json::from_str::<Saved>(json).ok().map(|s| s.state)
}

/// Reads a state saved by [`save`]: sets the variables and the optimiser, and returns the
/// counters and the best snapshot. The variables must match the saved ones exactly.
pub fn load(
    path: &Path,
    vars: &[(String, Var)],
    optimizer: &mut Optimizer,
    device: &Device,
) -> Result<(State, Option<Snapshot>), StateError> {
    let err = |reason: String| StateError { path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| err("no state metadata".into()))?;
    let saved: Saved = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    let mut tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| err(e.to_string()))?;
    let mut take = |name: String, like: &Var| -> Result<Tensor, StateError> {
        let t = tensors.remove(&name).ok_or_else(|| err(format!("missing {name}")))?;
        if t.dims() != like.dims() {
            return Err(err(format!("{name}: expected {:?}, found {:?}", like.dims(), t.dims())));
        }
        t.to_dtype(like.dtype()).map_err(|e| err(e.to_string()))
    };
    let mut values = Vec::new();
    for (name, var) in vars {
        values.push(take(format!("param.{name}"), var)?);
    }
    let best = match saved.best {
        Some(best) => {
            let mut copies = Vec::new();
            for (name, var) in vars {
                copies.push((name.clone(), take(format!("best.{name}"), var)?));
            }
            Some(Snapshot { best, tensors: copies })
        }
        None => None,
    };
    for ((_, var), value) in vars.iter().zip(values) {
        var.set(&value).map_err(|e| err(e.to_string()))?;
    }
    let moments: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("optim.").map(|n| (n.to_owned(), t)))
        .collect();
    optimizer.restore(&moments, saved.state.steps).map_err(|e| err(e.to_string()))?;
    Ok((saved.state, best))
}
