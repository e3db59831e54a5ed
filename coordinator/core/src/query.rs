//! `ferry runs --where`: conditions on a run's parameters and metrics.

use std::collections::BTreeMap;

/// One condition: `NAME OP VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub name: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Parses `accuracy>0.9,seed=42` (conditions joined by `,` or ` and `; all must
/// hold). Operators: `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=`.
pub fn parse_where(text: &str) -> Result<Vec<Condition>, String> {
    let mut conditions = Vec::new();
    let text = text.replace(" and ", ",").replace(" AND ", ",");
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(at) = part.find(['=', '!', '<', '>']) else {
            return Err(format!(
                "--where {part:?}: expected NAME OP VALUE with OP one of = != < <= > >= \
                 (e.g. accuracy>0.9)"
            ));
        };
        let name = part[..at].trim();
        let rest = &part[at..];
        let (op, len) = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(token, _)| rest.starts_with(token))
        .map(|(token, op)| (op, token.len()))
        .ok_or_else(|| format!("--where {part:?}: {rest:?} does not start with an operator"))?;
        let value = rest[len..].trim();
        if name.is_empty() || value.is_empty() {
            return Err(format!(
                "--where {part:?}: a condition needs a name and a value (e.g. accuracy>0.9)"
            ));
        }
        // `acc=>1`, `acc=<1`, `acc<>1`: an operator typed the wrong way round,
        // not a comparison with the text ">1".
        if let Some(odd) = value
            .chars()
            .next()
            .filter(|c| matches!(c, '=' | '<' | '>' | '!'))
        {
            return Err(format!(
                "--where {part:?}: {:?} is not an operator; use one of = != < <= > >= \
                 (a value cannot start with {odd:?})",
                &rest[..len + odd.len_utf8()]
            ));
        }
        if !matches!(op, Op::Eq | Op::Ne) && value.parse::<f64>().is_err() {
            return Err(format!(
                "--where {part:?}: {value:?} is not a number; only = and != compare text"
            ));
        }
        conditions.push(Condition {
            name: name.to_string(),
            op,
            value: value.to_string(),
        });
    }
    if conditions.is_empty() {
        return Err("--where is empty; give conditions such as accuracy>0.9".to_string());
    }
    Ok(conditions)
}

/// Whether a run with these metrics and parameters meets every condition. A
/// name is looked up among metrics first, then parameters; a run that has
/// neither does not match. Numbers compare as numbers, anything else as text.
pub fn matches(
    conditions: &[Condition],
    metrics: &BTreeMap<String, f64>,
    params: &BTreeMap<String, String>,
) -> bool {
    conditions.iter().all(|c| {
        let (number, text) = match (metrics.get(&c.name), params.get(&c.name)) {
            (Some(value), _) => (Some(*value), value.to_string()),
            (None, Some(text)) => (text.parse::<f64>().ok(), text.clone()),
            (None, None) => return false,
        };
        match (number, c.value.parse::<f64>().ok()) {
            (Some(have), Some(want)) => match c.op {
                Op::Eq => have == want,
                Op::Ne => have != want,
                Op::Lt => have < want,
                Op::Le => have <= want,
                Op::Gt => have > want,
                Op::Ge => have >= want,
            },
            _ => match c.op {
                Op::Eq => text == c.value,
                Op::Ne => text != c.value,
                _ => false,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_match_metrics_then_params() {
        let conditions = parse_where("accuracy>0.9, seed=42 and model != knn").unwrap();
        assert_eq!(conditions.len(), 3);
        assert_eq!(conditions[0].op, Op::Gt);
        let metrics = BTreeMap::from([("accuracy".to_string(), 0.95)]);
        let mut params = BTreeMap::from([
            ("seed".to_string(), "42".to_string()),
            ("model".to_string(), "svm".to_string()),
        ]);
        assert!(matches(&conditions, &metrics, &params));
        params.insert("model".into(), "knn".into());
        assert!(!matches(&conditions, &metrics, &params));
        let low = BTreeMap::from([("accuracy".to_string(), 0.5)]);
        assert!(!matches(
            &parse_where("accuracy>=0.9").unwrap(),
            &low,
            &params
        ));
        assert!(matches(
            &parse_where("accuracy<=0.5").unwrap(),
            &low,
            &params
        ));
        // Unknown names never match.
        assert!(!matches(&parse_where("loss<1").unwrap(), &low, &params));
        // Numbers compare as numbers: 42.0 = 42.
        assert!(matches(&parse_where("seed==42.0").unwrap(), &low, &params));
    }

    #[test]
    fn bad_conditions_are_refused_with_the_reason() {
        assert!(
            parse_where("accuracy")
                .unwrap_err()
                .contains("NAME OP VALUE")
        );
        assert!(parse_where(">0.9").unwrap_err().contains("needs a name"));
        assert!(
            parse_where("model>knn")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_where(" , ").unwrap_err().contains("empty"));
        for typo in ["acc=>1", "acc=<1", "acc<>1", "acc>>1", "acc===1"] {
            let error = parse_where(typo).unwrap_err();
            assert!(error.contains("is not an operator"), "{typo}: {error}");
        }
        assert_eq!(
            parse_where("acc=>1").unwrap_err(),
            "--where \"acc=>1\": \"=>\" is not an operator; use one of = != < <= > >= \
             (a value cannot start with '>')"
        );
    }
}
