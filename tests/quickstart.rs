//! The quickstart's premise, shortened: the backbone this project pretrained
//! (`recipes/weights/vit_procedural.safetensors`, made by `recipes/pretrain_tiny.toml`) carries
//! features a random ViT of the same shape lacks, and LoSA on top of it does at least as well as a
//! linear probe.

use losa_framework::record::RunRecord;
use losa_framework::store::read_records;

use crate::support::{repo, runner, write};

fn accuracy(records: &[RunRecord], backbone: &str, adapter: &str, task: &str) -> f64 {
    let r = records
        .iter()
        .find(|r| r.labels.backbone == backbone && r.labels.adapter == adapter && r.labels.task == task)
        .unwrap_or_else(|| panic!("no run {backbone} {adapter} {task}"));
    r.reported_accuracy().unwrap_or_else(|| panic!("{} failed: {:?}", r.run_id, r.status))
}

#[test]
fn the_pretrained_backbone_beats_a_random_one_and_losa_matches_or_beats_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let weights = repo().join("recipes/weights/vit_procedural.safetensors");
    let shape = "variant = \"custom\"\nwidth = 64\ndepth = 4\nheads = 2\nmlp_dim = 256\npatch_size = 8\nimage_size = 32";
    let text = format!(
        r#"name = "premise"
[[backbones]]
label = "pretrained"
{shape}
weights = "{weights}"
[[backbones]]
label = "random"
{shape}
random_init = 0
[[adapters]]
kind = "linear_probe"
[[adapters]]
kind = "losa"
channel_rank = 8
token_rank = 4
[[datasets]]
kind = "synthetic"
tasks = ["shape", "scale", "location"]
image_size = 32
train_size = 400
val_size = 100
test_size = 500
[train]
lr = 3e-3
epochs = 8
warmup_epochs = 1
batch_size = 64
[report]
enabled = false
"#,
        weights = weights.display()
    );
    let recipe = write(dir.path(), "premise.toml", &text);
    let run = runner(dir.path(), &["run", recipe.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records = read_records(&dir.path().join("runs/premise")).unwrap();
    let mut lines = Vec::new();
    let (mut probe_sum, mut losa_sum) = (0.0, 0.0);
    for task in ["shape", "scale", "location"] {
        let pretrained = accuracy(&records, "pretrained", "linear_probe", task);
        let random = accuracy(&records, "random", "linear_probe", task);
        let losa = accuracy(&records, "pretrained", "losa", task);
        lines.push(format!("{task}: probe {pretrained:.3} (random backbone {random:.3}), losa {losa:.3}"));
        assert!(
            pretrained >= random + 0.10,
            "{task}: pretrained probe {pretrained} vs random {random}\n{lines:?}"
        );
        (probe_sum, losa_sum) = (probe_sum + pretrained, losa_sum + losa);
    }
    assert!(
        losa_sum >= probe_sum,
        "LoSA {losa_sum} vs linear probe {probe_sum} summed over tasks\n{lines:#?}"
    );
}
