//! The built-in procedural suite, in the spirit of VTAB's structured tasks (dSprites, CLEVR):
//! sprites with a shape, scale, rotation, position and colour on a noisy dark background, each
//! task labelling one factor.
//!
//! Every image is a pure function of (seed, scene family, split, index), so any image can be made
//! on demand and nothing is stored. The single-sprite tasks share their images (the label differs
//! by task, as in dSprites); "count" has its own images of 1 to 8 sprites. The splits draw from
//! separate streams, so they are disjoint by construction; `train800val200` is `train800` then
//! `val200`. Factors are drawn uniformly, so every task's labels are balanced in expectation.

use image::{Rgb, RgbImage};

use super::seeded::{Purpose, Stream};
use super::sprites::{Shape, Sprite};
use crate::recipe::Split;

/// What a task's label encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// The 4 × 4 grid cell holding the sprite's centre, row by row.
    Location,
    /// The sprite's rotation, in 16 steps of 22.5°.
    Orientation,
    /// The sprite's size, in 6 steps.
    Scale,
    /// The sprite's shape.
    Shape,
    /// The number of sprites minus one.
    Count,
    /// Shape × colour.
    ShapeColour,
}

/// A task of the procedural suite: what the label of a sprite image encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticTask {
    /// Name as written in recipes.
    pub name: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// What the label means.
    pub description: &'static str,
    /// The factor the label encodes.
    pub factor: Factor,
}

const fn task(
    name: &'static str,
    classes: usize,
    factor: Factor,
    description: &'static str,
) -> SyntheticTask {
    SyntheticTask { name, classes, description, factor }
}

/// The downstream tasks, then the upstream (pretraining) task.
pub const TASKS: [SyntheticTask; 6] = [
    task("location", 16, Factor::Location, "which cell of a 4×4 grid holds the sprite"),
    task("orientation", 16, Factor::Orientation, "the sprite's rotation in 16 steps"),
    task("scale", 6, Factor::Scale, "the sprite's size in 6 steps"),
    task("shape", 5, Factor::Shape, "the sprite's shape: triangle, L, T, half disc, heart"),
    task("count", 8, Factor::Count, "how many sprites (1 to 8)"),
    task("upstream", 40, Factor::ShapeColour, "shape × colour, 5 × 8 (pretraining task)"),
];

/// Name of the pretraining task, which "all" leaves out.
pub const UPSTREAM: &str = "upstream";

/// Version of the image generator; it enters dataset identities, so a change to the images must
/// bump it (run ids and caches then change with it).
pub const RENDERER_VERSION: u32 = 1;

/// Expands task names and "all" into tasks, in recipe order, without repeats.
/// `key` is the recipe key path of the list, for the problems.
pub fn expand(
    names: &[String],
    key: &[String],
) -> Result<Vec<&'static SyntheticTask>, Vec<(Vec<String>, String)>> {
    let known: Vec<&str> = TASKS.iter().map(|t| t.name).chain(["all"]).collect();
    super::expand_names(names, key, "synthetic", &known, |name| match name {
        "all" => TASKS.iter().filter(|t| t.name != UPSTREAM).collect(),
        _ => TASKS.iter().filter(|t| t.name == name).collect(),
    })
}

/// Finds a task by name.
pub fn find(name: &str) -> Option<&'static SyntheticTask> {
    TASKS.iter().find(|t| t.name == name)
}

/// Fill colours, in label order: red, green, blue, yellow, magenta, cyan, orange, white.
pub const COLOURS: [[u8; 3]; 8] = [
    [230, 40, 40],
    [40, 200, 60],
    [50, 90, 240],
    [240, 220, 40],
    [220, 50, 220],
    [40, 220, 230],
    [250, 140, 20],
    [245, 245, 245],
];

/// Scale steps: the sprite's radius as a fraction of the image side. The largest stays within
/// 90 % of a grid cell's width (0.25) so every location cell can hold every size unclipped.
const SCALES: [f64; 6] = [0.1, 0.125, 0.15, 0.175, 0.2, 0.225];

/// Which images a generated sample is: they identify it completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyntheticImage {
    /// The dataset seed.
    pub seed: u64,
    /// Whether this is a "count" image (several sprites) or a single-sprite image.
    pub count: bool,
    /// The split it belongs to (`Train800`, `Val200` or `Test`).
    pub split: Split,
    /// Its index within the split.
    pub index: u64,
    /// Side in pixels.
    pub size: u32,
}

/// A sampled image: its sprites, background and every task's label.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The sprites, drawn in order.
    pub sprites: Vec<Sprite>,
    /// Labels by factor: location, orientation, scale, shape, count, shape × colour.
    labels: [u32; 6],
    stream: Stream,
}

