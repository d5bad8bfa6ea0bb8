//! Opening each dataset kind, reading its splits, and the errors for bad input.

use std::path::Path;

use image::RgbImage;

use super::*;
use crate::data::identity::tasks;
use crate::data::idx::write_idx;
use crate::recipe::{IdxConfig, SyntheticConfig, Vtab1kConfig};

/// Writes a small JPEG whose colour encodes `i`.
pub(crate) fn jpeg(path: &Path, i: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(12, 9, |x, _| Rgb([i.wrapping_mul(40), x as u8 * 20, 100])).save(path).unwrap();
}

/// A VTAB-1k root with task folder `folder` holding `n` images per split, labels `i % 3`.
pub(crate) fn vtab_root(root: &Path, folder: &str, n: usize) {
    for split in Split::ALL {
        let mut list = String::new();
        for i in 0..n {
            let rel = format!("images/{split}/{i:06}.jpg");
            jpeg(&root.join(folder).join(&rel), i as u8);
            list.push_str(&format!("{rel} {}\n", i % 3));
        }
        std::fs::write(root.join(folder).join(format!("{split}.txt")), list).unwrap();
    }
}

fn vtab(root: &Path, task: &str) -> (DatasetConfig, DatasetTask) {
    let config = DatasetConfig::Vtab1k(Vtab1kConfig {
        root: root.to_owned(),
        tasks: vec![task.into()],
        preprocess: Default::default(),
    });
    let task = tasks(&config).into_iter().next().unwrap_or(DatasetTask {
        name: task.into(),
        group: None,
        classes: None,
    });
    (config, task)
}

#[test]
fn a_vtab_task_opens_under_an_alias_folder_and_reads_its_lists() {
    let dir = tempfile::tempdir().unwrap();
    vtab_root(dir.path(), "cifar100", 4);
    let (config, task) = vtab(dir.path(), "cifar");
    let data = Dataset::open(&config, &task, 8).unwrap();
    assert_eq!(
        (data.task(), data.kind(), data.classes(), data.group()),
        ("cifar", "vtab1k", 100, Some(Group::Natural))
    );
    let train = data.split(Split::Train800).unwrap();
    assert_eq!(train.labels(), [0, 1, 2, 0]);
    let ImageRef::File(first) = &train.samples[0].image else { panic!("a file") };
    assert_eq!(first, &dir.path().join("cifar100/images/train800/000000.jpg"));
    train.check().unwrap();
    let id = data.identity(&[Split::Train800, Split::Test]).unwrap();
    assert_eq!((id["kind"].as_str(), id["task"].as_str()), (Some("vtab1k"), Some("cifar")));
    assert!(id["lists"]["train800"].is_string() && id["lists"].get("val200").is_none(), "{id}");
}

#[test]
fn vtab_problems_are_reported_when_met() {
    let dir = tempfile::tempdir().unwrap();
    let (config, task) = vtab(&dir.path().join("absent"), "dtd");
    let e = Dataset::open(&config, &task, 8).unwrap_err().to_string();
    assert!(e.starts_with("VTAB-1k root folder not found: ") && e.ends_with("absent"), "{e}");
    let (config, task) = vtab(dir.path(), "oxford_iiit_pet");
    let e = Dataset::open(&config, &task, 8).unwrap_err().to_string();
    assert!(
        e.contains("VTAB-1k task folder (named any of oxford_iiit_pet, oxford_pet, pets) not found"),
        "{e}"
    );
    let (config, _) = vtab(dir.path(), "dtd");
    let typo = DatasetTask { name: "svhm".into(), group: None, classes: None };
    let e = Dataset::open(&config, &typo, 8).unwrap_err().to_string();
    assert_eq!(e, "unknown VTAB-1k task \"svhm\"; did you mean \"svhn\"?");

    vtab_root(dir.path(), "dtd", 3);
    std::fs::remove_file(dir.path().join("dtd/val200.txt")).unwrap();
    std::fs::remove_file(dir.path().join("dtd/images/test/000001.jpg")).unwrap();
    std::fs::write(dir.path().join("dtd/images/test/000002.jpg"), b"not a jpeg").unwrap();
    let (config, task) = vtab(dir.path(), "dtd");
    let data = Dataset::open(&config, &task, 8).unwrap();
    let e = data.split(Split::Val200).unwrap_err().to_string();
    assert!(e.starts_with("VTAB-1k list file not found: ") && e.ends_with("val200.txt"), "{e}");
    let e = data.split(Split::Test).unwrap().check().unwrap_err().to_string();
    assert!(e.starts_with("2 problems:"), "{e}");
    assert!(
        e.contains("test/000001.jpg: not found") && e.contains("test/000002.jpg: not a JPEG or PNG"),
        "{e}"
    );
}

#[test]
fn idx_samples_are_grey_records_made_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_idx(&p("tri"), &[3, 2, 2], &[0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23], true).unwrap();
    write_idx(&p("trl"), &[3], &[0, 1, 1], false).unwrap();
    write_idx(&p("tei"), &[1, 2, 2], &[5; 4], false).unwrap();
    write_idx(&p("tel"), &[1], &[1], false).unwrap();
    let config = DatasetConfig::Idx(IdxConfig {
        task: "mini".into(),
        train_images: p("tri"),
        train_labels: p("trl"),
        test_images: p("tei"),
        test_labels: p("tel"),
        classes: 2,
        subset: None,
        val_size: 1,
        split_seed: 0,
        preprocess: Default::default(),
    });
    let task = tasks(&config).remove(0);
    let data = Dataset::open(&config, &task, 4).unwrap();
    let all = data.split(Split::Train800Val200).unwrap();
    assert_eq!(all.labels(), [0, 1, 1]);
    let rgb = all.samples[1].image.decode().unwrap();
    assert_eq!((rgb.dimensions(), rgb.get_pixel(1, 1).0), ((2, 2), [13, 13, 13]));
    assert_eq!(data.split(Split::Train800).unwrap().len() + data.split(Split::Val200).unwrap().len(), 3);
    let DatasetConfig::Idx(x) = &config else { unreachable!() };
    let none_held_out = DatasetConfig::Idx(IdxConfig { val_size: 0, ..x.clone() });
    let e = Dataset::open(&none_held_out, &task, 4).unwrap().split(Split::Val200).unwrap_err().to_string();
    assert!(e.starts_with("split val200 of task mini has no images: ") && e.ends_with("tri"), "{e}");
}

#[test]
fn synthetic_tasks_open_without_files() {
    let config = DatasetConfig::Synthetic(SyntheticConfig {
        tasks: vec!["count".into()],
        train_size: 6,
        val_size: 2,
        test_size: 3,
        image_size: 16,
        ..Default::default()
    });
    let task = tasks(&config).remove(0);
    let data = Dataset::open(&config, &task, 8).unwrap();
    assert_eq!((data.classes(), data.group(), data.image_size()), (8, None, 8));
    assert_eq!(data.split(Split::Train800Val200).unwrap().len(), 8);
    assert_eq!(data.split(Split::Test).unwrap().samples[0].image.decode().unwrap().dimensions(), (16, 16));
    assert_eq!(data.identity(&[Split::Test]).unwrap()["renderer"], 1);
    let typo = DatasetTask { name: "cout".into(), group: None, classes: None };
    let e = Dataset::open(&config, &typo, 8).unwrap_err().to_string();
    assert_eq!(e, "unknown synthetic task \"cout\"; did you mean \"count\"?");
}
