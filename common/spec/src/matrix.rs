//! Matrix steps: checking a step's `matrix:` (a grid or a list of
//! combinations) and the limit on trials per step (`expand` counts and expands
//! whole pipelines).
//!
//! Sizes are counted before anything is expanded, so a matrix too large to
//! accept costs no more than its message.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_yaml::Value;

use super::checker::StepContext;
use super::locate::Pos;
use super::names::{env_var_name, is_param_name};
use super::raw::{describe_value, kind_of, scalar_text};

/// A step's checked `matrix:`: its keys, sorted, and its combinations.
pub(super) struct Matrix {
    keys: Vec<String>,
    combinations: Combinations,
}

/// The combinations of a matrix, values in the order of its keys.
enum Combinations {
    /// Every listed value of each key: the cartesian product, the last key
    /// varying fastest.
    Grid(Vec<Vec<String>>),
    /// One row per combination, in the order written.
    List(Vec<Vec<String>>),
}

impl Matrix {
    /// How many trials the step expands to (at most `max_trials_per_step`: a
    /// matrix is only built once its size is checked).
    pub(super) fn len(&self) -> usize {
        match &self.combinations {
            Combinations::Grid(columns) => columns
                .iter()
                .fold(1, |count: usize, column| count.saturating_mul(column.len())),
            Combinations::List(rows) => rows.len(),
        }
    }

    /// The values of trial `index` (0-based, below [`Matrix::len`]), by key.
    pub(super) fn values(&self, index: usize) -> BTreeMap<String, String> {
        let row: Vec<&String> = match &self.combinations {
            Combinations::List(rows) => rows.get(index).into_iter().flatten().collect(),
            Combinations::Grid(columns) => {
                // `index` in a mixed radix, the last column the lowest digit.
                let mut rest = index;
                let mut row: Vec<&String> = columns
                    .iter()
                    .rev()
                    .filter_map(|column| {
                        let size = column.len().max(1);
                        let value = column.get(rest % size);
                        rest /= size;
                        value
                    })
                    .collect();
                row.reverse();
                row
            }
        };
        self.keys
            .iter()
            .cloned()
            .zip(row.into_iter().cloned())
            .collect()
    }
}

/// The names a matrix uses, as written, even when it is invalid.
pub(super) fn matrix_keys(matrix: &Value) -> BTreeSet<String> {
    let maps: Vec<&serde_yaml::Mapping> = match matrix {
        Value::Mapping(map) => vec![map],
        Value::Sequence(items) => items.iter().filter_map(Value::as_mapping).collect(),
        _ => Vec::new(),
    };
    maps.into_iter()
        .flat_map(|map| map.keys())
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Checks a step's `matrix:`: a map from names to lists of values (a grid), or
/// a list of maps (one per combination). `None` when it is invalid; every
/// problem is reported.
pub(super) fn check_matrix(cx: &StepContext<'_>, matrix: &Value) -> Option<Matrix> {
    let label = cx.label;
    match matrix {
        Value::Mapping(map) => check_matrix_grid(cx, map),
        Value::Sequence(items) => check_matrix_list(cx, items),
        other => {
            let at = cx.at("matrix", None);
            cx.error(
                at,
                format!(
                    "matrix of step {label} must be a map from names to lists of values \
                     (e.g. {{lr: [0.1, 0.01]}}) or a list of combinations \
                     (e.g. [{{lr: 0.1}}, {{lr: 0.01}}]), got {}",
                    describe_value(other)
                ),
            );
            None
        }
    }
}

/// `matrix: {lr: [0.1, 0.01], depth: [3, 5]}`.
fn check_matrix_grid(cx: &StepContext<'_>, map: &serde_yaml::Mapping) -> Option<Matrix> {
    let label = cx.label;
    let at = cx.at("matrix", None);
    if map.is_empty() {
        cx.error(
            at,
            format!("matrix of step {label} is empty; give each name its values, e.g. {{lr: [0.1, 0.01]}}"),
        );
        return None;
    }
    let mut ok = true;
    let mut names = MatrixNames::default();
    let mut columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, values) in map {
        let Some(name) = names.check(cx, key) else {
            ok = false;
            continue;
        };
        match check_matrix_column(cx, &name, values) {
            Some(column) => {
                columns.insert(name, column);
            }
            None => ok = false,
        }
    }
    // Sizes are multiplied with overflow checks before anything is expanded, so
    // a huge grid costs nothing but this message.
    let count = columns
        .values()
        .try_fold(1usize, |count, column| count.checked_mul(column.len()));
    ok &= check_trial_count(cx, at, count);
    ok.then(|| Matrix {
        keys: columns.keys().cloned().collect(),
        combinations: Combinations::Grid(columns.into_values().collect()),
    })
}

