//! What every `ferry` command that talks to the coordinators shares: the
//! connection ([`Client`]) and the one way a refused call becomes the CLI's
//! error ([`Rpc::rpc`], [`OrStatus::or_status`]), how a listing is read and
//! printed ([`Read`], [`Output`]), a pipeline validated locally and its code
//! bundle uploaded, a run's view, and a full artifact digest as typed. The
//! command modules beside this one depend on it and never on each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ferry_client::Connection;
use ferry_common::digest::{CHUNK_SIZE, is_valid_digest, short};
use ferry_common::proto;
use ferry_common::proto::control_client::ControlClient;
use ferry_common::spec::{
    MAX_EXPANDED_BYTES_CEILING, MAX_SPEC_BYTES_CEILING, Pipeline, SubmitLimits,
    parse_param_override, parse_pipeline_within, parse_submission,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::render;

/// The connection every command calls the coordinators through.
pub(crate) type Client = Connection;

/// Output format of listing commands.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// How a listing is read.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Read {
    /// Answer from the contacted coordinator's own copy without confirming with the
    /// leader: faster, works without a leader, but may be slightly behind.
    #[arg(long)]
    pub stale: bool,
}

/// A refused call as the user reads it: the coordinator's message (written to
/// say what to do about it) and the gRPC code.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    let status = ferry_client::revoked_in_handshake(&status).unwrap_or(status);
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Turns a refused call, or a stream that broke off, into the CLI's error, so
/// that every command words it the same way.
pub(crate) trait OrStatus<T> {
    fn or_status(self) -> anyhow::Result<T>;
}

impl<T> OrStatus<T> for Result<T, tonic::Status> {
    fn or_status(self) -> anyhow::Result<T> {
        self.map_err(status_error)
    }
}

/// How every command calls the coordinators.
pub(crate) trait Rpc {
    /// Sends `request` with `call` through [`Connection::call`], which rides out a
    /// failover by sending it again to another member (so the request must be
    /// safe to repeat: a read, or a write made idempotent), and turns a refusal
    /// into the CLI's error with [`OrStatus::or_status`].
    async fn rpc<Request, Answer, Call, Reply>(
        &mut self,
        request: Request,
        call: Call,
    ) -> anyhow::Result<Answer>
    where
        Request: Clone,
        Call: FnMut(ControlClient<Channel>, tonic::Request<Request>) -> Reply,
        Reply: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
    {
        self.rpc_allowing(request, std::time::Duration::ZERO, call)
            .await
    }

    /// [`Rpc::rpc`] for a call that may take `extra` longer than others
    /// (`Connection::call_allowing`).
    async fn rpc_allowing<Request, Answer, Call, Reply>(
        &mut self,
        request: Request,
        extra: std::time::Duration,
        call: Call,
    ) -> anyhow::Result<Answer>
    where
        Request: Clone,
        Call: FnMut(ControlClient<Channel>, tonic::Request<Request>) -> Reply,
        Reply: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>;
}

/// The metadata key under which a call carries its id: the same on every
/// retry, so that the cluster's audit log records a retried change once.
const REQUEST_ID_HEADER: &str = "ferry-request-id";

impl Rpc for Client {
    async fn rpc_allowing<Request, Answer, Call, Reply>(
        &mut self,
        request: Request,
        extra: std::time::Duration,
        mut call: Call,
    ) -> anyhow::Result<Answer>
    where
        Request: Clone,
        Call: FnMut(ControlClient<Channel>, tonic::Request<Request>) -> Reply,
        Reply: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
    {
        let id: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            ferry_client::new_request_id()
                .parse()
                .expect("request ids are hex");
        self.call_allowing(extra, |client| {
            let mut request = tonic::Request::new(request.clone());
            request.metadata_mut().insert(REQUEST_ID_HEADER, id.clone());
            call(client, request)
        })
        .await
        .or_status()
    }
}

