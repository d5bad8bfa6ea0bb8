//! Each fused op against its unfused composition on random inputs (values and gradients, every
//! dtype), and its gradients against finite differences in f64.

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::{bias_gelu, layer_norm};
use crate::vit::seeded_normal;

/// The composition the differentiable ViT path used before the fused op.
pub(super) fn layer_norm_unfused(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(w)?.broadcast_add(b)
}

/// `gelu_erf(x + bias)`, the bias along `dim`.
fn bias_gelu_unfused(x: &Tensor, bias: &Tensor, dim: usize) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[dim] = bias.dim(0)?;
    x.broadcast_add(&bias.reshape(shape)?)?.gelu_erf()
}

pub(super) fn normal(shape: &[usize], std: f64, seed: u64) -> Tensor {
    seeded_normal(shape, std, seed, &Device::Cpu).unwrap()
}

pub(super) fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Largest |a − b| / (|b| + floor · max |b|) over the elements, which all must be finite: the
/// relative error, with a floor relative to the tensor's scale for elements near zero.
pub(super) fn max_rel_err(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0.0f64, |m, y| m.max(y.abs())) * floor + 1e-300;
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert!(x.is_finite(), "non-finite output {x}");
            (x - y).abs() / (scale + y.abs())
        })
        .fold(0.0, f64::max)
}

/// The inputs of the LayerNorm tests: x [3, 5, 48] with an offset (so the mean matters), weight
/// around 1, bias around 0, all f64.
fn ln_inputs() -> (Tensor, Tensor, Tensor) {
    let x = (normal(&[3, 5, 48], 2.0, 1) + 0.7).unwrap();
    let w = (normal(&[48], 0.3, 2) + 1.0).unwrap();
    (x, w, normal(&[48], 0.3, 3))
}

/// Gradients of `sum(f(inputs) · probe)` for each input, as f64.
pub(super) fn grads_of(
    inputs: &[Tensor],
    probe: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Vec<Tensor> {
    grads_via(inputs, probe, f, Tensor::backward)
}

/// [`grads_of`] with the gradient store that `backward` makes of the loss.
pub(super) fn grads_via(
    inputs: &[Tensor],
    probe: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    backward: impl Fn(&Tensor) -> Result<GradStore>,
) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let probe = probe.to_dtype(ts[0].dtype()).unwrap();
    let grads = backward(&(f(&ts).unwrap() * probe).unwrap().sum_all().unwrap()).unwrap();
    vars.iter().map(|v| grads.get(v.as_tensor()).expect("a gradient").to_dtype(DType::F64).unwrap()).collect()
}

/// Tolerance of each dtype against the f64 result: relative error, and the floor (a fraction of
/// the largest reference value) for elements near zero.
pub(super) fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-10, 1e-6),
        DType::F32 => (1e-4, 1e-3),
        DType::F16 => (1e-2, 5e-2),
        _ => (5e-2, 5e-2),
    }
}

#[test]
fn layer_norm_matches_the_composition_in_every_dtype() {
    let (x, w, b) = ln_inputs();
    let reference = layer_norm_unfused(&x, &w, &b, 1e-6).unwrap();
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let fused = layer_norm(&cast(&x), &cast(&w), &cast(&b), 1e-6).unwrap();
        assert_eq!(fused.dtype(), dtype);
        let (tol, floor) = tolerance(dtype);
        let err = max_rel_err(&fused, &reference, floor);
        assert!(err <= tol, "{dtype:?}: relative error {err} > {tol}");
    }
    // In f32, the fused op (f32 throughout, like the composition) is no less accurate than the
    // composition, and the two agree to f32 rounding of the normalised values.
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let fused = layer_norm(&f(&x), &f(&w), &f(&b), 1e-6).unwrap();
    let unfused = layer_norm_unfused(&f(&x), &f(&w), &f(&b), 1e-6).unwrap();
    let (fused_err, unfused_err) =
        (max_rel_err(&fused, &reference, 1e-3), max_rel_err(&unfused, &reference, 1e-3));
    assert!(fused_err <= unfused_err * 1.5, "fused {fused_err} against unfused {unfused_err}");
    let err = max_rel_err(&fused, &unfused, 1e-3);
    assert!(err <= 5e-5, "f32 against the f32 composition: {err}");
}

