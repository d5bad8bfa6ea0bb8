//! `runner submit`: a plan as a Slurm job array. Slurm schedules; the runner only writes the job
//! scripts and calls `sbatch`. Task i of N runs `runner run <recipe> --shard i/N` into one runs
//! folder (shards are disjoint, every file is written atomically, finished runs are skipped); a
//! second job, started when every task has ended (`--dependency=afterany`), writes the report of
//! the plan's runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow};
use losa_framework::data::identity::Missing;
use losa_framework::plan::{groups, plan as expand};
use losa_framework::recipe::{Protocol, SlurmConfig};
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
    /// Under tune_then_test: the stage this array runs (`tune` or `final`), else `None`.
    pub stage: Option<&'a str>,
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
        let name = match self.stage {
            Some(stage) => format!("losa-{}-{stage}", self.name),
            None => format!("losa-{}", self.name),
        };
        let mut options = vec![
            format!("--job-name={}", sbatch_value(&name)?),
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
        if let Some(stage) = self.stage {
            command.extend(["--stage".to_owned(), stage.to_owned()]);
        }
        command.extend(self.sets.iter().flat_map(|s| ["--set".to_owned(), quote(s)]));
        let stage = match self.stage {
            Some("final") => " (final stage: the settings chosen on val200, on train800val200 -> test)",
            Some(_) => " (tuning stage: every setting on train800 -> val200)",
            None => "",
        };
        let header = format!(
            "# losa: recipe {}{stage}, {} runs in {} array tasks; written by `runner submit`.\n\
             # Task i runs shard i/{} of the stage; runs that have finished are skipped, interrupted ones resume.",
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
    crate::commands::check_collisions(&recipe_path, &recipe, &runs)?;
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
    let tasks_for = |runs: usize| args.tasks.map_or(runs, |n| n as usize).min(runs).max(1);
    let tune_then_test = recipe.protocol == Protocol::TuneThenTest;
    let job = Job {
        name: &recipe.name,
        exe: &exe,
        recipe: &recipe_path,
        sets: &args.layers.sets,
        runs_dir: &runs_dir,
        workdir: &workdir,
        tasks: tasks_for(runs.len()),
        runs: runs.len(),
        slurm: &recipe.slurm,
        stage: tune_then_test.then_some("tune"),
    };
    // Under tune_then_test a second array runs the final stage once the tuning array has ended:
    // one run per method × task × seed, whichever setting each group chooses.
    let final_job = tune_then_test.then(|| {
        let count = groups(&recipe).len() * recipe.seeds.len();
        Job { tasks: tasks_for(count), runs: count, stage: Some("final"), ..job.clone() }
    });
    let bad = |e: String| Failure::BadInput(anyhow!("{e}"));
    let mut scripts = vec![(job.dir().join("array.sbatch"), job.array_script().map_err(bad)?, "job array")];
    if let Some(f) = &final_job {
        scripts.push((
            job.dir().join("final.sbatch"),
            f.array_script().map_err(bad)?,
            "final-stage job array",
        ));
    }
    if recipe.report.enabled {
        scripts.push((job.dir().join("report.sbatch"), job.report_script().map_err(bad)?, "report job"));
    }
    let sbatch_command = ["sbatch", "--parsable"].map(String::from);
    let dependency = |id: &str| format!("--dependency=afterany:{id}");
    let summary = match &final_job {
        Some(f) => format!(
            "{} tuning runs in {} array tasks, then {} final runs in {} array tasks",
            job.runs, job.tasks, f.runs, f.tasks
        ),
        None => format!("{} runs in {} array tasks", job.runs, job.tasks),
    };

    if args.dry_run {
        let path = |p: &Path| quote(&p.display().to_string());
        let mut commands = String::new();
        for (i, (file, text, _)) in scripts.iter().enumerate() {
            println!("==> {} <==\n{text}", file.display());
            let after = match i {
                0 => String::new(),
                _ if i == 1 => format!(" {}", dependency("<array job id>")),
                _ => format!(" {}", dependency("<final array job id>")),
            };
            commands.push_str(&format!("{}{after} {}\n", sbatch_command.join(" "), path(file)));
        }
        println!("==> sbatch commands <==\n{commands}");
        println!(
            "recipe {}: {summary} into {} (dry run: nothing written or submitted)",
            recipe.name,
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
    for (file, text, _) in &scripts {
        std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    println!("recipe {}: {summary} ({finished} finished before) into {}", recipe.name, runs_dir.display());
    // Each job after the first starts when the one before it has ended.
    let mut previous: Option<String> = None;
    for (file, _, what) in &scripts {
        let mut command = sbatch_command.to_vec();
        command.extend(previous.as_deref().map(dependency));
        command.push(file.display().to_string());
        let id = match sbatch(&command) {
            Ok(id) => id,
            Err(e) if previous.is_some() => {
                return Err(Failure::BadInput(anyhow!(
                    "the {what} is not submitted: {}\nThe jobs before it are; when they have ended, submit {} \
                     with `sbatch`, or run `{} report {} --recipe {}` for the report",
                    match e {
                        Failure::BadInput(e) => format!("{e:#}"),
                        Failure::RunsFailed(n) => n.to_string(),
                    },
                    file.display(),
                    quote(&exe.display().to_string()),
                    quote(&runs_dir.display().to_string()),
                    quote(&recipe_path.display().to_string()),
                )));
            }
            Err(e) => return Err(e),
        };
        match previous {
            None => println!("submitted {what} {id}"),
            Some(_) => println!("submitted {what} {id} (starts when the job before it has ended)"),
        }
        previous = Some(id);
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