/// The values of one key of a grid: a non-empty list of distinct scalars.
fn check_matrix_column(cx: &StepContext<'_>, name: &str, values: &Value) -> Option<Vec<String>> {
    let label = cx.label;
    let at = cx.at("matrix", Some(name));
    let Value::Sequence(items) = values else {
        cx.error(
            at,
            format!(
                "matrix key {name:?} of step {label} must list its values \
                 (e.g. {name}: [1, 2]), got {}",
                describe_value(values)
            ),
        );
        return None;
    };
    if items.is_empty() {
        cx.error(
            at,
            format!("matrix key {name:?} of step {label} lists no values"),
        );
        return None;
    }
    let mut ok = true;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut column = Vec::with_capacity(items.len());
    for item in items {
        match scalar_text(item) {
            Some(text) if seen.contains(&text) => {
                ok = false;
                cx.error(
                    at,
                    format!(
                        "matrix key {name:?} of step {label} lists {} twice; every \
                         combination must be different",
                        describe_value(item)
                    ),
                );
            }
            Some(text) => {
                seen.insert(text.clone());
                column.push(text);
            }
            None => {
                ok = false;
                cx.error(
                    at,
                    format!(
                        "a value of matrix key {name:?} of step {label} is {}; matrix values \
                         must be strings, numbers or booleans",
                        kind_of(item)
                    ),
                );
            }
        }
    }
    ok.then_some(column)
}

/// `matrix: [{lr: 0.1, depth: 3}, {lr: 0.01, depth: 5}]`.
fn check_matrix_list(cx: &StepContext<'_>, items: &[Value]) -> Option<Matrix> {
    let label = cx.label;
    let at = cx.at("matrix", None);
    if items.is_empty() {
        cx.error(
            at,
            format!(
                "matrix of step {label} is empty; list at least one combination, e.g. [{{lr: 0.1}}]"
            ),
        );
        return None;
    }
    if !check_trial_count(cx, at, Some(items.len())) {
        return None;
    }
    let mut ok = true;
    let mut names = MatrixNames::default();
    // (entry number, values by key) of each valid entry.
    let mut rows: Vec<(usize, BTreeMap<String, String>)> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        match check_matrix_entry(cx, n + 1, item, &mut names) {
            Some(row) => rows.push((n + 1, row)),
            None => ok = false,
        }
    }
    if let Some((first_entry, first)) = rows.first() {
        for (entry, row) in &rows[1..] {
            if row.keys().ne(first.keys()) {
                ok = false;
                let keys = |row: &BTreeMap<String, String>| {
                    row.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                cx.error(
                    at,
                    format!(
                        "matrix entry #{entry} of step {label} sets {} but entry #{first_entry} \
                         sets {}; every entry must set the same keys",
                        keys(row),
                        keys(first)
                    ),
                );
            }
        }
    }
    let mut seen: HashMap<Vec<&String>, usize> = HashMap::new();
    for (entry, row) in &rows {
        let values: Vec<&String> = row.values().collect();
        if let Some(earlier) = seen.get(&values) {
            ok = false;
            let combination: Vec<String> = row.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cx.error(
                at,
                format!(
                    "matrix entries #{earlier} and #{entry} of step {label} are the same \
                     combination ({}); every combination must be different",
                    combination.join(", ")
                ),
            );
        } else {
            seen.insert(values, *entry);
        }
    }
    if !ok {
        return None;
    }
    let keys: Vec<String> = rows
        .first()
        .map(|(_, row)| row.keys().cloned().collect())
        .unwrap_or_default();
    let rows = rows
        .into_iter()
        .map(|(_, row)| row.into_values().collect())
        .collect();
    Some(Matrix {
        keys,
        combinations: Combinations::List(rows),
    })
}

