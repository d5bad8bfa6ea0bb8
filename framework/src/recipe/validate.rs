//! Validation: the merged values against the generated schema first (every structural problem at
//! once, worded for a person), then deserialisation, then the semantic checks.

use jsonschema::ValidationError;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::Recipe;
use super::checks::check;
use super::error::{Problem, did_you_mean};
use super::load::Layered;

/// A problem before its source is looked up: the key path and the message.
pub(crate) type Found = (Vec<String>, String);

pub(crate) fn validate(layered: &Layered<'_>, schema: &Value) -> Result<Recipe, Vec<Problem>> {
    let to_problems = |found: Vec<Found>| -> Vec<Problem> {
        let mut out: Vec<Problem> = Vec::new();
        for (path, message) in found {
            let p = Problem { source: layered.source_of(&path), key: key_path(&path), message };
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    };
    let json = serde_json::to_value(layered.value)
        .map_err(|e| to_problems(vec![(vec![], format!("cannot read the merged values: {e}"))]))?;
    let validator = jsonschema::draft7::new(schema).map_err(|e| {
        to_problems(vec![(vec![], format!("internal error: the recipe schema does not compile: {e}"))])
    })?;
    let mut found = Vec::new();
    for error in validator.iter_errors(&json) {
        translate(&error, schema, &json, &mut found);
    }
    if !found.is_empty() {
        return Err(to_problems(found));
    }
    let recipe: Recipe = serde_path_to_error::deserialize(&json).map_err(|e| {
        let path = e.path().iter().map(|s| s.to_string()).collect();
        to_problems(vec![(path, e.into_inner().to_string())])
    })?;
    let found = check(&recipe);
    if found.is_empty() { Ok(recipe) } else { Err(to_problems(found)) }
}

/// `adapters.0.rank` as `adapters[0].rank`.
pub(crate) fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn translate(error: &ValidationError<'_>, root: &Value, json: &Value, out: &mut Vec<Found>) {
    let path: Vec<String> = error.instance_path().iter().map(|s| s.to_string()).collect();
    let instance = error.instance().as_ref();
    let node = schema_at(root, json, &path);
    let at = |extra: &str| {
        let mut p = path.clone();
        p.push(extra.to_owned());
        p
    };
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed: Vec<&str> = node
                .and_then(|n| variant(root, n, instance).get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            for name in unexpected {
                let message = match did_you_mean(name, allowed.iter().copied()) {
                    hint if hint.is_empty() => {
                        format!("unknown key; expected one of: {}", allowed.join(", "))
                    }
                    hint => format!("unknown key{hint}"),
                };
                out.push((at(name), message));
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let what = node
                .and_then(|n| variant(root, n, instance).pointer(&format!("/properties/{name}")))
                .map(|p| expected(root, p));
            let what = what.map(|w| format!(" ({w})")).unwrap_or_default();
            out.push((at(name), format!("missing required key{what}")));
        }
        ValidationErrorKind::OneOfNotValid { context } => {
            one_of(&path, instance, node, context, root, json, out)
        }
        ValidationErrorKind::AnyOf { context } => {
            // Report the branch that got furthest into the value, when it went deeper than here.
            let deepest = context
                .iter()
                .filter(|errors| errors.iter().all(|e| e.instance_path().iter().count() > path.len()))
                .min_by_key(|errors| errors.len());
            match deepest {
                Some(errors) => errors.iter().for_each(|e| translate(e, root, json, out)),
                None => out.push((path.clone(), mismatch(root, node, instance))),
            }
        }
        ValidationErrorKind::Minimum { limit } => out
            .push((path.clone(), format!("expected a value of at least {limit}, found {}", found(instance)))),
        ValidationErrorKind::Maximum { limit } => out
            .push((path.clone(), format!("expected a value of at most {limit}, found {}", found(instance)))),
        ValidationErrorKind::MinItems { limit } | ValidationErrorKind::MaxItems { limit } => {
            let len = instance.as_array().map_or(0, Vec::len);
            out.push((path.clone(), format!("expected {limit} items, found {len}")))
        }
        ValidationErrorKind::Type { .. }
        | ValidationErrorKind::Enum { .. }
        | ValidationErrorKind::Constant { .. }
        | ValidationErrorKind::Pattern { .. } => out.push((path.clone(), mismatch(root, node, instance))),
        _ => out.push((path.clone(), error.to_string())),
    }
}

/// Tagged enums: dispatch on `kind` so the errors are those of the kind the user chose.
fn one_of(
    path: &[String],
    instance: &Value,
    node: Option<&Value>,
    context: &[Vec<ValidationError<'static>>],
    root: &Value,
    json: &Value,
    out: &mut Vec<Found>,
) {
    let branches: Vec<&Value> = node
        .and_then(|n| n.get("oneOf"))
        .and_then(Value::as_array)
        .map(|b| b.iter().collect())
        .unwrap_or_default();
    let kinds: Vec<&str> =
        branches.iter().filter_map(|b| b.pointer("/properties/kind/const")?.as_str()).collect();
    let mut at_kind = path.to_vec();
    at_kind.push("kind".into());
    let listed = kinds.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
    match instance.get("kind") {
        _ if kinds.is_empty() => out.push((path.to_vec(), mismatch(root, node, instance))),
        _ if !instance.is_object() => out
            .push((path.to_vec(), format!("expected a table with a `kind` key, found {}", found(instance)))),
        None => out.push((at_kind, format!("missing required key, one of {listed}"))),
        Some(Value::String(kind)) => match kinds.iter().position(|k| k == kind) {
            Some(i) if i < context.len() => context[i].iter().for_each(|e| translate(e, root, json, out)),
            _ => out.push((
                at_kind,
                format!(
                    "unknown kind \"{kind}\"; expected one of {listed}{}",
                    did_you_mean(kind, kinds.iter().copied())
                ),
            )),
        },
        Some(other) => out.push((at_kind, format!("expected one of {listed}, found {}", found(other)))),
    }
}

fn mismatch(root: &Value, node: Option<&Value>, instance: &Value) -> String {
    let want = node.map(|n| expected(root, n)).unwrap_or_else(|| "a different value".into());
    let hint = match (instance.as_str(), node) {
        (Some(s), Some(n)) => did_you_mean(s, options(root, n).iter().map(String::as_str)),
        _ => String::new(),
    };
    format!("expected {want}, found {}{hint}", found(instance))
}

/// A short description of what a schema accepts.
fn expected(root: &Value, node: &Value) -> String {
    let node = resolve(root, node);
    let branches = node.get("anyOf").or_else(|| node.get("oneOf")).and_then(Value::as_array);
    let only_options = branches.is_none_or(|bs| bs.iter().all(|b| !options(root, b).is_empty()));
    let opts = options(root, node);
    if !opts.is_empty() && only_options {
        let quoted: Vec<String> = opts.iter().map(|o| format!("\"{o}\"")).collect();
        return match quoted.len() {
            1 => quoted[0].clone(),
            _ => format!("one of {}", quoted.join(", ")),
        };
    }
    if let Some(branches) = branches {
        return branches.iter().map(|b| expected(root, b)).collect::<Vec<_>>().join(" or ");
    }
    if let Some(Value::String(pattern_doc)) = node.get("pattern").and(node.get("description")) {
        return pattern_doc.clone();
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    let non_negative = node.get("minimum").and_then(Value::as_f64) == Some(0.0);
    let words: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "integer" if non_negative => "a non-negative integer".to_owned(),
            "integer" => "an integer".to_owned(),
            "number" => "a number".to_owned(),
            "string" => "a string".to_owned(),
            "boolean" => "true or false".to_owned(),
            "array" => match (node.get("minItems"), node.get("maxItems")) {
                (Some(a), Some(b)) if a == b => format!("a list of {a}"),
                _ => "a list".to_owned(),
            },
            "object" => "a table".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    if words.is_empty() { "a valid value".into() } else { words.join(" or ") }
}

/// The string values a schema allows, when it is an enumeration.
fn options(root: &Value, node: &Value) -> Vec<String> {
    let node = resolve(root, node);
    let mut out = Vec::new();
    if let Some(Value::String(c)) = node.get("const") {
        out.push(c.clone());
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        out.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    let branches = node.get("oneOf").or_else(|| node.get("anyOf")).and_then(Value::as_array);
    for branch in branches.into_iter().flatten() {
        let branch = resolve(root, branch);
        // A unit enum variant with docs is a oneOf branch holding one const or enum.
        if branch.get("properties").is_none() {
            out.extend(options(root, branch));
        }
    }
    out
}

/// How a value found in the recipe reads in a message.
fn found(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => format!("the list {v}"),
        Value::Object(_) => "a table".into(),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

/// Follows `$ref`s and single-element `allOf` wrappers.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            match root.pointer(target) {
                Some(t) => node = t,
                None => break,
            }
        } else if let Some([single]) = node.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            node = single;
        } else {
            break;
        }
    }
    node
}

