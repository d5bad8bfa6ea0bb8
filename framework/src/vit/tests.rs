//! The ViT's parameter counts, random start, hooks and gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::recipe::{Pool, VitShape, parse_variant};

fn config(shape: VitShape, image_size: usize) -> VitConfig {
    VitConfig { shape, image_size, norm_eps: 1e-6, num_classes: None, pre_logits: None }
}

fn tiny() -> VitConfig {
    config(VitShape { width: 12, depth: 2, heads: 3, mlp_dim: 20, patch_size: 4 }, 8)
}

#[test]
fn parameter_counts_follow_the_closed_form_and_match_vit_b16() {
    // REFERENCE.md §4: ViT-B/16 has 85,798,656 backbone parameters.
    let b16 = config(parse_variant("B/16").unwrap(), 224);
    assert_eq!(b16.num_params(), 85_798_656);
    for shape in [parse_variant("Ti/16").unwrap(), parse_variant("L/14").unwrap(), tiny().shape] {
        let c = config(shape, shape.patch_size * 4);
        let VitShape { width: d, depth: l, mlp_dim: m, patch_size: p, .. } = shape;
        let per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (m * d + m) + (d * m + d);
        let expected = d + c.num_tokens() * d + (3 * p * p * d + d) + l * per_block + 2 * d;
        assert_eq!(c.num_params(), expected, "{shape:?}");
    }
}

#[test]
fn the_random_start_is_deterministic_in_the_seed_and_shaped_like_the_config() {
    let c = tiny();
    let a = random_weights(&c, 7, &Device::Cpu).unwrap();
    let b = random_weights(&c, 7, &Device::Cpu).unwrap();
    let other = random_weights(&c, 8, &Device::Cpu).unwrap();
    let values = |w: &HashMap<String, Tensor>, k: &str| w[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, shape) in c.tensor_shapes() {
        assert_eq!(a[&name].dims(), shape.as_slice(), "{name}");
        assert_eq!(values(&a, &name), values(&b, &name), "{name}");
    }
    assert_ne!(values(&a, "blocks.0.attn.qkv.weight"), values(&other, "blocks.0.attn.qkv.weight"));
    let qkv = values(&a, "blocks.1.attn.qkv.weight");
    let std = (qkv.iter().map(|v| v * v).sum::<f32>() / qkv.len() as f32).sqrt();
    assert!((0.012..0.022).contains(&std), "truncated normal with std 0.02, found {std}");
    assert!(qkv.iter().all(|v| v.abs() <= 0.04));
    assert!(values(&a, "norm.weight").iter().all(|v| *v == 1.0));
    assert!(values(&a, "blocks.0.mlp.fc1.bias").iter().all(|v| *v == 0.0));
}

/// Every tensor of a random tiny model as an f64 `Var`, with every value random (no zero biases or
/// unit scales that could hide a missing gradient).
fn var_model(seed: u64) -> (Vit, HashMap<String, Var>) {
    let c = tiny();
    let mut vars = HashMap::new();
    for (i, (name, shape)) in c.tensor_shapes().into_iter().enumerate() {
        let t = seeded_normal(shape, 0.3, 100 * seed + i as u64, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let t = (t + if name.contains("norm") && name.ends_with("weight") { 1.0 } else { 0.0 }).unwrap();
        let t = (t + (seed as f64 + i as f64) * 1e-3).unwrap().to_dtype(DType::F64).unwrap();
        vars.insert(name, Var::from_tensor(&t).unwrap());
    }
    let tensors: HashMap<String, Tensor> =
        vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    (Vit::new(c, &tensors).unwrap(), vars)
}

fn loss(vit: &Vit, images: &Tensor, probe: &Tensor, hooks: &dyn Hooks) -> Tensor {
    let out = vit.forward(images, hooks, false).unwrap();
    let pooled = vit.pool(&out.tokens, Pool::Mean).unwrap();
    let token = vit.pool(&out.tokens, Pool::Token).unwrap();
    ((pooled + token).unwrap() * probe).unwrap().sum_all().unwrap()
}

#[test]
fn gradients_through_the_backbone_match_finite_differences() {
    let (vit, vars) = var_model(1);
    let images = seeded_normal((2, 3, 8, 8), 1.0, 2, &Device::Cpu).unwrap();
    let probe = seeded_normal((2, 12), 1.0, 3, &Device::Cpu).unwrap();
    let grads = loss(&vit, &images, &probe, &NoHooks).backward().unwrap();
    // Parameters whose gradient passes through attention's softmax and the norms.
    for name in [
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.1.mlp.fc2.weight",
        "norm.weight",
    ] {
        let var = &vars[name];
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(grad.iter().any(|g| g.abs() > 1e-8), "{name}: zero gradient");
        for idx in [0, base.len() / 2, base.len() - 1] {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss(&vit, &images, &probe, &NoHooks).to_scalar::<f64>().unwrap()
            };
            let eps = 1e-6;
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            eval(0.0);
            let tol = 1e-6 + 1e-5 * numeric.abs().max(grad[idx].abs());
            assert!(
                (numeric - grad[idx]).abs() <= tol,
                "{name}[{idx}]: analytic {} vs numeric {numeric}",
                grad[idx]
            );
        }
    }
}

