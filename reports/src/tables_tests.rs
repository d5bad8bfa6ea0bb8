use super::*;
use crate::testing::record;
use losa_framework::data::vtab::Group;
use polars_io::SerReader;

fn records() -> Vec<RunRecord> {
    let (n, s) = (Some(Group::Natural), Some(Group::Specialized));
    vec![
        record("lp", "dtd", n, 0, Some(0.70)),
        record("lp", "dtd", n, 1, Some(0.72)),
        record("lp", "dtd", n, 2, Some(0.74)),
        record("lp", "eurosat", s, 0, Some(0.90)),
        record("lp", "eurosat", s, 1, None),
        record("lp", "eurosat", s, 2, Some(0.94)),
        record("lora", "dtd", n, 0, None),
        record("lora", "dtd", n, 1, None),
        record("lora", "eurosat", s, 0, Some(0.95)),
    ]
}

fn tables(records: &[RunRecord]) -> Tables {
    let runs: Vec<Run<'_>> = records.iter().map(|r| Run { method: &r.labels.adapter, record: r }).collect();
    Tables::new(&runs).unwrap()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn cells_are_mean_and_sample_std_over_finished_seeds_with_failures_counted() {
    let records = records();
    let cells = tables(&records).cell_stats().unwrap();
    let find = |m: &str, t: &str| cells.iter().find(|c| c.method == m && c.task == t).unwrap().clone();
    assert_eq!(cells.len(), 4);
    // Kept in first-appearance order.
    assert_eq!((cells[0].method.as_str(), cells[0].task.as_str()), ("lp", "dtd"));

    let c = find("lp", "dtd");
    assert!(close(c.mean, 72.0) && close(c.std, 2.0), "{c:?}");
    assert_eq!((c.finished, c.failed, c.reason), (3, 0, None));

    let c = find("lp", "eurosat");
    assert!(close(c.mean, 92.0) && close(c.std, 8f64.sqrt()), "{c:?}");
    assert_eq!((c.finished, c.failed), (2, 1));
    assert_eq!(c.reason.as_deref(), Some("diverged at step 101"));

    let c = find("lora", "dtd");
    assert_eq!((c.mean, c.std, c.finished, c.failed), (None, None, 0, 2));
    assert_eq!(c.reason.as_deref(), Some("diverged at step 100"));

    // One finished seed: a mean, no spread.
    let c = find("lora", "eurosat");
    assert!(close(c.mean, 95.0) && c.std.is_none(), "{c:?}");
    assert_eq!(c.selected_on_test, 0);
}

#[test]
fn costs_are_over_finished_runs_only() {
    let records = records();
    let costs = tables(&records).method_costs().unwrap();
    assert_eq!(costs.len(), 2);
    let lp = &costs[0];
    assert_eq!(lp.method, "lp");
    assert_eq!((lp.trainable_without_head, lp.trainable_with_head), (2000.0, 9690.0));
    assert_eq!(lp.adapter_bytes, Some(8000.0));
    assert_eq!(lp.peak_memory_bytes, f64::from(2u32 << 30));
    assert_eq!((lp.train_s, lp.train_s_total, lp.images_per_s), (20.0, 100.0, 500.0));
    let lora = &costs[1];
    assert_eq!((lora.method.as_str(), lora.train_s_total, lora.images_per_s), ("lora", 40.0, 250.0));
}

#[test]
fn a_method_whose_runs_all_failed_has_no_costs() {
    let records = vec![record("lp", "dtd", None, 0, Some(0.5)), record("full", "dtd", None, 0, None)];
    let costs = tables(&records).method_costs().unwrap();
    assert_eq!(costs.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["lp"]);
}

#[test]
fn exports_have_one_row_per_run_in_csv_and_parquet() {
    let records = records();
    let t = tables(&records);
    let dir = tempfile::tempdir().unwrap();
    let (csv, parquet) = (dir.path().join("r.csv"), dir.path().join("r.parquet"));
    t.write_csv(&csv).unwrap();
    t.write_parquet(&parquet).unwrap();

    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + records.len());
    let header: Vec<&str> = lines[0].split(',').collect();
    for column in [
        "method",
        "task",
        "seed",
        "status",
        "accuracy_pct",
        "trainable_params",
        "peak_memory_bytes",
        "train_s",
    ] {
        assert!(header.contains(&column), "no {column} in {header:?}");
    }
    let field = |line: &str, column: &str| {
        let i = header.iter().position(|h| *h == column).unwrap();
        line.split(',').nth(i).unwrap().to_owned()
    };
    assert_eq!(field(lines[1], "accuracy_pct").parse::<f64>().unwrap(), 70.0);
    assert_eq!(field(lines[5], "status"), "failed");
    assert_eq!(field(lines[5], "accuracy_pct"), "");
    assert_eq!(field(lines[5], "failure_reason"), "diverged at step 101");

    let back = polars_io::parquet::read::ParquetReader::new(std::fs::File::open(&parquet).unwrap())
        .finish()
        .unwrap();
    assert_eq!(back.height(), records.len());
    assert_eq!(back.get_column_names(), t.runs.get_column_names());
    assert!(back.equals_missing(&t.runs));
}
