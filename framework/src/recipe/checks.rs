//! Semantic checks of a recipe that the schema cannot express: value ranges, combinations of
//! fields, and settings that must fit the backbone (ranks, block indices, image size).

use std::collections::BTreeSet;

use super::validate::{Found, key_path};
use super::*;
use crate::data::{synthetic, vtab};

/// Collects every semantic problem of a deserialised recipe.
pub(crate) fn check(recipe: &Recipe) -> Vec<Found> {
    let mut c = Checker::default();
    let ok_name =
        |s: &str| !s.is_empty() && s.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
    c.expect(&["name"], ok_name(&recipe.name), || {
        format!(
            "expected letters, digits, '.', '_' or '-' (it names the runs folder), found \"{}\"",
            recipe.name
        )
    });
    c.expect(&["seeds"], !recipe.seeds.is_empty(), || "expected at least one seed".into());
    c.expect(&["seeds"], unique(&recipe.seeds), || {
        format!("expected distinct seeds, found {:?}", recipe.seeds)
    });
    for (list, len) in [
        ("backbones", recipe.backbones.len()),
        ("adapters", recipe.adapters.len()),
        ("datasets", recipe.datasets.len()),
    ] {
        c.expect(&[list], len > 0, || "expected at least one entry".into());
    }
    let names: Vec<String> = recipe.backbones.iter().map(BackboneConfig::display_name).collect();
    c.unique_names("backbones", &names);
    let names: Vec<String> = recipe.adapters.iter().map(AdapterConfig::display_name).collect();
    c.unique_names("adapters", &names);

    let shapes: Vec<(usize, VitShape, String)> = recipe
        .backbones
        .iter()
        .enumerate()
        .filter_map(|(i, b)| c.backbone(i, b).map(|s| (b.image_size, s, b.display_name())))
        .collect();
    let global = train_problems(&recipe.train);
    c.nest(&["train".into()], global.clone());
    for (i, adapter) in recipe.adapters.iter().enumerate() {
        let at = vec!["adapters".to_owned(), i.to_string()];
        let train_at = [at.clone(), vec!["train".into()]].concat();
        // An adapter's own settings are checked as merged; what is wrong with `[train]` itself
        // is reported there once, not again for every adapter.
        match recipe.train_for(adapter) {
            Ok(train) => c.nest(
                &train_at,
                train_problems(&train).into_iter().filter(|p| !global.contains(p)).collect(),
            ),
            Err(e) => c.push(&train_at, e.to_string()),
        }
        for (image_size, shape, name) in &shapes {
            check_adapter(&mut c, &at, adapter, shape, *image_size, name);
        }
    }
    for (i, dataset) in recipe.datasets.iter().enumerate() {
        check_dataset(&mut c, &["datasets".into(), i.to_string()], dataset);
    }
    check_eval(&mut c, &recipe.eval);
    check_protocol(&mut c, recipe);
    check_sweeps(&mut c, recipe);
    for (key, message) in recipe.slurm.problems() {
        c.at(&["slurm".into()], &key, false, || message);
    }
    c.found
}

#[derive(Default)]
struct Checker {
    found: Vec<Found>,
}

impl Checker {
    fn push(&mut self, path: &[String], message: String) {
        self.found.push((path.to_vec(), message));
    }

    fn nest(&mut self, base: &[String], found: Vec<Found>) {
        for (path, message) in found {
            self.push(&[base, &path].concat(), message);
        }
    }

