//! Slurm: the recipe's `[slurm]` section, `runner submit` (its scripts, and a real job array on a
//! one-node cluster started here when the machine allows it) and `runner status`.

use crate::support::{TINY, runner, write};

fn plan_ids(dir: &std::path::Path, args: &[&str]) -> Vec<String> {
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
