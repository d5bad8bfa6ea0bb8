//! Charts drawn as inline SVG: axis scales with readable ticks (linear and log), the Pareto front,
//! and the accuracy-versus-cost scatter plots (methods drawn in their [`Style`]).

use std::fmt::Write;

use crate::labels::{Label, Placed, Rect, line_box, marker_box, place};
use crate::style::{PUBLISHED_GREY, Style, marker};

/// A mapping from data values to [0, 1] along an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Linear between `lo` and `hi`.
    Linear {
        /// Value at 0.
        lo: f64,
        /// Value at 1.
        hi: f64,
    },
    /// Logarithmic between `lo` and `hi` (both powers of ten, `lo` > 0).
    Log {
        /// Value at 0.
        lo: f64,
        /// Value at 1.
        hi: f64,
    },
}

impl Scale {
    /// A linear scale covering [min, max], widened to round tick values.
    pub fn linear(min: f64, max: f64) -> Scale {
        let (min, max) = if max - min < 1e-9 { (min - 1.0, max + 1.0) } else { (min, max) };
        let step = nice_step((max - min) / 5.0);
        Scale::Linear { lo: (min / step).floor() * step, hi: (max / step).ceil() * step }
    }

    /// A log scale covering [min, max] (min > 0), widened to whole decades.
    pub fn log(min: f64, max: f64) -> Scale {
        let lo = decade(1.0, min.log10().floor() as i32);
        let mut hi = decade(1.0, max.log10().ceil() as i32);
        if hi <= lo {
            hi = lo * 10.0;
        }
        Scale::Log { lo, hi }
    }

    /// Where `v` lies, 0 at `lo` and 1 at `hi`; `None` for values a log scale cannot show (≤ 0).
    pub fn unit(&self, v: f64) -> Option<f64> {
        match *self {
            Scale::Linear { lo, hi } => Some((v - lo) / (hi - lo)),
            Scale::Log { lo, hi } if v > 0.0 => Some((v.log10() - lo.log10()) / (hi.log10() - lo.log10())),
            Scale::Log { .. } => None,
        }
    }

    /// Tick values: multiples of 1, 2 or 5 × 10^k (about five) for linear scales; every decade
    /// for log scales, with 2 and 5 in between when the scale spans a single decade.
    pub fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { lo, hi } => {
                let step = nice_step((hi - lo) / 5.0);
                let first = (lo / step).round() as i64;
                let last = (hi / step).round() as i64;
                (first..=last).map(|k| clean(k as f64 * step)).collect()
            }
            Scale::Log { lo, hi } => {
                let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
                let mults: &[f64] = if b - a <= 1 { &[1.0, 2.0, 5.0] } else { &[1.0] };
                let mut ticks: Vec<f64> = (a..=b)
                    .flat_map(|e| mults.iter().map(move |&m| decade(m, e)))
                    .filter(|&t| t <= hi * 1.000_001)
                    .collect();
                ticks.dedup();
                ticks
            }
        }
    }
}

/// The smallest of 1, 2, 5 × 10^k that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw * 0.999_999)
        .unwrap_or(10.0 * magnitude)
}

/// `m` × 10^`e` as the double nearest to its decimal value (0.01, not 0.010000000000000002).
fn decade(m: f64, e: i32) -> f64 {
    format!("{m}e{e}").parse().unwrap_or(m * 10f64.powi(e))
}

/// Removes float noise from tick values (0.30000000000000004 → 0.3).
fn clean(v: f64) -> f64 {
    format!("{v:.10e}").parse().unwrap_or(v)
}

/// A point of a scatter plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The label drawn beside the marker.
    pub label: String,
    /// The cost (x).
    pub cost: f64,
    /// The accuracy (y), in percent.
    pub accuracy: f64,
    /// How it is drawn.
    pub style: Style,
    /// A published reference point: hollow, grey label, not part of the Pareto front.
    pub published: bool,
}

