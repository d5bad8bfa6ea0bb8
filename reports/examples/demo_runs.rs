//! Writes a demo runs folder of hand-made records, to look at the report's layout with a full
//! VTAB-1k table (`tools/screenshot_report.sh` uses it): six methods × 19 tasks × 3 seeds, one
//! failed run. Accuracies are the published V-PETL Bench numbers (recipes/vtab1k_published.csv)
//! plus seed noise; costs follow REFERENCE.md §5's measured step times and memory. Nothing here
//! was measured by losa, and the report's title says so.
//!
//! Usage: `cargo run -p losa-reports --example demo_runs -- <runs folder>`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use losa_framework::data::vtab;
use losa_framework::recipe::{Selection, Split};
use losa_framework::record::*;
use losa_framework::store;
use losa_reports::Published;

/// (adapter kind, published row, trainable params without head, step ms, peak GiB).
const METHODS: [(&str, &str, u64, f64, f64); 6] = [
    ("linear_probe", "Linear probing", 0, 7.9, 0.68),
    ("full", "Full fine-tuning", 85_798_656, 28.4, 5.36),
    ("bitfit", "BitFit", 102_144, 24.0, 3.4),
    ("vpt", "VPT-Deep", 92_160, 24.1, 3.53),
    ("lora", "LoRA", 294_912, 26.6, 3.57),
    ("adaptformer", "AdaptFormer", 161_280, 25.2, 3.3),
];

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: demo_runs <runs folder>"));
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/vtab1k_published.csv");
    let published = Published::read(&csv).unwrap();
    let mut count = 0;
    for (kind, row, params, step_ms, gib) in METHODS {
        let row = published.rows.iter().find(|r| r.method == row).unwrap();
        for task in &vtab::TASKS {
            for seed in 0..3u64 {
                let noise = (unit(&[kind, task.name], seed) - 0.5) * 1.6;
                let accuracy = ((row.accuracy[task.name] + noise) / 100.0).clamp(0.0, 1.0);
                let failed = kind == "full" && task.name == "dsprites_ori" && seed == 2;
                let record = record(kind, task, seed, params, step_ms, gib, (!failed).then_some(accuracy));
                store::write_record(&out.join(&record.run_id), &record).unwrap();
                count += 1;
            }
        }
    }
    let recipe = format!(
        "name = \"vtab1k-demo\"\ndescription = \"Demo of the report layout: hand-made records (published V-PETL Bench \
         accuracies plus seed noise, costs after REFERENCE.md). Not measured by losa.\"\nseeds = [0, 1, 2]\n\n\
         [[backbones]]\nvariant = \"B/16\"\nweights = \"checkpoints/ViT-B_16.npz\"\n\n{}\n[[datasets]]\nkind = \
         \"vtab1k\"\nroot = \"data/vtab-1k\"\ntasks = [\"all\"]\n\n[report]\ntitle = \"VTAB-1k demo (hand-made \
         records)\"\npublished = {:?}\n",
        METHODS.iter().map(|m| format!("[[adapters]]\nkind = \"{}\"\n", m.0)).collect::<String>(),
        csv.canonicalize().unwrap()
    );
    std::fs::write(out.join(store::RECIPE_FILE), recipe).unwrap();
    println!("{count} records written to {}", out.display());
}

/// A deterministic number in [0, 1) from the parts and the seed (FNV-1a).
fn unit(parts: &[&str], seed: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in parts.iter().flat_map(|p| p.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn record(
    kind: &str,
    task: &vtab::VtabTask,
    seed: u64,
    params: u64,
    step_ms: f64,
    gib: f64,
    accuracy: Option<f64>,
) -> RunRecord {
    let head = 768 * task.classes as u64 + task.classes as u64;
    let steps = 100.0 * (1000.0f64 / 64.0).ceil();
    let train_s = steps * step_ms / 1000.0 * (0.97 + 0.06 * unit(&[kind, task.name, "t"], seed));
    let last = accuracy.map_or(40, |_| 100);
    let curves = (1..=last / 10)
        .map(|i| {
            let p = f64::from(i) / 10.0;
            let done = 1.0 - (-4.0 * p).exp();
            EpochMetrics {
                epoch: i * 10,
                train_loss: Some(task.classes.max(2) as f64 * 0.02 + 2.5 * (1.0 - done)),
                train_accuracy: Some((0.2 + 0.79 * done).min(1.0)),
                val_accuracy: None,
                test_accuracy: accuracy.map(|a| a * (0.6 + 0.4 * done)).or(Some(0.05)),
                lr: None,
            }
        })
        .collect();
    RunRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        run_id: format!(
            "{}-{kind}-s{seed}-demo{:06x}",
            task.name,
            (unit(&[kind, task.name], seed) * 1e6) as u64
        ),
        config: serde_json::json!({ "adapter": { "kind": kind }, "seed": seed, "demo": true }),
        labels: RecordLabels {
            backbone: "ViT-B/16".into(),
            adapter: kind.into(),
            adapter_kind: kind.into(),
            dataset: "vtab1k".into(),
            task: task.name.into(),
            group: Some(task.group),
            classes: Some(task.classes),
            seed,
        },
        status: match accuracy {
            Some(_) => RunStatus::Finished,
            None => RunStatus::Failed { reason: "diverged at step 812 (loss is NaN)".into() },
        },
        accuracy: accuracy
            .map(|a| vec![SplitAccuracy { split: Split::Test, top1: a, per_class: vec![] }])
            .unwrap_or_default(),
        curves,
        timing: Timing { train_s, eval_s: 4.0, images_per_s: 100.0 * 1000.0 / train_s, cache_s: None },
        memory: PeakMemory {
            bytes: (gib * f64::from(1u32 << 30)) as u64,
            measured: MemoryMeasure::CudaAboveBaseline,
        },
        params: ParamCounts {
            trainable_with_head: params + head,
            trainable_without_head: params,
            total: 85_798_656 + head,
        },
        adapter_bytes: accuracy.map(|_| 4 * (params + head) + 512),
        feature_cache: kind == "linear_probe",
        selection: SelectionInfo {
            rule: Selection::Last,
            epoch: Some(last),
            split: Split::Test,
            selected_on_test: false,
        },
        environment: Environment {
            device: "cuda:0 (demo)".into(),
            losa_version: env!("CARGO_PKG_VERSION").into(),
            candle_version: "0.11.1".into(),
            git_commit: None,
            hostname: None,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        },
        sweep: None,
    }
}
