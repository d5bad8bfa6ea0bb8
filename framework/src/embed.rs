//! Running a backbone over a folder of images: pooled features (and the checkpoint's logits)
//! for every image, as `runner embed` writes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::data::DataError;
use crate::data::image::load_image;
use crate::recipe::{Pool, PreprocessConfig};
use crate::vit::{NoHooks, Vit};

/// File extensions `runner embed` reads.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Why embedding failed (bad input: exit code 2, except tensor errors).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The image folder cannot be listed or holds no image.
    #[error("image folder {}: {reason}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Some images cannot be read; all of them are listed.
    #[error("{} image(s) cannot be used:\n  - {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  - "))]
    Images(Vec<DataError>),
    /// A tensor operation failed.
    #[error("embedding failed: {}", crate::error::Plain(.0))]
    Tensor(#[from] candle_core::Error),
    /// Writing the output failed.
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The image files directly in `dir`, sorted by file name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, EmbedError> {
    let folder = |reason: String| EmbedError::Folder { path: dir.to_owned(), reason };
    let entries = std::fs::read_dir(dir).map_err(|e| folder(e.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(folder(format!("no image files ({})", IMAGE_EXTENSIONS.join(", "))));
    }
    Ok(files)
}

/// Pooled features after the final norm (`pre_logits` not applied) and, when the checkpoint has
/// a head, its logits, for every file.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// [images, width], f32.
    pub features: Tensor,
    /// [images, classes], f32, when the checkpoint has a head.
    pub logits: Option<Tensor>,
}

/// Runs `vit` over `files` in batches, decoding each batch in parallel.
pub fn embed(
    vit: &Vit,
    files: &[PathBuf],
    preprocess: &PreprocessConfig,
    pool: Pool,
    batch_size: usize,
    device: &Device,
) -> Result<Embeddings, EmbedError> {
    let size = vit.config.image_size;
    let mut features = Vec::new();
    let mut logits = Vec::new();
    let mut errors = Vec::new();
    for chunk in files.chunks(batch_size.max(1)) {
        let decoded: Vec<Result<Vec<f32>, DataError>> =
            chunk.par_iter().map(|path| load_image(path, preprocess, size)).collect();
        let mut values = Vec::with_capacity(chunk.len() * 3 * size * size);
        for result in decoded {
            match result {
                Ok(v) => values.extend(v),
                Err(e) => errors.push(e),
            }
        }
        // Keep decoding after a bad image, so that every bad image is reported at once.
        if !errors.is_empty() {
            continue;
        }
        let images = Tensor::from_vec(values, (chunk.len(), 3, size, size), device)?;
        let tokens = vit.forward(&images, &NoHooks, false)?.tokens;
        // The checkpoint's own logits come from its own pooling, the class token.
        if let Some(l) = vit.logits(&vit.pool(&tokens, Pool::Token)?)? {
            logits.push(l.to_dtype(DType::F32)?);
        }
        features.push(vit.pool(&tokens, pool)?.to_dtype(DType::F32)?);
    }
    if !errors.is_empty() {
        return Err(EmbedError::Images(errors));
    }
    let logits = if logits.is_empty() { None } else { Some(Tensor::cat(&logits, 0)?) };
    Ok(Embeddings { features: Tensor::cat(&features, 0)?, logits })
}

/// Writes `features` (and `logits`) as safetensors, with the file names (a JSON list, in row
/// order) under the metadata key `files` and `extra` metadata beside it.
pub fn save(
    path: &Path,
    embeddings: &Embeddings,
    files: &[PathBuf],
    extra: &[(&str, String)],
) -> Result<(), EmbedError> {
    let failed = |reason: String| EmbedError::Write { path: path.to_owned(), reason };
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let mut metadata: HashMap<String, String> =
        extra.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    metadata.insert("files".into(), serde_json::to_string(&names).map_err(|e| failed(e.to_string()))?);
    let mut tensors = vec![("features".to_owned(), embeddings.features.to_device(&Device::Cpu)?)];
    if let Some(l) = &embeddings.logits {
        tensors.push(("logits".to_owned(), l.to_device(&Device::Cpu)?));
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| failed(e.to_string()))
}
