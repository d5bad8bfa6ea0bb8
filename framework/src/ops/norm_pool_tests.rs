//! `layer_norm_pool` against the composition it replaces (norm, narrow, mean), in every dtype and
//! for each pooled range, and its input gradient against finite differences.

use std::ops::Range;

use candle_core::{DType, Result, Tensor, Var};

use super::layer_norm_pool;
use super::tests::{check_finite_differences, grads_of, layer_norm_unfused, max_rel_err, normal, tolerance};

/// x [3, 5, 48] with an offset, a scale around 1 and a shift around 0, all f64.
fn inputs() -> (Tensor, Tensor, Tensor) {
    let x = (normal(&[3, 5, 48], 2.0, 11) + 0.7).unwrap();
    let w = (normal(&[48], 0.3, 12) + 1.0).unwrap();
    (x, w, normal(&[48], 0.3, 13))
}

/// The composition: the norm over every token, then the mean over the pooled ones.
fn unfused(x: &Tensor, w: &Tensor, b: &Tensor, tokens: &Range<usize>) -> Result<Tensor> {
    layer_norm_unfused(x, w, b, 1e-6)?.narrow(1, tokens.start, tokens.len())?.mean(1)
}

/// The pooled ranges of the tests: the patch tokens (mean pool), the class token, every token.
const RANGES: [Range<usize>; 3] = [1..5, 0..1, 0..5];

/// The dtype the op computes in and returns, for an input of `dtype` (the head's parameters).
fn acc(dtype: DType) -> DType {
    if dtype == DType::F64 { DType::F64 } else { DType::F32 }
}

#[test]
fn layer_norm_pool_matches_the_composition_in_every_dtype() {
    let (x, w, b) = inputs();
    for tokens in RANGES {
        let reference = unfused(&x, &w, &b, &tokens).unwrap();
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let (wc, bc) = (w.to_dtype(acc(dtype)).unwrap(), b.to_dtype(acc(dtype)).unwrap());
            let pooled =
                layer_norm_pool(&x.to_dtype(dtype).unwrap(), &wc, &bc, 1e-6, tokens.clone()).unwrap();
            assert_eq!((pooled.dims(), pooled.dtype()), (&[3, 48][..], acc(dtype)));
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&pooled, &reference, floor);
            assert!(err <= tol, "{dtype:?} {tokens:?}: relative error {err} > {tol}");
        }
    }
    // In f32 it is no less accurate than the f32 composition (the sums of the normalised rows in
    // f32, as the composition's mean).
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let reference = unfused(&x, &w, &b, &(1..5)).unwrap();
    let fused = layer_norm_pool(&f(&x), &f(&w), &f(&b), 1e-6, 1..5).unwrap();
    let composed = unfused(&f(&x), &f(&w), &f(&b), &(1..5)).unwrap();
    let (fused_err, composed_err) =
        (max_rel_err(&fused, &reference, 1e-3), max_rel_err(&composed, &reference, 1e-3));
    assert!(fused_err <= composed_err * 1.5, "fused {fused_err} against composed {composed_err}");
}

#[test]
fn layer_norm_pool_input_gradients_match_the_composition_and_finite_differences() {
    let (x, w, b) = inputs();
    let probe = normal(&[3, 48], 1.0, 14);
    for tokens in RANGES {
        let reference = grads_of(std::slice::from_ref(&x), &probe, |t| unfused(&t[0], &w, &b, &tokens));
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let (wc, bc) = (w.to_dtype(acc(dtype)).unwrap(), b.to_dtype(acc(dtype)).unwrap());
            let probe = probe.to_dtype(acc(dtype)).unwrap();
            let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let pooled = layer_norm_pool(xv.as_tensor(), &wc, &bc, 1e-6, tokens.clone()).unwrap();
            let grads = (pooled * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(xv.as_tensor()).expect("an input gradient");
            assert_eq!(dx.dtype(), dtype);
            // The tokens outside the range get exactly zero.
            let outside: f64 = (0..5)
                .filter(|t| !tokens.contains(t))
                .map(|t| dx.narrow(1, t, 1).unwrap().abs().unwrap().to_dtype(DType::F64).unwrap())
                .map(|a| a.sum_all().unwrap().to_scalar::<f64>().unwrap())
                .sum();
            assert_eq!(outside, 0.0, "{dtype:?} {tokens:?}");
            let (tol, floor) = tolerance(dtype);
            let err = max_rel_err(&dx.to_dtype(DType::F64).unwrap(), &reference[0], floor);
            assert!(err <= tol, "{dtype:?} {tokens:?} dx: relative error {err} > {tol}");
        }
        check_finite_differences(std::slice::from_ref(&x), &probe, |t| {
            layer_norm_pool(&t[0], &w, &b, 1e-6, tokens.clone())
        });
    }
}

#[test]
fn a_trainable_norm_is_composed_and_gets_its_gradients() {
    let (x, w, b) = inputs();
    let probe = normal(&[3, 48], 1.0, 15);
    let f = |t: &[Tensor]| layer_norm_pool(&t[0], &t[1], &t[2], 1e-6, 1..5);
    let reference =
        grads_of(&[x.clone(), w.clone(), b.clone()], &probe, |t| unfused(&t[0], &t[1], &t[2], &(1..5)));
    let pooled = grads_of(&[x.clone(), w.clone(), b.clone()], &probe, f);
    for (name, (p, r)) in ["x", "weight", "bias"].iter().zip(pooled.iter().zip(&reference)) {
        let err = max_rel_err(p, r, 1e-6);
        assert!(err <= 1e-10, "d{name}: {err}");
    }
}

#[test]
fn layer_norm_pool_refuses_what_does_not_fit() {
    let (x, w, b) = inputs();
    let err =
        |tokens: Range<usize>, w: &Tensor| layer_norm_pool(&x, w, &b, 1e-6, tokens).unwrap_err().to_string();
    assert!(err(0..0, &w).contains("tokens 0..0 of a sequence of 5"), "{}", err(0..0, &w));
    assert!(err(2..6, &w).contains("tokens 2..6"), "{}", err(2..6, &w));
    assert!(err(0..5, &w.narrow(0, 0, 47).unwrap()).contains("must be [48]"));
    assert!(layer_norm_pool(&x.get(0).unwrap(), &w, &b, 1e-6, 0..1).is_err());
    let empty = x.narrow(2, 0, 0).unwrap();
    let none = w.narrow(0, 0, 0).unwrap();
    let err = layer_norm_pool(&empty, &none, &none, 1e-6, 0..1).unwrap_err().to_string();
    assert!(err.contains("width 0"), "{err}");
}