/// One combination of a list-form matrix: a non-empty map from names to scalars.
fn check_matrix_entry(
    cx: &StepContext<'_>,
    entry: usize,
    item: &Value,
    names: &mut MatrixNames,
) -> Option<BTreeMap<String, String>> {
    let label = cx.label;
    let at = cx.at("matrix", None);
    let Value::Mapping(map) = item else {
        cx.error(
            at,
            format!(
                "matrix entry #{entry} of step {label} is {}; each entry must be a map of \
                 values such as {{lr: 0.1, depth: 3}}",
                kind_of(item)
            ),
        );
        return None;
    };
    if map.is_empty() {
        cx.error(
            at,
            format!("matrix entry #{entry} of step {label} is empty"),
        );
        return None;
    }
    let mut ok = true;
    let mut row = BTreeMap::new();
    for (key, value) in map {
        let Some(name) = names.check(cx, key) else {
            ok = false;
            continue;
        };
        match scalar_text(value) {
            Some(text) => {
                row.insert(name, text);
            }
            None => {
                ok = false;
                let at = cx.at("matrix", Some(&name));
                cx.error(
                    at,
                    format!(
                        "value {name:?} of matrix entry #{entry} of step {label} is {}; matrix \
                         values must be strings, numbers or booleans",
                        kind_of(value)
                    ),
                );
            }
        }
    }
    ok.then_some(row)
}

/// Reports a matrix that expands to too many trials; `None` is an overflow.
fn check_trial_count(cx: &StepContext<'_>, at: Option<Pos>, count: Option<usize>) -> bool {
    let label = cx.label;
    let max = cx.ck.limits.max_trials_per_step;
    let count = match count {
        Some(n) if n <= max => return true,
        Some(n) => n.to_string(),
        None => format!("more than {}", usize::MAX),
    };
    cx.error(
        at,
        format!(
            "matrix of step {label} expands to {count} combinations; at most \
             {max} are allowed"
        ),
    );
    false
}

/// Checks the names of one matrix, each once however often it is written, and
/// that no two of them become the same environment variable.
#[derive(Default)]
struct MatrixNames {
    /// By the key as written (`describe_value`): the name, if valid.
    checked: HashMap<String, Option<String>>,
    /// `FERRY_MATRIX_<NAME>` → the name that became it.
    vars: BTreeMap<String, String>,
}

impl MatrixNames {
    fn check(&mut self, cx: &StepContext<'_>, key: &Value) -> Option<String> {
        let written = describe_value(key);
        if let Some(result) = self.checked.get(&written) {
            return result.clone();
        }
        let result = self.check_new(cx, key);
        self.checked.insert(written, result.clone());
        result
    }

    fn check_new(&mut self, cx: &StepContext<'_>, key: &Value) -> Option<String> {
        let label = cx.label;
        let name = key.as_str().filter(|n| is_param_name(n));
        let at = cx.at("matrix", scalar_text(key).as_deref());
        let Some(name) = name else {
            cx.error(
                at,
                format!(
                    "matrix key {} of step {label} is invalid: it must start with a letter or \
                     '_' and contain only letters, digits and '_'",
                    describe_value(key)
                ),
            );
            return None;
        };
        let var = env_var_name("FERRY_MATRIX_", name);
        if let Some(other) = self.vars.get(&var) {
            cx.error(
                at,
                format!(
                    "matrix keys {other:?} and {name:?} of step {label} both become the \
                     environment variable {var}"
                ),
            );
            return None;
        }
        self.vars.insert(var, name.to_string());
        Some(name.to_string())
    }
}
