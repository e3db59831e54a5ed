//! What a step's container is made of, as plain values: the worker's
//! `container_runtime` and `container_user` settings, the image pull policy,
//! and the Docker create request built from an assignment's parts (the command,
//! the environment, the work directory bind-mounted at its own path, the limits,
//! the hardening, the labels that tie the container to its attempt). No IO.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType};
use ferry_common::proto;
use serde::Deserialize;

/// Labels every container of Ferry's carries.
pub const LABEL_RUN: &str = "ferry.run";
pub const LABEL_STEP: &str = "ferry.step";
pub const LABEL_ATTEMPT: &str = "ferry.attempt";
pub const LABEL_WORKER: &str = "ferry.worker";
/// The worker's name and a hash of its data directory: two workers of the
/// same name (two clusters on one host) never take each other's containers
/// for leftovers.
pub const LABEL_WORKER_ID: &str = "ferry.worker-id";

/// `container_runtime` in `worker.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntimeMode {
    /// Docker when its socket answers at start, else none.
    #[default]
    Auto,
    /// Docker, or the worker does not start.
    Docker,
    /// No container runtime: steps with an image never come here.
    None,
}

/// Who a container step runs as, by number (the image's user names mean
/// nothing to the host that owns the work directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerUser {
    pub uid: u32,
    pub gid: u32,
}

impl Default for ContainerUser {
    /// nobody:nogroup.
    fn default() -> Self {
        ContainerUser {
            uid: 65534,
            gid: 65534,
        }
    }
}

impl ContainerUser {
    /// `UID` (the group is the same number) or `UID:GID`.
    pub fn parse(text: &str) -> Result<ContainerUser, String> {
        let number = |part: &str| {
            part.parse::<u32>().map_err(|_| {
                format!(
                    "{part:?} is not a number; write UID or UID:GID, e.g. \"65534:65534\" \
                     (names inside an image cannot be resolved by the worker)"
                )
            })
        };
        match text.split(':').collect::<Vec<_>>().as_slice() {
            [uid] => {
                let uid = number(uid)?;
                Ok(ContainerUser { uid, gid: uid })
            }
            [uid, gid] => Ok(ContainerUser {
                uid: number(uid)?,
                gid: number(gid)?,
            }),
            _ => Err("write UID or UID:GID, e.g. \"65534:65534\"".into()),
        }
    }

