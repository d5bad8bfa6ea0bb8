//! How `runner submit` asks a Slurm cluster for resources. Nothing here enters a run's id: the
//! same recipe on a laptop or on a cluster has the same runs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Resources of the Slurm jobs `runner submit` writes: a job array whose tasks run shards of the
/// plan, and a job that writes the report when the array has ended. `runner submit`'s flags
/// override these. They change where and how fast runs train, never their ids or results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// Partition (queue) of both jobs (sbatch `--partition`). Default: the cluster's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Account the jobs are charged to (sbatch `--account`). Default: the user's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// GPUs of each array task (sbatch `--gpus-per-task`); a task trains its runs one after the
    /// other on one device, so a GPU recipe wants 1. Default: none requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub gpus_per_task: Option<u32>,
    /// CPU cores of each array task (sbatch `--cpus-per-task`); data loading and CPU training use
    /// them all. Default: the partition's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cpus_per_task: Option<u32>,
    /// Memory of each array task, as sbatch writes it: "32G", "500M" (sbatch `--mem`).
    /// Default: the partition's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Time limit of each array task: "HH:MM:SS", "D-HH:MM:SS", "MM" (sbatch `--time`). A task
    /// stopped at its limit leaves its run to resume. Default: the partition's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// At most this many array tasks run at once (`--array=0-N%K`). Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub array_parallelism: Option<u32>,
    /// More sbatch options for both jobs, one option per item, each written as an `#SBATCH`
    /// line: e.g. ["--qos=high", "--constraint=a100"]. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sbatch: Vec<String>,
    /// Shell lines both jobs run before the runner, e.g. ["module load cuda/12.4"]. Default:
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
}

impl SlurmConfig {
    /// What is wrong with these settings: (key, message) pairs, keys relative to `[slurm]`
    /// (`sbatch.0` for the first item of `sbatch`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |key: &str, message: String| out.push((key.to_owned(), message));
        for (key, value) in [("partition", &self.partition), ("account", &self.account)] {
            if let Some(v) = value.as_deref().filter(|v| !is_word(v)) {
                push(key, format!("expected a name without spaces or quotes, found {v:?}"));
            }
        }
        if let Some(mem) = self.mem.as_deref().filter(|m| !is_mem(m)) {
            push("mem", format!("expected a size such as \"32G\" or \"500M\", found {mem:?}"));
        }
        if let Some(time) = self.time.as_deref().filter(|t| !is_time(t)) {
            push(
                "time",
                format!(
                    "expected a time limit such as \"HH:MM:SS\", \"D-HH:MM:SS\" or minutes, found {time:?}"
                ),
            );
        }
        for (i, line) in self.sbatch.iter().enumerate() {
            if !line.starts_with('-') || line.contains(['\n', '\r']) {
                push(
                    &format!("sbatch.{i}"),
                    format!("expected one sbatch option on one line, e.g. \"--qos=high\", found {line:?}"),
                );
            }
        }
        for (i, line) in self.setup.iter().enumerate() {
            if line.contains(['\n', '\r']) {
                push(&format!("setup.{i}"), format!("expected one line per item, found {line:?}"));
            }
        }
        out
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'\\".contains(c))
}

/// Digits with an optional unit: "32G", "500M", "4096".
fn is_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && s.len() - digits.len() <= 1 && digits.chars().all(|c| c.is_ascii_digit())
}

/// Slurm's time formats: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S", or "UNLIMITED".
fn is_time(s: &str) -> bool {
    if s.eq_ignore_ascii_case("unlimited") || s.eq_ignore_ascii_case("infinite") {
        return true;
    }
    let digits = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(digits) && (1..=3).contains(&parts.len()) && parts.iter().all(|p| digits(p))
}
