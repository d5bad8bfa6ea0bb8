//! One task of a dataset entry, opened: its classes, its splits as lists of samples, and how each
//! sample's image is made (a file, an IDX record, or a procedural image).

use std::path::PathBuf;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use rayon::prelude::*;
use serde_json::Value;

use super::DataError;
use super::folder::FolderData;
use super::identity::{self, DatasetTask, FileHashes};
use super::idx::{IdxData, IdxImages};
use super::image::{Pipeline, decode_rgb};
use super::list::read_list;
use super::synthetic::{self, SyntheticImage, SyntheticTask};
use super::vtab::{self, Group};
use crate::recipe::{DatasetConfig, PreprocessConfig, Split, did_you_mean};

/// Where a sample's image comes from.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// An image file (JPEG or PNG).
    File(PathBuf),
    /// Record `index` of an IDX image file.
    Idx {
        /// The file's images.
        images: Arc<IdxImages>,
        /// Which image.
        index: usize,
    },
    /// A procedural image, rendered on demand.
    Synthetic(SyntheticImage),
}

impl ImageRef {
    /// The image as 8-bit RGB at its own size (grey replicated into three channels).
    pub fn decode(&self) -> Result<RgbImage, DataError> {
        match self {
            ImageRef::File(path) => decode_rgb(path),
            ImageRef::Idx { images, index } => {
                let pixels = images.image(*index);
                let width = images.width;
                Ok(RgbImage::from_fn(width as u32, images.height as u32, |x, y| {
                    Rgb([pixels[y as usize * width + x as usize]; 3])
                }))
            }
            ImageRef::Synthetic(image) => Ok(image.render()),
        }
    }
}

/// One image and its label.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Where the image comes from.
    pub image: ImageRef,
    /// Its class, in `[0, classes)`.
    pub label: u32,
}

/// The samples of one split, in a fixed order (list order, or sorted).
#[derive(Debug, Clone)]
pub struct SplitData {
    /// Which split.
    pub split: Split,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl SplitData {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the split has no samples (an opened split never has: that is an error).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The labels, in sample order.
    pub fn labels(&self) -> Vec<u32> {
        self.samples.iter().map(|s| s.label).collect()
    }

    /// Decodes every image, in parallel, and reports every one that is missing or corrupt.
    pub fn check(&self) -> Result<(), DataError> {
        let errors: Vec<DataError> = self.samples.par_iter().filter_map(|s| s.image.decode().err()).collect();
        DataError::collect(errors)
    }
}

/// What an opened dataset reads its splits from.
#[derive(Debug)]
enum Source {
    Vtab { folder: PathBuf },
    Folder(FolderData),
    Idx(IdxData),
    Synthetic { task: &'static SyntheticTask, seed: u64, size: u32, sizes: [usize; 3] },
}

/// One task of a dataset entry, ready to give its splits.
#[derive(Debug)]
pub struct Dataset {
    config: DatasetConfig,
    task: DatasetTask,
    classes: usize,
    image_size: usize,
    source: Source,
}

impl Dataset {
    /// Opens task `task` of a (validated) dataset entry whose images the backbone takes at
    /// `image_size` × `image_size`. Folder and file problems, unknown tasks and settings that do
    /// not fit the data are errors here; a VTAB-1k split's list is read by [`Dataset::split`].
    pub fn open(config: &DatasetConfig, task: &DatasetTask, image_size: usize) -> Result<Self, DataError> {
        if image_size == 0 {
            return Err(DataError::Setting("the backbone's image size must be positive, found 0".into()));
        }
        let (classes, source) = match config {
            DatasetConfig::Vtab1k(v) => {
                let Some(t) = vtab::find(&task.name) else {
                    let known = vtab::TASKS.iter().flat_map(vtab::VtabTask::names);
                    return Err(unknown("VTAB-1k", &task.name, known));
                };
                if !v.root.is_dir() {
                    return Err(DataError::Missing {
                        what: "VTAB-1k root folder".into(),
                        path: v.root.clone(),
                    });
                }
                let folder = identity::vtab_task_folder(&v.root, t.name);
                if !folder.is_dir() {
                    let names = t.names().collect::<Vec<_>>();
                    return Err(DataError::Missing {
                        what: format!("VTAB-1k task folder (named any of {})", names.join(", ")),
                        path: folder,
                    });
                }
                (t.classes, Source::Vtab { folder })
            }
            DatasetConfig::ImageFolder(f) => {
                let data = FolderData::open(f)?;
                (data.classes.len(), Source::Folder(data))
            }
            DatasetConfig::Idx(x) => (x.classes, Source::Idx(IdxData::open(x)?)),
            DatasetConfig::Synthetic(s) => {
                let Some(t) = synthetic::find(&task.name) else {
                    return Err(unknown("synthetic", &task.name, synthetic::TASKS.iter().map(|t| t.name)));
                };
                if s.image_size == 0 {
                    return Err(DataError::Setting("synthetic image_size must be positive, found 0".into()));
                }
                let sizes = [s.train_size, s.val_size, s.test_size];
                (t.classes, Source::Synthetic { task: t, seed: s.seed, size: s.image_size as u32, sizes })
            }
        };
        Ok(Self { config: config.clone(), task: task.clone(), classes, image_size, source })
    }

