//! Placing point labels in a chart: each label goes to the first of eight spots around its point
//! where it stays inside the plot and covers no marker and no label placed before it. Labels of the
//! recipe's own methods always show (in their first spot inside the plot if every spot is taken);
//! optional ones (published points) are left out where there is no room, since a crowd of
//! overlapping names reads as nothing, and their markers keep the name as a tooltip.

/// A label to place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label<'a> {
    /// The point's position in pixels.
    pub x: f64,
    /// The point's position in pixels.
    pub y: f64,
    /// The text.
    pub text: &'a str,
    /// Shown even where it must overlap.
    pub required: bool,
    /// Estimated width of one character in pixels (the font size times about 0.58).
    pub char_width: f64,
}

/// Where a label is drawn: the text's anchor point and alignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    /// Anchor x in pixels.
    pub x: f64,
    /// Baseline y in pixels.
    pub y: f64,
    /// SVG `text-anchor`: "start", "end" or "middle".
    pub anchor: &'static str,
}

/// An axis-aligned rectangle in pixels: (left, top, right, bottom).
pub type Rect = (f64, f64, f64, f64);

/// Spots around a point, in order of preference: (dx, dy of the baseline, anchor).
const SPOTS: [(f64, f64, &str); 8] = [
    (8.0, 3.5, "start"),
    (-8.0, 3.5, "end"),
    (0.0, -9.0, "middle"),
    (0.0, 16.0, "middle"),
    (7.0, -7.0, "start"),
    (7.0, 14.0, "start"),
    (-7.0, -7.0, "end"),
    (-7.0, 14.0, "end"),
];

/// Half the size of a marker's box.
const MARKER: f64 = 5.5;

/// The box a marker centred at (x, y) covers.
pub fn marker_box(x: f64, y: f64) -> Rect {
    (x - MARKER, y - MARKER, x + MARKER, y + MARKER)
}

/// The box a line from (x0, y0) to (x1, y1) covers, for horizontal and vertical lines.
pub fn line_box(x0: f64, y0: f64, x1: f64, y1: f64) -> Rect {
    (x0.min(x1) - 1.0, y0.min(y1) - 1.0, x0.max(x1) + 1.0, y0.max(y1) + 1.0)
}

/// Places `labels` (required ones first, then the others, each group in order) around their
/// points, avoiding the `obstacles` (markers, lines) and each other, inside `bounds`. The result
/// is aligned with `labels`; `None` marks an optional label that found no free spot.
pub fn place(labels: &[Label<'_>], obstacles: &[Rect], bounds: Rect) -> Vec<Option<Placed>> {
    let mut taken: Vec<Rect> = obstacles.to_vec();
    let mut out = vec![None; labels.len()];
    let order = (0..labels.len())
        .filter(|&i| labels[i].required)
        .chain((0..labels.len()).filter(|&i| !labels[i].required));
    for i in order {
        let l = labels[i];
        let width = l.text.chars().count() as f64 * l.char_width;
        let spots: Vec<(Placed, Rect)> = SPOTS
            .iter()
            .map(|&(dx, dy, anchor)| {
                let p = Placed { x: l.x + dx, y: l.y + dy, anchor };
                (p, rect(p, width))
            })
            .filter(|(_, r)| inside(*r, bounds))
            .collect();
        let free = spots.iter().find(|(_, r)| !taken.iter().any(|t| overlaps(*r, *t)));
        let chosen = match free {
            Some(spot) => Some(*spot),
            None if l.required => spots.first().copied().or(Some({
                let p = Placed { x: l.x + SPOTS[0].0, y: l.y + SPOTS[0].1, anchor: SPOTS[0].2 };
                (p, rect(p, width))
            })),
            None => None,
        };
        if let Some((p, r)) = chosen {
            taken.push(r);
            out[i] = Some(p);
        }
    }
    out
}

/// The box a text of `width` covers when anchored at `p` (cap height above, descenders below).
fn rect(p: Placed, width: f64) -> Rect {
    let (x0, x1) = match p.anchor {
        "start" => (p.x, p.x + width),
        "end" => (p.x - width, p.x),
        _ => (p.x - width / 2.0, p.x + width / 2.0),
    };
    (x0, p.y - 8.0, x1, p.y + 2.0)
}

fn overlaps(a: Rect, b: Rect) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

fn inside(r: Rect, bounds: Rect) -> bool {
    r.0 >= bounds.0 && r.1 >= bounds.1 && r.2 <= bounds.2 && r.3 <= bounds.3
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Rect = (0.0, 0.0, 400.0, 300.0);

    fn label(x: f64, y: f64, text: &str, required: bool) -> Label<'_> {
        Label { x, y, text, required, char_width: 6.0 }
    }

    #[test]
    fn a_lone_label_goes_right_of_its_point() {
        let placed = place(&[label(100.0, 100.0, "lora", true)], &[marker_box(100.0, 100.0)], BOUNDS);
        assert_eq!(placed, [Some(Placed { x: 108.0, y: 103.5, anchor: "start" })]);
    }

    #[test]
    fn labels_of_close_points_take_different_spots() {
        let labels = [label(100.0, 100.0, "lora", true), label(104.0, 102.0, "vpt", true)];
        let placed = place(&labels, &[marker_box(100.0, 100.0), marker_box(104.0, 102.0)], BOUNDS);
        let (a, b) = (placed[0].unwrap(), placed[1].unwrap());
        assert!(!overlaps(rect(a, 24.0), rect(b, 18.0)), "{a:?} {b:?}");
        // Near the right edge a label turns left.
        let edge = place(&[label(395.0, 100.0, "adaptformer", true)], &[marker_box(395.0, 100.0)], BOUNDS);
        assert_eq!(edge[0].unwrap().anchor, "end");
        // A line leaving the point to the right pushes the label elsewhere.
        let line = [marker_box(100.0, 100.0), line_box(100.0, 100.0, 200.0, 100.0)];
        assert_eq!(place(&[label(100.0, 100.0, "lp", true)], &line, BOUNDS)[0].unwrap().anchor, "end");
    }

    #[test]
    fn required_labels_always_show_optional_ones_only_with_room() {
        // Nine points on one spot: every spot around it fills up.
        let texts = ["a", "b", "c", "d", "e", "f", "g", "h", "published"];
        let mut labels: Vec<Label<'_>> = texts.iter().map(|t| label(200.0, 150.0, t, true)).collect();
        labels[8].required = false;
        labels.push(label(200.0, 150.0, "also required", true));
        let placed = place(&labels, &[marker_box(200.0, 150.0)], BOUNDS);
        assert!(placed[8].is_none(), "{:?}", placed[8]);
        assert!(placed.iter().enumerate().all(|(i, p)| i == 8 || p.is_some()));
        // Placed in order of preference: the first label to the right.
        assert_eq!(placed[0].unwrap().anchor, "start");
    }
}