    /// As Docker takes it.
    pub fn docker_form(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// `image_pull` as the assignment carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    IfNotPresent,
    Always,
    Never,
}

impl PullPolicy {
    /// An empty or unknown word is the default, `if-not-present`: the spec was
    /// validated by the coordinator.
    pub fn from_assignment(pull: &str) -> PullPolicy {
        match pull {
            "always" => PullPolicy::Always,
            "never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Splits an image reference into what Docker's pull takes: the name and the
/// tag (`latest` when none is written); a digest reference keeps its digest in
/// the name and has no tag.
pub fn pull_parts(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    // A colon after the last slash separates the tag; one before it belongs to
    // a registry's port.
    let last_part = image.rsplit('/').next().unwrap_or(image);
    match last_part.rsplit_once(':') {
        Some((_, tag)) => {
            let name = &image[..image.len() - tag.len() - 1];
            (name.to_string(), Some(tag.to_string()))
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

/// Everything one attempt's container is made from.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// The resolved image ID (`sha256:…`), so that the container runs exactly
    /// the image that was resolved.
    pub image_id: String,
    pub command: Vec<String>,
    /// The step's whole environment: nothing of the worker daemon's.
    pub env: BTreeMap<String, String>,
    /// Mounted read-write at its own path, and the container's working directory.
    pub work_dir: PathBuf,
    /// Further host paths mounted at their own path (the metrics file, the
    /// secrets directory), with whether they are read-only.
    pub extra_mounts: Vec<(PathBuf, bool)>,
    pub user: ContainerUser,
    pub cpu_millis: u64,
    /// The kernel's memory limit for the container (no swap beyond it).
    pub memory_limit: Option<u64>,
    pub pids_max: u64,
    pub shm_size_bytes: u64,
    /// `bridge` or `none`.
    pub network: String,
    pub read_only_root: bool,
    /// The GPUs the step may open, by UUID (or index where no UUID is known).
    pub gpu_devices: Vec<String>,
    pub labels: AttemptLabels,
}

/// What ties a container to its attempt and its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLabels {
    pub run: u64,
    pub step: String,
    pub attempt: u32,
    pub worker: String,
    pub worker_id: String,
}

impl AttemptLabels {
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_RUN.to_string(), self.run.to_string()),
            (LABEL_STEP.to_string(), self.step.clone()),
            (LABEL_ATTEMPT.to_string(), self.attempt.to_string()),
            (LABEL_WORKER.to_string(), self.worker.clone()),
            (LABEL_WORKER_ID.to_string(), self.worker_id.clone()),
        ])
    }
}

/// The network mode of an assignment's `network` ("bridge" when unset).
pub fn network_mode(spec: &proto::ContainerSpec) -> String {
    match spec.network.as_str() {
        "none" => "none".into(),
        _ => "bridge".into(),
    }
}

/// Docker's create request for `plan`: the command replaces the image's
/// entrypoint (a step's `command` is the whole command line) and runs under
/// the engine's init, every capability is dropped, privileges can never be gained, auto-removal is off
/// (the worker reads the exit state first, then removes the container and its
/// anonymous volumes).
pub fn container_body(plan: &ContainerPlan) -> ContainerCreateBody {
    let bind = |path: &PathBuf, read_only: bool| Mount {
        target: Some(path.display().to_string()),
        source: Some(path.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    let mut mounts = vec![bind(&plan.work_dir, false)];
    mounts.extend(plan.extra_mounts.iter().map(|(path, ro)| bind(path, *ro)));
    let memory = plan.memory_limit.map(|limit| limit as i64);
    let device_requests = (!plan.gpu_devices.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(plan.gpu_devices.clone()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    // A read-only root still needs somewhere for temporary files.
    let tmpfs = plan
        .read_only_root
        .then(|| HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".to_string())]));
    let host_config = HostConfig {
        mounts: Some(mounts),
        nano_cpus: (plan.cpu_millis > 0).then(|| plan.cpu_millis as i64 * 1_000_000),
        memory,
        memory_swap: memory,
        pids_limit: (plan.pids_max > 0).then_some(plan.pids_max as i64),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        network_mode: Some(plan.network.clone()),
        shm_size: (plan.shm_size_bytes > 0).then_some(plan.shm_size_bytes as i64),
        readonly_rootfs: Some(plan.read_only_root),
        tmpfs,
        auto_remove: Some(false),
        privileged: Some(false),
        // The engine's init (tini) as PID 1: it passes the stop's SIGTERM on to
        // the step (a PID 1 without a handler would ignore it) and reaps
        // orphans.
        init: Some(true),
        device_requests,
        ..Default::default()
    };
    let (entrypoint, cmd) = match plan.command.split_first() {
        Some((program, args)) => (Some(vec![program.clone()]), Some(args.to_vec())),
        None => (None, None),
    };
    ContainerCreateBody {
        image: Some(plan.image_id.clone()),
        entrypoint,
        cmd,
        env: Some(
            plan.env
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        ),
        user: Some(plan.user.docker_form()),
        working_dir: Some(plan.work_dir.display().to_string()),
        labels: Some(plan.labels.to_map()),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ContainerPlan {
        ContainerPlan {
            image_id: "sha256:abc".into(),
            command: vec!["python3".into(), "train.py".into(), "--fast".into()],
            env: BTreeMap::from([
                ("FERRY_STEP".to_string(), "train".to_string()),
                ("LR".to_string(), "0.1".to_string()),
            ]),
            work_dir: PathBuf::from("/data/work/w-1"),
            extra_mounts: vec![(PathBuf::from("/data/metrics/run-1-train-1.jsonl"), false)],
            user: ContainerUser::default(),
            cpu_millis: 1500,
            memory_limit: Some(2 << 30),
            pids_max: 4096,
            shm_size_bytes: 0,
            network: "bridge".into(),
            read_only_root: false,
            gpu_devices: Vec::new(),
            labels: AttemptLabels {
                run: 7,
                step: "train".into(),
                attempt: 2,
                worker: "gpu-01".into(),
                worker_id: "gpu-01-0123456789ab".into(),
            },
        }
    }

    #[test]
    fn the_work_directory_is_mounted_at_its_own_path_and_is_the_working_directory() {
        let body = container_body(&plan());
        assert_eq!(body.working_dir.as_deref(), Some("/data/work/w-1"));
        let host = body.host_config.unwrap();
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].source.as_deref(), Some("/data/work/w-1"));
        assert_eq!(mounts[0].target.as_deref(), Some("/data/work/w-1"));
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].read_only, Some(false));
        assert_eq!(
            mounts[1].target.as_deref(),
            Some("/data/metrics/run-1-train-1.jsonl")
        );
    }

    #[test]
    fn the_command_replaces_the_entrypoint_and_the_environment_is_exactly_the_steps() {
        let body = container_body(&plan());
        assert_eq!(body.image.as_deref(), Some("sha256:abc"));
        assert_eq!(body.entrypoint.unwrap(), ["python3"]);
        assert_eq!(body.cmd.unwrap(), ["train.py", "--fast"]);
        assert_eq!(body.env.unwrap(), ["FERRY_STEP=train", "LR=0.1"]);
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.tty, Some(false));
    }

    #[test]
    fn limits_and_hardening_are_set_from_the_plan() {
        let host = container_body(&plan()).host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(2 << 30));
        assert_eq!(host.memory_swap, Some(2 << 30));
        assert_eq!(host.pids_limit, Some(4096));
        assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(host.cap_add, None);
        assert_eq!(host.security_opt.unwrap(), ["no-new-privileges"]);
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.init, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.shm_size, None);
        assert_eq!(host.readonly_rootfs, Some(false));
        assert_eq!(host.tmpfs, None);
        assert_eq!(host.device_requests, None);
    }

