//! Every method: gradients against finite differences, exactly the expected variables, parameter
//! counts in closed form, save/load, and LoSA's promise that no gradient reaches the backbone.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use losa_framework::adaptation::{Adaptation, ParamCount, Taps, compute_taps, load_adapter, save_adapter};
use losa_framework::recipe::*;
use losa_framework::vit::{Vit, VitConfig, random_weights, seeded_normal};

use crate::{build, params};

pub(crate) fn tiny_config() -> VitConfig {
    let shape = VitShape { width: 12, depth: 2, heads: 3, mlp_dim: 20, patch_size: 4 };
    VitConfig { shape, image_size: 8, norm_eps: 1e-6, num_classes: None, pre_logits: None }
}

/// A tiny backbone in `dtype` with every value random (no zero biases or unit scales).
fn backbone(dtype: DType) -> Vit {
    let c = tiny_config();
    // Sorted, so that each tensor gets the same noise in every run.
    let weights: std::collections::BTreeMap<String, Tensor> =
        random_weights(&c, 5, &Device::Cpu).unwrap().into_iter().collect();
    let tensors: HashMap<String, Tensor> = weights
        .into_iter()
        .enumerate()
        .map(|(i, (k, t))| {
            let noise =
                seeded_normal(t.shape(), 0.3, i as u64, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            (k, (t + noise).unwrap().to_dtype(dtype).unwrap())
        })
        .collect();
    Vit::new(c, &tensors).unwrap()
}

fn methods() -> Vec<AdapterConfig> {
    let lora = |targets: Vec<LoraTarget>, blocks: Blocks| {
        AdapterConfig::Lora(LoraConfig { rank: 2, alpha: 3.0, targets, blocks, ..Default::default() })
    };
    vec![
        AdapterConfig::LinearProbe(Default::default()),
        AdapterConfig::Full(Default::default()),
        AdapterConfig::Bitfit(Default::default()),
        lora(vec![LoraTarget::Q, LoraTarget::V], Blocks::default()),
        lora(
            vec![LoraTarget::Qkv, LoraTarget::Proj, LoraTarget::Fc1, LoraTarget::Fc2],
            Blocks::List(vec![1]),
        ),
        lora(vec![LoraTarget::K], Blocks::List(vec![0])),
        AdapterConfig::Vpt(VptConfig { prompts: 3, ..Default::default() }),
        AdapterConfig::Vpt(VptConfig {
            prompts: 2,
            mode: VptMode::Shallow,
            init: PromptInit::Normal,
            ..Default::default()
        }),
        AdapterConfig::Losa(LosaConfig { channel_rank: 4, token_rank: 3, ..Default::default() }),
        AdapterConfig::Losa(LosaConfig {
            channel_rank: 2,
            token_rank: 2,
            mixers: vec![Mixer::Token],
            norm: MixerNorm::None,
            activation: Activation::Silu,
            blocks: Blocks::List(vec![0]),
            pool: Pool::Token,
            ..Default::default()
        }),
        AdapterConfig::Losa(LosaConfig {
            mixers: vec![Mixer::Channel],
            channel_rank: 3,
            ..Default::default()
        }),
        AdapterConfig::Adaptformer(AdaptformerConfig { bottleneck: 4, scale: 0.5, ..Default::default() }),
    ]
}

/// Sets every trained variable to random values (zero-initialised ones included), so that no
/// gradient is trivially zero.
fn randomise(method: &dyn Adaptation) {
    for (i, (_, var)) in method.trainable().into_iter().enumerate() {
        let t = seeded_normal(var.shape(), 0.4, 1000 + i as u64, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let t = (t + 0.1).unwrap().to_dtype(var.dtype()).unwrap();
        var.set(&t).unwrap();
    }
}

fn loss(method: &dyn Adaptation, vit: &Vit, images: &Tensor, probe: &Tensor) -> Tensor {
    (method.forward(vit, images, false).unwrap() * probe).unwrap().sum_all().unwrap()
}

#[test]
fn every_methods_gradients_match_finite_differences_for_every_trainable_tensor() {
    let vit = backbone(DType::F64);
    let images = seeded_normal((2, 3, 8, 8), 1.0, 3, &Device::Cpu).unwrap();
    let probe = seeded_normal((2, 4), 1.0, 4, &Device::Cpu).unwrap();
    for config in methods() {
        let method = build(&config, &vit, 4, 1, DType::F64).unwrap();
        randomise(method.as_ref());
        let grads = method.backward(&loss(method.as_ref(), &vit, &images, &probe)).unwrap();
        for (name, var) in method.trainable() {
            let what = format!("{} {name}", config.kind());
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{what}: no gradient"));
            let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
            assert!(grad.iter().any(|g| g.abs() > 1e-9), "{what}: zero gradient");
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let largest = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
            for idx in [0, base.len() / 2, base.len() - 1, largest] {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(method.as_ref(), &vit, &images, &probe).to_scalar::<f64>().unwrap()
                };
                let numeric = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                eval(0.0);
                let tol = 1e-6 + 1e-5 * numeric.abs().max(grad[idx].abs());
                assert!(
                    (numeric - grad[idx]).abs() <= tol,
                    "{what}[{idx}]: analytic {} vs numeric {numeric}",
                    grad[idx]
                );
            }
        }
    }
}

/// The names a method must train, derived from its config independently of the code that builds it.
fn expected_names(config: &AdapterConfig, c: &VitConfig) -> Vec<String> {
    let depth = c.shape.depth;
    let mut names: Vec<String> = vec!["head.weight".into(), "head.bias".into()];
    let per_block = |blocks: &Blocks, f: &dyn Fn(usize) -> Vec<String>| -> Vec<String> {
        blocks.indices(depth).into_iter().flat_map(f).collect()
    };
    match config {
        AdapterConfig::LinearProbe(_) => {}
        AdapterConfig::Full(_) => names.extend(c.tensor_shapes().into_iter().map(|(n, _)| n)),
        AdapterConfig::Bitfit(_) => {
            names.extend(c.tensor_shapes().into_iter().map(|(n, _)| n).filter(|n| n.ends_with(".bias")))
        }
        AdapterConfig::Lora(l) => names.extend(per_block(&l.blocks, &|i| {
            l.targets
                .iter()
                .flat_map(|t| {
                    let t = serde_json::to_value(t).unwrap();
                    let t = t.as_str().unwrap();
                    [format!("lora.blocks.{i}.{t}.lora_A"), format!("lora.blocks.{i}.{t}.lora_B")]
                })
                .collect()
        })),
        AdapterConfig::Vpt(v) => match v.mode {
            VptMode::Shallow => names.push("vpt.prompts.0".into()),
            VptMode::Deep => names.extend(per_block(&v.blocks, &|i| vec![format!("vpt.prompts.{i}")])),
        },
        AdapterConfig::Losa(l) => names.extend(per_block(&l.blocks, &|i| {
            l.mixers
                .iter()
                .flat_map(|m| {
                    let axis = if *m == Mixer::Channel { "channel" } else { "token" };
                    let mut parts = vec!["down.weight", "down.bias", "up.weight"];
                    if *m == Mixer::Channel {
                        parts.push("up.bias");
                    }
                    if l.norm == MixerNorm::LayerNorm {
                        parts.extend(["norm.weight", "norm.bias"]);
                    }
                    parts.into_iter().map(move |p| format!("losa.blocks.{i}.{axis}.{p}"))
                })
                .collect()
        })),
        AdapterConfig::Adaptformer(a) => names.extend(per_block(&a.blocks, &|i| {
            ["down.weight", "down.bias", "up.weight", "up.bias"]
                .map(|p| format!("adaptformer.blocks.{i}.{p}"))
                .to_vec()
        })),
    }
    names.sort();
    names
}

#[test]
fn every_method_trains_exactly_its_variables_and_counts_match_the_closed_form() {
    let vit = backbone(DType::F32);
    let b16 = VitConfig { shape: parse_variant("B/16").unwrap(), image_size: 224, ..tiny_config() };
    for config in methods() {
        let method = build(&config, &vit, 7, 0, DType::F32).unwrap();
        let mut names: Vec<String> = method.trainable().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, expected_names(&config, &vit.config), "{}", config.kind());
        assert_eq!(
            ParamCount::of(method.as_ref()),
            params::count(&config, &vit.config, 7),
            "{}",
            config.kind()
        );
        assert_eq!(params::count(&config, &vit.config, 7).head, 12 * 7 + 7);
    }
    // Closed forms on ViT-B/16 (n = 197 tokens) against hand-computed values.
    let count = |c: AdapterConfig| params::count(&c, &b16, 100).without_head;
    assert_eq!(count(AdapterConfig::Full(Default::default())), 85_798_656);
    assert_eq!(
        count(AdapterConfig::Losa(Default::default())),
        12 * ((2 * 768 + 2 * 768 * 8 + 8 + 768) + (2 * 768 + 2 * 197 * 8 + 8))
    );
    assert_eq!(
        count(AdapterConfig::Lora(LoraConfig { targets: vec![LoraTarget::Qkv], ..Default::default() })),
        12 * 8 * (768 + 2304)
    );
    assert_eq!(count(AdapterConfig::Vpt(Default::default())), 12 * 10 * 768);
    assert_eq!(count(AdapterConfig::Bitfit(Default::default())), 102_912);
    assert_eq!(params::count(&AdapterConfig::LinearProbe(Default::default()), &b16, 100).with_head(), 76_900);
}

