//! `runner report`: a report rebuilt from hand-written run records (2 methods × 3 VTAB-1k tasks in
//! 2 groups × 2 seeds, one failed run), its files, and bad runs folders.

use std::path::Path;

use scraper::{Html, Selector};
use serde_json::json;

use crate::support::{repo, runner, write};

/// The test accuracy (fraction) of each run; `None` fails.
const RUNS: [(&str, &str, u64, Option<f64>); 12] = [
    ("linear_probe", "dtd", 0, Some(0.60)),
    ("linear_probe", "dtd", 1, Some(0.64)),
    ("linear_probe", "svhn", 0, Some(0.40)),
    ("linear_probe", "svhn", 1, Some(0.42)),
    ("linear_probe", "eurosat", 0, Some(0.90)),
    ("linear_probe", "eurosat", 1, Some(0.88)),
    ("losa", "dtd", 0, Some(0.70)),
    ("losa", "dtd", 1, Some(0.72)),
    ("losa", "svhn", 0, Some(0.85)),
    ("losa", "svhn", 1, None),
    ("losa", "eurosat", 0, Some(0.95)),
    ("losa", "eurosat", 1, Some(0.96)),
];

/// A record as the engine writes it, written out by hand (not through the Rust types).
fn record(adapter: &str, task: &str, seed: u64, accuracy: Option<f64>) -> serde_json::Value {
    let group = if task == "eurosat" { "specialized" } else { "natural" };
    let lp = adapter == "linear_probe";
    let status = match accuracy {
        Some(_) => json!({ "state": "finished" }),
        None => json!({ "state": "failed", "reason": "diverged at step 120 (loss is NaN)" }),
    };
    let accuracy_list = match accuracy {
        Some(a) => json!([{ "split": "test", "top1": a, "per_class": [a, a] }]),
        None => json!([]),
    };
    json!({
        "schema_version": 1,
        "run_id": format!("{task}-{adapter}-s{seed}-0123456789"),
        "config": { "adapter": { "kind": adapter }, "seed": seed },
        "labels": {
            "backbone": "ViT-B/16", "adapter": adapter, "adapter_kind": adapter, "dataset": "vtab1k",
            "task": task, "group": group, "classes": 10, "seed": seed
        },
        "status": status,
        "accuracy": accuracy_list,
        "curves": [
            { "epoch": 10, "train_loss": 1.2, "train_accuracy": 0.5 },
            { "epoch": 20, "train_loss": 0.3, "train_accuracy": 0.9, "test_accuracy": accuracy }
        ],
        "timing": { "train_s": if lp { 30.0 } else { 150.0 }, "eval_s": 5.0, "images_per_s": if lp { 3000.0 } else { 600.0 } },
        "memory": { "bytes": if lp { 900_000_000u64 } else { 2_400_000_000u64 }, "measured": "cuda_above_baseline" },
        "params": {
            "trainable_with_head": if lp { 7690 } else { 197_690 },
            "trainable_without_head": if lp { 0 } else { 190_000 },
            "total": 86_000_000
        },
        "adapter_bytes": if accuracy.is_some() { Some(if lp { 30_760 } else { 790_760 }) } else { None },
        "feature_cache": lp,
        "selection": { "rule": "last", "epoch": 20, "split": "test", "selected_on_test": false },
        "environment": {
            "device": "cuda:0 (NVIDIA H100)", "losa_version": "0.1.0", "candle_version": "0.11.1",
            "git_commit": "69e5202", "hostname": "node7", "os": "linux x86_64"
        }
    })
}

fn recipe(published: &str) -> String {
    format!(
        r#"name = "vtab-mini"
description = "Linear probe vs LoSA on three VTAB-1k tasks <i>for the test</i>"
seeds = [0, 1]
[[backbones]]
variant = "B/16"
weights = "checkpoints/ViT-B_16.npz"
[[adapters]]
kind = "linear_probe"
[[adapters]]
kind = "losa"
[[datasets]]
kind = "vtab1k"
root = "data/vtab-1k"
tasks = ["dtd", "svhn", "eurosat"]
[report]
title = "VTAB mini <b>comparison</b>"
published = "{published}"
"#
    )
}

