//! Loading, layering and validation of recipes.

use std::path::{Path, PathBuf};

use super::*;

const MINIMAL: &str = r#"
name = "t"
[[backbones]]
variant = "Ti/16"
image_size = 64
random_init = 0
[[adapters]]
kind = "losa"
[[datasets]]
kind = "synthetic"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn load_with(text: &str, sets: &[&str], env: &[(&str, &str)]) -> Result<Recipe, RecipeError> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "r.toml", text);
    let options = LoadOptions {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    load(&path, &options)
}

fn problems(text: &str, sets: &[&str]) -> Vec<Problem> {
    match load_with(text, sets, &[]) {
        Err(RecipeError::Invalid { problems, .. }) => problems,
        other => panic!("expected an invalid recipe, got {other:?}"),
    }
}

fn has(problems: &[Problem], key: &str, fragment: &str) -> bool {
    problems.iter().any(|p| p.key == key && p.message.contains(fragment))
}

#[test]
fn a_minimal_recipe_gets_every_default() {
    let r = load_with(MINIMAL, &[], &[]).unwrap();
    assert_eq!(r.seeds, vec![0]);
    assert_eq!(r.train, TrainConfig::default());
    assert_eq!(r.eval, EvalConfig::default());
    assert_eq!(r.device, DeviceSpec::Auto);
    assert_eq!(r.runs_dir(), PathBuf::from("runs/t"));
    let AdapterConfig::Losa(l) = &r.adapters[0] else { panic!("not losa") };
    assert_eq!((l.channel_rank, l.token_rank, l.pool), (8, 8, Pool::Mean));
    assert_eq!(l.mixers, vec![Mixer::Channel, Mixer::Token]);
    assert_eq!(l.side_dtype, SideDtype::Backbone);
    assert_eq!(r.datasets[0], DatasetConfig::Synthetic(SyntheticConfig::default()));
}

#[test]
fn layers_apply_in_order_file_env_set() {
    let text = format!("{MINIMAL}\n[train]\nlr = 0.1\nepochs = 7\nwarmup_epochs = 1\nbatch_size = 16\n");
    let env = [("LOSA__TRAIN__LR", "0.2"), ("LOSA__TRAIN__EPOCHS", "9"), ("OTHER", "x")];
    let r = load_with(&text, &["train.lr=3e-4"], &env).unwrap();
    assert_eq!(r.train.lr, 3e-4, "--set beats the environment");
    assert_eq!(r.train.epochs, 9, "the environment beats the file");
    assert_eq!(r.train.batch_size, 16, "the file beats the defaults");
    assert_eq!(r.train.weight_decay, 1e-4, "defaults fill the rest");
}

