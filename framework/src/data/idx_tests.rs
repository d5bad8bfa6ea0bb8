//! IDX parsing, its errors, and the seeded subset and validation split.

use super::*;

/// Writes `n` 3×2 images (pixel values = image index) with labels `i % classes` into `dir`.
fn files(dir: &Path, n: u32, labels: u32, gzip: bool) -> IdxConfig {
    let x = |name: &str| dir.join(name);
    let pixels: Vec<u8> = (0..n).flat_map(|i| [i as u8; 6]).collect();
    let label_bytes: Vec<u8> = (0..n).map(|i| (i % labels) as u8).collect();
    write_idx(&x("train-images"), &[n, 3, 2], &pixels, gzip).unwrap();
    write_idx(&x("train-labels"), &[n], &label_bytes, gzip).unwrap();
    write_idx(&x("test-images"), &[4, 3, 2], &[7; 24], gzip).unwrap();
    write_idx(&x("test-labels"), &[4], &[0, 1, 2, 3], gzip).unwrap();
    IdxConfig {
        task: "tiny".into(),
        train_images: x("train-images"),
        train_labels: x("train-labels"),
        test_images: x("test-images"),
        test_labels: x("test-labels"),
        classes: 4,
        subset: None,
        val_size: 5,
        split_seed: 0,
        preprocess: Default::default(),
    }
}

#[test]
fn plain_and_gzipped_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for gzip in [false, true] {
        let data = IdxData::open(&files(dir.path(), 20, 4, gzip)).unwrap();
        assert_eq!((data.train.len(), data.train.height, data.train.width), (20, 3, 2));
        assert_eq!(data.train.image(9), &[9; 6]);
        assert_eq!(data.train_labels[9], 1);
        assert_eq!((data.val.len(), data.train_part.len()), (5, 15));
        let (images, test) = data.split(Split::Test);
        assert_eq!(images.len(), 4);
        assert_eq!(test, [(0, 0), (1, 1), (2, 2), (3, 3)]);
    }
}

#[test]
fn subsets_and_held_out_splits_are_seeded_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = files(dir.path(), 50, 4, false);
    config.subset = Some(12);
    let a = IdxData::open(&config).unwrap();
    assert_eq!((a.val.len(), a.train_part.len()), (5, 7));
    assert!(a.val.iter().all(|i| !a.train_part.contains(i)));
    let both: Vec<usize> = a.split(Split::Train800Val200).1.iter().map(|(i, _)| *i).collect();
    let mut expect = [a.val.clone(), a.train_part.clone()].concat();
    expect.sort_unstable();
    assert_eq!(both, expect);
    let again = IdxData::open(&config).unwrap();
    assert_eq!((&a.val, &a.train_part), (&again.val, &again.train_part));
    config.split_seed = 1;
    let other = IdxData::open(&config).unwrap();
    assert_ne!(a.train_part, other.train_part);
    config.subset = Some(51);
    let e = IdxData::open(&config).unwrap_err().to_string();
    assert!(
        e.contains("subset = 51 is larger than the 50 training images") && e.contains("train-images"),
        "{e}"
    );
    config.subset = Some(5);
    let e = IdxData::open(&config).unwrap_err().to_string();
    assert!(e.contains("no training images are left after holding out val_size = 5"), "{e}");
}

#[test]
fn malformed_files_are_named_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let error = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        read_images(&path).unwrap_err().to_string()
    };
    let head = |dims: &[u32]| {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| b.extend(d.to_be_bytes()));
        b
    };
    for (bytes, expected) in [
        (vec![1, 2], "too short for an IDX header".to_owned()),
        (b"PK\x03\x04rest".to_vec(), "does not start with an IDX magic number".into()),
        (vec![0, 0, 0x0d, 3], "expected unsigned-byte values (type 0x08), found type 0x0d".into()),
        (head(&[2, 2]), "expected images [count, height, width] (3 dimensions), found 2 dimensions".into()),
        (head(&[2, 2, 2])[..10].to_vec(), "truncated: 10 bytes is too short".into()),
        (
            [head(&[2, 2, 2]), vec![0; 7]].concat(),
            "truncated: the header [2, 2, 2] needs 8 bytes of values, found 7".into(),
        ),
        ([head(&[2, 2, 2]), vec![0; 9]].concat(), "too long: the header [2, 2, 2] needs 8 bytes".into()),
        (head(&[0, 2, 2]), "IDX file holds no items".into()),
        (head(&[3, 0, 5]), "images are 0×5 pixels".into()),
        (vec![0x1f, 0x8b, 8, 0, 1, 2], "cannot decompress gzip".into()),
    ] {
        let e = error(&bytes);
        assert!(
            e.contains(&expected) && e.contains(&path.display().to_string()),
            "{expected:?} not in {e:?}"
        );
    }
    let e = read_images(&dir.path().join("absent")).unwrap_err().to_string();
    assert!(e.starts_with("IDX file not found: ") && e.ends_with("absent"), "{e}");
}

#[test]
fn labels_must_fit_the_classes_and_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = files(dir.path(), 20, 6, false);
    let e = IdxData::open(&config).unwrap_err().to_string();
    let labels = config.train_labels.display().to_string();
    assert!(e.contains(&format!("{labels}, item 4: label 4 is out of range: tiny has 4 classes")), "{e}");
    assert!(e.contains(&format!("{labels}, item 5: label 5")), "every bad label: {e}");
    config.classes = 6;
    write_idx(&config.test_labels, &[3], &[0, 1, 2], false).unwrap();
    let e = IdxData::open(&config).unwrap_err().to_string();
    assert!(e.contains("test-labels: holds 3 labels but") && e.contains("test-images holds 4 images"), "{e}");
}
