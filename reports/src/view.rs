//! The tables as text, ready for the HTML template and summary.md: headers (grouped by VTAB-1k
//! group), one row per method, formatted cells with best marks, tooltips and footnotes.

use serde::Serialize;

use crate::format;
use crate::style::{Style, marker};
use crate::summary::{Average, Cell, Cost, MethodRow, Summary};

/// A table header cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Head {
    /// Shown text.
    pub text: String,
    /// Tooltip (e.g. a task's folder name or a column's definition).
    pub title: String,
    /// Columns spanned.
    pub span: usize,
    /// CSS class.
    pub class: String,
}

/// A table body cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Shown text.
    pub text: String,
    /// Secondary text after it, set smaller (the std of a mean); empty for none.
    pub detail: String,
    /// Tooltip: a failure's reason, why an average is missing.
    pub title: String,
    /// CSS class: "num", "failed", "na".
    pub class: String,
    /// The best in its column among this recipe's methods.
    pub best: bool,
    /// Footnote number, if the cell has one.
    pub note: Option<usize>,
}

/// A method's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The method's name.
    pub name: String,
    /// Tooltip of the name: where a published row comes from.
    pub title: String,
    /// Its marker as inline SVG (the same in every chart), empty for published rows.
    pub swatch: String,
    /// The cells after the name.
    pub cells: Vec<Entry>,
}

/// Rows under one heading: this recipe's methods, or published ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Heading row text; empty for this recipe's methods.
    pub title: String,
    /// CSS class ("own" or "published").
    pub class: String,
    /// Its rows.
    pub rows: Vec<Row>,
}

/// A table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// Header cells spanning column groups (first row), may be empty.
    pub groups: Vec<Head>,
    /// Column headers, the method column first.
    pub columns: Vec<Head>,
    /// Sections of rows.
    pub sections: Vec<Section>,
}

/// Footnotes shared by the tables, numbered from 1 in order of first use.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Footnotes(pub Vec<String>);

impl Footnotes {
    fn add(&mut self, text: String) -> usize {
        match self.0.iter().position(|t| *t == text) {
            Some(i) => i + 1,
            None => {
                self.0.push(text);
                self.0.len()
            }
        }
    }
}

/// Paper-style short names of the VTAB-1k tasks (headers), by folder name.
const SHORT: [(&str, &str); 19] = [
    ("cifar", "CIFAR-100"),
    ("caltech101", "Caltech101"),
    ("dtd", "DTD"),
    ("oxford_flowers102", "Flowers102"),
    ("oxford_iiit_pet", "Pets"),
    ("svhn", "SVHN"),
    ("sun397", "Sun397"),
    ("patch_camelyon", "Camelyon"),
    ("eurosat", "EuroSAT"),
    ("resisc45", "Resisc45"),
    ("diabetic_retinopathy", "Retinopathy"),
    ("clevr_count", "Clevr-Count"),
    ("clevr_dist", "Clevr-Dist"),
    ("dmlab", "DMLab"),
    ("kitti", "KITTI-Dist"),
    ("dsprites_loc", "dSpr-Loc"),
    ("dsprites_ori", "dSpr-Ori"),
    ("smallnorb_azi", "sNORB-Azim"),
    ("smallnorb_ele", "sNORB-Elev"),
];

/// A task's header text: the paper's short name for VTAB-1k tasks, else the name itself.
pub fn short_name(task: &str) -> &str {
    SHORT.iter().find(|(t, _)| *t == task).map_or(task, |(_, s)| s)
}

fn head(text: &str, title: &str, span: usize, class: &str) -> Head {
    Head { text: text.into(), title: title.into(), span, class: class.into() }
}

fn entry(text: String, class: &str) -> Entry {
    Entry { text, detail: String::new(), title: String::new(), class: class.into(), best: false, note: None }
}