/// The schema that applies to the value at `path` (dispatching tagged enums on `kind`).
fn schema_at<'a>(root: &'a Value, json: &Value, path: &[String]) -> Option<&'a Value> {
    let mut node = resolve(root, root);
    let mut value = json;
    for seg in path {
        node = child(root, node, value, seg)?;
        value = match value {
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            other => other.get(seg)?,
        };
    }
    Some(node)
}

/// The branch of a tagged enum that the value's `kind` selects, or the node itself.
fn variant<'a>(root: &'a Value, node: &'a Value, value: &Value) -> &'a Value {
    let kind = value.get("kind");
    let branches = node.get("oneOf").and_then(Value::as_array);
    let chosen = branches
        .into_iter()
        .flatten()
        .map(|b| resolve(root, b))
        .find(|b| kind.is_some() && b.pointer("/properties/kind/const") == kind);
    chosen.unwrap_or(node)
}

fn child<'a>(root: &'a Value, node: &'a Value, value: &Value, seg: &str) -> Option<&'a Value> {
    let node = resolve(root, node);
    if let Some(branches) = node.get("oneOf").or_else(|| node.get("anyOf")).and_then(Value::as_array) {
        let kind = value.get("kind");
        return branches
            .iter()
            .filter(|b| kind.is_none() || resolve(root, b).pointer("/properties/kind/const") == kind)
            .find_map(|b| child(root, b, value, seg));
    }
    let next = match value {
        Value::Array(_) => node.get("items")?,
        _ => node.get("properties")?.get(seg)?,
    };
    Some(resolve(root, next))
}
