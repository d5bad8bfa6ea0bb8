//! The engine end to end: training a plan into a runs folder, resuming interrupted runs, the
//! feature cache, failures, shards and selection, through the library and through `runner`.

use std::path::Path;

use candle_core::{DType, Result as CandleResult, Tensor, Var};
use losa_framework::adaptation::{Adaptation, BackboneUse, Taps};
use losa_framework::engine::execute::{self, Options, Summary};
use losa_framework::engine::progress::{Control, Event, Progress, Silent};
use losa_framework::engine::running::{self, Running};
use losa_framework::recipe::{AdapterConfig, LoadOptions, Recipe};
use losa_framework::record::RunRecord;
use losa_framework::store::read_records;
use losa_framework::vit::Vit;
use serde_json::Value;

use crate::support::{repo, runner, write};

/// A tiny ViT on one synthetic task: 48 training images in batches of 16 (3 steps per epoch),
/// 3 epochs, validation every epoch, the best validation epoch selected. Methods with dropout,
/// so resuming must also continue the random streams.
const RECIPE: &str = r#"
name = "engine"
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
[[adapters]]
kind = "losa"
channel_rank = 4
token_rank = 4
dropout = 0.1
[[adapters]]
kind = "lora"
rank = 2
dropout = 0.1
[[datasets]]
kind = "synthetic"
tasks = ["shape"]
image_size = 32
train_size = 48
val_size = 16
test_size = 32
[train]
epochs = 3
warmup_epochs = 1
batch_size = 16
lr = 1e-2
[eval]
train_split = "train800"
val_split = "val200"
select = "best_val"
every_epochs = 1
"#;

fn load(dir: &Path, text: &str) -> Recipe {
    let path = write(dir, "recipe.toml", text);
    losa_framework::recipe::load(&path, &LoadOptions::default()).unwrap()
}

fn execute_into(recipe: &Recipe, runs_dir: &Path, force: bool, progress: &mut dyn Progress) -> Summary {
    let runs = losa_framework::plan::plan(recipe);
    let options = Options { runs_dir: runs_dir.to_owned(), force, device: candle_core::Device::Cpu };
    execute::execute(recipe, &runs, &options, &losa_adapters::build, progress)
}

/// A record without what differs between identical runs: times, memory, machine.
fn comparable(r: &RunRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    for key in ["timing", "memory", "environment"] {
        v.as_object_mut().unwrap().remove(key);
    }
    v
}

/// Stops the plan at its `at`-th optimisation step (counted over every run), as a kill would;
/// records where runs started.
struct StopAt {
    at: usize,
    steps: usize,
    started: Vec<(String, u32)>,
}

impl Progress for StopAt {
    fn event(&mut self, event: Event<'_>) -> Control {
        match event {
            Event::RunStarted { id, from_epoch, .. } => self.started.push((id.to_owned(), from_epoch)),
            Event::Step { .. } => {
                self.steps += 1;
                if self.steps == self.at {
                    return Control::Stop;
                }
            }
            _ => {}
        }
        Control::Continue
    }
}

#[test]
fn an_interrupted_plan_resumes_to_the_same_records_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = load(dir.path(), RECIPE);
    let whole = dir.path().join("whole");
    let summary = execute_into(&recipe, &whole, false, &mut Silent);
    assert_eq!((summary.finished, summary.failed.len()), (3, 0), "{summary:?}");

    // 9 steps per run: stop in the LoSA run's second epoch, then in the LoRA run's third.
    let parts = dir.path().join("parts");
    let mut first = StopAt { at: 9 + 5, steps: 0, started: vec![] };
    let summary = execute_into(&recipe, &parts, false, &mut first);
    assert!(summary.interrupted && summary.finished == 1, "{summary:?}");
    let mut second = StopAt { at: 6 + 7, steps: 0, started: vec![] };
    let summary = execute_into(&recipe, &parts, false, &mut second);
    assert!(summary.interrupted && summary.finished == 1 && summary.skipped == 1, "{summary:?}");
    let summary = execute_into(&recipe, &parts, false, &mut Silent);
    assert_eq!((summary.finished, summary.skipped), (1, 2), "{summary:?}");
    // The second process resumed LoSA after its first epoch; the third resumed LoRA after two.
    assert!(second.started[0].0.contains("-losa-") && second.started[0].1 == 1, "{:?}", second.started);

    let (a, b) = (read_records(&whole).unwrap(), read_records(&parts).unwrap());
    assert_eq!(a.len(), 3);
    for (a, b) in a.iter().zip(&b) {
        assert!(a.finished(), "{:?}", a.status);
        assert_eq!(comparable(a), comparable(b), "{}", a.run_id);
        assert_eq!(
            weights(&whole, &a.run_id),
            weights(&parts, &a.run_id),
            "{}: trained weights differ",
            a.run_id
        );
        assert!(
            !parts.join(&a.run_id).join("resume.safetensors").exists(),
            "the state is removed at the end"
        );
    }
    let log = std::fs::read_to_string(parts.join(&b[2].run_id).join("log.txt")).unwrap();
    assert!(log.contains("resuming after epoch"), "{log}");
}