    fn expect(&mut self, path: &[&str], ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.push(&path.iter().map(|s| s.to_string()).collect::<Vec<_>>(), message());
        }
    }

    fn at(&mut self, base: &[String], key: &str, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            let mut path = base.to_vec();
            path.extend(key.split('.').filter(|k| !k.is_empty()).map(str::to_owned));
            self.push(&path, message());
        }
    }

    fn unique_names(&mut self, list: &str, names: &[String]) {
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                self.push(
                    &[list.into(), i.to_string()],
                    format!("two {list} are both named \"{name}\"; give each a distinct `label`"),
                );
            }
        }
    }

    fn fraction(&mut self, base: &[String], key: &str, v: f64) {
        self.at(base, key, (0.0..1.0).contains(&v), || format!("expected a value in [0, 1), found {v}"));
    }

    fn positive(&mut self, base: &[String], key: &str, v: f64) {
        self.at(base, key, v.is_finite() && v > 0.0, || format!("expected a positive number, found {v}"));
    }

    fn backbone(&mut self, i: usize, b: &BackboneConfig) -> Option<VitShape> {
        let at = vec!["backbones".to_owned(), i.to_string()];
        match (&b.weights, b.random_init) {
            (Some(_), Some(_)) => self.push(&at, "give either `weights` or `random_init`, not both".into()),
            (None, None) => self.push(
                &at,
                "missing `weights` (a checkpoint file) or `random_init` (a seed for a random start)".into(),
            ),
            _ => {}
        }
        self.positive(&at, "norm_eps", b.norm_eps);
        let shape = match b.shape() {
            Ok(shape) => shape,
            Err(message) => {
                let key = if b.variant == "custom" { "" } else { "variant" };
                self.at(&at, key, false, || message);
                return None;
            }
        };
        let mut ok = true;
        for (key, v) in [
            ("width", shape.width),
            ("depth", shape.depth),
            ("heads", shape.heads),
            ("mlp_dim", shape.mlp_dim),
            ("patch_size", shape.patch_size),
        ] {
            ok &= v > 0;
            self.at(&at, key, v > 0, || "expected a positive integer, found 0".into());
        }
        let heads_ok = shape.heads > 0 && shape.width.is_multiple_of(shape.heads);
        self.at(&at, "heads", heads_ok || shape.heads == 0, || {
            format!("width {} is not divisible by {} heads", shape.width, shape.heads)
        });
        let size_ok =
            b.image_size > 0 && shape.patch_size > 0 && b.image_size.is_multiple_of(shape.patch_size);
        self.at(&at, "image_size", size_ok || shape.patch_size == 0, || {
            format!(
                "expected a positive multiple of the patch size {}, found {}",
                shape.patch_size, b.image_size
            )
        });
        (ok && heads_ok && size_ok).then_some(shape)
    }
}

fn unique<T: Ord>(items: &[T]) -> bool {
    items.iter().collect::<BTreeSet<_>>().len() == items.len()
}

/// Problems of a training config, with paths relative to it.
fn train_problems(t: &TrainConfig) -> Vec<Found> {
    let mut c = Checker::default();
    let at: &[String] = &[];
    c.positive(at, "lr", t.lr);
    c.at(at, "weight_decay", t.weight_decay >= 0.0, || {
        format!("expected a value ≥ 0, found {}", t.weight_decay)
    });
    c.fraction(at, "betas", t.betas[0]);
    c.fraction(at, "betas", t.betas[1]);
    c.positive(at, "eps", t.eps);
    c.fraction(at, "momentum", t.momentum);
    c.at(at, "min_lr", t.min_lr >= 0.0 && t.min_lr <= t.lr, || {
        format!("expected a value in [0, lr = {}], found {}", t.lr, t.min_lr)
    });
    c.at(at, "epochs", t.epochs > 0, || "expected at least 1 epoch, found 0".into());
    c.at(at, "batch_size", t.batch_size > 0, || "expected a positive batch size, found 0".into());
    c.at(at, "warmup_epochs", t.warmup_epochs <= t.epochs, || {
        format!("expected at most epochs = {}, found {}", t.epochs, t.warmup_epochs)
    });
    c.fraction(at, "label_smoothing", t.label_smoothing);
    if let Some(clip) = t.grad_clip {
        c.positive(at, "grad_clip", clip);
    }
    let [lo, hi] = t.augment.crop_scale;
    c.at(at, "augment.crop_scale", 0.0 < lo && lo <= hi && hi <= 1.0, || {
        format!("expected 0 < min ≤ max ≤ 1, found [{lo}, {hi}]")
    });
    c.found
}

fn check_blocks(c: &mut Checker, at: &[String], blocks: &Blocks, depth: usize) {
    if let Blocks::List(list) = blocks {
        c.at(at, "blocks", !list.is_empty(), || "expected \"all\" or at least one block index".into());
        c.at(at, "blocks", unique(list), || format!("block indices repeat: {list:?}"));
        if let Some(bad) = list.iter().find(|&&b| b >= depth) {
            c.at(at, "blocks", false, || {
                format!("block {bad} is out of range: the backbone has {depth} blocks (0..={})", depth - 1)
            });
        }
    }
}

