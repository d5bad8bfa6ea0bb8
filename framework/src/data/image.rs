//! One image from file to network input: decode (JPEG, PNG), convert to RGB, resize, normalise
//! into a channel-first `f32` array.

use std::path::Path;

use std::cell::RefCell;

use fast_image_resize as fir;
use image::ImageFormat;
pub use image::RgbImage;
use image::imageops;

use super::DataError;
use crate::recipe::{Interpolation, Normalize, PreprocessConfig, Resize};

/// Per-channel mean and standard deviation, in `[0, 1]` pixel units: a pixel `p` (0–255) becomes
/// `(p / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    /// Mean of R, G, B.
    pub mean: [f32; 3],
    /// Standard deviation of R, G, B.
    pub std: [f32; 3],
}

impl Normalisation {
    /// The normalisation a preprocessing config asks for (a validated config: `custom` has both
    /// `mean` and `std`).
    pub fn of(preprocess: &PreprocessConfig) -> Self {
        let cast = |v: [f64; 3]| v.map(|x| x as f32);
        match preprocess.normalize {
            Normalize::Inception => Self { mean: [0.5; 3], std: [0.5; 3] },
            Normalize::Imagenet => Self { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
            Normalize::None => Self { mean: [0.0; 3], std: [1.0; 3] },
            Normalize::Custom => Self {
                mean: cast(preprocess.mean.unwrap_or([0.0; 3])),
                std: cast(preprocess.std.unwrap_or([1.0; 3])),
            },
        }
    }

    /// Writes `image` into `out` (length 3·H·W) channel-first, normalised.
    pub fn write_chw(&self, image: &RgbImage, out: &mut [f32]) {
        write_chw(&self.tables(), image, out);
    }

    /// The normalised value of every byte, per channel: one multiply-add per pixel becomes one
    /// load, and the result is the same for every image.
    fn tables(&self) -> [[f32; 256]; 3] {
        std::array::from_fn(|c| std::array::from_fn(|p| (p as f32 / 255.0 - self.mean[c]) / self.std[c]))
    }
}

fn write_chw(tables: &[[f32; 256]; 3], image: &RgbImage, out: &mut [f32]) {
    let plane = image.width() as usize * image.height() as usize;
    assert_eq!(out.len(), 3 * plane, "output length for a {}×{} image", image.width(), image.height());
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let pixels = image.as_raw().chunks_exact(3);
    for (((px, r), g), b) in pixels.zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
        *r = tables[0][px[0] as usize];
        *g = tables[1][px[1] as usize];
        *b = tables[2][px[2] as usize];
    }
}

/// How a decoded image becomes network input: resized to `image_size` by the preprocessing rule,
/// normalised, channel-first.
#[derive(Debug, Clone)]
pub struct Pipeline {
    preprocess: PreprocessConfig,
    image_size: usize,
    tables: [[f32; 256]; 3],
}

impl Pipeline {
    /// The pipeline of a preprocessing config at `image_size` × `image_size`.
    pub fn new(preprocess: &PreprocessConfig, image_size: usize) -> Self {
        let tables = Normalisation::of(preprocess).tables();
        Self { preprocess: preprocess.clone(), image_size, tables }
    }

    /// Side of the output, in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Values per prepared image: `3 · image_size²`.
    pub fn values(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// The preprocessing settings.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Resizes `image` to the output size and writes it normalised into `out` ([`Self::values`]
    /// long).
    pub fn prepare(&self, image: &RgbImage, out: &mut [f32]) -> Result<(), DataError> {
        let resized = resize(image, &self.preprocess, self.image_size)?;
        write_chw(&self.tables, &resized, out);
        Ok(())
    }

    /// Writes an image that already has the output size, normalised, into `out`.
    pub fn normalise(&self, image: &RgbImage, out: &mut [f32]) {
        write_chw(&self.tables, image, out);
    }
}

/// Decodes an image file (JPEG or PNG, recognised by content) to 8-bit RGB: grey images are
/// replicated into three channels, alpha is dropped, 16-bit samples are scaled down.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let bad = |message: String| DataError::BadImage { path: path.to_owned(), message };
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("not found".into()),
        _ => bad(format!("cannot read: {e}")),
    })?;
    let format = image::guess_format(&bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png))
        .ok_or_else(|| bad("not a JPEG or PNG file (unrecognised content)".into()))?;
    let decoded = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(bad(format!("has no pixels ({}×{})", decoded.width(), decoded.height())));
    }
    Ok(decoded.into_rgb8())
}