/// A run's trained weights, by name, as f32 values.
fn weights(runs_dir: &Path, id: &str) -> Vec<(String, Vec<f32>)> {
    let file = runs_dir.join(id).join("adapter.safetensors");
    let mut out: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_best_validation_epoch_is_selected_and_reported_with_the_test_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = load(dir.path(), &RECIPE.replace("epochs = 3", "epochs = 5"));
    execute_into(&recipe, dir.path(), false, &mut Silent);
    for r in read_records(dir.path()).unwrap() {
        let vals: Vec<f64> = r.curves.iter().map(|c| c.val_accuracy.unwrap()).collect();
        assert_eq!(vals.len(), 5);
        let best = vals.iter().cloned().fold(f64::MIN, f64::max);
        let first_best = vals.iter().position(|v| *v == best).unwrap() as u32 + 1;
        assert_eq!(r.selection.epoch, Some(first_best), "{}: {vals:?}", r.run_id);
        let val = r.accuracy.iter().find(|a| a.split.name() == "val200").unwrap();
        assert_eq!(val.top1, best, "the selected weights are restored before the final evaluation");
        assert!(r.reported_accuracy().is_some() && !r.selection.selected_on_test);
        assert_eq!(r.labels.classes, Some(5));
        assert!(r.params.trainable_with_head > 0 && r.params.total > r.params.trainable_with_head);
    }
}

#[test]
fn cached_and_uncached_training_give_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let text = RECIPE.replace("dropout = 0.1", "dropout = 0.0");
    let cached = load(dir.path(), &text);
    let uncached = load(dir.path(), &format!("{text}\n[output]\nfeature_cache = false\n"));
    execute_into(&cached, &dir.path().join("cached"), false, &mut Silent);
    execute_into(&uncached, &dir.path().join("uncached"), false, &mut Silent);
    let (a, b) = (
        read_records(&dir.path().join("cached")).unwrap(),
        read_records(&dir.path().join("uncached")).unwrap(),
    );
    for (a, b) in a.iter().zip(&b) {
        let frozen = a.labels.adapter_kind != "lora";
        assert_eq!(a.feature_cache, frozen, "{}", a.run_id);
        assert!(!b.feature_cache);
        for (x, y) in a.curves.iter().zip(&b.curves) {
            let (x, y) = (x.train_loss.unwrap(), y.train_loss.unwrap());
            assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{}: loss {x} cached vs {y}", a.run_id);
        }
        let top1 = |r: &RunRecord| r.accuracy.iter().map(|s| s.top1).collect::<Vec<_>>();
        assert_eq!(top1(a), top1(b), "{}", a.run_id);
    }
}

#[test]
fn a_bf16_backbone_trains_every_method_from_images_and_from_cached_features() {
    // The loader's images are f32 whatever the backbone computes in (CUDA's default is bf16):
    // the backbone must take them as they come, in training and in evaluation alike.
    let dir = tempfile::tempdir().unwrap();
    let text = RECIPE.replace("dropout = 0.1", "dropout = 0.0");
    let bf16 = text.replace("random_init = 1", "random_init = 1\ndtype = \"bf16\"");
    for (name, cache) in [("cached", true), ("uncached", false)] {
        let with_cache = |t: &str| format!("{t}\n[output]\nfeature_cache = {cache}\n");
        let (f32_dir, bf16_dir) =
            (dir.path().join(format!("{name}-f32")), dir.path().join(format!("{name}-bf16")));
        execute_into(&load(dir.path(), &with_cache(&text)), &f32_dir, false, &mut Silent);
        let summary = execute_into(&load(dir.path(), &with_cache(&bf16)), &bf16_dir, false, &mut Silent);
        assert!(
            summary.failed.is_empty(),
            "{name}: {:?}",
            summary.failed.iter().map(|f| &f.reason).collect::<Vec<_>>()
        );
        let (a, b) = (read_records(&f32_dir).unwrap(), read_records(&bf16_dir).unwrap());
        assert_eq!((a.len(), b.len()), (3, 3), "{name}");
        for (a, b) in a.iter().zip(&b) {
            // The first epoch's loss, before rounding differences compound: within bf16's precision.
            let (x, y) = (a.curves[0].train_loss.unwrap(), b.curves[0].train_loss.unwrap());
            assert!((x - y).abs() < 3e-2 * x.abs(), "{name} {}: loss {x} in f32, {y} in bf16", a.run_id);
        }
    }
}

