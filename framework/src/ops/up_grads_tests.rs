//! `channel_up_grads` against its maths element by element in f64 and against the composition it
//! replaced, in every dtype, with and without a mask, at ranks below, at and past the CUDA kernel's
//! chunk of eight; and its refusals. And the token mixer's counterpart, `bias_gelu_grads` along a
//! middle dimension, against f64.

use candle_core::{DType, Device, Tensor, Var};

use super::bias_gelu::bias_gelu_grads;
use super::tests::{max_rel_err, normal, tolerance, values};
use super::{channel_up_grads, channel_up_grads_composed};

/// `dm [rows, width]`, `up [width, rank]`, `pre [rows, rank]`, `bd [rank]`, a dropout mask `[rows,
/// rank]` (zeros and 2), all f64.
fn inputs(rows: usize, width: usize, rank: usize, seed: u64) -> [Tensor; 5] {
    let keep = normal(&[rows, rank], 1.0, seed + 4).ge(0.0).unwrap().to_dtype(DType::F64).unwrap();
    [
        normal(&[rows, width], 1.0, seed),
        normal(&[width, rank], 0.2, seed + 1),
        normal(&[rows, rank], 1.0, seed + 2),
        normal(&[rank], 0.5, seed + 3),
        (keep * 2.0).unwrap(),
    ]
}

/// `(dpre, Σ dpre, Σ dm)` element by element in f64 from the inputs' values.
fn reference(inputs: &[Tensor; 5], masked: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (rows, width) = inputs[0].dims2().unwrap();
    let rank = inputs[3].dim(0).unwrap();
    let [dm, up, pre, bd, mask] = inputs.each_ref().map(values);
    let gelu_grad = |v: f64| {
        0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2))
            + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
    };
    let (mut dpre, mut bd_sum, mut bu_sum) = (vec![0.0; rows * rank], vec![0.0; rank], vec![0.0; width]);
    for r in 0..rows {
        for c in 0..width {
            bu_sum[c] += dm[r * width + c];
        }
        for j in 0..rank {
            let da: f64 = (0..width).map(|c| dm[r * width + c] * up[c * rank + j]).sum();
            let m = if masked { mask[r * rank + j] } else { 1.0 };
            let v = gelu_grad(pre[r * rank + j] + bd[j]) * da * m;
            dpre[r * rank + j] = v;
            bd_sum[j] += v;
        }
    }
    (dpre, bd_sum, bu_sum)
}

fn erf(v: f64) -> f64 {
    candle_core::cpu::erf::erf_f64(v)
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn channel_up_grads_match_an_f64_reference_in_every_dtype() {
    // Ranks below, at and past a CUDA block's eight; widths of whole vectors and not; more rows
    // than the CPU's runs of 64.
    for (rows, width, rank) in [(5, 48, 3), (70, 10, 8), (131, 64, 11), (1, 8, 1)] {
        let x = inputs(rows, width, rank, (rows * width + rank) as u64);
        for masked in [false, true] {
            let (dpre, bd_sum, bu_sum) = reference(&x, masked);
            let (dpre, bd_sum, bu_sum) =
                (tensor(dpre, &[rows, rank]), tensor(bd_sum, &[rank]), tensor(bu_sum, &[width]));
            for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
                let [dm, up, pre, bd, mask] = x.each_ref().map(|t| t.to_dtype(dtype).unwrap());
                // The reference from the values as rounded to the dtype.
                let rounded = [&dm, &up, &pre, &bd, &mask].map(|t| t.to_dtype(DType::F64).unwrap());
                let (want, want_bd, want_bu) = reference(&rounded, masked);
                let (want, want_bd, want_bu) =
                    (tensor(want, &[rows, rank]), tensor(want_bd, &[rank]), tensor(want_bu, &[width]));
                let g = channel_up_grads(&dm, &up, &pre, &bd, masked.then_some(&mask), true, true).unwrap();
                let (tol, floor) = tolerance(dtype);
                let case = format!("{rows}×{width} rank {rank} {dtype:?} masked {masked}");
                assert_eq!(g.dpre.dtype(), dtype, "{case}");
                let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
                let (d_bd, d_bu) = (g.down_bias.unwrap(), g.up_bias.unwrap());
                assert_eq!((d_bd.dtype(), d_bu.dtype()), (wide, wide), "{case}");
                let err = max_rel_err(&g.dpre, &want, floor);
                assert!(err < tol, "{case}: dpre off by {err}");
                // The sums in the accumulation dtype: within f32's (or f64's) rounding.
                let sum_tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
                assert!(max_rel_err(&d_bd, &want_bd, 1e-3) < sum_tol, "{case}: Σ dpre");
                assert!(max_rel_err(&d_bu, &want_bu, 1e-3) < sum_tol, "{case}: Σ dm");
                if dtype == DType::F64 {
                    // And the rounded inputs are the inputs: the plain reference holds too.
                    assert!(max_rel_err(&g.dpre, &dpre, 1e-6) < 1e-10, "{case}");
                    assert!(max_rel_err(&d_bd, &bd_sum, 1e-6) < 1e-10, "{case}");
                    assert!(max_rel_err(&d_bu, &bu_sum, 1e-6) < 1e-10, "{case}");
                }
            }
        }
    }
}

