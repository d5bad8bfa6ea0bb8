//! Running the binary and writing recipe files for the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The result of one `runner` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `runner` with `args` in `cwd`, with no `LOSA__` variables but those given.
pub fn runner(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args).current_dir(cwd);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOSA")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let Output { status, stdout, stderr } = cmd.output().expect("runner starts");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "runner panicked:\n{}", run.stderr);
    run
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// The repository root (where `recipes/` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small valid recipe: a tiny random ViT, two methods, two synthetic tasks, two seeds.
pub const TINY: &str = r#"#:schema ./recipe.schema.json
name = "tiny"
seeds = [0, 1]
[[backbones]]
variant = "Ti/16"
image_size = 32
random_init = 0
[[adapters]]
kind = "linear_probe"
[[adapters]]
kind = "losa"
token_rank = 4
[[datasets]]
kind = "synthetic"
tasks = ["shape", "count"]
[train]
epochs = 3
warmup_epochs = 1
"#;
