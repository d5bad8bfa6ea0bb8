//! What each subcommand does, on top of the libraries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use losa_framework::backbone::load_backbone;
use losa_framework::data::identity::Missing;
use losa_framework::embed as embedding;
use losa_framework::engine::execute;
use losa_framework::engine::progress::Progress;
use losa_framework::engine::protocol::{self, Stage2, Stages};
use losa_framework::error::Plain;
use losa_framework::plan::{GroupKey, RunSpec, plan as expand, shard};
use losa_framework::recipe::{self, BackboneConfig, LoadOptions, PreprocessConfig, Recipe};
use losa_framework::store;
use losa_framework::vit::VitConfig;

use crate::Failure;
use crate::cli::{EmbedArgs, Layers, RunFlags, Stage};
use crate::progress::{Bars, Lines};

pub(crate) fn load(path: &Path, layers: &Layers) -> Result<Recipe, Failure> {
    let options = LoadOptions { sets: layers.sets.clone(), env: std::env::vars().collect() };
    Ok(recipe::load(path, &options)?)
}

/// `runner run`: validate, expand and execute the plan (skipping finished runs), then write the
/// report.
pub fn run(path: &Path, flags: &RunFlags) -> Result<(), Failure> {
    let recipe = load(path, &flags.layers)?;
    if flags.stage.is_some() && recipe.protocol == recipe::Protocol::Fixed {
        return Err(Failure::BadInput(anyhow!(
            "recipe {}: --stage goes with protocol = \"tune_then_test\"; this recipe's protocol is \"fixed\" \
             (one stage)",
            path.display()
        )));
    }
    let plan = expand(&recipe);
    check_collisions(path, &recipe, &plan)?;
    let runs = match flags.shard {
        Some(s) => shard(plan.clone(), s.index, s.count),
        None => plan.clone(),
    };
    let missing: Vec<&Missing> = runs.iter().flat_map(|r| &r.missing).collect();
    if !missing.is_empty() {
        return Err(Failure::BadInput(anyhow!("{}", missing_inputs(path, &missing))));
    }
    // Every checkpoint must fit its backbone before anything starts (a mismatch is bad input).
    for (i, backbone) in recipe.backbones.iter().enumerate().filter(|(_, b)| b.weights.is_some()) {
        load_backbone(backbone, &candle_core::Device::Cpu)
            .with_context(|| format!("recipe {}: backbones[{i}]", path.display()))?;
    }
    let device =
        recipe.device.open().map_err(|e| anyhow!("recipe {}: device: {}", path.display(), Plain(&e)))?;
    let runs_dir = flags.out.clone().unwrap_or_else(|| recipe.runs_dir());
    store::write_recipe(&runs_dir, &recipe)?;
    if !flags.quiet {
        print!("{}", plan_table(&recipe, &runs, &runs_dir));
        print!("{}", final_stage_table(&recipe, &plan, &runs_dir));
    }
    let options = execute::Options { runs_dir: runs_dir.clone(), force: flags.force, device };
    let stages = match flags.stage {
        None => Stages::Both,
        Some(Stage::Tune) => Stages::Tune,
        Some(Stage::Final) => Stages::Final,
    };
    let shard_of = flags.shard.map(|s| (s.index, s.count));
    let mut bars;
    let progress: &mut dyn Progress =
        match flags.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            true => &mut Lines,
            false => {
                bars = Bars::new();
                &mut bars
            }
        };
    let done = protocol::execute_protocol(
        &recipe,
        &plan,
        stages,
        shard_of,
        &options,
        &losa_adapters::build,
        progress,
    );
    let summary = &done.summary;
    // The report covers the whole plan (every shard), not records of older versions of the recipe;
    // under tune_then_test, the final runs decided so far.
    let reported = protocol::reported_runs(&recipe, &plan, &runs_dir);
    let report = match recipe.report.enabled && !flags.no_report {
        true => write_report(&runs_dir, reported, flags.quiet),
        false => Ok(()),
    };
    let mut line = format!(
        "{} run(s): {} trained, {} finished before, {} failed{}; results in {}",
        done.runs,
        summary.finished,
        summary.skipped,
        summary.failed.len(),
        if summary.interrupted { ", interrupted" } else { "" },
        runs_dir.display()
    );
    if done.not_retried > 0 {
        line.push_str(&format!(
            "\n{} failed tuning run(s) not run again: their method × task has its choice (--force runs them)",
            done.not_retried
        ));
    }
    if let Some(stage2) = &done.stage2 {
        line.push_str(&stage2_note(&recipe, stage2));
    }
    match flags.quiet {
        true => tracing::info!("{line}"),
        false => println!("{line}"),
    }
    for f in &summary.failed {
        eprintln!("run {} failed: {}", f.id, f.reason);
    }
    report?;
    let bad_input = summary.failed.iter().filter(|f| f.bad_input).count();
    match (bad_input, summary.failed.len()) {
        (0, 0) => Ok(()),
        (0, n) => Err(Failure::RunsFailed(n)),
        (n, _) => Err(Failure::BadInput(anyhow!("{n} run(s) failed on bad input (see above)"))),
    }
}

