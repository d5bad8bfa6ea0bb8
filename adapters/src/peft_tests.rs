//! PEFT interchange: a real PEFT adapter (made by tools/make_fixtures.py) imports to PEFT's own
//! logits, exports back to the same files, and slice LoRA exports exactly.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use losa_framework::adaptation::Adaptation;
use losa_framework::checkpoint;
use losa_framework::recipe::{AdapterConfig, LoraConfig, LoraTarget, VitShape};
use losa_framework::vit::{Vit, VitConfig, seeded_normal};

use crate::peft::{export, import};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../framework/fixtures/vit")
}

fn fixture_vit() -> Vit {
    let shape = VitShape { width: 48, depth: 2, heads: 3, mlp_dim: 96, patch_size: 8 };
    let config = VitConfig { shape, image_size: 32, norm_eps: 1e-6, num_classes: None, pre_logits: None };
    checkpoint::read(&fixtures().join("vit_timm.safetensors"))
        .unwrap()
        .into_vit(config, &Device::Cpu, DType::F32)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn a_peft_adapter_imports_to_pefts_logits_and_exports_to_the_same_files() {
    let vit = fixture_vit();
    let reference =
        candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap();
    let lora = import(&fixtures().join("peft"), &vit, DType::F32).unwrap();
    assert_eq!(lora.pairs.len(), 2 * 3, "qkv, proj and fc2 of both blocks");
    assert!((lora.scale - 6.0 / 4.0).abs() < 1e-12);
    let logits = lora.forward(&vit, &reference["images"], false).unwrap();
    let scale = reference["peft.logits"].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max_diff(&logits, &reference["peft.logits"]) <= 1e-4 * scale);

    let dir = tempfile::tempdir().unwrap();
    export(&lora, &vit, dir.path()).unwrap();
    let original =
        candle_core::safetensors::load(fixtures().join("peft/adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let exported =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut keys: Vec<_> = exported.keys().collect();
    keys.sort();
    let mut expected: Vec<_> = original.keys().collect();
    expected.sort();
    assert_eq!(keys, expected);
    for (k, t) in &original {
        assert_eq!(max_diff(t, &exported[k]), 0.0, "{k}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(6.0))
    );
    assert_eq!(config["target_modules"], serde_json::json!(["attn.proj", "attn.qkv", "mlp.fc2"]));
    let again = import(dir.path(), &vit, DType::F32).unwrap();
    assert_eq!(max_diff(&again.forward(&vit, &reference["images"], false).unwrap(), &logits), 0.0);
}

#[test]
fn lora_on_qkv_slices_exports_exactly_as_a_wider_qkv_lora() {
    let vit = fixture_vit();
    let config = AdapterConfig::Lora(LoraConfig {
        rank: 3,
        alpha: 5.0,
        targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Fc1],
        ..Default::default()
    });
    let method = crate::build(&config, &vit, 4, 0, DType::F32).unwrap();
    for (i, (_, var)) in method.trainable().into_iter().enumerate() {
        var.set(
            &seeded_normal(var.shape(), 0.3, i as u64, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap(),
        )
        .unwrap();
    }
    let images = seeded_normal((2, 3, 32, 32), 1.0, 2, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let before = method.forward(&vit, &images, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lora = crate::Lora::from_pairs(
        method_pairs(method.as_ref()),
        5.0 / 3.0,
        48,
        crate::Head {
            weight: method.trainable().into_iter().find(|(n, _)| n == "head.weight").unwrap().1,
            bias: method.trainable().into_iter().find(|(n, _)| n == "head.bias").unwrap().1,
            pool: losa_framework::recipe::Pool::Token,
        },
    );
    export(&lora, &vit, dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["rank_pattern"]["attn.qkv"], 6, "q and v of rank 3 become one qkv LoRA of rank 6");
    let imported = import(dir.path(), &vit, DType::F32).unwrap();
    let after = imported.forward(&vit, &images, false).unwrap();
    assert!(max_diff(&before, &after) < 1e-5, "{}", max_diff(&before, &after));
}

fn method_pairs(
    method: &dyn Adaptation,
) -> std::collections::BTreeMap<(usize, crate::Target), crate::LoraPair> {
    let vars: std::collections::HashMap<String, candle_core::Var> = method.trainable().into_iter().collect();
    let mut pairs = std::collections::BTreeMap::new();
    for block in 0..2 {
        for (name, target) in
            [("q", crate::Target::Slice(0)), ("v", crate::Target::Slice(2)), ("fc1", crate::Target::Fc1)]
        {
            let a = vars[&format!("lora.blocks.{block}.{name}.lora_A")].clone();
            let b = vars[&format!("lora.blocks.{block}.{name}.lora_B")].clone();
            pairs.insert((block, target), crate::LoraPair { a, b });
        }
    }
    pairs
}

#[test]
fn unsupported_peft_adapters_are_refused_with_the_reason() {
    let vit = fixture_vit();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("peft/adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixtures().join("peft/adapter_config.json")).unwrap();
    for (from, to, fragment) in [
        ("\"use_dora\": false", "\"use_dora\": true", "use_dora = true is not supported"),
        ("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "peft_type is \"IA3\""),
    ] {
        std::fs::write(dir.path().join("adapter_config.json"), config.replace(from, to)).unwrap();
        let err = import(dir.path(), &vit, DType::F32).unwrap_err().to_string();
        assert!(err.contains(fragment), "{err}");
    }
    std::fs::remove_file(dir.path().join("adapter_config.json")).unwrap();
    let err = import(dir.path(), &vit, DType::F32).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}
