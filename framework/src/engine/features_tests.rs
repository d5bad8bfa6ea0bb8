//! The feature cache against the backbone itself, in memory and on disk, across calls and
//! processes (a new cache on the same folder), with partial files and failing images.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::*;
use crate::adaptation::compute_taps;
use crate::recipe::VitShape;
use crate::vit::{VitConfig, random_weights, seeded_normal};

const IMAGES: usize = 10;
const BATCH: usize = 4;

fn vit(seed: u64) -> Vit {
    let shape = VitShape { width: 16, depth: 3, heads: 2, mlp_dim: 32, patch_size: 8 };
    let config = VitConfig { shape, image_size: 16, norm_eps: 1e-6, num_classes: None, pre_logits: None };
    Vit::new(config, &random_weights(&config, seed, &Device::Cpu).unwrap()).unwrap()
}

fn images() -> Tensor {
    seeded_normal((IMAGES, 3, 16, 16), 1.0, 5, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
}

fn labels() -> Vec<u32> {
    (0..IMAGES as u32).map(|i| (i * 7) % 3).collect()
}

/// The split in batches of `BATCH`, as a loader gives them.
fn batches() -> Vec<Result<Batch, DataError>> {
    let (images, labels) = (images(), labels());
    (0..IMAGES)
        .step_by(BATCH)
        .map(|start| {
            let n = BATCH.min(IMAGES - start);
            let labels = labels[start..start + n].to_vec();
            Ok(Batch {
                images: images.narrow(0, start, n)?,
                labels: Tensor::from_vec(labels, n, &Device::Cpu)?,
            })
        })
        .collect()
}

/// Batches that fail if read: proves that nothing was computed.
fn unread() -> impl Iterator<Item = Result<Batch, DataError>> {
    std::iter::once(Err(DataError::Setting("the cache read the images although it needed nothing".into())))
}

fn key(split: Split, backbone: u64) -> FeatureKey {
    FeatureKey {
        backbone: json!({"random_init": backbone, "image_size": 16}),
        dataset: json!({"kind": "synthetic", "task": "tiny"}),
        preprocess: json!({"resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}),
        split,
    }
}

/// What the backbone computes for the split, batch by batch as the cache sees it, then picked.
fn expected(vit: &Vit, taps: &[usize], indices: &[usize]) -> Taps {
    let parts: Vec<Taps> =
        batches().into_iter().map(|b| compute_taps(vit, &b.unwrap().images, taps).unwrap()).collect();
    let ids =
        Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), indices.len(), &Device::Cpu)
            .unwrap();
    let pick = |layer: Vec<&Tensor>| Tensor::cat(&layer, 0).unwrap().index_select(&ids, 0).unwrap();
    Taps {
        blocks: (0..taps.len()).map(|k| pick(parts.iter().map(|p| &p.blocks[k]).collect())).collect(),
        tokens: pick(parts.iter().map(|p| &p.tokens).collect()),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_same(a: &Taps, b: &Taps) {
    assert_eq!(a.blocks.len(), b.blocks.len());
    for (x, y) in a.blocks.iter().zip(&b.blocks).chain([(&a.tokens, &b.tokens)]) {
        assert_eq!(x.dims(), y.dims());
        assert_eq!(values(x), values(y));
    }
}

/// Files in the key's folder, sorted.
fn files(dir: &Path, key: &FeatureKey) -> Vec<String> {
    let folder = dir.join(key.folder_name(DType::F32));
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

const SHUFFLED: [usize; 7] = [7, 2, 2, 9, 0, 5, 2];

#[test]
fn cached_layers_equal_what_the_backbone_computes_for_any_indices() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cache = FeatureCache::new(dir.path(), u64::MAX, None);
    let taps = [2, 0];
    let features = cache.features(&key(Split::Train800, 1), &vit, &taps, batches().into_iter()).unwrap();
    assert_eq!((features.len(), features.labels()), (IMAGES, labels().as_slice()));
    let (got, labels) = features.batch(&SHUFFLED, &Device::Cpu).unwrap();
    assert_same(&got, &expected(&vit, &taps, &SHUFFLED));
    assert_eq!(got.tokens.dtype(), DType::F32);
    assert_eq!(
        labels.to_vec1::<u32>().unwrap(),
        SHUFFLED.iter().map(|&i| self::labels()[i]).collect::<Vec<_>>()
    );
    assert!(!features.mapped());
    assert_eq!(
        features.bytes(),
        3 * (IMAGES * 5 * 16 * 4) as u64,
        "two blocks and the tokens, 5 tokens of 16"
    );
    assert!(files(dir.path(), &key(Split::Train800, 1)).is_empty(), "within the budget nothing is written");
    let err = features.batch(&[3, IMAGES], &Device::Cpu).unwrap_err().to_string();
    assert_eq!(err, "image 10 is out of range: the split has 10 images");
    let err = cache.features(&key(Split::Train800, 1), &vit, &[3], unread()).unwrap_err().to_string();
    assert!(err.contains("block 3 is tapped, but the backbone has 3 blocks (0 to 2)"), "{err}");
}

#[test]
fn a_zero_budget_maps_every_layer_from_disk_with_the_same_values() {
    let vit = vit(1);
    let (memory_dir, disk_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = key(Split::Train800, 1);
    let mut memory = FeatureCache::new(memory_dir.path(), u64::MAX, None);
    let mut disk = FeatureCache::new(disk_dir.path().join("features"), 0, None);
    let in_memory = memory.features(&key, &vit, &[1], batches().into_iter()).unwrap();
    let on_disk = disk.features(&key, &vit, &[1], batches().into_iter()).unwrap();
    assert_same(
        &in_memory.batch(&SHUFFLED, &Device::Cpu).unwrap().0,
        &on_disk.batch(&SHUFFLED, &Device::Cpu).unwrap().0,
    );
    assert_eq!(on_disk.labels(), in_memory.labels());
    assert!(on_disk.mapped() && !in_memory.mapped());
    assert_eq!(on_disk.bytes(), in_memory.bytes());
    assert_eq!(disk.resident_bytes(), 0);
    assert_eq!(
        files(&disk_dir.path().join("features"), &key),
        ["block1.f32.bin", "block1.f32.json", "tokens.f32.bin", "tokens.f32.json"],
        "complete layers and no temporary files"
    );
}

#[test]
fn later_calls_reuse_layers_and_compute_only_what_is_missing() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cache = FeatureCache::new(dir.path(), u64::MAX, None);
    let train = key(Split::Train800, 1);
    cache.features(&train, &vit, &[0], batches().into_iter()).unwrap();
    assert_eq!(cache.stats(), CacheStats { computed: 2, from_memory: 0, from_disk: 0 });
    let again = cache.features(&train, &vit, &[0], unread()).unwrap();
    assert_eq!(cache.stats(), CacheStats { computed: 2, from_memory: 2, from_disk: 0 });
    assert_same(&again.batch(&SHUFFLED, &Device::Cpu).unwrap().0, &expected(&vit, &[0], &SHUFFLED));

    let more = cache.features(&train, &vit, &[0, 2], batches().into_iter()).unwrap();
    assert_eq!(
        cache.stats(),
        CacheStats { computed: 3, from_memory: 4, from_disk: 0 },
        "only block 2 is new"
    );
    assert_same(&more.batch(&SHUFFLED, &Device::Cpu).unwrap().0, &expected(&vit, &[0, 2], &SHUFFLED));

    // Another split or another backbone is another key.
    cache.features(&key(Split::Val200, 1), &vit, &[0], batches().into_iter()).unwrap();
    assert_eq!(cache.stats().computed, 5);
    let other = self::vit(2);
    let features = cache.features(&key(Split::Train800, 2), &other, &[0], batches().into_iter()).unwrap();
    assert_eq!(cache.stats().computed, 7);
    assert_same(&features.batch(&SHUFFLED, &Device::Cpu).unwrap().0, &expected(&other, &[0], &SHUFFLED));
    assert_ne!(
        key(Split::Train800, 1).folder_name(DType::F32),
        key(Split::Train800, 1).folder_name(DType::BF16)
    );
}

#[test]
fn a_new_cache_reuses_complete_disk_layers_and_recomputes_partial_ones() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let key = key(Split::Train800, 1);
    let mut first = FeatureCache::new(dir.path(), 0, None);
    drop(first.features(&key, &vit, &[0], batches().into_iter()).unwrap());

    let mut second = FeatureCache::new(dir.path(), 0, None);
    let reused = second.features(&key, &vit, &[0], unread()).unwrap();
    assert_eq!(second.stats(), CacheStats { computed: 0, from_memory: 0, from_disk: 2 });
    assert_eq!(reused.labels(), labels());
    assert_same(&reused.batch(&SHUFFLED, &Device::Cpu).unwrap().0, &expected(&vit, &[0], &SHUFFLED));
    // Nothing may hold a mapping of a file truncated below (reading it would fault).
    drop((first, second, reused));

    let folder = dir.path().join(key.folder_name(DType::F32));
    // A crash between writing block 0 and marking it complete; a truncated token file; another
    // process still writing block 2.
    std::fs::remove_file(folder.join("block0.f32.json")).unwrap();
    let tokens = std::fs::OpenOptions::new().write(true).open(folder.join("tokens.f32.bin")).unwrap();
    tokens.set_len(tokens.metadata().unwrap().len() - 4).unwrap();
    drop(tokens);
    std::fs::write(folder.join("block2.f32.bin.tmp.4242.0"), [0u8; 100]).unwrap();

    let mut third = FeatureCache::new(dir.path(), 0, None);
    let recomputed = third.features(&key, &vit, &[0, 2], batches().into_iter()).unwrap();
    assert_eq!(third.stats(), CacheStats { computed: 3, from_memory: 0, from_disk: 0 });
    assert_same(&recomputed.batch(&SHUFFLED, &Device::Cpu).unwrap().0, &expected(&vit, &[0, 2], &SHUFFLED));
    let mut fourth = FeatureCache::new(dir.path(), 0, None);
    fourth.features(&key, &vit, &[0, 2], unread()).unwrap();
    assert_eq!(fourth.stats(), CacheStats { computed: 0, from_memory: 0, from_disk: 3 });
}

#[test]
fn half_precision_storage_stays_within_its_rounding_and_returns_the_backbone_dtype() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let key = key(Split::Train800, 1);
    let mut full = FeatureCache::new(dir.path(), u64::MAX, None);
    let mut half = FeatureCache::new(dir.path(), u64::MAX, Some(DType::F16));
    let mut half_on_disk = FeatureCache::new(dir.path(), 0, Some(DType::F16));
    let f32s = full.features(&key, &vit, &[1], batches().into_iter()).unwrap();
    let f16s = half.features(&key, &vit, &[1], batches().into_iter()).unwrap();
    let mapped = half_on_disk.features(&key, &vit, &[1], batches().into_iter()).unwrap();
    assert_eq!(f16s.bytes() * 2, f32s.bytes());
    assert!(files(dir.path(), &key).contains(&"tokens.f16.bin".to_owned()));
    let (exact, _) = f32s.batch(&SHUFFLED, &Device::Cpu).unwrap();
    for rounded in [&f16s, &mapped] {
        let (rounded, _) = rounded.batch(&SHUFFLED, &Device::Cpu).unwrap();
        for (x, y) in rounded.blocks.iter().zip(&exact.blocks).chain([(&rounded.tokens, &exact.tokens)]) {
            assert_eq!(x.dtype(), DType::F32);
            let (x, y) = (values(x), values(y));
            assert_ne!(x, y, "rounded to f16");
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= b.abs().max(1e-4) / 1024.0, "{a} is not {b} rounded to f16");
            }
        }
    }
}

