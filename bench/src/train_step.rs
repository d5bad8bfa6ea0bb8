//! Train-step benchmark: per method, the median time of one optimisation step (forward, loss,
//! backward, AdamW), images/s, peak memory and the frozen forward's latency, on a random ViT.
//! `bench/torch_reference.py` measures the same with PyTorch; `bench/run_train_step.sh` runs both
//! on one machine and prints the ratios side by side. Results: bench/RESULTS.md.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use losa_framework::adaptation::compute_taps;
use losa_framework::backbone::backbone_dtype;
use losa_framework::engine::{loss::cross_entropy, memory, optim::Optimizer};
use losa_framework::recipe::{
    AdapterConfig, BackboneDtype, DeviceSpec, LoraConfig, LoraTarget, TrainConfig, VitShape, parse_variant,
};
use losa_framework::vit::{NoHooks, Vit, VitConfig, map_tensors, random_weights, seeded_normal};

/// The allocator `runner` uses (see its main.rs), so the figures are what a run sees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    shape: VitShape,
    image_size: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: DeviceSpec,
    methods: Vec<String>,
    json: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        shape: parse_variant("B/16")?,
        image_size: 224,
        batch: 64,
        steps: 10,
        warmup: 3,
        device: DeviceSpec::Auto,
        methods: ["forward", "linear_probe", "full", "lora", "vpt", "losa", "losa_cached"]
            .map(String::from)
            .to_vec(),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--variant" => args.shape = parse_variant(&value()?)?,
            "--patch-size" => args.shape.patch_size = number(value()?)?,
            "--image-size" => args.image_size = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--steps" => args.steps = number(value()?)?,
            "--warmup" => args.warmup = number(value()?)?,
            "--device" => args.device = value()?.parse()?,
            "--methods" => args.methods = value()?.split(',').map(String::from).collect(),
            "--json" => args.json = Some(value()?),
            "--help" | "-h" => {
                return Err("usage: train_step [--variant B/16] [--patch-size P] [--image-size 224] [--batch 64] \
                     [--steps 10] [--warmup 3] [--device auto|cpu|cuda:N] [--methods forward,linear_probe,full,lora,vpt,losa,losa_cached] [--json FILE]"
                    .into());
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// The methods in the configurations of REFERENCE.md §5: LoRA r = 8 on qkv, VPT-deep with 10
/// prompts, LoSA r = r_t = 8 with the default mixer.
fn adapter(name: &str) -> Option<AdapterConfig> {
    let base = name.trim_end_matches("_cached");
    Some(match base {
        "linear_probe" => AdapterConfig::LinearProbe(Default::default()),
        "full" => AdapterConfig::Full(Default::default()),
        "lora" => AdapterConfig::Lora(LoraConfig {
            rank: 8,
            alpha: 8.0,
            targets: vec![LoraTarget::Qkv],
            ..Default::default()
        }),
        "vpt" => AdapterConfig::Vpt(Default::default()),
        "losa" => AdapterConfig::Losa(Default::default()),
        "bitfit" => AdapterConfig::Bitfit(Default::default()),
        "adaptformer" => AdapterConfig::Adaptformer(Default::default()),
        _ => return None,
    })
}

fn sync(device: &Device) -> candle_core::Result<()> {
    device.synchronize()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median seconds of `f` over `steps` runs after `warmup` runs, and the median seconds until `f`
/// returned (its work queued on the device, not yet done): when the two are close, the host's
/// launching is what the step waits for, not the device.
fn time(
    device: &Device,
    warmup: usize,
    steps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<(f64, f64)> {
    let ([t], host) = phase_times(device, warmup, steps, |_| f())?;
    Ok((t, host))
}

/// Medians of a step's phases, after `warmup` steps: `f(mark)` runs one step and calls `mark`
/// at the end of each phase but the last, where the device is synchronised and the clock read.
/// The phases add up to more than the step, whose host and device work overlap across them: this
/// says where the time goes, the step's time says how long it takes. Also the median time until
/// `f` returned, before the last synchronisation.
fn phase_times<const N: usize>(
    device: &Device,
    warmup: usize,
    steps: usize,
    mut f: impl FnMut(&mut dyn FnMut() -> candle_core::Result<()>) -> candle_core::Result<()>,
) -> candle_core::Result<([f64; N], f64)> {
    let mut times: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    let mut queued = Vec::new();
    for i in 0..warmup + steps {
        sync(device)?;
        let mut ends = Vec::with_capacity(N + 1);
        ends.push(Instant::now());
        f(&mut || {
            sync(device)?;
            ends.push(Instant::now());
            Ok(())
        })?;
        let returned = Instant::now();
        sync(device)?;
        ends.push(Instant::now());
        if ends.len() != N + 1 {
            candle_core::bail!("a step of {} phases marked {}", N, ends.len() - 2);
        }
        if i >= warmup {
            queued.push((returned - ends[0]).as_secs_f64());
            for (k, t) in times.iter_mut().enumerate() {
                t.push((ends[k + 1] - ends[k]).as_secs_f64());
            }
        }
    }
    Ok((times.map(median), median(queued)))
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let device = args.device.open().map_err(|e| e.to_string())?;
    // The device memory in use before the model is loaded: each method's peak is taken above it,
    // so that it counts weights, inputs, activations, gradients and optimiser state, as PyTorch's
    // peak reserved memory does.
    let startup = memory::Meter::start(&device);
    let dtype = backbone_dtype(BackboneDtype::Auto, &device);
    let config = VitConfig {
        shape: args.shape,
        image_size: args.image_size,
        norm_eps: 1e-6,
        num_classes: None,
        pre_logits: None,
    };
    config.check()?;
    let e = |e: candle_core::Error| e.to_string();
    let weights =
        map_tensors(random_weights(&config, 0, &device).map_err(e)?, |t| t.to_dtype(dtype)).map_err(e)?;
    let vit = Vit::new(config, &weights).map_err(e)?;
    let (b, s, classes) = (args.batch, args.image_size, 100);
    let images = seeded_normal((b, 3, s, s), 1.0, 1, &device).map_err(e)?.to_dtype(dtype).map_err(e)?;
    let labels = Tensor::from_vec((0..b as u32).map(|i| i % classes as u32).collect::<Vec<_>>(), b, &device)
        .map_err(e)?;
    let train = TrainConfig::default();
    println!(
        "# losa train step: ViT width {} depth {} patch {} at {} px, batch {}, {} on {:?}, median of {} steps",
        args.shape.width,
        args.shape.depth,
        args.shape.patch_size,
        s,
        b,
        format!("{dtype:?}").to_lowercase(),
        device,
        args.steps
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>12} {:>14} {:>10}",
        "method", "step ms", "queued ms", "images/s", "peak MiB", "trainable", "infer ms"
    );
    let mut rows = Vec::new();
    let setup =
        Setup { device: &device, vit: &vit, images: &images, labels: &labels, train: &train, classes };
    for name in &args.methods {
        memory::reset_peak();
        let base = memory::current_rss().unwrap_or(0);
        // On CUDA: device memory in use (total − free, so the allocator's pool counts, as PyTorch's
        // max_memory_reserved does) sampled after the forward, the backward and the update.
        let meter = memory::Meter::start_from(&device, &startup);
        match measure(&setup, name, &args, &meter) {
            Ok(m) => {
                // On the CPU: the process's peak resident set during this method above the resident
                // set before it (weights, images and earlier results included in the base).
                let peak = if device.is_cuda() {
                    meter.peak().bytes
                } else {
                    memory::peak_rss().map(|p| p.saturating_sub(base)).unwrap_or(0)
                };
                println!(
                    "{:<14} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>14} {:>10.1}",
                    name,
                    m.step_s * 1e3,
                    m.queued_s * 1e3,
                    b as f64 / m.step_s,
                    peak as f64 / (1u64 << 20) as f64,
                    m.trainable,
                    m.infer_s * 1e3
                );
                let phases_ms = m.phases_s.map(|p| p.map(|t| t * 1e3));
                rows.push(serde_json::json!({"method": name, "step_ms": m.step_s * 1e3, "queued_ms": m.queued_s * 1e3, "images_per_s": b as f64 / m.step_s,
                    "peak_bytes": peak, "trainable": m.trainable, "infer_ms": m.infer_s * 1e3,
                    "forward_backward_update_ms": phases_ms}));
            }
            // A method that does not fit (or fails otherwise) is recorded as such; the others go on.
            Err(err) => {
                let oom = is_out_of_memory(&err);
                println!("{name:<14} {}", if oom { "out of memory" } else { "error" });
                eprintln!("{name}: {err}");
                rows.push(serde_json::json!({"method": name, "error": if oom { "out of memory".to_owned() } else { err }}));
            }
        }
    }
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "tool": "losa", "device": format!("{device:?}"), "dtype": format!("{dtype:?}"),
            "width": args.shape.width, "depth": args.shape.depth, "patch": args.shape.patch_size,
            "image_size": s, "batch": b, "steps": args.steps, "rows": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// What every method's measurement shares.
struct Setup<'a> {
    device: &'a Device,
    vit: &'a Vit,
    images: &'a Tensor,
    labels: &'a Tensor,
    train: &'a TrainConfig,
    classes: usize,
}

/// One method's figures.
struct Measured {
    /// Median seconds of a train step (of the forward alone for `forward`).
    step_s: f64,
    /// Median seconds until a step's work was all queued (see [`time`]).
    queued_s: f64,
    /// Median seconds of an inference forward (train = false) of the adapted model.
    infer_s: f64,
    trainable: usize,
    /// Median seconds of the forward with the loss, the backward and the optimiser step, each
    /// ended by a synchronisation (not for `forward`).
    phases_s: Option<[f64; 3]>,
}

fn measure(s: &Setup<'_>, name: &str, args: &Args, meter: &memory::Meter) -> Result<Measured, String> {
    let e = |e: candle_core::Error| e.to_string();
    let (device, vit, images, labels) = (s.device, s.vit, s.images, s.labels);
    if name == "forward" {
        let (t, queued_s) = time(device, args.warmup, args.steps, || {
            let out = vit.forward(images, &NoHooks, false);
            meter.sample();
            out.map(|_| ())
        })
        .map_err(e)?;
        return Ok(Measured { step_s: t, queued_s, infer_s: t, trainable: 0, phases_s: None });
    }
    let config = adapter(name).ok_or(format!("unknown method {name}"))?;
    let method = losa_adapters::build(&config, vit, s.classes, 0, DType::F32).map_err(e)?;
    let vars = method.trainable();
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = Optimizer::new(s.train, vars);
    let taps = match name.ends_with("_cached") {
        true => Some(compute_taps(vit, images, &method.taps()).map_err(e)?),
        false => None,
    };
    let mut step = |mark: &mut dyn FnMut() -> candle_core::Result<()>| {
        let logits = match &taps {
            Some(taps) => method.forward_taps(vit, taps, true)?,
            None => method.forward(vit, images, true)?,
        };
        meter.sample();
        mark()?;
        let grads = method.backward(&cross_entropy(&logits, labels, 0.0)?)?;
        meter.sample();
        mark()?;
        opt.step(&grads, 1e-4)?;
        meter.sample();
        Ok(())
    };
    let (step_s, queued_s) = time(device, args.warmup, args.steps, || step(&mut || Ok(()))).map_err(e)?;
    let (phases_s, _) = phase_times(device, args.warmup, args.steps, &mut step).map_err(e)?;
    // Inference runs the backbone as deployed: from images, also for a method trained from cache.
    let (infer_s, _) = time(device, args.warmup, args.steps, || {
        let out = method.forward(vit, images, false);
        meter.sample();
        out.map(|_| ())
    })
    .map_err(e)?;
    Ok(Measured { step_s, queued_s, infer_s, trainable, phases_s: Some(phases_s) })
}

/// Whether an error says the device ran out of memory (cudarc: CUDA_ERROR_OUT_OF_MEMORY).
fn is_out_of_memory(err: &str) -> bool {
    let e = err.to_ascii_lowercase();
    e.contains("out_of_memory") || e.contains("out of memory")
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