/// The per-task table: methods × tasks, then both averages.
pub fn task_table(s: &Summary, notes: &mut Footnotes) -> Table {
    let mut groups = vec![head("", "", 1, "")];
    let mut columns = vec![head("Method", "", 1, "method")];
    for g in &s.groups {
        let n = s.tasks.iter().filter(|t| t.group == Some(*g)).count();
        groups.push(head(g.name(), "", n, "group"));
    }
    let ungrouped = s.tasks.iter().filter(|t| t.group.is_none()).count();
    if ungrouped > 0 {
        groups.push(head(if s.groups.is_empty() { "tasks" } else { "other" }, "", ungrouped, "group"));
    }
    for t in &s.tasks {
        columns.push(head(short_name(&t.name), &t.name, 1, "num"));
    }
    let averages = average_heads(s);
    groups.push(head("average", "", averages.len(), "group"));
    columns.extend(averages);
    let row = |m: &MethodRow, i: usize, notes: &mut Footnotes| {
        let mut cells: Vec<Entry> = m.cells.iter().map(|c| cell(c, m, notes)).collect();
        cells.extend(average_entries(s, m, notes));
        method_row(m, i, cells)
    };
    Table { groups, columns, sections: sections(s, notes, &row) }
}

/// The summary table: group means, both averages and the costs.
pub fn summary_table(s: &Summary, notes: &mut Footnotes) -> Table {
    let mut columns = vec![head("Method", "", 1, "method")];
    for g in &s.groups {
        columns.push(head(g.name(), &format!("mean over the {} tasks", g.name()), 1, "num"));
    }
    let averages = average_heads(s);
    let accuracy_span = s.groups.len() + averages.len();
    columns.extend(averages);
    let costs = [
        ("Params (M)", "trainable parameters without the head, in millions (mean over tasks)"),
        ("+ head (M)", "trainable parameters with the head, in millions (mean over tasks)"),
        ("Adapter", "size of the saved adapter file (mean over runs)"),
        ("Memory (GiB)", "peak training memory, the largest of any run"),
        ("Train time", "training wall time of one run (mean)"),
        ("Images/s", "training throughput (mean over runs)"),
    ];
    columns.extend(costs.iter().map(|(t, title)| head(t, title, 1, "num")));
    let groups = vec![
        head("", "", 1, ""),
        head("accuracy, top-1 (%)", "", accuracy_span, "group"),
        head("cost", "", costs.len(), "group"),
    ];
    let row = |m: &MethodRow, i: usize, notes: &mut Footnotes| {
        let mut cells: Vec<Entry> = m.group_means.iter().map(|a| average_entry(a, notes)).collect();
        cells.extend(average_entries(s, m, notes));
        let all_failed = m.published.is_none() && m.failed_runs.0 > 0 && m.failed_runs.0 == m.failed_runs.1;
        for (k, cost) in Cost::ALL.iter().enumerate() {
            let mut e = match (m.costs[k], all_failed) {
                (Some(v), _) => entry(cost_text(*cost, v), "num"),
                (None, true) => entry("failed".into(), "failed"),
                (None, false) => entry("–".into(), "na"),
            };
            e.best = m.best_costs[k];
            cells.push(e);
        }
        method_row(m, i, cells)
    };
    Table { groups, columns, sections: sections(s, notes, &row) }
}

fn sections(
    s: &Summary,
    notes: &mut Footnotes,
    row: &dyn Fn(&MethodRow, usize, &mut Footnotes) -> Row,
) -> Vec<Section> {
    let own = s.methods.iter().enumerate().map(|(i, m)| row(m, i, notes)).collect();
    let mut out = vec![Section { title: String::new(), class: "own".into(), rows: own }];
    if !s.published.is_empty() {
        let rows = s.published.iter().enumerate().map(|(i, m)| row(m, i, notes)).collect();
        out.push(Section {
            title: "Published (for reference, not compared)".into(),
            class: "published".into(),
            rows,
        });
    }
    out
}