#[test]
fn the_budget_evicts_unheld_layers_least_recently_used_and_spills_past_held_ones() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let layer = (IMAGES * 5 * 16 * 4) as u64;
    let mut cache = FeatureCache::new(dir.path(), layer, None);
    drop(cache.features(&key(Split::Train800, 1), &vit, &[], batches().into_iter()).unwrap());
    assert_eq!(cache.resident_bytes(), layer);
    let val = cache.features(&key(Split::Val200, 1), &vit, &[], batches().into_iter()).unwrap();
    assert!(!val.mapped(), "the unheld train800 tokens made room");
    assert_eq!(cache.resident_bytes(), layer);
    let test = cache.features(&key(Split::Test, 1), &vit, &[], batches().into_iter()).unwrap();
    assert!(test.mapped(), "val200 is held: test goes to disk");
    assert_eq!(cache.resident_bytes(), layer);
    cache.features(&key(Split::Train800, 1), &vit, &[], batches().into_iter()).unwrap();
    assert_eq!(
        cache.stats(),
        CacheStats { computed: 4, from_memory: 0, from_disk: 0 },
        "train800 was evicted"
    );
}

#[test]
fn an_image_error_surfaces_as_a_data_error_and_leaves_no_files() {
    let vit = vit(1);
    let dir = tempfile::tempdir().unwrap();
    let key = key(Split::Train800, 1);
    let mut cache = FeatureCache::new(dir.path(), 0, None);
    let bad = DataError::BadImage { path: "images/3.png".into(), message: "not found".into() };
    let failing = batches().into_iter().take(1).chain([Err(bad)]);
    let err = cache.features(&key, &vit, &[0], failing).unwrap_err();
    assert!(matches!(err, FeatureError::Data(_)), "{err:?}");
    assert_eq!(err.to_string(), "image images/3.png: not found");
    assert!(files(dir.path(), &key).is_empty(), "{:?}", files(dir.path(), &key));
    assert_eq!(cache.stats().computed, 0);
}
