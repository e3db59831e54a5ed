//! What a submission is checked against, defined once for the CLI and the
//! coordinators: against the limits in force ([`SubmitLimits`], the
//! coordinators' `[limits]`, which `ferry` asks for with `GetLimits` before it
//! uploads anything), [`parse_submission`] (the pipeline file's size, then every check
//! of [`parse_pipeline_within`]), and [`schedule_problem`] (a schedule's name and
//! cron expression). Both sides call these functions, so the CLI refuses what
//! the coordinator would refuse, with the same words, before any upload.

use std::collections::BTreeMap;

use super::cron::Cron;
use super::limits::SubmitLimits;
use super::pipeline::parse_pipeline_within;
use super::types::{Pipeline, SpecError};

/// Checks a submitted pipeline file against `limits` and parses it: its size
/// first (an oversize file is not parsed), then every check of
/// [`parse_pipeline_within`]. The one check of a submission's pipeline, made by
/// `ferry` before it uploads anything and by the coordinator that receives it.
pub fn parse_submission(
    limits: &SubmitLimits,
    file_name: &str,
    yaml: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Pipeline, SpecError> {
    if yaml.len() > limits.max_spec_bytes {
        return Err(SpecError::single(
            file_name,
            format!(
                "the pipeline file is {} bytes; the limit is {}",
                yaml.len(),
                limits.max_spec_bytes
            ),
        ));
    }
    parse_pipeline_within(file_name, yaml, overrides, limits)
}

/// Why a schedule named `name` firing on `cron` cannot be created at `now_ms`,
/// if it cannot: a bad name, a bad cron expression, or one that never fires.
pub fn schedule_problem(name: &str, cron: &str, now_ms: i64) -> Option<String> {
    let valid_name = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid_name {
        return Some(format!(
            "schedule name {name:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '_', \
             '.', '-'"
        ));
    }
    let cron = match Cron::parse(cron) {
        Ok(cron) => cron,
        Err(error) => return Some(error),
    };
    if cron.next_after(now_ms).is_none() {
        return Some(format!(
            "cron expression {:?} never fires: no date in the next 8 years matches it",
            cron.expr()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_SPEC_BYTES_CEILING;

    fn steps(n: usize) -> String {
        let mut yaml = String::from("name: p\nsteps:\n");
        for i in 0..n {
            yaml.push_str(&format!("  - name: s{i}\n    command: [\"true\"]\n"));
        }
        yaml
    }

    fn message(error: SpecError) -> String {
        error.to_string()
    }

    #[test]
    fn defaults_hold_100_000_steps_and_10_000_trials() {
        let limits = SubmitLimits::default();
        assert_eq!(limits.max_spec_bytes, 8 * 1024 * 1024);
        assert_eq!(limits.max_steps, 100_000);
        assert_eq!(limits.max_trials_per_step, 10_000);
        assert_eq!(limits.max_expanded_bytes, 48 * 1024 * 1024);
        assert_eq!(limits.problem(), None);
    }

    #[test]
    fn an_oversize_file_is_refused_before_it_is_parsed() {
        let limits = SubmitLimits {
            max_spec_bytes: 16,
            ..SubmitLimits::default()
        };
        // Not YAML at all: the size is what is reported.
        let text = "{{{ not yaml ".repeat(4);
        let error =
            message(parse_submission(&limits, "p.yaml", &text, &BTreeMap::new()).unwrap_err());
        assert!(
            error.contains("the pipeline file is 52 bytes; the limit is 16"),
            "{error}"
        );
    }

    #[test]
    fn counts_follow_the_limits() {
        let yaml = steps(3);
        let tight = SubmitLimits {
            max_steps: 2,
            max_trials_per_step: 2,
            ..SubmitLimits::default()
        };
        let error =
            message(parse_submission(&tight, "p.yaml", &yaml, &BTreeMap::new()).unwrap_err());
        assert!(
            error.contains("the pipeline has 3 steps; at most 2 are allowed"),
            "{error}"
        );
        let roomy = SubmitLimits {
            max_steps: 3,
            ..tight
        };
        assert!(parse_submission(&roomy, "p.yaml", &yaml, &BTreeMap::new()).is_ok());

        let sweep = "name: p\nsteps:\n  - name: s\n    matrix:\n      x: [1, 2, 3]\n    \
                     command: [\"true\"]\n";
        let error =
            message(parse_submission(&roomy, "p.yaml", sweep, &BTreeMap::new()).unwrap_err());
        assert!(
            error.contains("expands to 3 combinations; at most 2 are allowed"),
            "{error}"
        );
        let small = SubmitLimits {
            max_expanded_bytes: 100,
            ..SubmitLimits::default()
        };
        let error =
            message(parse_submission(&small, "p.yaml", &yaml, &BTreeMap::new()).unwrap_err());
        assert!(error.contains("at most 100 B are allowed"), "{error}");
    }

    #[test]
    fn bad_limits_name_their_key() {
        let zero = SubmitLimits {
            max_steps: 0,
            ..SubmitLimits::default()
        };
        assert_eq!(
            zero.problem(),
            Some(("max_steps", "must be at least 1 (it is 0)".to_string()))
        );
        let huge = SubmitLimits {
            max_spec_bytes: MAX_SPEC_BYTES_CEILING + 1,
            ..SubmitLimits::default()
        };
        assert_eq!(huge.problem().map(|p| p.0), Some("max_spec_bytes"));
        let trials = SubmitLimits {
            max_steps: 10,
            max_trials_per_step: 11,
            ..SubmitLimits::default()
        };
        assert_eq!(trials.problem().map(|p| p.0), Some("max_trials_per_step"));
    }

    #[test]
    fn schedules_are_checked_once() {
        assert_eq!(schedule_problem("nightly", "0 3 * * *", 0), None);
        assert!(
            schedule_problem("bad name", "0 3 * * *", 0)
                .unwrap()
                .contains("schedule name \"bad name\" is invalid")
        );
        assert!(schedule_problem("x", "not cron", 0).is_some());
        assert!(
            schedule_problem("x", "0 0 30 2 *", 0)
                .unwrap()
                .contains("never fires")
        );
    }
}
