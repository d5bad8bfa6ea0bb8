//! `residual` and `side_network` against their compositions from candle ops (values and gradients,
//! every dtype), and `side_network`'s gradients against finite differences in f64: one block
//! (`side_update` here), and several, against the blocks one after another.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::tests::{
    check_finite_differences_via, grads_of, grads_via, layer_norm_unfused, max_rel_err, normal, tolerance,
    values,
};
use super::{GradSink, LowRank, LowRankMix, SideBlock, Terms, bias_gelu, residual, side_network};
use crate::recipe::Mixer;

const DTYPES: [DType; 4] = [DType::F64, DType::F32, DType::F16, DType::BF16];
const EPS: f64 = 1e-6;
/// [batch, tokens, width] and the channel and token ranks.
const SHAPE: [usize; 3] = [2, 5, 8];
const RANKS: (usize, usize) = (3, 2);

#[test]
fn residual_matches_the_composition_in_every_dtype() {
    let [a, m, minus, plus] = [1, 2, 3, 4].map(|seed| normal(&SHAPE, 1.0, seed));
    let bias = normal(&[8], 1.0, 5);
    // Every subset of the optional terms.
    for subset in 0..8 {
        let (with_minus, with_plus, with_bias) = (subset & 1 != 0, subset & 2 != 0, subset & 4 != 0);
        let mut reference = (&a + &m).unwrap();
        if with_minus {
            reference = (reference - &minus).unwrap();
        }
        if with_plus {
            reference = (reference + &plus).unwrap();
        }
        if with_bias {
            reference = reference.broadcast_add(&bias).unwrap();
        }
        for dtype in DTYPES {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (minus, plus, bias) = (c(&minus), c(&plus), c(&bias));
            let terms = Terms { minus: with_minus.then_some(&minus), plus: with_plus.then_some(&plus) };
            let out = residual(&c(&a), &c(&m), terms, with_bias.then_some(&bias)).unwrap();
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&out, &reference, floor);
            assert!(err < tol, "{dtype:?} minus={with_minus} plus={with_plus} bias={with_bias}: {err:e}");
        }
    }
    // Strided inputs are read through their layout.
    let t = normal(&[2, 8, 5], 1.0, 6).transpose(1, 2).unwrap();
    let out = residual(&t, &m, Terms::default(), None).unwrap();
    assert!(max_rel_err(&out, &(&t + &m).unwrap(), 1e-6) < 1e-12);
}

#[test]
fn residual_refuses_an_input_that_needs_a_gradient() {
    let v = Var::from_tensor(&normal(&SHAPE, 1.0, 1)).unwrap();
    let m = normal(&SHAPE, 1.0, 2);
    let err = residual(v.as_tensor(), &m, Terms::default(), None).unwrap_err().to_string();
    assert!(err.contains("has no backward"), "{err}");
    let err =
        residual(&m, &m, Terms { minus: None, plus: Some(v.as_tensor()) }, None).unwrap_err().to_string();
    assert!(err.contains("has no backward"), "{err}");
}

#[test]
fn a_low_rank_update_matches_its_product_written_out() {
    let [batch, tokens, width] = SHAPE;
    let rank = 3;
    let [a, minus, plus] = [1, 3, 4].map(|seed| normal(&SHAPE, 1.0, seed));
    let bias = normal(&[width], 1.0, 5);
    // Channel: m = act·Wᵀ per token; token: m = W·act per image.
    let cases = [
        (Mixer::Channel, normal(&[width, rank], 0.7, 6), normal(&[batch, tokens, rank], 1.0, 7)),
        (Mixer::Token, normal(&[tokens, rank], 0.7, 8), normal(&[batch, rank, width], 1.0, 9)),
    ];
    for (axis, weight, act) in &cases {
        // In f64, the reference sum of the product and the terms.
        let m = LowRank { axis: *axis, weight, act }.materialise().unwrap();
        let reference =
            (((&a + &m).unwrap() - &minus).unwrap() + &plus).unwrap().broadcast_add(&bias).unwrap();
        for dtype in DTYPES {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (a, weight, act, minus, plus, bias) =
                (c(&a), c(weight), c(act), c(&minus), c(&plus), c(&bias));
            let terms = Terms { minus: Some(&minus), plus: Some(&plus) };
            let update = LowRank { axis: *axis, weight: &weight, act: &act };
            let out = residual(&a, update, terms, Some(&bias)).unwrap();
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&out, &reference, floor);
            assert!(err < tol, "{axis:?} {dtype:?}: {err:e}");
            // And with none of the optional terms, from strided inputs.
            let (wt, at) =
                (weight.t().unwrap().contiguous().unwrap(), act.t().unwrap().contiguous().unwrap());
            let update = LowRank { axis: *axis, weight: &wt.t().unwrap(), act: &at.t().unwrap() };
            let out = residual(&a, update, Terms::default(), None).unwrap();
            let err = max_rel_err(&out, &(&c(&a) + &c(&m)).unwrap().to_dtype(DType::F64).unwrap(), floor);
            assert!(err < tol, "{axis:?} {dtype:?}, no terms: {err:e}");
        }
    }
    // Shapes that do not fit are named.
    let (weight, act) = (normal(&[width, rank], 1.0, 6), normal(&[batch, tokens + 1, rank], 1.0, 7));
    let update = LowRank { axis: Mixer::Channel, weight: &weight, act: &act };
    let err = residual(&a, update, Terms::default(), None).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    let update = LowRank { axis: Mixer::Token, weight: &weight, act: &act };
    let err = residual(&a, update, Terms::default(), None).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}

