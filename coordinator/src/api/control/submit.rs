//! The submission path: pipeline files parsed once per distinct text, the code
//! bundle a submission names and the digests of its `cache.paths`, bundle
//! uploads, and the checks `SubmitRun`, `RerunRun` and `CreateSchedule` make
//! before they propose.

use std::collections::{BTreeMap, HashMap};

use ferry_common::pki::{Identity, Role, require_role};
use ferry_common::proto;
use ferry_common::spec::{Pipeline, SpecError, SubmitLimits, parse_submission};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::ControlService;
use crate::access::Action;
use crate::api::{ResponseStream, propose_status};
use crate::node::now_ms;
use crate::state::{Command, Outcome};

/// Pipelines already parsed and validated, by a hash of what determines the
/// result (file name, text, parameter overrides): a sweep or a scheduled job
/// submits the same spec again and again, and YAML parsing was a tenth of a
/// submission's cost. Only valid specs are kept; parsing is pure, so a hit
/// answers exactly what parsing would.
#[derive(Default)]
pub(super) struct ParsedPipelines(std::sync::Mutex<HashMap<[u8; 32], Pipeline>>);

/// Distinct specs remembered; when full the cache starts over.
const PARSED_PIPELINES_KEPT: usize = 256;

impl ParsedPipelines {
    fn parse(
        &self,
        limits: &SubmitLimits,
        file: &str,
        yaml: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Pipeline, SpecError> {
        // Limits come from the configuration, fixed while this member runs.
        let mut hasher = blake3::Hasher::new();
        for part in [file, yaml] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        for (name, value) in overrides {
            for part in [name, value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        let key = *hasher.finalize().as_bytes();
        if let Some(pipeline) = self.lock().get(&key) {
            return Ok(pipeline.clone());
        }
        let pipeline = parse_submission(limits, file, yaml, overrides)?;
        let mut parsed = self.lock();
        if parsed.len() >= PARSED_PIPELINES_KEPT {
            parsed.clear();
        }
        parsed.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pipeline>> {
        ferry_common::locks::lock(&self.0, "parsed pipelines")
    }
}

impl ControlService {
    /// Validates a submitted pipeline file (with its `--param` overrides) exactly
    /// as the CLI did: `parse_submission` against this member's `[limits]`, which
    /// `GetLimits` tells the CLI.
    fn parse_spec(
        &self,
        yaml: &str,
        file: &str,
        params: HashMap<String, String>,
    ) -> Result<Pipeline, Status> {
        let file = if file.is_empty() {
            "pipeline.yaml"
        } else {
            file
        };
        let overrides: BTreeMap<String, String> = params.into_iter().collect();
        (self.parsed)
            .parse(&self.node.limits, file, yaml, &overrides)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The code bundle a submission names must be stored (on a majority).
    async fn require_bundle(&self, digest: &str) -> Result<(), Status> {
        let stored = crate::api::is_digest(digest) && self.node.ensure_blob(digest).await.is_ok();
        if stored {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "code bundle {digest} is not stored on the coordinators; upload it first"
            )))
        }
    }

    /// For each step with `cache.paths`: the digest of those files in the
    /// bundle (read from the blob store), which stands for its code in its cache
    /// key. A path that is not in the bundle is the caller's error.
    async fn code_digests(
        &self,
        pipeline: &Pipeline,
        bundle_digest: &str,
    ) -> Result<BTreeMap<String, String>, Status> {
        let mut digests = BTreeMap::new();
        if pipeline
            .steps
            .iter()
            .all(|s| s.cache.paths.is_empty() || !s.cache.enabled)
        {
            return Ok(digests);
        }
        // Each distinct set of paths once, from the bundle file, off the async
        // threads; remembered per bundle (a schedule or sweep submits the same
        // bundle again and again).
        let mut wanted: Vec<Vec<String>> = pipeline
            .steps
            .iter()
            .filter(|s| s.cache.enabled && !s.cache.paths.is_empty())
            .map(|s| s.cache.paths.clone())
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut by_paths: BTreeMap<Vec<String>, String> = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let memo = ferry_common::locks::lock(&self.code_memo, "submit");
            for paths in wanted {
                match memo.get(&(bundle_digest.to_string(), paths.clone())) {
                    Some(digest) => {
                        by_paths.insert(paths, digest.clone());
                    }
                    None => missing.push(paths),
                }
            }
        }
        if !missing.is_empty() {
            // The stored file, or (S3) a verified temporary copy removed
            // once read.
            let file = self
                .node
                .blobs
                .open_file(bundle_digest)
                .await
                .map_err(crate::api::blob_status)?;
            let computed = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|paths| {
                        let digest = std::fs::File::open(file.path())
                            .map(std::io::BufReader::new)
                            .map_err(|e| {
                                ferry_common::bundle::PathsDigestError::Archive(e.to_string())
                            })
                            .and_then(|reader| ferry_common::bundle::paths_digest(reader, &paths));
                        match digest {
                            Ok(digest) => Ok((paths, digest)),
                            Err(e) => Err((paths, e)),
                        }
                    })
                    .collect::<Vec<Result<_, (Vec<String>, ferry_common::bundle::PathsDigestError)>>>()
            })
            .await
            .map_err(|e| Status::internal(format!("reading the code bundle failed: {e}")))?;
            let mut memo = ferry_common::locks::lock(&self.code_memo, "submit");
            if memo.len() >= 1024 {
                memo.clear();
            }
            for result in computed {
                let (paths, digest) = result.map_err(|(paths, e)| {
                    let step = pipeline
                        .steps
                        .iter()
                        .find(|s| s.cache.paths == paths)
                        .map_or("?", |s| s.trial.as_ref().map_or(&s.name, |t| &t.of));
                    Status::invalid_argument(format!("cache.paths of step \"{step}\": {e}"))
                })?;
                memo.insert((bundle_digest.to_string(), paths.clone()), digest.clone());
                by_paths.insert(paths, digest);
            }
        }
        for step in &pipeline.steps {
            if let Some(digest) = by_paths.get(&step.cache.paths)
                && step.cache.enabled
            {
                digests.insert(step.name.clone(), digest.clone());
            }
        }
        Ok(digests)
    }
}