/// Indices of the points no other point dominates (one with at most the cost and at least the
/// accuracy, better in one of them), sorted by cost. Equal points are all on the front.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let dominated = |i: usize| {
        let (c, a) = points[i];
        points.iter().any(|&(c2, a2)| c2 <= c && a2 >= a && (c2 < c || a2 > a))
    };
    let mut front: Vec<usize> = (0..points.len()).filter(|&i| !dominated(i)).collect();
    front.sort_by(|&i, &j| points[i].0.total_cmp(&points[j].0));
    front
}

/// A scatter plot of accuracy against a cost.
#[derive(Debug, Clone)]
pub struct Scatter<'a> {
    /// Caption above the plot.
    pub title: &'a str,
    /// The x-axis title, with its unit.
    pub x_label: &'a str,
    /// The y-axis title.
    pub y_label: &'a str,
    /// Whether x is on a log scale (zeros then get their own slot left of the axis).
    pub log_x: bool,
    /// How tick values print.
    pub x_format: fn(f64) -> String,
    /// The points.
    pub points: Vec<Point>,
}

const W: f64 = 400.0;
const H: f64 = 290.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 42.0;
const PAD: f64 = 10.0;
/// Share of the x-axis given to the "0" slot of a log axis.
const ZERO_SLOT: f64 = 0.1;