/// Bad input when two runs of the plan share an id but are different methods or settings.
pub(crate) fn check_collisions(path: &Path, recipe: &Recipe, runs: &[RunSpec]) -> Result<(), Failure> {
    let Some(&(a, b)) = losa_framework::plan::collisions(runs).first() else { return Ok(()) };
    let describe = |r: &RunSpec| {
        let entry = format!("adapters[{}] ({})", r.adapter, recipe.adapters[r.adapter].display_name());
        match r.sweep.as_ref().filter(|s| !s.setting.is_empty()) {
            Some(s) => format!("{entry} with {}", recipe::sweep::label(&s.setting)),
            None => entry,
        }
    };
    Err(Failure::BadInput(anyhow!(
        "recipe {}: {} and {} train exactly the same run ({}, seed {}): one would take the other's \
         result. Make their settings differ, or remove one.",
        path.display(),
        describe(&runs[a]),
        describe(&runs[b]),
        runs[a].task.name,
        runs[a].seed
    )))
}

/// Under tune_then_test: the groups that have no final runs yet, and why.
fn stage2_note(recipe: &Recipe, stage2: &Stage2) -> String {
    let name = |k: &GroupKey| format!("{} · {}", k.task, recipe.adapters[k.adapter].display_name());
    let list = |keys: &[GroupKey]| {
        let mut names: Vec<String> = keys.iter().take(4).map(name).collect();
        if keys.len() > 4 {
            names.push(format!("{} more", keys.len() - 4));
        }
        names.join(", ")
    };
    let mut out = String::new();
    if !stage2.tuning.is_empty() {
        out.push_str(&format!(
            "\n{} method × task group(s) still tuning ({}): their final runs start on a later `runner run`",
            stage2.tuning.len(),
            list(&stage2.tuning)
        ));
    }
    if !stage2.unchosen.is_empty() {
        out.push_str(&format!(
            "\n{} method × task group(s) have no setting to choose: every setting failed in tuning ({})",
            stage2.unchosen.len(),
            list(&stage2.unchosen)
        ));
    }
    out
}

