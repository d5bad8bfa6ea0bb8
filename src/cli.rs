//! The command line: `runner <recipe>` and its subcommands.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use losa_framework::recipe::{DeviceSpec, Normalize, Pool};

/// Compare ways of adapting pretrained vision transformers (LoSA, LoRA, VPT, full finetuning,
/// linear probing, ...) on accuracy, trainable parameters, training time and memory.
#[derive(Debug, Parser)]
#[command(name = "runner", version, args_conflicts_with_subcommands = true, args_override_self = true)]
#[command(
    after_help = "Examples:\n  runner recipes/quickstart.toml\n  runner plan recipes/vtab_all.toml --set 'seeds=[0,1,2]'\n  runner check recipes/*.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Recipe to run (the same as `runner run <recipe>`).
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train and evaluate every run of a recipe that has not finished yet, then write the report.
    Run {
        /// The recipe file.
        recipe: PathBuf,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Validate recipes and print each one resolved (all layers and defaults applied) as TOML.
    Check {
        /// Recipe files.
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        layers: Layers,
        /// Also open every dataset task, read the splits the recipe uses and decode every image;
        /// report every problem found (exit code 2 if any).
        #[arg(long)]
        data: bool,
    },
    /// List the runs a recipe expands to (backbones × adapters × dataset tasks × seeds) with their ids.
    Plan {
        /// The recipe file.
        recipe: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        layers: Layers,
    },
    /// Print the recipe JSON Schema (draft-07), for editor completion and validation.
    Schema,
    /// Run the plan on a Slurm cluster: a job array whose task i runs `runner run --shard i/N`
    /// into one runs folder, and a job that writes the report when the array has ended.
    Submit(SubmitArgs),
    /// Show which runs of a plan have finished or failed, are running, were interrupted or have
    /// not started (what a resubmission would run).
    Status {
        /// A recipe file (with the --set and --out it was run or submitted with), or a runs
        /// folder (the plan of the recipe saved in it by the last `runner run` or `runner submit`).
        target: PathBuf,
        #[command(flatten)]
        layers: Layers,
        /// The runs folder of the recipe (default: its output.dir, else runs/<recipe name>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Rebuild the report of a runs folder from its run records (nothing is trained): report.html,
    /// results.csv, results.parquet and summary.md.
    Report {
        /// The runs folder of a recipe, e.g. runs/my-comparison.
        runs: PathBuf,
        /// Output folder (default: <runs folder>/report).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Published results (CSV) to show beside the runs; default: the saved recipe's
        /// report.published, if any.
        #[arg(long, value_name = "FILE")]
        published: Option<PathBuf>,
        /// Report only the runs of this recipe's plan, as `runner run` does after a plan (records
        /// that other versions of the recipe left in the folder stay out); default: every record.
        #[arg(long, value_name = "FILE")]
        recipe: Option<PathBuf>,
        /// Override a key of --recipe, as in `runner run` (the plan's run ids depend on them).
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "recipe")]
        sets: Vec<String>,
    },
    /// Run a backbone over every image in a folder; save pooled features (and logits) as safetensors.
    Embed(EmbedArgs),
}

/// Arguments of `runner embed`.
#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    /// Checkpoint: timm or HF transformers .safetensors, or Google's .npz (detected from the content).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Architecture: Ti, S, B, L, H with patch 8/14/16/32 (e.g. B/16), g/14, or custom.
    #[arg(long, default_value = "B/16")]
    pub variant: String,
    /// Token width (overrides the variant's; required with --variant custom, as are the next four).
    #[arg(long)]
    pub width: Option<usize>,
    /// Number of blocks.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// MLP hidden width.
    #[arg(long)]
    pub mlp_dim: Option<usize>,
    /// Patch size in pixels.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Input size in pixels; images are resized to it (bicubic), the position embedding resampled.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// LayerNorm epsilon of the checkpoint (1e-6 for Google's and timm's ViTs, 1e-12 for HF's).
    #[arg(long, default_value_t = 1e-6)]
    pub norm_eps: f64,
    /// Pooling of the features: token (class token) or mean (patch tokens).
    #[arg(long, default_value = "token", value_parser = parse_name::<Pool>)]
    pub pool: Pool,
    /// Input normalisation: inception (0.5/0.5), imagenet or none.
    #[arg(long, default_value = "inception", value_parser = parse_name::<Normalize>)]
    pub normalize: Normalize,
    /// Folder of images (.jpg, .jpeg, .png), read in file-name order.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Output .safetensors file: `features` [N, width], `logits` [N, classes] when the checkpoint
    /// has a head, and the file names under the metadata key `files`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

/// Arguments of `runner submit`. Resources not given here come from the recipe's `[slurm]`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    #[command(flatten)]
    pub layers: Layers,
    /// The runs folder of this recipe (default: the recipe's output.dir, else runs/<recipe name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Array tasks, each running one shard of the plan; default (and at most): one per run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tasks: Option<u32>,
    /// Slurm partition (slurm.partition).
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Slurm account (slurm.account).
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// GPUs of each array task (slurm.gpus_per_task).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus_per_task: Option<u32>,
    /// CPU cores of each array task (slurm.cpus_per_task).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus_per_task: Option<u32>,
    /// Memory of each array task, e.g. 32G (slurm.mem).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Time limit of each array task, e.g. 12:00:00 or 2-00:00:00 (slurm.time).
    #[arg(long, value_name = "HH:MM:SS")]
    pub time: Option<String>,
    /// At most K array tasks at once (slurm.array_parallelism).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub array_parallelism: Option<u32>,
    /// Print the job scripts and the sbatch commands; write and submit nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parses a value by its recipe name (the serde name of an enum variant).
fn parse_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

/// Settings layered over a recipe file.
#[derive(Debug, Clone, Default, Args)]
pub struct Layers {
    /// Override a recipe key; VALUE is a TOML literal: --set train.lr=3e-4 --set 'seeds=[0,1,2]'.
    /// Applied after the file and LOSA__SECTION__KEY environment variables.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Flags of `runner run`.
#[derive(Debug, Clone, Default, Args)]
pub struct RunFlags {
    #[command(flatten)]
    pub layers: Layers,
    /// Redo runs that have finished already.
    #[arg(long)]
    pub force: bool,
    /// Run only shard I of N (0-based), e.g. --shard 0/4; shards are disjoint and together cover the plan.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// The runs folder of this recipe (default: the recipe's output.dir, else runs/<recipe name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bars: log lines only.
    #[arg(long)]
    pub quiet: bool,
    /// Do not write the report at the end (the tasks of a `runner submit` job array leave it to
    /// the report job that runs after them).
    #[arg(long)]
    pub no_report: bool,
    /// Under protocol = "tune_then_test": only the tuning runs (`tune`), or only the final runs of
    /// the method × task groups whose tuning has ended (`final`). Default: both, one after the other.
    #[arg(long, value_enum)]
    pub stage: Option<Stage>,
}

/// A stage of `protocol = "tune_then_test"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Every swept setting on train800 → val200.
    Tune,
    /// The chosen settings on train800val200 → test.
    Final,
}

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed =
            s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            Some((index, count)) => Err(format!("shard index {index} is not below the shard count {count}")),
            None => Err(format!("expected I/N with 0 ≤ I < N, e.g. 0/4, found {s:?}")),
        }
    }
}
