//! The report's numbers, ready to show: per method, accuracy per task (mean ± std over seeds),
//! group means, both overall averages and the costs, with the best value of each column marked.
//!
//! Seeds are aggregated by polars ([`crate::tables`]); averaging over tasks happens here because its
//! rules are about completeness: an average exists only when every task it covers has a result,
//! and otherwise the report says which are missing instead of averaging fewer tasks silently.

use losa_framework::data::vtab::Group;

use crate::published::Published;
use crate::tables::{CellStats, MethodCosts};

/// A task column.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskColumn {
    /// The task's name.
    pub name: String,
    /// Its VTAB-1k group, if any.
    pub group: Option<Group>,
}

/// One method's accuracy on one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// At least one seed finished (or a published number).
    Value {
        /// Mean top-1 accuracy in percent.
        mean: f64,
        /// Sample std over seeds in percent (two or more finished seeds).
        std: Option<f64>,
        /// Finished seeds (0 for a published number).
        finished: u64,
        /// Failed seeds.
        failed: u64,
        /// The first failure's reason, if a seed failed.
        reason: Option<String>,
        /// Seeds whose reported epoch was selected on the test split.
        selected_on_test: u64,
        /// The best among this recipe's methods in this column.
        best: bool,
    },
    /// Every seed failed.
    Failed {
        /// Failed seeds.
        runs: u64,
        /// The first failure's reason.
        reason: String,
    },
    /// The method was not run (or not published) on this task.
    Missing,
}

impl Cell {
    /// The mean accuracy, if there is one.
    pub fn mean(&self) -> Option<f64> {
        match self {
            Cell::Value { mean, .. } => Some(*mean),
            _ => None,
        }
    }
}

/// An average over tasks or groups, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Average {
    /// The average in percent.
    Value {
        /// The value.
        value: f64,
        /// The best among this recipe's methods in this column.
        best: bool,
    },
    /// Not every task it covers has a result.
    Unavailable {
        /// Which tasks lack one, and why.
        why: String,
    },
}

impl Average {
    /// The value, if there is one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Average::Value { value, .. } => Some(*value),
            Average::Unavailable { .. } => None,
        }
    }
}

/// The cost columns, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Trainable parameters without the head.
    TrainableParams,
    /// Trainable parameters with the head.
    TrainableWithHead,
    /// Adapter file size on disk.
    AdapterSize,
    /// Peak training memory.
    PeakMemory,
    /// Training wall time of one run.
    TrainTime,
    /// Training throughput.
    ImagesPerS,
}

impl Cost {
    /// Every cost column, in table order.
    pub const ALL: [Cost; 6] = [
        Cost::TrainableParams,
        Cost::TrainableWithHead,
        Cost::AdapterSize,
        Cost::PeakMemory,
        Cost::TrainTime,
        Cost::ImagesPerS,
    ];

    /// The column's position in [`Cost::ALL`] (and in [`MethodRow::costs`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether more is better (throughput); for every other cost, less is.
    pub fn higher_is_better(self) -> bool {
        self == Cost::ImagesPerS
    }
}

/// One row of the tables: a method of this recipe or a published one.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRow {
    /// The method's name.
    pub name: String,
    /// Where a published row comes from; `None` for this recipe's own methods.
    pub published: Option<String>,
    /// Accuracy per task, aligned with [`Summary::tasks`].
    pub cells: Vec<Cell>,
    /// Mean over each group's tasks, aligned with [`Summary::groups`].
    pub group_means: Vec<Average>,
    /// The mean of the group means (NOAH, FacT, ... convention).
    pub mean_of_group_means: Average,
    /// The mean over all tasks (V-PETL, SSF convention).
    pub mean_of_tasks: Average,
    /// Costs aligned with [`Cost::ALL`]; `None` where unknown. Published rows have parameters only.
    pub costs: Vec<Option<f64>>,
    /// Which costs are the best among this recipe's methods, aligned with [`Cost::ALL`].
    pub best_costs: Vec<bool>,
    /// Runs of this method that failed, of all its runs.
    pub failed_runs: (u64, u64),
}

