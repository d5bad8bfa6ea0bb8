//! Decode + resize throughput of the data pipeline, in images per second.
//!
//! Writes JPEGs like VTAB-1k's (500 × 375, quality 75) into a folder, then times, on one thread
//! and on every core (rayon): decoding alone, decoding + bicubic or bilinear resize to 224 × 224,
//! and the full `load_image` (decode, resize, normalise to CHW f32). Each figure is the best of
//! several rounds over every file. `bench/pil_decode.py` times PIL on the same files.
//!
//! ```sh
//! cargo run --release -p losa-bench --bin decode -- [--dir DIR] [--count N] [--rounds R]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use losa_framework::data::image::{decode_rgb, resize};
use losa_framework::data::{DataError, load_image};
use losa_framework::recipe::{Interpolation, PreprocessConfig};
use rayon::prelude::*;

/// The allocator `runner` uses (see its main.rs), so the figures are what a run sees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WIDTH: u32 = 500;
const HEIGHT: u32 = 375;
const QUALITY: u8 = 75;
const SIZE: usize = 224;

fn main() -> Result<(), Box<dyn Error>> {
    let mut dir = std::env::temp_dir().join("losa-bench-jpegs");
    let mut count = 64usize;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(value()?),
            "--count" => count = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            _ => return Err(format!("unknown argument {arg:?}; expected --dir, --count or --rounds").into()),
        }
    }
    let files = write_jpegs(&dir, count)?;
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    println!(
        "{count} JPEGs {WIDTH}x{HEIGHT} q{QUALITY} in {} (mean {:.1} KiB); {} rayon threads; best of {rounds} rounds",
        dir.display(),
        bytes as f64 / count as f64 / 1024.0,
        rayon::current_num_threads()
    );
    let bicubic = PreprocessConfig::default();
    let bilinear = PreprocessConfig { interpolation: Interpolation::Bilinear, ..Default::default() };
    type Work<'a> = Box<dyn Fn(&Path) -> Result<usize, DataError> + Sync + 'a>;
    let cases: Vec<(&str, Work)> = vec![
        ("decode", Box::new(|f| Ok(decode_rgb(f)?.len()))),
        ("decode + bicubic resize 224", Box::new(|f| Ok(resize(&decode_rgb(f)?, &bicubic, SIZE)?.len()))),
        ("decode + bilinear resize 224", Box::new(|f| Ok(resize(&decode_rgb(f)?, &bilinear, SIZE)?.len()))),
        ("load_image (bicubic, normalised CHW f32)", Box::new(|f| Ok(load_image(f, &bicubic, SIZE)?.len()))),
        // The `image` crate's own resampler, for comparison (not used by losa).
        (
            "decode + image::imageops::resize CatmullRom 224",
            Box::new(|f| Ok(image_crate(&decode_rgb(f)?, FilterType::CatmullRom).len())),
        ),
        (
            "decode + image::imageops::resize Triangle 224",
            Box::new(|f| Ok(image_crate(&decode_rgb(f)?, FilterType::Triangle).len())),
        ),
    ];
    // The first image resized by losa, so that pil_decode.py can compare it with PIL's resize.
    for (name, preprocess) in [("bicubic", &bicubic), ("bilinear", &bilinear)] {
        let ours = resize(&decode_rgb(&files[0])?, preprocess, SIZE)?;
        ours.save(dir.join(format!("resized-{name}.png")))?;
    }
    println!("\n| operation | 1 thread (images/s) | all cores (images/s) |\n| --- | ---: | ---: |");
    for (name, work) in &cases {
        let single = best(rounds, files.len(), || files.iter().try_for_each(|f| work(f).map(drop)))?;
        let parallel = best(rounds, files.len(), || files.par_iter().try_for_each(|f| work(f).map(drop)))?;
        println!("| {name} | {single:.0} | {parallel:.0} |");
    }
    Ok(())
}

fn image_crate(image: &RgbImage, filter: FilterType) -> RgbImage {
    image::imageops::resize(image, SIZE as u32, SIZE as u32, filter)
}

/// Images per second of the fastest of `rounds` runs of `run` over `n` images.
fn best(rounds: usize, n: usize, run: impl Fn() -> Result<(), DataError>) -> Result<f64, DataError> {
    run()?; // warm-up: file cache, allocator, thread pool
    let mut fastest = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        run()?;
        fastest = fastest.min(start.elapsed().as_secs_f64());
    }
    Ok(n as f64 / fastest)
}

/// Writes `count` photo-like JPEGs (smooth gradients, edges, texture and grain, so the encoder
/// keeps a realistic number of coefficients); reuses files already there.
fn write_jpegs(dir: &Path, count: usize) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("{i:06}.jpg"));
        if !path.exists() {
            let image = photo(i as u32);
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
            JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&image)?;
        }
        files.push(path);
    }
    Ok(files)
}

fn photo(seed: u32) -> RgbImage {
    let hash = |x: u32, y: u32| {
        let mut h =
            x.wrapping_mul(0x9E37_79B9) ^ y.wrapping_mul(0x85EB_CA6B) ^ seed.wrapping_mul(0xC2B2_AE35);
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        (h ^ (h >> 12)) & 0xff
    };
    let f = seed as f32 * 0.37;
    RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let (u, v) = (x as f32 / WIDTH as f32, y as f32 / HEIGHT as f32);
        let sky = 120.0 + 80.0 * (u * 3.0 + f).sin() * (v * 2.0).cos();
        let texture = 30.0 * ((x as f32 * 0.21 + f).sin() * (y as f32 * 0.13).cos());
        let object =
            if ((u - 0.5).powi(2) + (v - 0.55).powi(2)) < 0.04 + 0.02 * f.sin() { 70.0 } else { 0.0 };
        let grain = hash(x, y) as f32 / 255.0 * 24.0 - 12.0;
        let c = |offset: f32| (sky + texture + object + grain + offset).clamp(0.0, 255.0) as u8;
        Rgb([c(0.0), c(-20.0 * v), c(40.0 * u - 20.0)])
    })
}