/// Writes the runs folder `runs/vtab-mini` under `dir`, with a recipe naming `published`.
fn runs_folder(dir: &Path, published: &str) {
    for (adapter, task, seed, accuracy) in RUNS {
        let text = serde_json::to_string_pretty(&record(adapter, task, seed, accuracy)).unwrap();
        write(dir, &format!("runs/vtab-mini/{task}-{adapter}-s{seed}-0123456789/record.json"), &text);
    }
    write(dir, "runs/vtab-mini/recipe.toml", &recipe(published));
    write(dir, "runs/vtab-mini/cache/features.bin", "not a run");
}

fn select(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn texts(doc: &Html, selector: &str) -> Vec<String> {
    doc.select(&select(selector)).map(|e| e.text().collect::<String>().trim().to_owned()).collect()
}

#[test]
fn report_rebuilds_every_file_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let published = repo().join("recipes/vtab1k_published.csv");
    runs_folder(dir.path(), published.to_str().unwrap());
    let run = runner(dir.path(), &["report", "runs/vtab-mini"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("runs/vtab-mini/report");
    assert!(run.stdout.contains("report.html"), "{}", run.stdout);
    for file in ["report.html", "results.csv", "results.parquet", "summary.md"] {
        assert!(out.join(file).is_file(), "no {file}");
    }

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: nothing to fetch, nothing to run.
    for needle in ["http://", "https://", "<script", "<link", "@import", "url(", "<iframe", "<img"] {
        assert!(!html.to_lowercase().contains(needle), "the report contains {needle:?}");
    }
    let doc = Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    // User text is escaped, not interpreted.
    assert_eq!(texts(&doc, "h1"), ["VTAB mini <b>comparison</b>"]);
    assert!(doc.select(&select("h1 b, p.description i")).next().is_none());

    let tables: Vec<_> = doc.select(&select("#summary table, #tasks table")).collect();
    assert_eq!(tables.len(), 2);
    for table in &tables {
        let methods: Vec<String> =
            table.select(&select("tbody.own th.method")).map(|e| e.text().collect::<String>()).collect();
        assert_eq!(methods, ["linear_probe", "losa"]);
        let published_rows = table.select(&select("tbody.published th.method")).count();
        assert_eq!(published_rows, 20);
    }
    let task_heads: Vec<String> = doc
        .select(&select("#tasks thead th[title]"))
        .filter_map(|e| e.value().attr("title").map(str::to_owned))
        .collect();
    for task in ["dtd", "svhn", "eurosat"] {
        assert!(task_heads.iter().any(|t| t == task), "task {task} not in {task_heads:?}");
    }
    assert_eq!(texts(&doc, "#tasks thead tr.groups th.group")[..2], ["natural", "specialized"]);

    // Values: linear probe on dtd is 62.0 ± 2.8 (seeds 60 and 64); LoSA's svhn has one failed seed.
    let own_rows = |table: usize| -> Vec<Vec<String>> {
        tables[table]
            .select(&select("tbody.own tr"))
            .map(|tr| tr.select(&select("td")).map(|td| td.text().collect::<String>()).collect())
            .collect()
    };
    let tasks = own_rows(1);
    assert_eq!(tasks[0][..3], ["62.0 ± 2.8", "41.0 ± 1.4", "89.0 ± 1.4"]);
    assert!(tasks[1][1].starts_with("85.0") && !tasks[1][1].contains('±'), "{:?}", tasks[1]);
    // Averages: mean of 2 groups and mean of 3 tasks.
    assert_eq!(tasks[0][3..], ["70.25", "64.00"]);
    assert_eq!(tasks[1][3..5], ["86.75", "83.83"]);
    let note = doc.select(&select("#tasks tbody.own td[title*='diverged at step 120']")).count();
    assert_eq!(note, 1, "the partly failed cell explains itself");
    // Best marks: LoSA wins every accuracy column; published rows are never marked.
    let best: Vec<String> =
        tables[1].select(&select("tbody.own td.best")).map(|e| e.text().collect()).collect();
    assert_eq!(best.len(), 5, "{best:?}");
    assert_eq!(tables[1].select(&select("tbody.published td.best")).count(), 0);
    let summary = own_rows(0);
    assert_eq!(summary[0][4..], ["0", "0.00769", "30 KiB", "0.838", "30 s", "3000"]);
    assert!(summary[1][5].starts_with("0.198"), "{:?}", summary[1]);

    assert!(doc.select(&select("#charts svg.chart")).count() == 3);
    assert!(doc.select(&select("#charts path.pareto")).count() >= 1);
    assert_eq!(doc.select(&select("#curves svg.curve")).count(), 6);
    assert_eq!(texts(&doc, "#failures tbody td:nth-child(5)"), ["diverged at step 120 (loss is NaN)"]);
    let recipe_text = texts(&doc, "pre.recipe").join("");
    assert!(recipe_text.contains("title = \"VTAB mini <b>comparison</b>\""), "{recipe_text}");
    assert!(texts(&doc, "#environment td").iter().any(|t| t == "cuda:0 (NVIDIA H100)"));

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + RUNS.len(), "one row per run");
    for column in [
        "method",
        "dataset",
        "task",
        "seed",
        "accuracy_pct",
        "trainable_params",
        "adapter_bytes",
        "peak_memory_bytes",
        "train_s",
        "images_per_s",
    ] {
        assert!(lines[0].split(',').any(|c| c == column), "results.csv lacks {column}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains(",failed,")).count(), 1);
    let parquet = std::fs::read(out.join("results.parquet")).unwrap();
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.starts_with("# VTAB mini \\<b\\>comparison\\</b\\>\n"), "{md}");
    assert!(md.contains("| linear\\_probe | 62.0 ± 2.8 |"), "{md}");
    assert!(md.contains("**86.75**") && md.contains("| *LoRA* |"), "{md}");
}

#[test]
fn out_and_published_flags_override_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    runs_folder(dir.path(), "nowhere/published.csv");
    // The recipe names a published file that is not there: said, with the key and the way out.
    let run = runner(dir.path(), &["report", "runs/vtab-mini"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("recipe.toml: report.published names nowhere/published.csv"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--published"), "{}", run.stderr);

    let csv = write(dir.path(), "mine.csv", "method,params_m,dtd,svhn,eurosat\nMy baseline,0.1,50,60,70\n");
    let run = runner(
        dir.path(),
        &["report", "runs/vtab-mini", "--out", "elsewhere", "--published", csv.to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let html = std::fs::read_to_string(dir.path().join("elsewhere/report.html")).unwrap();
    assert!(html.contains("My baseline"));
    assert!(!dir.path().join("runs/vtab-mini/report").exists());

    let bad = write(dir.path(), "bad.csv", "method,dtd\nA,ninety\n");
    let run = runner(dir.path(), &["report", "runs/vtab-mini", "--published", bad.to_str().unwrap()], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("bad.csv: line 2: dtd: expected an accuracy in percent"), "{}", run.stderr);
}

#[test]
fn bad_runs_folders_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = runner(dir.path(), &["report", "runs/none"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("runs folder runs/none not found"), "{}", run.stderr);

    std::fs::create_dir_all(dir.path().join("runs/empty/report")).unwrap();
    let run = runner(dir.path(), &["report", "runs/empty"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("holds no run records"), "{}", run.stderr);

    runs_folder(dir.path(), "unused.csv");
    let bad = dir.path().join("runs/vtab-mini/dtd-losa-s0-0123456789/record.json");
    let text = std::fs::read_to_string(&bad).unwrap().replace("\"top1\": 0.7", "\"top1\": \"high\"");
    std::fs::write(&bad, text).unwrap();
    let run = runner(dir.path(), &["report", "runs/vtab-mini", "--published", "none.csv"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("dtd-losa-s0-0123456789/record.json is not a valid run record: accuracy[0].top1"),
        "{}",
        run.stderr
    );
}

#[test]
fn report_has_help_naming_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let run = runner(dir.path(), &["report", "--help"], &[]);
    assert_eq!(run.code, 0);
    for flag in ["--out", "--published", "runs folder"] {
        assert!(run.stdout.contains(flag), "report --help lacks {flag}:\n{}", run.stdout);
    }
    let help = runner(dir.path(), &["--help"], &[]);
    assert!(help.stdout.contains("report"), "{}", help.stdout);
}
