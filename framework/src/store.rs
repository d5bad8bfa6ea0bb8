//! The runs folder of a recipe, `runs/<recipe name>/` (or the recipe's `output.dir`):
//!
//! ```text
//! runs/<recipe name>/
//!   recipe.toml              the resolved recipe (every default spelled out, input paths resolved)
//!   <run id>/record.json     one folder per run; a run without record.json has not ended yet
//!   <run id>/...             curves, adapter weights
//!   cache/                   the feature cache (no record.json: not a run)
//!   report/                  the report (no record.json: not a run)
//!   slurm/                   `runner submit`'s job scripts and logs (no record.json: not a run)
//! ```
//!
//! Reading here, writing here: records and the recipe are written atomically (a temporary file,
//! then a rename), so a reader never sees half a file.

use std::path::{Path, PathBuf};

use crate::recipe::Recipe;
use crate::record::RunRecord;

/// File name of a run's record inside its run folder.
pub const RECORD_FILE: &str = "record.json";
/// File name of the resolved recipe inside a runs folder.
pub const RECIPE_FILE: &str = "recipe.toml";
/// Default folder of the report inside a runs folder.
pub const REPORT_DIR: &str = "report";

/// What can go wrong reading or writing a runs folder. Malformed files are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The runs folder does not exist or is not a folder.
    #[error("runs folder {} not found (expected runs/<recipe name>/ with one folder per run)", .0.display())]
    NotFound(PathBuf),
    /// The runs folder holds no run record.
    #[error("runs folder {} holds no run records (no <run id>/{RECORD_FILE}); nothing has run yet", .0.display())]
    NoRecords(PathBuf),
    /// A file or folder cannot be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "list".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record.json is not a valid record.
    #[error("{} is not a valid run record: {message}", path.display())]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong, with the key and line.
        message: String,
    },
    /// Two run folders hold records with the same run id.
    #[error("run id {run_id} appears twice: {} and {}", first.display(), second.display())]
    DuplicateRun {
        /// The run id.
        run_id: String,
        /// The first record file.
        first: PathBuf,
        /// The second record file.
        second: PathBuf,
    },
    /// The saved recipe is not a valid resolved recipe.
    #[error("{} is not a valid resolved recipe: {message}", path.display())]
    BadRecipe {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong, with the key and line.
        message: String,
    },
}

/// Reads one record file and checks it (see [`RunRecord::problems`]).
pub fn read_record(path: &Path) -> Result<RunRecord, StoreError> {
    let text = read(path)?;
    let bad = |message: String| StoreError::BadRecord { path: path.to_owned(), message };
    let mut de = serde_json::Deserializer::from_str(&text);
    let record: RunRecord = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let at = format!("line {} column {}", inner.line(), inner.column());
        match e.path().to_string().as_str() {
            "." => bad(format!("{inner} ({at})")),
            key => bad(format!("{key}: {inner} ({at})")),
        }
    })?;
    match record.problems().as_slice() {
        [] => Ok(record),
        problems => Err(bad(problems.join("; "))),
    }
}

/// Reads the record of every run folder in `runs_dir`, sorted by run id. Sub-folders without a
/// record.json (the cache, the report, runs still going) are skipped; a malformed record is an
/// error naming its file, and so is a folder without any record.
pub fn read_records(runs_dir: &Path) -> Result<Vec<RunRecord>, StoreError> {
    if !runs_dir.is_dir() {
        return Err(StoreError::NotFound(runs_dir.to_owned()));
    }
    let list_err = |source| StoreError::Io { action: "list", path: runs_dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(runs_dir).map_err(list_err)? {
        let file = entry.map_err(list_err)?.path().join(RECORD_FILE);
        if file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    let mut records: Vec<(RunRecord, PathBuf)> = Vec::with_capacity(files.len());
    for file in files {
        records.push((read_record(&file)?, file));
    }
    if records.is_empty() {
        return Err(StoreError::NoRecords(runs_dir.to_owned()));
    }
    records.sort_by(|a, b| a.0.run_id.cmp(&b.0.run_id));
    for pair in records.windows(2) {
        if pair[0].0.run_id == pair[1].0.run_id {
            return Err(StoreError::DuplicateRun {
                run_id: pair[0].0.run_id.clone(),
                first: pair[0].1.clone(),
                second: pair[1].1.clone(),
            });
        }
    }
    Ok(records.into_iter().map(|(r, _)| r).collect())
}

/// Writes `record` to `run_dir/record.json` atomically, creating the folder.
pub fn write_record(run_dir: &Path, record: &RunRecord) -> Result<PathBuf, StoreError> {
    write_record_file(&run_dir.join(RECORD_FILE), record)
}

/// Writes `record` as JSON to `path` atomically (e.g. a failed redo's record beside a finished one).
pub fn write_record_file(path: &Path, record: &RunRecord) -> Result<PathBuf, StoreError> {
    let text = serde_json::to_string_pretty(record)
        .map_err(|e| StoreError::BadRecord { path: path.to_owned(), message: e.to_string() })?;
    write_atomic(path, text)
}

/// A recipe as saved in a runs folder.
#[derive(Debug, Clone)]
pub struct SavedRecipe {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its text, as written.
    pub text: String,
    /// The recipe. Its input paths were resolved when it was saved (relative to the working
    /// directory of that run, or absolute); they are not resolved again.
    pub recipe: Recipe,
}

/// Reads `runs_dir/recipe.toml`, or `None` when there is none.
pub fn read_recipe(runs_dir: &Path) -> Result<Option<SavedRecipe>, StoreError> {
    let path = runs_dir.join(RECIPE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = read(&path)?;
    // Deserialised as is, not through `recipe::load`: that would resolve the (already resolved)
    // input paths again, relative to the runs folder, and apply today's environment variables.
    let recipe = toml::from_str::<Recipe>(&text).map_err(|e| StoreError::BadRecipe {
        path: path.clone(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    Ok(Some(SavedRecipe { path, text, recipe }))
}

/// Writes the resolved `recipe` to `runs_dir/recipe.toml` atomically, creating the folder.
pub fn write_recipe(runs_dir: &Path, recipe: &Recipe) -> Result<PathBuf, StoreError> {
    let path = runs_dir.join(RECIPE_FILE);
    let text = toml::to_string(recipe)
        .map_err(|e| StoreError::BadRecipe { path: path.clone(), message: e.to_string() })?;
    write_atomic(&path, &text)
}

fn read(path: &Path) -> Result<String, StoreError> {
    std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file in the same folder (named by this writer, so concurrent
/// processes never share one) and renames it over `path`, creating the folder: a reader sees the
/// old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<PathBuf, StoreError> {
    let io = |source| StoreError::Io { action: "write", path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::record::writer_tag()));
    if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
