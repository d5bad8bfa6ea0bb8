//! Sweeps and the two VTAB-1k protocols through `runner`, on the synthetic suite with a tiny ViT:
//! the tuning stage, the choice (best mean val200, ties to the first setting), the final stage,
//! resuming between the stages, the report, and the stages as Slurm job arrays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use losa_framework::plan::Stage;
use losa_framework::recipe::Split;
use losa_framework::record::RunRecord;
use losa_framework::store::read_records;

use crate::slurm::section;
use crate::support::{runner, write};

/// Two methods, each sweeping one key over two values, two seeds, one task. `probe-lr` makes a
/// real choice; `probe-tie`'s settings train identically (how often to evaluate changes nothing
/// under `select = "last"`), so its choice is a tie.
const RECIPE: &str = r#"
name = "sweep"
seeds = [0, 1]
protocol = "PROTOCOL"
[[backbones]]
variant = "custom"
width = 32
depth = 2
heads = 2
mlp_dim = 64
patch_size = 8
image_size = 32
random_init = 1
[[adapters]]
kind = "linear_probe"
label = "probe-lr"
sweep = { "train.lr" = [1e-2, 1e-5] }
[[adapters]]
kind = "linear_probe"
label = "probe-tie"
sweep = { "eval.every_epochs" = [2, 1] }
[[datasets]]
kind = "synthetic"
tasks = ["shape"]
image_size = 32
train_size = 32
val_size = 16
test_size = 16
[train]
epochs = 2
warmup_epochs = 0
batch_size = 16
"#;

fn recipe(dir: &Path, protocol: &str) -> PathBuf {
    write(dir, "sweep.toml", &RECIPE.replace("PROTOCOL", protocol))
}

fn stage(r: &RunRecord) -> Stage {
    r.sweep.as_ref().expect("a swept run's record says its sweep").stage
}

/// Per method: setting index → (setting label, mean val200 accuracy over the seeds in seed order).
fn tuning_means(records: &[RunRecord]) -> BTreeMap<String, BTreeMap<usize, f64>> {
    let mut scores: BTreeMap<String, BTreeMap<usize, Vec<(u64, f64)>>> = BTreeMap::new();
    for r in records.iter().filter(|r| stage(r) == Stage::Tune) {
        let val = r.accuracy.iter().find(|a| a.split == Split::Val200).expect("tuning scores val200").top1;
        let index = r.sweep.as_ref().unwrap().index;
        scores
            .entry(r.labels.adapter.clone())
            .or_default()
            .entry(index)
            .or_default()
            .push((r.labels.seed, val));
    }
    scores
        .into_iter()
        .map(|(method, settings)| {
            let means = settings
                .into_iter()
                .map(|(i, mut s)| {
                    s.sort_by_key(|(seed, _)| *seed);
                    (i, s.iter().map(|(_, v)| v).sum::<f64>() / s.len() as f64)
                })
                .collect();
            (method, means)
        })
        .collect()
}

