//! Resampling a learned position embedding to another patch grid, as timm does when an image size
//! differs from the checkpoint's: the class token's embedding is kept and the grid of patch
//! embeddings is resized. timm resizes safetensors checkpoints with antialiased bicubic
//! interpolation and Google's `.npz` with plain bilinear; both are PyTorch's `interpolate` with
//! `align_corners=False`, reproduced here.

/// How the grid is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// `mode="bicubic", antialias=True` (PIL's kernel, a = -0.5, widened when shrinking).
    BicubicAntialias,
    /// `mode="bilinear", antialias=False`.
    Bilinear,
}

/// Resamples `pos` ([prefix + old·old] × width, row-major) to a `new`×`new` grid.
pub fn resample(
    pos: &[f32],
    width: usize,
    prefix: usize,
    old: usize,
    new: usize,
    interp: Interpolation,
) -> Vec<f32> {
    let grid = &pos[prefix * width..];
    let mut out = pos[..prefix * width].to_vec();
    // Separable: along columns, then along rows; each pass keeps channels innermost.
    let wx = match interp {
        Interpolation::BicubicAntialias => bicubic_aa(old, new),
        Interpolation::Bilinear => bilinear(old, new),
    };
    let mut rows = vec![0f32; old * new * width];
    for r in 0..old {
        for (c, (start, ws)) in wx.iter().enumerate() {
            let dst = &mut rows[(r * new + c) * width..][..width];
            for (j, w) in ws.iter().enumerate() {
                let src = &grid[(r * old + start + j) * width..][..width];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
            }
        }
    }
    let mut cols = vec![0f32; new * new * width];
    for (r, (start, ws)) in wx.iter().enumerate() {
        for c in 0..new {
            let dst = &mut cols[(r * new + c) * width..][..width];
            for (j, w) in ws.iter().enumerate() {
                let src = &rows[((start + j) * new + c) * width..][..width];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += w * s);
            }
        }
    }
    out.extend(cols);
    out
}

/// For each output index, the first input index and the weights of the inputs from there on
/// (PyTorch's `upsample_bilinear2d` source indices with `align_corners=False`).
fn bilinear(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| {
            let src = (scale * (i as f64 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let lambda = (src - i0 as f64) as f32;
            match i0 + 1 < input {
                true => (i0, vec![1.0 - lambda, lambda]),
                false => (i0, vec![1.0]),
            }
        })
        .collect()
}

/// For each output index, the first input index and the normalised weights (PyTorch's
/// `_compute_indices_weights_aa` with the bicubic filter, a = -0.5).
fn bicubic_aa(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let support = 2.0 * scale.max(1.0);
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let start = ((center - support + 0.5).floor().max(0.0)) as usize;
            let end = ((center + support + 0.5).floor() as usize).min(input);
            let raw: Vec<f64> = (start..end).map(|j| cubic((j as f64 - center + 0.5) * inv)).collect();
            let total: f64 = raw.iter().sum();
            (start, raw.iter().map(|w| (w / total) as f32).collect())
        })
        .collect()
}

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_grid_is_returned_unchanged() {
        let pos: Vec<f32> = (0..(1 + 9) * 2).map(|v| v as f32 * 0.1).collect();
        for interp in [Interpolation::BicubicAntialias, Interpolation::Bilinear] {
            let out = resample(&pos, 2, 1, 3, 3, interp);
            assert!(out.iter().zip(&pos).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }

    #[test]
    fn a_constant_grid_stays_constant_up_and_down_and_the_class_token_is_kept() {
        let mut pos = vec![7.0f32, -7.0];
        pos.extend(std::iter::repeat_n([1.5f32, -2.0], 16).flatten());
        for (new, interp) in [2, 3, 7]
            .into_iter()
            .flat_map(|n| [(n, Interpolation::BicubicAntialias), (n, Interpolation::Bilinear)])
        {
            let out = resample(&pos, 2, 1, 4, new, interp);
            assert_eq!(out.len(), (1 + new * new) * 2);
            assert_eq!(&out[..2], &[7.0, -7.0]);
            assert!(out[2..].chunks(2).all(|c| (c[0] - 1.5).abs() < 1e-5 && (c[1] + 2.0).abs() < 1e-5));
        }
    }
}
