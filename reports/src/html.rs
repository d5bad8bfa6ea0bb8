//! The HTML report: one self-contained file (inline CSS and SVG; no script, font, link or other
//! network resource), rendered with tera from templates compiled into the binary.
//! Everything user-provided (labels, task names, reasons, the recipe text) is escaped: by tera's
//! autoescaping in the templates, by [`crate::charts::escape`] inside the SVG made in Rust.

use serde::Serialize;
use tera::{Context, Tera};

use crate::charts::{Point, Scatter};
use crate::curves::Panel;
use crate::format;
use crate::style::{PUBLISHED_GREY, Style, marker};
use crate::summary::Cost;
use crate::view::{Footnotes, Table, summary_table, task_table};
use crate::{Report, ReportError};

const PAGE: &str = include_str!("../templates/report.html");
const TABLE: &str = include_str!("../templates/table.html");
const CSS: &str = include_str!("../templates/report.css");

/// A chart with its caption.
#[derive(Debug, Serialize)]
struct Chart {
    title: String,
    caption: String,
    svg: String,
}

/// A method in the legend.
#[derive(Debug, Serialize)]
struct Legend {
    name: String,
    swatch: String,
}

/// The curves of one task.
#[derive(Debug, Serialize)]
struct Curves {
    task: String,
    panels: Vec<String>,
}

/// One failed run.
#[derive(Debug, Serialize)]
struct Failure {
    run_id: String,
    method: String,
    task: String,
    seed: u64,
    reason: String,
}

/// Runs that share one environment.
#[derive(Debug, Serialize)]
struct Env {
    runs: usize,
    device: String,
    losa_version: String,
    candle_version: String,
    git_commit: String,
    hostname: String,
    os: String,
}

/// Renders the report as one HTML document.
pub(crate) fn render(report: &Report) -> Result<String, ReportError> {
    let mut tera = Tera::new();
    tera.add_raw_templates([("report.html", PAGE), ("table.html", TABLE), ("report.css", CSS)])?;
    let mut notes = Footnotes::default();
    let summary = table(&tera, &summary_table(&report.summary, &mut notes))?;
    let tasks = table(&tera, &task_table(&report.summary, &mut notes))?;
    let mut ctx = Context::new();
    ctx.insert("title", &report.title);
    ctx.insert("description", &report.description);
    ctx.insert("facts", &report.facts());
    ctx.insert("warnings", &report.warnings());
    ctx.insert("notes", &report.conventions());
    ctx.insert("summary_table", &summary);
    ctx.insert("task_table", &tasks);
    ctx.insert("footnotes", &notes.0);
    ctx.insert("charts", &charts(report));
    ctx.insert("legend", &legend(report));
    let grey = Style { colour: PUBLISHED_GREY, ..Style::of(0) };
    let published = (!report.summary.published.is_empty()).then(|| swatch(grey, false));
    ctx.insert("published_swatch", &published);
    ctx.insert("curves", &curves(report));
    ctx.insert("failures", &failures(report));
    ctx.insert("choices", &crate::sweeps::choices(report));
    ctx.insert("environments", &environments(report));
    ctx.insert("published_path", &report.published.as_ref().map(|p| p.path.display().to_string()));
    ctx.insert("published_note", &report.published.as_ref().map(|p| p.note.clone()).unwrap_or_default());
    ctx.insert("recipe_path", &report.recipe.as_ref().map(|r| r.path.display().to_string()));
    ctx.insert("recipe_text", &report.recipe.as_ref().map(|r| r.text.clone()));
    ctx.insert("generator", &format!("losa {}", env!("CARGO_PKG_VERSION")));
    Ok(tera.render("report.html", &ctx)?)
}

fn table(tera: &Tera, table: &Table) -> Result<String, ReportError> {
    let mut ctx = Context::new();
    ctx.insert("table", table);
    Ok(tera.render("table.html", &ctx)?)
}

/// The methods' markers, as in every chart and curve.
fn legend(report: &Report) -> Vec<Legend> {
    let methods = report.summary.methods.iter().enumerate();
    methods.map(|(i, m)| Legend { name: m.name.clone(), swatch: swatch(Style::of(i), true) }).collect()
}

