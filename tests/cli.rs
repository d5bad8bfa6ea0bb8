//! The command line: subcommands, layering, exit codes and messages.

use crate::support::{TINY, repo, runner, write};

#[test]
fn bare_runner_prints_help_and_every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let run = runner(dir.path(), &[], &[]);
    assert_eq!(run.code, 0);
    for word in ["Usage:", "run", "check", "plan", "schema", "submit", "status", "report"] {
        assert!(run.stdout.contains(word), "help lacks {word}:\n{}", run.stdout);
    }
    for sub in ["run", "check", "plan", "schema", "submit", "status", "report"] {
        let run = runner(dir.path(), &[sub, "--help"], &[]);
        assert_eq!(run.code, 0, "{sub} --help");
        assert!(run.stdout.contains("Usage:"));
    }
    let run = runner(dir.path(), &["run", "--help"], &[]);
    for flag in ["--set", "--force", "--shard", "--out", "--quiet", "--no-report"] {
        assert!(run.stdout.contains(flag), "run --help lacks {flag}");
    }
    let run = runner(dir.path(), &["submit", "--help"], &[]);
    for flag in [
        "--set",
        "--out",
        "--tasks",
        "--partition",
        "--account",
        "--gpus-per-task",
        "--cpus-per-task",
        "--mem",
        "--time",
        "--array-parallelism",
        "--dry-run",
    ] {
        assert!(run.stdout.contains(flag), "submit --help lacks {flag}");
    }
}

#[test]
fn run_trains_the_plan_with_or_without_the_subcommand_and_skips_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let small = TINY.replace("epochs = 3", "epochs = 1\nbatch_size = 8").replace(
        "tasks = [\"shape\", \"count\"]",
        "tasks = [\"shape\", \"count\"]\ntrain_size = 16\nval_size = 8\ntest_size = 16",
    );
    let recipe = write(dir.path(), "r.toml", &small);
    let recipe = recipe.to_str().unwrap();
    let bare = runner(dir.path(), &[recipe], &[]);
    assert_eq!(bare.code, 0, "{}", bare.stderr);
    assert!(bare.stdout.contains("recipe tiny: 8 runs into runs/tiny"), "{}", bare.stdout);
    assert!(bare.stdout.contains("shape-losa-s1-"));
    assert!(bare.stdout.contains("8 run(s): 8 trained, 0 finished before, 0 failed"), "{}", bare.stdout);
    let sub = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(sub.code, 0, "{}", sub.stderr);
    assert!(sub.stdout.contains("8 run(s): 0 trained, 8 finished before, 0 failed"), "{}", sub.stdout);

    let out = runner(dir.path(), &[recipe, "--out", "elsewhere", "--shard", "1/3", "--force"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("3 runs into elsewhere"), "{}", out.stdout);
    assert!(runner(dir.path(), &[recipe, "--quiet"], &[]).stdout.is_empty());
}

#[test]
fn a_bad_shard_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write(dir.path(), "r.toml", TINY);
    for shard in ["3/3", "1", "a/b"] {
        let run = runner(dir.path(), &["run", recipe.to_str().unwrap(), "--shard", shard], &[]);
        assert_eq!(run.code, 2, "--shard {shard}");
        assert!(run.stderr.contains("--shard"), "{}", run.stderr);
    }
}

#[test]
fn check_prints_the_resolved_recipe_which_is_itself_a_valid_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write(dir.path(), "r.toml", TINY);
    let run = runner(
        dir.path(),
        &["check", recipe.to_str().unwrap(), "--set", "train.lr=3e-4"],
        &[("LOSA__TRAIN__EPOCHS", "4")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("lr = 0.0003") && run.stdout.contains("epochs = 4"), "{}", run.stdout);
    assert!(run.stdout.contains("channel_rank = 8"), "defaults are spelled out");
    let resolved = write(dir.path(), "resolved.toml", &run.stdout);
    let plan =
        |path: &std::path::Path| runner(dir.path(), &["plan", "--json", path.to_str().unwrap()], &[]).stdout;
    let ids = |json: String| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
    };
    let direct = runner(
        dir.path(),
        &["plan", "--json", recipe.to_str().unwrap(), "--set", "train.lr=3e-4"],
        &[("LOSA__TRAIN__EPOCHS", "4")],
    );
    assert_eq!(ids(plan(&resolved)), ids(direct.stdout));
}

