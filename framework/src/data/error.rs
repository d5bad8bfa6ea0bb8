//! What can be wrong with a dataset on disk. Every message names the file (and the line, for list
//! files) so that a researcher can fix the input without reading code.

use std::fmt;
use std::path::PathBuf;

/// A problem with a dataset's files or contents.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder that should be there is not.
    #[error("{what} not found: {}", path.display())]
    Missing {
        /// What the path should hold, e.g. "VTAB-1k list file".
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file or folder exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A line of a list file is not `<image path> <label>`.
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A label does not lie in `[0, classes)`.
    #[error("{at}: label {label} is out of range: {task} has {classes} classes (labels 0 to {})", classes.saturating_sub(1))]
    LabelOutOfRange {
        /// Where the label was read: `file:line`, or `file, item N` for IDX files.
        at: String,
        /// The label found.
        label: u64,
        /// The task's number of classes.
        classes: usize,
        /// The task's name.
        task: String,
    },
    /// An image file is missing or cannot be decoded.
    #[error("image {}: {message}", path.display())]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// What went wrong, e.g. "not found" or the decoder's message.
        message: String,
    },
    /// An IDX (MNIST-format) file is malformed or does not fit its partner file.
    #[error("IDX file {}: {message}", path.display())]
    BadIdx {
        /// The IDX file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A split, list, folder or file holds no images, or too few for the requested splits.
    #[error("{what}: {}", path.display())]
    Empty {
        /// What is empty, e.g. "list file has no images".
        what: String,
        /// Where.
        path: PathBuf,
    },
    /// The class folders of an image folder's train and test roots differ.
    #[error("class folders differ between {} and {}: {message}", train.display(), test.display())]
    ClassMismatch {
        /// The training root.
        train: PathBuf,
        /// The test root.
        test: PathBuf,
        /// Which classes are on one side only.
        message: String,
    },
    /// A task name that the dataset kind does not know.
    #[error("unknown {kind} task \"{name}\"{hint}")]
    UnknownTask {
        /// The dataset kind, e.g. "VTAB-1k".
        kind: &'static str,
        /// The name given.
        name: String,
        /// `; did you mean "..."?`, or empty.
        hint: String,
    },
    /// A setting that does not fit the data, e.g. a subset larger than the file.
    #[error("{0}")]
    Setting(String),
    /// Building a batch tensor failed.
    #[error("building a batch tensor: {}", crate::error::Plain(.0))]
    Tensor(#[from] candle_core::Error),
    /// Several problems, all found in one pass.
    #[error("{}", Several(.0))]
    Several(Vec<DataError>),
}

/// Problems shown in one message before the rest are only counted.
const SHOWN: usize = 20;

struct Several<'a>(&'a [DataError]);

impl fmt::Display for Several<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problems:", self.0.len())?;
        for e in self.0.iter().take(SHOWN) {
            write!(f, "\n  - {e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "\n  - ... and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl DataError {
    /// One error from many: `Ok` when there are none, the error itself when there is one.
    pub fn collect(errors: Vec<DataError>) -> Result<(), DataError> {
        if errors.is_empty() { Ok(()) } else { Err(Self::merge(errors)) }
    }

    /// One error from at least one: the error itself, or `Several` (flattened).
    pub(crate) fn merge(mut errors: Vec<DataError>) -> DataError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            DataError::Several(errors.into_iter().flat_map(DataError::into_list).collect())
        }
    }

    /// Both results, or every error of the two.
    pub(crate) fn join<A, B>(a: Result<A, DataError>, b: Result<B, DataError>) -> Result<(A, B), DataError> {
        match (a, b) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            (a, b) => Err(Self::merge([a.err(), b.err()].into_iter().flatten().collect())),
        }
    }

    /// The single problems this error holds (itself, or the members of `Several`).
    pub fn into_list(self) -> Vec<DataError> {
        match self {
            DataError::Several(list) => list,
            other => vec![other],
        }
    }

    /// `Missing` for a path that is not there, `Io` for any other read failure.
    pub(crate) fn io(what: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { what: what.into(), path }
        } else {
            DataError::Io { path, source }
        }
    }
}

/// Reads a whole file; `what` names it in the error (e.g. "VTAB-1k list file").
pub(crate) fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(what, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_line() {
        let e = DataError::BadLine { path: "t/train800.txt".into(), line: 3, message: "expected".into() };
        assert_eq!(e.to_string(), "t/train800.txt:3: expected");
        let e = DataError::LabelOutOfRange {
            at: "t/test.txt:7".into(),
            label: 12,
            classes: 10,
            task: "svhn".into(),
        };
        assert_eq!(
            e.to_string(),
            "t/test.txt:7: label 12 is out of range: svhn has 10 classes (labels 0 to 9)"
        );
    }

    #[test]
    fn several_problems_are_listed_then_counted() {
        let one = |i: usize| DataError::BadLine { path: "l.txt".into(), line: i, message: "bad".into() };
        assert!(DataError::collect(vec![]).is_ok());
        assert_eq!(DataError::collect(vec![one(1)]).unwrap_err().to_string(), "l.txt:1: bad");
        let text = DataError::collect((1..=25).map(one).collect()).unwrap_err().to_string();
        assert!(text.starts_with("25 problems:\n  - l.txt:1: bad"), "{text}");
        assert!(text.contains("l.txt:20: bad") && !text.contains("l.txt:21:"), "{text}");
        assert!(text.ends_with("... and 5 more"), "{text}");
    }
}