fn swatch(style: Style, filled: bool) -> String {
    format!(r#"<svg class="swatch" viewBox="0 0 14 14">{}</svg>"#, marker(7.0, 7.0, style, filled))
}

/// Accuracy against trainable parameters (log), peak memory and training time.
fn charts(report: &Report) -> Vec<Chart> {
    let s = &report.summary;
    let several = s.several_groups();
    let y_label = if several {
        format!("mean of {} group means (%)", s.groups.len())
    } else {
        format!("mean of {} tasks (%)", s.tasks.len())
    };
    let own = |cost: Cost, scale: f64| -> Vec<Point> {
        s.methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                Some(Point {
                    label: m.name.clone(),
                    cost: m.costs[cost.index()]? / scale,
                    accuracy: m.headline(several)?,
                    style: Style::of(i),
                    published: false,
                })
            })
            .collect()
    };
    let mut params = own(Cost::TrainableParams, 1e6);
    params.extend(s.published.iter().enumerate().filter_map(|(i, m)| {
        Some(Point {
            label: m.name.clone(),
            cost: m.costs[Cost::TrainableParams.index()]? / 1e6,
            accuracy: m.headline(several)?,
            style: Style::of(i),
            published: true,
        })
    }));
    let memory = own(Cost::PeakMemory, f64::from(1u32 << 30));
    let longest = s.methods.iter().filter_map(|m| m.costs[Cost::TrainTime.index()]).fold(0.0, f64::max);
    let (unit, per) = if longest >= 7200.0 {
        ("h", 3600.0)
    } else if longest >= 120.0 {
        ("min", 60.0)
    } else {
        ("s", 1.0)
    };
    let front = "Dashed staircase: the Pareto front of this recipe's methods (circled: no other method is both \
                 more accurate and cheaper).";
    let specs = [
        (
            "Accuracy vs trainable parameters",
            "trainable parameters without head (M, log scale)".to_owned(),
            true,
            params,
            format!(
                "{front} Methods with no trainable parameters outside the head sit at 0, left of the axis break.{}",
                if s.published.is_empty() {
                    ""
                } else {
                    " Grey hollow markers: published results (parameters as published)."
                }
            ),
        ),
        ("Accuracy vs peak training memory", "peak memory (GiB)".to_owned(), false, memory, front.to_owned()),
        (
            "Accuracy vs training time",
            format!("training time per run ({unit})"),
            false,
            own(Cost::TrainTime, per),
            front.to_owned(),
        ),
    ];
    specs
        .into_iter()
        .filter_map(|(title, x_label, log_x, points, caption)| {
            let chart = Scatter {
                title,
                x_label: &x_label,
                y_label: &y_label,
                log_x,
                x_format: |v| format::significant(v, 3),
                points,
            };
            chart.svg().map(|svg| Chart { title: title.into(), caption, svg })
        })
        .collect()
}

fn curves(report: &Report) -> Vec<Curves> {
    report
        .summary
        .tasks
        .iter()
        .filter_map(|t| {
            let runs: Vec<_> = report
                .runs()
                .filter(|(r, _, _)| r.labels.task == t.name)
                .map(|(r, method, i)| (r, Style::of(i), method))
                .collect();
            let panels: Vec<String> = Panel::for_task(&t.name, &runs).iter().filter_map(Panel::svg).collect();
            (!panels.is_empty()).then(|| Curves { task: t.name.clone(), panels })
        })
        .collect()
}

fn failures(report: &Report) -> Vec<Failure> {
    report
        .runs()
        .filter_map(|(r, method, _)| {
            Some(Failure {
                reason: r.failure()?.to_owned(),
                run_id: r.run_id.clone(),
                method: method.to_owned(),
                task: r.labels.task.clone(),
                seed: r.labels.seed,
            })
        })
        .collect()
}

fn environments(report: &Report) -> Vec<Env> {
    let mut out: Vec<(losa_framework::record::Environment, usize)> = Vec::new();
    for (r, _, _) in report.runs() {
        match out.iter_mut().find(|(e, _)| *e == r.environment) {
            Some((_, n)) => *n += 1,
            None => out.push((r.environment.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(e, runs)| Env {
            runs,
            device: e.device,
            losa_version: e.losa_version,
            candle_version: e.candle_version,
            git_commit: e.git_commit.unwrap_or_else(|| "unknown".into()),
            hostname: e.hostname.unwrap_or_else(|| "unknown".into()),
            os: e.os,
        })
        .collect()
}
