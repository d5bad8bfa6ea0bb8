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
pub(crate) fn section<'a>(stdout: &'a str, path: &str) -> &'a str {
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
    // So are missing inputs: nothing is submitted that every task would fail on.
    let missing = write(dir.path(), "m.toml", &TINY.replace("random_init = 0", "weights = \"none.npz\""));
    let run = runner(dir.path(), &["submit", missing.to_str().unwrap(), "--dry-run"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("backbone checkpoint not found") && run.stdout.is_empty(), "{}", run.stderr);
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

/// Starts a one-node cluster (controller and node daemon on this host) with its own MUNGE daemon,
/// configuration, state and ports in a temporary folder, as /work/shared/SLURM.md does system-wide.
/// Slurm's commands find it through `SLURM_CONF`.
const START_CLUSTER: &str = r#"set -eu
T=$LOSA_SLURM_DIR; H=$(hostname)
mkdir -p "$T/munge" "$T/ctld" "$T/d"
chmod 755 "$T" "$T/munge"
dd if=/dev/urandom bs=1 count=1024 of="$T/munge/munge.key" 2>/dev/null
chown -R munge:munge "$T/munge"; chmod 400 "$T/munge/munge.key"
runuser -u munge -- /usr/sbin/munged --socket="$T/munge/munge.socket" --key-file="$T/munge/munge.key" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed"
cat > "$SLURM_CONF" <<CONF
ClusterName=losatest
SlurmctldHost=$H
SlurmctldPort=$LOSA_SLURMCTLD_PORT
SlurmdPort=$LOSA_SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmdSpoolDir=$T/d
StateSaveLocation=$T/ctld
SlurmUser=root
ReturnToService=2
NodeName=$H CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld
/usr/sbin/slurmd
"#;

/// A one-node Slurm cluster for one test; dropping it cancels its jobs and stops its daemons.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the cluster, or says why it cannot (`SKIPPED: <reason>` on stderr) and returns
    /// `None`; with `LOSA_REQUIRE_SLURM=1` a cluster that cannot start fails the test instead.
    fn start() -> Option<Cluster> {
        match Self::try_start() {
            Ok(cluster) => Some(cluster),
            Err(reason) if std::env::var("LOSA_REQUIRE_SLURM").as_deref() == Ok("1") => {
                panic!("LOSA_REQUIRE_SLURM=1, but the one-node Slurm cluster cannot start: {reason}")
            }
            Err(reason) => {
                // Past the test harness's capture (which hides `eprintln!` of a passing test).
                let line = format!("SKIPPED: {reason} (LOSA_REQUIRE_SLURM=1 makes this a failure)\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                None
            }
        }
    }

    fn try_start() -> Result<Cluster, String> {
        let output = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program).args(args).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        match output("id", &["-u"]).as_deref() {
            None => return Err("`id -u` failed: cannot tell whether this runs as root".into()),
            Some("0") => {}
            Some(_) => return Err("the Slurm test starts a one-node cluster's daemons and needs root".into()),
        }
        for daemon in ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"] {
            if !Path::new(daemon).is_file() {
                return Err(format!("{daemon} not found (apt-get install slurm-wlm munge)"));
            }
        }
        let on_path = |name: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        };
        for command in ["sbatch", "squeue", "sinfo", "scancel"] {
            if !on_path(command) {
                return Err(format!("`{command}` not found (apt-get install slurm-wlm)"));
            }
        }
        if output("id", &["-u", "munge"]).is_none() {
            return Err("no `munge` user (apt-get install munge)".into());
        }
        let cluster = Cluster { dir: tempfile::tempdir().map_err(|e| e.to_string())? };
        let port = || std::net::TcpListener::bind("0.0.0.0:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let (ctld, d) = (port().map_err(|e| e.to_string())?, port().map_err(|e| e.to_string())?);
        let started = std::process::Command::new("bash")
            .args(["-c", START_CLUSTER])
            .env("LOSA_SLURM_DIR", cluster.dir.path())
            .env("SLURM_CONF", cluster.conf())
            .env("LOSA_SLURMCTLD_PORT", ctld.to_string())
            .env("LOSA_SLURMD_PORT", d.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !started.status.success() {
            return Err(format!(
                "the Slurm daemons did not start: {}{}",
                String::from_utf8_lossy(&started.stderr).trim(),
                cluster.logs()
            ));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state = cluster.command("sinfo", &["--noheader", "--format=%t"]);
            if state.trim() == "idle" {
                return Ok(cluster);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("the node is not idle after 60 s (sinfo: {state:?}){}", cluster.logs()));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// The environment of a Slurm command of this cluster.
    fn env(&self) -> (&'static str, String) {
        ("SLURM_CONF", self.conf().display().to_string())
    }

    /// Runs a Slurm command of this cluster; its stdout and stderr.
    fn command(&self, program: &str, args: &[&str]) -> String {
        let (k, v) = self.env();
        match std::process::Command::new(program).args(args).env(k, v).output() {
            Ok(out) => {
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => format!("{program}: {e}"),
        }
    }

    /// The ends of the daemons' logs, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for log in ["slurmctld.log", "slurmd.log", "munge/munged.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            out.push_str(&format!("\n--- {log}:\n{}", tail.join("\n")));
        }
        out
    }

    /// Waits until none of `jobs` is in the queue; while waiting, calls `meanwhile`.
    fn wait(&self, jobs: &[&str], timeout_s: u64, mut meanwhile: impl FnMut()) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
        let list = jobs.join(",");
        loop {
            let queued = self.command("squeue", &["--noheader", "--format=%i %T", "--jobs", &list]);
            if queued.trim().is_empty() || queued.contains("Invalid job id") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "jobs {list} still queued after {timeout_s} s:\n{queued}"
            );
            meanwhile();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.command("scancel", &["--user=root"]);
        for pid_file in ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pid_file)) else { continue };
            let pid = pid.trim().to_owned();
            let _ = std::process::Command::new("kill").arg(&pid).status();
            for _ in 0..50 {
                if !Path::new("/proc").join(&pid).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// The job id after `what` in `runner submit`'s output ("submitted job array 12 (...").
fn job_id(stdout: &str, what: &str) -> String {
    let rest =
        &stdout[stdout.find(what).unwrap_or_else(|| panic!("no {what:?} in:\n{stdout}")) + what.len()..];
    rest.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn a_job_array_on_a_one_node_slurm_cluster_trains_every_run_once_then_writes_the_report() {
    let Some(cluster) = Cluster::start() else { return };
    let env = cluster.env();
    let env = [(env.0, env.1.as_str())];
    let dir = tempfile::tempdir().unwrap();
    // LoSA trains 80 epochs (seconds), long enough for `runner status` to see it running.
    let recipe = smoke(dir.path(), "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("token_rank = 4\n", "token_rank = 4\ntrain = { epochs = 80 }\n"))
        .unwrap();
    let recipe = recipe.to_str().unwrap();
    let out = dir.path().join("runs/smoke");

    let submit = runner(dir.path(), &["submit", recipe, "--tasks", "2", "--time", "00:10:00"], &env);
    assert_eq!(submit.code, 0, "{}\n{}", submit.stderr, cluster.logs());
    let (array, report) = (job_id(&submit.stdout, "job array"), job_id(&submit.stdout, "report job"));
    let mut running = String::new();
    cluster.wait(&[&array, &report], 600, || {
        let status = runner(dir.path(), &["status", recipe], &env);
        if let Some(line) = status.stdout.lines().find(|l| l.contains(" running ")) {
            running = line.to_owned();
        }
    });
    assert!(
        running.contains(&format!("(Slurm job {array}_1)")),
        "status never showed a run of the array running: {running:?}"
    );

    let status = runner(dir.path(), &["status", recipe], &env);
    assert!(
        status.stdout.contains("4 finished, 0 failed, 0 running, 0 interrupted, 0 missing\n"),
        "{}",
        status.stdout
    );
    let records = read_records(&out).unwrap();
    assert_eq!(records.len(), 4);
    let starts = |id: &str| {
        let log = std::fs::read_to_string(out.join(id).join("log.txt")).unwrap();
        log.matches(": starting,").count()
    };
    for r in &records {
        assert!(r.finished(), "{}: {:?}", r.run_id, r.status);
        assert_eq!(starts(&r.run_id), 1, "{} did not train exactly once", r.run_id);
        assert!(!out.join(&r.run_id).join(RUNNING_FILE).exists());
    }
    let csv = std::fs::read_to_string(out.join("report/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    for log in [format!("{array}_0.out"), format!("{array}_1.out"), format!("report-{report}.out")] {
        assert!(out.join("slurm").join(&log).is_file(), "no log {log}");
    }
    let task = std::fs::read_to_string(out.join("slurm").join(format!("{array}_0.out"))).unwrap();
    assert!(task.contains("2 run(s): 2 trained, 0 finished before, 0 failed"), "{task}");

    // A run lost (its folder gone): a resubmission trains it alone.
    let lost = &records[0].run_id;
    std::fs::remove_dir_all(out.join(lost)).unwrap();
    let status = runner(dir.path(), &["status", recipe], &env);
    assert!(
        status.stdout.contains("3 finished, 0 failed, 0 running, 0 interrupted, 1 missing\n"),
        "{}",
        status.stdout
    );
    let submit = runner(dir.path(), &["submit", recipe, "--tasks", "2"], &env);
    assert_eq!(submit.code, 0, "{}", submit.stderr);
    let (array, report) = (job_id(&submit.stdout, "job array"), job_id(&submit.stdout, "report job"));
    cluster.wait(&[&array, &report], 600, || {});
    for r in &records {
        assert_eq!(starts(&r.run_id), 1, "{}", r.run_id);
    }
    let logs: String = ["0", "1"]
        .iter()
        .map(|t| std::fs::read_to_string(out.join("slurm").join(format!("{array}_{t}.out"))).unwrap())
        .collect();
    assert_eq!(logs.matches(" 1 trained,").count() + logs.matches(" 0 trained,").count(), 2, "{logs}");
    assert_eq!(logs.matches(" 1 trained,").count(), 1, "{logs}");
    let status = runner(dir.path(), &["status", recipe], &env);
    assert!(
        status.stdout.contains("4 finished, 0 failed, 0 running, 0 interrupted, 0 missing\n"),
        "{}",
        status.stdout
    );
    assert!(out.join(format!("slurm/report-{report}.out")).is_file());
}