    #[test]
    fn no_request_means_no_limit_and_the_options_are_passed_through() {
        let mut plan = plan();
        plan.cpu_millis = 0;
        plan.memory_limit = None;
        plan.shm_size_bytes = 1 << 30;
        plan.network = "none".into();
        plan.read_only_root = true;
        let host = container_body(&plan).host_config.unwrap();
        assert_eq!(
            (host.nano_cpus, host.memory, host.memory_swap),
            (None, None, None)
        );
        assert_eq!(host.shm_size, Some(1 << 30));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
    }

    #[test]
    fn gpus_are_requested_by_exactly_the_assigned_uuids() {
        let mut plan = plan();
        plan.gpu_devices = vec!["GPU-1111".into(), "GPU-3333".into()];
        let requests = container_body(&plan)
            .host_config
            .unwrap()
            .device_requests
            .unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(
            requests[0].device_ids.as_deref(),
            Some(&["GPU-1111".to_string(), "GPU-3333".to_string()][..])
        );
        assert_eq!(requests[0].count, None);
        assert_eq!(
            requests[0].capabilities.as_deref(),
            Some(&[vec!["gpu".to_string()]][..])
        );
    }

    #[test]
    fn labels_name_the_run_step_attempt_and_worker() {
        let labels = container_body(&plan()).labels.unwrap();
        assert_eq!(labels[LABEL_RUN], "7");
        assert_eq!(labels[LABEL_STEP], "train");
        assert_eq!(labels[LABEL_ATTEMPT], "2");
        assert_eq!(labels[LABEL_WORKER], "gpu-01");
        assert_eq!(labels[LABEL_WORKER_ID], "gpu-01-0123456789ab");
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        let cases = [
            ("python:3.11-slim", ("python", Some("3.11-slim"))),
            ("python", ("python", Some("latest"))),
            (
                "reg.example:5000/team/x",
                ("reg.example:5000/team/x", Some("latest")),
            ),
            (
                "reg.example:5000/team/x:v2",
                ("reg.example:5000/team/x", Some("v2")),
            ),
            ("x@sha256:0123", ("x@sha256:0123", None)),
        ];
        for (image, (name, tag)) in cases {
            assert_eq!(
                pull_parts(image),
                (name.to_string(), tag.map(str::to_string)),
                "{image}"
            );
        }
    }

    #[test]
    fn pull_policies_and_networks_are_read_from_the_assignment() {
        assert_eq!(PullPolicy::from_assignment("never"), PullPolicy::Never);
        assert_eq!(PullPolicy::from_assignment("always"), PullPolicy::Always);
        assert_eq!(PullPolicy::from_assignment(""), PullPolicy::IfNotPresent);
        let mut spec = proto::ContainerSpec::default();
        assert_eq!(network_mode(&spec), "bridge");
        spec.network = "none".into();
        assert_eq!(network_mode(&spec), "none");
    }

    #[test]
    fn container_users_are_numbers() {
        assert_eq!(
            ContainerUser::parse("1000:100"),
            Ok(ContainerUser {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(
            ContainerUser::parse("7"),
            Ok(ContainerUser { uid: 7, gid: 7 })
        );
        for wrong in ["nobody", "1:x", "1:2:3", ""] {
            assert!(ContainerUser::parse(wrong).is_err(), "{wrong}");
        }
    }
}