/// A method whose logits are NaN: its run diverges at the first step.
struct Poisoned(Box<dyn Adaptation>);

impl Adaptation for Poisoned {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn backbone_use(&self) -> BackboneUse {
        self.0.backbone_use()
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        self.0.trainable()
    }
    fn taps(&self) -> Vec<usize> {
        self.0.taps()
    }
    fn forward(&self, vit: &Vit, images: &Tensor, train: bool) -> CandleResult<Tensor> {
        self.0.forward(vit, images, train)? * f64::NAN
    }
    fn forward_taps(&self, vit: &Vit, taps: &Taps, train: bool) -> CandleResult<Tensor> {
        self.0.forward_taps(vit, taps, train)? * f64::NAN
    }
    fn backward(&self, loss: &Tensor) -> CandleResult<candle_core::backprop::GradStore> {
        self.0.backward(loss)
    }
}

#[test]
fn a_diverging_redo_is_recorded_beside_the_finished_record_and_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = load(dir.path(), &RECIPE.replace("epochs = 3", "epochs = 1"));
    execute_into(&recipe, dir.path(), false, &mut Silent);
    let before = read_records(dir.path()).unwrap();
    let poisoned =
        |a: &AdapterConfig, vit: &Vit, c: usize, s: u64, d: DType| -> CandleResult<Box<dyn Adaptation>> {
            Ok(Box::new(Poisoned(losa_adapters::build(a, vit, c, s, d)?)))
        };
    let runs = losa_framework::plan::plan(&recipe);
    let options = Options { runs_dir: dir.path().to_owned(), force: true, device: candle_core::Device::Cpu };
    let summary = execute::execute(&recipe, &runs, &options, &poisoned, &mut Silent);
    assert_eq!(summary.failed.len(), 3, "{summary:?}");
    assert!(
        summary.failed.iter().all(|f| f.reason.starts_with("diverged at step 1") && !f.bad_input),
        "{summary:?}"
    );
    assert_eq!(read_records(dir.path()).unwrap(), before, "finished records are kept");
    let failed =
        std::fs::read_to_string(dir.path().join(&before[0].run_id).join("record.failed.json")).unwrap();
    assert!(failed.contains("diverged at step 1"), "{failed}");
}

#[test]
fn runner_records_a_diverged_run_goes_on_with_the_others_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        RECIPE.replace("dropout = 0.1\n[[adapters]]", "dropout = 0.1\ntrain = { lr = 1e38 }\n[[adapters]]");
    let recipe = write(dir.path(), "r.toml", &text);
    let run = runner(dir.path(), &["run", recipe.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("diverged at step"), "{}", run.stderr);
    let records = read_records(&dir.path().join("runs/engine")).unwrap();
    let status: Vec<(String, bool)> =
        records.iter().map(|r| (r.labels.adapter_kind.clone(), r.finished())).collect();
    assert_eq!(status.iter().filter(|(_, f)| *f).count(), 2, "{status:?}");
    assert!(status.contains(&("losa".into(), false)), "{status:?}");
    assert!(dir.path().join("runs/engine/report/report.html").is_file(), "the report is written anyway");
}