#[test]
fn layer_norm_takes_strided_inputs() {
    let (x, w, b) = ln_inputs();
    let xt = x.transpose(0, 1).unwrap();
    let err = max_rel_err(
        &layer_norm(&xt, &w, &b, 1e-5).unwrap(),
        &layer_norm_unfused(&xt, &w, &b, 1e-5).unwrap(),
        1e-6,
    );
    assert!(err <= 1e-10, "{err}");
}

#[test]
fn layer_norm_gradients_match_the_composition_in_every_dtype() {
    let (x, w, b) = ln_inputs();
    let probe = normal(&[3, 5, 48], 1.0, 4);
    let inputs = [x, w, b];
    let reference = grads_of(&inputs, &probe, |t| layer_norm_unfused(&t[0], &t[1], &t[2], 1e-6));
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let fused = grads_of(&cast, &probe, |t| layer_norm(&t[0], &t[1], &t[2], 1e-6));
        let (tol, floor) = tolerance(dtype);
        for (name, (f, r)) in ["x", "weight", "bias"].iter().zip(fused.iter().zip(&reference)) {
            let err = max_rel_err(f, r, floor);
            assert!(err <= tol, "{dtype:?} d{name}: relative error {err} > {tol}");
        }
    }
}

#[test]
fn a_frozen_layer_norm_passes_gradients_to_its_input_only() {
    let (x, w, b) = ln_inputs();
    let xv = Var::from_tensor(&x).unwrap();
    let grads = layer_norm(xv.as_tensor(), &w, &b, 1e-6).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(xv.as_tensor()).is_some());
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
}

/// Central differences of `sum(f(inputs) · probe)` at a few elements of every input.
pub(super) fn check_finite_differences(
    inputs: &[Tensor],
    probe: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    check_finite_differences_via(inputs, probe, f, Tensor::backward)
}

/// [`check_finite_differences`] with the analytic gradients from the store `backward` makes.
pub(super) fn check_finite_differences_via(
    inputs: &[Tensor],
    probe: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    backward: impl Fn(&Tensor) -> Result<GradStore>,
) {
    let analytic = grads_via(inputs, probe, &f, backward);
    let loss =
        |ts: &[Tensor]| (f(ts).unwrap() * probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    for (k, input) in inputs.iter().enumerate() {
        let base = values(input);
        let grad = values(&analytic[k]);
        assert!(grad.iter().any(|g| g.abs() > 1e-8), "input {k}: zero gradient");
        for idx in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                let mut ts = inputs.to_vec();
                ts[k] = Tensor::from_vec(v, input.shape(), &Device::Cpu).unwrap();
                loss(&ts)
            };
            let eps = 1e-6;
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let tol = 1e-6 + 1e-5 * numeric.abs().max(grad[idx].abs());
            assert!(
                (numeric - grad[idx]).abs() <= tol,
                "input {k}[{idx}]: analytic {} vs numeric {numeric}",
                grad[idx]
            );
        }
    }
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let (x, w, b) = ln_inputs();
    let probe = normal(&[3, 5, 48], 1.0, 5);
    check_finite_differences(&[x, w, b], &probe, |t| layer_norm(&t[0], &t[1], &t[2], 1e-6));
}

#[test]
fn bias_gelu_matches_the_composition_in_every_dtype_along_any_dimension() {
    for (dim, bias_len) in [(2, 24), (1, 5)] {
        let x = normal(&[3, 5, 24], 1.5, 6);
        let bias = normal(&[bias_len], 0.5, 7);
        let reference = bias_gelu_unfused(&x, &bias, dim).unwrap();
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let fused = bias_gelu(&x.to_dtype(dtype).unwrap(), &bias.to_dtype(dtype).unwrap(), dim).unwrap();
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&fused, &reference, floor);
            assert!(err <= tol, "dim {dim} {dtype:?}: relative error {err} > {tol}");
        }
        // In f32 the same formula on the same f32 sum: identical.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (a, b) =
            (bias_gelu(&f(&x), &f(&bias), dim).unwrap(), bias_gelu_unfused(&f(&x), &f(&bias), dim).unwrap());
        assert_eq!(values(&a), values(&b), "dim {dim}: f32 differs from candle's gelu_erf");
    }
}

