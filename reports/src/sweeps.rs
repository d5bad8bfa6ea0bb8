//! How sweeps show in a report. Under `protocol = "fixed"` every swept setting is a method row of
//! its own, named with its setting. Under `"tune_then_test"` a method keeps one row (its final
//! runs), and a table lists, per method × task, the setting chosen on val200, the val200 accuracy
//! that chose it and the final test accuracy.

use losa_framework::plan::Stage;
use losa_framework::recipe::{Protocol, sweep};
use losa_framework::record::RunRecord;
use serde::Serialize;

use crate::Report;

/// A method row's name: the adapter's, with the setting under "fixed" (`lora [train.lr=0.001]`).
pub fn method_name(adapter: &str, setting: Option<&sweep::Setting>) -> String {
    match setting.filter(|s| !s.is_empty()) {
        Some(s) => format!("{adapter} [{}]", sweep::label(s)),
        None => adapter.to_owned(),
    }
}

/// The method row name of a record (before the backbone is added).
pub fn record_method(r: &RunRecord) -> String {
    let fixed = r.sweep.as_ref().filter(|s| s.stage == Stage::Fixed);
    method_name(&r.labels.adapter, fixed.map(|s| &s.setting))
}

/// A record's protocol (records without a sweep ran their recipe's settings as given).
pub fn protocol(r: &RunRecord) -> Protocol {
    r.sweep.as_ref().map_or(Protocol::Fixed, |s| s.protocol)
}

/// The protocol's name as recipes write it.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Fixed => "fixed",
        Protocol::TuneThenTest => "tune_then_test",
    }
}

/// One method × task of a tune_then_test report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceRow {
    /// The method row's name.
    pub method: String,
    /// The task.
    pub task: String,
    /// The chosen setting (`train.lr=0.001, ...`).
    pub setting: String,
    /// The mean val200 accuracy (%) over the tuning seeds that chose it, formatted.
    pub val: String,
    /// The final test accuracy (%) over the final seeds, formatted, as in the accuracy table.
    pub test: String,
    /// Every setting compared with its mean val200 accuracy (%), the chosen one first: shows
    /// whether the choice sits at the edge of the grid. Empty for a method with one setting.
    pub compared: String,
}

/// The choices behind the final runs in a report, in report order (method, task).
pub fn choices(report: &Report) -> Vec<ChoiceRow> {
    let mut out: Vec<ChoiceRow> = Vec::new();
    for (r, method, m) in report.runs() {
        let Some(s) = r.sweep.as_ref().filter(|s| s.stage == Stage::Final) else { continue };
        if out.iter().any(|c| c.method == method && c.task == r.labels.task) {
            continue;
        }
        let column = report.summary.tasks.iter().position(|t| t.name == r.labels.task);
        let test = column.and_then(|t| report.summary.methods[m].cells[t].mean());
        out.push(ChoiceRow {
            method: method.to_owned(),
            task: r.labels.task.clone(),
            setting: match s.setting.is_empty() {
                true => "(nothing swept)".into(),
                false => sweep::label(&s.setting),
            },
            // No score: a method with one setting has nothing to choose between and is not tuned.
            val: s.val_accuracy.map_or_else(|| "–".into(), |v| format!("{:.1}", v * 100.0)),
            test: test.map_or_else(|| "–".into(), |v| format!("{v:.1}")),
            compared: s
                .scores
                .iter()
                .map(|c| {
                    let val = c.val_accuracy.map_or_else(|| "failed".into(), |v| format!("{:.1}", v * 100.0));
                    let mark = if c.index == s.index { " (chosen)" } else { "" };
                    format!("{}: {val}{mark}", sweep::label(&c.setting))
                })
                .collect::<Vec<_>>()
                .join(" · "),
        });
    }
    out
}

/// What the protocol(s) of the records mean, for the report's notes.
pub fn protocol_notes(records: &[RunRecord]) -> Vec<String> {
    let mut out = Vec::new();
    let fixed_swept = records.iter().any(|r| r.sweep.as_ref().is_some_and(|s| s.stage == Stage::Fixed));
    if records.iter().any(|r| protocol(r) == Protocol::Fixed) {
        out.push(match fixed_swept {
            true => {
                "Protocol fixed: every setting of the sweep ran as given, with no search on validation; each \
                     setting is a row of its own, named with its setting."
                    .to_owned()
            }
            false => "Protocol fixed: each method ran with the recipe's hyper-parameters, with no search on \
                      validation."
                .to_owned(),
        });
    }
    if records.iter().any(|r| protocol(r) == Protocol::TuneThenTest) {
        out.push(
            "Protocol tune_then_test: every swept setting was trained on train800 and scored on val200; per method \
             × task the setting with the best val200 accuracy averaged over the seeds was chosen (a tie goes to the \
             setting first in the recipe's order, a setting with a failed seed is out), then trained on \
             train800val200 and tested on test. The accuracy tables show those final runs; \"Chosen settings\" \
             lists each choice with the val200 accuracy that made it."
                .to_owned(),
        );
    }
    out
}
