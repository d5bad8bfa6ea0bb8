//! LoRA in PEFT's layout: a folder with `adapter_model.safetensors`
//! (`base_model.model.blocks.{i}.attn.qkv.lora_A.weight` [r, in], `...lora_B.weight` [out, r],
//! the head under `base_model.model.head.*` when PEFT trained it) and `adapter_config.json`
//! (`peft_type`, `r`, `lora_alpha`, `target_modules`, ...), on timm's ViT module names.
//!
//! Exports name modules by their path (`attn.proj`, not `proj`, which PEFT would also match in
//! `patch_embed.proj`). PEFT adapts whole modules, so LoRA on q, k, v slices exports as one LoRA on `qkv` whose rank is
//! the slices' ranks together: A stacks the slices' A, and B places each slice's B in its third of
//! the output — the same map exactly, with `rank_pattern`/`alpha_pattern` keeping the scale.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use losa_framework::recipe::Pool;
use losa_framework::vit::Vit;
use serde_json::{Value, json};

use crate::common::Head;
use crate::lora::{Lora, LoraPair, Target};

const PREFIX: &str = "base_model.model.";
const WEIGHTS: &str = "adapter_model.safetensors";
const CONFIG: &str = "adapter_config.json";

/// Why a PEFT adapter could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// A file cannot be read, parsed or written.
    #[error("PEFT adapter {}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The adapter uses something this LoRA cannot represent, or does not fit the backbone.
    #[error("PEFT adapter {}: {reason}", path.display())]
    Unsupported {
        /// The adapter folder.
        path: PathBuf,
        /// What it is.
        reason: String,
    },
}

fn module(target: Target) -> &'static str {
    match target {
        Target::Qkv | Target::Slice(_) => "attn.qkv",
        Target::Proj => "attn.proj",
        Target::Fc1 => "mlp.fc1",
        Target::Fc2 => "mlp.fc2",
    }
}

/// Reads a PEFT LoRA adapter made for a timm ViT of `vit`'s architecture. Without a trained head
/// in the adapter, the backbone checkpoint's own head is used.
pub fn import(dir: &Path, vit: &Vit, dtype: DType) -> Result<Lora, PeftError> {
    let unsupported = |reason: String| PeftError::Unsupported { path: dir.to_owned(), reason };
    let config_path = dir.join(CONFIG);
    let io = |path: &Path, reason: String| PeftError::Io { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e.to_string()))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| io(&config_path, e.to_string()))?;
    let field = |k: &str| config.get(k).cloned().unwrap_or(Value::Null);
    if field("peft_type") != json!("LORA") {
        return Err(unsupported(format!("peft_type is {}, expected \"LORA\"", field("peft_type"))));
    }
    for (key, fine) in [("use_dora", json!(false)), ("fan_in_fan_out", json!(false)), ("bias", json!("none"))]
    {
        if !matches!(field(key), Value::Null) && field(key) != fine {
            return Err(unsupported(format!("{key} = {} is not supported (expected {fine})", field(key))));
        }
    }
    let r = field("r").as_f64().ok_or_else(|| unsupported("`r` is missing".into()))?;
    let alpha = field("lora_alpha").as_f64().unwrap_or(8.0);
    let rslora = field("use_rslora") == json!(true);
    let scale_for = |rank: f64, alpha: f64| if rslora { alpha / rank.sqrt() } else { alpha / rank };
    let pattern = |k: &str| field(k).as_object().cloned().unwrap_or_default();
    let (ranks, alphas) = (pattern("rank_pattern"), pattern("alpha_pattern"));

    let weights_path = dir.join(WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| io(&weights_path, e.to_string()))?;
    let shape = vit.config.shape;
    let mut pairs = BTreeMap::new();
    let mut scale = None;
    for block in 0..shape.depth {
        for target in [Target::Qkv, Target::Proj, Target::Fc1, Target::Fc2] {
            let key = format!("{PREFIX}blocks.{block}.{}", module(target));
            let (Some(a), Some(b)) = (
                tensors.remove(&format!("{key}.lora_A.weight")),
                tensors.remove(&format!("{key}.lora_B.weight")),
            ) else {
                continue;
            };
            let (fan_in, out) = target.dims(shape.width, shape.mlp_dim);
            let rank = a.dim(0).map_err(|e| unsupported(e.to_string()))?;
            if a.dims() != [rank, fan_in] || b.dims() != [out, rank] {
                return Err(unsupported(format!(
                    "{key}: lora_A {:?} and lora_B {:?} do not fit a [{out}, {fan_in}] layer",
                    a.dims(),
                    b.dims()
                )));
            }
            // Patterns may name the module by its last part (`qkv`) or its path (`attn.qkv`).
            let name = module(target);
            let short = name.rsplit('.').next().unwrap_or_default();
            let pick = |p: &serde_json::Map<String, Value>| {
                p.get(name).or_else(|| p.get(short)).and_then(Value::as_f64)
            };
            let alpha = pick(&alphas).unwrap_or(alpha);
            let this = scale_for(pick(&ranks).unwrap_or(r), alpha);
            if scale.is_some_and(|s: f64| (s - this).abs() > 1e-12) {
                return Err(unsupported("modules with different scales (alpha/r) are not supported".into()));
            }
            scale = Some(this);
            let var = |t: Tensor| {
                t.to_dtype(dtype)
                    .and_then(|t| t.to_device(vit.pos_embed.device()))
                    .and_then(|t| Var::from_tensor(&t))
            };
            let pair = LoraPair {
                a: var(a).map_err(|e| unsupported(e.to_string()))?,
                b: var(b).map_err(|e| unsupported(e.to_string()))?,
            };
            pairs.insert((block, target), pair);
        }
    }
    let head = import_head(&mut tensors, vit, dtype).map_err(unsupported)?;
    let mut left: Vec<String> = tensors.into_keys().collect();
    if !left.is_empty() {
        left.sort();
        return Err(unsupported(format!("tensors this LoRA cannot represent: {}", left.join(", "))));
    }
    if pairs.is_empty() {
        return Err(unsupported("no LoRA weights on qkv, proj, fc1 or fc2 of any block".into()));
    }
    Ok(Lora::from_pairs(pairs, scale.unwrap_or(1.0), shape.width, head))
}