/// Resizes to `size` × `size` by the preprocessing rule: a square stretch, or the short side to
/// `size` followed by a centre crop (as torchvision's `Resize` + `CenterCrop`).
pub fn resize(image: &RgbImage, preprocess: &PreprocessConfig, size: usize) -> Result<RgbImage, DataError> {
    let size = size as u32;
    let (w, h) = image.dimensions();
    match preprocess.resize {
        Resize::Square => resize_region(image.as_raw(), (w, h), None, (size, size), preprocess.interpolation),
        Resize::ShortSideCrop => {
            let (rw, rh) = short_side(w, h, size);
            let resized = resize_region(image.as_raw(), (w, h), None, (rw, rh), preprocess.interpolation)?;
            let x = ((rw - size) as f64 / 2.0).round() as u32;
            let y = ((rh - size) as f64 / 2.0).round() as u32;
            Ok(imageops::crop_imm(&resized, x, y, size, size).to_image())
        }
    }
}

thread_local! {
    /// One resizer per thread: it keeps its scratch buffers from one image to the next.
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Resizes the region `crop` = (x, y, width, height) of the RGB image `pixels` of size `(w, h)`
/// (all of it when `None`) to `size` = (width, height) with the interpolation's filter.
///
/// fast_image_resize rather than `image::imageops::resize`: it is several times faster (see
/// bench/RESULTS.md) and resamples as Pillow does, which the PETL repositories use through
/// torchvision (Catmull-Rom is PIL's BICUBIC, a = −0.5; the filter widens when shrinking, so
/// downscaling averages instead of aliasing). Its output is within a grey level of PIL's.
pub(crate) fn resize_region(
    pixels: &[u8],
    (w, h): (u32, u32),
    crop: Option<(u32, u32, u32, u32)>,
    size: (u32, u32),
    interpolation: Interpolation,
) -> Result<RgbImage, DataError> {
    let region = crop.unwrap_or((0, 0, w, h));
    if crop.is_none() && (w, h) == size {
        return RgbImage::from_raw(w, h, pixels.to_vec()).ok_or_else(|| {
            DataError::Setting(format!("{} bytes do not hold a {w}×{h} RGB image", pixels.len()))
        });
    }
    let fail = |e: &dyn std::fmt::Display| {
        DataError::Setting(format!("resizing a {w}×{h} image to {}×{}: {e}", size.0, size.1))
    };
    if region.2 == 0 || region.3 == 0 || size.0 == 0 || size.1 == 0 {
        return Err(fail(&"empty source or target"));
    }
    let src = fir::images::ImageRef::new(w, h, pixels, fir::PixelType::U8x3).map_err(|e| fail(&e))?;
    let mut dst = fir::images::Image::new(size.0, size.1, fir::PixelType::U8x3);
    let filter = match interpolation {
        Interpolation::Bicubic => fir::FilterType::CatmullRom,
        Interpolation::Bilinear => fir::FilterType::Bilinear,
    };
    let (x, y, cw, ch) = region;
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(filter)).crop(
        f64::from(x),
        f64::from(y),
        f64::from(cw),
        f64::from(ch),
    );
    RESIZER.with_borrow_mut(|r| r.resize(&src, &mut dst, &options)).map_err(|e| fail(&e))?;
    RgbImage::from_raw(size.0, size.1, dst.into_vec()).ok_or_else(|| fail(&"unexpected output size"))
}

/// The size of a `w` × `h` image whose short side is resized to `size`, keeping the aspect ratio
/// (the long side truncated, as torchvision does).
fn short_side(w: u32, h: u32, size: u32) -> (u32, u32) {
    let long =
        |long: u32, short: u32| ((size as u64 * long as u64) / short.max(1) as u64).max(size as u64) as u32;
    if w <= h { (size, long(h, w)) } else { (long(w, h), size) }
}

