//! Batches: the cache, seeded epoch orders, augmentation, streamed evaluation.

use std::collections::BTreeSet;

use super::*;
use crate::data::identity::tasks;
use crate::recipe::{DatasetConfig, Split, SyntheticConfig};

fn synthetic(task: &str, n: usize) -> Dataset {
    let config = DatasetConfig::Synthetic(SyntheticConfig {
        tasks: vec![task.into()],
        train_size: n,
        val_size: 3,
        test_size: n,
        image_size: 16,
        ..Default::default()
    });
    Dataset::open(&config, &tasks(&config)[0], 8).unwrap()
}

fn loader(data: &Dataset, augment: AugmentConfig, seed: u64) -> TrainLoader {
    let split = data.split(Split::Train800).unwrap();
    TrainLoader::new(data, &split, &augment, seed, 4, &Device::Cpu).unwrap()
}

fn images(b: &Batch) -> Vec<f32> {
    b.images.flatten_all().unwrap().to_vec1().unwrap()
}

fn labels(b: &Batch) -> Vec<u32> {
    b.labels.to_vec1().unwrap()
}

#[test]
fn an_epoch_visits_every_image_once_in_a_seeded_order() {
    let data = synthetic("location", 10);
    let l = loader(&data, AugmentConfig::default(), 7);
    assert_eq!((l.len(), l.batches_per_epoch()), (10, 3));
    let batches: Vec<Batch> = l.epoch(0).map(Result::unwrap).collect();
    assert_eq!(
        batches.iter().map(|b| b.images.dims().to_vec()).collect::<Vec<_>>(),
        [[4, 3, 8, 8], [4, 3, 8, 8], [2, 3, 8, 8]]
    );
    let order = l.order(0);
    assert_eq!(order.iter().copied().collect::<BTreeSet<_>>().len(), 10);
    let expected: Vec<u32> = order.iter().map(|&i| l.labels()[i]).collect();
    assert_eq!(batches.iter().flat_map(labels).collect::<Vec<_>>(), expected);
    assert_eq!(l.order(0), loader(&data, AugmentConfig::default(), 7).order(0), "same seed, same epoch");
    assert_ne!(l.order(0), l.order(1), "epochs differ");
    assert_ne!(l.order(0), loader(&data, AugmentConfig::default(), 8).order(0), "seeds differ");
}

#[test]
fn cached_inputs_are_the_pipeline_applied_to_each_image() {
    let data = synthetic("shape", 5);
    let l = loader(&data, AugmentConfig::default(), 0);
    let split = data.split(Split::Train800).unwrap();
    let first = l.sequential().next().unwrap().unwrap();
    let pipeline = data.pipeline();
    let mut expected = vec![0.0; pipeline.values()];
    pipeline.prepare(&split.samples[1].image.decode().unwrap(), &mut expected).unwrap();
    assert_eq!(images(&first)[pipeline.values()..2 * pipeline.values()], expected[..]);
    assert!(expected.iter().all(|v| (-1.0..=1.0).contains(v)) && expected.iter().any(|&v| v > 0.0));
    let eval = EvalLoader::new(&data, split, 4, &Device::Cpu).unwrap();
    let streamed: Vec<Batch> = eval.batches().map(Result::unwrap).collect();
    assert_eq!(streamed.len(), 2);
    assert_eq!(images(&streamed[0]), images(&first), "training cache and streamed evaluation agree");
    assert_eq!(labels(&streamed[1]), [eval.labels()[4]]);
}

#[test]
fn a_flip_mirrors_each_image_or_leaves_it_and_is_seeded() {
    let data = synthetic("location", 12);
    let plain = loader(&data, AugmentConfig::default(), 3);
    let flips = AugmentConfig { hflip: true, ..Default::default() };
    let flipped = loader(&data, flips.clone(), 3);
    let (a, b): (Vec<f32>, Vec<f32>) = (
        plain.epoch(2).flat_map(|b| images(&b.unwrap())).collect(),
        flipped.epoch(2).flat_map(|b| images(&b.unwrap())).collect(),
    );
    let (mut same, mut mirrored) = (0, 0);
    for (x, y) in a.chunks(3 * 64).zip(b.chunks(3 * 64)) {
        let mirror: Vec<f32> = x.chunks(8).flat_map(|row| row.iter().rev().copied()).collect();
        if x == y {
            same += 1;
        } else {
            assert_eq!(mirror, y, "either the image or its mirror");
            mirrored += 1;
        }
    }
    assert!(same > 0 && mirrored > 0, "{same} kept, {mirrored} mirrored");
    let again: Vec<f32> = loader(&data, flips, 3).epoch(2).flat_map(|b| images(&b.unwrap())).collect();
    assert_eq!(b, again);
}

#[test]
fn random_resized_crops_change_every_epoch_but_not_between_runs() {
    let data = synthetic("scale", 6);
    let crops = AugmentConfig { random_resized_crop: true, crop_scale: [0.3, 1.0], ..Default::default() };
    let l = loader(&data, crops.clone(), 1);
    let epoch = |l: &TrainLoader, e| l.epoch(e).flat_map(|b| images(&b.unwrap())).collect::<Vec<f32>>();
    let e0 = epoch(&l, 0);
    assert_eq!(e0.len(), 6 * 3 * 64);
    assert_eq!(e0, epoch(&loader(&data, crops, 1), 0));
    assert_ne!(e0, epoch(&l, 1));
    assert!(e0.iter().all(|v| (-1.0..=1.0).contains(v)));
    let whole = l.sequential().flat_map(|b| images(&b.unwrap())).count();
    assert_eq!(whole, 6 * 3 * 64);
}

#[test]
fn crops_follow_the_scale_range_and_stay_inside() {
    let mut rng = Stream::new(Purpose::Augment, 0, 0, 0);
    for _ in 0..500 {
        let (x, y, w, h) = random_crop(&mut rng, 100, [0.25, 0.5]);
        assert!(x + w <= 100 && y + h <= 100, "{x} {y} {w} {h}");
        let area = (w * h) as f64 / 1e4;
        assert!((0.22..0.53).contains(&area), "{area}");
    }
    assert_eq!(random_crop(&mut rng, 1, [0.01, 0.02]), (0, 0, 1, 1), "too small to crop: the whole image");
}

#[test]
fn a_bad_image_fails_its_batch_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    crate::data::dataset::tests::vtab_root(dir.path(), "eurosat", 5);
    std::fs::write(dir.path().join("eurosat/images/test/000003.jpg"), b"").unwrap();
    let config = DatasetConfig::Vtab1k(crate::recipe::Vtab1kConfig {
        root: dir.path().to_owned(),
        tasks: vec!["eurosat".into()],
        preprocess: Default::default(),
    });
    let data = Dataset::open(&config, &tasks(&config)[0], 8).unwrap();
    let eval = EvalLoader::new(&data, data.split(Split::Test).unwrap(), 2, &Device::Cpu).unwrap();
    let results: Vec<Result<Batch, DataError>> = eval.batches().collect();
    assert!(results[0].is_ok() && results[2].is_ok());
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("eurosat/images/test/000003.jpg"), "{e}");
    let e = TrainLoader::new(
        &data,
        &data.split(Split::Test).unwrap(),
        &AugmentConfig::default(),
        0,
        2,
        &Device::Cpu,
    );
    assert!(e.unwrap_err().to_string().contains("000003.jpg"));
}
