//! Slurm: the recipe's `[slurm]` section, `runner submit` (its scripts, and a real job array on a
//! one-node cluster started here when the machine allows it) and `runner status`.

use std::path::{Path, PathBuf};

use losa_framework::engine::running::{RUNNING_FILE, Running};
use losa_framework::store::read_records;

use crate::support::{TINY, repo, runner, write};

fn plan_ids(dir: &Path, args: &[&str]) -> Vec<String> {
    let run = runner(dir, &[&["plan", "--json"], args].concat(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn the_slurm_section_is_checked_and_never_changes_run_ids() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "plain.toml", TINY);
    let slurm = format!(
        "{TINY}\n[slurm]\npartition = \"gpu\"\naccount = \"lab\"\ngpus_per_task = 1\ncpus_per_task = 8\n\
         mem = \"32G\"\ntime = \"1-12:00:00\"\narray_parallelism = 4\nsbatch = [\"--qos=high\"]\n\
         setup = [\"module load cuda/12.4\"]\n"
    );
    let with = write(dir.path(), "slurm.toml", &slurm);
    let ids = plan_ids(dir.path(), &[plain.to_str().unwrap()]);
    assert_eq!(ids.len(), 8);
    assert_eq!(plan_ids(dir.path(), &[with.to_str().unwrap()]), ids);
    let set = [plain.to_str().unwrap(), "--set", "slurm.time=02:00:00", "--set", "slurm.partition=cpu"];
    assert_eq!(plan_ids(dir.path(), &set), ids);

    let bad = format!(
        "{TINY}\n[slurm]\npartition = \"gpu a100\"\nmem = \"32GB\"\ntime = \"2h\"\ngpus_per_task = 0\n\
         sbatch = [\"qos=high\"]\nsetup = [\"a\\nb\"]\nparition = \"x\"\n"
    );
    let bad = write(dir.path(), "bad.toml", &bad);
    let check = runner(dir.path(), &["check", bad.to_str().unwrap()], &[]);
    assert_eq!(check.code, 2);
    assert!(
        check.stderr.contains("slurm.parition: unknown key; did you mean \"partition\"?"),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains("slurm.gpus_per_task: expected a value of at least 1"), "{}", check.stderr);
    let bad = bad.to_str().unwrap();
    let fixed = std::fs::read_to_string(bad)
        .unwrap()
        .replace("parition = \"x\"\n", "")
        .replace("gpus_per_task = 0\n", "");
    let fixed = write(dir.path(), "fixed.toml", &fixed);
    let check = runner(dir.path(), &["check", fixed.to_str().unwrap()], &[]);
    assert_eq!(check.code, 2);
    for key in ["slurm.partition", "slurm.mem", "slurm.time", "slurm.sbatch[0]", "slurm.setup[0]"] {
        assert!(check.stderr.contains(&format!("{key}: expected")), "{key}:\n{}", check.stderr);
    }
}

/// The smoke recipe's settings (a tiny ViT, 2 tasks × 2 methods × 1 seed), with `extra` appended.
fn smoke(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("recipes/smoke.toml")).unwrap();
    write(dir, "smoke.toml", &format!("{}\n{extra}", text.replace("#:schema ./recipe.schema.json\n", "")))
}

/// The file `path` of a dry run's output (the text after its `==> path <==` line).
fn section<'a>(stdout: &'a str, path: &str) -> &'a str {
    let start = stdout.find(&format!("==> {path} <==\n")).unwrap_or_else(|| panic!("no {path}:\n{stdout}"));
    let text = &stdout[start..];
    let text = &text[text.find('\n').unwrap() + 1..];
    &text[..text.find("\n==> ").unwrap_or(text.len())]
}