/// Why `run` cannot start: every missing input (once each), then where such inputs go and the
/// README section that says how to obtain them.
pub(crate) fn missing_inputs(recipe: &Path, missing: &[&Missing]) -> String {
    let lines: BTreeSet<String> =
        missing.iter().map(|m| format!("{} not found: {}", m.what, m.path.display())).collect();
    let lines: Vec<String> = lines.into_iter().collect();
    let mut text = format!(
        "recipe {} needs inputs that are not there:\n  - {}\n(input paths in a recipe are relative to the recipe file)\n\
         Put each input at the path shown, or change the recipe's paths:",
        recipe.display(),
        lines.join("\n  - ")
    );
    let any = |prefix: &str| missing.iter().any(|m| m.what.starts_with(prefix));
    if any("backbone checkpoint") {
        text.push_str(
            "\n  - a checkpoint is one file (timm or HF safetensors, or Google's .npz); VTAB-1k recipes \
             use Google's ImageNet-21k ViT-B_16.npz: see README.md, sections \"Preparing VTAB-1k\" \
             and \"Checkpoints\"",
        );
    }
    if any("VTAB-1k") {
        text.push_str(
            "\n  - VTAB-1k is one folder (the dataset's `root`) of task folders (cifar/, caltech101/, \
             ...), each with train800.txt, val200.txt, train800val200.txt, test.txt and images/: \
             see README.md, section \"Preparing VTAB-1k\"",
        );
    }
    if missing.iter().any(|m| !m.what.starts_with("backbone checkpoint") && !m.what.starts_with("VTAB-1k")) {
        text.push_str("\n  - other datasets: see README.md, section \"Data\"");
    }
    text.push_str(&format!(
        "\nThen `runner check --data {0}` reads every split and image it uses; `runner plan {0}` lists \
         its runs meanwhile.",
        recipe.display()
    ));
    text
}

/// Writes the report of a runs folder after a plan, listing its files.
fn write_report(runs_dir: &Path, plan: Vec<RunSpec>, quiet: bool) -> Result<(), Failure> {
    let options = losa_reports::ReportOptions { plan: Some(plan), ..Default::default() };
    match losa_reports::report_runs(runs_dir, &options) {
        Ok(files) if quiet => {
            tracing::info!("report: {}", files.html.display());
            Ok(())
        }
        Ok(files) => {
            println!("report: {}", files.html.display());
            Ok(())
        }
        // No run has a record yet (e.g. the first run failed before writing one): nothing to show.
        Err(losa_reports::ReportError::Store(losa_framework::store::StoreError::NoRecords(_))) => Ok(()),
        // Under tune_then_test with no final run yet: the report comes with the final runs.
        Err(losa_reports::ReportError::OnlyTuning { .. }) => Ok(()),
        Err(e) => Err(Failure::BadInput(anyhow!("writing the report of {}: {e}", runs_dir.display()))),
    }
}

/// Writes `text` to stdout; a reader that has gone (`runner plan big.toml | head`) is no error.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::BadInput(anyhow!("writing to standard output: {e}")))
        }
        _ => Ok(()),
    }
}

/// `runner check`: validate every recipe, print each resolved; report all invalid ones. With
/// `data`, also check every recipe's data (see `check_data`); its summary lines are TOML comments
/// so the output stays a valid recipe.
pub fn check(paths: &[PathBuf], layers: &Layers, data: bool) -> Result<(), Failure> {
    let mut invalid = Vec::new();
    for path in paths {
        match load(path, layers) {
            Ok(recipe) => {
                let text =
                    toml::to_string(&recipe).with_context(|| format!("printing {}", path.display()))?;
                println!("# {} (resolved)\n{text}", path.display());
                match data.then(|| crate::check_data::check(&recipe)) {
                    Some(Ok(lines)) => lines.iter().for_each(|l| println!("# data ok: {l}")),
                    Some(Err(problems)) => invalid.push(format!("recipe {}: {problems}", path.display())),
                    None => {}
                }
            }
            Err(Failure::BadInput(e)) => invalid.push(format!("{e:#}")),
            Err(other) => return Err(other),
        }
    }
    match invalid.len() {
        0 => Ok(()),
        1 => Err(Failure::BadInput(anyhow!("{}", invalid[0]))),
        n => Err(Failure::BadInput(anyhow!(
            "{n} of {} recipes are invalid:\n{}",
            paths.len(),
            invalid.join("\n")
        ))),
    }
}

