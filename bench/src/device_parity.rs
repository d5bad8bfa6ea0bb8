//! Device parity: every method on a small random ViT, on the CPU in f32 (the reference) and on a
//! second device (CUDA) with the frozen backbone in f32 and in bf16 (trainable weights and
//! optimiser state stay f32). Compared per method: the logits before training, the gradient of
//! every trainable tensor at the first step, and the losses of three AdamW steps, each as a
//! relative error ‖x − ref‖ / ‖ref‖ against a tolerance for its dtype. Prints one table; exits 1
//! when a comparison fails, 2 when it cannot run (e.g. CUDA not compiled in or not present).
//!
//! `device_parity --device cuda` on the GPU machine (bench/run_gpu.sh runs it first);
//! `device_parity --device cpu` compares the CPU with itself (a check of this program).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use candle_core::{DType, Device, Tensor, Var};
use losa_framework::adaptation::{Adaptation, compute_taps};
use losa_framework::engine::{loss::cross_entropy, optim::Optimizer};
use losa_framework::recipe::{
    AdapterConfig, DeviceSpec, LoraConfig, LoraTarget, TrainConfig, VitShape, parse_variant,
};
use losa_framework::vit::{Vit, VitConfig, map_tensors, random_weights, seeded_normal};

/// Kinds compared; `losa_cached` trains LoSA from block outputs computed once.
const METHODS: [&str; 8] =
    ["linear_probe", "full", "lora", "vpt", "bitfit", "adaptformer", "losa", "losa_cached"];

/// Optimisation steps compared.
const STEPS: usize = 3;

/// Relative-error tolerances: (logits, gradients, losses). f32 differs only in the order of
/// floating-point sums (cuBLAS against gemm); bf16 keeps 8 bits of mantissa in the frozen
/// backbone's activations (a relative rounding of 2⁻⁹ per operation, compounding over blocks).
fn tolerance(dtype: DType) -> (f64, f64, f64) {
    match dtype {
        DType::BF16 | DType::F16 => (3e-2, 1e-1, 2e-2),
        _ => (1e-4, 1e-3, 1e-4),
    }
}

/// What one method produced on one device and dtype, on the CPU in f64.
struct Outcome {
    logits: Tensor,
    grads: Vec<(String, Tensor)>,
    losses: Vec<f64>,
}

fn adapter(name: &str) -> Option<AdapterConfig> {
    Some(match name.trim_end_matches("_cached") {
        "linear_probe" => AdapterConfig::LinearProbe(Default::default()),
        "full" => AdapterConfig::Full(Default::default()),
        "lora" => AdapterConfig::Lora(LoraConfig {
            rank: 4,
            alpha: 4.0,
            targets: vec![LoraTarget::Qkv],
            dropout: 0.0,
            ..Default::default()
        }),
        "vpt" => AdapterConfig::Vpt(Default::default()),
        "bitfit" => AdapterConfig::Bitfit(Default::default()),
        "adaptformer" => AdapterConfig::Adaptformer(Default::default()),
        "losa" => AdapterConfig::Losa(Default::default()),
        _ => return None,
    })
}

/// The small model: width 64, depth 3, 4 heads, 8 px patches at 32 px (17 tokens).
fn shape() -> Result<VitShape, String> {
    let mut s = parse_variant("Ti/16")?;
    (s.width, s.depth, s.heads, s.mlp_dim, s.patch_size) = (64, 3, 4, 256, 8);
    Ok(s)
}

fn run_method(
    name: &str,
    config: &VitConfig,
    device: &Device,
    dtype: DType,
    images: &Tensor,
    labels: &Tensor,
) -> candle_core::Result<Outcome> {
    let weights =
        map_tensors(random_weights(config, 0, &Device::Cpu)?, |t| t.to_dtype(dtype)?.to_device(device))?;
    let vit = Vit::new(*config, &weights)?;
    let images = images.to_dtype(dtype)?.to_device(device)?;
    let labels = labels.to_device(device)?;
    let spec = adapter(name).ok_or_else(|| candle_core::Error::Msg(format!("unknown method {name}")))?;
    let method = losa_adapters::build(&spec, &vit, 10, 0, DType::F32)?;
    let vars = method.trainable();
    let taps = match name.ends_with("_cached") {
        true => Some(compute_taps(&vit, &images, &method.taps())?),
        false => None,
    };
    let forward = |m: &dyn Adaptation, train: bool| match &taps {
        Some(t) => m.forward_taps(&vit, t, train),
        None => m.forward(&vit, &images, train),
    };
    let logits = to_f64(&forward(method.as_ref(), false)?)?;
    let train = TrainConfig::default();
    let mut opt = Optimizer::new(&train, vars.clone());
    let (mut grads, mut losses) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let loss = cross_entropy(&forward(method.as_ref(), true)?, &labels, 0.0)?;
        losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        let g = method.backward(&loss)?;
        if step == 0 {
            grads = first_grads(&vars, &g)?;
        }
        opt.step(&g, 1e-3)?;
    }
    Ok(Outcome { logits, grads, losses })
}

