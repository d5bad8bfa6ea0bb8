//! The procedural suite: determinism, disjoint splits, and labels that match the pixels.

use super::*;
use crate::canonical::sha256_hex;

fn image(count: bool, split: Split, index: u64) -> SyntheticImage {
    SyntheticImage { seed: 0, count, split, index, size: 64 }
}

#[test]
fn images_are_pinned_so_a_change_that_alters_them_is_noticed() {
    // If this fails, bump RENDERER_VERSION (cached features and run ids depend on the images).
    let single = sha256_hex(image(false, Split::Train800, 3).render().as_raw());
    let count = sha256_hex(image(true, Split::Test, 5).render().as_raw());
    assert_eq!((&single[..12], &count[..12]), ("d913f8c6d60d", "aa09bfa8c970"));
    assert_eq!(RENDERER_VERSION, 1);
}

#[test]
fn an_image_depends_on_seed_split_and_index_only() {
    let a = image(false, Split::Train800, 7);
    assert_eq!(a.render(), a.render());
    assert_ne!(a.render(), SyntheticImage { seed: 1, ..a }.render());
    assert_ne!(a.render(), SyntheticImage { index: 8, ..a }.render());
    assert_ne!(a.render(), SyntheticImage { split: Split::Val200, ..a }.render());
    assert_ne!(a.render(), SyntheticImage { split: Split::Test, ..a }.render());
    assert_eq!(a.render().dimensions(), (64, 64));
    assert_eq!(SyntheticImage { size: 32, ..a }.render().dimensions(), (32, 32));
}

#[test]
fn splits_have_their_sizes_and_train800val200_is_train800_then_val200() {
    let task = find("shape").unwrap();
    let sizes = [30, 10, 20];
    let split = |s| split_images(task, 0, 32, sizes, s);
    let (train, val, test) = (split(Split::Train800), split(Split::Val200), split(Split::Test));
    assert_eq!((train.len(), val.len(), test.len()), (30, 10, 20));
    assert_eq!(split(Split::Train800Val200), [train.clone(), val.clone()].concat());
    let renders = |v: &[(SyntheticImage, u32)]| v.iter().map(|(i, _)| i.render()).collect::<Vec<_>>();
    let (train, val, test) = (renders(&train), renders(&val), renders(&test));
    assert!(train.iter().all(|t| !val.contains(t) && !test.contains(t)), "disjoint");
}

#[test]
fn every_task_has_balanced_labels_in_range() {
    for task in &TASKS {
        let mut counts = vec![0usize; task.classes];
        for (_, label) in split_images(task, 3, 32, [800, 0, 0], Split::Train800) {
            counts[label as usize] += 1;
        }
        let mean = 800 / task.classes;
        assert!(counts.iter().all(|&c| c >= mean / 3 && c <= mean * 2), "{}: {counts:?}", task.name);
    }
    assert_eq!(expand(&["all".into()], &[]).unwrap().len(), 5, "all leaves upstream out");
    assert!(find("upstream").is_some() && find("shapes").is_none());
}

#[test]
fn labels_describe_the_sprite_that_is_drawn() {
    let step = std::f64::consts::TAU / 16.0;
    for index in 0..200 {
        let img = image(false, Split::Test, index);
        let scene = img.scene();
        let s = &scene.sprites[0];
        let label = |name| scene.label(find(name).unwrap());
        assert_eq!(label("location"), 4 * (s.y / 16.0) as u32 + (s.x / 16.0) as u32);
        assert_eq!(label("orientation"), (s.angle / step) as u32);
        assert_eq!(s.radius, 64.0 * SCALES[label("scale") as usize]);
        assert_eq!(Shape::ALL[label("shape") as usize], s.shape);
        assert_eq!(
            label("upstream"),
            label("shape") * 8 + COLOURS.iter().position(|c| *c == s.colour).unwrap() as u32
        );
        assert!(
            s.x - s.radius >= 0.0
                && s.x + s.radius <= 64.0
                && s.y - s.radius >= 0.0
                && s.y + s.radius <= 64.0
        );
        // The sprite's pixels are where the scene says: their centroid lies in the labelled cell.
        let pixels = img.render();
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for (x, y, p) in pixels.enumerate_pixels() {
            if p.0.iter().any(|&c| c > 120) {
                (sx, sy, n) = (sx + x as f64 + 0.5, sy + y as f64 + 0.5, n + 1.0);
            }
        }
        assert!(n > 10.0, "sprite {index} is visible");
        assert!(
            (sx / n - s.x).abs() < 0.5 * s.radius && (sy / n - s.y).abs() < 0.5 * s.radius,
            "sprite {index}"
        );
    }
}

#[test]
fn count_images_show_as_many_separate_sprites_as_the_label_says() {
    let task = find("count").unwrap();
    for (img, label) in split_images(task, 0, 64, [0, 0, 60], Split::Test) {
        let pixels = img.render();
        assert_eq!(blobs(&pixels), label as usize + 1, "{img:?}");
    }
}

/// Connected regions of bright pixels (8-neighbourhood: thin anti-aliased bars stay whole).
fn blobs(img: &RgbImage) -> usize {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let bright = |x: i64, y: i64| img.get_pixel(x as u32, y as u32).0.iter().any(|&c| c > 100);
    let mut seen = vec![false; (w * h) as usize];
    let mut n = 0;
    for start in 0..w * h {
        if seen[start as usize] || !bright(start % w, start / w) {
            continue;
        }
        n += 1;
        let mut stack = vec![start];
        seen[start as usize] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            for (nx, ny) in (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (x + dx, y + dy))) {
                let j = ny * w + nx;
                if (0..w).contains(&nx) && (0..h).contains(&ny) && !seen[j as usize] && bright(nx, ny) {
                    seen[j as usize] = true;
                    stack.push(j);
                }
            }
        }
    }
    n
}