/// A pipeline file read and checked locally before connecting (every check
/// that does not depend on the cluster's `[limits]`), checked again against
/// the cluster's limits by [`prepare`] before anything is uploaded.
pub(crate) struct LocalSpec {
    pub(crate) yaml: String,
    pub(crate) file_name: String,
    pub(crate) overrides: BTreeMap<String, String>,
}

impl LocalSpec {
    /// The pipeline, checked as the coordinator checks it under `limits`
    /// ([`parse_submission`], the coordinator's own check).
    pub(crate) fn check(&self, limits: &SubmitLimits) -> anyhow::Result<Pipeline> {
        Ok(parse_submission(
            limits,
            &self.file_name,
            &self.yaml,
            &self.overrides,
        )?)
    }
}

/// The loosest limits a cluster may set: what a pipeline is checked against
/// before the cluster's own limits are known (every other problem is reported
/// even when no coordinator is reachable).
const LOOSEST_LIMITS: SubmitLimits = SubmitLimits {
    max_spec_bytes: MAX_SPEC_BYTES_CEILING,
    max_steps: usize::MAX,
    max_trials_per_step: usize::MAX,
    max_expanded_bytes: MAX_EXPANDED_BYTES_CEILING,
};

/// The pipeline file a path names: the file itself, or `pipeline.yaml` (else
/// `pipeline.yml`) in a folder.
pub(crate) fn pipeline_file(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["pipeline.yaml", "pipeline.yml"]
        .iter()
        .map(|name| path.join(name))
        .find(|file| file.is_file())
        .with_context(|| {
            format!(
                "{} is a folder without a pipeline.yaml; name the pipeline file instead",
                path.display()
            )
        })
}

/// Reads the pipeline file and its `--param` overrides and checks them against
/// the loosest limits a cluster may have (a file larger than any cluster takes
/// is left to [`prepare`], which names the cluster's limit).
pub(crate) fn validate(pipeline: &Path, params: &[String]) -> anyhow::Result<LocalSpec> {
    let yaml = std::fs::read_to_string(pipeline)
        .with_context(|| format!("cannot read {}", pipeline.display()))?;
    let file_name = pipeline
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.yaml".into());
    let mut overrides = BTreeMap::new();
    for text in params {
        let (key, value) = parse_param_override(text)?;
        overrides.insert(key, value);
    }
    if yaml.len() <= LOOSEST_LIMITS.max_spec_bytes {
        parse_pipeline_within(&file_name, &yaml, &overrides, &LOOSEST_LIMITS)?;
    }
    Ok(LocalSpec {
        yaml,
        file_name,
        overrides,
    })
}

/// The limits the cluster checks a submission against (`GetLimits`); a
/// coordinator too old to answer it checks the defaults.
pub(crate) async fn cluster_limits(client: &mut Client) -> anyhow::Result<SubmitLimits> {
    let answer = client
        .call(|mut client| async move { client.get_limits(proto::GetLimitsRequest {}).await })
        .await;
    let view = match answer {
        Ok(view) => view,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Ok(SubmitLimits::default());
        }
        Err(status) => return Err(status).or_status(),
    };
    let defaults = SubmitLimits::default();
    let pick = |value: u64, default: usize| match value {
        0 => default,
        value => usize::try_from(value).unwrap_or(usize::MAX),
    };
    Ok(SubmitLimits {
        max_spec_bytes: pick(view.max_spec_bytes, defaults.max_spec_bytes),
        max_steps: pick(view.max_steps, defaults.max_steps),
        max_trials_per_step: pick(view.max_trials_per_step, defaults.max_trials_per_step),
        max_expanded_bytes: pick(view.max_expanded_bytes, defaults.max_expanded_bytes),
    })
}

