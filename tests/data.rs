//! `runner check --data`: real data on disk (JPEG files, IDX files, image folders) that passes,
//! then broken in each way a researcher meets, each an exit code 2 naming the file and line.

use std::path::Path;

use image::{Rgb, RgbImage};
use losa_framework::data::idx::write_idx;

use crate::support::{TINY, repo, runner, write};

/// A small JPEG (VTAB-1k images are JPEGs of a few hundred pixels; these are tiny for speed).
fn jpeg(path: &Path, i: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(20, 15, |x, y| Rgb([(i * 30) as u8, (x * 10) as u8, (y * 10) as u8]))
        .save(path)
        .unwrap();
}

/// `vtab/dsprites_loc` with 3 images per split, in the standard layout.
fn vtab(dir: &Path) {
    let task = dir.join("vtab/dsprites_loc");
    for split in ["train800", "val200", "train800val200", "test"] {
        let mut list = String::new();
        for i in 0..3 {
            let rel = format!("images/{split}/{i:06}.jpg");
            jpeg(&task.join(&rel), i);
            list.push_str(&format!("{rel} {}\n", i * 5));
        }
        std::fs::write(task.join(format!("{split}.txt")), list).unwrap();
    }
}

fn recipe(dir: &Path, dataset: &str) -> String {
    let text = TINY.replace("kind = \"synthetic\"\ntasks = [\"shape\", \"count\"]", dataset);
    write(dir, "r.toml", &text).to_str().unwrap().to_owned()
}

const VTAB: &str = "kind = \"vtab1k\"\nroot = \"vtab\"\ntasks = [\"dsprites_loc\"]";

fn check_data(dir: &Path, recipe: &str) -> crate::support::Run {
    runner(dir, &["check", "--data", recipe], &[])
}

/// Asserts exit code 2 and that stderr holds every expected piece.
fn fails_with(run: &crate::support::Run, expected: &[&str]) {
    assert_eq!(run.code, 2, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    for e in expected {
        assert!(run.stderr.contains(e), "missing {e:?} in:\n{}", run.stderr);
    }
}

#[test]
fn a_vtab_folder_passes_and_check_without_data_does_not_read_it() {
    let dir = tempfile::tempdir().unwrap();
    vtab(dir.path());
    let r = recipe(dir.path(), VTAB);
    let run = check_data(dir.path(), &r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("# data ok: vtab1k dsprites_loc: 16 classes; train800val200 3 images, test 3 images"),
        "{}",
        run.stdout
    );
    std::fs::remove_dir_all(dir.path().join("vtab/dsprites_loc/images")).unwrap();
    assert_eq!(runner(dir.path(), &["check", &r], &[]).code, 0, "plain check validates the recipe only");
}

#[test]
fn each_kind_of_broken_vtab_data_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("vtab/dsprites_loc");
    let r = recipe(dir.path(), VTAB);
    let reset = || {
        let _ = std::fs::remove_dir_all(dir.path().join("vtab"));
        vtab(dir.path());
    };
    let test_list = task.join("test.txt").display().to_string();
    let train_list = task.join("train800val200.txt").display().to_string();

    reset();
    std::fs::remove_file(task.join("test.txt")).unwrap();
    fails_with(&check_data(dir.path(), &r), &[&format!("VTAB-1k list file not found: {test_list}")]);

    reset();
    std::fs::write(task.join("test.txt"), "images/test/000000.jpg 1\nimages/test/000001.jpg\n").unwrap();
    fails_with(
        &check_data(dir.path(), &r),
        &[&format!("{test_list}:2: expected `<image path> <label>` (two fields), found 1 field(s)")],
    );

    reset();
    std::fs::write(task.join("train800val200.txt"), "images/train800/000000.jpg 16\n").unwrap();
    fails_with(
        &check_data(dir.path(), &r),
        &[&format!("{train_list}:1: label 16 is out of range: dsprites_loc has 16 classes (labels 0 to 15)")],
    );

    reset();
    std::fs::remove_file(task.join("images/test/000001.jpg")).unwrap();
    let missing = task.join("images/test/000001.jpg").display().to_string();
    fails_with(&check_data(dir.path(), &r), &[&format!("image {missing}: not found")]);

    reset();
    let corrupt = task.join("images/test/000002.jpg");
    let bytes = std::fs::read(&corrupt).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&check_data(dir.path(), &r), &[&format!("image {}: cannot decode", corrupt.display())]);

    reset();
    std::fs::write(task.join("test.txt"), "\n\n").unwrap();
    fails_with(&check_data(dir.path(), &r), &[&format!("VTAB-1k list file lists no images: {test_list}")]);

    reset();
    std::fs::rename(&task, dir.path().join("vtab/dsprites")).unwrap();
    fails_with(&check_data(dir.path(), &r), &["VTAB-1k task folder (named any of dsprites_loc) not found"]);

    let typo = recipe(dir.path(), &VTAB.replace("dsprites_loc", "dsprites_lco"));
    fails_with(
        &check_data(dir.path(), &typo),
        &["unknown VTAB-1k task \"dsprites_lco\"; did you mean \"dsprites_loc\"?"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    vtab(dir.path());
    let task = dir.path().join("vtab/dsprites_loc");
    std::fs::write(task.join("images/test/000000.jpg"), b"GIF89a").unwrap();
    std::fs::remove_file(task.join("images/test/000002.jpg")).unwrap();
    std::fs::write(
        task.join("train800val200.txt"),
        "images/train800/000000.jpg one\nimages/train800/000001.jpg 99\n",
    )
    .unwrap();
    let run = check_data(dir.path(), &recipe(dir.path(), VTAB));
    fails_with(
        &run,
        &[
            "the data has 4 problem(s):",
            "train800val200.txt:1: the label \"one\" is not a non-negative integer",
            "train800val200.txt:2: label 99 is out of range",
            "000000.jpg: not a JPEG or PNG file",
            "000002.jpg: not found",
        ],
    );
}

#[test]
fn image_folders_pass_and_mismatched_class_folders_fail() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "train/cat/a.jpg",
        "train/cat/b.png",
        "train/dog/c.jpg",
        "train/dog/d.jpg",
        "test/cat/e.jpg",
        "test/dog/f.jpg",
    ]
    .iter()
    .enumerate()
    {
        jpeg(&dir.path().join(name), i);
    }
    let folders = "kind = \"image_folder\"\ntrain_root = \"train\"\ntest_root = \"test\"\nval_size = 1";
    let r = recipe(dir.path(), folders);
    let run = check_data(dir.path(), &r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("# data ok: image_folder train: 2 classes; train800val200 4 images, test 2 images"),
        "{}",
        run.stdout
    );
    std::fs::rename(dir.path().join("test/dog"), dir.path().join("test/dgo")).unwrap();
    fails_with(
        &check_data(dir.path(), &r),
        &["class folders differ between", "only in train: [\"dog\"]; only in test: [\"dgo\"]"],
    );
}

