//! The polars side of the reports (the only file that uses polars): run records become a
//! one-row-per-run frame, aggregated over seeds per method × task and per method, and exported as
//! CSV and Parquet.

use std::fs::File;
use std::path::Path;

use losa_framework::record::RunRecord;
use polars::prelude::*;
use polars_io::SerWriter;
use polars_io::csv::write::CsvWriter;
use polars_io::parquet::write::ParquetWriter;

use crate::ReportError;

/// Status values in the `status` column.
const FINISHED: &str = "finished";
const FAILED: &str = "failed";

/// One run in the report: the record and the name of its method row.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// The method's row name (the adapter label, with the backbone when there are several).
    pub method: &'a str,
    /// The run's record.
    pub record: &'a RunRecord,
}

/// Accuracy of one method on one task, over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    /// The method's row name.
    pub method: String,
    /// The task.
    pub task: String,
    /// Mean top-1 accuracy in percent over the finished seeds.
    pub mean: Option<f64>,
    /// Sample standard deviation (n − 1) in percent over the finished seeds, with two or more.
    pub std: Option<f64>,
    /// Finished seeds.
    pub finished: u64,
    /// Failed seeds.
    pub failed: u64,
    /// The first failure's reason, if any seed failed.
    pub reason: Option<String>,
    /// Seeds whose reported epoch was selected on the test split.
    pub selected_on_test: u64,
}

/// Costs of one method, over its finished runs (all its tasks and seeds).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCosts {
    /// The method's row name.
    pub method: String,
    /// Mean trainable parameters without the head.
    pub trainable_without_head: f64,
    /// Mean trainable parameters with the head (the head's size depends on the task's classes).
    pub trainable_with_head: f64,
    /// Mean adapter file size in bytes, over the runs that saved one.
    pub adapter_bytes: Option<f64>,
    /// The largest peak memory of any run, in bytes (what the method needs).
    pub peak_memory_bytes: f64,
    /// Mean training wall time of one run, in seconds.
    pub train_s: f64,
    /// Training wall time of all runs together, in seconds.
    pub train_s_total: f64,
    /// Mean training throughput in images per second.
    pub images_per_s: f64,
}

/// The report's polars tables.
#[derive(Debug, Clone)]
pub struct Tables {
    /// One row per run, in report order: what `results.csv` and `results.parquet` hold.
    pub runs: DataFrame,
    /// One row per method × task: accuracy over seeds and counts of finished and failed seeds.
    pub cells: DataFrame,
    /// One row per method with a finished run: its costs.
    pub costs: DataFrame,
}

