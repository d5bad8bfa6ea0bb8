//! Per-method overrides of the recipe's `[train]` table.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::train::TrainConfig;

/// A partial `[train]` table: only the keys a method changes. Kept as written (not filled with
/// defaults) so the resolved recipe shows what was overridden; [`TrainOverrides::apply`] merges it
/// over the recipe's settings. Its schema is `TrainConfig`'s, so editors and validation treat it
/// exactly like `[train]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrainOverrides(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for TrainOverrides {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        TrainConfig::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        TrainConfig::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        TrainConfig::json_schema(generator)
    }
}

impl TrainOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `base` with these overrides merged in (nested tables merge key by key).
    pub fn apply(&self, base: &TrainConfig) -> Result<TrainConfig, serde_json::Error> {
        let mut merged = serde_json::to_value(base)?;
        merge(&mut merged, &serde_json::Value::Object(self.0.clone()));
        serde_json::from_value(merged)
    }
}

/// Deep-merges `over` into `base`: objects key by key, anything else replaced whole.
pub(crate) fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}