pub(super) async fn upload_bundle(
    service: &ControlService,
    request: Request<Streaming<proto::Chunk>>,
) -> Result<Response<proto::BlobRef>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may(&caller, Action::UploadBundle)?;
    let blob =
        crate::api::bundles::receive_bundle(&service.node.blobs, request.into_inner()).await?;
    service.node.replicate_blob(&blob.digest, blob.size).await?;
    service.node.metrics.blob_uploaded("bundle", blob.size);
    tracing::info!(client = %caller.name, digest = %blob.digest, size = blob.size, "bundle stored");
    Ok(Response::new(blob))
}

/// `GetLimits`: this member's `[limits]`, which `ferry` checks a pipeline
/// against before it uploads anything.
pub(super) async fn get_limits(
    service: &ControlService,
    request: Request<proto::GetLimitsRequest>,
) -> Result<Response<proto::LimitsView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may(&caller, Action::ReadLimits)?;
    let limits = &service.node.limits;
    Ok(Response::new(proto::LimitsView {
        max_spec_bytes: limits.max_spec_bytes as u64,
        max_steps: limits.max_steps as u64,
        max_trials_per_step: limits.max_trials_per_step as u64,
        max_expanded_bytes: limits.max_expanded_bytes as u64,
    }))
}

pub(super) async fn has_blob(
    service: &ControlService,
    request: Request<proto::BlobRef>,
) -> Result<Response<proto::HasBlobResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may(&caller, Action::CheckBlob)?;
    let blob = request.into_inner();
    let stored = service
        .node
        .blobs
        .holds(&blob.digest, blob.size)
        .await
        .map_err(crate::api::blob_status)?;
    if stored {
        // About to be referenced: `ferry gc` must not take it meanwhile.
        service.node.blobs.touch(&blob.digest);
    }
    // Present only when a majority holds it: otherwise the client uploads it
    // again, which copies it to the others.
    let present = stored
        && service
            .node
            .replicate_blob(&blob.digest, blob.size)
            .await
            .is_ok();
    Ok(Response::new(proto::HasBlobResponse { present }))
}

pub(super) async fn submit_run(
    service: &ControlService,
    request: Request<proto::SubmitRunRequest>,
) -> Result<Response<proto::SubmitRunResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let run_id = submit_one(service, &caller, request.into_inner()).await?;
    Ok(Response::new(proto::SubmitRunResponse { run_id }))
}

/// How many submissions of one `SubmitRuns` stream are checked and proposed
/// at once: as many as the 16 concurrent `SubmitRun` calls `ferry-bench`
/// makes, so that a stream asks no more of the cluster than they do.
pub const SUBMIT_STREAM_IN_FLIGHT: usize = 16;

