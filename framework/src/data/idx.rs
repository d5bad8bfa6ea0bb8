//! MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...): a big-endian header — two zero
//! bytes, a type byte (0x08 = unsigned byte), the number of dimensions, each dimension as a u32 —
//! then the values. gzip is recognised by its magic bytes, not the file name.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DataError;
use super::error::read_file;
use super::seeded::{Purpose, permutation};
use crate::recipe::{IdxConfig, Split};

/// Grey images of one IDX file, `count × height × width` bytes, row-major.
#[derive(Debug)]
pub struct IdxImages {
    /// The file they came from (for messages).
    pub path: PathBuf,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// The pixels of every image, one after another.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.height * self.width).max(1)
    }

    /// Whether the file holds no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Reads an IDX file of `[N, H, W]` unsigned bytes.
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    let (dims, pixels) = read_idx(path, 3, "images [count, height, width]")?;
    if dims[1] == 0 || dims[2] == 0 {
        let message = format!("images are {}×{} pixels: nothing to learn from", dims[1], dims[2]);
        return Err(DataError::BadIdx { path: path.to_owned(), message });
    }
    Ok(IdxImages { path: path.to_owned(), height: dims[1], width: dims[2], pixels })
}

/// Reads an IDX file of `[N]` unsigned-byte labels and checks them against `classes`.
pub fn read_labels(path: &Path, classes: usize, task: &str) -> Result<Vec<u8>, DataError> {
    let (_, labels) = read_idx(path, 1, "labels [count]")?;
    let problems: Vec<DataError> = labels
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l as usize >= classes)
        .map(|(i, &l)| DataError::LabelOutOfRange {
            at: format!("{}, item {i}", path.display()),
            label: l.into(),
            classes,
            task: task.to_owned(),
        })
        .collect();
    DataError::collect(problems)?;
    Ok(labels)
}

/// The dimensions and the values of an IDX file of unsigned bytes with `rank` dimensions.
fn read_idx(path: &Path, rank: usize, expected: &str) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |message: String| DataError::BadIdx { path: path.to_owned(), message };
    let raw = read_file(path, "IDX file")?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("cannot decompress gzip: {e}")))?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * rank;
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short for an IDX header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("does not start with an IDX magic number (two zero bytes)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("expected unsigned-byte values (type 0x08), found type 0x{:02x}", bytes[2])));
    }
    if bytes[3] as usize != rank {
        return Err(bad(format!("expected {expected} ({rank} dimensions), found {} dimensions", bytes[3])));
    }
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated: {} bytes is too short for a {rank}-dimension header",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let needed = dims.iter().product::<usize>();
    let data = bytes.len() - header;
    if data != needed {
        let what = if data < needed { "truncated" } else { "too long" };
        return Err(bad(format!("{what}: the header {dims:?} needs {needed} bytes of values, found {data}")));
    }
    if dims[0] == 0 {
        return Err(DataError::Empty { what: "IDX file holds no items".into(), path: path.to_owned() });
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// One IDX dataset: training and test images with labels, and which training images form
/// `train800` and `val200`.
#[derive(Debug)]
pub struct IdxData {
    /// Training images.
    pub train: Arc<IdxImages>,
    /// Training labels.
    pub train_labels: Vec<u8>,
    /// Test images.
    pub test: Arc<IdxImages>,
    /// Test labels.
    pub test_labels: Vec<u8>,
    /// Indices into `train` held out as `val200`, ascending.
    pub val: Vec<usize>,
    /// Indices into `train` that form `train800`, ascending.
    pub train_part: Vec<usize>,
}

impl IdxData {
    /// Reads the four files and draws the seeded subset and validation split.
    pub fn open(config: &IdxConfig) -> Result<Self, DataError> {
        let train = DataError::join(
            read_images(&config.train_images),
            read_labels(&config.train_labels, config.classes, &config.task),
        );
        let test = DataError::join(
            read_images(&config.test_images),
            read_labels(&config.test_labels, config.classes, &config.task),
        );
        let ((train, train_labels), (test, test_labels)) = DataError::join(train, test)?;
        let mut problems = Vec::new();
        for (images, labels, label_path) in
            [(&train, &train_labels, &config.train_labels), (&test, &test_labels, &config.test_labels)]
        {
            if images.len() != labels.len() {
                problems.push(DataError::BadIdx {
                    path: label_path.clone(),
                    message: format!(
                        "holds {} labels but {} holds {} images",
                        labels.len(),
                        images.path.display(),
                        images.len()
                    ),
                });
            }
        }
        if (train.height, train.width) != (test.height, test.width) {
            problems.push(DataError::BadIdx {
                path: test.path.clone(),
                message: format!(
                    "images are {}×{} but the training images are {}×{}",
                    test.height, test.width, train.height, train.width
                ),
            });
        }
        DataError::collect(problems)?;
        let available = train.len();
        let take = config.subset.unwrap_or(available);
        if take > available {
            return Err(DataError::Setting(format!(
                "subset = {take} is larger than the {available} training images of {}",
                train.path.display()
            )));
        }
        if take <= config.val_size {
            return Err(DataError::Empty {
                what: format!(
                    "no training images are left after holding out val_size = {} of {take}",
                    config.val_size
                ),
                path: train.path.clone(),
            });
        }
        let mut drawn = permutation(Purpose::Split, config.split_seed, 0, available);
        drawn.truncate(take);
        let mut val = drawn[..config.val_size].to_vec();
        let mut train_part = drawn[config.val_size..].to_vec();
        val.sort_unstable();
        train_part.sort_unstable();
        Ok(Self { train: Arc::new(train), train_labels, test: Arc::new(test), test_labels, val, train_part })
    }

    /// The images (file and index) and labels of a split.
    pub fn split(&self, split: Split) -> (&Arc<IdxImages>, Vec<(usize, u32)>) {
        let from_train = |ids: &[usize]| ids.iter().map(|&i| (i, self.train_labels[i] as u32)).collect();
        match split {
            Split::Train800 => (&self.train, from_train(&self.train_part)),
            Split::Val200 => (&self.train, from_train(&self.val)),
            Split::Train800Val200 => {
                let mut all = [&self.train_part[..], &self.val[..]].concat();
                all.sort_unstable();
                (&self.train, from_train(&all))
            }
            Split::Test => {
                (&self.test, self.test_labels.iter().enumerate().map(|(i, &l)| (i, l as u32)).collect())
            }
        }
    }
}

/// Writes an IDX file of unsigned bytes (for tests and tools): `dims` then `values`, gzipped when
/// `gzip` is set.
pub fn write_idx(path: &Path, dims: &[u32], values: &[u8], gzip: bool) -> std::io::Result<()> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(values);
    if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes)?;
        bytes = enc.finish()?;
    }
    std::fs::write(path, bytes)
}

#[cfg(test)]
#[path = "idx_tests.rs"]
mod tests;