/// Everything a submission of `local` needs, checked as the coordinator will
/// check it before anything is uploaded: the pipeline against the cluster's
/// limits, then the code bundle (packed, its `cache.paths`, and the archive
/// walk the coordinator makes on receipt); only then is the bundle uploaded
/// (unless stored already). A refusal here leaves nothing on the coordinators.
pub(crate) async fn prepare(
    client: &mut Client,
    pipeline: &Path,
    local: &LocalSpec,
) -> anyhow::Result<(Pipeline, UploadedBundle)> {
    let limits = cluster_limits(client).await?;
    let spec = local.check(&limits)?;
    check_secrets_exist(client, &spec).await?;
    let bundle = upload_bundle(client, pipeline, &spec).await?;
    Ok((spec, bundle))
}

/// Refuses, before anything is uploaded, a pipeline whose steps ask for a
/// secret its project does not have (the coordinator checks again, and
/// checks that the caller may use them).
async fn check_secrets_exist(client: &mut Client, spec: &Pipeline) -> anyhow::Result<()> {
    if spec.steps.iter().all(|s| s.secrets.is_empty()) {
        return Ok(());
    }
    let request = proto::ListSecretsRequest {
        project: spec.project.clone(),
        stale: false,
    };
    let held = client
        .rpc(request, |mut client, request| async move {
            client.list_secrets(request).await
        })
        .await?
        .secrets;
    let missing = spec
        .steps
        .iter()
        .flat_map(|step| step.secrets.iter().map(move |used| (step, used)))
        .find(|(_, used)| {
            !held
                .iter()
                .any(|s| s.project == spec.project && s.name == used.name)
        });
    if let Some((step, used)) = missing {
        let (project, name) = (&spec.project, &used.name);
        anyhow::bail!(
            "step {:?} asks for secret {name:?}, which project {project:?} does not have; \
             set it first with `ferry secrets set {name} --project {project} --from-file FILE` \
             (nothing was uploaded)",
            step.name
        );
    }
    Ok(())
}

/// A code bundle as stored on the coordinators.
pub(crate) struct UploadedBundle {
    pub(crate) digest: String,
    pub(crate) files: usize,
    pub(crate) size: u64,
    /// It was stored already, so nothing was sent.
    pub(crate) already_stored: bool,
}

impl UploadedBundle {
    /// `3f9a1c2d4e5f (12 files, 4.0 KiB, uploaded)`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} ({} files, {}, {})",
            short(&self.digest),
            self.files,
            render::bytes(self.size),
            if self.already_stored {
                "already stored"
            } else {
                "uploaded"
            }
        )
    }
}

/// Packs the folder holding `pipeline` into a code bundle and uploads it unless
/// the coordinators hold it already. Each step's `cache.paths` must be in the
/// bundle and the archive must pass the coordinator's check on receipt
/// (`check_bundle` with the default unpack limits): both checked first, so
/// that a pipeline it would refuse leaves nothing stored.
async fn upload_bundle(
    client: &mut Client,
    pipeline: &Path,
    spec: &ferry_common::spec::Pipeline,
) -> anyhow::Result<UploadedBundle> {
    let folder = pipeline
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut cache_paths: Vec<(String, Vec<String>)> = Vec::new();
    for step in spec
        .steps
        .iter()
        .filter(|s| s.cache.enabled && !s.cache.paths.is_empty())
    {
        let name = step.trial.as_ref().map_or(&step.name, |t| &t.of);
        if !cache_paths.iter().any(|(n, _)| n == name) {
            cache_paths.push((name.clone(), step.cache.paths.clone()));
        }
    }
    let bundle = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let bundle = ferry_common::bundle::pack_dir(&folder)?;
        ferry_common::bundle::check_bundle(
            bundle.bytes.as_slice(),
            ferry_common::bundle::UnpackLimits::default(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "the code bundle packed from {} is not one Ferry can unpack: {e}",
                folder.display()
            )
        })?;
        for (step, paths) in &cache_paths {
            ferry_common::bundle::paths_digest(bundle.bytes.as_slice(), paths)
                .map_err(|e| anyhow::anyhow!("cache.paths of step \"{step}\": {e}"))?;
        }
        Ok(bundle)
    })
    .await??;
    let size = bundle.bytes.len() as u64;
    let blob = proto::BlobRef {
        digest: bundle.digest.clone(),
        size,
    };
    let present = client
        .rpc(blob, |mut client, blob| async move {
            client.has_blob(blob).await
        })
        .await?
        .present;
    if !present {
        let digest = bundle.digest.clone();
        let mut chunks: Vec<proto::Chunk> = bundle
            .bytes
            .chunks(CHUNK_SIZE)
            .enumerate()
            .map(|(i, data)| proto::Chunk {
                digest: if i == 0 {
                    digest.clone()
                } else {
                    String::new()
                },
                size,
                data: data.to_vec().into(),
                ..Default::default()
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(proto::Chunk {
                digest,
                ..Default::default()
            });
        }
        // Content-addressed: sending it again after a failover stores it once.
        client
            .call_upload(|mut client| {
                let chunks = chunks.clone();
                async move { client.upload_bundle(tokio_stream::iter(chunks)).await }
            })
            .await
            .or_status()?;
    }
    Ok(UploadedBundle {
        digest: bundle.digest,
        files: bundle.files,
        size,
        already_stored: present,
    })
}