#[test]
fn set_values_are_toml_literals_or_bare_words() {
    let r = load_with(
        MINIMAL,
        &[
            "seeds=[0, 1, 2]",
            "device=cuda:1",
            "train.augment.hflip=true",
            "eval.train_split=train800",
            "eval.val_split=\"val200\"",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(r.seeds, vec![0, 1, 2]);
    assert_eq!(r.device, DeviceSpec::Cuda(1));
    assert!(r.train.augment.hflip);
    assert_eq!(r.eval.val_split, Some(Split::Val200));
    let r = load_with(MINIMAL, &["adapters=[{kind = \"lora\", rank = 4}, {kind = \"vpt\"}]"], &[]).unwrap();
    assert_eq!(r.adapters.len(), 2);
    assert!(matches!(&r.adapters[0], AdapterConfig::Lora(l) if l.rank == 4));
    let r = load_with(MINIMAL, &["adapters=[{kind = \"losa\", side_dtype = \"f32\"}]"], &[]).unwrap();
    assert!(matches!(&r.adapters[0], AdapterConfig::Losa(l) if l.side_dtype == SideDtype::F32));
    let ps = match load_with(MINIMAL, &["adapters=[{kind = \"losa\", side_dtype = \"bf16\"}]"], &[]) {
        Err(RecipeError::Invalid { problems, .. }) => problems,
        other => panic!("expected an invalid recipe, got {other:?}"),
    };
    assert!(has(&ps, "adapters[0].side_dtype", "\"backbone\""), "{ps:#?}");
}

#[test]
fn malformed_set_arguments_are_rejected_with_the_argument_named() {
    for (arg, fragment) in [
        ("train.lr", "expected KEY=VALUE"),
        ("=3", "invalid key segment"),
        ("train..lr=1", "invalid key segment"),
        ("seeds=[0,", "not a valid TOML value"),
        ("train.lr=", "empty"),
        ("adapters.0.rank=4", "set the whole list"),
    ] {
        match load_with(MINIMAL, &[arg], &[]) {
            Err(RecipeError::BadSet { arg: a, reason }) => {
                assert_eq!(a, arg);
                assert!(reason.contains(fragment), "{arg}: {reason}");
            }
            other => panic!("{arg}: expected BadSet, got {other:?}"),
        }
    }
}

#[test]
fn malformed_environment_variables_are_rejected_with_the_variable_named() {
    for var in ["LOSA__", "LOSA__TRAIN__", "LOSA__TRAIN____LR"] {
        match load_with(MINIMAL, &[], &[(var, "1")]) {
            Err(RecipeError::BadEnv { var: v, reason }) => {
                assert_eq!(v, var);
                assert!(reason.contains("LOSA__SECTION__KEY"), "{reason}");
            }
            other => panic!("{var}: expected BadEnv, got {other:?}"),
        }
    }
    match load_with(MINIMAL, &[], &[("LOSA__SEEDS", "[1,")]) {
        Err(RecipeError::BadEnv { reason, .. }) => assert!(reason.contains("TOML")),
        other => panic!("expected BadEnv, got {other:?}"),
    }
}

#[test]
fn problems_name_the_layer_that_set_the_value() {
    let ps = problems(MINIMAL, &["train.lr=\"fast\""]);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].source, "--set train.lr");
    assert_eq!(ps[0].key, "train.lr");
    assert!(ps[0].message.contains("expected a number, found \"fast\""), "{}", ps[0].message);

    let Err(RecipeError::Invalid { problems: ps, .. }) =
        load_with(MINIMAL, &[], &[("LOSA__TRAIN__EPOCHS", "many")])
    else {
        panic!("expected invalid")
    };
    assert_eq!(ps[0].source, "LOSA__TRAIN__EPOCHS");

    let ps = problems(MINIMAL, &["adapters=[{rank = 4}]"]);
    assert!(ps.iter().any(|p| p.key == "adapters[0].kind" && p.source == "--set adapters"), "{ps:#?}");
    let ps = problems(MINIMAL, &["train.epochs=5"]);
    assert_eq!(ps[0].key, "train.warmup_epochs");
    assert!(ps[0].source.ends_with("r.toml"), "a default-valued key is the recipe file's to set: {ps:#?}");
}

#[test]
fn input_paths_resolve_against_the_recipe_file_but_command_line_paths_against_the_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("random_init = 0", "weights = \"ckpt/vit.safetensors\"")
        + "[report]\npublished = \"/abs/published.csv\"\n[output]\ndir = \"out/here\"\n";
    let path = write(dir.path(), "sub/r.toml", &text);
    let r = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(r.backbones[0].weights, Some(dir.path().join("sub/ckpt/vit.safetensors")));
    assert_eq!(r.report.published, Some(PathBuf::from("/abs/published.csv")), "absolute paths stay");
    assert_eq!(r.output.dir, Some(PathBuf::from("out/here")), "output paths are relative to the cwd");

    let sets = vec!["datasets=[{kind = \"vtab1k\", root = \"data/vtab\"}]".to_owned()];
    let r = load(&path, &LoadOptions { sets, env: vec![] }).unwrap();
    let DatasetConfig::Vtab1k(v) = &r.datasets[0] else { panic!() };
    assert_eq!(v.root, PathBuf::from("data/vtab"), "a path given with --set stays relative to the cwd");
}

