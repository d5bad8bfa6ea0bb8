//! The backbone a recipe asks for: a checkpoint, or a seeded random start, on a device and dtype.

use candle_core::{DType, Device};

use crate::checkpoint::{self, CheckpointError};
use crate::recipe::{BackboneConfig, BackboneDtype};
use crate::vit::{Vit, VitConfig, random_weights};

/// Why a backbone could not be built (bad input: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The architecture is not a valid ViT.
    #[error("invalid backbone: {0}")]
    Architecture(String),
    /// The checkpoint cannot be read or does not fit.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Building the tensors failed (e.g. out of memory).
    #[error("cannot build the backbone: {}", crate::error::Plain(.0))]
    Tensor(#[from] candle_core::Error),
}

/// The number format of the frozen backbone on `device`: bf16 on CUDA and f32 on the CPU unless
/// the recipe says otherwise.
pub fn backbone_dtype(dtype: BackboneDtype, device: &Device) -> DType {
    match (dtype, device.is_cuda()) {
        (BackboneDtype::Auto, true) | (BackboneDtype::Bf16, _) => DType::BF16,
        (BackboneDtype::Auto, false) | (BackboneDtype::F32, _) => DType::F32,
        (BackboneDtype::F16, _) => DType::F16,
    }
}

/// Loads the backbone: its checkpoint (format detected, position embedding resampled to the
/// recipe's image size) or a seeded random start.
pub fn load_backbone(config: &BackboneConfig, device: &Device) -> Result<Vit, BackboneError> {
    let arch = VitConfig::from_recipe(config).map_err(BackboneError::Architecture)?;
    let dtype = backbone_dtype(config.dtype, device);
    match (&config.weights, config.random_init) {
        (Some(path), _) => Ok(checkpoint::read(path)?.into_vit(arch, device, dtype)?),
        (None, Some(seed)) => {
            let tensors =
                crate::vit::map_tensors(random_weights(&arch, seed, device)?, |t| t.to_dtype(dtype))?;
            Ok(Vit::new(arch, &tensors)?)
        }
        (None, None) => Err(BackboneError::Architecture(
            "the backbone needs `weights` (a checkpoint) or `random_init` (a seed)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_backbone_loads_from_a_checkpoint_or_a_seed() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vit/vit_google.npz");
        let mut config = BackboneConfig::random("custom", 3);
        (config.width, config.depth, config.heads, config.mlp_dim, config.patch_size) =
            (Some(48), Some(2), Some(3), Some(96), Some(8));
        config.image_size = 32;
        let random = load_backbone(&config, &Device::Cpu).unwrap();
        assert!(random.head.is_none());
        assert_eq!(random.pos_embed.dims(), &[1, 17, 48]);
        config.random_init = None;
        config.weights = Some(fixture);
        config.image_size = 48;
        let loaded = load_backbone(&config, &Device::Cpu).unwrap();
        assert_eq!(loaded.config.num_classes, Some(5));
        assert_eq!(loaded.pos_embed.dims(), &[1, 37, 48], "resampled to the recipe's image size");
        config.variant = "B/16".into();
        (config.width, config.depth, config.heads, config.mlp_dim, config.patch_size) =
            (None, None, None, None, None);
        config.image_size = 224;
        let err = load_backbone(&config, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("does not fit a ViT of width 768, depth 12"), "{err}");
        config.image_size = 100;
        let err = load_backbone(&config, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("image size 100 is not a positive multiple of the patch size 16"), "{err}");
    }

    #[test]
    fn the_backbone_runs_in_bf16_on_cuda_and_f32_on_the_cpu_by_default() {
        assert_eq!(backbone_dtype(BackboneDtype::Auto, &Device::Cpu), DType::F32);
        assert_eq!(backbone_dtype(BackboneDtype::Bf16, &Device::Cpu), DType::BF16);
        assert_eq!(backbone_dtype(BackboneDtype::F16, &Device::Cpu), DType::F16);
    }
}
