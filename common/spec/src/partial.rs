//! A step as checked on its own, before it is looked at together with the
//! other steps (references, gathers) and expanded into trials.

use std::collections::BTreeMap;

use super::matrix::Matrix;
use super::template::Template;
use super::types::{CacheSpec, Gather, GpuConstraint, Resources};

/// What one step resolves to on its own, before looking at other steps.
pub(super) struct Partial {
    pub(super) name: String,
    /// Parameters substituted; matrix values still to fill in per trial.
    pub(super) command: Vec<Template>,
    pub(super) outputs: Vec<String>,
    pub(super) env: BTreeMap<String, Template>,
    pub(super) resources: Resources,
    pub(super) retries: u32,
    pub(super) timeout_ms: Option<u64>,
    pub(super) gpu: GpuConstraint,
    pub(super) node_selector: BTreeMap<String, String>,
    pub(super) retry_backoff_ms: u64,
    /// Named in the step's texts or listed under its `params`; sorted.
    pub(super) params: Vec<String>,
    pub(super) cache: CacheSpec,
    /// `None` for a plain step, and for a step whose matrix is invalid.
    pub(super) matrix: Option<Matrix>,
    pub(super) max_parallel: Option<u32>,
    /// As written: the gathered steps are checked against the others later.
    pub(super) gather: Vec<Gather>,
    pub(super) secrets: Vec<crate::SecretUse>,
    pub(super) container: Option<super::types::ContainerSpec>,
}