/// A side block to test: its mixers in order, whether they normalise, whether dropout masks apply.
#[derive(Clone, Copy, Debug)]
struct Case {
    axes: &'static [Mixer],
    norm: bool,
    masks: bool,
}

const CASES: [Case; 5] = [
    Case { axes: &[Mixer::Channel, Mixer::Token], norm: true, masks: false },
    Case { axes: &[Mixer::Token, Mixer::Channel], norm: true, masks: true },
    Case { axes: &[Mixer::Channel], norm: false, masks: true },
    Case { axes: &[Mixer::Token], norm: true, masks: false },
    Case { axes: &[Mixer::Channel, Mixer::Token, Mixer::Channel], norm: false, masks: false },
];

impl Case {
    /// `y`, then every mixer's parameters in `LowRankMix` order (random, up-projections non-zero
    /// so every path carries a gradient), all f64.
    fn inputs(&self) -> Vec<Tensor> {
        let [_, n, d] = SHAPE;
        let mut seed = 100;
        let mut next = |shape: &[usize], std: f64, mean: f64| {
            seed += 1;
            (normal(shape, std, seed) + mean).unwrap()
        };
        let mut ts = vec![next(&SHAPE, 1.0, 0.2)];
        for axis in self.axes {
            let (size, rank) = match axis {
                Mixer::Channel => (d, RANKS.0),
                Mixer::Token => (n, RANKS.1),
            };
            if self.norm {
                ts.extend([next(&[d], 0.3, 1.0), next(&[d], 0.3, 0.0)]);
            }
            ts.extend([
                next(&[rank, size], 0.5, 0.0),
                next(&[rank], 0.5, 0.0),
                next(&[size, rank], 0.5, 0.0),
            ]);
            if *axis == Mixer::Channel {
                ts.push(next(&[size], 0.5, 0.0));
            }
        }
        ts
    }

    /// The mixers from `params` (as `inputs` lays them out, `y` excluded), with fixed masks.
    fn mixes(&self, params: &[Tensor]) -> Vec<LowRankMix> {
        let [b, n, d] = SHAPE;
        let mut it = params.iter().cloned();
        let mut take = || it.next().expect("enough parameters");
        self.axes
            .iter()
            .enumerate()
            .map(|(k, &axis)| {
                let norm = self.norm.then(|| (take(), take()));
                let (down, down_bias, up) = (take(), take(), take());
                let up_bias = (axis == Mixer::Channel).then(&mut take);
                let shape: &[usize] = match axis {
                    Mixer::Channel => &[b, n, RANKS.0],
                    Mixer::Token => &[b, RANKS.1, d],
                };
                // Zeros and 1/(1 − 0.4), as dropout with p = 0.4 draws them.
                let mask = self.masks.then(|| {
                    let u = normal(shape, 1.0, 50 + k as u64);
                    (u.ge(-0.25).unwrap().to_dtype(down.dtype()).unwrap() / 0.6).unwrap()
                });
                LowRankMix { axis, norm, down, down_bias, up, up_bias, mask }
            })
            .collect()
    }
}