fn check_adapter(
    c: &mut Checker,
    at: &[String],
    adapter: &AdapterConfig,
    shape: &VitShape,
    image_size: usize,
    backbone: &str,
) {
    let d = shape.width;
    let tokens = (image_size / shape.patch_size).pow(2) + 1;
    let rank = |c: &mut Checker, key: &str, r: usize, max: usize, of: &str| {
        c.at(at, key, (1..=max).contains(&r), || {
            format!("expected a value in 1..={max} ({of} of {backbone} at {image_size} px), found {r}")
        });
    };
    match adapter {
        AdapterConfig::LinearProbe(_) | AdapterConfig::Full(_) | AdapterConfig::Bitfit(_) => {}
        AdapterConfig::Lora(l) => {
            rank(c, "rank", l.rank, d, "the backbone width");
            c.positive(at, "alpha", l.alpha);
            c.fraction(at, "dropout", l.dropout);
            c.at(at, "targets", !l.targets.is_empty(), || "expected at least one target".into());
            c.at(
                at,
                "targets",
                l.targets.iter().collect::<std::collections::HashSet<_>>().len() == l.targets.len(),
                || "targets repeat".into(),
            );
            let slices = l.targets.iter().any(|t| matches!(t, LoraTarget::Q | LoraTarget::K | LoraTarget::V));
            c.at(at, "targets", !(slices && l.targets.contains(&LoraTarget::Qkv)), || {
                "\"qkv\" adapts the fused projection whole: combine it with \"q\", \"k\" or \"v\" slices of it is ambiguous".into()
            });
            check_blocks(c, at, &l.blocks, shape.depth);
        }
        AdapterConfig::Vpt(v) => {
            c.at(at, "prompts", v.prompts > 0, || "expected at least 1 prompt, found 0".into());
            c.fraction(at, "dropout", v.dropout);
            check_blocks(c, at, &v.blocks, shape.depth);
            c.at(at, "blocks", v.mode == VptMode::Deep || v.blocks == Blocks::default(), || {
                "`blocks` applies to mode = \"deep\" only".into()
            });
        }
        AdapterConfig::Losa(l) => {
            rank(c, "channel_rank", l.channel_rank, d, "the backbone width");
            rank(c, "token_rank", l.token_rank, tokens, "the token count");
            c.at(at, "mixers", !l.mixers.is_empty(), || "expected at least one mixer".into());
            c.at(
                at,
                "mixers",
                l.mixers.iter().collect::<std::collections::HashSet<_>>().len() == l.mixers.len(),
                || format!("mixers repeat: {:?}", l.mixers),
            );
            c.fraction(at, "dropout", l.dropout);
            check_blocks(c, at, &l.blocks, shape.depth);
        }
        AdapterConfig::Adaptformer(a) => {
            rank(c, "bottleneck", a.bottleneck, d, "the backbone width");
            c.at(at, "scale", a.scale.is_finite(), || format!("expected a finite number, found {}", a.scale));
            c.fraction(at, "dropout", a.dropout);
            check_blocks(c, at, &a.blocks, shape.depth);
        }
    }
}

