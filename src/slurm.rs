//! `runner submit`: a plan as a Slurm job array. Slurm schedules; the runner only writes the job
//! scripts and calls `sbatch`. Task i of N runs `runner run <recipe> --shard i/N` into one runs
//! folder (shards are disjoint, every file is written atomically, finished runs are skipped); a
//! second job, started when every task has ended (`--dependency=afterany`), writes the report of
//! the plan's runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow};
use losa_framework::data::identity::Missing;
use losa_framework::plan::plan as expand;
use losa_framework::recipe::SlurmConfig;
use losa_framework::store;

use crate::Failure;
use crate::cli::SubmitArgs;
use crate::commands::{load, missing_inputs};
use crate::status::{State, state};

/// Folder of the job scripts and the tasks' logs inside the runs folder.
pub const SLURM_DIR: &str = "slurm";

/// What the job scripts run, and with what.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The recipe's name (names the jobs).
    pub name: &'a str,
    /// The runner binary, absolute.
    pub exe: &'a Path,
    /// The recipe file, absolute.
    pub recipe: &'a Path,
    /// `--set` arguments, passed on as given.
    pub sets: &'a [String],
    /// The runs folder, absolute.
    pub runs_dir: &'a Path,
    /// The working directory of the jobs (where `runner submit` ran): paths in the recipe that
    /// are relative to the working directory (output.cache_dir, ...) mean the same there.
    pub workdir: &'a Path,
    /// Array tasks (shards).
    pub tasks: usize,
    /// Runs in the plan.
    pub runs: usize,
    /// Resources.
    pub slurm: &'a SlurmConfig,
}

impl Job<'_> {
    /// The folder of scripts and logs.
    pub fn dir(&self) -> PathBuf {
        self.runs_dir.join(SLURM_DIR)
    }

    /// The job array: task i runs shard i of `tasks`.
    pub fn array_script(&self) -> Result<String, String> {
        let s = self.slurm;
        let mut array = format!("0-{}", self.tasks - 1);
        if let Some(k) = s.array_parallelism {
            array.push_str(&format!("%{k}"));
        }
        let mut options = vec![
            format!("--job-name={}", sbatch_value(&format!("losa-{}", self.name))?),
            format!("--array={array}"),
            format!("--output={}", sbatch_value(&self.dir().join("%A_%a.out").display().to_string())?),
            "--ntasks=1".to_owned(),
        ];
        options.extend(self.shared_options()?);
        options.extend(s.gpus_per_task.map(|n| format!("--gpus-per-task={n}")));
        options.extend(s.cpus_per_task.map(|n| format!("--cpus-per-task={n}")));
        options.extend(s.mem.as_ref().map(|m| format!("--mem={m}")));
        options.extend(s.time.as_ref().map(|t| format!("--time={t}")));
        options.extend(s.sbatch.iter().cloned());
        let mut command = vec![
            quote(&self.exe.display().to_string()),
            "run".into(),
            quote(&self.recipe.display().to_string()),
            "--shard".into(),
            format!("\"$SLURM_ARRAY_TASK_ID/{}\"", self.tasks),
            "--out".into(),
            quote(&self.runs_dir.display().to_string()),
            "--no-report".into(),
        ];
        command.extend(self.sets.iter().flat_map(|s| ["--set".to_owned(), quote(s)]));
        let header = format!(
            "# losa: recipe {}, {} runs in {} array tasks; written by `runner submit`.\n\
             # Task i runs shard i/{} of the plan; runs that have finished are skipped, interrupted ones resume.",
            self.name, self.runs, self.tasks, self.tasks
        );
        Ok(self.script(&header, &options, &command))
    }

    /// The report job (to be submitted with `--dependency=afterany:<array job id>`).
    pub fn report_script(&self) -> Result<String, String> {
        let mut options = vec![
            format!("--job-name={}", sbatch_value(&format!("losa-{}-report", self.name))?),
            format!("--output={}", sbatch_value(&self.dir().join("report-%j.out").display().to_string())?),
            "--ntasks=1".to_owned(),
        ];
        options.extend(self.shared_options()?);
        options.extend(self.slurm.sbatch.iter().cloned());
        let mut command = vec![
            quote(&self.exe.display().to_string()),
            "report".into(),
            quote(&self.runs_dir.display().to_string()),
            "--recipe".into(),
            quote(&self.recipe.display().to_string()),
        ];
        command.extend(self.sets.iter().flat_map(|s| ["--set".to_owned(), quote(s)]));
        let header = format!(
            "# losa: the report of recipe {} (the runs of its plan), after its job array has ended;\n\
             # written by `runner submit`.",
            self.name
        );
        Ok(self.script(&header, &options, &command))
    }

    /// Partition and account: both jobs.
    fn shared_options(&self) -> Result<Vec<String>, String> {
        let s = self.slurm;
        let mut out = Vec::new();
        if let Some(p) = &s.partition {
            out.push(format!("--partition={}", sbatch_value(p)?));
        }
        if let Some(a) = &s.account {
            out.push(format!("--account={}", sbatch_value(a)?));
        }
        Ok(out)
    }

    fn script(&self, header: &str, options: &[String], command: &[String]) -> String {
        let mut text = format!("#!/bin/bash\n{header}\n");
        for option in options {
            text.push_str(&format!("#SBATCH {option}\n"));
        }
        text.push_str("set -e\n");
        text.push_str(&format!("cd {}\n", quote(&self.workdir.display().to_string())));
        for line in &self.slurm.setup {
            text.push_str(&format!("{line}\n"));
        }
        text.push_str(&format!("exec {}\n", command.join(" ")));
        text
    }
}