#[test]
fn bias_gelu_gradients_match_the_composition_and_finite_differences() {
    for (dim, bias_len) in [(2, 24), (1, 5)] {
        let inputs = [normal(&[3, 5, 24], 1.5, 8), normal(&[bias_len], 0.5, 9)];
        let probe = normal(&[3, 5, 24], 1.0, 10);
        let reference = grads_of(&inputs, &probe, |t| bias_gelu_unfused(&t[0], &t[1], dim));
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            let fused = grads_of(&cast, &probe, |t| bias_gelu(&t[0], &t[1], dim));
            let (tol, floor) = tolerance(dtype);
            for (name, (f, r)) in ["x", "bias"].iter().zip(fused.iter().zip(&reference)) {
                // candle's own gelu_erf gradient uses 1/√(2π) ≈ 0.398942 (6 digits): about 1e-6
                // relative, and more where the derivative crosses zero (v ≈ −0.75). The finite
                // differences below check this op's gradient to 1e-5 on their own.
                let (tol, floor) = (tol.max(2e-6), floor.max(0.1));
                let err = max_rel_err(f, r, floor);
                assert!(err <= tol, "dim {dim} {dtype:?} d{name}: relative error {err} > {tol}");
            }
        }
        check_finite_differences(&inputs, &probe, |t| bias_gelu(&t[0], &t[1], dim));
    }
}

/// AdamW as composed from candle ops (the optimiser before the fused update): `(p, m, v)`.
fn adamw_unfused(
    p: &Tensor,
    g: &Tensor,
    mv: Option<(&Tensor, &Tensor)>,
    h: &super::AdamWStep,
    weight_decay: f64,
    clip: f64,
) -> [Tensor; 3] {
    let [b1, b2] = h.betas;
    let g = (g * clip).unwrap();
    let (m, v) = match mv {
        Some((m, v)) => (
            ((m * b1).unwrap() + (&g * (1.0 - b1)).unwrap()).unwrap(),
            ((v * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap(),
        ),
        None => ((&g * (1.0 - b1)).unwrap(), (g.sqr().unwrap() * (1.0 - b2)).unwrap()),
    };
    let t = h.step as i32;
    let denom = ((v.sqrt().unwrap() / (1.0 - b2.powi(t)).sqrt()).unwrap() + h.eps).unwrap();
    let decayed = (p * (1.0 - h.lr * weight_decay)).unwrap();
    let p = (decayed - ((&m / denom).unwrap() * (h.lr / (1.0 - b1.powi(t)))).unwrap()).unwrap();
    [p, m, v]
}

#[test]
fn adamw_update_matches_the_composition_exactly_in_place() {
    // Parameters of two dtypes and two weight decays in one update; 40 001 elements is more than
    // one CPU task takes, and odd, so the chunks end mid-way.
    let specs =
        [(40_001, DType::F32, 0.05), (7, DType::F64, 0.0), (40_001, DType::F64, 0.05), (3, DType::F32, 0.0)];
    let params: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, &(n, dtype, _))| {
            let p = Var::from_tensor(&normal(&[n], 1.0, 1 + i as u64).to_dtype(dtype).unwrap()).unwrap();
            let state = Tensor::zeros((2, n), dtype, &Device::Cpu).unwrap();
            (p.as_tensor().copy().unwrap(), p, state)
        })
        .collect();
    let mut reference: Vec<(Tensor, Option<(Tensor, Tensor)>)> =
        params.iter().map(|(p0, ..)| (p0.clone(), None)).collect();
    for (step, clip) in [(1u64, 1.0), (2, 0.7), (3, 1.0)] {
        let grads: Vec<Tensor> = specs
            .iter()
            .enumerate()
            .map(|(i, &(n, dtype, _))| {
                (normal(&[n], 0.1, 10 * step + i as u64) + 0.01).unwrap().to_dtype(dtype).unwrap()
            })
            .collect();
        let h = super::AdamWStep { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, step };
        let slots: Vec<_> = params
            .iter()
            .zip(&grads)
            .zip(&specs)
            .map(|(((_, p, state), grad), &(.., weight_decay))| super::AdamWParam {
                param: p.as_tensor(),
                grad,
                state,
                weight_decay,
            })
            .collect();
        super::adamw_update(&slots, &Tensor::new(&[clip], &Device::Cpu).unwrap(), &h).unwrap();
        for (k, (((_, p, state), g), &(_, dtype, wd))) in params.iter().zip(&grads).zip(&specs).enumerate() {
            let (r, mv) = &reference[k];
            let [rp, rm, rv] = adamw_unfused(r, g, mv.as_ref().map(|(m, v)| (m, v)), &h, wd, clip);
            let at = format!("parameter {k} ({dtype:?}) step {step}");
            assert_eq!(values(p.as_tensor()), values(&rp), "{at}: parameter");
            assert_eq!(values(&state.get(0).unwrap()), values(&rm), "{at}: first moment");
            assert_eq!(values(&state.get(1).unwrap()), values(&rv), "{at}: second moment");
            reference[k] = (rp, Some((rm, rv)));
        }
    }
}

