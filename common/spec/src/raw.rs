//! The raw serde layer: a spec as written in the file, read by serde before any
//! checking, and the helpers that describe its loosely typed values in messages.
//!
//! Fields are mostly `Option<Value>` on purpose: a wrong type in a value is then a
//! located, worded diagnostic from the checks rather than serde's generic error.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_yaml::Value;

/// The whole file.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pipeline: a map with `name`, `params` and `steps`"
)]
pub(super) struct RawPipeline {
    pub(super) name: Option<String>,
    pub(super) params: Option<UniqueMap<Value>>,
    pub(super) steps: Option<Vec<RawStep>>,
    pub(super) priority: Option<Value>,
    pub(super) project: Option<Value>,
    pub(super) max_parallel: Option<Value>,
    pub(super) timeout: Option<Value>,
    pub(super) image: Option<Value>,
    pub(super) image_pull: Option<Value>,
    pub(super) shm_size: Option<Value>,
    pub(super) network: Option<Value>,
    pub(super) read_only_root: Option<Value>,
}

/// One item under `steps:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a step: a map with `name` and `command` or `shell`"
)]
pub(super) struct RawStep {
    pub(super) name: Option<String>,
    pub(super) command: Option<Value>,
    pub(super) shell: Option<String>,
    pub(super) needs: Option<Vec<String>>,
    pub(super) inputs: Option<UniqueMap<String>>,
    pub(super) outputs: Option<Vec<String>>,
    pub(super) env: Option<UniqueMap<Value>>,
    pub(super) resources: Option<RawResources>,
    pub(super) retries: Option<Value>,
    pub(super) timeout: Option<Value>,
    pub(super) retry_backoff: Option<Value>,
    pub(super) node_selector: Option<UniqueMap<Value>>,
    pub(super) params: Option<Vec<String>>,
    pub(super) cache: Option<Value>,
    pub(super) matrix: Option<Value>,
    pub(super) max_parallel: Option<Value>,
    pub(super) gather: Option<Vec<Value>>,
    pub(super) secrets: Option<Value>,
    pub(super) image: Option<Value>,
    pub(super) image_pull: Option<Value>,
    pub(super) shm_size: Option<Value>,
    pub(super) network: Option<Value>,
    pub(super) read_only_root: Option<Value>,
}

/// A step's `resources:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "resources: a map with `cpu`, `memory` and `gpu`"
)]
pub(super) struct RawResources {
    pub(super) cpu: Option<Value>,
    pub(super) memory: Option<Value>,
    pub(super) gpu: Option<Value>,
}

/// A string-keyed map that rejects duplicate keys (serde_yaml keeps the last one
/// when deserializing into a `BTreeMap`). `null` is an empty map.
pub(super) struct UniqueMap<V>(pub(super) BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key {key:?}"
                        )));
                    }
                    let value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(UniqueMap(map))
            }
        }

        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A scalar as text (`42`, `0.3`, `true`, `text`); `None` for anything else.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What kind of value `v` is, for a message: `a list`, `no value (null)`, ...
pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "no value (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A value for a message: numbers and booleans as written, strings quoted, others
/// by kind.
pub(super) fn describe_value(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => kind_of(other).to_string(),
    }
}

/// A positive integer that fits a `u32`.
pub(super) fn positive_u32(value: &Value) -> Option<u32> {
    value
        .as_u64()
        .filter(|n| *n >= 1)
        .and_then(|n| u32::try_from(n).ok())
}
