//! `runner status`: where each run of a plan stands in its runs folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::anyhow;
use losa_framework::engine::execute::STATE_FILE;
use losa_framework::engine::resume;
use losa_framework::engine::running::Running;
use losa_framework::plan::{RunSpec, plan as expand};
use losa_framework::recipe::Recipe;
use losa_framework::store::{self, RECORD_FILE};

use crate::Failure;

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Its record says it finished; the accuracy it reports.
    Finished(Option<f64>),
    /// Its record says it failed; why.
    Failed(String),
    /// A process has it; whether that was checked (its pid on this host, its job in `squeue`).
    Running(Running, bool),
    /// It started and has not ended, and no process has it (killed, a lost node, the job's time
    /// limit): the next `runner run` of its shard resumes it after this epoch (0: starts over).
    /// The marker its process left, if any.
    Interrupted(u32, Option<Running>),
    /// It never started.
    Missing,
    /// Its inputs are not there, so it has no id yet.
    InputsMissing,
}

impl State {
    /// The word shown for it.
    pub fn word(&self) -> &'static str {
        match self {
            State::Finished(_) => "finished",
            State::Failed(_) => "failed",
            State::Running(..) => "running",
            State::Interrupted(..) => "interrupted",
            State::Missing => "missing",
            State::InputsMissing => "no inputs",
        }
    }
}

/// The state of run `id` in `runs_dir`. A live marker wins over a record (a `--force` redo is
/// running); a marker whose process is gone means the run was interrupted, unless it has ended.
pub fn state(runs_dir: &Path, id: &str) -> State {
    let dir = runs_dir.join(id);
    let marker = Running::read(&dir);
    let alive = marker.as_ref().map(|m| m.alive_here().map_or_else(|| slurm_job_alive(m), Some));
    if let (Some(m), Some(alive)) = (&marker, alive)
        && alive != Some(false)
    {
        return State::Running(m.clone(), alive.is_some());
    }
    if let Ok(record) = store::read_record(&dir.join(RECORD_FILE)) {
        return match record.failure() {
            None => State::Finished(record.reported_accuracy()),
            Some(reason) => State::Failed(reason.to_owned()),
        };
    }
    match dir.is_dir() {
        true => State::Interrupted(resume::peek(&dir.join(STATE_FILE)).map_or(0, |s| s.epoch), marker),
        false => State::Missing,
    }
}

/// Whether the Slurm job in a marker written on another host is still in the queue: `None` when
/// the marker names no job or `squeue` cannot tell.
fn slurm_job_alive(marker: &Running) -> Option<bool> {
    let job = marker.slurm_job_id.as_deref()?;
    let out = Command::new("squeue").args(["--noheader", "--format=%T", "--jobs", job]).output().ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => Some(!String::from_utf8_lossy(&out.stdout).trim().is_empty()),
        // A job that left the queue long ago is unknown to the controller.
        false => stderr.contains("Invalid job id").then_some(false),
    }
}

/// The plan whose status is asked for: from a recipe file, or from a runs folder's saved recipe.
pub struct Target {
    /// The recipe.
    pub recipe: Recipe,
    /// Its runs folder.
    pub runs_dir: PathBuf,
    /// The command that submits the plan again.
    pub resubmit: String,
}

/// `runner status`: a table of the plan's runs and their states, counts per state, and what a
/// resubmission would run.
pub fn show(target: &Target) -> Result<(), Failure> {
    // Under tune_then_test: the tuning runs, then the final runs decided so far.
    let mut runs = expand(&target.recipe);
    let finals = losa_framework::engine::protocol::stage2(&target.recipe, &runs, &target.runs_dir).finals;
    runs.extend(finals);
    let states: Vec<State> = runs
        .iter()
        .map(|r| r.id.as_deref().map_or(State::InputsMissing, |id| state(&target.runs_dir, id)))
        .collect();
    crate::commands::emit(&render(target, &runs, &states))?;
    Ok(())
}