#[test]
fn tune_then_test_chooses_on_val200_reports_the_choice_and_resumes_between_stages() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "tune_then_test");
    let recipe = path.to_str().unwrap();
    let out = dir.path().join("runs/sweep");

    // The plan: 2 methods × 2 settings × 2 seeds to tune, then one setting per method × 2 seeds.
    let plan = runner(dir.path(), &["plan", recipe], &[]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for text in ["8 runs (tuning stage: train800 → val200)", "stage", "train.lr=0.01", "eval.every_epochs=2"]
    {
        assert!(plan.stdout.contains(text), "{text:?} not in:\n{}", plan.stdout);
    }
    assert!(plan.stdout.contains("4 runs once tuning has ended (0 decided so far)"), "{}", plan.stdout);

    // Only the tuning stage (a job array's first array, or a run that stopped there).
    let tune = runner(dir.path(), &["run", recipe, "--stage", "tune"], &[]);
    assert_eq!(tune.code, 0, "{}", tune.stderr);
    let records = read_records(&out).unwrap();
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| stage(r) == Stage::Tune && r.finished()));
    assert!(!out.join("report/report.html").exists(), "a report of tuning runs alone");
    // Tuning trains on train800 and scores on val200, the only split it evaluates.
    assert!(records.iter().all(|r| r.accuracy.iter().map(|a| a.split).eq([Split::Val200])));

    // Then the rest: the final runs of the choices, after the tuning runs (all skipped).
    let run = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("12 run(s): 4 trained, 8 finished before, 0 failed"), "{}", run.stdout);
    let records = read_records(&out).unwrap();
    let means = tuning_means(&records);
    let finals: Vec<&RunRecord> = records.iter().filter(|r| stage(r) == Stage::Final).collect();
    assert_eq!(finals.len(), 4);
    for r in &finals {
        let sweep = r.sweep.as_ref().unwrap();
        let settings = &means[&r.labels.adapter];
        // The best mean val200; equal means go to the first setting in the recipe's order.
        let best = settings.values().copied().fold(f64::NEG_INFINITY, f64::max);
        let first_best = settings.iter().find(|(_, m)| **m == best).map(|(i, _)| *i).unwrap();
        assert_eq!(sweep.index, first_best, "{}: {settings:?}", r.labels.adapter);
        assert_eq!(sweep.val_accuracy, Some(best));
        assert!(r.accuracy.iter().map(|a| a.split).eq([Split::Test]), "final runs test on test");
    }
    let tie = &means["probe-tie"];
    assert_eq!(tie[&0], tie[&1], "evaluating more often changed training: {tie:?}");
    assert!(
        finals
            .iter()
            .filter(|r| r.labels.adapter == "probe-tie")
            .all(|r| r.sweep.as_ref().unwrap().index == 0)
    );

    // The report: the final runs only, with the protocol, the chosen settings and their scores.
    let csv = std::fs::read_to_string(out.join("report/results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}"));
    assert!(rows.iter().all(|r| r[column("protocol")] == "tune_then_test" && r[column("stage")] == "final"));
    let tie_row = rows.iter().find(|r| r[column("adapter")] == "probe-tie").unwrap();
    assert_eq!(tie_row[column("setting")], "eval.every_epochs=2");
    let chosen: f64 = tie_row[column("chosen_on_val_pct")].parse().unwrap();
    assert!((chosen - tie[&0] * 100.0).abs() < 1e-9);
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    let choices = scraper::Selector::parse("#choices tbody tr").unwrap();
    let cells: Vec<Vec<String>> = doc
        .select(&choices)
        .map(|tr| tr.text().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .collect();
    assert_eq!(cells.len(), 2, "{cells:?}");
    assert_eq!(cells[1][..3], ["probe-tie", "shape", "eval.every_epochs=2"]);
    assert_eq!(cells[1][3], format!("{:.1}", tie[&0] * 100.0));
    assert!(html.contains("protocol tune_then_test"));
    let md = std::fs::read_to_string(out.join("report/summary.md")).unwrap();
    assert!(
        md.contains("## Chosen settings (tune_then_test)") && md.contains("eval.every\\_epochs=2"),
        "{md}"
    );

    // Resuming between the stages: a lost tuning run is retrained, the same choice is made and
    // the final runs stand; a lost final run is retrained alone.
    let lost_tune =
        records.iter().find(|r| stage(r) == Stage::Tune && r.labels.adapter == "probe-lr").unwrap();
    std::fs::remove_dir_all(out.join(&lost_tune.run_id)).unwrap();
    std::fs::remove_dir_all(out.join(&finals[0].run_id)).unwrap();
    let again = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("12 run(s): 2 trained, 10 finished before, 0 failed"), "{}", again.stdout);
    let after = read_records(&out).unwrap();
    assert_eq!(after.len(), 12);
    let same =
        |a: &RunRecord, b: &RunRecord| (a.run_id == b.run_id, a.sweep == b.sweep, a.accuracy == b.accuracy);
    for r in &records {
        let now = after.iter().find(|a| a.run_id == r.run_id).unwrap();
        assert_eq!(same(r, now), (true, true, true), "{} changed on rerun", r.run_id);
    }

    // `runner status` shows both stages.
    let status = runner(dir.path(), &["status", recipe], &[]);
    assert!(
        status.stdout.contains("12 runs in") && status.stdout.contains("12 finished"),
        "{}",
        status.stdout
    );
}