impl MethodRow {
    /// The accuracy charts plot: the mean of group means when the tasks span several groups,
    /// else the mean of all tasks.
    pub fn headline(&self, several_groups: bool) -> Option<f64> {
        if several_groups { self.mean_of_group_means.value() } else { self.mean_of_tasks.value() }
    }
}

/// Everything the tables show.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Task columns in report order (VTAB-1k tasks by group, then the others).
    pub tasks: Vec<TaskColumn>,
    /// Groups of the tasks, in order; empty when no task has one.
    pub groups: Vec<Group>,
    /// This recipe's methods.
    pub methods: Vec<MethodRow>,
    /// Published methods, for reference; never marked best.
    pub published: Vec<MethodRow>,
}

impl Summary {
    /// Builds the summary. `methods` gives the row order; `cells` and `costs` come from the polars
    /// tables; `published` rows are restricted to the report's tasks.
    pub fn new(
        tasks: Vec<TaskColumn>,
        methods: &[String],
        cells: &[CellStats],
        costs: &[MethodCosts],
        published: Option<&Published>,
    ) -> Self {
        let mut groups: Vec<Group> = tasks.iter().filter_map(|t| t.group).collect();
        groups.dedup();
        let rows = methods
            .iter()
            .map(|m| {
                let cells: Vec<Cell> = tasks
                    .iter()
                    .map(|t| {
                        cells.iter().find(|c| &c.method == m && c.task == t.name).map_or(Cell::Missing, cell)
                    })
                    .collect();
                let c = costs.iter().find(|c| &c.method == m);
                let costs = Cost::ALL.iter().map(|k| c.and_then(|c| cost(c, *k))).collect();
                let failed_runs = cells.iter().fold((0, 0), |(f, n), c| match c {
                    Cell::Value { finished, failed, .. } => (f + failed, n + finished + failed),
                    Cell::Failed { runs, .. } => (f + runs, n + runs),
                    Cell::Missing => (f, n),
                });
                row(m.clone(), None, cells, &tasks, &groups, costs, failed_runs)
            })
            .collect();
        let published = published
            .map(|p| {
                p.rows
                    .iter()
                    .map(|r| {
                        let cells = tasks
                            .iter()
                            .map(|t| r.accuracy.get(&t.name).map_or(Cell::Missing, |v| published_cell(*v)))
                            .collect();
                        let mut costs = vec![None; Cost::ALL.len()];
                        costs[Cost::TrainableParams.index()] = r.params_m.map(|m| m * 1e6);
                        row(r.method.clone(), Some(r.source.clone()), cells, &tasks, &groups, costs, (0, 0))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut summary = Summary { tasks, groups, methods: rows, published };
        summary.mark_best();
        summary
    }

    /// Whether the tasks span more than one group (then the mean of group means is shown).
    pub fn several_groups(&self) -> bool {
        self.groups.len() > 1
    }

    /// Marks the best value of every column among this recipe's methods (ties all marked; only
    /// where at least two methods have a value, since a lone value is not a comparison).
    fn mark_best(&mut self) {
        let rows = &mut self.methods;
        for t in 0..self.tasks.len() {
            let values: Vec<Option<f64>> =
                rows.iter().map(|r| r.cells[t].mean().map(|v| round(v, 1))).collect();
            for (r, best) in rows.iter_mut().zip(best_of(&values, true)) {
                if let Cell::Value { best: b, .. } = &mut r.cells[t] {
                    *b = best;
                }
            }
        }
        let mut mark_average = |get: &dyn Fn(&mut MethodRow) -> &mut Average| {
            let values: Vec<Option<f64>> =
                rows.iter_mut().map(|r| get(r).value().map(|v| round(v, 2))).collect();
            for (r, best) in rows.iter_mut().zip(best_of(&values, true)) {
                if let Average::Value { best: b, .. } = get(r) {
                    *b = best;
                }
            }
        };
        for g in 0..self.groups.len() {
            mark_average(&|r| &mut r.group_means[g]);
        }
        mark_average(&|r| &mut r.mean_of_group_means);
        mark_average(&|r| &mut r.mean_of_tasks);
        for (k, cost) in Cost::ALL.iter().enumerate() {
            let values: Vec<Option<f64>> = rows.iter().map(|r| r.costs[k]).collect();
            for (r, best) in rows.iter_mut().zip(best_of(&values, cost.higher_is_better())) {
                r.best_costs[k] = best;
            }
        }
    }
}

fn row(
    name: String,
    published: Option<String>,
    cells: Vec<Cell>,
    tasks: &[TaskColumn],
    groups: &[Group],
    costs: Vec<Option<f64>>,
    failed_runs: (u64, u64),
) -> MethodRow {
    let in_group =
        |g: Group| -> Vec<usize> { (0..tasks.len()).filter(|&i| tasks[i].group == Some(g)).collect() };
    let group_means: Vec<Average> = groups.iter().map(|&g| average(&cells, tasks, &in_group(g))).collect();
    let mean_of_group_means = match group_means.iter().map(Average::value).collect::<Option<Vec<f64>>>() {
        _ if groups.is_empty() => Average::Unavailable { why: "the tasks belong to no group".into() },
        Some(means) => Average::Value { value: means.iter().sum::<f64>() / means.len() as f64, best: false },
        None => {
            let missing: Vec<&str> = groups
                .iter()
                .zip(&group_means)
                .filter(|(_, a)| a.value().is_none())
                .map(|(g, _)| g.name())
                .collect();
            Average::Unavailable { why: format!("no mean for the {} group(s)", missing.join(", ")) }
        }
    };
    let mean_of_tasks = average(&cells, tasks, &(0..tasks.len()).collect::<Vec<_>>());
    let best_costs = vec![false; costs.len()];
    MethodRow {
        name,
        published,
        cells,
        group_means,
        mean_of_group_means,
        mean_of_tasks,
        costs,
        best_costs,
        failed_runs,
    }
}

/// The mean of the cells at `indices`, or which of them have no result.
fn average(cells: &[Cell], tasks: &[TaskColumn], indices: &[usize]) -> Average {
    let lacking: Vec<String> = indices
        .iter()
        .filter_map(|&i| match &cells[i] {
            Cell::Value { .. } => None,
            Cell::Failed { .. } => Some(format!("{} failed", tasks[i].name)),
            Cell::Missing => Some(format!("{} not run", tasks[i].name)),
        })
        .collect();
    match (indices.is_empty(), lacking.is_empty()) {
        (true, _) => Average::Unavailable { why: "no tasks".into() },
        (false, true) => {
            let sum: f64 = indices.iter().filter_map(|&i| cells[i].mean()).sum();
            Average::Value { value: sum / indices.len() as f64, best: false }
        }
        (false, false) => Average::Unavailable { why: lacking.join(", ") },
    }
}

fn cell(c: &CellStats) -> Cell {
    match c.mean {
        Some(mean) if c.finished > 0 => Cell::Value {
            mean,
            std: c.std,
            finished: c.finished,
            failed: c.failed,
            reason: c.reason.clone(),
            selected_on_test: c.selected_on_test,
            best: false,
        },
        _ => Cell::Failed { runs: c.failed, reason: c.reason.clone().unwrap_or_else(|| "no result".into()) },
    }
}

fn published_cell(mean: f64) -> Cell {
    Cell::Value { mean, std: None, finished: 0, failed: 0, reason: None, selected_on_test: 0, best: false }
}

fn cost(c: &MethodCosts, k: Cost) -> Option<f64> {
    match k {
        Cost::TrainableParams => Some(c.trainable_without_head),
        Cost::TrainableWithHead => Some(c.trainable_with_head),
        Cost::AdapterSize => c.adapter_bytes,
        Cost::PeakMemory => Some(c.peak_memory_bytes),
        Cost::TrainTime => Some(c.train_s),
        Cost::ImagesPerS => Some(c.images_per_s),
    }
}

/// Rounds to `decimals` places: the best is judged on the numbers as shown, so two methods that
/// print the same are both marked.
fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// Which of `values` are the best (max or min), when at least two are present.
pub(crate) fn best_of(values: &[Option<f64>], higher_is_better: bool) -> Vec<bool> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.len() < 2 {
        return vec![false; values.len()];
    }
    let pick = if higher_is_better { f64::max } else { f64::min };
    let best = present.iter().copied().fold(present[0], pick);
    values.iter().map(|v| *v == Some(best)).collect()
}

#[cfg(test)]
#[path = "summary_tests.rs"]
mod tests;