#[test]
fn concurrent_shards_share_one_runs_folder_and_disk_cache_and_each_run_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    // No memory budget: every cached layer goes through the shared disk cache.
    let text = RECIPE.replace("name = \"engine\"", "name = \"engine\"\nseeds = [0, 1]");
    let text = format!("{text}\n[output]\ncache_memory_gib = 0.0\n");
    let recipe = write(dir.path(), "r.toml", &text);
    let recipe = recipe.to_str().unwrap();
    let spawn = |shard: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["run", recipe, "--quiet", "--shard", shard])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("0/2"));
        let b = s.spawn(|| spawn("1/2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let records = read_records(&dir.path().join("runs/engine")).unwrap();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(RunRecord::finished));
    assert!(std::fs::read_dir(dir.path().join("runs/engine/cache")).unwrap().count() > 0);
    let again = runner(dir.path(), &["run", recipe], &[]);
    assert!(again.stdout.contains("6 run(s): 0 trained, 6 finished before"), "{}", again.stdout);
}

#[test]
fn the_smoke_recipe_trains_end_to_end_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let smoke = repo().join("recipes/smoke.toml");
    let run = runner(dir.path(), &["run", smoke.to_str().unwrap(), "--out", "out"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records = read_records(&dir.path().join("out")).unwrap();
    assert_eq!(records.len(), 4);
    for r in &records {
        assert!(r.finished() && r.reported_accuracy().is_some(), "{}", r.run_id);
        assert_eq!(r.curves.len(), 2);
        assert!(r.adapter_bytes.unwrap() > 0 && r.memory.bytes > 0 && r.timing.images_per_s > 0.0);
        for file in ["run.json", "log.txt", "curves.csv", "adapter.safetensors"] {
            assert!(dir.path().join("out").join(&r.run_id).join(file).is_file(), "{} lacks {file}", r.run_id);
        }
    }
    let html = std::fs::read_to_string(dir.path().join("out/report/report.html")).unwrap();
    assert!(html.contains("losa") && html.contains("linear_probe"));

    // Another learning rate is another plan: its report leaves the earlier runs out.
    let run =
        runner(dir.path(), &["run", smoke.to_str().unwrap(), "--out", "out", "--set", "train.lr=0.02"], &[]);
    assert!(run.stdout.contains("4 run(s): 4 trained, 0 finished before"), "{}", run.stdout);
    assert_eq!(read_records(&dir.path().join("out")).unwrap().len(), 8);
    let csv = std::fs::read_to_string(dir.path().join("out/report/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
}

/// Reads each run's `running.json` at every step of its fit; stops the plan at step `stop_at`.
struct Markers {
    runs_dir: std::path::PathBuf,
    current: Option<String>,
    seen: Vec<(String, Option<Running>)>,
    steps: usize,
    stop_at: usize,
}

impl Progress for Markers {
    fn event(&mut self, event: Event<'_>) -> Control {
        match event {
            Event::RunStarted { id, .. } => self.current = Some(id.to_owned()),
            Event::Step { .. } => {
                let id = self.current.clone().unwrap();
                let marker = Running::read(&self.runs_dir.join(&id));
                self.seen.push((id, marker));
                self.steps += 1;
                if self.steps == self.stop_at {
                    return Control::Stop;
                }
            }
            _ => {}
        }
        Control::Continue
    }
}

#[test]
fn a_run_in_progress_has_a_running_marker_of_this_process_and_its_end_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = load(dir.path(), RECIPE);
    let runs_dir = dir.path().join("runs");
    let no_markers = || {
        std::fs::read_dir(&runs_dir).unwrap().all(|e| !e.unwrap().path().join(running::RUNNING_FILE).exists())
    };
    // Interrupted in the second run (9 steps per run), then to the end.
    for stop_at in [9 + 4, usize::MAX] {
        let mut markers =
            Markers { runs_dir: runs_dir.clone(), current: None, seen: vec![], steps: 0, stop_at };
        execute_into(&recipe, &runs_dir, false, &mut markers);
        assert!(!markers.seen.is_empty());
        for (id, marker) in &markers.seen {
            let marker = marker.as_ref().unwrap_or_else(|| panic!("{id}: no running.json during the run"));
            assert_eq!(marker.pid, std::process::id());
            assert_eq!(marker.alive_here(), Some(true));
            assert!(marker.started_unix_s > 0);
        }
        assert!(no_markers(), "a marker is left after the plan (stop at step {stop_at})");
    }
    assert_eq!(read_records(&runs_dir).unwrap().len(), 3);

    // A marker whose process has ended, and one from another host.
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let pid = ended.id();
    ended.wait().unwrap();
    let mut marker = Running::this_process();
    marker.pid = pid;
    assert_eq!(marker.alive_here(), Some(false));
    marker.host = Some("another-host.invalid".into());
    assert_eq!(marker.alive_here(), None);
}

#[test]
fn a_resume_state_that_does_not_fit_fails_the_run_with_a_hint_and_force_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = load(dir.path(), &RECIPE.replace("epochs = 3", "epochs = 1"));
    let id = losa_framework::plan::plan(&recipe)[0].id.clone().unwrap();
    std::fs::create_dir_all(dir.path().join(&id)).unwrap();
    std::fs::write(dir.path().join(&id).join("resume.safetensors"), b"not a state").unwrap();
    let summary = execute_into(&recipe, dir.path(), false, &mut Silent);
    assert_eq!((summary.failed.len(), summary.finished), (1, 2), "{summary:?}");
    assert!(summary.failed[0].id == id && summary.failed[0].reason.contains("--force"), "{summary:?}");
    let summary = execute_into(&recipe, dir.path(), true, &mut Silent);
    assert!(summary.failed.is_empty() && summary.finished == 3, "{summary:?}");
}
