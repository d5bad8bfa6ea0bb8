//! Google's `.npz` ViT checkpoints (vit_jax and big_vision) to timm's names and layouts.
//!
//! Keys may carry an `opt/target/` prefix (optimizer state saved with the weights) or big_vision's
//! `params/` (or `params/img/`) prefix, where the block's sub-modules are numbered differently
//! (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` instead of `_1`, `_2`, `_3`) and
//! the blocks may be stacked on a leading axis under `Transformer/encoderblock/` (scanned layers).
//! Kernels are stored [in, out] (attention: [d, heads, head_dim] and [heads, head_dim, d]) and
//! become PyTorch's [out, in]; the patch kernel goes from HWIO to OIHW.

use std::collections::HashMap;

use candle_core::Tensor;

type Map = HashMap<String, Tensor>;

/// Converts the arrays of a Google checkpoint to timm's tensors.
pub fn to_timm(mut w: Map) -> Result<Map, String> {
    let prefix = ["", "opt/target/", "params/", "params/img/"]
        .into_iter()
        .find(|p| w.contains_key(&format!("{p}embedding/kernel")))
        .ok_or("no `embedding/kernel` array (with or without an `opt/target/` or `params/` prefix): not a ViT checkpoint")?;
    let scanned = w.contains_key(&format!("{prefix}Transformer/encoderblock/LayerNorm_0/scale"));
    if scanned {
        unstack_blocks(&mut w, prefix)?;
    }
    let big_vision = prefix.starts_with("params/")
        || scanned
        || w.contains_key(&format!("{prefix}pos_embedding"))
        || w.contains_key(&format!("{prefix}Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"));
    let (mha, mlp, ln2) = if big_vision { (0, 0, 1) } else { (1, 3, 2) };
    let mut take = |key: &str| -> Result<Tensor, String> {
        w.remove(&format!("{prefix}{key}")).ok_or_else(|| format!("missing array `{prefix}{key}`"))
    };
    let err = |e: candle_core::Error| e.to_string();
    let mut out = Map::new();
    out.insert(
        "patch_embed.proj.weight".into(),
        take("embedding/kernel")?.permute((3, 2, 0, 1)).map_err(err)?,
    );
    out.insert("patch_embed.proj.bias".into(), take("embedding/bias")?);
    out.insert("cls_token".into(), take("cls")?);
    let pos = take("Transformer/posembed_input/pos_embedding").or_else(|_| take("pos_embedding"))?;
    out.insert("pos_embed".into(), pos);
    let mut depth = 0;
    while let Ok(ln) = take(&format!("Transformer/encoderblock_{depth}/LayerNorm_0/scale")) {
        let b = format!("Transformer/encoderblock_{depth}");
        let t = format!("blocks.{depth}");
        out.insert(format!("{t}.norm1.weight"), ln);
        out.insert(format!("{t}.norm1.bias"), take(&format!("{b}/LayerNorm_0/bias"))?);
        let attn = format!("{b}/MultiHeadDotProductAttention_{mha}");
        let mut qkv_w = Vec::new();
        let mut qkv_b = Vec::new();
        for part in ["query", "key", "value"] {
            let kernel = take(&format!("{attn}/{part}/kernel"))?; // [d, heads, head_dim]
            let d = kernel.dim(0).map_err(err)?;
            qkv_w.push(kernel.reshape((d, d)).and_then(|k| k.t()).map_err(err)?);
            qkv_b.push(take(&format!("{attn}/{part}/bias"))?.flatten_all().map_err(err)?);
        }
        out.insert(format!("{t}.attn.qkv.weight"), Tensor::cat(&qkv_w, 0).map_err(err)?);
        out.insert(format!("{t}.attn.qkv.bias"), Tensor::cat(&qkv_b, 0).map_err(err)?);
        let proj = take(&format!("{attn}/out/kernel"))?; // [heads, head_dim, d]
        let d = proj.dim(2).map_err(err)?;
        out.insert(format!("{t}.attn.proj.weight"), proj.reshape((d, d)).and_then(|k| k.t()).map_err(err)?);
        out.insert(format!("{t}.attn.proj.bias"), take(&format!("{attn}/out/bias"))?);
        out.insert(format!("{t}.norm2.weight"), take(&format!("{b}/LayerNorm_{ln2}/scale"))?);
        out.insert(format!("{t}.norm2.bias"), take(&format!("{b}/LayerNorm_{ln2}/bias"))?);
        for (dense, fc) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            let kernel = take(&format!("{b}/MlpBlock_{mlp}/{dense}/kernel"))?;
            out.insert(format!("{t}.mlp.{fc}.weight"), kernel.t().map_err(err)?);
            out.insert(format!("{t}.mlp.{fc}.bias"), take(&format!("{b}/MlpBlock_{mlp}/{dense}/bias"))?);
        }
        depth += 1;
    }
    out.insert("norm.weight".into(), take("Transformer/encoder_norm/scale")?);
    out.insert("norm.bias".into(), take("Transformer/encoder_norm/bias")?);
    for (src, dst) in [("pre_logits", "pre_logits.fc"), ("head", "head")] {
        if let Ok(kernel) = take(&format!("{src}/kernel")) {
            out.insert(format!("{dst}.weight"), kernel.t().map_err(err)?);
            out.insert(format!("{dst}.bias"), take(&format!("{src}/bias"))?);
        }
    }
    // Whatever is left (beyond optimizer state under other prefixes) is reported as unexpected.
    for (k, v) in w.into_iter().filter(|(k, _)| k.starts_with(prefix) && !k.starts_with("opt/state")) {
        out.insert(format!("(npz) {k}"), v);
    }
    out.iter_mut().try_for_each(|(_, v)| v.contiguous().map(|c| *v = c)).map_err(err)?;
    Ok(out)
}

/// Splits scanned blocks (`Transformer/encoderblock/...` with a leading layer axis) into
/// `Transformer/encoderblock_{i}/...` arrays.
fn unstack_blocks(w: &mut Map, prefix: &str) -> Result<(), String> {
    let stacked = format!("{prefix}Transformer/encoderblock/");
    let keys: Vec<String> = w.keys().filter(|k| k.starts_with(&stacked)).cloned().collect();
    for key in keys {
        let Some(t) = w.remove(&key) else { continue };
        let rest = &key[stacked.len()..];
        let depth = t.dim(0).map_err(|e| format!("`{key}`: {e}"))?;
        for i in 0..depth {
            let layer = t.get(i).map_err(|e| format!("`{key}`: {e}"))?;
            w.insert(format!("{prefix}Transformer/encoderblock_{i}/{rest}"), layer);
        }
    }
    Ok(())
}
