//! Published reference results: a CSV with one row per method, shown beside a recipe's own runs.
//!
//! Format (see `recipes/vtab1k_published.csv`): lines starting with `#` at the top are the source
//! note (shown in the report), then a header `method,source,params_m,<task>,...` and one row per
//! method. `source` and `params_m` (trainable parameters in millions, without the head) are
//! optional columns; every other column is a task, named by its folder name or an alias
//! (`cifar100`, `flowers102`, `pets`, `retinopathy`, ...). Accuracies are top-1 in percent; an
//! empty cell means not published. Fields may be quoted with `"` (RFC 4180).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use losa_framework::data::vtab;

use crate::ReportError;

/// Published results read from a CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The file they were read from.
    pub path: PathBuf,
    /// The `#` comment lines at the top of the file, without the `#` (the attribution).
    pub note: Vec<String>,
    /// One row per method, in file order.
    pub rows: Vec<PublishedRow>,
}

/// One published method.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedRow {
    /// The method's name as printed by its source.
    pub method: String,
    /// Where the numbers come from.
    pub source: String,
    /// Trainable parameters in millions, without the head, when published.
    pub params_m: Option<f64>,
    /// Top-1 accuracy in percent per task, keyed by the task's report name (VTAB-1k folder name).
    pub accuracy: BTreeMap<String, f64>,
}

impl Published {
    /// Reads and checks a published-results CSV.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReportError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the CSV text of `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ReportError> {
        let bad =
            |line: usize, message: String| ReportError::Published { path: path.to_owned(), line, message };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        let mut note = Vec::new();
        let header = loop {
            match lines.next() {
                Some((_, l)) if l.starts_with('#') => note.push(l.trim_start_matches('#').trim().to_owned()),
                Some((_, l)) if l.trim().is_empty() => {}
                Some((n, l)) => break (n, split(l).map_err(|m| bad(n, m))?),
                None => {
                    return Err(bad(1, "no header line (expected method,source,params_m,<task>,...)".into()));
                }
            }
        };
        let (header_line, columns) = header;
        let column = |name: &str| columns.iter().position(|c| c.trim() == name);
        let method_col = column("method")
            .ok_or_else(|| bad(header_line, format!("no `method` column (found {})", columns.join(","))))?;
        let (source_col, params_col) = (column("source"), column("params_m"));
        let mut tasks: Vec<(usize, String)> = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            if [Some(method_col), source_col, params_col].contains(&Some(i)) {
                continue;
            }
            let name = task_name(c.trim());
            if name.is_empty() {
                return Err(bad(header_line, format!("column {} has no name", i + 1)));
            }
            if let Some((_, other)) = tasks.iter().find(|(_, t)| *t == name) {
                return Err(bad(
                    header_line,
                    format!("columns {other:?} and {c:?} are the same task ({name})"),
                ));
            }
            tasks.push((i, name));
        }
        let mut rows: Vec<PublishedRow> = Vec::new();
        for (n, line) in lines {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split(line).map_err(|m| bad(n, m))?;
            if fields.len() != columns.len() {
                return Err(bad(n, format!("{} fields, but the header has {}", fields.len(), columns.len())));
            }
            let method = fields[method_col].trim().to_owned();
            if method.is_empty() {
                return Err(bad(n, "empty `method`".into()));
            }
            if rows.iter().any(|r| r.method == method) {
                return Err(bad(n, format!("method {method:?} appears twice")));
            }
            let params_m = match params_col.map(|c| fields[c].trim()).filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => Some(number(v, "params_m", f64::INFINITY).map_err(|m| bad(n, m))?),
            };
            let mut accuracy = BTreeMap::new();
            for (i, task) in &tasks {
                let v = fields[*i].trim();
                if !v.is_empty() {
                    let column = columns[*i].trim();
                    accuracy.insert(task.clone(), number(v, column, 100.0).map_err(|m| bad(n, m))?);
                }
            }
            let source = source_col.map(|c| fields[c].trim().to_owned()).unwrap_or_default();
            rows.push(PublishedRow { method, source, params_m, accuracy });
        }
        if rows.is_empty() {
            return Err(bad(header_line, "no method rows after the header".into()));
        }
        Ok(Published { path: path.to_owned(), note, rows })
    }
}

