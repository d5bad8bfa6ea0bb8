//! Comparative reports: run records → polars tables → a self-contained HTML report, CSV, Parquet
//! and Markdown. This is the only crate that uses polars (in [`tables`]) and tera (in `html`).
//!
//! ```no_run
//! # use std::path::Path;
//! use losa_reports::{ReportOptions, report_runs};
//! let files = report_runs(Path::new("runs/my-comparison"), &ReportOptions::default())?;
//! // runs/my-comparison/report/{report.html, results.csv, results.parquet, summary.md}
//! # Ok::<(), losa_reports::ReportError>(())
//! ```
#![warn(missing_docs)]

pub mod charts;
pub mod curves;
pub mod format;
mod html;
pub mod labels;
mod markdown;
pub mod published;
pub mod summary;
pub mod sweeps;
pub mod tables;
pub mod view;

mod report;
pub mod style;

pub use published::{Published, PublishedRow};
pub use report::{Report, ReportFiles, ReportOptions, report_runs};

use std::path::PathBuf;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The runs folder, a record or the saved recipe is missing or malformed (bad input).
    #[error(transparent)]
    Store(#[from] losa_framework::store::StoreError),
    /// An input file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The published-results CSV is malformed.
    #[error("{}: line {line}: {message}", path.display())]
    Published {
        /// The CSV file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The published-results CSV named by the saved recipe is not there.
    #[error(
        "{}: report.published names {}, which does not exist (recipe paths were resolved from the working \
         directory of the run); give the file with --published FILE",
        recipe.display(),
        path.display()
    )]
    PublishedNotFound {
        /// The saved recipe that names it.
        recipe: PathBuf,
        /// The path it names.
        path: PathBuf,
    },
    /// Under tune_then_test, only tuning runs have finished: no final run to report yet.
    #[error(
        "{}: {runs} tuning run(s) and no final run yet: tune_then_test reports the final runs of the chosen \
         settings; `runner run` starts them once a method × task's tuning has ended",
        dir.display()
    )]
    OnlyTuning {
        /// The runs folder.
        dir: PathBuf,
        /// Its tuning runs.
        runs: usize,
    },
    /// An output file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// polars failed on the tables (a bug: the tables are built from checked records).
    #[error("building the result tables failed: {0}")]
    Tables(#[from] polars::prelude::PolarsError),
    /// tera failed on the templates (a bug: the templates are compiled in).
    #[error("rendering the HTML report failed: {0}")]
    Template(#[from] tera::Error),
}

#[cfg(test)]
mod testing;
