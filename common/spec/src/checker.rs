//! The diagnostics sink of one spec file ([`Checker`]), the step a check is
//! about ([`StepContext`]), and the duration check shared by the pipeline's and
//! its steps' fields.

use std::cell::RefCell;

use serde_yaml::Value;

use super::limits::SubmitLimits;
use super::locate::{Locator, Pos};
use super::raw::kind_of;
use super::types::Diagnostic;
use super::units::parse_duration_ms;

/// Collects the diagnostics of one spec file, located with its [`Locator`].
pub(super) struct Checker<'a> {
    file: &'a str,
    pub(super) loc: Locator<'a>,
    /// The limits in force (the coordinators' `[limits]`).
    pub(super) limits: SubmitLimits,
    /// Behind a `RefCell` so that checks can report through a shared reference,
    /// which lets a [`StepContext`] hold the checker next to the step it is about.
    /// The list is only borrowed inside [`Checker::error`], so borrows never
    /// overlap.
    diagnostics: RefCell<Vec<Diagnostic>>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(file: &'a str, loc: Locator<'a>, limits: SubmitLimits) -> Self {
        Checker {
            file,
            loc,
            limits,
            diagnostics: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn error(&self, at: Option<Pos>, message: String) {
        self.diagnostics.borrow_mut().push(Diagnostic {
            file: self.file.to_string(),
            line: at.map(|p| p.0),
            column: at.map(|p| p.1),
            message,
        });
    }

    /// Every diagnostic reported, in the order reported.
    pub(super) fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics.into_inner()
    }
}

/// The step a check is about: where to report, which step it is (its position
/// under `steps:` and its name, for locating), and how messages name it.
#[derive(Clone, Copy)]
pub(super) struct StepContext<'a> {
    pub(super) ck: &'a Checker<'a>,
    /// The step's position under `steps:` (0-based).
    pub(super) i: usize,
    /// The step's name as written, if it has one.
    pub(super) me: Option<&'a str>,
    /// The step as messages name it: its name quoted (`"train"`), or `#2` for a
    /// step without a name.
    pub(super) label: &'a str,
}

impl StepContext<'_> {
    /// `token` within field `key` of the step, else the field, else `token`
    /// anywhere in the step, else the step's head (see [`Locator::step`]).
    pub(super) fn at(&self, key: &str, token: Option<&str>) -> Option<Pos> {
        self.ck.loc.step(self.i, self.me, key, token)
    }

    /// The start of the step: its `name` value, or its `-`.
    pub(super) fn head(&self) -> Option<Pos> {
        self.ck.loc.step_head(self.i, self.me)
    }

    pub(super) fn error(&self, at: Option<Pos>, message: String) {
        self.ck.error(at, message);
    }
}

/// A duration field (`30s`, `10m`, `1h30m`): a positive number of milliseconds,
/// or an error naming `what` and saying how to write one.
pub(super) fn check_duration(
    ck: &Checker<'_>,
    at: Option<Pos>,
    what: &str,
    v: &Value,
) -> Option<u64> {
    match v {
        Value::String(s) => match parse_duration_ms(s) {
            Ok(0) => ck.error(at, format!("{what} must be greater than zero")),
            Ok(ms) => return Some(ms),
            Err(e) => ck.error(at, format!("{what} is invalid: {e}")),
        },
        Value::Number(n) => ck.error(
            at,
            format!("{what} is {n}, which has no unit; write e.g. \"{n}s\" or \"{n}m\""),
        ),
        other => ck.error(
            at,
            format!(
                "{what} is {}; write a duration such as \"30s\", \"10m\" or \"1h30m\"",
                kind_of(other)
            ),
        ),
    }
    None
}