/// Prepends one learned token to block 0's input and removes it after the last block; adds a
/// learned bias to the qkv output of block 1.
struct TestHooks {
    prompt: Var,
    qkv_shift: Var,
}

impl Hooks for TestHooks {
    fn before_block(&self, block: usize, tokens: Tensor) -> candle_core::Result<Tensor> {
        if block != 0 {
            return Ok(tokens);
        }
        let b = tokens.dim(0)?;
        let prompt = self.prompt.as_tensor().broadcast_as((b, 1, 12))?;
        Tensor::cat(&[&tokens.narrow(1, 0, 1)?, &prompt, &tokens.narrow(1, 1, tokens.dim(1)? - 1)?], 1)
    }

    fn after_block(&self, block: usize, tokens: Tensor) -> candle_core::Result<Tensor> {
        if block != 1 {
            return Ok(tokens);
        }
        let n = tokens.dim(1)?;
        Tensor::cat(&[&tokens.narrow(1, 0, 1)?, &tokens.narrow(1, 2, n - 2)?], 1)
    }

    fn linear_delta(
        &self,
        block: usize,
        site: LinearSite,
        input: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if block != 1 || site != LinearSite::Qkv {
            return Ok(None);
        }
        let (b, n, _) = input.dims3()?;
        Ok(Some(self.qkv_shift.as_tensor().broadcast_as((b, n, 36))?))
    }
}

#[test]
fn hooks_change_the_forward_pass_and_receive_gradients() {
    let (vit, _) = var_model(2);
    let images = seeded_normal((2, 3, 8, 8), 1.0, 4, &Device::Cpu).unwrap();
    let probe = seeded_normal((2, 12), 1.0, 5, &Device::Cpu).unwrap();
    let hooks = TestHooks {
        prompt: Var::from_tensor(&seeded_normal((1, 1, 12), 1.0, 6, &Device::Cpu).unwrap()).unwrap(),
        qkv_shift: Var::from_tensor(&seeded_normal(36, 1.0, 7, &Device::Cpu).unwrap()).unwrap(),
    };
    let blocks = vit.forward_features(&images, &hooks).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].dims(), &[2, 6, 12], "the prompt travels through block 0");
    assert_eq!(blocks[1].dims(), &[2, 5, 12], "and is dropped after block 1");
    let plain = vit.forward(&images, &NoHooks, false).unwrap().tokens;
    let hooked = vit.forward(&images, &hooks, false).unwrap().tokens;
    assert!((plain - hooked).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() > 1e-3);
    let grads = loss(&vit, &images, &probe, &hooks).backward().unwrap();
    for var in [&hooks.prompt, &hooks.qkv_shift] {
        let g = grads.get(var.as_tensor()).expect("a hook's parameter gets a gradient");
        assert!(g.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() > 1e-8);
    }
}

#[test]
fn images_of_the_wrong_size_are_refused() {
    let vit = Vit::new(tiny(), &random_weights(&tiny(), 0, &Device::Cpu).unwrap()).unwrap();
    let wrong = Tensor::zeros((1, 3, 12, 12), DType::F32, &Device::Cpu).unwrap();
    let err = vit.embed(&wrong).unwrap_err().to_string();
    assert!(err.contains("expected images of shape [batch, 3, 8, 8], found [1, 3, 12, 12]"), "{err}");
}