/// Most answers of a `SubmitRuns` stream sent in one reply.
const SUBMIT_STREAM_ANSWERS_PER_REPLY: usize = 256;
/// How long a reply waits for more answers after its first: a client pays
/// per message (Python's grpcio about 0.1 ms of CPU each), and a batch of
/// submissions needs no answer sooner.
const SUBMIT_STREAM_REPLY_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// `SubmitRuns`: each submission of the stream's batches submitted as
/// `SubmitRun` would, [`SUBMIT_STREAM_IN_FLIGHT`] at a time, answered in the
/// order sent (the answers ready at once in one reply); a refused one is
/// answered with its status and the stream goes on. The stream holds one of
/// the caller's stream slots while it is open.
pub(super) fn submit_runs(
    service: &ControlService,
    request: Request<Streaming<proto::SubmitRunsRequest>>,
) -> Result<ResponseStream<proto::SubmitRunsReply>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let slot = service.streams.take(&caller.name)?;
    let service = service.clone();
    let submissions = request.into_inner().flat_map(|batch| match batch {
        Ok(batch) => futures::stream::iter(batch.runs.into_iter().map(Ok)).left_stream(),
        // A broken request stream ends the answer with its status.
        Err(broken) => futures::stream::once(std::future::ready(Err(broken))).right_stream(),
    });
    let replies = submissions
        .enumerate()
        .map(move |(index, submission)| {
            let service = service.clone();
            let caller = caller.clone();
            async move {
                let index = index as u64;
                Ok(match submit_one(&service, &caller, submission?).await {
                    Ok(run_id) => proto::SubmitRunsAnswer {
                        index,
                        run_id,
                        ..Default::default()
                    },
                    Err(refused) => proto::SubmitRunsAnswer {
                        index,
                        run_id: 0,
                        code: refused.code() as i32,
                        message: refused.message().to_string(),
                    },
                })
            }
        })
        .buffered(SUBMIT_STREAM_IN_FLIGHT);
    Ok(crate::api::limits::holding(
        Box::pin(in_replies(Box::pin(replies))),
        slot,
    ))
}

/// `answers` grouped into replies: each reply holds the answers that come
/// within [`SUBMIT_STREAM_REPLY_WAIT`] of its first, at most
/// [`SUBMIT_STREAM_ANSWERS_PER_REPLY`]. An error ends the stream.
fn in_replies(
    answers: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::SubmitRunsAnswer, Status>> + Send>,
    >,
) -> impl futures::Stream<Item = Result<proto::SubmitRunsReply, Status>> + Send {
    futures::stream::unfold(Some(answers), |open| async move {
        let mut answers = open?;
        let mut reply = proto::SubmitRunsReply {
            answers: vec![match answers.next().await? {
                Ok(answer) => answer,
                Err(broken) => return Some((Err(broken), None)),
            }],
        };
        let wait = tokio::time::sleep(SUBMIT_STREAM_REPLY_WAIT);
        tokio::pin!(wait);
        while reply.answers.len() < SUBMIT_STREAM_ANSWERS_PER_REPLY {
            tokio::select! {
                biased;
                next = answers.next() => match next {
                    Some(Ok(answer)) => reply.answers.push(answer),
                    Some(Err(broken)) => return Some((Err(broken), None)),
                    None => return Some((Ok(reply), None)),
                },
                () = &mut wait => break,
            }
        }
        Some((Ok(reply), Some(answers)))
    })
}

/// One submission by `caller`: the spec parsed against this member's limits,
/// its bundle and secrets checked, proposed and committed; the run's id.
async fn submit_one(
    service: &ControlService,
    caller: &Identity,
    submit: proto::SubmitRunRequest,
) -> Result<u64, Status> {
    let pipeline = service.parse_spec(&submit.spec_yaml, &submit.spec_file, submit.params)?;
    service.require_bundle(&submit.bundle_digest).await?;
    service.require_secrets(caller, &pipeline).await?;
    let code_digests = service
        .code_digests(&pipeline, &submit.bundle_digest)
        .await?;
    let outcome = service
        .node
        .propose_as(
            caller,
            Command::SubmitRun {
                pipeline,
                bundle_digest: submit.bundle_digest,
                submitter: caller.name.clone(),
                request_id: Some(request_id_or_new(submit.request_id, service.node.id)),
                options: crate::state::SubmitOptions {
                    no_cache: submit.no_cache,
                    code_digests,
                },
                now_ms: now_ms(),
                placements: Vec::new(),
            },
        )
        .await
        .map_err(propose_status)?;
    let Outcome::RunSubmitted { run: run_id, .. } = outcome else {
        return Err(Status::internal("unexpected outcome of a submission"));
    };
    tracing::debug!(run = run_id, client = %caller.name, "run submitted");
    Ok(run_id)
}

/// The client's request id, or one this member makes up: every submission
/// carries one, so that a forward cut short by a leader change can be sent again
/// without starting a second run (`Command::safe_to_resend`).
fn request_id_or_new(given: String, member: u64) -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !given.is_empty() {
        return given;
    }
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("member-{member}-{}-{}-{n}", std::process::id(), now_ms())
}

