//! The container runtime: the Docker Engine driven over its unix socket with
//! `bollard` (never the `docker` CLI). [`DockerRuntime`] detects the engine
//! and its version at start, removes what an earlier run of this worker left
//! behind, resolves an image (inspect, pull per policy), and creates, attaches
//! to, starts, stops, inspects and removes an attempt's container. How an
//! attempt uses these is the executor's (`executor/in_container.rs`); what the
//! container is made of is [`settings`], pure; what it used is sampled by
//! [`usage`] while it runs.

pub mod auth;
pub mod settings;
pub mod usage;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures::{Stream, StreamExt};

pub use settings::{ContainerRuntimeMode, ContainerUser, PullPolicy};

/// How long a request to the engine may take to answer (a pull's progress
/// streams after that).
const ENGINE_TIMEOUT_S: u64 = 120;
/// How long the engine has to answer at start before `auto` decides there is none.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "container_runtime = \"docker\" in worker.toml, but the Docker Engine at {socket} does \
         not answer: {reason}; start Docker, fix docker_socket, or set container_runtime = \"none\""
    )]
    DockerRequired { socket: String, reason: String },
    #[error(
        "the Docker configuration {path} (registry credentials for pulls; docker_config in \
         worker.toml) cannot be used: {reason}"
    )]
    DockerConfig { path: String, reason: String },
}

/// The registry credentials of the worker's Docker configuration: `path`, or
/// else `$DOCKER_CONFIG/config.json`, or else `$HOME/.docker/config.json`. A
/// default file that does not exist gives none; a named one must exist.
pub fn registry_auths(path: Option<&Path>) -> Result<auth::RegistryAuths, ContainerError> {
    let (path, named) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => (Path::new(&dir).join("config.json"), false),
            None => match std::env::var_os("HOME") {
                Some(home) => (Path::new(&home).join(".docker/config.json"), false),
                None => return Ok(auth::RegistryAuths::default()),
            },
        },
    };
    let failed = |reason: String| ContainerError::DockerConfig {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !named => {
            return Ok(auth::RegistryAuths::default());
        }
        Err(error) => return Err(failed(error.to_string())),
    };
    let auths = auth::RegistryAuths::parse(&text).map_err(failed)?;
    tracing::info!(path = %path.display(), registries = auths.len(), "registry credentials for pulls");
    Ok(auths)
}

/// An image resolved to its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `sha256:…`, the image's ID.
    pub id: String,
    /// The first repository digest (`name@sha256:…`), where the image has one.
    pub repo_digest: Option<String>,
}

/// How long [`DockerRuntime::exit_settled`] waits at most for the engine
/// to mark a SIGKILLed container as killed for memory, and how often it asks.
const OOM_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
const OOM_SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// How a container ended, from the engine's inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    pub exit_code: i64,
    pub oom_killed: bool,
}

/// The Docker Engine this worker runs container steps with.
pub struct DockerRuntime {
    docker: Docker,
    version: String,
    /// Who containers run as.
    pub user: ContainerUser,
    /// This worker's name, its containers' `ferry.worker` label.
    pub worker: String,
    /// Its name and data directory's hash, its containers' `ferry.worker-id`
    /// label (what leftovers are found by).
    pub worker_id: String,
    /// Registry credentials for pulls (the worker's Docker configuration).
    pub auths: auth::RegistryAuths,
}

