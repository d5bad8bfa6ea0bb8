//! The ViT block's fused ops (`softmax`, `split_heads`, `merge_heads`, `bias_residual`) against their
//! compositions from candle ops, values and gradients in every dtype, and finite differences in
//! f64.

use candle_core::{D, DType, Result, Tensor};

use super::tests::{check_finite_differences, grads_of, max_rel_err, normal, tolerance};
use super::{bias_residual, merge_heads, softmax, split_heads};

const DTYPES: [DType; 4] = [DType::F64, DType::F32, DType::F16, DType::BF16];

/// `softmax(scale · x)` as candle composes it (max, subtract, exp, sum, divide).
fn softmax_unfused(x: &Tensor, scale: f64) -> Result<Tensor> {
    candle_nn::ops::softmax(&(x * scale)?, D::Minus1)
}

/// `x + bias` split into heads as the block did before: bias pass, permute, contiguous copies.
fn split_heads_unfused(x: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, w3) = x.dims3()?;
    let hd = w3 / (3 * heads);
    x.broadcast_add(bias)?.reshape((b, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?.contiguous()
}

fn bias_residual_unfused(x: &Tensor, m: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x + m.broadcast_add(bias)?
}

/// Checks `fused` against `unfused` (in f64) on `inputs`: the value and every input's gradient of
/// `sum(f · probe)`, in every dtype.
fn check(
    what: &str,
    inputs: &[Tensor],
    probe: &Tensor,
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    unfused: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let reference = unfused(inputs).unwrap();
    let reference_grads = grads_of(inputs, probe, &unfused);
    for dtype in DTYPES {
        let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let (tol, floor) = tolerance(dtype);
        let err = max_rel_err(&fused(&cast).unwrap(), &reference, floor);
        assert!(err < tol, "{what} {dtype:?}: value {err:e}");
        for (k, (g, r)) in grads_of(&cast, probe, &fused).iter().zip(&reference_grads).enumerate() {
            // Bias gradients are sums over many rows: the floor of the dtype's tolerance.
            let err = max_rel_err(g, r, floor.max(tol));
            assert!(err < 2.0 * tol, "{what} {dtype:?}: gradient of input {k} {err:e}");
        }
    }
}

#[test]
fn softmax_matches_the_composition_in_every_dtype() {
    // Scores with a large offset (the max is subtracted) and rows of odd length.
    let x = (normal(&[2, 3, 7, 37], 2.0, 1) + 30.0).unwrap();
    let probe = normal(&[2, 3, 7, 37], 1.0, 2);
    let scale = 0.125;
    check(
        "softmax",
        std::slice::from_ref(&x),
        &probe,
        |t| softmax(&t[0], scale),
        |t| softmax_unfused(&t[0], scale),
    );
    check_finite_differences(&[x], &probe, |t| softmax(&t[0], scale));
    // Strided input: read through its layout.
    let t = normal(&[2, 37, 7], 1.0, 3).transpose(1, 2).unwrap();
    let err = max_rel_err(&softmax(&t, 1.0).unwrap(), &softmax_unfused(&t, 1.0).unwrap(), 1e-6);
    assert!(err < 1e-12, "{err:e}");
}

#[test]
fn split_heads_matches_the_composition_in_every_dtype() {
    let (heads, hd) = (3, 4);
    let inputs = [normal(&[2, 5, 3 * heads * hd], 1.0, 4), normal(&[3 * heads * hd], 0.5, 5)];
    let probe = normal(&[3, 2, heads, 5, hd], 1.0, 6);
    check(
        "split_heads",
        &inputs,
        &probe,
        |t| split_heads(&t[0], &t[1], heads),
        |t| split_heads_unfused(&t[0], &t[1], heads),
    );
    check_finite_differences(&inputs, &probe, |t| split_heads(&t[0], &t[1], heads));
    let err = split_heads(&inputs[0], &inputs[1], 5).unwrap_err().to_string();
    assert!(err.contains("does not split into 3 × 5 heads"), "{err}");
}

#[test]
fn merge_heads_matches_the_transposed_copy_in_every_dtype() {
    let (batch, heads, tokens, hd) = (2, 3, 5, 4);
    let x = normal(&[batch, heads, tokens, hd], 1.0, 11);
    let probe = normal(&[batch, tokens, heads * hd], 1.0, 12);
    check(
        "merge_heads",
        std::slice::from_ref(&x),
        &probe,
        |t| merge_heads(&t[0]),
        |t| t[0].transpose(1, 2)?.reshape((batch, tokens, heads * hd)),
    );
    check_finite_differences(std::slice::from_ref(&x), &probe, |t| merge_heads(&t[0]));
    // A strided input (attention's output is contiguous, but any layout is read through it).
    let t = normal(&[batch, tokens, heads, hd], 1.0, 13).transpose(1, 2).unwrap();
    let merged = merge_heads(&t).unwrap();
    assert_eq!(super::tests::values(&merged), super::tests::values(&t.transpose(1, 2).unwrap()));
}

#[test]
fn bias_residual_matches_the_composition_in_every_dtype() {
    let inputs = [normal(&[2, 5, 12], 1.0, 7), normal(&[2, 5, 12], 1.0, 8), normal(&[12], 0.5, 9)];
    let probe = normal(&[2, 5, 12], 1.0, 10);
    check(
        "bias_residual",
        &inputs,
        &probe,
        |t| bias_residual(&t[0], &t[1], &t[2]),
        |t| bias_residual_unfused(&t[0], &t[1], &t[2]),
    );
    check_finite_differences(&inputs, &probe, |t| bias_residual(&t[0], &t[1], &t[2]));
}