#[test]
fn adamw_update_refuses_what_does_not_fit() {
    let p = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
    let h = super::AdamWStep { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, step: 1 };
    let one = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
    let state = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
    // A parameter that fits goes first: the checks must come before any update.
    let (q, q_state) = (p.copy().unwrap(), state.copy().unwrap());
    let update = |g: &Tensor, st: &Tensor, clip: &Tensor, h: &super::AdamWStep| {
        let fits = super::AdamWParam { param: &q, grad: &q, state: &q_state, weight_decay: 0.0 };
        let slot = super::AdamWParam { param: &p, grad: g, state: st, weight_decay: 0.0 };
        super::adamw_update(&[fits, slot], clip, h).unwrap_err().to_string()
    };
    let cases = [
        (Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(), state.clone(), one.clone(), "do not fit"),
        (p.clone(), Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap(), one.clone(), "do not fit"),
        (p.to_dtype(DType::F64).unwrap(), state.clone(), one.clone(), "different dtypes"),
        (p.clone(), state.t().unwrap().contiguous().unwrap().t().unwrap(), one.clone(), "contiguous"),
        (p.clone(), state.clone(), one.to_dtype(DType::F32).unwrap(), "one f64"),
    ];
    for (g, state, clip, fragment) in cases {
        let err = update(&g, &state, &clip, &h);
        assert!(err.contains(fragment), "{err}");
    }
    let err = update(&p, &state, &one, &super::AdamWStep { step: 0, ..h });
    assert!(err.contains("from 1"), "{err}");
    assert_eq!(values(&q_state), vec![0.0; 12], "nothing is updated when a parameter does not fit");
}

/// Each dtype once, in order of first appearance (the grouping of the multi-tensor launches).
#[test]
fn distinct_keeps_each_dtype_once_in_order() {
    let dtypes = [DType::F32, DType::F32, DType::BF16, DType::F32, DType::F64, DType::BF16];
    assert_eq!(super::distinct(dtypes), vec![DType::F32, DType::BF16, DType::F64]);
    assert_eq!(super::distinct([]), Vec::<DType>::new());
}

/// `cast_all` gives what candle's cast of each tensor gives, detached, and leaves tensors already
/// in the dtype as they are.
#[test]
fn cast_all_casts_each_tensor_as_candle_does() {
    let var = Var::from_tensor(&normal(&[3, 5], 1.0, 1)).unwrap();
    let tensors =
        [var.as_tensor().clone(), normal(&[7], 1.0, 2).to_dtype(DType::F64).unwrap(), normal(&[0], 1.0, 3)];
    for dtype in [DType::BF16, DType::F16, DType::F32, DType::F64] {
        let cast = super::cast_all(&tensors, dtype).unwrap();
        for (t, c) in tensors.iter().zip(&cast) {
            assert_eq!((c.dtype(), c.dims()), (dtype, t.dims()));
            assert!(!c.track_op(), "a cast result must be detached");
            let expected = t.to_dtype(dtype).unwrap();
            assert_eq!(values(c), values(&expected), "{:?} to {dtype:?}", t.dtype());
        }
    }
}