/// `runner plan`: the runs a recipe expands to.
pub fn plan(path: &Path, json: bool, layers: &Layers) -> Result<(), Failure> {
    let recipe = load(path, layers)?;
    let runs = expand(&recipe);
    check_collisions(path, &recipe, &runs)?;
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r)?;
                v["trainable_params"] = trainable_params(&recipe, r);
                Ok(v)
            })
            .collect::<serde_json::Result<_>>()?;
        let mut doc = serde_json::json!({
            "recipe": recipe.name,
            "runs_dir": recipe.runs_dir(),
            "protocol": recipe.protocol,
            "runs": rows,
        });
        if recipe.protocol == recipe::Protocol::TuneThenTest {
            doc["final_runs"] =
                serde_json::to_value(protocol::stage2(&recipe, &runs, &recipe.runs_dir()).finals)?;
        }
        emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        let runs_dir = recipe.runs_dir();
        let stage2 = final_stage_table(&recipe, &runs, &runs_dir);
        emit(&format!("{}{stage2}", plan_table(&recipe, &runs, &runs_dir)))?;
    }
    Ok(())
}

/// A run's trainable parameters in closed form: without the head, of the head, and with it
/// (null while the class count is unknown, e.g. for an image folder not read yet).
fn trainable_params(recipe: &Recipe, run: &RunSpec) -> serde_json::Value {
    let Ok(vit) = VitConfig::from_recipe(&recipe.backbones[run.backbone]) else {
        return serde_json::Value::Null;
    };
    let classes = run.task.classes.unwrap_or(0);
    let count = losa_adapters::params::count(&recipe.adapters[run.adapter], &vit, classes);
    let known =
        |n: usize| if run.task.classes.is_some() { serde_json::json!(n) } else { serde_json::Value::Null };
    serde_json::json!({
        "without_head": count.without_head,
        "head": known(count.head),
        "with_head": known(count.with_head()),
    })
}

/// `runner status`: of a recipe's plan (with its `--set` and `--out`), or of the plan saved in a
/// runs folder.
pub fn status(target: &Path, layers: &Layers, out: Option<PathBuf>) -> Result<(), Failure> {
    let target = match target.is_dir() {
        true if !layers.sets.is_empty() || out.is_some() => {
            return Err(Failure::BadInput(anyhow!(
                "--set and --out go with a recipe file; {} is a runs folder (its plan is that of the \
                 recipe saved in it)",
                target.display()
            )));
        }
        true => crate::status::saved(target)?,
        false => {
            let recipe = load(target, layers)?;
            let resubmit = crate::slurm::runner_command("submit", target, &layers.sets, out.as_deref());
            let runs_dir = out.unwrap_or_else(|| recipe.runs_dir());
            crate::status::Target { recipe, runs_dir, resubmit }
        }
    };
    crate::status::show(&target)
}

/// `runner schema`.
pub fn schema() -> Result<(), Failure> {
    emit(&recipe::schema_json())?;
    Ok(())
}

/// `runner report`: rebuild a runs folder's report from its records; with a recipe, of its plan's
/// runs only.
pub fn report(
    runs: &Path,
    out: Option<PathBuf>,
    published: Option<PathBuf>,
    recipe: Option<&Path>,
    layers: &Layers,
) -> Result<(), Failure> {
    let plan = match recipe {
        Some(path) => {
            let recipe = load(path, layers)?;
            Some(protocol::reported_runs(&recipe, &expand(&recipe), runs))
        }
        // Without a recipe every record shows, except under tune_then_test: which final runs
        // count, and with which choice, is for the saved recipe's plan to say.
        None => match store::read_recipe(runs)? {
            Some(saved) if saved.recipe.protocol == recipe::Protocol::TuneThenTest => {
                Some(protocol::reported_runs(&saved.recipe, &expand(&saved.recipe), runs))
            }
            _ => None,
        },
    };
    let options = losa_reports::ReportOptions { out_dir: out, published, plan };
    let files = losa_reports::report_runs(runs, &options)?;
    println!("report written to {}", files.dir.display());
    for file in [&files.html, &files.csv, &files.parquet, &files.markdown] {
        println!("  {}", file.display());
    }
    Ok(())
}