impl DockerRuntime {
    /// Connects as `mode` says: `None` when the runtime is off, or with `auto`
    /// when the engine does not answer; an error when `docker` is required and
    /// does not answer.
    pub async fn detect(
        mode: ContainerRuntimeMode,
        socket: &Path,
        user: ContainerUser,
        worker: &str,
        worker_id: &str,
        auths: auth::RegistryAuths,
    ) -> Result<Option<DockerRuntime>, ContainerError> {
        if mode == ContainerRuntimeMode::None {
            return Ok(None);
        }
        match tokio::time::timeout(DETECT_TIMEOUT, connect(socket)).await {
            Ok(Ok((docker, version))) => Ok(Some(DockerRuntime {
                docker,
                version,
                user,
                worker: worker.to_string(),
                worker_id: worker_id.to_string(),
                auths,
            })),
            Ok(Err(reason)) => not_answering(mode, socket, reason),
            Err(_) => not_answering(
                mode,
                socket,
                format!("no answer within {}s", DETECT_TIMEOUT.as_secs()),
            ),
        }
    }

    /// What the worker advertises at registration: `docker <version>`.
    pub fn advertised(&self) -> String {
        format!("docker {}", self.version)
    }

    /// Removes every container (running or not, with its anonymous volumes)
    /// that carries this worker's id label: called at start, before any attempt
    /// runs, so none of them belongs to an attempt this worker still runs.
    /// Returns how many went.
    pub async fn remove_leftovers(&self) -> usize {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", settings::LABEL_WORKER_ID, self.worker_id)],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await;
        let containers = match listed {
            Ok(containers) => containers,
            Err(error) => {
                tracing::warn!(%error, "cannot list this worker's leftover containers");
                return 0;
            }
        };
        let mut removed = 0;
        for container in containers {
            let Some(id) = container.id else { continue };
            let labels = container.labels.unwrap_or_default();
            match self.remove(&id).await {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(
                        container = %id,
                        run = labels.get(settings::LABEL_RUN).map(String::as_str).unwrap_or(""),
                        step = labels.get(settings::LABEL_STEP).map(String::as_str).unwrap_or(""),
                        "removed a container a previous run of this worker left behind"
                    );
                }
                Err(error) => {
                    tracing::warn!(container = %id, %error, "cannot remove a leftover container")
                }
            }
        }
        removed
    }

    /// Resolves `image` to its ID, pulling it as `pull` says (with the
    /// credentials the worker's Docker configuration has for its registry).
    /// The error is the attempt's reason.
    pub async fn resolve_image(
        &self,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ResolvedImage, String> {
        if pull != PullPolicy::Always
            && let Some(found) = self.inspect_image(image).await?
        {
            return Ok(found);
        }
        if pull == PullPolicy::Never {
            return Err(format!(
                "image {image:?} is not on this worker and image_pull is \"never\": load or \
                 build it on the worker first (docker load / docker build), or allow a pull"
            ));
        }
        let (name, tag) = settings::pull_parts(image);
        let mut progress = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(name),
                tag,
                ..Default::default()
            }),
            None,
            self.auths.for_image(image),
        );
        // A failure shows either as an error answer or as an error in the
        // progress stream.
        while let Some(step) = progress.next().await {
            let failure = match step {
                Err(error) => Some(describe(&error)),
                Ok(info) => info.error_detail.and_then(|detail| detail.message),
            };
            if let Some(failure) = failure {
                return Err(format!("pulling image {image:?} failed: {failure}"));
            }
        }
        match self.inspect_image(image).await? {
            Some(found) => Ok(found),
            None => Err(format!(
                "pulling image {image:?} reported no error, but the image is not there"
            )),
        }
    }

    /// The image's identity, or `None` when the engine does not have it.
    async fn inspect_image(&self, image: &str) -> Result<Option<ResolvedImage>, String> {
        match self.docker.inspect_image(image).await {
            Ok(inspected) => Ok(Some(ResolvedImage {
                id: inspected.id.unwrap_or_default(),
                repo_digest: inspected.repo_digests.and_then(|d| d.into_iter().next()),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(format!(
                "cannot inspect image {image:?}: {}",
                describe(&error)
            )),
        }
    }

    /// Creates a container; its ID.
    pub async fn create(&self, body: ContainerCreateBody) -> Result<String, String> {
        self.docker
            .create_container(None, body)
            .await
            .map(|created| created.id)
            .map_err(|e| format!("cannot create the step's container: {}", describe(&e)))
    }

    /// The container's output from its first byte (attach before start).
    pub async fn attach(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<LogOutput, bollard::errors::Error>> + use<>, String> {
        self.docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    logs: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map(|attached| attached.output)
            .map_err(|e| format!("cannot attach to the step's container: {}", describe(&e)))
    }

    pub async fn start(&self, id: &str) -> Result<(), String> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| format!("cannot start the step's container: {}", describe(&e)))
    }

    /// Resolves once the container is no longer running (an error of the
    /// wait itself is left to the inspection that follows).
    pub async fn wait(&self, id: &str) {
        let mut waited = self.docker.wait_container(id, None);
        while let Some(next) = waited.next().await {
            if let Err(error) = next {
                if !matches!(
                    error,
                    bollard::errors::Error::DockerContainerWaitError { .. }
                ) {
                    tracing::debug!(container = id, %error, "waiting for the container failed");
                }
                break;
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace` (the engine's own stop).
    pub async fn stop(&self, id: &str, grace: Duration) {
        let stopped = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(grace.as_secs().max(1) as i32),
                    signal: None,
                }),
            )
            .await;
        if let Err(error) = stopped {
            tracing::debug!(container = id, %error, "stopping the container failed");
        }
    }

    /// How the container ended.
    pub async fn exit(&self, id: &str) -> Result<ContainerExit, String> {
        let inspected = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("cannot inspect the step's container: {}", describe(&e)))?;
        let state = inspected.state.unwrap_or_default();
        if state.running == Some(true) {
            return Err("the step's container is still running".into());
        }
        Ok(ContainerExit {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// [`DockerRuntime::exit`], giving the engine a moment to record an
    /// OOM kill: a container the kernel killed for memory can be reported as
    /// exited with 137 (SIGKILL) before the engine has handled the kernel's
    /// OOM event and marked it `OOMKilled` (seen with cgroup v1 under load).
    /// Only a memory-limited container that ended with SIGKILL waits, at most
    /// [`OOM_SETTLE`].
    pub async fn exit_settled(
        &self,
        id: &str,
        memory_limited: bool,
    ) -> Result<ContainerExit, String> {
        let deadline = tokio::time::Instant::now() + OOM_SETTLE;
        let mut exit = self.exit(id).await?;
        while memory_limited
            && !exit.oom_killed
            && exit.exit_code == 137
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(OOM_SETTLE_PAUSE).await;
            exit = self.exit(id).await?;
        }
        Ok(exit)
    }

    /// Removes the container, killing it if it still runs, with its anonymous
    /// volumes; a container already gone is fine.
    pub async fn remove(&self, id: &str) -> Result<(), String> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(describe(&error)),
        }
    }
}

/// Connects to the engine at `socket`, agreeing on an API version both speak;
/// the client and the engine's version.
async fn connect(socket: &Path) -> Result<(Docker, String), String> {
    let docker = Docker::connect_with_unix(
        &socket.display().to_string(),
        ENGINE_TIMEOUT_S,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| describe(&e))?;
    let docker = docker.negotiate_version().await.map_err(|e| describe(&e))?;
    let version = docker.version().await.map_err(|e| describe(&e))?;
    Ok((docker, version.version.unwrap_or_else(|| "unknown".into())))
}

fn not_answering(
    mode: ContainerRuntimeMode,
    socket: &Path,
    reason: String,
) -> Result<Option<DockerRuntime>, ContainerError> {
    if mode == ContainerRuntimeMode::Docker {
        return Err(ContainerError::DockerRequired {
            socket: socket.display().to_string(),
            reason,
        });
    }
    tracing::info!(socket = %socket.display(), %reason, "no Docker Engine answers; steps with an image will not be placed here");
    Ok(None)
}

/// The engine's own message where it gave one.
fn describe(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