impl SyntheticImage {
    /// Samples the scene (cheap: no pixels yet).
    pub fn scene(&self) -> Scene {
        let split = match self.split {
            Split::Train800 | Split::Train800Val200 => 0,
            Split::Val200 => 1,
            Split::Test => 2,
        };
        let mut rng =
            Stream::new(Purpose::Synthetic, self.seed, 4 * u64::from(self.count) + split, self.index);
        let s = self.size as f64;
        let shape_colour = |rng: &mut Stream| (rng.index(Shape::ALL.len()), rng.index(COLOURS.len()));
        let mut sprites = Vec::new();
        let mut labels = [0u32; 6];
        if self.count {
            // Sprites sit in distinct cells of a 3 × 3 grid, so they never overlap or hide each other.
            let n = 1 + rng.index(8);
            let mut cells: Vec<usize> = (0..9).collect();
            rng.shuffle(&mut cells);
            let cell = s / 3.0;
            for &c in &cells[..n] {
                let (shape, colour) = shape_colour(&mut rng);
                let radius = s * rng.uniform(0.08, 0.12);
                let slack = (cell / 2.0 - radius - 1.0).max(0.0);
                let x = cell * ((c % 3) as f64 + 0.5) + rng.uniform(-slack, slack);
                let y = cell * ((c / 3) as f64 + 0.5) + rng.uniform(-slack, slack);
                let angle = rng.uniform(0.0, std::f64::consts::TAU);
                sprites.push(Sprite {
                    shape: Shape::ALL[shape],
                    colour: COLOURS[colour],
                    x,
                    y,
                    radius,
                    angle,
                });
            }
            labels[4] = (n - 1) as u32;
        } else {
            let (cx, cy) = (rng.index(4), rng.index(4));
            let orientation = rng.index(16);
            let scale = rng.index(SCALES.len());
            let (shape, colour) = shape_colour(&mut rng);
            let radius = s * SCALES[scale];
            // The centre stays in the middle 80 % of its cell (clear labels) and the sprite
            // inside the image (nothing clipped).
            let coordinate = |cell: usize, rng: &mut Stream| {
                let w = s / 4.0;
                let lo = (w * (cell as f64 + 0.1)).max(radius);
                let hi = (w * (cell as f64 + 0.9)).min(s - radius);
                rng.uniform(lo.min(hi), hi)
            };
            let x = coordinate(cx, &mut rng);
            let y = coordinate(cy, &mut rng);
            // The angle stays in the middle half of its 22.5° step.
            let step = std::f64::consts::TAU / 16.0;
            let angle = step * (orientation as f64 + rng.uniform(0.25, 0.75));
            sprites.push(Sprite { shape: Shape::ALL[shape], colour: COLOURS[colour], x, y, radius, angle });
            labels = [
                (4 * cy + cx) as u32,
                orientation as u32,
                scale as u32,
                shape as u32,
                0,
                (shape * COLOURS.len() + colour) as u32,
            ];
        }
        Scene { sprites, labels, stream: rng }
    }

    /// Renders the image: a dark grey background with grain, then the sprites.
    pub fn render(&self) -> RgbImage {
        let mut scene = self.scene();
        let level = 16 + scene.stream.index(48) as i32;
        // Grain of ±10 grey levels, one random byte per pixel.
        let mut grain = vec![0u8; (self.size * self.size) as usize];
        scene.stream.fill(&mut grain);
        let mut image = RgbImage::new(self.size, self.size);
        for (pixel, g) in image.pixels_mut().zip(grain) {
            let grey = (level + ((i32::from(g) * 21) >> 8) - 10).clamp(0, 255) as u8;
            *pixel = Rgb([grey; 3]);
        }
        for sprite in &scene.sprites {
            sprite.draw(&mut image);
        }
        image
    }
}

impl Scene {
    /// This scene's label for a task.
    pub fn label(&self, task: &SyntheticTask) -> u32 {
        let i = match task.factor {
            Factor::Location => 0,
            Factor::Orientation => 1,
            Factor::Scale => 2,
            Factor::Shape => 3,
            Factor::Count => 4,
            Factor::ShapeColour => 5,
        };
        self.labels[i]
    }
}

/// The images and labels of one split of a synthetic task with the given split sizes.
pub fn split_images(
    task: &SyntheticTask,
    seed: u64,
    size: u32,
    sizes: [usize; 3],
    split: Split,
) -> Vec<(SyntheticImage, u32)> {
    let [train, val, test] = sizes;
    let part = |split: Split, n: usize| {
        (0..n as u64).map(move |index| {
            let image = SyntheticImage { seed, count: task.factor == Factor::Count, split, index, size };
            (image, image.scene().label(task))
        })
    };
    match split {
        Split::Train800 => part(Split::Train800, train).collect(),
        Split::Val200 => part(Split::Val200, val).collect(),
        Split::Train800Val200 => part(Split::Train800, train).chain(part(Split::Val200, val)).collect(),
        Split::Test => part(Split::Test, test).collect(),
    }
}

#[cfg(test)]
#[path = "synthetic_tests.rs"]
mod tests;