/// Bias gradients (`sum_along`) against f64 sums of the same (rounded) values: the one-pass column
/// sums for a bias along the last dimension, over row counts around and across its chunking.
#[test]
fn sum_along_matches_f64_sums_of_the_same_values() {
    for (shape, channels, inner) in [
        (vec![1, 5], 5, 1),
        (vec![63, 33], 33, 1),
        (vec![2, 32, 3], 3, 1),
        (vec![65, 7], 7, 1),
        (vec![4100, 3], 3, 1),
        (vec![3, 4, 5], 4, 5),
        // LoSA's token-mixer bias: [batch, rank, width], more chunks than rows per chunk.
        (vec![40, 8, 97], 8, 97),
        (vec![300, 3, 2], 3, 2),
    ] {
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let t = normal(&shape, 1.0, 21).to_dtype(dtype).unwrap();
            let got = super::sum_along(&t, channels, inner).unwrap();
            assert_eq!(got.dtype(), if dtype == DType::F64 { DType::F64 } else { DType::F32 });
            let x = values(&t);
            let outer = x.len() / (channels * inner);
            let (mut sums, mut scale) = (vec![0.0; channels], vec![0.0; channels]);
            for (i, v) in x.iter().enumerate() {
                let c = (i / inner) % channels;
                sums[c] += v;
                scale[c] += v.abs();
            }
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (c, (g, r)) in values(&got).iter().zip(&sums).enumerate() {
                assert!(
                    (g - r).abs() <= tol * scale[c],
                    "{shape:?} {dtype:?} channel {c}: {g} vs {r} ({outer} rows)"
                );
            }
        }
    }
}

/// The norm's input gradient with a tensor added in the same pass (LoSA's side block adds the
/// stream's gradient so) is the gradient plus that tensor, rounded once, in every dtype; a tensor
/// of another shape is refused.
#[test]
fn layer_norm_dx_adds_a_tensor_in_the_same_pass() {
    let (x, w, _) = ln_inputs();
    let (g, add) = (normal(x.dims(), 1.0, 21), normal(x.dims(), 1.0, 22));
    let reference = (super::layer_norm::layer_norm_dx(&x, &w, &g, None, 1e-6).unwrap() + &add).unwrap();
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let out = super::layer_norm::layer_norm_dx(&c(&x), &c(&w), &c(&g), Some(&c(&add)), 1e-6).unwrap();
        let (tol, floor) = tolerance(dtype);
        let err = max_rel_err(&out, &reference, floor);
        assert!(err <= tol, "{dtype:?}: relative error {err} > {tol}");
    }
    let wrong = normal(&[3, 5, 47], 1.0, 23);
    let err = super::layer_norm::layer_norm_dx(&x, &w, &g, Some(&wrong), 1e-6).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
}

