//! Training curves as small multiples: per task, one panel of training loss and one of accuracy,
//! one line per run (colour and end marker = method), so seeds and methods compare at a glance.

use std::fmt::Write;

use losa_framework::record::RunRecord;

use crate::charts::{Scale, escape};
use crate::style::{Style, marker};

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Tooltip: method, seed and what the line shows.
    pub label: String,
    /// (epoch, value) points in epoch order.
    pub points: Vec<(f64, f64)>,
    /// The method's style.
    pub style: Style,
    /// Dashed (evaluation accuracy) or solid (training).
    pub dashed: bool,
    /// The run failed: its last point gets a cross.
    pub failed: bool,
}

/// One small panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// The y-axis title.
    pub y_label: String,
    /// Its lines.
    pub series: Vec<Series>,
    /// Whether y starts at 0 (loss) or spans 0–100 (accuracy in percent).
    pub percent: bool,
}

const W: f64 = 300.0;
const H: f64 = 170.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 30.0;

impl Panel {
    /// The loss and accuracy panels of one task's runs, each run with its method's style.
    pub fn for_task(task: &str, runs: &[(&RunRecord, Style, &str)]) -> [Panel; 2] {
        let mut loss = Vec::new();
        let mut accuracy = Vec::new();
        for &(r, style, method) in runs {
            let seed = r.labels.seed;
            let failed = !r.finished();
            let pick = |f: &dyn Fn(&losa_framework::record::EpochMetrics) -> Option<f64>, scale: f64| {
                r.curves
                    .iter()
                    .filter_map(|p| f(p).map(|v| (f64::from(p.epoch), v * scale)))
                    .collect::<Vec<_>>()
            };
            let line = |what: &str, points, dashed| Series {
                label: format!("{method}, seed {seed}: {what}"),
                points,
                style,
                dashed,
                failed,
            };
            loss.push(line("training loss", pick(&|p| p.train_loss, 1.0), false));
            accuracy.push(line("training accuracy", pick(&|p| p.train_accuracy, 100.0), false));
            accuracy.push(line("validation accuracy", pick(&|p| p.val_accuracy, 100.0), true));
            accuracy.push(line("test accuracy", pick(&|p| p.test_accuracy, 100.0), true));
        }
        let keep = |s: Vec<Series>| s.into_iter().filter(|s| !s.points.is_empty()).collect();
        [
            Panel {
                title: format!("{task}: training loss"),
                y_label: "loss".into(),
                series: keep(loss),
                percent: false,
            },
            Panel {
                title: format!("{task}: accuracy"),
                y_label: "top-1 (%)".into(),
                series: keep(accuracy),
                percent: true,
            },
        ]
    }

    /// The scales: epochs from 0 (or the first) to the last; loss from 0, accuracy 0–100.
    pub fn scales(&self) -> Option<(Scale, Scale)> {
        let pts: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().copied()).collect();
        let max_x = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let max_y = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if pts.is_empty() {
            return None;
        }
        let y = if self.percent { Scale::Linear { lo: 0.0, hi: 100.0 } } else { Scale::linear(0.0, max_y) };
        Some((Scale::linear(0.0, max_x.max(1.0)), y))
    }

    /// The panel as SVG, or `None` without points.
    pub fn svg(&self) -> Option<String> {
        let (xs, ys) = self.scales()?;
        let px = |x: f64, y: f64| {
            (
                LEFT + xs.unit(x).unwrap_or(0.0) * (W - LEFT - RIGHT),
                H - BOTTOM - ys.unit(y).unwrap_or(0.0) * (H - TOP - BOTTOM),
            )
        };
        let mut s = format!(
            r#"<svg class="curve" viewBox="0 0 {W} {H}" role="img" aria-label="{0}"><title>{0}</title><text class="panel-title" x="{LEFT}" y="13">{0}</text>"#,
            escape(&self.title)
        );
        let y_ticks = if self.percent { vec![0.0, 25.0, 50.0, 75.0, 100.0] } else { ys.ticks() };
        for t in y_ticks {
            let (_, y) = px(0.0, t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 4.0,
                y + 3.0,
                crate::format::significant(t, 3)
            );
        }
        for t in xs.ticks() {
            let (x, _) = px(t, 0.0);
            let _ = write!(
                s,
                r#"<text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                H - BOTTOM + 12.0,
                crate::format::significant(t, 3)
            );
        }
        let _ = write!(
            s,
            r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{b}" y2="{b}"/><text class="axis-title" x="{}" y="{}" text-anchor="middle">epoch</text><text class="axis-title" transform="translate(10 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            W - RIGHT,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 4.0,
            TOP + (H - TOP - BOTTOM) / 2.0,
            escape(&self.y_label),
            b = H - BOTTOM,
        );
        for series in &self.series {
            let pts: Vec<String> =
                series.points.iter().map(|&(x, y)| px(x, y)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let dash = if series.dashed { r#" stroke-dasharray="5 3""# } else { "" };
            let _ = write!(
                s,
                r#"<polyline class="run" points="{}" stroke="{}"{dash}><title>{}</title></polyline>"#,
                pts.join(" "),
                series.style.colour,
                escape(&series.label)
            );
            if let Some(&(x, y)) = series.points.last() {
                let (x, y) = px(x, y);
                if series.failed {
                    let _ = write!(
                        s,
                        r#"<text class="failed-mark" x="{x:.1}" y="{:.1}" text-anchor="middle">✕</text>"#,
                        y + 4.0
                    );
                } else if series.dashed {
                    s.push_str(&marker(x, y, series.style, true));
                }
            }
        }
        s.push_str("</svg>");
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: Vec<(f64, f64)>, dashed: bool) -> Series {
        Series { label: "a <b>".into(), points, style: Style::of(0), dashed, failed: false }
    }

    #[test]
    fn panels_map_epochs_and_percentages_onto_the_plot_area() {
        let panel = Panel {
            title: "dtd: accuracy".into(),
            y_label: "top-1 (%)".into(),
            series: vec![series(vec![(10.0, 40.0), (20.0, 100.0)], true)],
            percent: true,
        };
        let (xs, ys) = panel.scales().unwrap();
        assert_eq!(xs, Scale::Linear { lo: 0.0, hi: 20.0 });
        assert_eq!(ys, Scale::Linear { lo: 0.0, hi: 100.0 });
        let svg = panel.svg().unwrap();
        // Epoch 20 at 100 % is the top right corner of the plot area; epoch 10 at 40 % halfway.
        assert!(
            svg.contains(&format!(
                "points=\"{:.1},{:.1} {:.1},{:.1}\"",
                40.0 + 125.0,
                170.0 - 30.0 - 48.0,
                290.0,
                20.0
            )),
            "{svg}"
        );
        assert!(svg.contains("stroke-dasharray") && svg.contains("a &lt;b&gt;"));
    }

    #[test]
    fn a_panel_without_points_draws_nothing() {
        let panel = Panel { title: "t".into(), y_label: "loss".into(), series: vec![], percent: false };
        assert!(panel.svg().is_none());
    }
}
