//! `cross_entropy` against the loss computed element by element in f64 (and PyTorch's values, in
//! engine/loss.rs), in every dtype, with and without smoothing; its gradient against the closed
//! form and finite differences; and its refusals.

use candle_core::{DType, Device, Tensor, Var};

use super::cross_entropy;
use super::tests::{check_finite_differences, max_rel_err, normal, tolerance, values};

/// Logits [13, 37] with an offset per row (so the max matters), labels covering the classes.
fn inputs() -> (Tensor, Tensor) {
    let logits = (normal(&[13, 37], 3.0, 21) + 5.0).unwrap();
    let labels: Vec<u32> = (0..13).map(|i| (i * 11 + 3) % 37).collect();
    (logits, Tensor::new(labels, &Device::Cpu).unwrap())
}

/// The loss and its gradient for the logits, element by element in f64: `(loss, [batch, classes])`.
fn reference(logits: &Tensor, labels: &Tensor, smoothing: f64) -> (f64, Vec<f64>) {
    let (batch, classes) = logits.dims2().unwrap();
    let z = values(logits);
    let y: Vec<u32> = labels.to_vec1().unwrap();
    let (mut loss, mut grad) = (0.0, vec![0.0; z.len()]);
    for (i, row) in z.chunks(classes).enumerate() {
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        for (c, v) in row.iter().enumerate() {
            let target = (1.0 - smoothing) * f64::from(c as u32 == y[i]) + smoothing / classes as f64;
            loss -= target * (v - lse);
            grad[i * classes + c] = ((v - lse).exp() - target) / batch as f64;
        }
    }
    (loss / batch as f64, grad)
}

#[test]
fn the_loss_and_its_gradient_match_an_f64_reference_in_every_dtype() {
    let (logits, labels) = inputs();
    for smoothing in [0.0, 0.1, 1.0] {
        let (loss, grad) = reference(&logits, &labels, smoothing);
        let grad = Tensor::from_vec(grad, logits.shape(), &Device::Cpu).unwrap();
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let z = Var::from_tensor(&logits.to_dtype(dtype).unwrap()).unwrap();
            let ours = cross_entropy(z.as_tensor(), &labels, smoothing).unwrap();
            assert_eq!((ours.dims(), ours.dtype()), (&[][..], dtype));
            let (rel, floor) = tolerance(dtype);
            let value = ours.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!((value - loss).abs() <= rel * loss.abs(), "{dtype:?}, ε {smoothing}: {value} vs {loss}");
            let dz = ours.backward().unwrap().get(z.as_tensor()).unwrap().clone();
            let err = max_rel_err(&dz, &grad, floor);
            assert!(err <= rel, "{dtype:?}, ε {smoothing}: gradient error {err}");
        }
    }
}

#[test]
fn the_gradient_matches_finite_differences_and_scales_with_the_loss_gradient() {
    let (logits, labels) = inputs();
    // A probe of 3.5: the loss's own gradient reaches the logits scaled by it.
    let probe = Tensor::new(3.5f64, &Device::Cpu).unwrap();
    for smoothing in [0.0, 0.2] {
        check_finite_differences(std::slice::from_ref(&logits), &probe, |t| {
            cross_entropy(&t[0], &labels, smoothing)
        });
    }
}

#[test]
fn labels_of_any_integer_dtype_are_class_indices() {
    let (logits, labels) = inputs();
    let want = cross_entropy(&logits, &labels, 0.1).unwrap().to_scalar::<f64>().unwrap();
    for dtype in [DType::I64, DType::U8] {
        let other = cross_entropy(&logits, &labels.to_dtype(dtype).unwrap(), 0.1).unwrap();
        assert_eq!(other.to_scalar::<f64>().unwrap(), want, "{dtype:?}");
    }
    // Negative labels are named as given, not as the u32 they would wrap to; floats are refused.
    let mut negative: Vec<i64> = labels.to_dtype(DType::I64).unwrap().to_vec1().unwrap();
    negative[4] = -1;
    let negative = Tensor::new(negative, &Device::Cpu).unwrap();
    let msg = cross_entropy(&logits, &negative, 0.1).unwrap_err().to_string();
    assert!(msg.contains("label -1 of row 4 is negative"), "{msg}");
    let msg = cross_entropy(&logits, &labels.to_dtype(DType::F32).unwrap(), 0.1).unwrap_err().to_string();
    assert!(msg.contains("labels must be class indices") && msg.contains("F32"), "{msg}");
}

