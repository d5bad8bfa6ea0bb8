//! Datasets a recipe adapts to, one variant per `kind`, and their preprocessing.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A dataset, chosen by `kind`. Input paths are relative to the recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetConfig {
    /// VTAB-1k in the standard layout: `<root>/<task>/{train800,val200,train800val200,test}.txt`
    /// listing `images/<split>/<index>.jpg <label>`.
    Vtab1k(Vtab1kConfig),
    /// One sub-folder of images per class (class index = rank of the folder name).
    ImageFolder(ImageFolderConfig),
    /// MNIST-format IDX image and label files, gzipped or not (e.g. Fashion-MNIST).
    Idx(IdxConfig),
    /// The built-in procedural suite of sprite images, deterministic by seed; needs no files.
    Synthetic(SyntheticConfig),
}

/// VTAB-1k from its standard folder layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vtab1kConfig {
    /// Folder holding one sub-folder per task. Required.
    #[schemars(extend("x-input-path" = true))]
    pub root: PathBuf,
    /// Task folder names or aliases (e.g. "cifar", "cifar100"), or a group: "all", "natural",
    /// "specialized", "structured". Default: ["all"].
    #[serde(default = "all_tasks")]
    pub tasks: Vec<String>,
    /// Image preprocessing. Default: square bicubic resize, inception normalisation.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
}

fn all_tasks() -> Vec<String> {
    vec!["all".into()]
}

/// Images sorted into one folder per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// Task name in reports. Default: the name of the (train) root folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Folder of class folders, split by `split_seed` into train/val/test; give either this or
    /// both `train_root` and `test_root`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-input-path" = true))]
    pub root: Option<PathBuf>,
    /// Folder of class folders used for training and validation. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-input-path" = true))]
    pub train_root: Option<PathBuf>,
    /// Folder of class folders used for testing (same class names). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-input-path" = true))]
    pub test_root: Option<PathBuf>,
    /// Images held out of the training images as `val200`. Default: 200.
    #[serde(default = "default_val_size")]
    pub val_size: usize,
    /// Images held out of `root` as `test` (only with `root`). Default: 20% of the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_size: Option<usize>,
    /// Seed of the held-out splits. Default: 0.
    #[serde(default)]
    pub split_seed: u64,
    /// Image preprocessing. Default: square bicubic resize, inception normalisation.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
}

/// MNIST-format IDX files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdxConfig {
    /// Task name in reports. Default: "idx".
    #[serde(default = "default_idx_task")]
    pub task: String,
    /// Training images, e.g. `train-images-idx3-ubyte.gz`. Required.
    #[schemars(extend("x-input-path" = true))]
    pub train_images: PathBuf,
    /// Training labels, e.g. `train-labels-idx1-ubyte.gz`. Required.
    #[schemars(extend("x-input-path" = true))]
    pub train_labels: PathBuf,
    /// Test images. Required.
    #[schemars(extend("x-input-path" = true))]
    pub test_images: PathBuf,
    /// Test labels. Required.
    #[schemars(extend("x-input-path" = true))]
    pub test_labels: PathBuf,
    /// Number of classes; labels must lie in [0, classes). Default: 10.
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// Use a seeded random subset of this many training images (1000 cuts a VTAB-style task).
    /// Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<usize>,
    /// Images held out of the training images as `val200`. Default: 200.
    #[serde(default = "default_val_size")]
    pub val_size: usize,
    /// Seed of the subset and the held-out split. Default: 0.
    #[serde(default)]
    pub split_seed: u64,
    /// Image preprocessing. Default: square bicubic resize, inception normalisation, grey to RGB.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
}

fn default_idx_task() -> String {
    "idx".into()
}
fn default_classes() -> usize {
    10
}
fn default_val_size() -> usize {
    200
}

/// The built-in procedural suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Tasks: "location", "orientation", "scale", "shape", "count", the pretraining task
    /// "upstream", or "all" (every task but "upstream"). Default: ["all"].
    pub tasks: Vec<String>,
    /// Seed of the generated images; the same seed gives the same images everywhere. Default: 0.
    pub seed: u64,
    /// Side of the rendered images in pixels (resized to the backbone's size). Default: 64.
    pub image_size: usize,
    /// Images in `train800`. Default: 800.
    pub train_size: usize,
    /// Images in `val200`. Default: 200.
    pub val_size: usize,
    /// Images in `test`. Default: 1000.
    pub test_size: usize,
    /// Image preprocessing. Default: square bicubic resize, inception normalisation.
    pub preprocess: PreprocessConfig,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            tasks: all_tasks(),
            seed: 0,
            image_size: 64,
            train_size: 800,
            val_size: 200,
            test_size: 1000,
            preprocess: PreprocessConfig::default(),
        }
    }
}

/// How images become the backbone's input tensor. Every image is first decoded to 8-bit RGB (grey
/// replicated into three channels, alpha dropped), then resized, then normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// "square" (stretch to image_size × image_size, as NOAH/FacT) or "short_side_crop" (resize
    /// the short side, then centre crop). Default: "square".
    pub resize: Resize,
    /// Resampling filter: "bicubic" or "bilinear". Default: "bicubic".
    pub interpolation: Interpolation,
    /// Normalisation: "inception" (mean 0.5, std 0.5), "imagenet", "none" or "custom" (then
    /// `mean` and `std` are required). Default: "inception".
    pub normalize: Normalize,
    /// Per-channel mean for `normalize = "custom"`, in [0, 1] pixel units. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<[f64; 3]>,
    /// Per-channel standard deviation for `normalize = "custom"`; positive. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<[f64; 3]>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            resize: Resize::Square,
            interpolation: Interpolation::Bicubic,
            normalize: Normalize::Inception,
            mean: None,
            std: None,
        }
    }
}

/// Resize rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Stretch to a square.
    Square,
    /// Resize the short side, then centre crop.
    ShortSideCrop,
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Bicubic (Catmull-Rom), as timm and NOAH.
    Bicubic,
    /// Bilinear, as V-PETL.
    Bilinear,
}

/// Normalisation preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// mean 0.5, std 0.5: maps pixels to [-1, 1] (Google's ViTs).
    Inception,
    /// ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    Imagenet,
    /// Pixels in [0, 1].
    None,
    /// `mean` and `std` from the recipe.
    Custom,
}

impl DatasetConfig {
    /// Every kind's name, as written in recipes.
    pub const KINDS: [&'static str; 4] = ["vtab1k", "image_folder", "idx", "synthetic"];

    /// The kind's name, as written in recipes.
    pub fn kind(&self) -> &'static str {
        match self {
            DatasetConfig::Vtab1k(_) => "vtab1k",
            DatasetConfig::ImageFolder(_) => "image_folder",
            DatasetConfig::Idx(_) => "idx",
            DatasetConfig::Synthetic(_) => "synthetic",
        }
    }

    /// The preprocessing settings.
    pub fn preprocess(&self) -> &PreprocessConfig {
        match self {
            DatasetConfig::Vtab1k(c) => &c.preprocess,
            DatasetConfig::ImageFolder(c) => &c.preprocess,
            DatasetConfig::Idx(c) => &c.preprocess,
            DatasetConfig::Synthetic(c) => &c.preprocess,
        }
    }
}
