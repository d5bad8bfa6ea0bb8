//! Feature-cache benchmark: the epoch time of frozen-backbone methods trained from cached
//! backbone features against running the backbone every epoch, through the real engine (the
//! same `execute` as `runner`), on a random ViT and the procedural dataset. Results:
//! bench/RESULTS.md.
//!
//! Each configuration trains in its own runs folder and reads its run record: the epoch time is
//! (training time − caching time) / epochs; caching time is what the first run of a task pays
//! once; a second seed shows what every later method and seed pays (nothing).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

use losa_framework::engine::execute::{Options, execute};
use losa_framework::engine::progress::Silent;
use losa_framework::recipe::{DeviceSpec, LoadOptions};
use losa_framework::store::read_records;

/// The allocator `runner` uses (see its main.rs), so the figures are what a run sees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    variant: String,
    image_size: usize,
    images: usize,
    batch: usize,
    epochs: usize,
    device: DeviceSpec,
    methods: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        variant: "Ti/16".into(),
        image_size: 224,
        images: 256,
        batch: 64,
        epochs: 3,
        device: DeviceSpec::Auto,
        methods: vec!["linear_probe".into(), "losa".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--variant" => args.variant = value()?,
            "--image-size" => args.image_size = number(value()?)?,
            "--images" => args.images = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--epochs" => args.epochs = number(value()?)?,
            "--device" => args.device = value()?.parse()?,
            "--methods" => args.methods = value()?.split(',').map(String::from).collect(),
            "--help" | "-h" => {
                return Err(
                    "usage: cache_epoch [--variant Ti/16] [--image-size 224] [--images 256] [--batch 64] \
                            [--epochs 3] [--device auto|cpu|cuda:N] [--methods linear_probe,losa]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    Ok(args)
}

/// The recipe of one configuration: one method, one synthetic task, two seeds.
fn recipe_text(args: &Args, method: &str, cache: bool) -> String {
    format!(
        r#"name = "cache-bench"
seeds = [0, 1]
device = "{device}"
[[backbones]]
variant = "{variant}"
image_size = {size}
random_init = 0
[[adapters]]
kind = "{method}"
[[datasets]]
kind = "synthetic"
tasks = ["shape"]
image_size = {size}
train_size = {images}
val_size = 16
test_size = 16
[train]
epochs = {epochs}
warmup_epochs = 1
batch_size = {batch}
[eval]
train_split = "train800"
every_epochs = 0
[output]
feature_cache = {cache}
cache_memory_gib = 16.0
[report]
enabled = false
"#,
        device = args.device,
        variant = args.variant,
        size = args.image_size,
        images = args.images,
        epochs = args.epochs,
        batch = args.batch,
    )
}

/// Trains one configuration; per seed: (train s, cache s, epoch s, peak bytes).
fn measure(dir: &Path, text: &str, epochs: usize) -> Result<Vec<(f64, f64, f64, u64)>, String> {
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let recipe = losa_framework::recipe::load(&path, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let device = recipe.device.open().map_err(|e| e.to_string())?;
    let runs = losa_framework::plan::plan(&recipe);
    let options = Options { runs_dir: dir.join("runs"), force: false, device };
    let summary = execute(&recipe, &runs, &options, &losa_adapters::build, &mut Silent);
    if let Some(f) = summary.failed.first() {
        return Err(format!("{}: {}", f.id, f.reason));
    }
    let mut records = read_records(&dir.join("runs")).map_err(|e| e.to_string())?;
    records.sort_by_key(|r| r.labels.seed);
    Ok(records
        .iter()
        .map(|r| {
            let cache = r.timing.cache_s.unwrap_or(0.0);
            (r.timing.train_s, cache, (r.timing.train_s - cache) / epochs as f64, r.memory.bytes)
        })
        .collect())
}

fn run() -> Result<(), String> {
    let args = parse()?;
    println!(
        "# cache_epoch: {} at {} px, {} training images, batch {}, {} epochs, device {}",
        args.variant, args.image_size, args.images, args.batch, args.epochs, args.device
    );
    println!("| method | features | seed | epoch s | caching s | train s | img/s per epoch | peak RSS MiB |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for method in &args.methods {
        let mut epoch = [0.0; 2];
        for (i, cache) in [false, true].into_iter().enumerate() {
            let dir = std::env::temp_dir()
                .join(format!("losa-cache-bench-{}-{method}-{cache}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let results = measure(&dir, &recipe_text(&args, method, cache), args.epochs);
            let _ = std::fs::remove_dir_all(&dir);
            for (seed, (train, caching, per_epoch, peak)) in results?.into_iter().enumerate() {
                let what = if cache { "cached" } else { "backbone every epoch" };
                println!(
                    "| {method} | {what} | {seed} | {per_epoch:.3} | {caching:.2} | {train:.2} | {:.0} | {} |",
                    args.images as f64 / per_epoch,
                    peak >> 20
                );
                if seed == 0 {
                    epoch[i] = per_epoch;
                }
            }
        }
        let cache_total = epoch[1];
        println!(
            "\n{method}: an epoch from cached features takes {:.1}× less time\n",
            epoch[0] / cache_total
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