/// Loads one image file as the backbone's input: decoded, converted to RGB, resized to
/// `image_size` × `image_size` by `preprocess`, normalised, channel-first (`3 · image_size²`
/// values, R plane then G then B). The same function prepares dataset images.
pub fn load_image(
    path: &Path,
    preprocess: &PreprocessConfig,
    image_size: usize,
) -> Result<Vec<f32>, DataError> {
    if image_size == 0 {
        return Err(DataError::Setting("the image size must be positive, found 0".into()));
    }
    let pipeline = Pipeline::new(preprocess, image_size);
    let mut out = vec![0.0; pipeline.values()];
    pipeline.prepare(&decode_rgb(path)?, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb};

    fn preprocess(resize: Resize, normalize: Normalize) -> PreprocessConfig {
        PreprocessConfig { resize, normalize, ..Default::default() }
    }

    #[test]
    fn grey_png_becomes_normalised_rgb_channel_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        GrayImage::from_fn(4, 4, |x, _| Luma([if x < 2 { 0 } else { 255 }])).save(&path).unwrap();
        let x = load_image(&path, &preprocess(Resize::Square, Normalize::Inception), 4).unwrap();
        assert_eq!(x.len(), 3 * 16);
        for c in 0..3 {
            assert_eq!(&x[c * 16..c * 16 + 4], &[-1.0, -1.0, 1.0, 1.0], "channel {c}, row 0");
        }
        let x = load_image(&path, &preprocess(Resize::Square, Normalize::None), 4).unwrap();
        assert_eq!(x[3], 1.0);
        let x = load_image(&path, &preprocess(Resize::Square, Normalize::Imagenet), 4).unwrap();
        assert!((x[0] - (0.0 - 0.485) / 0.229).abs() < 1e-6);
    }

    #[test]
    fn custom_normalisation_uses_the_recipe_values() {
        let p = PreprocessConfig {
            normalize: Normalize::Custom,
            mean: Some([0.1, 0.2, 0.3]),
            std: Some([0.5, 0.25, 2.0]),
            ..Default::default()
        };
        let n = Normalisation::of(&p);
        let mut out = [0.0; 3];
        n.write_chw(&RgbImage::from_pixel(1, 1, Rgb([255, 0, 51])), &mut out);
        let expect = [(1.0 - 0.1) / 0.5, -0.2 / 0.25, (0.2 - 0.3) / 2.0];
        assert!(out.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn square_stretches_and_short_side_crop_keeps_the_centre() {
        // 8 × 4: left quarter red, the rest blue.
        let img = RgbImage::from_fn(8, 4, |x, _| if x < 2 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let square = resize(&img, &preprocess(Resize::Square, Normalize::None), 4).unwrap();
        assert_eq!(square.dimensions(), (4, 4));
        assert!(square.get_pixel(0, 0)[0] > 200, "the red quarter survives a stretch");
        let crop = resize(&img, &preprocess(Resize::ShortSideCrop, Normalize::None), 4).unwrap();
        assert_eq!(crop.dimensions(), (4, 4));
        assert_eq!(crop.get_pixel(0, 0).0, [0, 0, 255], "the centre crop cuts the red quarter off");
        assert_eq!(short_side(500, 375, 224), (298, 224));
        assert_eq!(short_side(375, 500, 224), (224, 298));
        let bilinear = PreprocessConfig { interpolation: Interpolation::Bilinear, ..Default::default() };
        assert_eq!(resize(&img, &bilinear, 6).unwrap().dimensions(), (6, 6));
    }

    #[test]
    fn shrinking_averages_fine_detail_instead_of_aliasing() {
        // One-pixel stripes shrunk 4×: a filter that does not widen would pick stripes.
        let stripes = RgbImage::from_fn(64, 64, |x, _| Rgb([if x % 2 == 0 { 0 } else { 255 }; 3]));
        for interpolation in [Interpolation::Bicubic, Interpolation::Bilinear] {
            let p = PreprocessConfig { interpolation, ..Default::default() };
            let small = resize(&stripes, &p, 16).unwrap();
            assert!(
                small.pixels().all(|px| (108..=148).contains(&px[0])),
                "{interpolation:?}: {:?}",
                small.get_pixel(3, 3)
            );
        }
    }

    #[test]
    fn jpeg_decodes_by_content_whatever_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.png");
        let img = RgbImage::from_pixel(10, 6, Rgb([200, 100, 50]));
        img.save_with_format(&path, image::ImageFormat::Jpeg).unwrap();
        let decoded = decode_rgb(&path).unwrap();
        assert_eq!(decoded.dimensions(), (10, 6));
        let px = decoded.get_pixel(5, 3).0;
        assert!(px.iter().zip([200, 100, 50]).all(|(&a, b)| (a as i32 - b).abs() < 8), "{px:?}");
    }

    #[test]
    fn missing_and_corrupt_images_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jpg");
        let e = decode_rgb(&missing).unwrap_err().to_string();
        assert_eq!(e, format!("image {}: not found", missing.display()));
        let text = dir.path().join("text.jpg");
        std::fs::write(&text, "hello").unwrap();
        let e = decode_rgb(&text).unwrap_err().to_string();
        assert!(e.contains("text.jpg") && e.contains("not a JPEG or PNG"), "{e}");
        let truncated = dir.path().join("cut.jpg");
        let mut bytes = Vec::new();
        RgbImage::from_pixel(64, 64, Rgb([9, 9, 9]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
        let e = decode_rgb(&truncated).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("cannot decode"), "{e}");
    }
}
