//! The recipe's JSON Schema (draft-07, for editors and for validation before deserialising).

use std::collections::BTreeSet;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::Recipe;

/// Schema key marking a property as an input path (resolved relative to the recipe file).
pub(crate) const INPUT_PATH: &str = "x-input-path";

/// The recipe schema as a JSON value.
pub fn recipe_schema() -> Value {
    let schema = SchemaSettings::draft07().into_generator().into_root_schema_for::<Recipe>();
    schema.to_value()
}

/// The recipe schema as pretty-printed JSON with a trailing newline, as `runner schema` prints it.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&recipe_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// Names of the properties that hold input paths anywhere in the schema.
pub(crate) fn input_path_keys(schema: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    for (name, prop) in props {
                        if prop.get(INPUT_PATH) == Some(&Value::Bool(true)) {
                            out.insert(name.clone());
                        }
                    }
                }
                map.values().for_each(|c| walk(c, out));
            }
            Value::Array(items) => items.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, &mut out);
    out
}