pub(crate) async fn get_run(
    client: &mut Client,
    run: u64,
    read: Read,
) -> anyhow::Result<proto::RunView> {
    get_run_view(client, run, read, false).await
}

/// A run's view; with `metric_history`, every metric value each attempt
/// reported instead of the last of each name.
pub(crate) async fn get_run_view(
    client: &mut Client,
    run: u64,
    read: Read,
    metric_history: bool,
) -> anyhow::Result<proto::RunView> {
    let request = proto::GetRunRequest {
        run_id: run,
        stale: read.stale,
        metric_history,
        ..Default::default()
    };
    get_run_request(client, request).await
}

/// A run's view as `request` asks for it (a page of its steps, say).
pub(crate) async fn get_run_request(
    client: &mut Client,
    request: proto::GetRunRequest,
) -> anyhow::Result<proto::RunView> {
    client
        .rpc(request, |mut client, request| async move {
            client.get_run(request).await
        })
        .await
}

/// A run's summary fields that `ferry runs` and `ferry status` both give in JSON.
pub(crate) fn summary_json(summary: &proto::RunSummary) -> serde_json::Value {
    json!({
        "run": summary.run_id,
        "pipeline": summary.pipeline,
        "state": summary.state,
        "submitter": summary.submitter,
        "submitted_ms": summary.submitted_ms,
        "finished_ms": summary.finished_ms,
        "steps_total": summary.steps_total,
        "steps_done": summary.steps_done,
        "steps_cached": summary.steps_cached,
        "reason": summary.reason,
        "priority": summary.priority,
        "project": summary.project,
        "rerun_of": if summary.rerun_of > 0 { json!(summary.rerun_of) } else { json!(null) },
        "schedule": if summary.schedule.is_empty() { json!(null) } else { json!(summary.schedule) },
        "schedule_tick_ms": summary.schedule_tick_ms,
        "collected": summary.collected,
        "params": summary.params,
        "metrics": summary.metrics,
    })
}

/// A digest as typed: surrounding blanks dropped, lower-cased; only a full one
/// is accepted, so that no prefix can name the wrong artifact.
pub(crate) fn full_digest(text: &str) -> anyhow::Result<String> {
    let digest = text.trim().to_ascii_lowercase();
    if !is_valid_digest(&digest) {
        bail!(
            "{:?} is not a full artifact digest (64 hex digits); 'ferry artifacts RUN' lists them",
            text.trim()
        );
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_digests_are_taken() {
        let digest = "ab".repeat(32);
        assert_eq!(
            full_digest(&format!("  {}\n", digest.to_uppercase())).unwrap(),
            digest
        );
        let error = full_digest("abcd").unwrap_err().to_string();
        assert!(error.contains("not a full artifact digest"), "{error}");
    }
}