#[test]
fn check_reports_every_invalid_recipe_and_every_problem_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", TINY);
    let bad = write(
        dir.path(),
        "bad.toml",
        &TINY
            .replace("kind = \"losa\"", "kind = \"losa\"\nchanel_rank = 2")
            .replace("epochs = 3", "epochs = \"three\""),
    );
    let worse =
        write(dir.path(), "worse.toml", &TINY.replace("kind = \"linear_probe\"", "kind = \"linear-probe\""));
    let run = runner(
        dir.path(),
        &["check", good.to_str().unwrap(), bad.to_str().unwrap(), worse.to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("2 of 3 recipes are invalid"), "{}", run.stderr);
    for line in [
        "bad.toml has 2 problems",
        "bad.toml: adapters[1].chanel_rank: unknown key; did you mean \"channel_rank\"?",
        "bad.toml: train.epochs: expected a non-negative integer, found \"three\"",
        "worse.toml: adapters[0].kind: unknown kind \"linear-probe\"",
        "did you mean \"linear_probe\"?",
    ] {
        assert!(run.stderr.contains(line), "missing {line:?} in:\n{}", run.stderr);
    }
}

/// Arguments, environment, and a fragment the error message must contain.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_input_exits_2_with_a_message_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write(dir.path(), "r.toml", TINY);
    let recipe = recipe.to_str().unwrap();
    let cases: Vec<Case> = vec![
        (vec!["run", "nowhere.toml"], vec![], "recipe file nowhere.toml not found"),
        (vec!["plan", recipe, "--set", "train.lr"], vec![], "--set \"train.lr\": expected KEY=VALUE"),
        (vec!["plan", recipe, "--set", "seeds=[1,"], vec![], "not a valid TOML value"),
        (
            vec!["plan", recipe, "--set", "train.lr=fast"],
            vec![],
            "--set train.lr: train.lr: expected a number, found \"fast\"",
        ),
        (vec!["plan", recipe], vec![("LOSA__TRAIN__", "1")], "environment variable LOSA__TRAIN__"),
        (vec!["plan", recipe], vec![("LOSA__DEVICE", "gpu")], "LOSA__DEVICE: device: expected \"auto\""),
        (
            vec![
                "check",
                recipe,
                "--set",
                "backbones=[{variant = \"B/16\", image_size = 100, random_init = 0}]",
            ],
            vec![],
            "image_size: expected a positive multiple of the patch size 16, found 100",
        ),
        // The engine's output settings.
        (
            vec!["check", recipe, "--set", "output.cache_dtype=\"f8\""],
            vec![],
            "--set output.cache_dtype: output.cache_dtype: expected one of \"auto\"",
        ),
        (
            vec!["check", recipe, "--set", "output.checkpoint_every=-1"],
            vec![],
            "output.checkpoint_every: expected a value of at least 0, found -1",
        ),
        (
            vec!["run", recipe, "--set", "output.feature_cache=3"],
            vec![],
            "output.feature_cache: expected true or false, found 3",
        ),
    ];
    for (args, env, fragment) in cases {
        let run = runner(dir.path(), &args, &env);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(fragment), "{args:?}: expected {fragment:?} in:\n{}", run.stderr);
    }
    let broken = write(dir.path(), "broken.toml", "name = \"x\"\n[train\n");
    let run = runner(dir.path(), &["check", broken.to_str().unwrap()], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("broken.toml is not valid TOML") && run.stderr.contains("line 2"),
        "{}",
        run.stderr
    );
}

