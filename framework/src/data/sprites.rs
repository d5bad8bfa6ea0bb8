//! Sprites of the procedural suite: five flat shapes, rotated, scaled and coloured, drawn
//! anti-aliased onto an RGB image.
//!
//! No shape has rotational symmetry (a square, circle or cross would make "orientation"
//! ambiguous), and each fits in the unit disc so that a sprite of radius `r` never leaves a
//! circle of radius `r` around its centre, whatever its rotation.

use image::RgbImage;

/// A sprite's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A tall isosceles triangle pointing up.
    Triangle,
    /// The letter L.
    Ell,
    /// The letter T.
    Tee,
    /// A half disc, flat side down.
    HalfDisc,
    /// A heart, tip down.
    Heart,
}

impl Shape {
    /// Every shape, in label order.
    pub const ALL: [Shape; 5] = [Shape::Triangle, Shape::Ell, Shape::Tee, Shape::HalfDisc, Shape::Heart];

    /// Whether the point `(u, v)` of the unit frame (v up, the shape upright) is inside the shape.
    pub fn contains(self, u: f64, v: f64) -> bool {
        match self {
            Shape::Triangle => inside(&[(0.0, 0.95), (-0.6, -0.7), (0.6, -0.7)], u, v),
            Shape::Ell => inside(
                &[(-0.55, 0.8), (-0.05, 0.8), (-0.05, -0.35), (0.55, -0.35), (0.55, -0.8), (-0.55, -0.8)],
                u,
                v,
            ),
            Shape::Tee => inside(
                &[
                    (-0.65, 0.72),
                    (0.65, 0.72),
                    (0.65, 0.27),
                    (0.25, 0.27),
                    (0.25, -0.9),
                    (-0.25, -0.9),
                    (-0.25, 0.27),
                    (-0.65, 0.27),
                ],
                u,
                v,
            ),
            Shape::HalfDisc => v >= -0.3 && u * u + (v + 0.3) * (v + 0.3) <= 0.81,
            Shape::Heart => {
                // The classic heart curve (x² + y² − 1)³ = x² y³, scaled into the unit disc.
                let (x, y) = (u * 1.4, v * 1.4 + 0.1);
                let r = x * x + y * y - 1.0;
                r * r * r - x * x * y * y * y <= 0.0
            }
        }
    }
}

/// Even–odd point-in-polygon test.
fn inside(polygon: &[(f64, f64)], u: f64, v: f64) -> bool {
    let mut odd = false;
    let mut j = polygon.len() - 1;
    for (i, &(xi, yi)) in polygon.iter().enumerate() {
        let (xj, yj) = polygon[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            odd = !odd;
        }
        j = i;
    }
    odd
}

/// One sprite on an image, in pixel units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sprite {
    /// The shape.
    pub shape: Shape,
    /// Fill colour.
    pub colour: [u8; 3],
    /// Centre, x (right), in pixels.
    pub x: f64,
    /// Centre, y (down), in pixels.
    pub y: f64,
    /// Radius of the circle the sprite fits in, in pixels.
    pub radius: f64,
    /// Counter-clockwise rotation in radians (0: upright).
    pub angle: f64,
}

/// Sub-samples per pixel side: 3 × 3 samples give each edge pixel its covered fraction, so sizes
/// and angles stay visible below a pixel.
const SUB: usize = 3;

impl Sprite {
    /// Draws the sprite onto `image`, blending its colour by covered area.
    pub fn draw(&self, image: &mut RgbImage) {
        let (w, h) = (image.width() as i64, image.height() as i64);
        let (sin, cos) = self.angle.sin_cos();
        let x0 = ((self.x - self.radius).floor() as i64).clamp(0, w);
        let x1 = ((self.x + self.radius).ceil() as i64 + 1).clamp(0, w);
        let y0 = ((self.y - self.radius).floor() as i64).clamp(0, h);
        let y1 = ((self.y + self.radius).ceil() as i64 + 1).clamp(0, h);
        for py in y0..y1 {
            for px in x0..x1 {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let dx = px as f64 + (sx as f64 + 0.5) / SUB as f64 - self.x;
                        let dy = self.y - (py as f64 + (sy as f64 + 0.5) / SUB as f64);
                        let u = (dx * cos + dy * sin) / self.radius;
                        let v = (-dx * sin + dy * cos) / self.radius;
                        hits += usize::from(self.shape.contains(u, v));
                    }
                }
                if hits > 0 {
                    let a = hits as f64 / (SUB * SUB) as f64;
                    let pixel = image.get_pixel_mut(px as u32, py as u32);
                    for (c, &fill) in pixel.0.iter_mut().zip(&self.colour) {
                        *c = (*c as f64 * (1.0 - a) + fill as f64 * a).round() as u8;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn area(shape: Shape) -> f64 {
        let n = 400;
        let step = 2.0 / n as f64;
        let mut hits = 0;
        for i in 0..n {
            for j in 0..n {
                let (u, v) = (-1.0 + (i as f64 + 0.5) * step, -1.0 + (j as f64 + 0.5) * step);
                if shape.contains(u, v) {
                    assert!(u * u + v * v <= 1.0, "{shape:?} leaves the unit disc at ({u}, {v})");
                    hits += 1;
                }
            }
        }
        hits as f64 * step * step
    }

    #[test]
    fn shapes_fit_the_unit_disc_and_are_not_tiny() {
        for shape in Shape::ALL {
            let a = area(shape);
            assert!((0.7..2.2).contains(&a), "{shape:?} covers {a} of the unit square's 4");
        }
    }

    #[test]
    fn no_shape_looks_the_same_after_a_turn() {
        // The orientation task needs every quarter turn of every shape to differ clearly.
        for shape in Shape::ALL {
            for turn in [PI / 2.0, PI, 1.5 * PI, 2.0 * PI / 3.0] {
                let (s, c) = turn.sin_cos();
                let mut differ = 0;
                for i in 0..60 {
                    for j in 0..60 {
                        let (u, v) = (-1.0 + i as f64 / 30.0, -1.0 + j as f64 / 30.0);
                        differ +=
                            usize::from(shape.contains(u, v) != shape.contains(u * c - v * s, u * s + v * c));
                    }
                }
                assert!(differ > 200, "{shape:?} turned by {turn}: only {differ} of 3600 points differ");
            }
        }
    }

    #[test]
    fn a_drawn_sprite_covers_its_area_around_its_centre() {
        let mut img = RgbImage::new(40, 40);
        let sprite = Sprite {
            shape: Shape::HalfDisc,
            colour: [255, 0, 0],
            x: 20.0,
            y: 20.0,
            radius: 10.0,
            angle: 0.0,
        };
        sprite.draw(&mut img);
        let red: f64 = img.pixels().map(|p| p[0] as f64 / 255.0).sum();
        let expected = area(Shape::HalfDisc) * 100.0;
        assert!((red - expected).abs() < 0.05 * expected, "{red} vs {expected}");
        assert_eq!(img.get_pixel(20, 16).0, [255, 0, 0], "above the flat side: inside");
        assert_eq!(img.get_pixel(20, 24).0, [0, 0, 0], "below the flat side: outside");
        let mut turned = RgbImage::new(40, 40);
        Sprite { angle: PI, ..sprite }.draw(&mut turned);
        assert_eq!(turned.get_pixel(20, 24).0, [255, 0, 0], "turned upside down");
    }
}