/// The norm's gradients for a low-rank output gradient (LoSA's `dpre·Wd` and `Wdᵀ·dpre`, the weight
/// passed transposed as ops/side.rs passes it) are those of the product written out, in every
/// dtype; a product that does not fit the input is refused.
#[test]
fn layer_norm_grads_read_a_low_rank_gradient_as_its_product() {
    use super::layer_norm::layer_norm_grads;
    use super::{LowRank, Operand};
    use crate::recipe::Mixer;
    let (x, w, _) = ln_inputs();
    let (batch, tokens, width) = x.dims3().unwrap();
    let (rank, add) = (3, normal(x.dims(), 1.0, 24));
    let cases = [
        (Mixer::Channel, normal(&[rank, width], 0.5, 25), normal(&[batch, tokens, rank], 1.0, 26)),
        (Mixer::Token, normal(&[rank, tokens], 0.5, 27), normal(&[batch, rank, width], 1.0, 28)),
    ];
    for (axis, down, dpre) in &cases {
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (x, w, add, down, dpre) = (c(&x), c(&w), c(&add), c(down), c(dpre));
            let down_t = down.t().unwrap();
            let lr = LowRank { axis: *axis, weight: &down_t, act: &dpre };
            let dense = match axis {
                Mixer::Channel => dpre.broadcast_matmul(&down),
                Mixer::Token => down_t.broadcast_matmul(&dpre),
            }
            .unwrap();
            let reference = layer_norm_grads(&x, &w, Operand::Dense(&dense), Some(&add), 1e-6).unwrap();
            let out = layer_norm_grads(&x, &w, lr.into(), Some(&add), 1e-6).unwrap();
            for (name, (o, r)) in ["dx", "dw", "db"].iter().zip([
                (&out.0, &reference.0),
                (&out.1, &reference.1),
                (&out.2, &reference.2),
            ]) {
                let (tol, floor) = tolerance(dtype);
                let err = max_rel_err(o, r, floor);
                assert!(err <= tol, "{axis:?} {dtype:?} {name}: {err:e}");
            }
        }
    }
    let (down, dpre) = (normal(&[rank, width], 0.5, 25), normal(&[batch, tokens + 1, rank], 1.0, 26));
    let down_t = down.t().unwrap();
    let lr = LowRank { axis: Mixer::Channel, weight: &down_t, act: &dpre };
    let err = layer_norm_grads(&x, &w, lr.into(), None, 1e-6).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}

/// A channel mixer's norm and down-projection in one op equal the norm's output (rounded to the
/// dtype) times the projection, shared or one per image, in every dtype, for widths on and off
/// the kernels' vector path; inputs that do not fit, or need a gradient, are refused.
#[test]
fn layer_norm_down_is_the_norm_then_the_projection() {
    use super::norm_down::layer_norm_down;
    for (width, rank) in [(48, 3), (10, 1), (64, 8)] {
        let x = (normal(&[3, 5, width], 2.0, 31) + 0.7).unwrap();
        let (w, b) = ((normal(&[width], 0.3, 32) + 1.0).unwrap(), normal(&[width], 0.3, 33));
        let shared = normal(&[rank, width], 0.4, 34);
        let per_image = normal(&[3, rank, width], 0.4, 36);
        for (down, dtype) in [&shared, &per_image]
            .into_iter()
            .flat_map(|d| [DType::F64, DType::F32, DType::F16, DType::BF16].map(|t| (d, t)))
        {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (x, w, b, down) = (c(&x), c(&w), c(&b), c(down));
            let normed = super::layer_norm(&x, &w, &b, 1e-6).unwrap();
            let reference = normed.broadcast_matmul(&down.transpose(D::Minus1, D::Minus2).unwrap()).unwrap();
            let out = layer_norm_down(&x, &w, &b, &down, 1e-6).unwrap();
            assert_eq!(out.dims(), [3, 5, rank]);
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&out, &reference, floor);
            assert!(err <= tol, "width {width} rank {rank} {:?} {dtype:?}: {err:e}", down.dims());
        }
    }
    let (x, w, b) = ln_inputs();
    let err = layer_norm_down(&x, &w, &b, &normal(&[2, 47], 1.0, 35), 1e-6).unwrap_err().to_string();
    assert!(err.contains("down [2, 47] must be [rank, 48] or [3, rank, 48]"), "{err}");
    // A projection per image needs one for each of the 3 images.
    let err = layer_norm_down(&x, &w, &b, &normal(&[2, 2, 48], 1.0, 35), 1e-6).unwrap_err().to_string();
    assert!(err.contains("down [2, 2, 48] must be"), "{err}");
    let err = layer_norm_down(&x, &normal(&[47], 1.0, 36), &b, &normal(&[2, 48], 1.0, 35), 1e-6);
    assert!(err.unwrap_err().to_string().contains("weight [47] and bias [48] do not fit rows of 48"));
    let v = Var::from_tensor(&w).unwrap();
    let err =
        layer_norm_down(&x, v.as_tensor(), &b, &normal(&[2, 48], 1.0, 35), 1e-6).unwrap_err().to_string();
    assert!(err.contains("has no backward"), "{err}");
}