#[test]
fn submit_dry_run_prints_the_job_array_and_the_report_job_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let slurm = "[slurm]\npartition = \"cpu\"\ntime = \"02:00:00\"\narray_parallelism = 3\n\
                 sbatch = [\"--qos=high\"]\nsetup = [\"module load cuda/12.4\"]\n";
    let recipe = write(dir.path(), "r.toml", &format!("{TINY}\n{slurm}"));
    let recipe = recipe.to_str().unwrap();
    let out = dir.path().join("runs dir");
    let args = [
        "submit",
        recipe,
        "--dry-run",
        "--set",
        "description=\"it's a test\"",
        "--set",
        "seeds=[0, 1]",
        "--out",
        "runs dir",
        "--tasks",
        "3",
        "--partition",
        "gpu",
        "--gpus-per-task",
        "1",
    ];
    let run = runner(dir.path(), &args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let logs = out.join("slurm");
    let array = section(&run.stdout, &logs.join("array.sbatch").display().to_string());
    let report = section(&run.stdout, &logs.join("report.sbatch").display().to_string());
    let exe = env!("CARGO_BIN_EXE_runner");
    let sets = "--set 'description=\"it'\\''s a test\"' --set 'seeds=[0, 1]'";
    assert!(array.starts_with("#!/bin/bash\n"), "{array}");
    for line in [
        "#SBATCH --job-name=losa-tiny\n".to_owned(),
        "#SBATCH --array=0-2%3\n".into(),
        format!("#SBATCH --output=\"{}/%A_%a.out\"\n", logs.display()),
        "#SBATCH --partition=gpu\n".into(),
        "#SBATCH --gpus-per-task=1\n".into(),
        "#SBATCH --time=02:00:00\n".into(),
        "#SBATCH --qos=high\n".into(),
        format!("cd {}\n", dir.path().display()),
        "module load cuda/12.4\n".into(),
        format!(
            "exec {exe} run {recipe} --shard \"$SLURM_ARRAY_TASK_ID/3\" --out '{}' --no-report {sets}\n",
            out.display()
        ),
    ] {
        assert!(array.contains(&line), "the array script lacks {line:?}:\n{array}");
    }
    for line in [
        "#SBATCH --job-name=losa-tiny-report\n".to_owned(),
        format!("#SBATCH --output=\"{}/report-%j.out\"\n", logs.display()),
        "#SBATCH --partition=gpu\n".into(),
        "module load cuda/12.4\n".into(),
        format!("exec {exe} report '{}' --recipe {recipe} {sets}\n", out.display()),
    ] {
        assert!(report.contains(&line), "the report script lacks {line:?}:\n{report}");
    }
    assert!(!report.contains("--gpus-per-task") && !report.contains("--array"), "{report}");
    let commands = section(&run.stdout, "sbatch commands");
    assert!(
        commands.contains(&format!(
            "sbatch --parsable --dependency=afterany:<array job id> '{}/report.sbatch'",
            logs.display()
        )),
        "{commands}"
    );
    assert!(!out.exists(), "a dry run wrote {}", out.display());

    // One task per run by default, and never more tasks than runs; no report job without a report.
    let run = runner(dir.path(), &["submit", recipe, "--dry-run"], &[]);
    assert!(run.stdout.contains("#SBATCH --array=0-7%3\n"), "{}", run.stdout);
    assert!(run.stdout.contains("--shard \"$SLURM_ARRAY_TASK_ID/8\""), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("--out {}/runs/tiny ", dir.path().display())), "{}", run.stdout);
    let args = ["submit", recipe, "--dry-run", "--tasks", "100", "--set", "report.enabled=false"];
    let run = runner(dir.path(), &args, &[]);
    assert!(run.stdout.contains("#SBATCH --array=0-7%3\n"), "{}", run.stdout);
    assert!(!run.stdout.contains("report.sbatch") && !run.stdout.contains("afterany"), "{}", run.stdout);

    // Bad resources are bad input.
    let run = runner(dir.path(), &["submit", recipe, "--dry-run", "--time", "2h"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--time (or slurm.time): expected a time limit"), "{}", run.stderr);
    let run = runner(dir.path(), &["submit", recipe, "--dry-run", "--tasks", "0"], &[]);
    assert_eq!(run.code, 2);
}

#[test]
fn the_job_scripts_run_the_plan_when_bash_runs_them_as_slurm_would() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = smoke(dir.path(), "");
    let recipe = recipe.to_str().unwrap();
    let args = [
        "submit",
        recipe,
        "--dry-run",
        "--tasks",
        "2",
        "--out",
        "it's here",
        "--set",
        "description=\"it's\"",
    ];
    let run = runner(dir.path(), &args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("it's here");
    let script = |name: &str| {
        let text = section(&run.stdout, &out.join("slurm").join(name).display().to_string()).to_owned();
        write(dir.path(), name, &text)
    };
    let (array, report) = (script("array.sbatch"), script("report.sbatch"));
    for task in ["0", "1"] {
        let status = std::process::Command::new("bash")
            .arg(&array)
            .env("SLURM_ARRAY_TASK_ID", task)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "task {task}");
        assert!(!out.join("report").exists(), "an array task wrote the report");
    }
    let records = read_records(&out).unwrap();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.finished()));
    // A record of another plan in the folder: the report job leaves it out, a plain report not.
    let other = out.join("other-run");
    std::fs::create_dir(&other).unwrap();
    let text = std::fs::read_to_string(out.join(&records[0].run_id).join("record.json")).unwrap();
    std::fs::write(other.join("record.json"), text.replace(&records[0].run_id, "other-run")).unwrap();
    let status = std::process::Command::new("bash").arg(&report).stdout(std::process::Stdio::null()).status();
    assert!(status.unwrap().success());
    let rows = || std::fs::read_to_string(out.join("report/results.csv")).unwrap().lines().count() - 1;
    assert_eq!(rows(), 4);
    assert_eq!(runner(dir.path(), &["report", "it's here"], &[]).code, 0);
    assert_eq!(rows(), 5);
    let saved = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(saved.contains("description = \"it's\""), "{saved}");
}