#[test]
fn idx_files_pass_gzipped_or_not_and_truncated_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let pixels: Vec<u8> = (0..12 * 16).map(|i| i as u8).collect();
    write_idx(&p("train-images-idx3-ubyte.gz"), &[12, 4, 4], &pixels, true).unwrap();
    write_idx(&p("train-labels-idx1-ubyte.gz"), &[12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1], true).unwrap();
    write_idx(&p("t10k-images-idx3-ubyte"), &[3, 4, 4], &pixels[..48], false).unwrap();
    write_idx(&p("t10k-labels-idx1-ubyte"), &[3], &[9, 8, 7], false).unwrap();
    let idx = "kind = \"idx\"\ntask = \"fashion\"\ntrain_images = \"train-images-idx3-ubyte.gz\"\n\
               train_labels = \"train-labels-idx1-ubyte.gz\"\ntest_images = \"t10k-images-idx3-ubyte\"\n\
               test_labels = \"t10k-labels-idx1-ubyte\"\nsubset = 8\nval_size = 3";
    let r = recipe(dir.path(), idx);
    let run = check_data(dir.path(), &r);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("# data ok: idx fashion: 10 classes; train800val200 8 images, test 3 images"),
        "{}",
        run.stdout
    );
    let bytes = std::fs::read(p("t10k-images-idx3-ubyte")).unwrap();
    std::fs::write(p("t10k-images-idx3-ubyte"), &bytes[..40]).unwrap();
    fails_with(
        &check_data(dir.path(), &r),
        &[
            "IDX file",
            "t10k-images-idx3-ubyte: truncated: the header [3, 4, 4] needs 48 bytes of values, found 24",
        ],
    );
}

#[test]
fn the_built_in_suite_and_the_smoke_recipe_pass() {
    let run = runner(&repo(), &["check", "--data", "recipes/smoke.toml"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for task in ["shape", "location"] {
        assert!(
            run.stdout.contains(&format!("# data ok: synthetic {task}: "))
                && run.stdout.contains("test 64 images"),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn a_run_that_meets_a_corrupt_image_is_recorded_as_failed_naming_it_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    vtab(dir.path());
    let corrupt = dir.path().join("vtab/dsprites_loc/images/train800val200/000001.jpg");
    let bytes = std::fs::read(&corrupt).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let r = recipe(dir.path(), VTAB);
    let run = runner(dir.path(), &["run", &r, "--quiet"], &[]);
    fails_with(&run, &[&format!("image {}: cannot decode", corrupt.display()), "failed on bad input"]);
    let records = losa_framework::store::read_records(&dir.path().join("runs/tiny")).unwrap();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.failure().is_some_and(|f| f.contains("cannot decode"))));
}