/// A word for bash: as is when it holds only characters bash leaves alone, else in single
/// quotes (a single quote inside becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    match !word.is_empty() && word.chars().all(plain) {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

/// `runner <sub> <recipe> [--set ...] [--out DIR]`, quoted for bash.
pub fn runner_command(sub: &str, recipe: &Path, sets: &[String], out: Option<&Path>) -> String {
    let mut words = vec!["runner".to_owned(), sub.to_owned(), quote(&recipe.display().to_string())];
    for set in sets {
        words.extend(["--set".to_owned(), quote(set)]);
    }
    if let Some(out) = out {
        words.extend(["--out".to_owned(), quote(&out.display().to_string())]);
    }
    words.join(" ")
}

/// A value on an `#SBATCH` line: sbatch splits the line at spaces outside double quotes.
fn sbatch_value(value: &str) -> Result<String, String> {
    if value.contains(['"', '\n', '\r']) {
        return Err(format!("{value:?}: a double quote or line break cannot go into an #SBATCH line"));
    }
    match value.contains(char::is_whitespace) {
        true => Ok(format!("\"{value}\"")),
        false => Ok(value.to_owned()),
    }
}

/// `runner submit`.
pub fn submit(args: &SubmitArgs) -> Result<(), Failure> {
    let recipe_path =
        std::path::absolute(&args.recipe).with_context(|| format!("recipe {}", args.recipe.display()))?;
    let mut recipe = load(&recipe_path, &args.layers)?;
    override_slurm(&mut recipe.slurm, args)?;
    let runs = expand(&recipe);
    let missing: Vec<&Missing> = runs.iter().flat_map(|r| &r.missing).collect();
    if !missing.is_empty() {
        return Err(Failure::BadInput(anyhow!("{}", missing_inputs(&recipe_path, &missing))));
    }
    let runs_dir = std::path::absolute(args.out.clone().unwrap_or_else(|| recipe.runs_dir()))
        .context("the runs folder")?;
    if runs_dir.to_string_lossy().contains('%') {
        return Err(Failure::BadInput(anyhow!(
            "runs folder {}: Slurm reads '%' in log file names as a pattern; choose a folder without it",
            runs_dir.display()
        )));
    }
    let exe = std::env::current_exe().context("the path of this runner")?;
    let workdir = std::env::current_dir().context("the working directory")?;
    let tasks = (args.tasks.map_or(runs.len(), |n| n as usize)).min(runs.len()).max(1);
    let job = Job {
        name: &recipe.name,
        exe: &exe,
        recipe: &recipe_path,
        sets: &args.layers.sets,
        runs_dir: &runs_dir,
        workdir: &workdir,
        tasks,
        runs: runs.len(),
        slurm: &recipe.slurm,
    };
    let bad = |e: String| Failure::BadInput(anyhow!("{e}"));
    let array = job.array_script().map_err(bad)?;
    let report = recipe.report.enabled.then(|| job.report_script()).transpose().map_err(bad)?;
    let (array_file, report_file) = (job.dir().join("array.sbatch"), job.dir().join("report.sbatch"));
    let array_command = ["sbatch", "--parsable"].map(String::from);
    let dependency = |id: &str| format!("--dependency=afterany:{id}");

    if args.dry_run {
        let path = |p: &Path| quote(&p.display().to_string());
        println!("==> {} <==\n{array}", array_file.display());
        let mut commands = format!("{} {}\n", array_command.join(" "), path(&array_file));
        if let Some(report) = &report {
            println!("==> {} <==\n{report}", report_file.display());
            commands.push_str(&format!(
                "{} {} {}\n",
                array_command.join(" "),
                dependency("<array job id>"),
                path(&report_file)
            ));
        }
        println!("==> sbatch commands <==\n{commands}");
        println!(
            "recipe {}: {} runs in {tasks} array tasks into {} (dry run: nothing written or submitted)",
            recipe.name,
            runs.len(),
            runs_dir.display()
        );
        return Ok(());
    }

    let states: Vec<State> =
        runs.iter().filter_map(|r| r.id.as_deref()).map(|id| state(&runs_dir, id)).collect();
    let finished = states.iter().filter(|s| matches!(s, State::Finished(_))).count();
    let running = states.iter().filter(|s| matches!(s, State::Running(..))).count();
    if running > 0 {
        eprintln!(
            "warning: {running} run(s) of this plan are running now (`runner status` lists them); \
             if their jobs are still going, this submission starts them a second time"
        );
    }
    std::fs::create_dir_all(job.dir()).with_context(|| format!("creating {}", job.dir().display()))?;
    store::write_recipe(&runs_dir, &recipe)?;
    for (file, text) in [(&array_file, Some(&array)), (&report_file, report.as_ref())] {
        if let Some(text) = text {
            std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
        }
    }
    let array_id = sbatch(&[array_command.as_slice(), &[array_file.display().to_string()]].concat())?;
    println!(
        "recipe {}: {} runs ({finished} finished before) in {tasks} array tasks into {}",
        recipe.name,
        runs.len(),
        runs_dir.display()
    );
    println!("submitted job array {array_id} (tasks 0-{})", tasks - 1);
    if report.is_some() {
        let command =
            [array_command.as_slice(), &[dependency(&array_id), report_file.display().to_string()]].concat();
        match sbatch(&command) {
            Ok(id) => println!("submitted report job {id} (starts when the array has ended)"),
            Err(e) => {
                return Err(Failure::BadInput(anyhow!(
                    "the job array {array_id} is submitted, but the report job is not: {}\n\
                     When the array has ended, write the report with: {} report {} --recipe {}",
                    match e {
                        Failure::BadInput(e) => format!("{e:#}"),
                        Failure::RunsFailed(n) => n.to_string(),
                    },
                    quote(&exe.display().to_string()),
                    quote(&runs_dir.display().to_string()),
                    quote(&recipe_path.display().to_string()),
                )));
            }
        }
    }
    println!(
        "logs: {}/\nprogress: {}",
        job.dir().display(),
        runner_command("status", &args.recipe, &args.layers.sets, args.out.as_deref())
    );
    Ok(())
}

