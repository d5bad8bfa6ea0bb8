//! Reading the checkpoints researchers have — timm or HF transformers safetensors and Google's
//! original `.npz` — into timm's tensor names, checking them against the architecture, and writing
//! timm-style safetensors.

mod error;
mod hf;
mod npy;
mod npz;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use error::CheckpointError;

use crate::vit::{Vit, VitConfig, posembed};

/// Where a checkpoint's layout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// timm's safetensors (`blocks.{i}.attn.qkv.weight`, ...).
    Timm,
    /// HF transformers' ViT safetensors (`vit.encoder.layer.{i}...`).
    HfTransformers,
    /// Google's `.npz` (vit_jax or big_vision keys).
    GoogleNpz,
}

/// A checkpoint's tensors under timm's names, in f32 on the CPU.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file it was read from.
    pub path: PathBuf,
    /// The layout it was stored in.
    pub format: Format,
    /// Tensors by timm name.
    pub tensors: HashMap<String, Tensor>,
}

/// Reads a checkpoint, detecting its format from its content.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let unreadable = |reason: String| CheckpointError::Unreadable { path: path.to_owned(), reason };
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let len = file.read(&mut magic).map_err(|e| unreadable(e.to_string()))?;
    let (format, tensors) = if len >= 4 && &magic[..4] == b"PK\x03\x04" {
        let arrays = npy::read_npz(path).map_err(|e| unreadable(format!("not a readable .npz: {e}")))?;
        (Format::GoogleNpz, npz::to_timm(arrays).map_err(|r| invalid(path, r))?)
    } else if len == 8 && u64::from_le_bytes(magic) < 100_000_000 {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| unreadable(format!("not a readable safetensors file: {e}")))?;
        match hf::is_hf(&tensors) {
            true => (Format::HfTransformers, hf::to_timm(tensors).map_err(|r| invalid(path, r))?),
            false => (Format::Timm, tensors),
        }
    } else {
        return Err(unreadable(
            "unknown format: expected timm or HF transformers .safetensors, or Google's .npz \
             (PyTorch pickles such as .pth or .bin are not read; save them as safetensors)"
                .into(),
        ));
    };
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()
        .map_err(|e| unreadable(e.to_string()))?;
    Ok(Checkpoint { path: path.to_owned(), format, tensors })
}

fn invalid(path: &Path, reason: String) -> CheckpointError {
    CheckpointError::Invalid { path: path.to_owned(), reason }
}

impl Checkpoint {
    /// Builds the ViT `config` describes (its head, if any, taken from the checkpoint), resampling
    /// the position embedding when the image size differs; every missing, unexpected or wrongly
    /// shaped tensor is reported in one error.
    pub fn into_vit(
        self,
        mut config: VitConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Vit, CheckpointError> {
        let Checkpoint { path, mut tensors, format } = self;
        // As timm does: Google's .npz bilinearly, safetensors with antialiased bicubic.
        let interp = match format {
            Format::GoogleNpz => posembed::Interpolation::Bilinear,
            Format::Timm | Format::HfTransformers => posembed::Interpolation::BicubicAntialias,
        };
        config.pre_logits = tensors.get("pre_logits.fc.weight").and_then(|w| w.dims().first().copied());
        config.num_classes = tensors.get("head.weight").and_then(|w| w.dims().first().copied());
        if let Some(pos) = tensors.get("pos_embed") {
            let resampled = resample_pos_embed(pos, &config, interp).map_err(|r| invalid(&path, r))?;
            tensors.insert("pos_embed".into(), resampled);
        }
        check_shapes(&path, &config, &tensors)?;
        let tensors = crate::vit::map_tensors(tensors, |t| t.to_device(device)?.to_dtype(dtype))
            .map_err(|e| invalid(&path, e.to_string()))?;
        Vit::new(config, &tensors).map_err(|e| invalid(&path, e.to_string()))
    }
}

/// A position embedding for another grid, as timm resamples it on load (class token kept).
fn resample_pos_embed(
    pos: &Tensor,
    config: &VitConfig,
    interp: posembed::Interpolation,
) -> Result<Tensor, String> {
    let dims = pos.dims().to_vec();
    let [1, tokens, width] = dims[..] else { return Ok(pos.clone()) };
    let new = config.grid();
    let old = ((tokens - 1) as f64).sqrt().round() as usize;
    if tokens == config.num_tokens() || old * old + 1 != tokens || width != config.shape.width {
        return Ok(pos.clone()); // same grid, or a shape the mismatch check reports
    }
    let values: Vec<f32> = pos.flatten_all().and_then(|t| t.to_vec1()).map_err(|e| e.to_string())?;
    let out = posembed::resample(&values, width, 1, old, new, interp);
    Tensor::from_vec(out, (1, new * new + 1, width), &Device::Cpu).map_err(|e| e.to_string())
}

fn check_shapes(
    path: &Path,
    config: &VitConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    let expected = config.tensor_shapes();
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => missing.push(format!("{name} {shape:?}")),
            Some(t) if t.dims() != shape.as_slice() => {
                wrong_shape.push(format!("{name}: expected {shape:?}, found {:?}", t.dims()))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> = tensors
        .iter()
        .filter(|(k, _)| !expected.iter().any(|(name, _)| name == *k))
        .map(|(k, t)| format!("{k} {:?}", t.dims()))
        .collect();
    unexpected.sort();
    if missing.is_empty() && wrong_shape.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    Err(CheckpointError::Mismatch {
        path: path.to_owned(),
        config: Box::new(*config),
        missing,
        unexpected,
        wrong_shape,
    })
}

/// Writes tensors as timm-style safetensors, atomically (a temporary file renamed into place).
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let failed = |reason: String| CheckpointError::Save { path: path.to_owned(), reason };
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| failed(e.to_string()))?;
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
#[path = "parity_tests.rs"]
mod parity_tests;
