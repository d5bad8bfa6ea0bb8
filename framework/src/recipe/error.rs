//! What can be wrong with a recipe, worded for the person who wrote it.

use std::fmt;
use std::path::PathBuf;

/// One problem in a recipe: where the value came from, its key path, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the offending value was set: the recipe file, `--set KEY` or an environment variable.
    pub source: String,
    /// Key path in the recipe, e.g. `adapters[1].rank` (empty for the recipe as a whole).
    pub key: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.is_empty() {
            true => write!(f, "{}: {}", self.source, self.message),
            false => write!(f, "{}: {}: {}", self.source, self.key, self.message),
        }
    }
}

/// Why a recipe could not be loaded. Every variant is bad input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file does not exist.
    #[error("recipe file {} not found", .0.display())]
    NotFound(PathBuf),
    /// The recipe file exists but cannot be read.
    #[error("cannot read recipe file {}: {source}", path.display())]
    Read {
        /// The recipe file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The recipe file is not valid TOML.
    #[error("{} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The recipe file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `--set` argument is malformed.
    #[error("--set {arg:?}: {reason}")]
    BadSet {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `LOSA__…` environment variable is malformed.
    #[error("environment variable {var}: {reason}")]
    BadEnv {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The recipe parsed, but some values are wrong; all of them are listed.
    #[error("{}", invalid_message(path, problems))]
    Invalid {
        /// The recipe file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn invalid_message(path: &std::path::Path, problems: &[Problem]) -> String {
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let mut text = format!("recipe {} has {count}:", path.display());
    for p in problems {
        text.push_str(&format!("\n  - {p}"));
    }
    text
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely misspelling.
pub(crate) fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(word, c), c))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "; did you mean "x"?" when a candidate is close, else "".
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates).map(|c| format!("; did you mean \"{c}\"?")).unwrap_or_default()
}