#[test]
fn status_shows_finished_failed_running_interrupted_and_missing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write(dir.path(), "r.toml", &small_tiny());
    let recipe = recipe.to_str().unwrap();
    let ids = plan_ids(dir.path(), &[recipe]);
    assert_eq!(ids.len(), 8);
    // Shard 0/4 trains runs 0 and 4.
    let run = runner(dir.path(), &["run", recipe, "--shard", "0/4", "--quiet"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let runs_dir = dir.path().join("runs/tiny");
    // Run 4 failed; this process has run 1; run 2 was taken up by a process that has ended.
    let record = runs_dir.join(&ids[4]).join("record.json");
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(
        &record,
        text.replace("\"state\": \"finished\"", "\"state\": \"failed\",\n\"reason\": \"diverged at step 3\""),
    )
    .unwrap();
    let running = Running::this_process();
    let marker = |id: &str, m: &Running| {
        std::fs::create_dir_all(runs_dir.join(id)).unwrap();
        std::fs::write(runs_dir.join(id).join(RUNNING_FILE), serde_json::to_string(m).unwrap()).unwrap();
    };
    marker(&ids[1], &running);
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let gone = Running { pid: ended.id(), ..running.clone() };
    ended.wait().unwrap();
    marker(&ids[2], &gone);

    let status = runner(dir.path(), &["status", recipe], &[]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let out = &status.stdout;
    assert!(out.contains("1 finished, 1 failed, 1 running, 1 interrupted, 4 missing\n"), "{out}");
    let line = |id: &str| out.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id}:\n{out}"));
    assert!(line(&ids[0]).contains(" finished ") && line(&ids[0]).contains("accuracy "), "{out}");
    assert!(line(&ids[4]).contains(" failed ") && line(&ids[4]).ends_with("diverged at step 3"), "{out}");
    let pid = std::process::id();
    assert!(line(&ids[1]).contains(&format!(" running      pid {pid} on ")), "{out}");
    assert!(line(&ids[2]).contains(" interrupted  starts over (pid "), "{out}");
    assert!(line(&ids[3]).trim_end().ends_with("missing"), "{out}");
    assert!(out.contains("6 run(s) to do (failed, interrupted or missing): `runner submit "), "{out}");
    assert!(out.contains("1 run(s) running: resubmit after their jobs end"), "{out}");

    // The runs folder gives the same, from the recipe saved in it.
    let by_folder = runner(dir.path(), &["status", "runs/tiny"], &[]);
    assert_eq!(by_folder.code, 0, "{}", by_folder.stderr);
    assert!(
        by_folder.stdout.contains("1 finished, 1 failed, 1 running, 1 interrupted, 4 missing\n"),
        "{}",
        by_folder.stdout
    );
    let bad = runner(dir.path(), &["status", "runs/tiny", "--set", "train.lr=0.1"], &[]);
    assert_eq!(bad.code, 2);
    let other = runner(dir.path(), &["status", recipe, "--set", "train.lr=0.5"], &[]);
    assert!(
        other.stdout.contains("0 finished, 0 failed, 0 running, 0 interrupted, 8 missing\n"),
        "{}",
        other.stdout
    );
    assert!(other.stdout.contains("2 other run(s) in the folder are not in this plan"), "{}", other.stdout);
    assert!(
        other.stdout.contains("`runner submit ") && other.stdout.contains(" --set train.lr=0.5`"),
        "{}",
        other.stdout
    );

    // Rerunning the plan runs only what is to do; the marker of the live process stays.
    std::fs::remove_file(runs_dir.join(&ids[1]).join(RUNNING_FILE)).unwrap();
    let run = runner(dir.path(), &["run", recipe], &[]);
    assert!(run.stdout.contains("8 run(s): 7 trained, 1 finished before, 0 failed"), "{}", run.stdout);
    let status = runner(dir.path(), &["status", recipe], &[]);
    assert!(
        status.stdout.contains("8 finished, 0 failed, 0 running, 0 interrupted, 0 missing\n"),
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains("to do"), "{}", status.stdout);
}

/// TINY, small enough to train 8 runs in seconds.
fn small_tiny() -> String {
    TINY.replace("epochs = 3", "epochs = 1\nbatch_size = 8").replace(
        "tasks = [\"shape\", \"count\"]",
        "tasks = [\"shape\", \"count\"]\ntrain_size = 16\nval_size = 8\ntest_size = 16",
    )
}
