//! An attempt's output: reading its stdout and stderr line by line (long lines
//! split, bytes decoded lossily), masking the step's secret values in each line
//! (`secrets::mask_line`), keeping every line up to the worker's byte limit per
//! attempt in a local log file of compressed chunks (`ferry_common::logchunk`,
//! uploaded whole when the attempt ends), and shipping the newest lines to the
//! coordinator for `ferry logs -f`.
//!
//! Reading never waits on the network: the readers hand lines to a writer on a
//! blocking thread (masking, numbering, the cap, compression, the file), and the
//! writer leaves a copy of each line in a bounded live queue that the shipper
//! drains. A shipper that falls behind (a slow or unreachable coordinator) loses
//! the oldest queued lines, never the file's: live lines are a view, the
//! uploaded log is the record. Past the cap the readers only drain the pipes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::logchunk::ChunkWriter;
use ferry_common::proto;
use ferry_common::time::now_ms;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::context::ExecutorContext;
use crate::session::leader::Coordinators;

/// Longest log line kept; a longer one is split.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Log lines are shipped in batches of at most this many.
const LOG_BATCH_LINES: usize = 500;
/// The shipper looks at the live queue at least this often.
const LOG_BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Lines and bytes the live queue holds at most; past them the oldest go.
const LIVE_LINES: usize = 10_000;
const LIVE_BYTES: usize = 2 * 1024 * 1024;
/// Batches of lines in flight from the readers to the writer.
const READ_BATCHES: usize = 16;
/// How long a log batch keeps trying through coordinator failovers and restarts
/// before it is given up.
const LOG_PATIENCE: Duration = Duration::from_secs(60);

/// A batch of lines read from one stream.
type ReadBatch = (&'static str, Vec<String>);

/// What the readers, the writer and the shipper share.
#[derive(Default)]
struct Shared {
    /// Set once the cap is reached: the readers then only drain the pipes.
    capped: AtomicBool,
    live: Mutex<Live>,
    /// Wakes the shipper when lines were queued or the writer ended.
    wake: Notify,
}

#[derive(Default)]
struct Live {
    lines: VecDeque<proto::LogLine>,
    bytes: usize,
    /// Lines dropped from the queue (kept in the file) since the last report.
    dropped: u64,
    /// The writer has ended: nothing more comes.
    ended: bool,
}

/// An attempt's output on its way: a reader per stream, the writer they feed,
/// and the shipper, for a process and a container alike.
pub(super) struct LogPipeline {
    readers: [tokio::task::JoinHandle<()>; 2],
    writer: tokio::task::JoinHandle<()>,
    shipper: tokio::task::JoinHandle<()>,
}

impl LogPipeline {
    /// Starts reading `stdout` and `stderr` for `attempt`: lines masked,
    /// capped, kept in `log_path` and shipped.
    pub(super) fn start(
        ctx: &ExecutorContext,
        attempt: &proto::AttemptRef,
        stdout: impl AsyncRead + Unpin + Send + 'static,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        log_path: &Path,
        mask: Vec<String>,
    ) -> LogPipeline {
        let shared = Arc::new(Shared::default());
        let (lines, receiver) = mpsc::channel::<ReadBatch>(READ_BATCHES);
        let readers = [
            tokio::spawn(read_lines(stdout, "stdout", lines.clone(), shared.clone())),
            tokio::spawn(read_lines(stderr, "stderr", lines, shared.clone())),
        ];
        let writer = {
            let (shared, attempt, path) = (shared.clone(), attempt.clone(), log_path.to_path_buf());
            let max_bytes = ctx.max_log_bytes;
            tokio::task::spawn_blocking(move || {
                write_log(receiver, &shared, &attempt, max_bytes, path, &mask);
                lock(&shared.live).ended = true;
                shared.wake.notify_one();
            })
        };
        let shipper = tokio::spawn(ship_logs(ctx.coordinators.clone(), attempt.clone(), shared));
        LogPipeline {
            readers,
            writer,
            shipper,
        }
    }

    /// Once the step has ended: each reader gets `grace` to reach the end of
    /// its stream (a process that still holds it is cut off), the writer closes
    /// the log file, then the shipper sends what is queued.
    pub(super) async fn finish(self, grace: Duration) {
        for reader in self.readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout(grace, reader).await.is_err() {
                abort.abort();
            }
        }
        let _ = self.writer.await;
        let _ = self.shipper.await;
    }
}

fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    ferry_common::locks::lock(live, "live log lines")
}

fn decode(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// Reads lines (split at `MAX_LINE_BYTES`), lossily decoded, until end of file,
/// and hands them to the writer a read's worth at a time; once the cap is
/// reached, only drains the pipe.
async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    lines: mpsc::Sender<ReadBatch>,
    shared: Arc<Shared>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::new();
    let mut batch = Vec::new();
    while let Ok(available) = reader.fill_buf().await {
        if available.is_empty() {
            break;
        }
        if shared.capped.load(Ordering::Relaxed) {
            let all = available.len();
            reader.consume(all);
            line.clear();
            continue;
        }
        let mut available = available;
        let mut consumed = 0;
        while !available.is_empty() {
            let room = MAX_LINE_BYTES - line.len();
            let (take, complete) = match available.iter().take(room).position(|b| *b == b'\n') {
                Some(newline) => (newline + 1, true),
                None => {
                    let take = available.len().min(room);
                    (take, line.len() + take >= MAX_LINE_BYTES)
                }
            };
            if complete && line.is_empty() {
                batch.push(decode(&available[..take]));
            } else {
                line.extend_from_slice(&available[..take]);
                if complete {
                    batch.push(decode(&line));
                    line.clear();
                }
            }
            available = &available[take..];
            consumed += take;
        }
        reader.consume(consumed);
        if !batch.is_empty()
            && lines
                .send((stream, std::mem::take(&mut batch)))
                .await
                .is_err()
        {
            return;
        }
    }
    if !line.is_empty() && !shared.capped.load(Ordering::Relaxed) {
        let _ = lines.send((stream, vec![decode(&line)])).await;
    }
}

