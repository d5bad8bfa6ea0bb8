//! What a dataset task is, for run ids and caches: its kind, its task and the content of the inputs
//! it reads (split lists, IDX files, folder listings), never the paths they sit at.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{synthetic, vtab};
use crate::canonical::{prune_defaults, sha256_file, sha256_hex};
use crate::recipe::{DatasetConfig, IdxConfig, ImageFolderConfig, Split, SyntheticConfig};

/// One task of a dataset entry (a VTAB-1k entry may name many).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatasetTask {
    /// Task name in reports and run ids.
    pub name: String,
    /// VTAB-1k group, when the task belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<vtab::Group>,
    /// Number of classes, when known without reading the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
}

/// An input file or folder that a run needs and that is not there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    /// What the path should hold, e.g. "VTAB-1k list file".
    pub what: String,
    /// Where it was looked for.
    pub path: PathBuf,
}

/// Content hashes of files, computed once per plan (a checkpoint is shared by many runs).
#[derive(Debug, Default)]
pub struct FileHashes(HashMap<PathBuf, Option<String>>);

impl FileHashes {
    /// The file's SHA-256, or a [`Missing`] entry when it cannot be read.
    pub fn get(&mut self, path: &Path, what: &str) -> Result<String, Missing> {
        let hash = self.0.entry(path.to_owned()).or_insert_with(|| sha256_file(path).ok());
        hash.clone().ok_or_else(|| Missing { what: what.to_owned(), path: path.to_owned() })
    }
}

/// The tasks a (validated) dataset entry expands to.
pub fn tasks(dataset: &DatasetConfig) -> Vec<DatasetTask> {
    match dataset {
        DatasetConfig::Vtab1k(v) => vtab::expand(&v.tasks, &[])
            .unwrap_or_default()
            .into_iter()
            .map(|t| DatasetTask { name: t.name.into(), group: Some(t.group), classes: Some(t.classes) })
            .collect(),
        DatasetConfig::Synthetic(s) => synthetic::expand(&s.tasks, &[])
            .unwrap_or_default()
            .into_iter()
            .map(|t| DatasetTask { name: t.name.into(), group: None, classes: Some(t.classes) })
            .collect(),
        DatasetConfig::ImageFolder(f) => {
            vec![DatasetTask { name: image_folder_task(f), group: None, classes: None }]
        }
        DatasetConfig::Idx(x) => {
            vec![DatasetTask { name: x.task.clone(), group: None, classes: Some(x.classes) }]
        }
    }
}

fn image_folder_task(f: &ImageFolderConfig) -> String {
    let folder = f.root.as_ref().or(f.train_root.as_ref());
    let from_folder = folder.and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    f.task.clone().or(from_folder).unwrap_or_else(|| "image_folder".into())
}

/// The identity of one task of `dataset` as read through `splits`, or every input that is missing.
pub fn identity(
    dataset: &DatasetConfig,
    task: &DatasetTask,
    splits: &[Split],
    hashes: &mut FileHashes,
) -> Result<Value, Vec<Missing>> {
    let mut id = match dataset {
        DatasetConfig::Vtab1k(v) => {
            if !v.root.is_dir() {
                return Err(vec![Missing { what: "VTAB-1k root folder".into(), path: v.root.clone() }]);
            }
            let folder = vtab_task_folder(&v.root, &task.name);
            if !folder.is_dir() {
                return Err(vec![Missing {
                    what: format!("VTAB-1k task folder ({})", task.name),
                    path: folder,
                }]);
            }
            let mut lists = serde_json::Map::new();
            let mut missing = Vec::new();
            for split in splits {
                let path = folder.join(format!("{split}.txt"));
                match hashes.get(&path, "VTAB-1k split list") {
                    Ok(h) => drop(lists.insert(split.name().into(), Value::String(h))),
                    Err(m) => missing.push(m),
                }
            }
            if !missing.is_empty() {
                return Err(missing);
            }
            json!({ "lists": lists })
        }
        DatasetConfig::Synthetic(s) => {
            let mut v = serde_json::to_value(SyntheticConfig {
                tasks: vec![],
                preprocess: Default::default(),
                ..s.clone()
            })
            .unwrap_or_default();
            let defaults = serde_json::to_value(SyntheticConfig { tasks: vec![], ..Default::default() })
                .unwrap_or_default();
            prune_defaults(&mut v, &defaults);
            if let Value::Object(map) = &mut v {
                map.insert("renderer".into(), synthetic::RENDERER_VERSION.into());
            }
            v
        }
        DatasetConfig::Idx(x) => idx_identity(x, hashes)?,
        DatasetConfig::ImageFolder(f) => image_folder_identity(f)?,
    };
    if let Value::Object(map) = &mut id {
        map.insert("kind".into(), dataset.kind().into());
        map.insert("task".into(), task.name.clone().into());
        map.remove("preprocess");
    }
    Ok(id)
}

/// The task's folder under a VTAB-1k root: the canonical name, or an alias that exists on disk.
pub fn vtab_task_folder(root: &Path, task: &str) -> PathBuf {
    let names = vtab::find(task).map(|t| t.names().collect()).unwrap_or_else(|| vec![task]);
    names.iter().map(|n| root.join(n)).find(|p| p.is_dir()).unwrap_or_else(|| root.join(task))
}

fn idx_identity(x: &IdxConfig, hashes: &mut FileHashes) -> Result<Value, Vec<Missing>> {
    let files = [
        ("train_images", &x.train_images),
        ("train_labels", &x.train_labels),
        ("test_images", &x.test_images),
        ("test_labels", &x.test_labels),
    ];
    let mut content = serde_json::Map::new();
    let mut missing = Vec::new();
    for (key, path) in files {
        match hashes.get(path, &format!("IDX file ({key})")) {
            Ok(h) => drop(content.insert(key.into(), Value::String(h))),
            Err(m) => missing.push(m),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(json!({
        "files": content, "classes": x.classes, "subset": x.subset, "val_size": x.val_size, "split_seed": x.split_seed,
    }))
}

/// A folder's identity: the sorted list of its class folders' files with their sizes (hashing
/// every image would read the whole dataset just to plan).
fn image_folder_identity(f: &ImageFolderConfig) -> Result<Value, Vec<Missing>> {
    let roots = [("root", &f.root), ("train_root", &f.train_root), ("test_root", &f.test_root)];
    let mut content = serde_json::Map::new();
    let mut missing = Vec::new();
    for (key, root) in roots {
        let Some(root) = root else { continue };
        match listing(root) {
            Some(text) => drop(content.insert(key.into(), Value::String(sha256_hex(text.as_bytes())))),
            None => missing.push(Missing { what: format!("image folder ({key})"), path: root.clone() }),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(
        json!({ "listing": content, "val_size": f.val_size, "test_size": f.test_size, "split_seed": f.split_seed }),
    )
}

fn listing(root: &Path) -> Option<String> {
    let mut lines = Vec::new();
    for class in std::fs::read_dir(root).ok()? {
        let class = class.ok()?;
        if !class.file_type().ok()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(class.path()).ok()? {
            let file = file.ok()?;
            let size = file.metadata().ok()?.len();
            lines.push(format!(
                "{}/{} {size}",
                class.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            ));
        }
    }
    lines.sort();
    Some(lines.join("\n"))
}