#[test]
fn channel_up_grads_match_the_composition_they_replace() {
    // The half types: f32 and f64 take the composition on the CPU.
    let x = inputs(97, 48, 8, 5);
    for dtype in [DType::F16, DType::BF16] {
        let [dm, up, pre, bd, mask] = x.each_ref().map(|t| t.to_dtype(dtype).unwrap());
        let c = channel_up_grads_composed(&dm, &up, &pre, &bd, Some(&mask), true, true).unwrap();
        let (dpre, bd_sum, bu_sum) = (c.dpre, c.down_bias.unwrap(), c.up_bias.unwrap());
        let g = channel_up_grads(&dm, &up, &pre, &bd, Some(&mask), true, true).unwrap();
        // bf16: the composition rounded dm·Wu to bf16 before the activation's gradient.
        let (tol, floor) = tolerance(dtype);
        assert!(max_rel_err(&g.dpre, &dpre, floor) < tol, "{dtype:?}");
        assert!(max_rel_err(&g.down_bias.unwrap(), &bd_sum, floor) < tol, "{dtype:?}");
        assert!(max_rel_err(&g.up_bias.unwrap(), &bu_sum, 1e-3) < 1e-5, "{dtype:?}");
        // Computed apart, not the composition again: dm·Wu is not rounded before the activation's
        // gradient.
        assert_ne!(values(&g.dpre), values(&dpre), "{dtype:?}");
    }
}

#[test]
fn channel_up_grads_compute_only_the_sums_asked_for() {
    let [dm, up, pre, bd, _] = inputs(9, 16, 4, 7).map(|t| t.to_dtype(DType::BF16).unwrap());
    let full = channel_up_grads(&dm, &up, &pre, &bd, None, true, true).unwrap();
    for (down_bias, up_bias) in [(false, false), (true, false), (false, true)] {
        let g = channel_up_grads(&dm, &up, &pre, &bd, None, down_bias, up_bias).unwrap();
        assert_eq!(values(&g.dpre), values(&full.dpre));
        assert_eq!(g.down_bias.is_some(), down_bias);
        assert_eq!(g.up_bias.is_some(), up_bias);
        if let Some(d) = g.down_bias {
            assert_eq!(values(&d), values(full.down_bias.as_ref().unwrap()));
        }
        if let Some(d) = g.up_bias {
            assert_eq!(values(&d), values(full.up_bias.as_ref().unwrap()));
        }
    }
}

#[test]
fn channel_up_grads_refuse_what_does_not_fit() {
    let [dm, up, pre, bd, mask] = inputs(6, 12, 3, 9).map(|t| t.to_dtype(DType::F32).unwrap());
    let err = |r: candle_core::Result<super::UpGrads>| r.unwrap_err().to_string();
    let wrong_up = up.narrow(0, 0, 11).unwrap();
    assert!(err(channel_up_grads(&dm, &wrong_up, &pre, &bd, None, true, true)).contains("up [11, 3]"));
    let wrong_pre = pre.narrow(0, 0, 5).unwrap();
    assert!(err(channel_up_grads(&dm, &up, &wrong_pre, &bd, None, true, true)).contains("pre [5, 3]"));
    let wrong_mask = mask.narrow(1, 0, 2).unwrap();
    assert!(
        err(channel_up_grads(&dm, &up, &pre, &bd, Some(&wrong_mask), true, true)).contains("mask [6, 2]")
    );
    let bf16 = bd.to_dtype(DType::BF16).unwrap();
    assert!(err(channel_up_grads(&dm, &up, &pre, &bf16, None, true, true)).contains("different dtypes"));
    let var = Var::from_tensor(&up).unwrap();
    assert!(err(channel_up_grads(&dm, var.as_tensor(), &pre, &bd, None, true, true)).contains("no backward"));
    // Strided inputs are taken (made contiguous).
    let strided = dm.t().unwrap().contiguous().unwrap().t().unwrap();
    let a = channel_up_grads(&strided, &up, &pre, &bd, None, true, true).unwrap();
    let b = channel_up_grads(&dm, &up, &pre, &bd, None, true, true).unwrap();
    assert_eq!(values(&a.dpre), values(&b.dpre));
}

#[test]
fn bias_gelu_grads_mask_and_sum_along_a_middle_dimension_as_f64_does() {
    // A token mixer's [batch, rank, width] pre-activation, its bias along the rank.
    let (batch, rank, width) = (3, 5, 24);
    let x = normal(&[batch, rank, width], 1.0, 31);
    let bias = normal(&[rank], 0.5, 32);
    let grad = normal(&[batch, rank, width], 1.0, 33);
    let mask = (normal(&[batch, rank, width], 1.0, 34).ge(0.0).unwrap().to_dtype(DType::F64).unwrap() * 2.0)
        .unwrap();
    for masked in [false, true] {
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let [x, bias, grad, mask] = [&x, &bias, &grad, &mask].map(|t| t.to_dtype(dtype).unwrap());
            let (dx, dbias) = bias_gelu_grads(&x, &bias, &grad, masked.then_some(&mask), 1, true).unwrap();
            let [xv, bv, gv, mv] = [&x, &bias, &grad, &mask].map(values);
            let (mut want, mut want_sum) = (vec![0.0; xv.len()], vec![0.0; rank]);
            for (i, w) in want.iter_mut().enumerate() {
                let c = i / width % rank;
                let v = xv[i] + bv[c];
                let d = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2))
                    + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
                *w = gv[i] * if masked { mv[i] } else { 1.0 } * d;
                want_sum[c] += *w;
            }
            let (tol, floor) = tolerance(dtype);
            let case = format!("{dtype:?} masked {masked}");
            assert!(max_rel_err(&dx, &tensor(want, &[batch, rank, width]), floor) < tol, "{case}");
            // The sum of the rounded dx: within the dtype's rounding of each term.
            let dbias = dbias.expect("asked for");
            assert!(max_rel_err(&dbias, &tensor(want_sum, &[rank]), floor) < tol, "{case}");
            // Without the sum, the same dx.
            let (plain, none) = bias_gelu_grads(&x, &bias, &grad, masked.then_some(&mask), 1, false).unwrap();
            assert!(none.is_none());
            assert_eq!(values(&plain), values(&dx), "{case}");
        }
    }
}
