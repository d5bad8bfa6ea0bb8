//! How each method is drawn: one colour and one marker shape in every chart, table swatch and
//! curve, so a method is recognised everywhere, in black and white print too.

/// Okabe–Ito colours (distinguishable with colour-vision deficiencies), yellow left out (too
/// light on white paper).
const COLOURS: [&str; 7] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

/// The grey of published reference points.
pub const PUBLISHED_GREY: &str = "#8a8a8a";

/// A marker shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// ●
    Circle,
    /// ■
    Square,
    /// ▲
    Triangle,
    /// ◆
    Diamond,
    /// ▼
    TriangleDown,
    /// ✕
    Cross,
    /// ✚
    Plus,
}

const MARKERS: [Marker; 7] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::TriangleDown,
    Marker::Cross,
    Marker::Plus,
];

/// How one method is drawn everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Stroke and fill colour.
    pub colour: &'static str,
    /// Marker shape.
    pub marker: Marker,
}

impl Style {
    /// The style of the method at row `index` (colours and shapes cycle together, so the first 7
    /// methods differ in both).
    pub fn of(index: usize) -> Style {
        Style { colour: COLOURS[index % COLOURS.len()], marker: MARKERS[index % MARKERS.len()] }
    }
}

/// An SVG marker of `style` centred at (x, y), filled or hollow.
pub fn marker(x: f64, y: f64, style: Style, filled: bool) -> String {
    let (c, r) = (style.colour, 4.5);
    let fill = if filled { c } else { "#fff" };
    let paint = format!(r#"fill="{fill}" stroke="{c}" stroke-width="1.5""#);
    let poly = |pts: &[(f64, f64)]| {
        let p: Vec<String> =
            pts.iter().map(|(dx, dy)| format!("{:.1},{:.1}", x + dx * r, y + dy * r)).collect();
        format!(r#"<polygon points="{}" {paint}/>"#, p.join(" "))
    };
    match style.marker {
        Marker::Circle => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" {paint}/>"#),
        Marker::Square => poly(&[(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
        Marker::Triangle => poly(&[(0.0, -1.15), (1.0, 0.7), (-1.0, 0.7)]),
        Marker::TriangleDown => poly(&[(0.0, 1.15), (1.0, -0.7), (-1.0, -0.7)]),
        Marker::Diamond => poly(&[(0.0, -1.2), (1.0, 0.0), (0.0, 1.2), (-1.0, 0.0)]),
        Marker::Cross | Marker::Plus => {
            let (a, b) = if style.marker == Marker::Cross { (0.9, 0.9) } else { (1.1, 0.0) };
            format!(
                r#"<path d="M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}" stroke="{c}" stroke-width="2.2" fill="none"/>"#,
                x - a * r,
                y - b * r,
                x + a * r,
                y + b * r,
                x - b * r,
                y + a * r,
                x + b * r,
                y - a * r
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_differ_in_colour_and_marker_for_the_first_seven_methods() {
        let styles: Vec<Style> = (0..7).map(Style::of).collect();
        for i in 0..7 {
            for j in 0..i {
                assert_ne!(styles[i].colour, styles[j].colour);
                assert_ne!(styles[i].marker, styles[j].marker);
            }
        }
        assert_eq!(Style::of(7), Style::of(0));
        assert!(marker(1.0, 2.0, Style::of(0), false).contains(r##"fill="#fff""##));
    }
}
