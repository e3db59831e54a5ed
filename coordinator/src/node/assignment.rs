//! What a worker is sent for one attempt: command, environment, bundle, the
//! artifacts to stage (a gathering step's trials too, with their manifest) and
//! its GPUs. Pure functions of the state.

use std::collections::BTreeMap;

use ferry_common::proto;

use crate::state::{AttemptKey, State};

pub fn attempt_ref(key: &AttemptKey) -> proto::AttemptRef {
    proto::AttemptRef {
        run_id: key.run,
        step: key.step.clone(),
        attempt: key.attempt,
    }
}

fn resources_to_proto(resources: ferry_common::spec::Resources) -> proto::Resources {
    proto::Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        gpus: resources.gpus,
    }
}

/// The message a worker needs to run one attempt: command, environment, bundle,
/// the artifacts to stage as inputs, and the GPUs it may use.
pub fn build_assignment(state: &State, key: &AttemptKey) -> Option<proto::Assignment> {
    let run = state.runs.get(&key.run)?;
    let spec = run.spec(&key.step)?;
    let attempt = run
        .step(&key.step)?
        .attempts
        .iter()
        .find(|a| a.number == key.attempt)?;
    let mut inputs = Vec::new();
    for input in &spec.inputs {
        let artifact = state.resolve_output(key.run, &input.step, &input.output)?;
        let file_name = input
            .output
            .rsplit('/')
            .next()
            .unwrap_or(&input.output)
            .to_string();
        inputs.push(proto::InputFile {
            name: input.name.clone(),
            file_name,
            digest: artifact.digest.clone(),
            size: artifact.size,
        });
    }
    let mut env = spec.env.clone();
    // A step sees the parameters it names (they are what its cache key holds).
    for name in &spec.params {
        if let Some(value) = run.pipeline.params.get(name) {
            env.insert(
                ferry_common::spec::env_var_name("FERRY_PARAM_", name),
                value.clone(),
            );
        }
    }
    let gathers = spec
        .gather
        .iter()
        .map(|gather| gather_input(state, run, gather))
        .collect();
    Some(proto::Assignment {
        attempt: Some(attempt_ref(key)),
        command: spec.command.clone(),
        env: env.into_iter().collect(),
        bundle_digest: run.bundle_digest.clone(),
        inputs,
        outputs: spec.outputs.clone(),
        resources: Some(resources_to_proto(spec.resources)),
        gpu_indices: attempt.gpus.clone(),
        timeout_ms: spec.timeout_ms.unwrap_or(0),
        pipeline: run.pipeline.name.clone(),
        gathers,
        secrets: Vec::new(),
        container: spec
            .container
            .as_ref()
            .map(|container| proto::ContainerSpec {
                // Its cache key waits for the image's ID (see `State::image_resolved`).
                report_image: spec.cache.enabled,
                ..container_to_proto(container)
            }),
    })
}

/// The step's container settings as the worker receives them.
fn container_to_proto(container: &ferry_common::spec::ContainerSpec) -> proto::ContainerSpec {
    use ferry_common::spec::{ImagePull, Network};
    proto::ContainerSpec {
        image: container.image.clone(),
        pull: match container.pull {
            ImagePull::IfNotPresent => "if-not-present",
            ImagePull::Always => "always",
            ImagePull::Never => "never",
        }
        .to_string(),
        shm_size_bytes: container.shm_size_bytes.unwrap_or(0),
        network: match container.network {
            Network::Bridge => "bridge",
            Network::None => "none",
        }
        .to_string(),
        read_only_root: container.read_only_root,
        report_image: false,
    }
}

/// Every trial of the sweep `gather.step` for a gathering step: their output
/// files, and a manifest (`trials.json`) with each trial's values, outputs and
/// metrics (the last value of each), and the best trial when one was asked for.
fn gather_input(
    state: &State,
    run: &crate::state::Run,
    gather: &ferry_common::spec::Gather,
) -> proto::GatherInput {
    let mut files = Vec::new();
    let mut trials = Vec::new();
    let mut best: Option<(f64, String)> = None;
    for (index, (record, spec)) in run.steps.iter().zip(&run.pipeline.steps).enumerate() {
        let Some(trial) = spec.trial.as_ref().filter(|t| t.of == gather.step) else {
            continue;
        };
        let mut outputs = serde_json::Map::new();
        for artifact in &record.outputs {
            let path = format!("{}/{}", record.name, artifact.name);
            outputs.insert(artifact.name.clone(), serde_json::Value::from(path.clone()));
            files.push(proto::InputFile {
                name: path,
                file_name: artifact.name.clone(),
                digest: artifact.digest.clone(),
                size: artifact.size,
            });
        }
        let metrics = last_metrics(state, run, index);
        if let Some(by) = &gather.best
            && let Some(value) = metrics.get(&by.metric).copied()
            && !value.is_nan()
            && best
                .as_ref()
                .is_none_or(|(current, _)| by.goal.better(value, *current))
        {
            best = Some((value, record.name.clone()));
        }
        trials.push(serde_json::json!({
            "step": record.name,
            "index": trial.index,
            "values": trial.values,
            "state": record.state.as_str(),
            "dir": record.name,
            "outputs": outputs,
            "metrics": metrics,
        }));
    }
    let best_trial = best.map(|(_, name)| name).unwrap_or_default();
    let manifest = serde_json::json!({
        "step": gather.step,
        "best": if best_trial.is_empty() { serde_json::Value::Null } else { best_trial.clone().into() },
        "metric": gather.best.as_ref().map(|b| b.metric.clone()),
        "goal": gather.best.as_ref().map(|b| b.goal.as_str()),
        "trials": trials,
    });
    proto::GatherInput {
        step: gather.step.clone(),
        files,
        manifest_json: serde_json::to_string_pretty(&manifest).expect("the manifest serializes"),
        best_trial,
    }
}

/// The last value of each metric the attempt that produced a step's result
/// reported (following a cached or reused step to the one that ran).
fn last_metrics(state: &State, run: &crate::state::Run, index: usize) -> BTreeMap<String, f64> {
    state
        .producing_attempt(run, index)
        .map(|attempt| {
            attempt
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.value))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::spec::{ContainerSpec, ImagePull, Network};

    #[test]
    fn a_steps_container_settings_travel_to_the_worker_as_written() {
        let spec = ContainerSpec {
            image: "python:3.11-slim".into(),
            pull: ImagePull::Never,
            shm_size_bytes: Some(1 << 30),
            network: Network::None,
            read_only_root: true,
        };
        assert_eq!(
            container_to_proto(&spec),
            proto::ContainerSpec {
                image: "python:3.11-slim".into(),
                pull: "never".into(),
                shm_size_bytes: 1 << 30,
                network: "none".into(),
                read_only_root: true,
                report_image: false,
            }
        );
        let defaults = ContainerSpec {
            image: "busybox".into(),
            pull: ImagePull::default(),
            shm_size_bytes: None,
            network: Network::default(),
            read_only_root: false,
        };
        let sent = container_to_proto(&defaults);
        assert_eq!(
            (
                sent.pull.as_str(),
                sent.shm_size_bytes,
                sent.network.as_str()
            ),
            ("if-not-present", 0, "bridge")
        );
        let always = ContainerSpec {
            pull: ImagePull::Always,
            ..defaults
        };
        assert_eq!(container_to_proto(&always).pull, "always");
    }
}
