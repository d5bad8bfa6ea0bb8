//! A report: the records of a runs folder in report order, their tables and summary, and the files
//! written from them.

use std::path::{Path, PathBuf};

use losa_framework::data::{identity, vtab};
use losa_framework::plan::Stage;
use losa_framework::recipe::{Protocol, Selection, sweep};
use losa_framework::record::{MemoryMeasure, RunRecord};
use losa_framework::store::{self, REPORT_DIR, SavedRecipe};

use crate::published::Published;
use crate::summary::{Summary, TaskColumn};
use crate::tables::{Run, Tables};
use crate::{ReportError, format, html, markdown, sweeps};

/// Where the report goes and which published results it shows.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Output folder; default `<runs folder>/report`.
    pub out_dir: Option<PathBuf>,
    /// Published-results CSV; default the saved recipe's `report.published`, if any.
    pub published: Option<PathBuf>,
    /// Only the runs of this plan: records that earlier versions of a recipe left in the same
    /// folder stay out, and each record shows as the plan names it (its method's label and its
    /// sweep setting, stage and choice: a run reused from another recipe, or from before a sweep,
    /// keeps its id but not its old names). `None`: every record, as it was written.
    pub plan: Option<Vec<losa_framework::plan::RunSpec>>,
}

/// The files a report consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// The folder they are in.
    pub dir: PathBuf,
    /// `report.html`: the self-contained report.
    pub html: PathBuf,
    /// `results.csv`: one row per run.
    pub csv: PathBuf,
    /// `results.parquet`: the same rows.
    pub parquet: PathBuf,
    /// `summary.md`: the tables in Markdown.
    pub markdown: PathBuf,
}

/// Rebuilds the report of a runs folder from its records (nothing is trained): reads every
/// `<run id>/record.json`, the saved `recipe.toml` and the published results, and writes the
/// report files.
pub fn report_runs(runs_dir: &Path, options: &ReportOptions) -> Result<ReportFiles, ReportError> {
    let mut records = store::read_records(runs_dir)?;
    // Tuning runs of tune_then_test score settings on val200: they chose the results, they are not
    // results themselves (and would mix val200 into test columns).
    let tuning = |r: &RunRecord| r.sweep.as_ref().is_some_and(|s| s.stage == Stage::Tune);
    let tuning_runs = records.iter().filter(|r| tuning(r)).count();
    let tuning_failed = records.iter().filter(|r| tuning(r) && !r.finished()).count();
    if let Some(plan) = &options.plan {
        let specs: std::collections::BTreeMap<&str, &losa_framework::plan::RunSpec> =
            plan.iter().filter_map(|r| Some((r.id.as_deref()?, r))).collect();
        records.retain(|r| specs.contains_key(r.run_id.as_str()));
        for r in &mut records {
            let spec = specs[r.run_id.as_str()];
            r.labels.adapter.clone_from(&spec.labels.adapter);
            r.sweep.clone_from(&spec.sweep);
        }
    }
    records.retain(|r| !tuning(r));
    if records.is_empty() {
        return Err(match tuning_runs {
            0 => store::StoreError::NoRecords(runs_dir.to_owned()).into(),
            runs => ReportError::OnlyTuning { dir: runs_dir.to_owned(), runs },
        });
    }
    let recipe = store::read_recipe(runs_dir)?;
    let from_recipe =
        recipe.as_ref().and_then(|r| Some((r.path.clone(), r.recipe.report.published.clone()?)));
    let published = match (&options.published, from_recipe) {
        (Some(path), _) => Some(Published::read(path)?),
        (None, Some((_, path))) if path.is_file() => Some(Published::read(&path)?),
        (None, Some((recipe, path))) => return Err(ReportError::PublishedNotFound { recipe, path }),
        (None, None) => None,
    };
    let mut report = Report::new(records, recipe, published)?;
    report.tuning_failed = tuning_failed;
    if report.recipe.is_none() {
        let folder = runs_dir.canonicalize().unwrap_or_else(|_| runs_dir.to_owned());
        if let Some(name) = folder.file_name() {
            report.title = name.to_string_lossy().into_owned();
        }
    }
    report.write(&options.out_dir.clone().unwrap_or_else(|| runs_dir.join(REPORT_DIR)))
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// Title: the recipe's `report.title`, else its name, else the runs folder's name.
    pub title: String,
    /// The recipe's description.
    pub description: String,
    /// The numbers of the tables.
    pub summary: Summary,
    /// The polars tables.
    pub tables: Tables,
    /// Published results shown beside the recipe's own.
    pub published: Option<Published>,
    /// The saved recipe, shown as text.
    pub recipe: Option<SavedRecipe>,
    /// Tuning runs (tune_then_test) that failed: not results, but their settings were left out
    /// of the choice, which a reader must know.
    pub tuning_failed: usize,
    /// The records in report order (method, task, seed).
    records: Vec<RunRecord>,
    /// The method row index of each record.
    method_of: Vec<usize>,
}