fn render(target: &Target, runs: &[RunSpec], states: &[State]) -> String {
    let mut out =
        format!("recipe {}: {} runs in {}\n", target.recipe.name, runs.len(), target.runs_dir.display());
    let count = |word: &str| states.iter().filter(|s| s.word() == word).count();
    let words = ["finished", "failed", "running", "interrupted", "missing", "no inputs"];
    let counts: Vec<String> = words
        .iter()
        .filter(|w| **w != "no inputs" || count(w) > 0)
        .map(|w| format!("{} {w}", count(w)))
        .collect();
    out.push_str(&format!("{}\n\n", counts.join(", ")));
    let id =
        |i: usize| runs[i].id.clone().unwrap_or_else(|| format!("(run {}: {})", i + 1, runs[i].task.name));
    let width = (0..runs.len()).map(|i| id(i).len()).max().unwrap_or(0).max("run id".len());
    out.push_str(&format!("{:<width$}  {:<11}  detail\n", "run id", "state"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for (i, state) in states.iter().enumerate() {
        let detail = match state {
            State::Finished(Some(accuracy)) => format!("accuracy {:.2}%", accuracy * 100.0),
            State::Finished(None) | State::Missing => String::new(),
            State::Failed(reason) => reason.clone(),
            State::Running(m, checked) => {
                let mut d = format!("{}, for {}", who(m), duration(now.saturating_sub(m.started_unix_s)));
                if !checked {
                    d.push_str(" (on another host, not checked)");
                }
                d
            }
            State::Interrupted(epoch, marker) => {
                let resume = match epoch {
                    0 => "starts over".to_owned(),
                    e => format!("resumes after epoch {e}"),
                };
                match marker {
                    Some(m) => format!("{resume} ({} has ended)", who(m)),
                    None => resume,
                }
            }
            State::InputsMissing => "its inputs are not there (`runner plan` lists them)".into(),
        };
        out.push_str(format!("{:<width$}  {:<11}  {detail}", id(i), state.word()).trim_end());
        out.push('\n');
    }
    let plan: BTreeSet<String> = runs.iter().filter_map(|r| r.id.clone()).collect();
    let others = std::fs::read_dir(&target.runs_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(RECORD_FILE).is_file())
                .filter(|e| !plan.contains(&*e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0);
    if others > 0 {
        out.push_str(&format!("\n{others} other run(s) in the folder are not in this plan (not shown).\n"));
    }
    let todo = count("failed") + count("interrupted") + count("missing");
    if todo > 0 {
        out.push_str(&format!(
            "\n{todo} run(s) to do (failed, interrupted or missing): `{}` runs only those \
             (finished runs are skipped, interrupted ones resume); so does `runner run`.\n",
            target.resubmit
        ));
    }
    if count("running") > 0 {
        out.push_str(&format!(
            "{} run(s) running: resubmit after their jobs end (or `scancel` them first), or they \
             are started a second time.\n",
            count("running")
        ));
    }
    out
}

/// "pid 1234 on node7 (Slurm job 55_3)".
fn who(m: &Running) -> String {
    let mut s = format!("pid {} on {}", m.pid, m.host.as_deref().unwrap_or("an unknown host"));
    match (&m.slurm_array_job_id, &m.slurm_array_task_id, &m.slurm_job_id) {
        (Some(array), Some(task), _) => s.push_str(&format!(" (Slurm job {array}_{task})")),
        (_, _, Some(job)) => s.push_str(&format!(" (Slurm job {job})")),
        _ => {}
    }
    s
}

/// "3h 05m", "4m 12s", "9s".
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A runs folder's plan: the recipe saved in it by the last `runner run` or `runner submit`.
pub fn saved(runs_dir: &Path) -> Result<Target, Failure> {
    let saved = store::read_recipe(runs_dir)?.ok_or_else(|| {
        let what = match runs_dir.is_dir() {
            true => "has no recipe.toml (no `runner run` or `runner submit` has used it)",
            false => "is not a folder",
        };
        Failure::BadInput(anyhow!(
            "{} {what}; give the recipe file instead: runner status <recipe.toml>",
            runs_dir.display()
        ))
    })?;
    Ok(Target {
        runs_dir: runs_dir.to_owned(),
        resubmit: "runner submit <recipe> (with the same --set and --out)".into(),
        recipe: saved.recipe,
    })
}