#[test]
fn under_fixed_every_setting_is_a_row_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "fixed");
    let staged = runner(dir.path(), &["run", path.to_str().unwrap(), "--stage", "tune"], &[]);
    assert_eq!(staged.code, 2);
    assert!(staged.stderr.contains("--stage goes with protocol = \"tune_then_test\""), "{}", staged.stderr);
    // First the method without a sweep, at the first rate: the sweep's run with that rate is the
    // same run, reused, and the report names it by its setting all the same.
    let plain = r#"adapters=[{kind = "linear_probe", label = "probe-lr", train = {lr = 0.01}}]"#;
    let run = runner(dir.path(), &["run", path.to_str().unwrap(), "--set", "seeds=[0]", "--set", plain], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = runner(dir.path(), &["run", path.to_str().unwrap(), "--set", "seeds=[0]"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("4 run(s): 3 trained, 1 finished before"), "{}", run.stdout);
    let out = dir.path().join("runs/sweep");
    let records = read_records(&out).unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(
        records.iter().filter(|r| r.sweep.as_ref().is_some_and(|s| s.stage == Stage::Fixed)).count(),
        3
    );
    // Fixed runs train on the recipe's splits (train800val200 → test by default).
    assert!(records.iter().all(|r| r.accuracy.iter().map(|a| a.split).eq([Split::Test])));
    let md = std::fs::read_to_string(out.join("report/summary.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| probe")).collect();
    // Each row twice: the summary table and the per-task table.
    for name in [
        "probe-lr \\[train.lr=0.01\\]",
        "probe-lr \\[train.lr=0.00001\\]",
        "probe-tie \\[eval.every\\_epochs=2\\]",
    ] {
        assert_eq!(rows.iter().filter(|l| l.starts_with(&format!("| {name} |"))).count(), 2, "{name}:\n{md}");
    }
    assert!(md.contains("protocol fixed") && !md.contains("Chosen settings"), "{md}");
}

#[test]
fn submit_runs_the_stages_as_two_job_arrays_then_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "tune_then_test");
    let run = runner(dir.path(), &["submit", path.to_str().unwrap(), "--dry-run", "--tasks", "3"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("runs/sweep");
    let logs = out.join("slurm");
    let script =
        |name: &str| write(dir.path(), name, section(&run.stdout, &logs.join(name).display().to_string()));
    let (tune, finals, report) = (script("array.sbatch"), script("final.sbatch"), script("report.sbatch"));
    let commands = section(&run.stdout, "sbatch commands");
    assert!(
        commands.contains("--dependency=afterany:<array job id>")
            && commands.contains("<final array job id>")
    );
    assert!(
        run.stdout.contains("8 tuning runs in 3 array tasks, then 4 final runs in 3 array tasks"),
        "{}",
        run.stdout
    );
    // As Slurm would: every tuning task, then every final task, then the report.
    for (array, stage) in [(&tune, "tune"), (&finals, "final")] {
        assert!(std::fs::read_to_string(array).unwrap().contains(&format!("--stage {stage}")));
        for task in ["0", "1", "2"] {
            let status = std::process::Command::new("bash")
                .arg(array)
                .env("SLURM_ARRAY_TASK_ID", task)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{stage} task {task}");
        }
    }
    let records = read_records(&out).unwrap();
    assert_eq!(records.iter().filter(|r| stage(r) == Stage::Tune).count(), 8);
    assert_eq!(records.iter().filter(|r| stage(r) == Stage::Final).count(), 4);
    let status = std::process::Command::new("bash").arg(&report).stdout(std::process::Stdio::null()).status();
    assert!(status.unwrap().success());
    let csv = std::fs::read_to_string(out.join("report/results.csv")).unwrap();
    assert_eq!(csv.lines().count() - 1, 4, "{csv}");
}

#[test]
fn a_choice_once_made_stays_when_a_failed_tuning_run_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "tune_then_test");
    let recipe = path.to_str().unwrap();
    let out = dir.path().join("runs/sweep");
    assert_eq!(runner(dir.path(), &["run", recipe, "--stage", "tune"], &[]).code, 0);
    // The best rate of probe-lr loses a seed (as to a crash): the other rate is chosen.
    let records = read_records(&out).unwrap();
    let means = &tuning_means(&records)["probe-lr"];
    let best = if means[&1] > means[&0] { 1 } else { 0 };
    let victim = records
        .iter()
        .find(|r| r.labels.adapter == "probe-lr" && r.sweep.as_ref().unwrap().index == best)
        .unwrap();
    let mut failed = victim.clone();
    failed.status = losa_framework::record::RunStatus::Failed { reason: "killed".into() };
    let file = out.join(&victim.run_id).join("record.json");
    std::fs::write(&file, serde_json::to_string(&failed).unwrap()).unwrap();
    let finals = runner(dir.path(), &["run", recipe, "--stage", "final"], &[]);
    assert_eq!(finals.code, 0, "{}", finals.stderr);
    let chosen = |records: &[RunRecord]| -> Vec<usize> {
        let mut i: Vec<usize> = records
            .iter()
            .filter(|r| stage(r) == Stage::Final && r.labels.adapter == "probe-lr")
            .map(|r| r.sweep.as_ref().unwrap().index)
            .collect();
        i.dedup();
        i
    };
    assert_eq!(chosen(&read_records(&out).unwrap()), [1 - best]);
    // The choice is stored: a rerun neither retries the failed tuning run (its group's tuning is
    // over) nor changes the choice, and no second set of final runs appears.
    let again = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("12 run(s): 0 trained, 11 finished before, 0 failed"), "{}", again.stdout);
    assert!(again.stdout.contains("1 failed tuning run(s) not run again"), "{}", again.stdout);
    assert_eq!(chosen(&read_records(&out).unwrap()), [1 - best]);
    assert_eq!(std::fs::read_dir(out.join("choices")).unwrap().count(), 2, "one stored choice per group");
    let md = std::fs::read_to_string(out.join("report/summary.md")).unwrap();
    assert!(md.contains("1 tuning run(s) failed"), "{md}");
    // --force redoes everything, the failed run too, and chooses again: the first choice.
    let force = runner(dir.path(), &["run", recipe, "--force"], &[]);
    assert_eq!(force.code, 0, "{}", force.stderr);
    let after = read_records(&out).unwrap();
    assert!(after.iter().find(|r| r.run_id == victim.run_id).unwrap().finished());
    assert!(chosen(&after).contains(&best), "{:?}", chosen(&after));
}