/// Numbers, masks and caps the lines, keeps them in the log file (created with
/// the first line: a silent step has no log) and queues them for the shipper.
fn write_log(
    mut receiver: mpsc::Receiver<ReadBatch>,
    shared: &Shared,
    attempt: &proto::AttemptRef,
    max_bytes: u64,
    log_path: PathBuf,
    mask: &[String],
) {
    let mut file: Option<ChunkWriter<std::io::BufWriter<std::fs::File>>> = None;
    let mut failed = false;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    while let Some((stream, texts)) = receiver.blocking_recv() {
        if shared.capped.load(Ordering::Relaxed) {
            continue;
        }
        let mut queued = Vec::with_capacity(texts.len());
        for text in texts {
            // The step's secret values never leave the reader: not to the log
            // file, not to the coordinator.
            let text = super::secrets::mask_line(text, mask);
            bytes += text.len() as u64 + 1;
            let text = if bytes > max_bytes {
                shared.capped.store(true, Ordering::Relaxed);
                format!(
                    "[ferry: this attempt's output passed the limit of {max_bytes} bytes; the rest is dropped]"
                )
            } else {
                text
            };
            let line = proto::LogLine {
                run_id: attempt.run_id,
                step: attempt.step.clone(),
                attempt: attempt.attempt,
                stream: stream.to_string(),
                seq,
                timestamp_ms: now_ms(),
                text,
            };
            seq += 1;
            if file.is_none() && !failed {
                match std::fs::File::create(&log_path) {
                    Ok(created) => {
                        file = Some(ChunkWriter::new(std::io::BufWriter::with_capacity(
                            256 * 1024,
                            created,
                        )))
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = %log_path.display(), "cannot keep the attempt's log file");
                        failed = true;
                    }
                }
            }
            if let Some(writer) = file.as_mut()
                && let Err(error) =
                    writer.push_line(&line.stream, line.seq, line.timestamp_ms, &line.text)
            {
                tracing::warn!(%error, "cannot write the attempt's log file");
                file = None;
                failed = true;
            }
            queued.push(line);
            if shared.capped.load(Ordering::Relaxed) {
                break;
            }
        }
        let mut live = lock(&shared.live);
        for line in queued {
            live.bytes += line.text.len();
            live.lines.push_back(line);
        }
        while live.lines.len() > LIVE_LINES || live.bytes > LIVE_BYTES {
            let Some(old) = live.lines.pop_front() else {
                break;
            };
            live.bytes -= old.text.len();
            live.dropped += 1;
        }
        drop(live);
        shared.wake.notify_one();
    }
    if let Some(writer) = file
        && let Err(error) = writer.finish()
    {
        tracing::warn!(%error, "cannot write the attempt's log file");
    }
}

/// Ships the queued lines in numbered batches as they come (a batch is what
/// queued while the previous one was sent), until the writer has ended and the
/// queue is empty.
async fn ship_logs(
    coordinators: Arc<Coordinators>,
    attempt: proto::AttemptRef,
    shared: Arc<Shared>,
) {
    loop {
        let (lines, ended, dropped) = {
            let mut live = lock(&shared.live);
            let take = live.lines.len().min(LOG_BATCH_LINES);
            let lines: Vec<proto::LogLine> = live.lines.drain(..take).collect();
            live.bytes -= lines.iter().map(|line| line.text.len()).sum::<usize>();
            (
                lines,
                live.ended && live.lines.is_empty(),
                std::mem::take(&mut live.dropped),
            )
        };
        if dropped > 0 {
            tracing::debug!(run = attempt.run_id, step = %attempt.step, dropped, "live log lines skipped (kept in the log file)");
        }
        if !lines.is_empty() {
            push_with_retry(&coordinators, &attempt, lines).await;
            continue;
        }
        if ended {
            return;
        }
        let _ = tokio::time::timeout(LOG_BATCH_INTERVAL, shared.wake.notified()).await;
    }
}

/// Pushes one batch to the current coordinator, through failovers and restarts;
/// a batch sent twice is stored once (lines carry their sequence numbers).
async fn push_with_retry(
    coordinators: &Coordinators,
    attempt: &proto::AttemptRef,
    lines: Vec<proto::LogLine>,
) {
    let request = proto::LogBatch {
        attempt: Some(attempt.clone()),
        lines,
    };
    let give_up = Instant::now() + LOG_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        let pushed = coordinators
            .call(Some(give_up), |mut agent| {
                let request = request.clone();
                async move { agent.push_logs(request).await }
            })
            .await;
        match pushed {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                tracing::warn!(%status, "log batch refused");
                return;
            }
            Err(status) if coordinators.stopping() => {
                tracing::warn!(
                    run = attempt.run_id,
                    step = %attempt.step,
                    %status,
                    "the worker is stopping; a log batch is dropped"
                );
                return;
            }
            Err(status) if Instant::now() + delay < give_up => {
                tracing::debug!(%status, "log batch not delivered; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(status) => {
                tracing::warn!(
                    run = attempt.run_id,
                    step = %attempt.step,
                    %status,
                    "giving up on a log batch after repeated failures"
                );
                return;
            }
        }
    }
}