impl Report {
    /// Orders the records (methods and tasks as in the recipe when there is one, VTAB-1k tasks
    /// by group) and builds the tables.
    pub fn new(
        mut records: Vec<RunRecord>,
        recipe: Option<SavedRecipe>,
        published: Option<Published>,
    ) -> Result<Self, ReportError> {
        let first = records.first().map(|r| r.labels.backbone.clone());
        let several_backbones = records.iter().any(|r| Some(&r.labels.backbone) != first.as_ref());
        let name = |adapter: &str, backbone: &str| match several_backbones {
            true => format!("{adapter} · {backbone}"),
            false => adapter.to_owned(),
        };
        let mut methods: Vec<String> = Vec::new();
        let mut tasks: Vec<String> = Vec::new();
        if let Some(r) = &recipe {
            let fixed = r.recipe.protocol == Protocol::Fixed;
            for b in &r.recipe.backbones {
                for a in &r.recipe.adapters {
                    // Under "fixed" each swept setting is a row of its own, in canonical order.
                    let settings = sweep::settings_for(&r.recipe, a);
                    methods.extend(settings.iter().map(|(_, s)| {
                        let setting = fixed.then_some(s);
                        name(&sweeps::method_name(&a.display_name(), setting), &b.display_name())
                    }));
                }
            }
            tasks.extend(r.recipe.datasets.iter().flat_map(identity::tasks).map(|t| t.name));
        }
        let record_name = |r: &RunRecord| name(&sweeps::record_method(r), &r.labels.backbone);
        let mut others: Vec<String> =
            records.iter().map(record_name).filter(|m| !methods.contains(m)).collect();
        others.sort();
        others.dedup();
        methods.extend(others);
        methods.retain(|m| records.iter().any(|r| record_name(r) == *m));
        // Two recipe entries may name the same row or task: keep each once, in first place.
        let methods = distinct(methods.into_iter());
        let mut other_tasks: Vec<&str> = records
            .iter()
            .map(|r| r.labels.task.as_str())
            .filter(|t| !tasks.iter().any(|k| k == t))
            .collect();
        other_tasks
            .sort_by_key(|t| (vtab::TASKS.iter().position(|v| v.name == *t).unwrap_or(usize::MAX), *t));
        other_tasks.dedup();
        tasks.extend(other_tasks.into_iter().map(str::to_owned));
        tasks.retain(|t| records.iter().any(|r| r.labels.task == *t));
        let tasks = distinct(tasks.into_iter());
        let position = |list: &[String], v: &str| list.iter().position(|x| x == v).unwrap_or(usize::MAX);
        records.sort_by_key(|r| {
            (position(&methods, &record_name(r)), position(&tasks, &r.labels.task), r.labels.seed)
        });
        let method_of: Vec<usize> = records.iter().map(|r| position(&methods, &record_name(r))).collect();

        let runs: Vec<Run<'_>> =
            records.iter().zip(&method_of).map(|(record, &m)| Run { method: &methods[m], record }).collect();
        let tables = Tables::new(&runs)?;
        let columns = tasks
            .iter()
            .map(|t| TaskColumn {
                name: t.clone(),
                group: records.iter().find(|r| r.labels.task == *t).and_then(|r| r.labels.group),
            })
            .collect();
        let summary = Summary::new(
            columns,
            &methods,
            &tables.cell_stats()?,
            &tables.method_costs()?,
            published.as_ref(),
        );
        let title = recipe
            .as_ref()
            .map(|r| r.recipe.report.title.clone().unwrap_or_else(|| r.recipe.name.clone()))
            .unwrap_or_else(|| "losa report".into());
        let description = recipe.as_ref().map(|r| r.recipe.description.clone()).unwrap_or_default();
        Ok(Report {
            title,
            description,
            summary,
            tables,
            published,
            recipe,
            tuning_failed: 0,
            records,
            method_of,
        })
    }

    /// Each record in report order, with its method's name and row index.
    pub fn runs(&self) -> impl Iterator<Item = (&RunRecord, &str, usize)> {
        self.records.iter().zip(&self.method_of).map(|(r, &m)| (r, self.summary.methods[m].name.as_str(), m))
    }