/// The report name of a task column: a VTAB-1k task's folder name, else the column as written.
fn task_name(column: &str) -> String {
    vtab::find(column).map_or_else(|| column.to_owned(), |t| t.name.to_owned())
}

fn number(v: &str, column: &str, max: f64) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=max).contains(&x) => Ok(x),
        _ if max == 100.0 => {
            Err(format!("{column}: expected an accuracy in percent (0 to 100), found {v:?}"))
        }
        _ => Err(format!("{column}: expected a non-negative number, found {v:?}")),
    }
}

/// Splits one CSV line into fields; `"` quotes a field, `""` inside quotes is a quote.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let field = fields.last_mut().ok_or("internal: no field")?;
        match (c, quoted) {
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(String::new()),
            (c, _) => field.push(c),
        }
    }
    if quoted { Err("a quoted field is not closed on this line".into()) } else { Ok(fields) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Published, String> {
        Published::parse(text, Path::new("pub.csv")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_vtab_csv_reads_with_aliases_mapped_to_folder_names() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/vtab1k_published.csv");
        let p = Published::read(&path).unwrap();
        assert_eq!(p.rows.len(), 20);
        assert!(p.note.iter().any(|l| l.contains("V-PETL Bench")), "{:?}", p.note);
        let lora = p.rows.iter().find(|r| r.method == "LoRA").unwrap();
        assert_eq!(lora.params_m, Some(0.29));
        assert_eq!(lora.accuracy.len(), 19);
        for (task, v) in [("cifar", 67.1), ("oxford_flowers102", 98.8), ("oxford_iiit_pet", 90.4)] {
            assert_eq!(lora.accuracy[task], v, "{task}");
        }
        assert_eq!(lora.accuracy["diabetic_retinopathy"], 73.6);
        assert!(vtab::TASKS.iter().all(|t| lora.accuracy.contains_key(t.name)));
        // The source's 19-task mean of LoRA is 72.25 (REFERENCE.md §3).
        let mean = lora.accuracy.values().sum::<f64>() / 19.0;
        assert!((mean - 72.25).abs() < 0.01, "{mean}");
    }

    #[test]
    fn quotes_empty_cells_and_unknown_tasks() {
        let p = parse(
            "# note one\n#note two\nmethod,params_m,cifar100,my task\n\"Ada, v2\",,71.5,\nB,0.1,,\"5\"\n",
        )
        .unwrap();
        assert_eq!(p.note, ["note one", "note two"]);
        assert_eq!(p.rows[0].method, "Ada, v2");
        assert_eq!(p.rows[0].params_m, None);
        assert_eq!(p.rows[0].accuracy, BTreeMap::from([("cifar".to_owned(), 71.5)]));
        assert_eq!(p.rows[1].accuracy, BTreeMap::from([("my task".to_owned(), 5.0)]));
        assert_eq!(p.rows[1].source, "");
    }

    #[test]
    fn bad_files_are_named_with_the_line_and_column() {
        let cases = [
            ("", "pub.csv: line 1: no header line"),
            ("name,cifar\nA,1\n", "pub.csv: line 1: no `method` column"),
            (
                "method,cifar,cifar100\nA,1,2\n",
                "line 1: columns \"cifar\" and \"cifar100\" are the same task",
            ),
            ("method,cifar\nA,1,2\n", "line 2: 3 fields, but the header has 2"),
            (
                "method,cifar\nA,91.5\nB,x\n",
                "line 3: cifar: expected an accuracy in percent (0 to 100), found \"x\"",
            ),
            ("method,cifar\nA,0.915\nB,915\n", "line 3: cifar: expected an accuracy in percent"),
            ("method,params_m\nA,-1\n", "line 2: params_m: expected a non-negative number"),
            ("method,cifar\nA,1\nA,2\n", "line 3: method \"A\" appears twice"),
            ("method,cifar\n\"A,1\n", "line 2: a quoted field is not closed"),
            ("method,cifar\n", "line 1: no method rows"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
