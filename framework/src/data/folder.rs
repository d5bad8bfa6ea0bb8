//! Image folders: one sub-folder per class, the class index the rank of the folder's name (sorted
//! by name, as torchvision's `ImageFolder`). Images are the files with a JPEG or PNG extension;
//! other files and hidden entries are skipped.

use std::path::{Path, PathBuf};

use super::DataError;
use super::seeded::{Purpose, permutation};
use crate::recipe::{ImageFolderConfig, Split};

/// File extensions taken as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The images of one folder of class folders, with the class names.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    /// Class folder names, sorted; the label of an image is its folder's index here.
    pub classes: Vec<String>,
    /// Every image with its label, sorted by path.
    pub images: Vec<(PathBuf, u32)>,
}

/// Lists the class folders under `root` and their images.
pub fn scan(root: &Path) -> Result<Scanned, DataError> {
    let mut classes: Vec<(String, PathBuf)> = entries(root, "image folder")?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Empty {
            what: "image folder has no class folders".into(),
            path: root.to_owned(),
        });
    }
    let mut images = Vec::new();
    let mut problems = Vec::new();
    for (label, (_, folder)) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> =
            entries(folder, "class folder")?.into_iter().filter(|p| is_image(p)).collect();
        if files.is_empty() {
            problems.push(DataError::Empty {
                what: format!("class folder holds no images ({})", IMAGE_EXTENSIONS.join(", ")),
                path: folder.clone(),
            });
        }
        files.sort();
        images.extend(files.into_iter().map(|f| (f, label as u32)));
    }
    DataError::collect(problems)?;
    Ok(Scanned { classes: classes.into_iter().map(|(name, _)| name).collect(), images })
}

