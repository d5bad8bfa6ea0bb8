//! Parity with timm and transformers on the fixtures made by `tools/make_fixtures.py`: every
//! block's output, the normed tokens, both poolings and the logits agree within
//! 1e-4·max|reference| in f32, for every checkpoint layout and for resampled position embeddings.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::recipe::{Pool, VitShape};
use crate::vit::{NoHooks, Vit, VitConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/vit").join(name)
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu).unwrap()
}

pub(crate) fn tiny_config(image_size: usize) -> VitConfig {
    let shape = VitShape { width: 48, depth: 2, heads: 3, mlp_dim: 96, patch_size: 8 };
    VitConfig { shape, image_size, norm_eps: 1e-6, num_classes: None, pre_logits: None }
}

fn assert_close(ours: &Tensor, reference: &Tensor, what: &str) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-4 * scale, "{what}: max|Δ| = {diff:e} > 1e-4 · {scale}");
}

fn load(name: &str, image_size: usize) -> Vit {
    read(&fixture(name)).unwrap().into_vit(tiny_config(image_size), &Device::Cpu, DType::F32).unwrap()
}

/// Compares a model's outputs on `images` with the reference outputs under `tag`.
fn check(vit: &Vit, images: &str, tag: &str, logits: Option<&str>) {
    let r = reference();
    let out = vit.forward(&r[images], &NoHooks, true).unwrap();
    for (i, block) in out.blocks.iter().enumerate() {
        assert_close(block, &r[&format!("{tag}.block{i}")], &format!("{tag} block {i}"));
    }
    assert_close(&out.tokens, &r[&format!("{tag}.tokens")], &format!("{tag} tokens"));
    let token = vit.pool(&out.tokens, Pool::Token).unwrap();
    if r.contains_key(&format!("{tag}.pool_token")) {
        assert_close(&token, &r[&format!("{tag}.pool_token")], &format!("{tag} token pooling"));
        let mean = vit.pool(&out.tokens, Pool::Mean).unwrap();
        assert_close(&mean, &r[&format!("{tag}.pool_mean")], &format!("{tag} mean pooling"));
    }
    if let Some(key) = logits {
        assert_close(&vit.logits(&token).unwrap().unwrap(), &r[key], &format!("{tag} logits"));
    }
}

#[test]
fn timm_safetensors_match_timm() {
    let vit = load("vit_timm.safetensors", 32);
    assert_eq!(read(&fixture("vit_timm.safetensors")).unwrap().format, Format::Timm);
    assert_eq!(vit.config.num_classes, Some(5));
    check(&vit, "images", "timm", Some("timm.logits"));
}

#[test]
fn position_embeddings_resample_up_and_down_as_timm_does() {
    check(&load("vit_timm.safetensors", 48), "images48", "timm48", Some("timm48.logits"));
    check(&load("vit_timm.safetensors", 16), "images16", "timm16", Some("timm16.logits"));
    check(&load("vit_google.npz", 48), "images48", "npz48", None);
}

#[test]
fn every_google_npz_layout_matches_timm() {
    for name in ["vit_google.npz", "vit_google_opt.npz", "vit_bigvision.npz", "vit_bigvision_scan.npz"] {
        let ckpt = read(&fixture(name)).unwrap();
        assert_eq!(ckpt.format, Format::GoogleNpz, "{name}");
        let vit = ckpt.into_vit(tiny_config(32), &Device::Cpu, DType::F32).unwrap();
        let logits = match vit.pre_logits {
            Some(_) => "npz.pre_logits_logits",
            None => "timm.logits",
        };
        check(&vit, "images", "timm", Some(logits));
    }
    assert!(load("vit_google.npz", 32).pre_logits.is_some(), "pre_logits are loaded when present");
}

#[test]
fn hf_transformers_safetensors_match_transformers_in_both_layouts() {
    for name in ["vit_hf.safetensors", "vit_hf_legacy.safetensors"] {
        let ckpt = read(&fixture(name)).unwrap();
        assert_eq!(ckpt.format, Format::HfTransformers);
        let vit = ckpt.into_vit(tiny_config(32), &Device::Cpu, DType::F32).unwrap();
        check(&vit, "images", "hf", Some("hf.logits"));
    }
}

#[test]
fn saved_timm_safetensors_reload_to_the_same_model() {
    let vit = load("vit_google.npz", 32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.safetensors");
    save(&path, &vit.tensors()).unwrap();
    let again = read(&path).unwrap();
    assert_eq!(again.format, Format::Timm);
    let again = again.into_vit(tiny_config(32), &Device::Cpu, DType::F32).unwrap();
    let images = &reference()["images"];
    let a = vit.forward(images, &NoHooks, false).unwrap().tokens;
    let b = again.forward(images, &NoHooks, false).unwrap().tokens;
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    assert!(again.pre_logits.is_some() && again.head.is_some());
}

#[test]
fn a_checkpoint_for_another_architecture_gets_one_error_listing_every_problem() {
    let mut config = tiny_config(32);
    config.shape.depth = 3;
    config.shape.mlp_dim = 64;
    let err = read(&fixture("vit_timm.safetensors"))
        .unwrap()
        .into_vit(config, &Device::Cpu, DType::F32)
        .unwrap_err();
    let CheckpointError::Mismatch { missing, unexpected, wrong_shape, .. } = &err else { panic!("{err}") };
    assert_eq!(missing.len(), 12, "every tensor of block 2: {missing:?}");
    assert!(missing.iter().any(|m| m.starts_with("blocks.2.attn.qkv.weight [144, 48]")));
    assert!(unexpected.is_empty());
    assert_eq!(wrong_shape.len(), 2 * 3, "fc1 weight and bias, fc2 weight of both blocks: {wrong_shape:?}");
    let text = err.to_string();
    assert!(text.contains("vit_timm.safetensors does not fit a ViT of width 48, depth 3, MLP 64"), "{text}");
    assert!(text.contains("blocks.0.mlp.fc1.weight: expected [64, 48], found [96, 48]"), "{text}");
}

#[test]
fn unreadable_checkpoints_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("vit_timm.safetensors")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("model.pth");
    std::fs::write(&garbage, b"\x80\x02not a checkpoint at all").unwrap();
    let npz = std::fs::read(fixture("vit_google.npz")).unwrap();
    let broken_npz = dir.path().join("broken.npz");
    std::fs::write(&broken_npz, &npz[..npz.len() / 3]).unwrap();
    for (path, fragment) in [
        (truncated, "not a readable safetensors file"),
        (garbage, "unknown format"),
        (broken_npz, "not a readable .npz"),
        (dir.path().join("absent.npz"), "No such file"),
    ] {
        let err = read(&path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()) && text.contains(fragment), "{text}");
    }
}
