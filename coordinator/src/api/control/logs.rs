//! `ferry logs`: a run's log lines, from the blobs of finished attempts (read
//! and decoded a piece at a time, so a reader holds about a chunk of lines
//! whatever the log's size) and the live lines of running ones (the newest
//! this member received, `node::live_logs`), followed until the run ends when
//! asked.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry_common::logchunk::LogDecoder;
use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::{ControlService, refuse_collected};
use crate::api::ResponseStream;

/// Feeds the decoder this much of a blob at a time: what one step of the
/// stream holds stays around a chunk of lines (`logchunk::CHUNK_RAW_BYTES`).
const FEED_BYTES: usize = 1024;

fn undecodable(digest: &str, error: ferry_common::logchunk::LogChunkError) -> Status {
    Status::data_loss(format!("log blob {digest} does not decode: {error}"))
}

/// A live line (of a running attempt, or one kept in sled by an older
/// version) as sent, recording it as the newest sent of its attempt.
fn live_line(
    run_id: u64,
    line: crate::store::LogRecord,
    sent_live: &mut HashMap<(String, u32), u64>,
) -> proto::LogLine {
    let seen = sent_live
        .entry((line.step.clone(), line.attempt))
        .or_insert(line.seq);
    *seen = (*seen).max(line.seq);
    proto::LogLine {
        run_id,
        step: line.step,
        attempt: line.attempt,
        stream: line.stream,
        seq: line.seq,
        timestamp_ms: line.timestamp_ms,
        text: line.text,
    }
}

pub(super) async fn stream_logs(
    service: &ControlService,
    request: Request<proto::StreamLogsRequest>,
) -> Result<Response<ResponseStream<proto::LogLine>>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may_read_run(&caller, request.get_ref().run_id)?;
    let slot = service.streams.take(&caller.name)?;
    let query = request.into_inner();
    let run_id = query.run_id;
    service.node.read(|state| {
        let run = state
            .runs
            .get(&run_id)
            .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
        refuse_collected(run)?;
        if !query.step.is_empty() && run.step(&query.step).is_none() {
            return Err(Status::not_found(format!(
                "run {run_id} has no step \"{}\"",
                query.step
            )));
        }
        Ok(())
    })?;
    let node = service.node.clone();
    let stream = async_stream::try_stream! {
        let mut log_changes = node.subscribe_logs();
        let mut state_changes = node.subscribe_state();
        let mut cursor: Option<Vec<u8>> = None;
        // A finished attempt's log comes from its blob (held by a majority, so
        // any member serves it); a running attempt's lines come from the live
        // lines this member received. Both are tracked so no line is sent twice.
        let mut sent_whole: HashSet<(String, u32)> = HashSet::new();
        let mut sent_live: HashMap<(String, u32), u64> = HashMap::new();
        loop {
            // Read whether the run had ended *before* reading the logs, so that
            // lines stored before the end are never missed.
            let (finished, whole_logs) = node.read(|state| {
                let run = state.runs.get(&run_id);
                let whole_logs: Vec<(String, u32, String)> = run
                    .map(|run| {
                        run.steps
                            .iter()
                            .filter(|step| query.step.is_empty() || step.name == query.step)
                            .flat_map(|step| {
                                step.attempts.iter().filter_map(|attempt| {
                                    attempt.log.as_ref().map(|(digest, _)| {
                                        (step.name.clone(), attempt.number, digest.clone())
                                    })
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (run.is_none_or(|run| run.state.is_terminal()), whole_logs)
            });
            for (step, attempt, digest) in whole_logs {
                let key = (step.clone(), attempt);
                if sent_whole.contains(&key) {
                    continue;
                }
                let after = sent_live.get(&key).copied();
                // Copied from a peer if this member lacks it.
                node.ensure_blob(&digest).await?;
                let (_, mut pieces) = node
                    .blobs
                    .read(&digest)
                    .await
                    .map_err(crate::api::blob_status)?;
                let mut decoder = Some(LogDecoder::new());
                while let Some(decoding) = decoder.as_mut() {
                    let lines = match pieces.next().await {
                        Some(piece) => {
                            let piece = piece.map_err(crate::api::blob_status)?;
                            let mut lines = Vec::new();
                            for bytes in piece.chunks(FEED_BYTES) {
                                lines.extend(decoding.feed(bytes).map_err(|e| undecodable(&digest, e))?);
                            }
                            lines
                        }
                        None => decoder
                            .take()
                            .expect("decoding")
                            .finish()
                            .map_err(|e| undecodable(&digest, e))?,
                    };
                    for line in lines {
                        if after.is_some_and(|seen| line.seq <= seen) {
                            continue;
                        }
                        yield proto::LogLine {
                            run_id,
                            step: step.clone(),
                            attempt,
                            stream: line.stream,
                            seq: line.seq,
                            timestamp_ms: line.timestamp_ms,
                            text: line.text,
                        };
                    }
                }
                sent_whole.insert(key);
            }
            loop {
                let (lines, next) = node
                    .store
                    .read_logs(run_id, cursor.as_deref(), 1000)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let count = lines.len();
                cursor = next;
                for line in lines {
                    if !query.step.is_empty() && line.step != query.step {
                        continue;
                    }
                    if sent_whole.contains(&(line.step.clone(), line.attempt)) {
                        continue;
                    }
                    yield live_line(run_id, line, &mut sent_live);
                }
                if count < 1000 {
                    break;
                }
            }
            // Live lines of running attempts, newest kept (from the sled trees
            // above only for attempts that ran before logs were kept in memory).
            loop {
                let lines = node.live_logs.read(
                    run_id,
                    &query.step,
                    &sent_live,
                    |step, attempt| sent_whole.contains(&(step.to_string(), attempt)),
                    1000,
                );
                let count = lines.len();
                for line in lines {
                    yield live_line(run_id, line, &mut sent_live);
                }
                if count < 1000 {
                    break;
                }
            }
            if !query.follow || finished {
                break;
            }
            tokio::select! {
                _ = log_changes.changed() => {}
                _ = state_changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    };
    Ok(Response::new(crate::api::limits::holding(
        Box::pin(stream),
        slot,
    )))
}