#[test]
fn shards_run_without_stages_cover_every_final_run_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "tune_then_test");
    let recipe = path.to_str().unwrap();
    // Shard 0 ends its tuning runs before shard 1 has started: its groups are still tuning.
    let first = runner(dir.path(), &["run", recipe, "--shard", "0/2"], &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("still tuning"), "{}", first.stdout);
    assert_eq!(runner(dir.path(), &["run", recipe, "--shard", "1/2"], &[]).code, 0);
    // Shard 1 ran its share of the final runs; shard 0, run again, runs the rest.
    let again = runner(dir.path(), &["run", recipe, "--shard", "0/2"], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let records = read_records(&dir.path().join("runs/sweep")).unwrap();
    assert_eq!(records.iter().filter(|r| stage(r) == Stage::Final).count(), 4);
    assert_eq!(records.len(), 12);
}

#[test]
fn sweeps_that_cannot_run_as_meant_are_bad_input_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "fixed");
    let recipe = path.to_str().unwrap();
    let bad = |sets: &[&str], plan: bool, expected: &[&str]| {
        let mut args = vec![if plan { "plan" } else { "check" }, recipe];
        for s in sets {
            args.extend(["--set", s]);
        }
        let run = runner(dir.path(), &args, &[]);
        assert_eq!(run.code, 2, "{sets:?}: {}", run.stdout);
        for text in expected {
            assert!(run.stderr.contains(text), "{sets:?}: {text:?} not in:\n{}", run.stderr);
        }
    };
    // Two methods whose settings coincide would share runs.
    let same = r#"adapters=[{kind = "linear_probe", label = "a", sweep = {"train.lr" = [0.01, 0.001]}},
                            {kind = "linear_probe", label = "b", train = {lr = 0.001}}]"#;
    bad(
        &[same],
        true,
        &["adapters[0] (a) with train.lr=0.001 and adapters[1] (b) train exactly the same run"],
    );
    bad(
        &[r#"adapters=[{kind = "linear_probe", sweep = {"adapter.label" = ["x", "y"]}}]"#],
        false,
        &["adapter.label", "not one of its settings"],
    );
    bad(&["sweep.sample=0"], false, &["sweep.sample", "expected at least 1"]);
    bad(&["sweep.seed=3"], false, &["sweep.seed", "give `sample` too"]);
    // Values fine alone, wrong together.
    let clash = r#"sweep.grid={"train.epochs" = [1, 4], "train.warmup_epochs" = [0, 2]}"#;
    bad(
        &[clash],
        false,
        &["with train.epochs=1, train.lr=0.01, train.warmup_epochs=2", "expected at most epochs = 1"],
    );
    // Tuning needs a validation split.
    let idx = r#"datasets=[{kind = "idx", task = "t", train_images = "i.gz", train_labels = "l.gz", test_images = "ti.gz",
                           test_labels = "tl.gz", classes = 10, val_size = 0}]"#;
    bad(&[idx, "protocol=\"tune_then_test\""], false, &["datasets[0].val_size", "positive val_size"]);
}