#[test]
fn run_stops_at_once_when_inputs_are_missing_but_plan_still_lists_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY.replace("random_init = 0", "weights = \"weights/vit.npz\"");
    let recipe = write(dir.path(), "sub/r.toml", &text);
    let recipe = recipe.to_str().unwrap();
    let run = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("backbone checkpoint not found:") && run.stderr.contains("sub/weights/vit.npz"),
        "{}",
        run.stderr
    );
    let plan = runner(dir.path(), &["plan", recipe], &[]);
    assert_eq!(plan.code, 0);
    assert!(
        plan.stdout.contains("(inputs missing)") && plan.stdout.contains("sub/weights/vit.npz"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_vtab_recipe_without_its_data_and_weights_stops_at_once_and_says_where_they_go() {
    // vtab_all.toml copied away from the repository: its ../weights and ../data are surely absent.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("recipes/vtab_all.toml")).unwrap();
    let recipe = write(dir.path(), "recipes/vtab_all.toml", &text);
    let recipe = recipe.to_str().unwrap();
    let run = runner(dir.path(), &["run", recipe], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for fragment in [
        "needs inputs that are not there",
        "backbone checkpoint not found:",
        "recipes/../weights/ViT-B_16.npz",
        "VTAB-1k root folder not found:",
        "recipes/../data/vtab-1k",
        "relative to the recipe file",
        "train800.txt, val200.txt, train800val200.txt, test.txt and images/",
        "see README.md, section \"Preparing VTAB-1k\"",
        "Google's ImageNet-21k ViT-B_16.npz",
        "runner check --data",
    ] {
        assert!(run.stderr.contains(fragment), "expected {fragment:?} in:\n{}", run.stderr);
    }
    // The sections the message points to exist.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for section in ["Preparing VTAB-1k", "Checkpoints"] {
        assert!(run.stderr.contains(&format!("\"{section}\"")));
        assert!(readme.contains(&format!("\n## {section}\n")), "README.md has no section {section:?}");
    }
    assert!(!dir.path().join("runs").exists(), "nothing is written before the inputs are there");

    let plan = runner(dir.path(), &["plan", "--json", recipe], &[]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert!(!runs.is_empty() && runs.iter().all(|r| r["id"].is_null()));
    let plan = runner(dir.path(), &["plan", recipe], &[]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains("VTAB-1k root folder not found"), "{}", plan.stdout);
}

#[test]
fn plan_json_lists_every_run_with_its_id_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write(dir.path(), "r.toml", TINY);
    let run = runner(dir.path(), &["plan", recipe.to_str().unwrap(), "--json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["recipe"], "tiny");
    assert_eq!(v["runs_dir"], "runs/tiny");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    assert_eq!(runs[0]["task"]["name"], "shape");
    assert_eq!(runs[0]["labels"]["adapter"], "linear_probe");
    assert_eq!(runs[3]["config"]["adapter"], serde_json::json!({"kind": "losa", "token_rank": 4}));
    // ViT-Ti/16 at 32 px: d = 192, 5 tokens; the shape task has 5 classes.
    assert_eq!(
        runs[0]["trainable_params"],
        serde_json::json!({"without_head": 0, "head": 965, "with_head": 965})
    );
    let losa = 12 * ((2 * 192 + 2 * 192 * 8 + 8 + 192) + (2 * 192 + 2 * 5 * 4 + 4));
    assert_eq!(runs[3]["trainable_params"]["without_head"], losa);
}

#[test]
fn the_schema_command_prints_the_committed_schema() {
    let run = runner(&repo(), &["schema"], &[]);
    assert_eq!(run.code, 0);
    let committed = std::fs::read_to_string(repo().join("recipes/recipe.schema.json")).unwrap();
    assert!(
        run.stdout == committed,
        "recipes/recipe.schema.json is stale: run `cargo run -q -- schema > recipes/recipe.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["properties"]["train"]["description"].as_str().is_some());
}