#[test]
fn losa_never_builds_a_gradient_path_into_the_backbone() {
    // The backbone made of variables: if any op of LoSA's step reached them, they would get a gradient.
    let c = tiny_config();
    let backbone_vars: HashMap<String, Var> = random_weights(&c, 3, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
        .collect();
    let tensors = backbone_vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let vit = Vit::new(c, &tensors).unwrap();
    let images = seeded_normal((2, 3, 8, 8), 1.0, 5, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    for config in [
        AdapterConfig::Losa(LosaConfig { channel_rank: 4, token_rank: 3, ..Default::default() }),
        AdapterConfig::LinearProbe(Default::default()),
    ] {
        let method = build(&config, &vit, 3, 0, DType::F32).unwrap();
        randomise(method.as_ref());
        let logits = method.forward(&vit, &images, true).unwrap();
        let grads = method.backward(&logits.sqr().unwrap().sum_all().unwrap()).unwrap();
        for (name, var) in &backbone_vars {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{}: backbone tensor {name} got a gradient",
                config.kind()
            );
        }
        for (name, var) in method.trainable() {
            assert!(grads.get(var.as_tensor()).is_some(), "{}: {name} got no gradient", config.kind());
        }
    }
}

#[test]
fn losa_starts_as_a_linear_probe_and_cached_features_give_the_same_logits() {
    let vit = backbone(DType::F32);
    let images = seeded_normal((2, 3, 8, 8), 1.0, 6, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let losa = build(
        &AdapterConfig::Losa(LosaConfig { token_rank: 3, ..Default::default() }),
        &vit,
        5,
        9,
        DType::F32,
    )
    .unwrap();
    let probe = build(
        &AdapterConfig::LinearProbe(LinearProbeConfig { pool: Pool::Mean, ..Default::default() }),
        &vit,
        5,
        9,
        DType::F32,
    )
    .unwrap();
    let a = losa.forward(&vit, &images, false).unwrap();
    let b = probe.forward(&vit, &images, false).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "LoSA at its start differs from the linear probe by {diff}");
    randomise(losa.as_ref());
    let taps = compute_taps(&vit, &images, &losa.taps()).unwrap();
    let direct = losa.forward(&vit, &images, false).unwrap();
    let cached = losa.forward_taps(&vit, &taps, false).unwrap();
    assert_eq!(direct.to_vec2::<f32>().unwrap(), cached.to_vec2::<f32>().unwrap());
    let lora = build(&AdapterConfig::Lora(Default::default()), &vit, 5, 9, DType::F32).unwrap();
    assert!(
        lora.forward_taps(&vit, &taps, false)
            .unwrap_err()
            .to_string()
            .contains("cannot run from cached features")
    );
}

#[test]
fn adapter_weights_save_only_what_was_trained_and_load_back_to_the_same_outputs() {
    let vit = backbone(DType::F32);
    let images = seeded_normal((2, 3, 8, 8), 1.0, 7, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, config) in methods().into_iter().enumerate() {
        let method = build(&config, &vit, 3, 1, DType::F32).unwrap();
        randomise(method.as_ref());
        let path = dir.path().join(format!("{i}.safetensors"));
        let size = save_adapter(method.as_ref(), &path, HashMap::new()).unwrap();
        let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(stored.len(), method.trainable().len());
        assert!(size as usize >= 4 * ParamCount::of(method.as_ref()).with_head());
        let fresh = build(&config, &vit, 3, 2, DType::F32).unwrap();
        load_adapter(fresh.as_ref(), &path).unwrap();
        let a = method.forward(&vit, &images, false).unwrap().to_vec2::<f32>().unwrap();
        let b = fresh.forward(&vit, &images, false).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b, "{}", config.kind());
    }
    let losa = build(
        &AdapterConfig::Losa(LosaConfig { token_rank: 3, ..Default::default() }),
        &vit,
        3,
        1,
        DType::F32,
    )
    .unwrap();
    let err = load_adapter(losa.as_ref(), &dir.path().join("3.safetensors")).unwrap_err().to_string();
    assert!(
        err.contains("does not fit this losa adapter")
            && err.contains("missing losa.blocks.0.channel.down.weight"),
        "{err}"
    );
}

