//! The training loss and the accuracy measures.

use candle_core::{D, DType, Result, Tensor};

/// Mean cross-entropy of `logits` [batch, classes] against `labels` [batch], with label smoothing
/// as PyTorch defines it: one op forward and one backward (ops/cross_entropy.rs).
pub use crate::ops::cross_entropy;

/// Counts per class of a batch: (correct, seen), for top-1 and per-class accuracy.
pub fn tally(
    logits: &Tensor,
    labels: &Tensor,
    classes: usize,
    correct: &mut [u64],
    seen: &mut [u64],
) -> Result<()> {
    let predicted: Vec<u32> = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    for (p, l) in predicted.iter().zip(&labels) {
        let l = *l as usize;
        if l < classes {
            seen[l] += 1;
            correct[l] += u64::from(p == &(l as u32));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn cross_entropy_matches_pytorch_with_and_without_label_smoothing() {
        // torch.nn.functional.cross_entropy(logits, labels, label_smoothing=ε) in float64.
        let logits =
            Tensor::new(&[[2.0f64, -1.0, 0.5], [0.1, 0.2, -0.3], [-1.5, 3.0, 0.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap();
        for (eps, torch) in [(0.0, 0.5737509491610732), (0.1, 0.6970842824944066)] {
            let ours = cross_entropy(&logits, &labels, eps).unwrap().to_scalar::<f64>().unwrap();
            assert!((ours - torch).abs() < 1e-12, "ε = {eps}: {ours} vs {torch}");
        }
    }

    #[test]
    fn the_loss_has_a_gradient_for_the_logits() {
        let logits = candle_core::Var::new(&[[2.0f64, -1.0], [0.5, 0.5]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let grads = cross_entropy(logits.as_tensor(), &labels, 0.1).unwrap().backward().unwrap();
        let g: Vec<Vec<f64>> = grads.get(logits.as_tensor()).unwrap().to_vec2().unwrap();
        // d/dz of the mean loss: (softmax(z) − target) / batch, target = 0.95 on the label, 0.05 elsewhere.
        let s = 1.0 / (1.0 + (-3.0f64).exp());
        assert!((g[0][0] - (s - 0.05) / 2.0).abs() < 1e-12, "{g:?}");
        assert!((g[1][0] - (0.5 - 0.95) / 2.0).abs() < 1e-12, "{g:?}");
    }

    #[test]
    fn tallies_count_correct_predictions_per_class() {
        let logits = Tensor::new(&[[0.9f32, 0.1], [0.2, 0.8], [0.7, 0.3]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32, 0, 1], &Device::Cpu).unwrap();
        let (mut correct, mut seen) = (vec![0; 2], vec![0; 2]);
        tally(&logits, &labels, 2, &mut correct, &mut seen).unwrap();
        assert_eq!((correct, seen), (vec![1, 0], vec![2, 1]));
    }
}