    /// One-line facts under the title.
    pub fn facts(&self) -> Vec<String> {
        let n = self.records.len();
        let failed = self.records.iter().filter(|r| !r.finished()).count();
        let mut seeds: Vec<u64> = self.records.iter().map(|r| r.labels.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        let mut facts = vec![match failed {
            0 => format!("{n} runs"),
            f => format!("{n} runs ({f} failed)"),
        }];
        facts.push(format!("{} methods", self.summary.methods.len()));
        facts.push(format!("{} tasks", self.summary.tasks.len()));
        let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
        facts.push(format!("seed{} {}", if seeds.len() == 1 { "" } else { "s" }, seeds.join(", ")));
        facts.extend(distinct(self.records.iter().map(|r| r.labels.backbone.clone())));
        facts.extend(distinct(
            self.records.iter().map(|r| format!("protocol {}", sweeps::protocol_name(sweeps::protocol(r)))),
        ));
        facts.extend(distinct(self.records.iter().map(|r| r.labels.dataset.clone())));
        facts
    }

    /// Things that change how the numbers read, said before the tables.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let on_test = self.records.iter().filter(|r| r.selection.selected_on_test).count();
        if on_test > 0 {
            out.push(format!(
                "{on_test} of {} runs report an epoch selected on the test split (eval.select = \"best_test\"). That is \
                 not the VTAB-1k protocol and inflates accuracy; their cells are marked ᵀ.",
                self.records.len()
            ));
        }
        if self.tuning_failed > 0 {
            out.push(format!(
                "{} tuning run(s) failed: a setting with a failed seed was left out of its method × task's choice \
                 (`runner status` lists the runs and their reasons).",
                self.tuning_failed
            ));
        }
        let failed = self.records.iter().filter(|r| !r.finished()).count();
        if failed > 0 {
            out.push(format!(
                "{failed} of {} runs failed: their cells read \"failed\", or carry a note when other seeds finished; \
                 the Failures section lists the reasons.",
                self.records.len()
            ));
        }
        let measures = distinct(self.records.iter().map(|r| r.memory.measured.describe().to_owned()));
        if measures.len() > 1 {
            out.push(format!(
                "Peak memory was measured in different ways ({}): memory compares only between runs measured alike.",
                measures.join(" and ")
            ));
        }
        let devices = distinct(self.records.iter().map(|r| r.environment.device.clone()));
        if devices.len() > 1 {
            out.push(format!(
                "Runs ran on {} different devices ({}): times and memory compare only between runs on the same one.",
                devices.len(),
                devices.join(", ")
            ));
        }
        out
    }

    /// What the numbers mean, said after the tables.
    pub fn conventions(&self) -> Vec<String> {
        let s = &self.summary;
        let split = distinct(self.records.iter().map(|r| r.selection.split.name().to_owned())).join(" / ");
        let rules = distinct(self.records.iter().map(|r| {
            match r.selection.rule {
                Selection::Last => "the last epoch",
                Selection::BestVal => "the epoch best on validation",
                Selection::BestTest => "the epoch best on test",
            }
            .to_owned()
        }));
        let mut out = vec![format!(
            "Accuracy: top-1 (%) on {split} at {}; each cell is the mean ± sample standard deviation (n − 1) over \
             the finished seeds (the deviation from two seeds on).",
            rules.join(" / ")
        )];
        out.extend(sweeps::protocol_notes(&self.records));
        if s.several_groups() {
            out.push(format!(
                "Mean of {} groups: the mean of the group means (NOAH, FacT, Convpass, RepAdapter, DTL). Mean of {} \
                 tasks: the plain mean over all tasks (V-PETL Bench, SSF). The two conventions differ by several \
                 points on VTAB-1k. An average is shown only when every task it covers has a result.",
                s.groups.len(),
                s.tasks.len()
            ));
        } else {
            out.push(format!(
                "Mean of {} tasks: the plain mean over all tasks, shown only when every task has a result.",
                s.tasks.len()
            ));
        }
        out.push(
            "Bold: the best value of its column among this recipe's methods (highest accuracy; fewest parameters, \
             smallest adapter, least memory, shortest training time; most images per second). Published rows are \
             never compared."
                .into(),
        );
        let measures = distinct(self.records.iter().map(|r| r.memory.measured));
        let measured: Vec<&str> = measures.iter().map(|m: &MemoryMeasure| m.describe()).collect();
        let total: f64 = self.records.iter().filter(|r| r.finished()).map(|r| r.timing.train_s).sum();
        out.push(format!(
            "Costs are over finished runs: parameters and adapter size are means over tasks (the head grows with the \
             number of classes); memory is the largest peak of any run ({}); training time is the mean wall time of \
             one run ({} for all finished runs together); images/s is the mean training throughput.",
            measured.join(", "),
            format::duration(total)
        ));
        if let Some(p) = &self.published {
            out.push(format!(
                "Published rows come from {} and are averaged over the same {} tasks as this recipe's rows; their \
                 parameter counts are as published (without the head).",
                p.path.file_name().map_or_else(|| p.path.display().to_string(), |n| n.to_string_lossy().into_owned()),
                s.tasks.len()
            ));
        }
        out
    }

    /// The report as one self-contained HTML document.
    pub fn html(&self) -> Result<String, ReportError> {
        html::render(self)
    }

    /// The tables as Markdown.
    pub fn markdown(&self) -> String {
        markdown::render(self)
    }

    /// Writes report.html, results.csv, results.parquet and summary.md into `dir`.
    pub fn write(&self, dir: &Path) -> Result<ReportFiles, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write { path: dir.to_owned(), source })?;
        let files = ReportFiles {
            dir: dir.to_owned(),
            html: dir.join("report.html"),
            csv: dir.join("results.csv"),
            parquet: dir.join("results.parquet"),
            markdown: dir.join("summary.md"),
        };
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| ReportError::Write { path: path.to_owned(), source })
        };
        write(&files.html, &self.html()?)?;
        write(&files.markdown, &self.markdown())?;
        self.tables.write_csv(&files.csv)?;
        self.tables.write_parquet(&files.parquet)?;
        Ok(files)
    }
}

/// The distinct values, in order of first appearance.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