/// A method's row: its name, the published source as a tooltip, its swatch, and `cells`.
fn method_row(m: &MethodRow, i: usize, cells: Vec<Entry>) -> Row {
    Row { name: m.name.clone(), title: m.published.clone().unwrap_or_default(), swatch: swatch(m, i), cells }
}

fn swatch(m: &MethodRow, i: usize) -> String {
    match m.published {
        Some(_) => String::new(),
        None => format!(
            r#"<svg class="swatch" viewBox="0 0 14 14">{}</svg>"#,
            marker(7.0, 7.0, Style::of(i), true)
        ),
    }
}

fn average_heads(s: &Summary) -> Vec<Head> {
    let mut heads = Vec::new();
    if s.several_groups() {
        let title = "mean of the group means (NOAH, FacT, DTL convention)";
        heads.push(head(&format!("Mean of {} groups", s.groups.len()), title, 1, "num avg"));
    }
    let title = "plain mean over the tasks (V-PETL, SSF convention)";
    heads.push(head(&format!("Mean of {} tasks", s.tasks.len()), title, 1, "num avg"));
    heads
}

fn average_entries(s: &Summary, m: &MethodRow, notes: &mut Footnotes) -> Vec<Entry> {
    let mut out = Vec::new();
    if s.several_groups() {
        out.push(average_entry(&m.mean_of_group_means, notes));
    }
    out.push(average_entry(&m.mean_of_tasks, notes));
    out
}

fn average_entry(a: &Average, notes: &mut Footnotes) -> Entry {
    match a {
        Average::Value { value, best } => {
            Entry { best: *best, ..entry(format::percent(*value, 2), "num avg") }
        }
        Average::Unavailable { why } => {
            let text = format!("no average: {why}");
            Entry { title: text.clone(), note: Some(notes.add(text)), ..entry("–".into(), "na") }
        }
    }
}

fn cell(c: &Cell, m: &MethodRow, notes: &mut Footnotes) -> Entry {
    match c {
        Cell::Value { mean, std, finished, failed, reason, selected_on_test, best } => {
            let mut e = Entry { best: *best, ..entry(format::percent(*mean, 1), "num") };
            e.detail = std.map(|s| format::percent(s, 1)).unwrap_or_default();
            if m.published.is_none() {
                e.title = format!("{finished} seed(s)");
            }
            if *failed > 0 {
                let why = reason.as_deref().unwrap_or("no reason recorded");
                let text = format!(
                    "{failed} of {} seeds failed ({why}); the value is over the others",
                    finished + failed
                );
                e.title = text.clone();
                e.note = Some(notes.add(text));
            }
            if *selected_on_test > 0 {
                e.text.push_str(" ᵀ");
            }
            e
        }
        Cell::Failed { runs, reason } => {
            let text = format!(
                "{} failed: {reason}",
                if *runs == 1 { "the run".to_owned() } else { format!("all {runs} seeds") }
            );
            Entry { title: text.clone(), note: Some(notes.add(text)), ..entry("failed".into(), "failed") }
        }
        Cell::Missing => entry("–".into(), "na"),
    }
}

/// A cost value as shown in the summary table.
pub fn cost_text(cost: Cost, v: f64) -> String {
    match cost {
        Cost::TrainableParams | Cost::TrainableWithHead => format::millions(v),
        Cost::AdapterSize => format::bytes(v),
        Cost::PeakMemory => format::gib(v),
        Cost::TrainTime => format::duration(v),
        Cost::ImagesPerS => format::rate(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use losa_framework::data::vtab;

    #[test]
    fn every_vtab_task_has_a_short_name() {
        for t in vtab::TASKS {
            assert_ne!(short_name(t.name), t.name, "{}", t.name);
        }
        assert_eq!(short_name("shape"), "shape");
    }

    #[test]
    fn footnotes_are_numbered_once_per_text() {
        let mut f = Footnotes::default();
        assert_eq!(f.add("a".into()), 1);
        assert_eq!(f.add("b".into()), 2);
        assert_eq!(f.add("a".into()), 1);
        assert_eq!(f.0, ["a", "b"]);
    }
}
