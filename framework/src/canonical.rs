//! Canonical JSON and content hashes: the basis of stable run ids and cache keys.

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Removes from `value` every object field equal to the same field of `default`, recursively, so a
/// field added later with a default value leaves existing ids unchanged.
pub fn prune_defaults(value: &mut Value, default: &Value) {
    if let (Value::Object(map), Value::Object(defaults)) = (value, default) {
        map.retain(|k, v| match defaults.get(k) {
            Some(d) if d == v => false,
            Some(d) => {
                prune_defaults(v, d);
                true
            }
            None => true,
        });
    }
}

/// JSON with object keys sorted and no whitespace, independent of field order and map types.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex SHA-256 of a file's contents, read in chunks (checkpoints are hundreds of MB).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 3}], "x": "s"}});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#);
    }

    #[test]
    fn pruning_drops_default_fields_recursively_and_keeps_the_rest() {
        let mut v =
            json!({"lr": 0.001, "epochs": 5, "augment": {"hflip": false, "crop": [0.1, 1.0]}, "new": 1});
        let d = json!({"lr": 0.001, "epochs": 100, "augment": {"hflip": false, "crop": [0.08, 1.0]}});
        prune_defaults(&mut v, &d);
        assert_eq!(v, json!({"epochs": 5, "augment": {"crop": [0.1, 1.0]}, "new": 1}));
    }

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
    }
}
