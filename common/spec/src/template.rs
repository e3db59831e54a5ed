//! Templates: `${params.NAME}` substitution in a step's command, shell and env,
//! with `${matrix.NAME}` kept for each trial to fill in, and the diagnostics of
//! placeholders that cannot be resolved.

use std::collections::{BTreeMap, BTreeSet};

use super::checker::StepContext;
use super::names::is_param_name;
use super::suggest::{did_you_mean, suggest};

/// A problem with a `${...}` placeholder.
enum PlaceholderError {
    Unclosed(String),
    Malformed(String),
    /// `${params.NAME}` of an undeclared parameter.
    Unknown {
        raw: String,
        name: String,
    },
    /// `${matrix.NAME}` of a key the step's matrix does not define.
    UnknownMatrixKey {
        raw: String,
        name: String,
    },
    /// `${matrix.NAME}` in a step without `matrix`.
    NoMatrix(String),
}

/// Text with its parameters substituted and its `${matrix.NAME}` placeholders
/// left to be filled in for each trial, so that a value is never substituted
/// into twice.
#[derive(Debug, Clone, Default)]
pub(super) struct Template {
    pub(super) parts: Vec<TemplatePart>,
}

/// Literal text, or the value of matrix key `name` in the trial being rendered.
#[derive(Debug, Clone)]
pub(super) enum TemplatePart {
    Text(String),
    MatrixValue(String),
}

impl Template {
    pub(super) fn literal(text: &str) -> Self {
        let mut template = Template::default();
        template.push_text(text);
        template
    }

    fn push_text(&mut self, text: &str) {
        match self.parts.last_mut() {
            Some(TemplatePart::Text(last)) => last.push_str(text),
            _ if text.is_empty() => {}
            _ => self.parts.push(TemplatePart::Text(text.to_string())),
        }
    }

    /// Whether the text is only whitespace whatever the matrix values.
    pub(super) fn is_blank(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, TemplatePart::Text(t) if t.trim().is_empty()))
    }

    /// The text with the matrix values of one trial (none for a plain step).
    pub(super) fn render(&self, matrix_values: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(text) => out.push_str(text),
                TemplatePart::MatrixValue(name) => {
                    out.push_str(matrix_values.get(name).map_or("", String::as_str));
                }
            }
        }
        out
    }
}

/// What the placeholders of one step may name.
#[derive(Clone, Copy)]
pub(super) struct Scope<'a> {
    pub(super) params: &'a BTreeMap<String, String>,
    /// The keys of the step's matrix; `None` for a step without `matrix`.
    pub(super) matrix_keys: Option<&'a BTreeSet<String>>,
}

/// Substitutes `${params.NAME}` placeholders and keeps `${matrix.NAME}` ones for
/// later; only `${` starts a placeholder. Adds every parameter named to `used`.
fn substitute(
    text: &str,
    scope: Scope<'_>,
    used: &mut BTreeSet<String>,
) -> Result<Template, Vec<PlaceholderError>> {
    let mut out = Template::default();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_text(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            errors.push(PlaceholderError::Unclosed(rest[start..].to_string()));
            rest = "";
            break;
        };
        let inner = &after[..end];
        let raw = &rest[start..start + 2 + end + 1];
        let param = inner.strip_prefix("params.").filter(|n| is_param_name(n));
        let matrix_key = inner.strip_prefix("matrix.").filter(|n| is_param_name(n));
        match (param, matrix_key) {
            (Some(name), _) => match scope.params.get(name) {
                Some(value) => {
                    out.push_text(value);
                    used.insert(name.to_string());
                }
                None => errors.push(PlaceholderError::Unknown {
                    raw: raw.to_string(),
                    name: name.to_string(),
                }),
            },
            (None, Some(name)) => match scope.matrix_keys {
                Some(keys) if keys.contains(name) => {
                    out.parts.push(TemplatePart::MatrixValue(name.to_string()));
                }
                Some(_) => errors.push(PlaceholderError::UnknownMatrixKey {
                    raw: raw.to_string(),
                    name: name.to_string(),
                }),
                None => errors.push(PlaceholderError::NoMatrix(raw.to_string())),
            },
            (None, None) => errors.push(PlaceholderError::Malformed(raw.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_text(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Substitutes the placeholders in the texts of one step (command, shell, env)
/// and remembers the parameters they name.
pub(super) struct StepText<'a> {
    pub(super) scope: Scope<'a>,
    /// Parameters named so far.
    pub(super) used_params: BTreeSet<String>,
}

impl StepText<'_> {
    /// `text` with its placeholders substituted, reporting problems as being in
    /// `what` (e.g. `the command of step "x"`), located in field `key` of the step.
    pub(super) fn substitute(
        &mut self,
        cx: &StepContext<'_>,
        key: &str,
        what: &str,
        text: &str,
    ) -> Template {
        match substitute(text, self.scope, &mut self.used_params) {
            Ok(template) => template,
            Err(errors) => {
                for error in errors {
                    self.report(cx, key, what, error);
                }
                Template::default()
            }
        }
    }

    fn report(&self, cx: &StepContext<'_>, key: &str, what: &str, error: PlaceholderError) {
        match error {
            PlaceholderError::Unclosed(raw) => {
                let token = raw.lines().next().unwrap_or_default().trim_end();
                let at = cx.at(key, Some(token));
                cx.error(
                    at,
                    format!("placeholder {raw:?} in {what} is not closed (missing '}}')"),
                );
            }
            PlaceholderError::Malformed(raw) => {
                let at = cx.at(key, Some(&raw));
                let forms = if self.scope.matrix_keys.is_some() {
                    "${params.NAME} or ${matrix.NAME}"
                } else {
                    "${params.NAME}"
                };
                cx.error(
                    at,
                    format!("placeholder {raw:?} in {what} is not of the form {forms}"),
                );
            }
            PlaceholderError::Unknown { raw, name } => {
                let at = cx.at(key, Some(&raw));
                let names = self.scope.params.keys().map(String::as_str);
                let hint = did_you_mean(suggest(&name, names));
                cx.error(
                    at,
                    format!(
                        "{raw} in {what} refers to parameter {name:?}, which is not \
                         declared{hint}"
                    ),
                );
            }
            PlaceholderError::UnknownMatrixKey { raw, name } => {
                let at = cx.at(key, Some(&raw));
                let keys = self.scope.matrix_keys.into_iter().flatten();
                let hint = match suggest(&name, keys.clone().map(String::as_str)) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!(
                        "it defines: {}",
                        keys.map(String::as_str).collect::<Vec<_>>().join(", ")
                    ),
                };
                cx.error(
                    at,
                    format!(
                        "{raw} in {what} refers to matrix key {name:?}, which the step's \
                         matrix does not define ({hint})"
                    ),
                );
            }
            PlaceholderError::NoMatrix(raw) => {
                let at = cx.at(key, Some(&raw));
                cx.error(
                    at,
                    format!(
                        "{raw} in {what} refers to a matrix value, but the step has no \
                         `matrix` (add e.g. `matrix: {{lr: [0.1, 0.01]}}`)"
                    ),
                );
            }
        }
    }
}
