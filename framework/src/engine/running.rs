//! The marker of a run in progress: `<run dir>/running.json` says which process has the run
//! (host, process id, Slurm job) since when. A process writes it (atomically) when it takes up a
//! run and removes it when the run ends, however it ends; a process that is killed leaves it
//! behind, so a marker alone does not prove that the run is going: [`Running::alive_here`] checks
//! the process when it is on this host.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::hostname;

/// File name of the marker inside a run folder.
pub const RUNNING_FILE: &str = "running.json";

/// Who has a run, as written in its marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The host name of the machine, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The process id.
    pub pid: u32,
    /// When the process took up the run, in seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// `SLURM_JOB_ID`: the Slurm job (for an array task, the task's own job id), when under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job_id: Option<String>,
    /// `SLURM_ARRAY_JOB_ID`: the job array, when the run is in an array task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_array_job_id: Option<String>,
    /// `SLURM_ARRAY_TASK_ID`: the array task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_array_task_id: Option<String>,
}

impl Running {
    /// This process, now.
    pub fn this_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            host: hostname(),
            pid: std::process::id(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            slurm_job_id: var("SLURM_JOB_ID"),
            slurm_array_job_id: var("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id: var("SLURM_ARRAY_TASK_ID"),
        }
    }

    /// The marker in `run_dir`, if there is a readable one.
    pub fn read(run_dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(run_dir.join(RUNNING_FILE)).ok()?).ok()
    }

    /// Whether the process is alive: `Some` when the marker was written on this host (its
    /// process id is looked up), `None` when on another host (it cannot be told from here).
    pub fn alive_here(&self) -> Option<bool> {
        (self.host.is_some() && self.host == hostname()).then(|| process_alive(self.pid))
    }
}

/// Whether a process with this id exists on this machine.
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The marker of a run this process has taken up; dropping it removes the file.
#[derive(Debug)]
pub(crate) struct Marker {
    path: PathBuf,
    running: Running,
}

impl Marker {
    /// Writes the marker into `run_dir` (best effort: a marker only informs `runner status`).
    pub(crate) fn create(run_dir: &Path) -> Self {
        let path = run_dir.join(RUNNING_FILE);
        let running = Running::this_process();
        if let Ok(text) = serde_json::to_string_pretty(&running) {
            let _ = crate::store::write_atomic(&path, text);
        }
        Self { path, running }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        // Only our own: another process may have taken the run up since (and written its marker).
        if Running::read(self.path.parent().unwrap_or(Path::new("."))).as_ref() == Some(&self.running) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
