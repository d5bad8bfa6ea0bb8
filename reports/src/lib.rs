//! Comparative reports: run records → polars tables → a self-contained HTML report, CSV, Parquet
//! and Markdown (the reports issue fills this crate; it is the only one using polars and tera).