/// `y + g(b + y)` composed from candle ops, as LoSA's `mix` composes it, with this module's bias +
/// GELU (tested on its own against finite differences): candle's own `gelu_erf` gradient uses a
/// 6-digit constant, which would put a 1e-6 error into the f64 reference.
fn side_unfused(b: &Tensor, y: &Tensor, mixes: &[LowRankMix]) -> Result<Tensor> {
    let z = (b + y)?;
    let mut h = z.clone();
    for mix in mixes {
        let x = match &mix.norm {
            Some((w, bn)) => layer_norm_unfused(&h, w, bn, EPS)?,
            None => h.clone(),
        };
        let (pre, dim) = match mix.axis {
            Mixer::Channel => (x.broadcast_matmul(&mix.down.t()?)?, 2),
            Mixer::Token => (mix.down.broadcast_matmul(&x)?, 1),
        };
        let mut a = bias_gelu(&pre, &mix.down_bias, dim)?;
        if let Some(mask) = &mix.mask {
            a = (a * mask)?;
        }
        let m = match mix.axis {
            Mixer::Channel => a.broadcast_matmul(&mix.up.t()?)?,
            Mixer::Token => mix.up.broadcast_matmul(&a)?,
        };
        h = match &mix.up_bias {
            Some(bias) => (h + m.broadcast_add(bias)?)?,
            None => (h + m)?,
        };
    }
    y + (h - z)?
}

/// ‖a − b‖ / ‖b‖.
fn norm_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values(a), values(b));
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    (diff / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
}

fn sink() -> GradSink {
    GradSink::new(&Device::Cpu).unwrap()
}

/// One block, `y + g(b + y)`: a network of one.
fn side_update(b: &Tensor, y: &Tensor, mixers: &[LowRankMix], eps: f64, sink: &GradSink) -> Result<Tensor> {
    side_network(y, &[SideBlock { features: b.clone(), mixers: mixers.to_vec() }], eps, sink)
}

fn features(dtype: DType) -> Tensor {
    (normal(&SHAPE, 1.0, 7) - 0.3).unwrap().to_dtype(dtype).unwrap()
}

#[test]
fn side_update_matches_the_composition_in_values_and_gradients_in_every_dtype() {
    let probe = normal(&SHAPE, 1.0, 9);
    for case in CASES {
        let inputs = case.inputs();
        let reference_out =
            side_unfused(&features(DType::F64), &inputs[0], &case.mixes(&inputs[1..])).unwrap();
        let reference =
            grads_of(&inputs, &probe, |t| side_unfused(&features(DType::F64), &t[0], &case.mixes(&t[1..])));
        for dtype in DTYPES {
            let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            let (tol, floor) = tolerance(dtype);
            let sink = sink();
            let run = |t: &[Tensor]| side_update(&features(dtype), &t[0], &case.mixes(&t[1..]), EPS, &sink);
            let err = max_rel_err(&run(&cast).unwrap(), &reference_out, floor);
            assert!(err < tol, "{case:?} {dtype:?}: output {err:e}");
            let grads = grads_via(&cast, &probe, run, |l| sink.backward(l));
            // Gradients are sums over rows: compared as vectors (an element that cancels to near
            // zero says little), within the dtype's tolerance and at most three times as far off as the
            // composition in the same dtype, which rounds as often.
            let composed =
                grads_of(&cast, &probe, |t| side_unfused(&features(dtype), &t[0], &case.mixes(&t[1..])));
            for (k, ((g, c), r)) in grads.iter().zip(&composed).zip(&reference).enumerate() {
                let (err, yardstick) = (norm_err(g, r), norm_err(c, r));
                assert!(
                    err < tol && err < 3.0 * yardstick.max(tol / 10.0),
                    "{case:?} {dtype:?}: gradient of input {k} {err:e} (composed {yardstick:e})"
                );
            }
        }
    }
}

#[test]
fn side_update_gradients_match_finite_differences() {
    let probe = normal(&SHAPE, 1.0, 11);
    for case in [CASES[1], CASES[2], CASES[4]] {
        let sink = sink();
        check_finite_differences_via(
            &case.inputs(),
            &probe,
            |t| side_update(&features(DType::F64), &t[0], &case.mixes(&t[1..]), EPS, &sink),
            |l| sink.backward(l),
        );
    }
}

#[test]
fn side_update_gives_no_gradient_to_the_features_and_none_to_an_untracked_stream() {
    let case = CASES[0];
    let inputs = case.inputs();
    let b = Var::from_tensor(&features(DType::F64)).unwrap();
    let params: Vec<Var> = inputs[1..].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = params.iter().map(|v| v.as_tensor().clone()).collect();
    // The first block's stream is the backbone's last block output: detached, like b.
    let sink = sink();
    let out = side_update(b.as_tensor(), &inputs[0], &case.mixes(&ts), EPS, &sink).unwrap();
    let grads = sink.backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
    assert!(grads.get(b.as_tensor()).is_none(), "a gradient reached the features");
    assert!(grads.get(&inputs[0]).is_none());
    // The parameters' gradients are those of a run where the stream needs one too (the skipped
    // work for the stream changes nothing else).
    let y = Var::from_tensor(&inputs[0]).unwrap();
    let out = side_update(b.as_tensor(), y.as_tensor(), &case.mixes(&ts), EPS, &sink).unwrap();
    let tracked = sink.backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
    assert!(tracked.get(y.as_tensor()).is_some());
    for v in &params {
        let (g, t) =
            (grads.get(v.as_tensor()).expect("a gradient"), tracked.get(v.as_tensor()).expect("a gradient"));
        assert!(max_rel_err(g, t, 1e-12) < 1e-14, "a parameter's gradient depends on the stream's");
    }
}

