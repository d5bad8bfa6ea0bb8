//! Layering a recipe: type defaults < recipe TOML < `LOSA__SECTION__KEY` environment < `--set`.
//!
//! figment merges the layers and remembers which one set each value; that provenance names the
//! source in error messages and decides how an input path resolves (relative to the recipe file
//! when written there, to the working directory when given on the command line or environment).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::Recipe;
use super::error::RecipeError;
use super::schema::{input_path_keys, recipe_schema};
use super::validate::validate;

/// Prefix of environment variables that set recipe keys: `LOSA__TRAIN__LR=3e-4` sets `train.lr`.
pub const ENV_PREFIX: &str = "LOSA__";

/// The layers above the recipe file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `key=value` assignments from `--set`, applied last, in order.
    pub sets: Vec<String>,
    /// The process environment (name, value); only `LOSA__…` variables are used.
    pub env: Vec<(String, String)>,
}

/// Loads, layers and validates a recipe, reporting every problem at once.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Recipe, RecipeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RecipeError::NotFound(path.to_owned()));
        }
        Err(source) => return Err(RecipeError::Read { path: path.to_owned(), source }),
    };
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(RecipeError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        });
    }
    let env = Assignments::from_env(&options.env)?;
    let sets = Assignments::from_sets(&options.sets)?;
    let figment = Figment::new().merge(Toml::file_exact(path)).merge(env).merge(sets);
    let mut value: Value = figment
        .extract()
        .map_err(|e| RecipeError::Syntax { path: path.to_owned(), message: e.to_string() })?;

    let schema = recipe_schema();
    resolve_input_paths(&mut value, &figment, &input_path_keys(&schema));
    let layered = Layered { figment: &figment, value: &value, recipe_path: path };
    validate(&layered, &schema).map_err(|problems| RecipeError::Invalid { path: path.to_owned(), problems })
}

/// The merged recipe values with what is needed to say where each came from.
pub(crate) struct Layered<'a> {
    figment: &'a Figment,
    /// The merged values, tagged with the layer that set them.
    pub value: &'a Value,
    recipe_path: &'a Path,
}

impl Layered<'_> {
    /// The layer that set the value at `path`, or the nearest enclosing value that exists.
    pub fn source_of(&self, path: &[String]) -> String {
        let mut node = self.value;
        let mut depth = 0;
        for seg in path {
            let next = match node {
                Value::Dict(_, d) => d.get(seg),
                Value::Array(_, a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(n) => {
                    node = n;
                    depth += 1;
                }
                None => break,
            }
        }
        // A key no layer set holds its default, and the recipe file is where to set it; but inside
        // a list element, which one layer gave whole (lists are replaced, not merged), that layer
        // is where the key is missing.
        let in_element = path[..depth].last().is_some_and(|s| s.parse::<usize>().is_ok());
        let meta = self.figment.get_metadata(node.tag()).filter(|_| depth == path.len() || in_element);
        let Some(meta) = meta else {
            return self.recipe_path.display().to_string();
        };
        match &meta.source {
            Some(Source::File(file)) => file.display().to_string(),
            _ => {
                // Name the key as it was written: a list is set whole, so stop at its index.
                let keys: Vec<&str> = path[..depth]
                    .iter()
                    .map(String::as_str)
                    .take_while(|s| s.parse::<usize>().is_err())
                    .collect();
                meta.interpolate(&Profile::Default, &keys)
            }
        }
    }
}

/// Joins every relative input path that was written in the recipe file to that file's folder.
fn resolve_input_paths(value: &mut Value, figment: &Figment, keys: &BTreeSet<String>) {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict.iter_mut() {
                if let (true, Value::String(tag, s)) = (keys.contains(k), &mut *v) {
                    if let Some(dir) = file_dir(figment, *tag)
                        && Path::new(s.as_str()).is_relative()
                    {
                        *s = dir.join(&*s).to_string_lossy().into_owned();
                    }
                } else {
                    resolve_input_paths(v, figment, keys);
                }
            }
        }
        Value::Array(_, items) => items.iter_mut().for_each(|v| resolve_input_paths(v, figment, keys)),
        _ => {}
    }
}