fn check_dataset(c: &mut Checker, at: &[String], dataset: &DatasetConfig) {
    let tasks_at = [at, &["tasks".to_owned()]].concat();
    let problems = match dataset {
        DatasetConfig::Vtab1k(v) => vtab::expand(&v.tasks, &tasks_at).err(),
        DatasetConfig::Synthetic(s) => {
            c.at(at, "image_size", s.image_size >= 16, || {
                format!(
                    "expected at least 16 pixels (sprites need room to show their shape), found {}",
                    s.image_size
                )
            });
            for (key, v) in
                [("train_size", s.train_size), ("val_size", s.val_size), ("test_size", s.test_size)]
            {
                c.at(at, key, v > 0, || "expected a positive integer, found 0".into());
            }
            synthetic::expand(&s.tasks, &tasks_at).err()
        }
        DatasetConfig::ImageFolder(f) => {
            match (&f.root, &f.train_root, &f.test_root) {
                (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                _ => c.at(at, "", false, || "give either `root` or both `train_root` and `test_root`".into()),
            }
            c.at(at, "test_size", f.test_size.is_none() || f.root.is_some(), || {
                "`test_size` applies with `root` only (`test_root` is the test set)".into()
            });
            None
        }
        DatasetConfig::Idx(x) => {
            c.at(at, "classes", x.classes >= 2, || {
                format!("expected at least 2 classes, found {}", x.classes)
            });
            if let Some(n) = x.subset {
                c.at(at, "subset", n > x.val_size, || {
                    format!("expected more than val_size = {} images, found {n}", x.val_size)
                });
            }
            None
        }
    };
    for (path, message) in problems.into_iter().flatten() {
        c.push(&path, message);
    }
    let p = dataset.preprocess();
    let custom = p.normalize == Normalize::Custom;
    c.at(at, "preprocess.mean", custom == p.mean.is_some(), || match custom {
        true => "required with normalize = \"custom\"".into(),
        false => "applies with normalize = \"custom\" only".into(),
    });
    c.at(at, "preprocess.std", custom == p.std.is_some(), || match custom {
        true => "required with normalize = \"custom\"".into(),
        false => "applies with normalize = \"custom\" only".into(),
    });
    if let Some(std) = p.std {
        c.at(at, "preprocess.std", std.iter().all(|s| *s > 0.0), || {
            format!("expected positive values, found {std:?}")
        });
    }
}

fn check_eval(c: &mut Checker, e: &EvalConfig) {
    let at = ["eval".to_owned()];
    c.at(&at, "test_split", !e.test_split.overlaps(e.train_split), || {
        format!("\"{}\" shares images with train_split = \"{}\"", e.test_split, e.train_split)
    });
    if let Some(val) = e.val_split {
        c.at(&at, "val_split", !val.overlaps(e.train_split), || {
            format!(
                "\"{val}\" shares images with train_split = \"{}\"; validation must be held out",
                e.train_split
            )
        });
    }
    c.at(&at, "select", e.select != Selection::BestVal || e.val_split.is_some(), || {
        "\"best_val\" needs a `val_split` that does not overlap `train_split` (e.g. train_split = \"train800\", val_split = \"val200\")".into()
    });
    c.at(&at, "batch_size", e.batch_size > 0, || "expected a positive batch size, found 0".into());
}

fn check_protocol(c: &mut Checker, recipe: &Recipe) {
    if recipe.protocol != Protocol::TuneThenTest {
        return;
    }
    let e = &recipe.eval;
    let defaults = EvalConfig::default();
    let why = "protocol = \"tune_then_test\" sets the splits itself (train800 -> val200, then \
               train800val200 -> test)";
    for (key, ok) in [
        ("train_split", e.train_split == defaults.train_split),
        ("test_split", e.test_split == defaults.test_split),
        ("val_split", e.val_split.is_none()),
    ] {
        c.at(&["eval".into()], key, ok, || format!("{why}; leave `eval.{key}` unset"));
    }
    c.at(&["eval".into()], "select", e.select == Selection::Last, || {
        format!("{why}, and it reports the last epoch; use select = \"last\"")
    });
    // Tuning scores on the validation split (val200): a dataset must have one.
    for (i, dataset) in recipe.datasets.iter().enumerate() {
        let val_size = match dataset {
            DatasetConfig::ImageFolder(f) => f.val_size,
            DatasetConfig::Idx(x) => x.val_size,
            DatasetConfig::Vtab1k(_) | DatasetConfig::Synthetic(_) => continue,
        };
        c.at(&["datasets".into(), i.to_string()], "val_size", val_size > 0, || {
            "protocol = \"tune_then_test\" scores settings on the validation split; expected a positive \
             val_size, found 0"
                .into()
        });
    }
}

/// Every swept key must be sweepable and every value must make a valid recipe when applied alone.
fn check_sweeps(c: &mut Checker, recipe: &Recipe) {
    // Checking a value checks the recipe of that setting, which sweeps nothing: this return ends
    // that recursion.
    let sweeps_nothing = recipe.sweep.grid.is_empty() && recipe.adapters.iter().all(|a| a.sweep().is_empty());
    let at = ["sweep".to_owned()];
    if let Some(n) = recipe.sweep.sample {
        c.at(&at, "sample", n > 0, || "expected at least 1 setting, found 0".into());
        c.at(&at, "sample", !sweeps_nothing, || "nothing is swept: give a grid to sample from".into());
    }
    c.at(&at, "seed", recipe.sweep.seed == 0 || recipe.sweep.sample.is_some(), || {
        "`seed` draws the settings of `sample`; give `sample` too, or leave `seed` out".into()
    });
    if sweeps_nothing {
        return;
    }
    let base = check_without_sweeps(recipe);
    let global = ["sweep".to_owned(), "grid".to_owned()];
    let mut grids: Vec<(Vec<String>, Option<usize>, &SweepGrid)> =
        vec![(global.to_vec(), None, &recipe.sweep.grid)];
    for (i, a) in recipe.adapters.iter().enumerate() {
        grids.push((vec!["adapters".into(), i.to_string(), "sweep".into()], Some(i), a.sweep()));
    }
    for (at, only, grid) in grids {
        for (key, values) in grid {
            let key_at = [at.clone(), vec![key.clone()]].concat();
            if let Some(problem) = key_problem(key) {
                c.push(&key_at, problem);
                continue;
            }
            if values.is_empty() {
                c.push(&key_at, "expected at least one value".into());
            }
            // Equal values would be equal settings, so runs sharing an id.
            if values.iter().enumerate().any(|(i, v)| values[..i].contains(v)) {
                c.push(
                    &key_at,
                    format!("expected distinct values, found {}", serde_json::Value::from(values.clone())),
                );
            }
            let adapters: Vec<usize> = only.map_or_else(|| (0..recipe.adapters.len()).collect(), |i| vec![i]);
            for value in values {
                for &ai in &adapters {
                    let setting = Setting::from([(key.clone(), value.clone())]);
                    let found = match apply(recipe, ai, &setting) {
                        Ok(variant) => check(&variant).into_iter().filter(|p| !base.contains(p)).collect(),
                        Err(e) => vec![(vec![], e)],
                    };
                    for (path, message) in found {
                        let place =
                            if path.is_empty() { String::new() } else { format!("{}: ", key_path(&path)) };
                        c.push(&key_at, format!("with {key} = {value}: {place}{message}"));
                    }
                }
            }
        }
    }
    // Values that are valid one by one can clash together (epochs = 1 with warmup_epochs = 2):
    // every setting a method runs is checked too, once the values alone are fine.
    if c.found.is_empty() {
        // The first few clashing settings say enough.
        let mut clashes = 0;
        for (ai, adapter) in recipe.adapters.iter().enumerate() {
            for (_, setting) in settings_for(recipe, adapter).iter().take(MAX_CHECKED_SETTINGS) {
                let found = match apply(recipe, ai, setting) {
                    Ok(variant) => check(&variant).into_iter().filter(|p| !base.contains(p)).collect(),
                    Err(e) => vec![(vec![], e)],
                };
                if let Some((path, message)) = found.into_iter().next().filter(|_| clashes < 5) {
                    clashes += 1;
                    let place =
                        if path.is_empty() { String::new() } else { format!("{}: ", key_path(&path)) };
                    let at = match adapter.sweep().is_empty() {
                        true => global.to_vec(),
                        false => vec!["adapters".into(), ai.to_string(), "sweep".into()],
                    };
                    c.push(&at, format!("with {}: {place}{message}", label(setting)));
                }
            }
        }
    }
    c.found.dedup();
}

/// Settings checked together per method: a bound on the time `runner check` takes for huge grids.
const MAX_CHECKED_SETTINGS: usize = 10_000;

/// The recipe's own problems, apart from its sweeps (what a swept value adds is reported alone).
fn check_without_sweeps(recipe: &Recipe) -> Vec<Found> {
    match apply(recipe, 0, &Setting::new()) {
        Ok(plain) => check(&plain),
        Err(_) => vec![],
    }
}