    /// The samples of a split. For VTAB-1k this reads the split's list file (every bad line is
    /// reported); an empty split is an error.
    pub fn split(&self, split: Split) -> Result<SplitData, DataError> {
        let files = |list: Vec<(PathBuf, u32)>| -> Vec<Sample> {
            list.into_iter().map(|(path, label)| Sample { image: ImageRef::File(path), label }).collect()
        };
        let (samples, place) = match &self.source {
            Source::Vtab { folder } => {
                let list = folder.join(format!("{split}.txt"));
                (files(read_list(&list, folder, &self.task.name, self.classes)?), list)
            }
            Source::Folder(data) => (files(data.split(split)), self.folder_of(split)),
            Source::Idx(data) => {
                let (images, list) = data.split(split);
                let samples = list
                    .into_iter()
                    .map(|(index, label)| Sample {
                        image: ImageRef::Idx { images: images.clone(), index },
                        label,
                    })
                    .collect();
                (samples, images.path.clone())
            }
            Source::Synthetic { task, seed, size, sizes } => {
                let samples = synthetic::split_images(task, *seed, *size, *sizes, split)
                    .into_iter()
                    .map(|(image, label)| Sample { image: ImageRef::Synthetic(image), label })
                    .collect();
                (samples, PathBuf::from("(synthetic)"))
            }
        };
        if samples.is_empty() {
            return Err(DataError::Empty {
                what: format!("split {split} of task {} has no images", self.task.name),
                path: place,
            });
        }
        Ok(SplitData { split, samples })
    }

    /// The task's name (as in run ids and reports).
    pub fn task(&self) -> &str {
        &self.task.name
    }

    /// The dataset kind, as written in recipes.
    pub fn kind(&self) -> &'static str {
        self.config.kind()
    }

    /// Number of classes; every label lies in `[0, classes)`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The task's VTAB-1k group, if it has one.
    pub fn group(&self) -> Option<Group> {
        self.task.group
    }

    /// Side of the square network input, in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// How images become network inputs.
    pub fn preprocess(&self) -> &PreprocessConfig {
        self.config.preprocess()
    }

    /// The task's identity as read through `splits` (kind, task, split lists by content), the
    /// same value run ids hash; for cache keys.
    pub fn identity(&self, splits: &[Split]) -> Result<Value, DataError> {
        identity::identity(&self.config, &self.task, splits, &mut FileHashes::default()).map_err(|missing| {
            DataError::merge(
                missing.into_iter().map(|m| DataError::Missing { what: m.what, path: m.path }).collect(),
            )
        })
    }

    /// How this dataset's images become network inputs.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.preprocess(), self.image_size)
    }

    /// The folder an image_folder split is read from, for messages.
    fn folder_of(&self, split: Split) -> PathBuf {
        match &self.config {
            DatasetConfig::ImageFolder(f) => {
                let test = if split == Split::Test { f.test_root.clone() } else { None };
                test.or(f.root.clone()).or(f.train_root.clone()).unwrap_or_default()
            }
            _ => PathBuf::new(),
        }
    }
}

fn unknown<'a>(kind: &'static str, name: &str, known: impl Iterator<Item = &'a str>) -> DataError {
    DataError::UnknownTask { kind, name: name.to_owned(), hint: did_you_mean(name, known) }
}

#[cfg(test)]
#[path = "dataset_tests.rs"]
pub(crate) mod tests;