fn first_grads(
    vars: &[(String, Var)],
    g: &candle_core::backprop::GradStore,
) -> candle_core::Result<Vec<(String, Tensor)>> {
    vars.iter()
        .filter_map(|(n, v)| g.get(v.as_tensor()).map(|t| (n, t)))
        .map(|(n, t)| Ok((n.clone(), to_f64(t)?)))
        .collect()
}

fn to_f64(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)
}

/// ‖a − b‖ / ‖b‖ (‖a‖ when b is zero).
fn rel(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let norm = |t: &Tensor| -> candle_core::Result<f64> { t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>() };
    let diff = norm(&(a - b)?)?;
    let base = norm(b)?;
    Ok(if base > 0.0 { diff / base } else { diff })
}

/// The worst relative error over the gradients, with the tensor it is in.
fn worst_grad(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> candle_core::Result<(f64, String)> {
    let mut worst = (0.0, String::new());
    if a.len() != b.len() {
        return Ok((f64::INFINITY, format!("{} gradients against {}", a.len(), b.len())));
    }
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let r = rel(x, y)?;
        if r > worst.0 || r.is_nan() {
            worst = (r, name.clone());
        }
    }
    Ok(worst)
}

fn run() -> Result<bool, String> {
    let mut spec = DeviceSpec::Auto;
    let mut methods: Vec<String> = METHODS.map(String::from).to_vec();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => spec = value()?.parse()?,
            "--methods" => methods = value()?.split(',').map(String::from).collect(),
            _ => return Err("usage: device_parity [--device cuda|cuda:N|cpu] [--methods a,b,...]".into()),
        }
    }
    let device = spec.open().map_err(|e| e.to_string())?;
    let config =
        VitConfig { shape: shape()?, image_size: 32, norm_eps: 1e-6, num_classes: None, pre_logits: None };
    config.check()?;
    let e = |e: candle_core::Error| e.to_string();
    let images =
        seeded_normal((8, 3, 32, 32), 1.0, 1, &Device::Cpu).map_err(e)?.to_dtype(DType::F32).map_err(e)?;
    let labels =
        Tensor::from_vec((0..8u32).map(|i| i % 10).collect::<Vec<_>>(), 8, &Device::Cpu).map_err(e)?;
    println!("# device parity: ViT width 64 depth 3 at 32 px, batch 8; {device:?} against the CPU in f32");
    println!(
        "{:<13} {:<5} {:>11} {:>11} {:>11}  {:<6} worst gradient",
        "method", "dtype", "logits", "grads", "losses", "result"
    );
    let mut ok = true;
    for name in &methods {
        let reference = run_method(name, &config, &Device::Cpu, DType::F32, &images, &labels).map_err(e)?;
        for dtype in [DType::F32, DType::BF16] {
            let (tl, tg, tloss) = tolerance(dtype);
            let line = match run_method(name, &config, &device, dtype, &images, &labels) {
                Ok(out) => {
                    let logits = rel(&out.logits, &reference.logits).map_err(e)?;
                    let (grads, worst) = worst_grad(&out.grads, &reference.grads).map_err(e)?;
                    let losses = out
                        .losses
                        .iter()
                        .zip(&reference.losses)
                        .map(|(a, b)| ((a - b) / b).abs())
                        .fold(0.0, f64::max);
                    let pass = logits <= tl && grads <= tg && losses <= tloss;
                    ok &= pass;
                    format!(
                        "{logits:>11.2e} {grads:>11.2e} {losses:>11.2e}  {:<6} {worst}",
                        if pass { "pass" } else { "FAIL" }
                    )
                }
                Err(err) => {
                    ok = false;
                    format!("{:>11} {:>11} {:>11}  {:<6} {err}", "-", "-", "-", "ERROR")
                }
            };
            println!("{name:<13} {:<5} {line}", format!("{dtype:?}").to_lowercase());
        }
    }
    println!("# tolerances (relative): f32 logits 1e-4, grads 1e-3, losses 1e-4; bf16 3e-2, 1e-1, 2e-2");
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