/// Half-precision activations with f32 parameters (LoSA's side network on a bf16 backbone, as
/// under autocast): the block computes exactly as with the parameters cast to the half dtype, and
/// the parameters get their gradients in f32 (the weights' from half-precision matrix products,
/// as under autocast; the norms' and biases' sums not rounded to half): rounded to the half dtype
/// they are the all-half run's, and they stay within the half dtype's tolerance of the f64
/// reference.
#[test]
fn side_update_with_f32_parameters_computes_in_the_stream_dtype() {
    let probe = normal(&SHAPE, 1.0, 9);
    for case in [CASES[0], CASES[1]] {
        let inputs = case.inputs();
        let reference =
            grads_of(&inputs, &probe, |t| side_unfused(&features(DType::F64), &t[0], &case.mixes(&t[1..])));
        for dtype in [DType::BF16, DType::F16] {
            let mut mixed: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
            mixed[0] = inputs[0].to_dtype(dtype).unwrap();
            let half: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            let sink = sink();
            let run = |t: &[Tensor]| side_update(&features(dtype), &t[0], &case.mixes(&t[1..]), EPS, &sink);
            let (out_mixed, out_half) = (run(&mixed).unwrap(), run(&half).unwrap());
            assert_eq!(out_mixed.dtype(), dtype);
            assert_eq!(values(&out_mixed), values(&out_half), "{case:?} {dtype:?}: outputs differ");
            let backward = |l: &Tensor| sink.backward(l);
            let (g_mixed, g_half) =
                (grads_via(&mixed, &probe, run, backward), grads_via(&half, &probe, run, backward));
            let (tol, _) = tolerance(dtype);
            let vars: Vec<Var> = mixed.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let store = sink.backward(&run(&ts).unwrap().sqr().unwrap().sum_all().unwrap()).unwrap();
            for v in &vars {
                assert_eq!(
                    store.get(v.as_tensor()).unwrap().dtype(),
                    v.dtype(),
                    "a gradient in its own dtype"
                );
            }
            // (grads_of returns f64, exactly the f32 values: rounding them to the half dtype
            // rounds the f32 values.)
            for (k, ((m, h), r)) in g_mixed.iter().zip(&g_half).zip(&reference).enumerate() {
                let rounded = m.to_dtype(dtype).unwrap();
                assert_eq!(values(&rounded), values(h), "{case:?} {dtype:?}: gradient {k}");
                assert!(norm_err(m, r) < tol, "{case:?} {dtype:?}: gradient {k} {:e}", norm_err(m, r));
            }
        }
    }
}

#[test]
fn side_update_refuses_a_parameter_computed_from_a_variable() {
    let case = CASES[0];
    let inputs = case.inputs();
    let mut params: Vec<Tensor> = inputs[1..].to_vec();
    // Its gradient would reach the sink after candle's backward, too late for the variable.
    params[0] = (Var::from_tensor(&params[0]).unwrap().as_tensor() * 1.0).unwrap();
    let err = side_update(&features(DType::F64), &inputs[0], &case.mixes(&params), EPS, &sink()).unwrap_err();
    assert!(err.to_string().contains("pass the variable itself"), "{err}");
}