#[test]
fn a_fully_finetuned_backbone_saves_as_a_timm_checkpoint() {
    let vit = backbone(DType::F32);
    let method = build(&AdapterConfig::Full(Default::default()), &vit, 3, 1, DType::F32).unwrap();
    randomise(method.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretrained.safetensors");
    save_adapter(method.as_ref(), &path, HashMap::new()).unwrap();
    let ckpt = losa_framework::checkpoint::read(&path).unwrap();
    assert_eq!(ckpt.format, losa_framework::checkpoint::Format::Timm);
    let reloaded = ckpt.into_vit(tiny_config(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(reloaded.config.num_classes, Some(3), "the trained head comes along");
    let images = seeded_normal((2, 3, 8, 8), 1.0, 9, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let tokens = reloaded.forward(&images, &losa_framework::vit::NoHooks, false).unwrap().tokens;
    let logits = reloaded.logits(&reloaded.pool(&tokens, Pool::Token).unwrap()).unwrap().unwrap();
    let direct = method.forward(&vit, &images, false).unwrap();
    let diff = (logits - direct).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
}

/// LoSA's mixers as computed (fused LayerNorm and bias + GELU, token mixing as a matmul from the
/// left) against REFERENCE.md §1's formulas written out with transposes and primitive ops, in
/// f64 with random parameters.
#[test]
fn losa_mixers_match_the_transposed_composition() {
    use candle_core::D;
    let vit = backbone(DType::F64);
    let config = LosaConfig { channel_rank: 4, token_rank: 3, ..Default::default() };
    let mut init = crate::common::Init::new(3, &Device::Cpu, DType::F64);
    let head = crate::common::Head::new(&mut init, 12, 5, Pool::Mean).unwrap();
    let losa = crate::losa::Losa::new(&config, &vit, head, &mut init).unwrap();
    randomise(&losa);
    let z = seeded_normal((2, vit.config.num_tokens(), 12), 1.0, 11, &Device::Cpu).unwrap();
    for parts in losa.mixers.values() {
        assert_eq!(parts.len(), 2);
        let fused = losa.mix(parts, &z, 1e-6, false).unwrap();
        let mut h = z.clone();
        for p in parts {
            let (w, b) = p.norm.as_ref().unwrap();
            let centred = h.broadcast_sub(&h.mean_keepdim(D::Minus1).unwrap()).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let x = centred.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
            let x = x.broadcast_mul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap();
            let token = p.axis == Mixer::Token;
            let x = if token { x.transpose(1, 2).unwrap() } else { x };
            let a = x.broadcast_matmul(&p.down.as_tensor().t().unwrap()).unwrap();
            let a = a.broadcast_add(p.down_bias.as_tensor()).unwrap().gelu_erf().unwrap();
            let mut y = a.broadcast_matmul(&p.up.as_tensor().t().unwrap()).unwrap();
            if let Some(bias) = &p.up_bias {
                y = y.broadcast_add(bias.as_tensor()).unwrap();
            }
            let y = if token { y.transpose(1, 2).unwrap() } else { y };
            h = (h + y).unwrap();
        }
        let reference = (h - &z).unwrap();
        let diff =
            (&fused - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 1e-3 && diff <= 1e-12 * scale, "mixer differs by {diff} (scale {scale})");
    }
}

/// LoSA's logits in training mode (epoch 0's dropout), side blocks fused or composed, then the
/// gradient of `sum(logits · probe)` for every trainable tensor.
fn losa_outputs(
    losa: &crate::losa::Losa,
    vit: &Vit,
    taps: &Taps,
    probe: &Tensor,
    fused: bool,
) -> Vec<Tensor> {
    losa.start_epoch(0);
    let logits = losa.forward_with(vit, taps, true, fused).unwrap();
    let grads = losa.backward(&(&logits * probe).unwrap().sum_all().unwrap()).unwrap();
    let mut out = vec![logits];
    out.extend(losa.trainable().iter().map(|(_, v)| grads.get(v.as_tensor()).expect("a gradient").clone()));
    out
}

/// LoSA's side blocks as one op (`ops::side_network`, the GELU default) against the same blocks
/// composed from candle ops: the same logits and gradients in f64, with dropout on (the masks come
/// from one stream in one order, so both draw the same).
#[test]
fn losa_fused_side_blocks_match_the_composed_ones_with_dropout() {
    for mixers in [vec![Mixer::Channel, Mixer::Token], vec![Mixer::Token, Mixer::Channel]] {
        let vit = backbone(DType::F64);
        let config =
            LosaConfig { channel_rank: 4, token_rank: 3, dropout: 0.3, mixers, ..Default::default() };
        let mut init = crate::common::Init::new(5, &Device::Cpu, DType::F64);
        let head = crate::common::Head::new(&mut init, 12, 5, Pool::Mean).unwrap();
        let losa = crate::losa::Losa::new(&config, &vit, head, &mut init).unwrap();
        randomise(&losa);
        let images =
            seeded_normal((2, 3, 8, 8), 1.0, 12, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let taps = compute_taps(&vit, &images, &losa.taps()).unwrap();
        let probe = seeded_normal((2, 5), 1.0, 13, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let run = |fused: bool| losa_outputs(&losa, &vit, &taps, &probe, fused);
        let (fused, composed) = (run(true), run(false));
        for (k, (f, c)) in fused.iter().zip(&composed).enumerate() {
            let diff = (f - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            let scale = c.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(scale > 0.0 && diff <= 1e-9 * scale, "output {k} differs by {diff} (scale {scale})");
        }
    }
}

/// ‖a − b‖ / ‖b‖, in f64.
fn rel_norm(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    (diff / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).sqrt()
}

/// On a bf16 backbone with f32 parameters, LoSA's side network computes in bf16 by default (as
/// under autocast) and in f32 when asked: logits and gradients in f32 either way, within bf16's
/// rounding of each other, fused and composed blocks alike; on an f32 backbone both are one path.
#[test]
fn losa_side_network_computes_in_the_backbone_dtype_with_f32_parameters() {
    let images = seeded_normal((2, 3, 8, 8), 1.0, 12, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let probe = seeded_normal((2, 5), 1.0, 13, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let run = |backbone_dtype: DType, side_dtype: SideDtype, fused: bool| {
        let vit = backbone(backbone_dtype);
        let config = LosaConfig { channel_rank: 4, token_rank: 3, side_dtype, ..Default::default() };
        let mut init = crate::common::Init::new(5, &Device::Cpu, DType::F32);
        let head = crate::common::Head::new(&mut init, 12, 5, Pool::Mean).unwrap();
        let losa = crate::losa::Losa::new(&config, &vit, head, &mut init).unwrap();
        randomise(&losa);
        let taps = compute_taps(&vit, &images.to_dtype(backbone_dtype).unwrap(), &losa.taps()).unwrap();
        losa_outputs(&losa, &vit, &taps, &probe, fused)
    };
    let f32_side = run(DType::BF16, SideDtype::F32, true);
    for fused in [true, false] {
        let bf16_side = run(DType::BF16, SideDtype::Backbone, fused);
        for (k, (b, f)) in bf16_side.iter().zip(&f32_side).enumerate() {
            assert_eq!(b.dtype(), DType::F32, "output {k}");
            let (err, tol) = (rel_norm(b, f), if k == 0 { 3e-2 } else { 1e-1 });
            assert!(err < tol, "fused={fused}: output {k} differs by {err:e} (tolerance {tol:e})");
        }
    }
    // The bf16 side network is a different computation, not the f32 one relabelled.
    assert!(rel_norm(&run(DType::BF16, SideDtype::Backbone, true)[0], &f32_side[0]) > 0.0);
    let (a, b) = (run(DType::F32, SideDtype::Backbone, true), run(DType::F32, SideDtype::F32, true));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(rel_norm(x, y), 0.0);
    }
}