impl Scatter<'_> {
    /// The x scale and whether it has a zero slot (log scale with zero costs).
    pub fn x_scale(&self) -> Option<(Scale, bool)> {
        let xs: Vec<f64> = self.points.iter().map(|p| p.cost).collect();
        let positive: Vec<f64> = xs.iter().copied().filter(|&x| x > 0.0).collect();
        if self.log_x {
            let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = positive.iter().copied().fold(0.0, f64::max);
            let zero = xs.iter().any(|&x| x <= 0.0);
            (!positive.is_empty()).then(|| (Scale::log(lo, hi), zero))
        } else {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
            let hi = xs.iter().copied().fold(0.0, f64::max);
            (!xs.is_empty()).then(|| (Scale::linear(lo, hi), false))
        }
    }

    /// The x position in pixels of a cost.
    pub fn x_px(&self, scale: Scale, zero_slot: bool, v: f64) -> Option<f64> {
        let unit = match (zero_slot, v <= 0.0 && matches!(scale, Scale::Log { .. })) {
            (true, true) => Some(-ZERO_SLOT / (1.0 - ZERO_SLOT)),
            _ => scale.unit(v),
        }?;
        let span = W - LEFT - RIGHT - 2.0 * PAD;
        let (start, len) = if zero_slot { (span * ZERO_SLOT, span * (1.0 - ZERO_SLOT)) } else { (0.0, span) };
        Some(LEFT + PAD + start + unit * len)
    }

    /// The y position in pixels of an accuracy.
    pub fn y_px(scale: Scale, v: f64) -> f64 {
        H - BOTTOM - PAD - scale.unit(v).unwrap_or(0.0) * (H - TOP - BOTTOM - 2.0 * PAD)
    }

    /// The y scale.
    pub fn y_scale(&self) -> Scale {
        let ys = self.points.iter().map(|p| p.accuracy);
        let lo = ys.clone().fold(f64::INFINITY, f64::min);
        let hi = ys.fold(f64::NEG_INFINITY, f64::max);
        Scale::linear(lo, hi)
    }

    /// The plot as an SVG element, or `None` when no point can be drawn.
    pub fn svg(&self) -> Option<String> {
        let (xs, zero_slot) = self.x_scale()?;
        let ys = self.y_scale();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}"><title>{}</title>"#,
            escape(self.title),
            escape(self.title)
        );
        let (bottom, top) = (H - BOTTOM, TOP);
        for t in ys.ticks() {
            let y = Self::y_px(ys, t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 5.0,
                y + 3.5,
                crate::format::significant(t, 4)
            );
        }
        let mut x_ticks: Vec<(f64, String)> =
            xs.ticks().into_iter().map(|t| (t, (self.x_format)(t))).collect();
        if zero_slot {
            x_ticks.insert(0, (0.0, "0".into()));
        }
        for (t, label) in x_ticks {
            if let Some(x) = self.x_px(xs, zero_slot, t) {
                let _ = write!(
                    s,
                    r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}"/><text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    bottom + 14.0,
                    escape(&label)
                );
            }
        }
        let _ = write!(
            s,
            r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}"/><line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}"/>"#,
            W - RIGHT
        );
        if zero_slot && let Some(x) = self.x_px(xs, true, 0.0).zip(self.x_px(xs, true, xs.ticks()[0])) {
            // An axis break between the zero slot and the first decade.
            let m = (x.0 + x.1) / 2.0;
            let _ = write!(
                s,
                r#"<path class="break" d="M{:.1} {:.1}l4 -8M{:.1} {:.1}l4 -8"/>"#,
                m - 4.0,
                bottom + 4.0,
                m,
                bottom + 4.0
            );
        }
        let _ = write!(
            s,
            r#"<text class="axis-title" x="{:.1}" y="{}" text-anchor="middle">{}</text><text class="axis-title" transform="translate(12 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 6.0,
            escape(self.x_label),
            TOP + (H - TOP - BOTTOM) / 2.0,
            escape(self.y_label)
        );
        // The Pareto front of this recipe's methods, as the staircase of what is attainable.
        let own: Vec<&Point> = self.points.iter().filter(|p| !p.published).collect();
        let front = pareto_front(&own.iter().map(|p| (p.cost, p.accuracy)).collect::<Vec<_>>());
        let at = |p: &Point| self.x_px(xs, zero_slot, p.cost).map(|x| (x, Self::y_px(ys, p.accuracy)));
        let steps: Vec<(f64, f64)> = front.iter().filter_map(|&i| at(own[i])).collect();
        if steps.len() > 1 {
            let mut d = format!("M{:.1} {:.1}", steps[0].0, steps[0].1);
            for w in steps.windows(2) {
                let _ = write!(d, "H{:.1}V{:.1}", w[1].0, w[1].1);
            }
            let _ = write!(s, r#"<path class="pareto" d="{d}"/>"#);
        }
        for &(x, y) in &steps {
            let _ = write!(s, r#"<circle class="front" cx="{x:.1}" cy="{y:.1}" r="8"/>"#);
        }
        // Published points first, so this recipe's markers are drawn on top of them.
        let drawn: Vec<(f64, f64, &Point)> = self
            .points
            .iter()
            .filter(|p| p.published)
            .chain(own.iter().copied())
            .filter_map(|p| at(p).map(|(x, y)| (x, y, p)))
            .collect();
        for &(x, y, p) in &drawn {
            match p.published {
                true => {
                    let grey = Style { colour: PUBLISHED_GREY, ..p.style };
                    let _ = write!(
                        s,
                        "<g><title>{} (published)</title>{}</g>",
                        escape(&p.label),
                        marker(x, y, grey, false)
                    );
                }
                false => s.push_str(&marker(x, y, p.style, true)),
            }
        }
        let labels: Vec<Label<'_>> = drawn
            .iter()
            .map(|&(x, y, p)| Label {
                x,
                y,
                text: &p.label,
                required: !p.published,
                char_width: if p.published { 5.0 } else { 5.8 },
            })
            .collect();
        let mut obstacles: Vec<Rect> = drawn.iter().map(|&(x, y, _)| marker_box(x, y)).collect();
        for w in steps.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            obstacles.extend([line_box(x0, y0, x1, y0), line_box(x1, y0, x1, y1)]);
        }
        let placed = place(&labels, &obstacles, (LEFT + 2.0, TOP, W - 2.0, H - BOTTOM - 2.0));
        for (&(_, _, p), spot) in drawn.iter().zip(placed) {
            let Some(Placed { x, y, anchor }) = spot else { continue };
            let class = if p.published { "label published" } else { "label" };
            let _ = write!(
                s,
                r#"<text class="{class}" x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{}</text>"#,
                escape(&p.label)
            );
        }
        s.push_str("</svg>");
        Some(s)
    }
}

/// Escapes text for SVG and HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
#[path = "charts_tests.rs"]
mod tests;
