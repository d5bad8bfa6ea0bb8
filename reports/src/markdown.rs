//! summary.md: the summary and per-task tables as Markdown (GitHub tables), for pasting into
//! notes, issues and papers. The best value of each column is in bold.

use std::fmt::Write;

use crate::Report;
use crate::view::{Footnotes, Table, summary_table, task_table};

/// The Markdown text.
pub(crate) fn render(report: &Report) -> String {
    let mut notes = Footnotes::default();
    let summary = summary_table(&report.summary, &mut notes);
    let tasks = task_table(&report.summary, &mut notes);
    let mut out = format!("# {}\n\n", inline(&report.title));
    if !report.description.is_empty() {
        let _ = writeln!(out, "{}\n", inline(&report.description));
    }
    let _ = writeln!(out, "{}\n", report.facts().join(" · "));
    for w in report.warnings() {
        let _ = writeln!(out, "> **Warning:** {}\n", inline(&w));
    }
    out.push_str("## Summary\n\n");
    out.push_str(&table(&summary));
    out.push_str("\n## Accuracy per task\n\n");
    let groups: Vec<String> = report
        .summary
        .groups
        .iter()
        .map(|g| {
            let tasks: Vec<&str> = report
                .summary
                .tasks
                .iter()
                .filter(|t| t.group == Some(*g))
                .map(|t| t.name.as_str())
                .collect();
            format!("{}: {}", g.name(), tasks.join(", "))
        })
        .collect();
    if !groups.is_empty() {
        let _ = writeln!(out, "Groups — {}.\n", groups.join("; "));
    }
    out.push_str(&table(&tasks));
    if !notes.0.is_empty() {
        out.push('\n');
        for (i, n) in notes.0.iter().enumerate() {
            let _ = writeln!(out, "[{}] {}  ", i + 1, inline(n));
        }
    }
    let choices = crate::sweeps::choices(report);
    if !choices.is_empty() {
        out.push_str("\n## Chosen settings (tune_then_test)\n\n");
        out.push_str(
            "| Method | Task | Chosen setting | val200 % (chose it) | test % (final) | Settings compared (val200 %) |\n",
        );
        out.push_str("|:---|:---|:---|---:|---:|:---|\n");
        for c in &choices {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                inline(&c.method),
                inline(&c.task),
                inline(&c.setting),
                c.val,
                c.test,
                inline(&c.compared)
            );
        }
    }
    out.push('\n');
    for n in report.conventions() {
        let _ = writeln!(out, "- {}", inline(&n));
    }
    if let Some(p) = &report.published {
        let _ =
            writeln!(out, "\nPublished results from `{}`: {}", p.path.display(), inline(&p.note.join(" ")));
    }
    out
}

/// One Markdown table; published rows follow a row naming their section, in italics.
fn table(t: &Table) -> String {
    let mut out = String::new();
    let heads: Vec<String> = t.columns.iter().map(|h| inline(&h.text)).collect();
    let _ = writeln!(out, "| {} |", heads.join(" | "));
    let align: Vec<&str> =
        t.columns.iter().map(|h| if h.class.contains("num") { "---:" } else { ":---" }).collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for section in &t.sections {
        if !section.title.is_empty() {
            let blanks = vec![""; t.columns.len() - 1].join(" | ");
            let _ = writeln!(out, "| *{}* | {blanks} |", inline(&section.title));
        }
        for row in &section.rows {
            let cells: Vec<String> = row
                .cells
                .iter()
                .map(|e| {
                    let text = match e.detail.as_str() {
                        "" => inline(&e.text),
                        detail => format!("{} ± {}", inline(&e.text), inline(detail)),
                    };
                    let text = if e.best { format!("**{text}**") } else { text };
                    match e.note {
                        Some(n) => format!("{text} [{n}]"),
                        None => text,
                    }
                })
                .collect();
            let name =
                if section.title.is_empty() { inline(&row.name) } else { format!("*{}*", inline(&row.name)) };
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
    }
    out
}

/// Text safe inside a Markdown table cell or paragraph: pipes, emphasis and HTML are escaped.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.replace(['\n', '\r'], " ").chars() {
        if matches!(c, '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_text_cannot_break_the_table_or_inject_html() {
        assert_eq!(inline("a|b *c* <i>\nd"), "a\\|b \\*c\\* \\<i\\> d");
        assert_eq!(inline("lora_r8"), "lora\\_r8");
    }
}