#[test]
fn every_structural_problem_is_reported_at_once_with_suggestions() {
    let text = r#"
name = "t"
seeds = "zero"
[[backbones]]
variant = "B/16"
random_init = 0
[[adapters]]
kind = "lorra"
[[adapters]]
kind = "losa"
chanel_rank = 4
train = { lr = "fast", epoch = 3 }
[[adapters]]
kind = "vpt"
mode = "deeep"
blocks = "al"
[[datasets]]
kind = "vtab1k"
[train]
optimiser = "sgd"
[eval]
select = "best"
"#;
    let ps = problems(text, &[]);
    for (key, fragment) in [
        ("seeds", "expected a list, found \"zero\""),
        ("adapters[0].kind", "did you mean \"lora\"?"),
        ("adapters[1].chanel_rank", "did you mean \"channel_rank\"?"),
        ("adapters[1].train.lr", "expected a number, found \"fast\""),
        ("adapters[1].train.epoch", "did you mean \"epochs\"?"),
        ("adapters[2].mode", "did you mean \"deep\"?"),
        ("adapters[2].blocks", "expected \"all\" or a list"),
        ("datasets[0].root", "missing required key"),
        ("train.optimiser", "did you mean \"optimizer\"?"),
        ("eval.select", "expected one of \"last\", \"best_val\", \"best_test\""),
    ] {
        assert!(has(&ps, key, fragment), "no problem {key} ~ {fragment} in {ps:#?}");
    }
    assert_eq!(ps.len(), 10, "{ps:#?}");
    assert!(ps.iter().all(|p| p.source.ends_with("r.toml")));
}

#[test]
fn missing_required_sections_and_kinds_are_named() {
    let ps = problems("name = \"t\"\n[[adapters]]\nrank = 3\n", &[]);
    assert!(has(&ps, "backbones", "missing required key (a list)"), "{ps:#?}");
    assert!(has(&ps, "datasets", "missing required key"), "{ps:#?}");
    assert!(has(&ps, "adapters[0].kind", "missing required key, one of \"linear_probe\""), "{ps:#?}");
}

#[test]
fn semantic_problems_are_all_reported_with_their_keys() {
    let text = r#"
name = "bad name"
seeds = [1, 1]
[[backbones]]
variant = "B/15"
random_init = 0
[[backbones]]
variant = "S/16"
image_size = 100
[[backbones]]
label = "b"
variant = "Ti/16"
weights = "w.safetensors"
random_init = 1
image_size = 32
[[adapters]]
kind = "lora"
rank = 300
blocks = [0, 12]
targets = ["qkv", "q"]
[[adapters]]
kind = "losa"
token_rank = 6
train = { epochs = 5 }
[[adapters]]
kind = "losa"
[[datasets]]
kind = "vtab1k"
root = "v"
tasks = ["cifar10", "natural"]
[[datasets]]
kind = "synthetic"
tasks = ["shapes"]
preprocess = { normalize = "custom", std = [0.5, 0.0, 0.5] }
[[datasets]]
kind = "image_folder"
root = "a"
test_root = "b"
[eval]
select = "best_val"
val_split = "val200"
"#;
    let ps = problems(text, &[]);
    for (key, fragment) in [
        ("name", "found \"bad name\""),
        ("seeds", "expected distinct seeds"),
        ("backbones[0].variant", "unknown patch size \"15\""),
        ("backbones[1]", "missing `weights` (a checkpoint file) or `random_init`"),
        ("backbones[1].image_size", "multiple of the patch size 16, found 100"),
        ("backbones[2]", "either `weights` or `random_init`, not both"),
        ("adapters[0].rank", "expected a value in 1..=192 (the backbone width of b at 32 px), found 300"),
        ("adapters[0].blocks", "block 12 is out of range: the backbone has 12 blocks"),
        ("adapters[0].targets", "ambiguous"),
        ("adapters[1].token_rank", "expected a value in 1..=5 (the token count of b at 32 px), found 6"),
        ("adapters[1].train.warmup_epochs", "expected at most epochs = 5, found 10"),
        ("adapters[2]", "two adapters are both named \"losa\""),
        ("datasets[0].tasks[0]", "unknown VTAB-1k task \"cifar10\"; did you mean \"cifar100\"?"),
        ("datasets[1].tasks[0]", "unknown synthetic task \"shapes\"; did you mean \"shape\"?"),
        ("datasets[1].preprocess.mean", "required with normalize = \"custom\""),
        ("datasets[1].preprocess.std", "expected positive values"),
        ("datasets[2]", "either `root` or both `train_root` and `test_root`"),
        ("eval.val_split", "shares images with train_split = \"train800val200\""),
    ] {
        assert!(has(&ps, key, fragment), "no problem {key} ~ {fragment} in {ps:#?}");
    }
}