pub(super) async fn rerun_run(
    service: &ControlService,
    request: Request<proto::RerunRunRequest>,
) -> Result<Response<proto::SubmitRunResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let rerun = request.into_inner();
    let outcome = service
        .node
        .propose_as(
            &caller,
            Command::RerunRun {
                source: rerun.run_id,
                from: (!rerun.from.is_empty()).then_some(rerun.from),
                submitter: caller.name.clone(),
                request_id: Some(request_id_or_new(rerun.request_id, service.node.id)),
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    let Outcome::RunSubmitted { run: run_id, .. } = outcome else {
        return Err(Status::internal("unexpected outcome of a re-run"));
    };
    tracing::info!(run = run_id, source = rerun.run_id, client = %caller.name, "run re-run");
    Ok(Response::new(proto::SubmitRunResponse { run_id }))
}

/// A schedule `CreateSchedule` asks for, once its name, cron expression,
/// pipeline file and code bundle are checked, owned by `owner`.
pub(super) async fn schedule_to_create(
    service: &ControlService,
    create: proto::CreateScheduleRequest,
    owner: String,
) -> Result<crate::state::Schedule, Status> {
    if let Some(problem) =
        ferry_common::spec::schedule_problem(&create.name, &create.cron, now_ms())
    {
        return Err(Status::invalid_argument(problem));
    }
    let pipeline = service.parse_spec(&create.spec_yaml, &create.spec_file, create.params)?;
    service.require_bundle(&create.bundle_digest).await?;
    let owner_identity = ferry_common::pki::Identity {
        role: Role::Client,
        name: owner.clone(),
    };
    service.require_secrets(&owner_identity, &pipeline).await?;
    let code_digests = service
        .code_digests(&pipeline, &create.bundle_digest)
        .await?;
    Ok(crate::state::Schedule {
        name: create.name,
        cron: create.cron.trim().to_string(),
        pipeline,
        bundle_digest: create.bundle_digest,
        code_digests,
        owner,
        created_ms: 0,
        paused: false,
        after_ms: 0,
        last_tick_ms: None,
        last_run: None,
        fired: 0,
        missed: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(index: u64) -> Result<proto::SubmitRunsAnswer, Status> {
        Ok(proto::SubmitRunsAnswer {
            index,
            run_id: index + 1,
            ..Default::default()
        })
    }

    async fn replies(
        answers: Vec<Result<proto::SubmitRunsAnswer, Status>>,
    ) -> Vec<Result<Vec<u64>, tonic::Code>> {
        in_replies(Box::pin(futures::stream::iter(answers)))
            .map(|reply| {
                reply
                    .map(|reply| reply.answers.iter().map(|a| a.index).collect())
                    .map_err(|status| status.code())
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn answers_ready_together_go_in_one_reply_of_at_most_the_limit() {
        assert_eq!(
            replies((0..3).map(answer).collect()).await,
            vec![Ok(vec![0, 1, 2])]
        );
        let many = replies((0..300).map(answer).collect()).await;
        assert_eq!(many.len(), 2);
        assert_eq!(
            many[0].as_ref().unwrap().len(),
            SUBMIT_STREAM_ANSWERS_PER_REPLY
        );
        assert_eq!(many[1].as_ref().unwrap(), &(256..300).collect::<Vec<_>>());
        assert!(replies(Vec::new()).await.is_empty());
    }

    #[tokio::test]
    async fn a_broken_request_stream_ends_the_replies_with_its_status() {
        let broken = vec![
            answer(0),
            Err(Status::cancelled("the client went away")),
            answer(2),
        ];
        assert_eq!(replies(broken).await, vec![Err(tonic::Code::Cancelled)]);
        let first = vec![Err(Status::cancelled("gone")), answer(1)];
        assert_eq!(replies(first).await, vec![Err(tonic::Code::Cancelled)]);
    }

    #[tokio::test]
    async fn a_reply_waits_for_later_answers_only_briefly() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = Box::pin(in_replies(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(receiver),
        )));
        sender.send(answer(0)).unwrap();
        // Nothing more comes: the reply leaves once the wait is over.
        let reply = stream.next().await.unwrap().unwrap();
        assert_eq!(reply.answers.len(), 1);
        sender.send(answer(1)).unwrap();
        sender.send(answer(2)).unwrap();
        drop(sender);
        let reply = stream.next().await.unwrap().unwrap();
        assert_eq!(reply.answers.len(), 2);
        assert!(stream.next().await.is_none());
    }
}
