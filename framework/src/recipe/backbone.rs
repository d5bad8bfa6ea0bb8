//! Backbone settings: which ViT, from which weights, at which image size.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One backbone of the comparison. Either `weights` (a checkpoint file) or `random_init` (a seed)
/// must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// Name in reports. Default: "ViT-" followed by the variant, e.g. "ViT-B/16".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Architecture: "Ti", "S", "B", "L" or "H" with patch size 8, 14, 16 or 32 (e.g. "B/16"),
    /// "g/14", or "custom" (then `width`, `depth`, `heads`, `mlp_dim` and `patch_size` are all
    /// required). Default: "B/16".
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Token width d (overrides the variant's). Default: the variant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// Number of transformer blocks L (overrides the variant's). Default: the variant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Attention heads per block; must divide `width`. Default: the variant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// Hidden width of each block's MLP. Default: the variant's (4 × width for the named ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<usize>,
    /// Patch size in pixels (overrides the variant's). Default: the variant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
    /// Input image size in pixels (square); a multiple of the patch size. The position embedding is
    /// resampled when it differs from the checkpoint's. Default: 224.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Checkpoint file: timm or HF safetensors, or Google's `.npz`; the format is detected.
    /// Relative to the recipe file. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-input-path" = true))]
    pub weights: Option<PathBuf>,
    /// Seed of a random start (LeCun/timm init) used instead of `weights`, for pretraining from
    /// scratch and benchmarks. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_init: Option<u64>,
    /// Epsilon of every LayerNorm. Default: 1e-6 (Google's ViTs and timm's).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Precision of the frozen backbone's forward pass: "auto" (bf16 on CUDA, f32 on CPU), "f32",
    /// "bf16" or "f16". Trainable parameters and optimiser state stay f32. Default: "auto".
    #[serde(default)]
    pub dtype: BackboneDtype,
}

fn default_variant() -> String {
    "B/16".into()
}
fn default_image_size() -> usize {
    224
}
fn default_norm_eps() -> f64 {
    1e-6
}

/// Number format of the frozen backbone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackboneDtype {
    /// bf16 on CUDA, f32 on CPU.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

/// The resolved shape of a ViT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VitShape {
    /// Token width d.
    pub width: usize,
    /// Number of blocks L.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_dim: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
}

/// The named ViT sizes (width, depth, heads, MLP), from the ViT papers and timm.
pub const NAMED_SIZES: [(&str, [usize; 4]); 6] = [
    ("Ti", [192, 12, 3, 768]),
    ("S", [384, 12, 6, 1536]),
    ("B", [768, 12, 12, 3072]),
    ("L", [1024, 24, 16, 4096]),
    ("H", [1280, 32, 16, 5120]),
    ("g", [1408, 40, 16, 6144]),
];

/// Patch sizes the named variants come in.
pub const PATCH_SIZES: [usize; 4] = [8, 14, 16, 32];

impl BackboneConfig {
    /// A backbone of the given variant with a seeded random start and all else default.
    pub fn random(variant: &str, seed: u64) -> Self {
        Self {
            label: None,
            variant: variant.into(),
            width: None,
            depth: None,
            heads: None,
            mlp_dim: None,
            patch_size: None,
            image_size: default_image_size(),
            weights: None,
            random_init: Some(seed),
            norm_eps: default_norm_eps(),
            dtype: BackboneDtype::Auto,
        }
    }

    /// The name shown in reports.
    pub fn display_name(&self) -> String {
        self.label.clone().unwrap_or_else(|| format!("ViT-{}", self.variant))
    }

    /// Resolves the variant and the explicit overrides into a shape, or says what is wrong.
    pub fn shape(&self) -> Result<VitShape, String> {
        let named = if self.variant == "custom" { None } else { Some(parse_variant(&self.variant)?) };
        let pick = |name: &str, explicit: Option<usize>, from: Option<usize>| {
            explicit.or(from).ok_or_else(|| format!("`{name}` is required when variant = \"custom\""))
        };
        let shape = VitShape {
            width: pick("width", self.width, named.map(|s| s.width))?,
            depth: pick("depth", self.depth, named.map(|s| s.depth))?,
            heads: pick("heads", self.heads, named.map(|s| s.heads))?,
            mlp_dim: pick("mlp_dim", self.mlp_dim, named.map(|s| s.mlp_dim))?,
            patch_size: pick("patch_size", self.patch_size, named.map(|s| s.patch_size))?,
        };
        Ok(shape)
    }
}

/// Parses a named variant such as "B/16" or "g/14".
pub fn parse_variant(variant: &str) -> Result<VitShape, String> {
    let names: Vec<&str> = NAMED_SIZES.iter().map(|(n, _)| *n).collect();
    let expected = format!(
        "a size among {} with a patch size among {:?} (e.g. \"B/16\"), or \"custom\"",
        names.join(", "),
        PATCH_SIZES
    );
    let (size, patch) = variant
        .split_once('/')
        .ok_or_else(|| format!("unknown variant \"{variant}\"; expected {expected}"))?;
    let dims = NAMED_SIZES
        .iter()
        .find(|(n, _)| *n == size)
        .map(|(_, d)| *d)
        .ok_or_else(|| format!("unknown ViT size \"{size}\" in \"{variant}\"; expected {expected}"))?;
    let patch_size: usize = patch
        .parse()
        .ok()
        .filter(|p| PATCH_SIZES.contains(p) || (size == "g" && *p == 14))
        .ok_or_else(|| format!("unknown patch size \"{patch}\" in \"{variant}\"; expected {expected}"))?;
    if size == "g" && patch_size != 14 {
        return Err(format!("ViT-g comes with patch size 14 only, found \"{variant}\""));
    }
    let [width, depth, heads, mlp_dim] = dims;
    Ok(VitShape { width, depth, heads, mlp_dim, patch_size })
}
