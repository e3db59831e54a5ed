//! Lineage: where an artifact came from, down to code bundles and parameters.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{InputRecord, RunId, State, StepState};

/// The step that produced one artifact, and what it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageNode {
    pub digest: String,
    /// The output's name (`model.json`).
    pub name: String,
    pub size: u64,
    pub run: RunId,
    pub step: String,
    pub attempt: u32,
    pub command: Vec<String>,
    pub bundle_digest: String,
    /// What stood for the code in the step's cache key (the bundle, or the
    /// digest of its `cache.paths`).
    pub code_digest: String,
    /// The values of the parameters the step sees, and of its matrix trial.
    pub params: BTreeMap<String, String>,
    pub matrix: BTreeMap<String, String>,
    pub inputs: Vec<InputRecord>,
}

impl State {
    /// Per artifact digest, the step that first produced it (not one that
    /// reused it): run, step index and output index.
    fn producers(&self) -> BTreeMap<&str, (RunId, usize, usize)> {
        let mut producers = BTreeMap::new();
        for run in self.runs.values() {
            for (i, step) in run.steps.iter().enumerate() {
                if step.reused.is_some() || step.state != StepState::Succeeded {
                    continue;
                }
                for (o, artifact) in step.outputs.iter().enumerate() {
                    producers
                        .entry(artifact.digest.as_str())
                        .or_insert((run.id, i, o));
                }
            }
        }
        producers
    }

    /// The ancestry of an artifact, breadth first from it: one node per artifact
    /// that a known step produced (inputs no step produced end the walk). `None`
    /// when no step produced `digest`.
    pub fn lineage(&self, digest: &str) -> Option<Vec<LineageNode>> {
        let producers = self.producers();
        producers.get(digest)?;
        let mut nodes = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([digest.to_string()]);
        while let Some(digest) = queue.pop_front() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Some(&(run_id, index, output)) = producers.get(digest.as_str()) else {
                continue;
            };
            let run = &self.runs[&run_id];
            let record = &run.steps[index];
            let spec = &run.pipeline.steps[index];
            let artifact = &record.outputs[output];
            for input in &record.inputs {
                queue.push_back(input.digest.clone());
            }
            nodes.push(LineageNode {
                digest: digest.clone(),
                name: artifact.name.clone(),
                size: artifact.size,
                run: run_id,
                step: record.name.clone(),
                attempt: artifact.attempt,
                command: spec.command.clone(),
                bundle_digest: run.bundle_digest.clone(),
                code_digest: run.code_digest(&spec.name).to_string(),
                params: spec
                    .params
                    .iter()
                    .filter_map(|p| Some((p.clone(), run.pipeline.params.get(p)?.clone())))
                    .collect(),
                matrix: spec
                    .trial
                    .as_ref()
                    .map(|t| t.values.clone())
                    .unwrap_or_default(),
                inputs: record.inputs.clone(),
            });
        }
        Some(nodes)
    }
}
