//! Names: which pipeline, step, input and parameter names are valid, how a name
//! becomes an environment variable, and `--param NAME=VALUE` on the command line.

use super::MAX_NAME_LEN;
use super::types::{COMMAND_LINE, SpecError};

/// Parses one `--param NAME=VALUE` argument. The value may be empty and may contain
/// `=`; the name must be a valid parameter name.
pub fn parse_param_override(text: &str) -> Result<(String, String), SpecError> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(SpecError::single(
            COMMAND_LINE,
            format!(
                "--param {} is not of the form NAME=VALUE (e.g. --param seed=42)",
                super::limits::shown_value(text)
            ),
        ));
    };
    if !is_param_name(name) {
        return Err(SpecError::single(
            COMMAND_LINE,
            format!(
                "--param {}: {} is not a valid parameter name \
                 (letters, digits and '_', not starting with a digit)",
                super::limits::shown_value(text),
                super::limits::shown_value(name)
            ),
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Environment variable naming: `prefix` followed by `name` upper-cased, with every
/// character outside `[A-Z0-9_]` replaced by `_`. A `_` is inserted after a
/// non-empty prefix that does not end with one, so `("FERRY_INPUT", "model")` and
/// `("FERRY_INPUT_", "model")` both give `FERRY_INPUT_MODEL`.
pub fn env_var_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len() + 1);
    out.push_str(prefix);
    if !prefix.is_empty() && !prefix.ends_with('_') {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// `[A-Za-z0-9_.-]`, 1 to [`MAX_NAME_LEN`] bytes: pipeline and project names.
pub(super) fn is_pipeline_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[A-Za-z0-9_-]`, 1 to [`MAX_NAME_LEN`] bytes: no `.`, which separates a matrix
/// step from the index of its trial (`train.3`).
pub(super) fn is_step_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// `[A-Za-z0-9_]+`: the local names of inputs.
pub(super) fn is_input_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[A-Za-z_][A-Za-z0-9_]*`: parameter and env var names.
pub(super) fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The rule a name broke, for a message; `chars` lists the allowed characters.
pub(super) fn describe_name_rule(chars: &str) -> String {
    format!("use 1 to {MAX_NAME_LEN} characters from {chars}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_override_parsing() {
        assert_eq!(
            parse_param_override("seed=42").unwrap(),
            ("seed".to_string(), "42".to_string())
        );
        assert_eq!(
            parse_param_override("q=a=b").unwrap(),
            ("q".to_string(), "a=b".to_string())
        );
        assert_eq!(
            parse_param_override("empty=").unwrap(),
            ("empty".to_string(), String::new())
        );
        let e = parse_param_override("seed").unwrap_err();
        assert!(e.to_string().contains("\"seed\""), "{e}");
        assert!(e.to_string().contains("NAME=VALUE"), "{e}");
        let e = parse_param_override("=3").unwrap_err();
        assert!(e.to_string().contains("not a valid parameter name"), "{e}");
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("FERRY_INPUT_", "model"), "FERRY_INPUT_MODEL");
        assert_eq!(env_var_name("FERRY_INPUT", "model"), "FERRY_INPUT_MODEL");
        assert_eq!(
            env_var_name("FERRY_PARAM_", "test-fraction.x"),
            "FERRY_PARAM_TEST_FRACTION_X"
        );
        assert_eq!(env_var_name("", "a b"), "A_B");
        assert_eq!(env_var_name("P_", "é1"), "P__1");
    }
}