fn file_dir(figment: &Figment, tag: Tag) -> Option<PathBuf> {
    match &figment.get_metadata(tag)?.source {
        Some(Source::File(file)) => Some(file.parent().unwrap_or(Path::new("")).to_owned()),
        _ => None,
    }
}

/// Key = value assignments from `--set` or the environment, as a figment layer.
struct Assignments {
    metadata: Metadata,
    dict: Dict,
}

impl Assignments {
    fn from_sets(sets: &[String]) -> Result<Self, RecipeError> {
        let metadata = Metadata::named("--set").interpolater(|_, keys| format!("--set {}", keys.join(".")));
        let mut dict = Dict::new();
        for arg in sets {
            let bad = |reason: String| RecipeError::BadSet { arg: arg.clone(), reason };
            let (key, raw) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE, e.g. --set train.lr=3e-4".into()))?;
            let keys: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
            check_keys(&keys).map_err(bad)?;
            let value = parse_literal(raw.trim()).map_err(bad)?;
            insert(&mut dict, &keys, value);
        }
        Ok(Self { metadata, dict })
    }

    fn from_env(env: &[(String, String)]) -> Result<Self, RecipeError> {
        let metadata = Metadata::named("environment").interpolater(|_, keys| {
            let upper: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
            format!("{ENV_PREFIX}{}", upper.join("__"))
        });
        let mut dict = Dict::new();
        let mut vars: Vec<&(String, String)> =
            env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        vars.sort();
        for (var, raw) in vars {
            let bad = |reason: String| RecipeError::BadEnv { var: var.clone(), reason };
            let keys: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_lowercase).collect();
            check_keys(&keys)
                .map_err(|r| bad(format!("{r} (write LOSA__SECTION__KEY, e.g. LOSA__TRAIN__LR)")))?;
            insert(&mut dict, &keys, parse_literal(raw.trim()).map_err(bad)?);
        }
        Ok(Self { metadata, dict })
    }
}

impl Provider for Assignments {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.dict.clone())]))
    }
}

/// Key segments are names; list elements cannot be addressed one by one (figment replaces lists
/// whole), so a numeric segment gets a message that says how to set the whole list instead.
fn check_keys(keys: &[String]) -> Result<(), String> {
    for k in keys {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid key segment {k:?}: keys are names joined by '.'"));
        }
        if k.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "list elements cannot be set one by one (segment {k:?}); set the whole list, \
                 e.g. --set 'adapters=[{{kind = \"losa\", channel_rank = 4}}]'"
            ));
        }
    }
    Ok(())
}

fn insert(dict: &mut Dict, keys: &[String], value: Value) {
    match keys {
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
        [] => {}
    }
}

/// Parses a value as a TOML literal (`3e-4`, `true`, `[0, 1]`, `{ kind = "losa" }`, `"text"`); a
/// bare word that is no TOML literal (`cuda:0`, `B/16`), or a date or time (`02:00:00`), is taken
/// as a string. Values that start
/// like a string, list or table must parse.
pub(crate) fn parse_literal(raw: &str) -> Result<Value, String> {
    if raw.is_empty() {
        return Err("the value is empty; quote an empty string as \"\"".into());
    }
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => match table.remove("v").unwrap_or(toml::Value::Boolean(false)) {
            // No recipe key holds a date or time: `--set slurm.time=02:00:00` means the text.
            toml::Value::Datetime(_) => Ok(Value::from(raw.to_owned())),
            v => Value::serialize(v).map_err(|e| e.to_string()),
        },
        Err(e) if raw.starts_with(['[', '{', '"', '\'']) => {
            Err(format!("not a valid TOML value: {}", e.message()))
        }
        Err(_) => Ok(Value::from(raw.to_owned())),
    }
}