fn import_head(tensors: &mut HashMap<String, Tensor>, vit: &Vit, dtype: DType) -> Result<Head, String> {
    let device = vit.pos_embed.device();
    let var = |t: &Tensor| {
        t.to_dtype(dtype)
            .and_then(|t| t.to_device(device))
            .and_then(|t| Var::from_tensor(&t))
            .map_err(|e| e.to_string())
    };
    let (weight, bias) = match (
        tensors.remove(&format!("{PREFIX}head.weight")),
        tensors.remove(&format!("{PREFIX}head.bias")),
    ) {
        (Some(w), Some(b)) => (w, b),
        _ => match &vit.head {
            Some(h) if vit.pre_logits.is_none() => {
                (h.weight.clone(), h.bias.clone().ok_or("the backbone's head has no bias")?)
            }
            _ => {
                return Err(
                    "the adapter has no trained head and the backbone has no plain head to use".into()
                );
            }
        },
    };
    if weight.dims().get(1) != Some(&vit.width()) {
        return Err(format!("head weight {:?} does not fit width {}", weight.dims(), vit.width()));
    }
    Ok(Head { weight: var(&weight)?, bias: var(&bias)?, pool: Pool::Token })
}

/// Writes `lora` in PEFT's layout into `dir` (created if needed).
pub fn export(lora: &Lora, vit: &Vit, dir: &Path) -> Result<(), PeftError> {
    let io = |path: &Path, reason: String| PeftError::Io { path: path.to_owned(), reason };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let d = vit.width();
    let cpu = |v: &Var| v.as_tensor().to_device(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32));
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut modules: BTreeMap<&str, usize> = BTreeMap::new();
    let blocks: std::collections::BTreeSet<usize> = lora.pairs.keys().map(|k| k.0).collect();
    let err = |e: candle_core::Error| io(dir, e.to_string());
    for &block in &blocks {
        let mut slices: Vec<(usize, &LoraPair)> = Vec::new();
        for ((_, target), pair) in lora.pairs.range((block, Target::Qkv)..=(block, Target::Fc2)) {
            match target {
                Target::Slice(s) => slices.push((*s, pair)),
                t => {
                    let key = format!("{PREFIX}blocks.{block}.{}", module(*t));
                    out.push((format!("{key}.lora_A.weight"), cpu(&pair.a).map_err(err)?));
                    out.push((format!("{key}.lora_B.weight"), cpu(&pair.b).map_err(err)?));
                    modules.insert(module(*t), pair.a.dims()[0]);
                }
            }
        }
        if !slices.is_empty() {
            // One qkv LoRA of the slices' ranks together, equal to their sum.
            let a = Tensor::cat(
                &slices
                    .iter()
                    .map(|(_, p)| cpu(&p.a))
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(err)?,
                0,
            )
            .map_err(err)?;
            let rank = a.dim(0).map_err(err)?;
            let mut b = vec![0f32; 3 * d * rank];
            let mut col = 0;
            for (s, p) in &slices {
                let bs: Vec<Vec<f32>> = cpu(&p.b).and_then(|t| t.to_vec2()).map_err(err)?;
                for (row, values) in bs.iter().enumerate() {
                    for (j, v) in values.iter().enumerate() {
                        b[(s * d + row) * rank + col + j] = *v;
                    }
                }
                col += bs.first().map_or(0, Vec::len);
            }
            let key = format!("{PREFIX}blocks.{block}.attn.qkv");
            out.push((format!("{key}.lora_A.weight"), a));
            out.push((
                format!("{key}.lora_B.weight"),
                Tensor::from_vec(b, (3 * d, rank), &Device::Cpu).map_err(err)?,
            ));
            modules.insert("attn.qkv", rank);
        }
    }
    out.push((format!("{PREFIX}head.weight"), cpu(&lora.head.weight).map_err(err)?));
    out.push((format!("{PREFIX}head.bias"), cpu(&lora.head.bias).map_err(err)?));

    let base_rank = modules.values().copied().min().unwrap_or(1);
    let rank_pattern: serde_json::Map<String, Value> =
        modules.iter().filter(|(_, r)| **r != base_rank).map(|(m, r)| (m.to_string(), json!(r))).collect();
    let alpha_pattern: serde_json::Map<String, Value> = rank_pattern
        .iter()
        .map(|(m, r)| (m.clone(), json!(lora.scale * r.as_f64().unwrap_or(1.0))))
        .collect();
    let layers: Option<Vec<usize>> =
        (blocks.len() != vit.config.shape.depth).then(|| blocks.iter().copied().collect());
    let config = json!({
        "peft_type": "LORA",
        "r": base_rank,
        "lora_alpha": lora.scale * base_rank as f64,
        "target_modules": modules.keys().collect::<Vec<_>>(),
        "modules_to_save": ["head"],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "layers_to_transform": layers,
        "layers_pattern": layers.as_ref().map(|_| "blocks"),
        "inference_mode": true,
        "task_type": null,
        "base_model_name_or_path": null,
    });
    let config_path = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(&config).map_err(|e| io(&config_path, e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(|e| io(&config_path, e.to_string()))?;
    let weights = dir.join(WEIGHTS);
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(out, Some(metadata), &weights).map_err(|e| io(&weights, e.to_string()))
}