/// The plan as an aligned text table, with missing inputs listed below it.
fn plan_table(recipe: &Recipe, runs: &[RunSpec], runs_dir: &Path) -> String {
    let stage = match recipe.protocol {
        recipe::Protocol::Fixed => "",
        recipe::Protocol::TuneThenTest => " (tuning stage: train800 → val200)",
    };
    let mut out = format!("recipe {}: {} runs{stage} into {}\n", recipe.name, runs.len(), runs_dir.display());
    out.push_str(&runs_table(runs));
    let missing: std::collections::BTreeSet<String> = runs
        .iter()
        .flat_map(|r| &r.missing)
        .map(|m| format!("{} not found: {}", m.what, m.path.display()))
        .collect();
    if !missing.is_empty() {
        out.push_str("\nmissing inputs (ids are computed from their content once they are there):\n");
        for m in missing {
            out.push_str(&format!("  - {m}\n"));
        }
    }
    out
}

/// Under tune_then_test: what the final stage will run, and the final runs decided so far.
fn final_stage_table(recipe: &Recipe, tuning: &[RunSpec], runs_dir: &Path) -> String {
    if recipe.protocol == recipe::Protocol::Fixed {
        return String::new();
    }
    let stage2 = protocol::stage2(recipe, tuning, runs_dir);
    let groups = losa_framework::plan::groups(recipe).len();
    let mut out = format!(
        "\nthen the final stage: each method × task's setting with the best mean val200 accuracy, trained on \
         train800val200 and tested on test with seeds {:?}: {} runs once tuning has ended ({} decided \
         so far)\n",
        recipe.seeds,
        groups * recipe.seeds.len(),
        stage2.finals.len()
    );
    if !stage2.finals.is_empty() {
        out.push_str(&runs_table(&stage2.finals));
    }
    out
}

/// Runs as an aligned text table; with `stage` and `setting` columns when the recipe sweeps.
fn runs_table(runs: &[RunSpec]) -> String {
    let swept = runs.iter().any(|r| r.sweep.is_some());
    let mut header: Vec<String> =
        ["#", "run id", "backbone", "adapter", "dataset", "task", "seed"].map(String::from).to_vec();
    if swept {
        header.extend(["stage", "setting"].map(String::from));
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = vec![
                (i + 1).to_string(),
                r.id.clone().unwrap_or_else(|| "(inputs missing)".into()),
                r.labels.backbone.clone(),
                r.labels.adapter.clone(),
                r.labels.dataset.clone(),
                r.task.name.clone(),
                r.seed.to_string(),
            ];
            if swept {
                let (stage, setting) = match &r.sweep {
                    Some(s) => (serde_json::to_value(s.stage).ok(), recipe::sweep::label(&s.setting)),
                    None => (None, String::new()),
                };
                row.push(stage.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default());
                row.push(setting);
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// `runner embed`: pooled features (and logits) of a backbone for a folder of images.
pub fn embed(args: &EmbedArgs) -> Result<(), Failure> {
    let mut backbone = BackboneConfig::random(&args.variant, 0);
    backbone.random_init = None;
    backbone.weights = Some(args.weights.clone());
    (backbone.width, backbone.depth, backbone.heads, backbone.mlp_dim, backbone.patch_size) =
        (args.width, args.depth, args.heads, args.mlp_dim, args.patch_size);
    backbone.image_size = args.image_size;
    backbone.norm_eps = args.norm_eps;
    let files = embedding::image_files(&args.images)?;
    let device = args.device.open().map_err(|e| anyhow!("{}", Plain(&e)))?;
    let vit = load_backbone(&backbone, &device)?;
    let preprocess = PreprocessConfig { normalize: args.normalize, ..Default::default() };
    let out = embedding::embed(&vit, &files, &preprocess, args.pool, args.batch_size, &device)?;
    let extra = [
        ("weights", args.weights.display().to_string()),
        ("pool", format!("{:?}", args.pool).to_lowercase()),
        ("image_size", args.image_size.to_string()),
        ("normalize", format!("{:?}", args.normalize).to_lowercase()),
    ];
    embedding::save(&args.out, &out, &files, &extra)?;
    let logits = out.logits.as_ref().map(|l| format!(" and logits {:?}", l.dims())).unwrap_or_default();
    println!(
        "{} images: features {:?}{logits} written to {}",
        files.len(),
        out.features.dims(),
        args.out.display()
    );
    Ok(())
}