/// A network of three blocks (the third reading the first's parameters again, the second its
/// own) gives what its blocks give one after another, each a network of one whose stream's
/// gradient passes through candle's graph: values and gradients (the shared parameters' summed);
/// and its gradients match finite differences.
#[test]
fn a_network_is_its_blocks_one_after_another() {
    let probe = normal(&SHAPE, 1.0, 12);
    for case in [CASES[0], CASES[1]] {
        let inputs = case.inputs();
        let n = inputs.len() - 1;
        let own: Vec<Tensor> =
            inputs[1..].iter().enumerate().map(|(k, t)| (t * (0.5 + 0.05 * k as f64)).unwrap()).collect();
        let all: Vec<Tensor> = inputs.iter().chain(&own).cloned().collect();
        let feats = [features(DType::F64), normal(&SHAPE, 1.0, 21), (normal(&SHAPE, 0.5, 22) + 0.1).unwrap()];
        let params = |t: &[Tensor]| [t[1..=n].to_vec(), t[n + 1..].to_vec(), t[1..=n].to_vec()];
        let sink = sink();
        let network = |t: &[Tensor]| {
            let blocks: Vec<SideBlock> = feats
                .iter()
                .zip(params(t))
                .map(|(f, p)| SideBlock { features: f.clone(), mixers: case.mixes(&p) })
                .collect();
            side_network(&t[0], &blocks, EPS, &sink)
        };
        let chained = |t: &[Tensor]| {
            let mut y = t[0].clone();
            for (f, p) in feats.iter().zip(params(t)) {
                y = side_update(f, &y, &case.mixes(&p), EPS, &sink)?;
            }
            Ok(y)
        };
        let err = max_rel_err(&network(&all).unwrap(), &chained(&all).unwrap(), 1e-12);
        assert!(err < 1e-12, "{case:?}: outputs {err:e}");
        let backward = |l: &Tensor| sink.backward(l);
        let (a, b) = (grads_via(&all, &probe, network, backward), grads_via(&all, &probe, chained, backward));
        for (k, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(max_rel_err(a, b, 1e-12) < 1e-12, "{case:?}: gradient of input {k}");
        }
        check_finite_differences_via(&all, &probe, network, backward);
    }
}

#[test]
fn side_network_refuses_what_does_not_fit() {
    let case = CASES[0];
    let inputs = case.inputs();
    let block = |features: Tensor, mixers: Vec<LowRankMix>| SideBlock { features, mixers };
    let good = block(features(DType::F64), case.mixes(&inputs[1..]));
    let cases = [
        (vec![], "there must be a block"),
        (vec![good.clone(), block(features(DType::F64), vec![])], "every block needs mixers"),
        (
            vec![good.clone(), block(normal(&[2, 5, 9], 1.0, 1), case.mixes(&inputs[1..]))],
            "block 1's features",
        ),
    ];
    for (blocks, fragment) in cases {
        let err = side_network(&inputs[0], &blocks, EPS, &sink()).unwrap_err().to_string();
        assert!(err.contains(fragment), "{err}");
    }
    let err = side_network(&inputs[0].flatten_all().unwrap(), &[good], EPS, &sink()).unwrap_err();
    assert!(err.to_string().contains("[batch, tokens, width]"), "{err}");
}

#[test]
fn side_update_refuses_features_and_stream_of_different_dtypes() {
    let case = CASES[0];
    let inputs = case.inputs();
    let err =
        side_update(&features(DType::F32), &inputs[0], &case.mixes(&inputs[1..]), EPS, &sink()).unwrap_err();
    assert!(err.to_string().contains("must be of one dtype"), "{err}");
}

/// The sink adds its gradients to those the graph gives a parameter read elsewhere too; plain
/// `backward()` gives the parameters none (the sink keeps them), and a later `GradSink::backward`
/// drops those instead of adding them twice.
#[test]
fn the_sink_adds_to_graph_gradients_and_drops_undelivered_ones() {
    let case = CASES[0];
    let inputs = case.inputs();
    let params: Vec<Var> = inputs[1..].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = params.iter().map(|v| v.as_tensor().clone()).collect();
    let y = Var::from_tensor(&inputs[0]).unwrap();
    let sink = sink();
    let side = || {
        let out = side_update(&features(DType::F64), y.as_tensor(), &case.mixes(&ts), EPS, &sink).unwrap();
        out.sqr().unwrap().sum_all().unwrap()
    };
    let alone = sink.backward(&side()).unwrap();
    // The first parameter (the first norm's scale) also enters the loss directly, times 2.
    let loss = (side() + (ts[0].sum_all().unwrap() * 2.0).unwrap()).unwrap();
    let plain = loss.backward().unwrap();
    assert!(plain.get(&ts[1]).is_none(), "a parameter's gradient went through the graph");
    let both = sink.backward(&loss).unwrap();
    let expected = (alone.get(&ts[0]).unwrap() + 2.0).unwrap();
    assert!(max_rel_err(both.get(&ts[0]).unwrap(), &expected, 1e-12) < 1e-14);
    for t in &ts[1..] {
        assert_eq!(values(both.get(t).unwrap()), values(alone.get(t).unwrap()), "added twice");
    }
    assert_eq!(values(both.get(y.as_tensor()).unwrap()), values(alone.get(y.as_tensor()).unwrap()));
}