impl Tables {
    /// Builds the tables from the runs, kept in the given order.
    pub fn new(runs: &[Run<'_>]) -> Result<Self, ReportError> {
        let runs = runs_frame(runs)?;
        let finished = col("status").eq(lit(FINISHED));
        let count = |e: Expr| e.cast(DataType::UInt64).sum();
        let cells = runs
            .clone()
            .lazy()
            .group_by_stable([col("method"), col("task")])
            .agg([
                col("accuracy_pct").mean().alias("mean"),
                col("accuracy_pct").std(1).alias("std"),
                count(finished.clone()).alias("finished"),
                count(col("status").eq(lit(FAILED))).alias("failed"),
                col("failure_reason").drop_nulls().first().alias("reason"),
                count(col("selected_on_test")).alias("selected_on_test"),
            ])
            .collect()?;
        let mean = |name: &str| col(name).cast(DataType::Float64).mean();
        let costs = runs
            .clone()
            .lazy()
            .filter(finished)
            .group_by_stable([col("method")])
            .agg([
                mean("trainable_params"),
                mean("trainable_params_with_head"),
                mean("adapter_bytes"),
                col("peak_memory_bytes").cast(DataType::Float64).max(),
                mean("train_s"),
                col("train_s").sum().alias("train_s_total"),
                mean("images_per_s"),
            ])
            .collect()?;
        Ok(Tables { runs, cells, costs })
    }

    /// The method × task accuracy cells, read out of [`Tables::cells`].
    pub fn cell_stats(&self) -> Result<Vec<CellStats>, ReportError> {
        let df = &self.cells;
        let (method, task, reason) = (strings(df, "method")?, strings(df, "task")?, strings(df, "reason")?);
        let (mean, std) = (floats(df, "mean")?, floats(df, "std")?);
        let (finished, failed, on_test) =
            (counts(df, "finished")?, counts(df, "failed")?, counts(df, "selected_on_test")?);
        Ok((0..df.height())
            .map(|i| CellStats {
                method: method[i].clone().unwrap_or_default(),
                task: task[i].clone().unwrap_or_default(),
                mean: mean[i],
                // polars gives a std of one value as null or NaN; a spread needs two seeds.
                std: std[i].filter(|s| s.is_finite() && finished[i] >= 2),
                finished: finished[i],
                failed: failed[i],
                reason: reason[i].clone(),
                selected_on_test: on_test[i],
            })
            .collect())
    }

    /// The per-method costs, read out of [`Tables::costs`].
    pub fn method_costs(&self) -> Result<Vec<MethodCosts>, ReportError> {
        let df = &self.costs;
        let method = strings(df, "method")?;
        let f = |name| floats(df, name);
        let (params, with_head, adapter, memory) = (
            f("trainable_params")?,
            f("trainable_params_with_head")?,
            f("adapter_bytes")?,
            f("peak_memory_bytes")?,
        );
        let (train, total, speed) = (f("train_s")?, f("train_s_total")?, f("images_per_s")?);
        Ok((0..df.height())
            .map(|i| MethodCosts {
                method: method[i].clone().unwrap_or_default(),
                trainable_without_head: params[i].unwrap_or(0.0),
                trainable_with_head: with_head[i].unwrap_or(0.0),
                adapter_bytes: adapter[i],
                peak_memory_bytes: memory[i].unwrap_or(0.0),
                train_s: train[i].unwrap_or(0.0),
                train_s_total: total[i].unwrap_or(0.0),
                images_per_s: speed[i].unwrap_or(0.0),
            })
            .collect())
    }

    /// Writes the runs table as CSV (with a header row).
    pub fn write_csv(&self, path: &Path) -> Result<(), ReportError> {
        let mut file = create(path)?;
        CsvWriter::new(&mut file).include_header(true).finish(&mut self.runs.clone())?;
        Ok(())
    }

    /// Writes the runs table as Parquet.
    pub fn write_parquet(&self, path: &Path) -> Result<(), ReportError> {
        let file = create(path)?;
        ParquetWriter::new(file).finish(&mut self.runs.clone())?;
        Ok(())
    }
}

fn create(path: &Path) -> Result<File, ReportError> {
    File::create(path).map_err(|source| ReportError::Write { path: path.to_owned(), source })
}

/// The one-row-per-run frame. Accuracy is in percent, as papers print it (records hold fractions).
fn runs_frame(runs: &[Run<'_>]) -> Result<DataFrame, ReportError> {
    let text = |name: &str, f: &dyn Fn(&RunRecord) -> String| {
        Column::new(name.into(), runs.iter().map(|r| f(r.record)).collect::<Vec<_>>())
    };
    let opt_text = |name: &str, f: &dyn Fn(&RunRecord) -> Option<String>| {
        Column::new(name.into(), runs.iter().map(|r| f(r.record)).collect::<Vec<_>>())
    };
    let uint = |name: &str, f: &dyn Fn(&RunRecord) -> Option<u64>| {
        Column::new(name.into(), runs.iter().map(|r| f(r.record)).collect::<Vec<_>>())
    };
    let float = |name: &str, f: &dyn Fn(&RunRecord) -> Option<f64>| {
        Column::new(name.into(), runs.iter().map(|r| f(r.record)).collect::<Vec<_>>())
    };
    let flag = |name: &str, f: &dyn Fn(&RunRecord) -> bool| {
        Column::new(name.into(), runs.iter().map(|r| f(r.record)).collect::<Vec<_>>())
    };
    let columns = vec![
        text("run_id", &|r| r.run_id.clone()),
        Column::new("method".into(), runs.iter().map(|r| r.method.to_owned()).collect::<Vec<_>>()),
        text("backbone", &|r| r.labels.backbone.clone()),
        text("adapter", &|r| r.labels.adapter.clone()),
        text("adapter_kind", &|r| r.labels.adapter_kind.clone()),
        text("dataset", &|r| r.labels.dataset.clone()),
        text("task", &|r| r.labels.task.clone()),
        opt_text("group", &|r| r.labels.group.map(|g| g.name().to_owned())),
        uint("classes", &|r| r.labels.classes.map(|c| c as u64)),
        uint("seed", &|r| Some(r.labels.seed)),
        text("status", &|r| if r.finished() { FINISHED } else { FAILED }.to_owned()),
        opt_text("failure_reason", &|r| r.failure().map(str::to_owned)),
        float("accuracy_pct", &|r| r.reported_accuracy().map(|a| a * 100.0)),
        text("protocol", &|r| crate::sweeps::protocol_name(crate::sweeps::protocol(r)).to_owned()),
        opt_text("stage", &|r| r.sweep.as_ref().map(|s| serde_name(&s.stage))),
        opt_text("setting", &|r| r.sweep.as_ref().map(|s| losa_framework::recipe::sweep::label(&s.setting))),
        uint("setting_index", &|r| r.sweep.as_ref().map(|s| s.index as u64)),
        float("chosen_on_val_pct", &|r| r.sweep.as_ref().and_then(|s| s.val_accuracy).map(|a| a * 100.0)),
        text("split", &|r| r.selection.split.name().to_owned()),
        text("selection", &|r| selection_name(r)),
        flag("selected_on_test", &|r| r.selection.selected_on_test),
        uint("trainable_params", &|r| Some(r.params.trainable_without_head)),
        uint("trainable_params_with_head", &|r| Some(r.params.trainable_with_head)),
        uint("total_params", &|r| Some(r.params.total)),
        uint("adapter_bytes", &|r| r.adapter_bytes),
        uint("peak_memory_bytes", &|r| Some(r.memory.bytes)),
        text("memory_measured", &|r| measure_name(r)),
        float("train_s", &|r| Some(r.timing.train_s)),
        float("eval_s", &|r| Some(r.timing.eval_s)),
        float("images_per_s", &|r| Some(r.timing.images_per_s)),
        flag("feature_cache", &|r| r.feature_cache),
        text("device", &|r| r.environment.device.clone()),
        text("losa_version", &|r| r.environment.losa_version.clone()),
        text("candle_version", &|r| r.environment.candle_version.clone()),
        opt_text("git_commit", &|r| r.environment.git_commit.clone()),
    ];
    Ok(DataFrame::new_infer_height(columns)?)
}

/// A serde enum's name, as written in recipes and records.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn selection_name(r: &RunRecord) -> String {
    serde_name(&r.selection.rule)
}

fn measure_name(r: &RunRecord) -> String {
    serde_name(&r.memory.measured)
}

fn strings(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, ReportError> {
    Ok(df.column(name)?.str()?.iter().map(|v| v.map(str::to_owned)).collect())
}

fn floats(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, ReportError> {
    Ok(df.column(name)?.cast(&DataType::Float64)?.f64()?.iter().collect())
}

fn counts(df: &DataFrame, name: &str) -> Result<Vec<u64>, ReportError> {
    Ok(df.column(name)?.cast(&DataType::UInt64)?.u64()?.iter().map(|v| v.unwrap_or(0)).collect())
}

#[cfg(test)]
#[path = "tables_tests.rs"]
mod tests;
