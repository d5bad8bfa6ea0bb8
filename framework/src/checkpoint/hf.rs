//! HF transformers ViT safetensors (`ViTModel`, `ViTForImageClassification`) to timm's names, in
//! both layouts in use: transformers 5 (`layers.{i}.attention.q_proj`, `mlp.fc1`) and
//! transformers 4, which the hub's checkpoints use (`encoder.layer.{i}.attention.attention.query`,
//! `intermediate.dense`). HF stores q, k and v as separate [d, d] linears; timm fuses them into one
//! [3·d, d] `qkv`. The `pooler` (dense + tanh on the class token) is Google's `pre_logits`.

use std::collections::HashMap;

use candle_core::Tensor;

type Map = HashMap<String, Tensor>;

/// Whether the tensors are in HF transformers' ViT layout.
pub fn is_hf(tensors: &Map) -> bool {
    tensors.keys().any(|k| k.starts_with("vit.embeddings.") || k.starts_with("embeddings.patch_embeddings."))
}

/// Converts HF ViT tensors to timm's.
pub fn to_timm(tensors: Map) -> Result<Map, String> {
    let mut w: Map = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("vit.").map(str::to_owned).unwrap_or(k), v))
        .collect();
    let mut out = Map::new();
    let renames = [
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        ("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
        ("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
        ("layernorm.weight", "norm.weight"),
        ("layernorm.bias", "norm.bias"),
    ];
    for (src, dst) in renames {
        out.insert(dst.into(), take(&mut w, src)?);
    }
    for (src, dst) in [("pooler.dense", "pre_logits.fc"), ("classifier", "head")] {
        if w.contains_key(&format!("{src}.weight")) {
            for p in ["weight", "bias"] {
                out.insert(format!("{dst}.{p}"), take(&mut w, &format!("{src}.{p}"))?);
            }
        }
    }
    for depth in 0.. {
        let Some(layout) = Layout::ALL.into_iter().find(|l| w.contains_key(&l.name(depth, "q", "weight")))
        else {
            break;
        };
        let t = format!("blocks.{depth}");
        for p in ["weight", "bias"] {
            let parts = ["q", "k", "v"].map(|part| take(&mut w, &layout.name(depth, part, p)));
            let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
            out.insert(format!("{t}.attn.qkv.{p}"), Tensor::cat(&parts, 0).map_err(|e| e.to_string())?);
            for (part, dst) in [
                ("o", "attn.proj"),
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("fc1", "mlp.fc1"),
                ("fc2", "mlp.fc2"),
            ] {
                out.insert(format!("{t}.{dst}.{p}"), take(&mut w, &layout.name(depth, part, p))?);
            }
        }
    }
    // Anything left over is reported as unexpected by the shape check.
    for (k, v) in w {
        out.insert(format!("(hf) {k}"), v);
    }
    Ok(out)
}

fn take(w: &mut Map, key: &str) -> Result<Tensor, String> {
    w.remove(key).ok_or_else(|| format!("missing tensor `{key}`"))
}

/// The two HF layouts of a block's tensors.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// transformers 5.
    Current,
    /// transformers 4 and the hub's checkpoints.
    Legacy,
}

impl Layout {
    const ALL: [Layout; 2] = [Layout::Current, Layout::Legacy];

    /// The key of `part` (q, k, v, o, norm1, norm2, fc1, fc2) of block `i`.
    fn name(self, i: usize, part: &str, param: &str) -> String {
        let (layer, path) = match self {
            Layout::Current => (
                "layers",
                match part {
                    "q" | "k" | "v" | "o" => format!("attention.{part}_proj"),
                    "norm1" => "layernorm_before".into(),
                    "norm2" => "layernorm_after".into(),
                    fc => format!("mlp.{fc}"),
                },
            ),
            Layout::Legacy => (
                "encoder.layer",
                match part {
                    "q" => "attention.attention.query".into(),
                    "k" => "attention.attention.key".into(),
                    "v" => "attention.attention.value".into(),
                    "o" => "attention.output.dense".into(),
                    "norm1" => "layernorm_before".into(),
                    "norm2" => "layernorm_after".into(),
                    "fc1" => "intermediate.dense".into(),
                    _ => "output.dense".into(),
                },
            ),
        };
        format!("{layer}.{i}.{path}.{param}")
    }
}