/// Applies `runner submit`'s resource flags over the recipe's `[slurm]` and checks them.
fn override_slurm(slurm: &mut SlurmConfig, args: &SubmitArgs) -> Result<(), Failure> {
    let text = |flag: &Option<String>, field: &mut Option<String>| {
        if flag.is_some() {
            field.clone_from(flag);
        }
    };
    text(&args.partition, &mut slurm.partition);
    text(&args.account, &mut slurm.account);
    text(&args.mem, &mut slurm.mem);
    text(&args.time, &mut slurm.time);
    slurm.gpus_per_task = args.gpus_per_task.or(slurm.gpus_per_task);
    slurm.cpus_per_task = args.cpus_per_task.or(slurm.cpus_per_task);
    slurm.array_parallelism = args.array_parallelism.or(slurm.array_parallelism);
    let problems: Vec<String> = slurm
        .problems()
        .into_iter()
        .map(|(key, message)| {
            let flag = match ["partition", "account", "mem", "time"].contains(&key.as_str()) {
                true => format!("--{key} (or slurm.{key})"),
                false => format!("slurm.{key}"),
            };
            format!("  - {flag}: {message}")
        })
        .collect();
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Failure::BadInput(anyhow!("Slurm settings:\n{}", problems.join("\n")))),
    }
}

/// Runs sbatch; returns the job id it prints (`--parsable`: "id" or "id;cluster").
fn sbatch(command: &[String]) -> Result<String, Failure> {
    let out = Command::new(&command[0]).args(&command[1..]).output().map_err(|e| {
        Failure::BadInput(match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "sbatch not found: submit on a machine of the Slurm cluster (or see the job scripts \
                 with --dry-run)"
            ),
            _ => anyhow!("cannot run sbatch: {e}"),
        })
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or_default().to_owned();
    if !out.status.success() || id.is_empty() {
        return Err(Failure::BadInput(anyhow!(
            "`{}` failed ({}): {}",
            command.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(id)
}