#[test]
fn large_logits_do_not_cancel() {
    // Logits around 10⁴ in f32 (an ulp there is 10⁻³): computed as lse − z_y − ε·mean, the loss
    // would lose about four digits to cancellation; with the max taken out of each term it stays
    // within a few f32 ulps of the f64 loss of the same (rounded) logits.
    let (logits, labels) = inputs();
    let large = (logits + 1e4).unwrap().to_dtype(DType::F32).unwrap();
    let (want, _) = reference(&large.to_dtype(DType::F64).unwrap(), &labels, 0.1);
    let got = cross_entropy(&large, &labels, 0.1).unwrap().to_scalar::<f32>().unwrap();
    assert!((f64::from(got) - want).abs() <= 1e-6 * want, "{got} vs {want}");
}

#[test]
fn what_does_not_fit_is_refused_by_name() {
    let (logits, labels) = inputs();
    let err = |r: candle_core::Result<Tensor>| r.expect_err("refused").to_string();
    let bad = Tensor::new(&[0u32, 1, 37, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0], &Device::Cpu).unwrap();
    let msg = err(cross_entropy(&logits, &bad, 0.0));
    assert!(msg.contains("label 37 of row 2") && msg.contains("37 classes"), "{msg}");
    let msg = err(cross_entropy(&logits, &labels.narrow(0, 0, 5).unwrap(), 0.0));
    assert!(msg.contains("one label per row"), "{msg}");
    let msg = err(cross_entropy(&logits.unsqueeze(0).unwrap(), &labels, 0.0));
    assert!(msg.contains("rank") || msg.contains("dims"), "{msg}");
    let msg = err(cross_entropy(&logits, &labels, 1.5));
    assert!(msg.contains("label smoothing 1.5"), "{msg}");
    let empty = Tensor::zeros((0, 37), DType::F32, &Device::Cpu).unwrap();
    let none = Tensor::zeros(0, DType::U32, &Device::Cpu).unwrap();
    assert!(err(cross_entropy(&empty, &none, 0.0)).contains("must have a row"));
}

#[test]
fn strided_logits_give_the_same_loss() {
    let (logits, labels) = inputs();
    let wide = Tensor::cat(&[&logits, &logits], 1).unwrap();
    let view = wide.narrow(1, 0, 37).unwrap();
    assert!(!view.is_contiguous());
    let (a, b) = (cross_entropy(&view, &labels, 0.1).unwrap(), cross_entropy(&logits, &labels, 0.1).unwrap());
    assert_eq!(a.to_scalar::<f64>().unwrap(), b.to_scalar::<f64>().unwrap());
}

#[test]
fn a_masked_class_leaves_the_loss_finite_without_smoothing() {
    // A logit of −∞ (a class masked out) that is no row's label: its probability is 0, so the
    // loss is finite without smoothing and infinite with it, as in PyTorch.
    let logits =
        Tensor::new(&[[1.0f64, f64::NEG_INFINITY, 0.5], [0.2, f64::NEG_INFINITY, -0.3]], &Device::Cpu);
    let (logits, labels) = (logits.unwrap(), Tensor::new(&[0u32, 2], &Device::Cpu).unwrap());
    let finite = cross_entropy(&logits, &labels, 0.0).unwrap().to_scalar::<f64>().unwrap();
    let two = |a: f64, b: f64, y: f64| (a.exp() + b.exp()).ln() - y;
    assert!((finite - (two(1.0, 0.5, 1.0) + two(0.2, -0.3, -0.3)) / 2.0).abs() < 1e-12, "{finite}");
    let smoothed = cross_entropy(&logits, &labels, 0.1).unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(smoothed, f64::INFINITY);
}
