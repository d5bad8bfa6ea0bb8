//! `runner embed`: features and logits of a checkpoint for a folder of images, checked against
//! timm's (fixtures from tools/make_fixtures.py), and its bad-input errors.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::support::{repo, runner};

fn fixtures() -> PathBuf {
    repo().join("framework/fixtures/vit")
}

/// The tiny fixture ViT's architecture, as flags.
const TINY: [&str; 14] = [
    "--variant",
    "custom",
    "--width",
    "48",
    "--depth",
    "2",
    "--heads",
    "3",
    "--mlp-dim",
    "96",
    "--patch-size",
    "8",
    "--image-size",
    "32",
];

fn embed(dir: &Path, weights: &Path, images: &Path, extra: &[&str]) -> crate::support::Run {
    let out = dir.join("out.safetensors");
    let mut args =
        vec!["embed", "--weights", weights.to_str().unwrap(), "--images", images.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap(), "--device", "cpu"]);
    args.extend(TINY);
    args.extend(extra);
    runner(dir, &args, &[])
}

fn assert_close(ours: &Tensor, reference: &Tensor, what: &str) {
    assert_eq!(ours.dims(), reference.dims(), "{what}");
    let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-4 * scale, "{what}: max|Δ| = {diff:e}");
}

#[test]
fn embed_writes_timms_features_logits_and_the_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let reference =
        candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap();
    for (weights, pool, key) in [
        ("vit_timm.safetensors", "token", "embed.token"),
        ("vit_timm.safetensors", "mean", "embed.mean"),
        ("vit_google_opt.npz", "token", "embed.token"),
    ] {
        let run = embed(dir.path(), &fixtures().join(weights), &fixtures().join("images"), &["--pool", pool]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("3 images: features [3, 48] and logits [3, 5]"), "{}", run.stdout);
        let out = dir.path().join("out.safetensors");
        let tensors = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_close(&tensors["features"], &reference[key], &format!("{weights} {pool}"));
        assert_close(&tensors["logits"], &reference["embed.logits"], &format!("{weights} logits"));
        let bytes = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["files"], r#"["a.png","b.png","c.png"]"#, "sorted by file name");
        assert_eq!(meta["pool"], pool);
    }
}

#[test]
fn embed_rejects_bad_input_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let timm = fixtures().join("vit_timm.safetensors");
    let images = fixtures().join("images");
    let bytes = std::fs::read(&timm).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let bad_images = dir.path().join("bad");
    std::fs::create_dir(&bad_images).unwrap();
    std::fs::copy(images.join("a.png"), bad_images.join("a.png")).unwrap();
    std::fs::write(bad_images.join("b.jpg"), b"not a jpeg").unwrap();
    std::fs::write(bad_images.join("c.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();

    let check = |run: crate::support::Run, fragments: &[&str]| {
        assert_eq!(run.code, 2, "{}", run.stderr);
        for f in fragments {
            assert!(run.stderr.contains(f), "expected {f:?} in:\n{}", run.stderr);
        }
    };
    check(
        embed(dir.path(), &truncated, &images, &[]),
        &["truncated.safetensors", "not a readable safetensors"],
    );
    check(embed(dir.path(), &dir.path().join("nope.npz"), &images, &[]), &["nope.npz", "No such file"]);
    check(embed(dir.path(), &timm, &images, &["--variant", "X/16"]), &["unknown ViT size \"X\""]);
    check(
        embed(dir.path(), &timm, &images, &["--image-size", "30"]),
        &["image size 30 is not a positive multiple of the patch size 8"],
    );
    check(embed(dir.path(), &timm, &images, &["--depth", "3"]), &["does not fit a ViT", "missing (12)"]);
    check(embed(dir.path(), &timm, &bad_images, &[]), &["2 image(s) cannot be used", "b.jpg", "c.png"]);
    check(embed(dir.path(), &timm, &empty, &[]), &["no image files"]);
    check(embed(dir.path(), &timm, &images, &["--pool", "max"]), &["--pool"]);
    assert!(!dir.path().join("out.safetensors").exists(), "nothing is written when the input is bad");
}