#[test]
fn adapter_train_overrides_merge_over_the_recipe_train() {
    let text = format!("{MINIMAL}\n[train]\nlr = 0.1\nepochs = 20\n[train.augment]\nhflip = true\n");
    let r = load_with(
        &text,
        &["adapters=[{kind = \"losa\", train = {lr = 0.5, augment = {random_resized_crop = true}}}, {kind = \"full\"}]"],
        &[],
    )
    .unwrap();
    let losa = r.train_for(&r.adapters[0]).unwrap();
    assert_eq!((losa.lr, losa.epochs), (0.5, 20));
    assert!(losa.augment.hflip && losa.augment.random_resized_crop, "nested tables merge key by key");
    assert_eq!(r.train_for(&r.adapters[1]).unwrap(), r.train);
}

#[test]
fn eval_rules_keep_selection_off_the_test_set_unless_asked() {
    let ps = problems(MINIMAL, &["eval.select=\"best_val\""]);
    assert!(has(&ps, "eval.select", "needs a `val_split`"), "{ps:#?}");
    let ps = problems(MINIMAL, &["eval.train_split=\"train800val200\"", "eval.test_split=\"val200\""]);
    assert!(has(&ps, "eval.test_split", "shares images"), "{ps:#?}");
    let r = load_with(
        MINIMAL,
        &["eval.train_split=\"train800\"", "eval.val_split=\"val200\"", "eval.select=\"best_val\""],
        &[],
    )
    .unwrap();
    assert_eq!(r.eval.select, Selection::BestVal);
}

#[test]
fn a_missing_or_unparsable_file_is_named() {
    let missing = Path::new("/nonexistent/recipe.toml");
    assert!(matches!(load(missing, &LoadOptions::default()), Err(RecipeError::NotFound(p)) if p == missing));
    match load_with("name = \"t\"\n[train\nlr = 1\n", &[], &[]) {
        Err(e @ RecipeError::Syntax { .. }) => {
            let text = e.to_string();
            assert!(text.contains("r.toml is not valid TOML") && text.contains("line 2"), "{text}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn the_resolved_recipe_reads_back_as_the_same_recipe() {
    let text = format!(
        "{MINIMAL}\n[[adapters]]\nkind = \"lora\"\nlabel = \"lora-qkv\"\ntargets = [\"qkv\"]\ntrain = {{ lr = 0.01 }}\n"
    );
    let r = load_with(&text, &[], &[]).unwrap();
    let resolved = toml::to_string(&r).unwrap();
    assert_eq!(load_with(&resolved, &[], &[]).unwrap(), r);
}

#[test]
fn variants_resolve_to_the_published_sizes() {
    let b = parse_variant("B/16").unwrap();
    assert_eq!((b.width, b.depth, b.heads, b.mlp_dim, b.patch_size), (768, 12, 12, 3072, 16));
    assert_eq!(parse_variant("g/14").unwrap().width, 1408);
    assert_eq!(parse_variant("H/14").unwrap().depth, 32);
    assert!(parse_variant("g/16").is_err());
    assert!(parse_variant("X/16").unwrap_err().contains("unknown ViT size \"X\""));
    let mut custom = BackboneConfig::random("custom", 0);
    assert!(custom.shape().unwrap_err().contains("`width` is required"));
    (custom.width, custom.depth, custom.heads, custom.mlp_dim, custom.patch_size) =
        (Some(8), Some(1), Some(2), Some(16), Some(4));
    assert_eq!(custom.shape().unwrap().mlp_dim, 16);
}

#[test]
fn split_overlaps_follow_the_vtab_definitions() {
    use Split::*;
    assert!(Train800Val200.overlaps(Val200) && Val200.overlaps(Train800Val200));
    assert!(Train800Val200.overlaps(Train800) && Test.overlaps(Test));
    assert!(!Train800.overlaps(Val200) && !Train800Val200.overlaps(Test) && !Val200.overlaps(Test));
}
