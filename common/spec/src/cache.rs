//! A step's `cache:`: whether the step is cached, the version that invalidates
//! earlier results, and the files of the code bundle its cache key stands on.

use std::collections::BTreeSet;

use serde_yaml::Value;

use super::checker::StepContext;
use super::paths::normalize_bundle_path;
use super::raw::{describe_value, scalar_text};
use super::suggest::{did_you_mean, suggest};
use super::types::CacheSpec;

/// `cache: false`, `cache: true` or `cache: {version: 2, paths: [src/], enabled: true}`.
pub(super) fn check_cache(cx: &StepContext<'_>, cache: &Value) -> CacheSpec {
    let label = cx.label;
    let mut spec = CacheSpec::default();
    let map = match cache {
        Value::Bool(enabled) => {
            spec.enabled = *enabled;
            return spec;
        }
        Value::Mapping(map) => map,
        other => {
            let at = cx.at("cache", None);
            cx.error(
                at,
                format!(
                    "cache of step {label} must be true, false or a map with `version`, \
                     `paths` and `enabled`, got {}",
                    describe_value(other)
                ),
            );
            return spec;
        }
    };
    for (key, value) in map {
        let at = cx.at("cache", key.as_str());
        match key.as_str() {
            Some("enabled") => match value {
                Value::Bool(enabled) => spec.enabled = *enabled,
                other => cx.error(
                    at,
                    format!(
                        "cache.enabled of step {label} must be true or false, got {}",
                        describe_value(other)
                    ),
                ),
            },
            Some("version") => match scalar_text(value) {
                Some(version) => spec.version = version,
                None => cx.error(
                    at,
                    format!(
                        "cache.version of step {label} must be a plain value such as 2 or \
                         \"v2\", got {}",
                        describe_value(value)
                    ),
                ),
            },
            Some("paths") => spec.paths = check_cache_paths(cx, value),
            Some("secrets") => match value {
                Value::Bool(on) => spec.secrets = *on,
                other => cx.error(
                    at,
                    format!(
                        "cache.secrets of step {label} must be true or false, got {}",
                        describe_value(other)
                    ),
                ),
            },
            other => {
                let hint = did_you_mean(
                    other.and_then(|k| suggest(k, ["version", "paths", "enabled", "secrets"])),
                );
                cx.error(
                    at,
                    format!(
                        "cache of step {label} has an unknown field {}{hint}; use `version`, \
                         `paths`, `enabled` and `secrets`",
                        describe_value(key)
                    ),
                );
            }
        }
    }
    spec
}

/// `cache.paths`: files or folders of the code bundle; normalized, sorted,
/// deduplicated.
fn check_cache_paths(cx: &StepContext<'_>, value: &Value) -> Vec<String> {
    let label = cx.label;
    let items = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            let at = cx.at("cache", Some("paths"));
            cx.error(
                at,
                format!(
                    "cache.paths of step {label} must be a list of files or folders of the code \
                     bundle such as [\"src/\", \"train.py\"], got {}",
                    describe_value(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut paths = BTreeSet::new();
    for item in items {
        let path = match item {
            Value::String(_) | Value::Number(_) => scalar_text(item).unwrap_or_default(),
            other => {
                let at = cx.at("cache", Some("paths"));
                cx.error(
                    at,
                    format!(
                        "cache.paths of step {label} lists {}; each entry must be a path such \
                         as \"src/\" or \"train.py\"",
                        describe_value(other)
                    ),
                );
                continue;
            }
        };
        match normalize_bundle_path(&path) {
            Ok(normalized) => {
                paths.insert(normalized);
            }
            Err(why) => {
                let token = if path.is_empty() { "\"\"" } else { &path };
                let at = cx.at("cache", Some(token));
                cx.error(at, format!("cache path {path:?} of step {label} {why}"));
            }
        }
    }
    paths.into_iter().collect()
}
