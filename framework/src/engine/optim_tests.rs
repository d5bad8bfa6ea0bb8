//! The optimisers against PyTorch's own trajectories (framework/fixtures/optim.json, made by
//! tools/make_fixtures.py): one decayed and one exempt parameter, a changing learning rate, with
//! and without gradient clipping.

use candle_core::{Device, Tensor, Var};
use serde_json::Value;

use super::*;
use crate::recipe::{Optimizer as Kind, TrainConfig};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/optim.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn adamw_and_sgd_follow_pytorch_step_for_step() {
    let f = fixture();
    for (key, kind, clip) in [
        ("adamw", Kind::Adamw, None),
        ("adamw_clip", Kind::Adamw, Some(1.0)),
        ("sgd", Kind::Sgd, None),
        ("sgd_clip", Kind::Sgd, Some(1.0)),
    ] {
        let w = Var::from_tensor(&Tensor::from_vec(floats(&f["init"]["w"]), (2, 3), &Device::Cpu).unwrap())
            .unwrap();
        let b =
            Var::from_tensor(&Tensor::from_vec(floats(&f["init"]["b"]), 3, &Device::Cpu).unwrap()).unwrap();
        let train = TrainConfig {
            optimizer: kind,
            weight_decay: 0.05,
            momentum: 0.9,
            grad_clip: clip,
            ..Default::default()
        };
        let mut opt = Optimizer::new(
            &train,
            vec![
                ("blocks.0.attn.qkv.weight".into(), w.clone()),
                ("blocks.0.attn.qkv.bias".into(), b.clone()),
            ],
        );
        assert_eq!(opt.decayed(), vec!["blocks.0.attn.qkv.weight"]);
        for (i, step) in f[key]["steps"].as_array().unwrap().iter().enumerate() {
            let g = &f["grads"][i];
            let gw = Tensor::from_vec(floats(&g[0]), (2, 3), &Device::Cpu).unwrap();
            let gb = Tensor::from_vec(floats(&g[1]), 3, &Device::Cpu).unwrap();
            opt.step_with(vec![Some(gw), Some(gb)], f["lrs"][i].as_f64().unwrap()).unwrap();
            for (name, var, expected) in [("w", &w, floats(&step["w"])), ("b", &b, floats(&step["b"]))] {
                let ours: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                for (o, e) in ours.iter().zip(&expected) {
                    assert!((o - e).abs() < 1e-12, "{key} step {i} {name}: {o} vs PyTorch {e}");
                }
            }
        }
    }
}

#[test]
fn weight_decay_spares_biases_norms_embeddings_and_prompts_unless_asked() {
    let var = |dims: &[usize]| Var::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
    let cases = [
        ("blocks.0.mlp.fc1.weight", var(&[4, 3]), true),
        ("head.weight", var(&[2, 3]), true),
        ("blocks.0.mlp.fc1.bias", var(&[4]), false),
        ("blocks.0.norm1.weight", var(&[3]), false),
        ("losa.blocks.0.channel.norm.weight", var(&[3]), false),
        ("pos_embed", var(&[1, 5, 3]), false),
        ("cls_token", var(&[1, 1, 3]), false),
        ("vpt.prompts.3", var(&[1, 10, 3]), false),
    ];
    for (name, v, expected) in &cases {
        assert_eq!(decays(name, v, false), *expected, "{name}");
        assert!(decays(name, v, true), "{name} with decay_all");
    }
}

#[test]
fn the_state_restores_to_continue_identically() {
    let train = TrainConfig::default();
    let make = || Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    let grads = |i: usize| vec![Some(Tensor::new(&[0.1 * i as f64, -0.3, 0.2], &Device::Cpu).unwrap())];
    let (a, b) = (make(), make());
    let mut first = Optimizer::new(&train, vec![("x.weight".into(), a.clone())]);
    for i in 0..3 {
        first.step_with(grads(i), 0.1).unwrap();
    }
    b.set(a.as_tensor()).unwrap();
    let state: std::collections::HashMap<String, Tensor> = first.state().unwrap().into_iter().collect();
    let mut second = Optimizer::new(&train, vec![("x.weight".into(), b.clone())]);
    second.restore(&state, first.steps()).unwrap();
    for i in 3..6 {
        first.step_with(grads(i), 0.1).unwrap();
        second.step_with(grads(i), 0.1).unwrap();
    }
    assert_eq!(a.as_tensor().to_vec1::<f64>().unwrap(), b.as_tensor().to_vec1::<f64>().unwrap());
}

#[test]
fn a_saved_state_is_a_copy_that_later_steps_leave_alone() {
    let train = TrainConfig::default();
    let x = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    let mut opt = Optimizer::new(&train, vec![("x.weight".into(), x)]);
    let grad = || vec![Some(Tensor::new(&[0.5f64, -0.3, 0.2], &Device::Cpu).unwrap())];
    opt.step_with(grad(), 0.1).unwrap();
    let saved = opt.state().unwrap();
    let before: Vec<Vec<f64>> = saved.iter().map(|(_, t)| t.to_vec1().unwrap()).collect();
    opt.step_with(grad(), 0.1).unwrap();
    let after: Vec<Vec<f64>> = saved.iter().map(|(_, t)| t.to_vec1().unwrap()).collect();
    assert_eq!(before, after, "the in-place update reached a saved state");
    assert_ne!(opt.state().unwrap()[0].1.to_vec1::<f64>().unwrap(), before[0]);
}

#[test]
fn adamw_reads_strided_and_offset_gradients_through_their_layout() {
    let train = TrainConfig::default();
    let run = |grad: Tensor| {
        let x = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0], [3.0, 0.5]], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Optimizer::new(&train, vec![("x.weight".into(), x.clone())]);
        opt.step_with(vec![Some(grad)], 0.1).unwrap();
        x.as_tensor().to_vec2::<f64>().unwrap()
    };
    let g = Tensor::new(&[[0.5f64, -0.3], [0.2, 0.9]], &Device::Cpu).unwrap();
    let transposed = g.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!transposed.is_contiguous());
    let wide = Tensor::new(&[9.0f64, 0.5, -0.3, 0.2, 0.9], &Device::Cpu).unwrap();
    let offset = wide.narrow(0, 1, 4).unwrap().reshape((2, 2)).unwrap();
    let expected = run(g);
    assert_eq!(run(transposed), expected);
    assert_eq!(run(offset), expected);
}

/// A backward that did not reach a variable (its gradient taken with `loss.backward()` where the
/// method's own backward was due) stops the step, naming the variable, before anything changes.
#[test]
fn a_step_refuses_a_backward_that_missed_a_variable() {
    let w = Var::from_tensor(&Tensor::ones((2, 2), candle_core::DType::F64, &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::ones(2, candle_core::DType::F64, &Device::Cpu).unwrap()).unwrap();
    let mut opt =
        Optimizer::new(&TrainConfig::default(), vec![("w".into(), w.clone()), ("b".into(), b.clone())]);
    let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
    let err = opt.step(&grads, 0.1).unwrap_err().to_string();
    assert!(err.contains("no gradient for b"), "{err}");
    assert_eq!(w.as_tensor().sum_all().unwrap().to_scalar::<f64>().unwrap(), 4.0);
    assert_eq!(opt.steps(), 0);
}