/// The entries of a folder, hidden ones (starting with '.') left out.
fn entries(folder: &Path, what: &str) -> Result<Vec<PathBuf>, DataError> {
    let io = |e| DataError::io(what, folder, e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// An image folder dataset split into `train800`, `val200` and `test`.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderData {
    /// Class names; labels index this list.
    pub classes: Vec<String>,
    /// Training images (without the held-out validation images).
    pub train: Vec<(PathBuf, u32)>,
    /// Held-out validation images.
    pub val: Vec<(PathBuf, u32)>,
    /// Test images.
    pub test: Vec<(PathBuf, u32)>,
}

impl FolderData {
    /// Scans the folders and draws the seeded held-out splits: from `root`, `test_size` (default
    /// 20 %) test images, then `val_size` validation images, the rest for training; or with
    /// `train_root` and `test_root`, `val_size` validation images held out of `train_root`.
    pub fn open(config: &ImageFolderConfig) -> Result<Self, DataError> {
        let seed = config.split_seed;
        match (&config.root, &config.train_root, &config.test_root) {
            (Some(root), None, None) => {
                let all = scan(root)?;
                let n = all.images.len();
                let test_size = config.test_size.unwrap_or((n as f64 * 0.2).round() as usize);
                if test_size + config.val_size >= n {
                    return Err(DataError::Empty {
                        what: format!(
                            "too few images ({n}) for test_size = {test_size} plus val_size = {} and a training part",
                            config.val_size
                        ),
                        path: root.clone(),
                    });
                }
                let order = permutation(Purpose::Split, seed, 0, n);
                let pick = |ids: &[usize]| sorted(ids.iter().map(|&i| all.images[i].clone()).collect());
                Ok(Self {
                    test: pick(&order[..test_size]),
                    val: pick(&order[test_size..test_size + config.val_size]),
                    train: pick(&order[test_size + config.val_size..]),
                    classes: all.classes,
                })
            }
            (None, Some(train_root), Some(test_root)) => {
                let (train, test) = DataError::join(scan(train_root), scan(test_root))?;
                if train.classes != test.classes {
                    let only = |a: &[String], b: &[String]| -> Vec<String> {
                        a.iter().filter(|c| !b.contains(c)).cloned().collect()
                    };
                    return Err(DataError::ClassMismatch {
                        train: train_root.clone(),
                        test: test_root.clone(),
                        message: format!(
                            "only in train: {:?}; only in test: {:?}",
                            only(&train.classes, &test.classes),
                            only(&test.classes, &train.classes)
                        ),
                    });
                }
                let n = train.images.len();
                if config.val_size >= n {
                    return Err(DataError::Empty {
                        what: format!(
                            "too few images ({n}) for val_size = {} and a training part",
                            config.val_size
                        ),
                        path: train_root.clone(),
                    });
                }
                let order = permutation(Purpose::Split, seed, 0, n);
                let pick = |ids: &[usize]| sorted(ids.iter().map(|&i| train.images[i].clone()).collect());
                Ok(Self {
                    val: pick(&order[..config.val_size]),
                    train: pick(&order[config.val_size..]),
                    test: test.images,
                    classes: train.classes,
                })
            }
            _ => Err(DataError::Setting(
                "an image_folder dataset needs either `root` or both `train_root` and `test_root`".into(),
            )),
        }
    }

    /// The images and labels of a split.
    pub fn split(&self, split: Split) -> Vec<(PathBuf, u32)> {
        match split {
            Split::Train800 => self.train.clone(),
            Split::Val200 => self.val.clone(),
            Split::Train800Val200 => sorted([self.train.clone(), self.val.clone()].concat()),
            Split::Test => self.test.clone(),
        }
    }
}

fn sorted(mut images: Vec<(PathBuf, u32)>) -> Vec<(PathBuf, u32)> {
    images.sort();
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, names: &[&str]) {
        for name in names {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
    }

    fn config(root: &Path) -> ImageFolderConfig {
        ImageFolderConfig {
            task: None,
            root: Some(root.to_owned()),
            train_root: None,
            test_root: None,
            val_size: 2,
            test_size: None,
            split_seed: 0,
            preprocess: Default::default(),
        }
    }

    #[test]
    fn classes_are_sorted_folder_names_and_only_images_count() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            &["cat/b.JPG", "cat/a.png", "cat/notes.txt", "ant/x.jpeg", ".hidden/y.jpg", "readme.md"],
        );
        let s = scan(dir.path()).unwrap();
        assert_eq!(s.classes, ["ant", "cat"]);
        let names: Vec<(String, u32)> = s
            .images
            .iter()
            .map(|(p, l)| (p.file_name().unwrap().to_string_lossy().into_owned(), *l))
            .collect();
        assert_eq!(names, [("x.jpeg".into(), 0), ("a.png".into(), 1), ("b.JPG".into(), 1)]);
    }

    #[test]
    fn a_seeded_split_of_one_root_is_disjoint_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("{}/{i:02}.jpg", ["a", "b"][i % 2])).collect();
        touch(dir.path(), &names.iter().map(String::as_str).collect::<Vec<_>>());
        let data = FolderData::open(&config(dir.path())).unwrap();
        assert_eq!((data.test.len(), data.val.len(), data.train.len()), (4, 2, 14));
        let mut all = [data.split(Split::Train800Val200), data.test.clone()].concat();
        all.sort();
        assert_eq!(all, scan(dir.path()).unwrap().images);
        assert_eq!(data, FolderData::open(&config(dir.path())).unwrap(), "seeded");
        let other = FolderData::open(&ImageFolderConfig { split_seed: 5, ..config(dir.path()) }).unwrap();
        assert_ne!(data.test, other.test);
        let e =
            FolderData::open(&ImageFolderConfig { test_size: Some(18), ..config(dir.path()) }).unwrap_err();
        assert!(e.to_string().contains("too few images (20) for test_size = 18 plus val_size = 2"), "{e}");
    }

    #[test]
    fn train_and_test_roots_must_have_the_same_classes() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            &["tr/a/1.jpg", "tr/a/2.jpg", "tr/b/3.jpg", "tr/b/4.jpg", "te/a/5.jpg", "te/c/6.jpg"],
        );
        let cfg = ImageFolderConfig {
            root: None,
            train_root: Some(dir.path().join("tr")),
            test_root: Some(dir.path().join("te")),
            val_size: 1,
            ..config(dir.path())
        };
        let e = FolderData::open(&cfg).unwrap_err().to_string();
        assert!(e.contains("only in train: [\"b\"]; only in test: [\"c\"]"), "{e}");
        std::fs::rename(dir.path().join("te/c"), dir.path().join("te/b")).unwrap();
        let data = FolderData::open(&cfg).unwrap();
        assert_eq!((data.train.len(), data.val.len(), data.test.len()), (3, 1, 2));
    }

    #[test]
    fn missing_and_empty_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = scan(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.starts_with("image folder not found: ") && e.ends_with("nope"), "{e}");
        let e = scan(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("image folder has no class folders: "), "{e}");
        touch(dir.path(), &["a/1.jpg", "b/notes.txt"]);
        let e = scan(dir.path()).unwrap_err().to_string();
        assert!(e.contains("class folder holds no images (jpg, jpeg, png)") && e.ends_with("b"), "{e}");
    }
}
