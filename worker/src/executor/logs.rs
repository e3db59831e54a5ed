//! An attempt's output: reading its stdout and stderr line by line (long lines
//! split, bytes decoded lossily), masking the step's secret values in each line
//! (`secrets::mask_line`), keeping every line in a local JSON-lines log
//! file, and shipping the lines to the coordinator in numbered batches, capped at
//! the worker's byte limit per attempt.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::proto;
use ferry_common::time::now_ms;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::context::ExecutorContext;
use crate::session::leader::Coordinators;

/// Longest log line kept; a longer one is split.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Log lines are shipped in batches of at most this many, at least this often.
const LOG_BATCH_LINES: usize = 500;
const LOG_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a log batch keeps trying through coordinator failovers and restarts
/// before it is given up.
const LOG_PATIENCE: Duration = Duration::from_secs(60);

/// An attempt's output on its way: a reader per stream and the shipper they
/// feed, for a process and a container alike.
pub(super) struct LogPipeline {
    readers: [tokio::task::JoinHandle<()>; 2],
    shipper: tokio::task::JoinHandle<()>,
}

impl LogPipeline {
    /// Starts reading `stdout` and `stderr` and shipping their lines for
    /// `attempt` (masked, capped, kept in `log_path`).
    pub(super) fn start(
        ctx: &ExecutorContext,
        attempt: &proto::AttemptRef,
        stdout: impl AsyncRead + Unpin + Send + 'static,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        log_path: &Path,
        mask: Vec<String>,
    ) -> LogPipeline {
        let (lines, receiver) = mpsc::channel::<(&'static str, String)>(1024);
        let readers = [
            tokio::spawn(read_lines(stdout, "stdout", lines.clone())),
            tokio::spawn(read_lines(stderr, "stderr", lines)),
        ];
        let shipper = tokio::spawn(ship_logs(
            ctx.coordinators.clone(),
            attempt.clone(),
            receiver,
            ctx.max_log_bytes,
            log_path.to_path_buf(),
            mask,
        ));
        LogPipeline { readers, shipper }
    }

    /// Once the step has ended: each reader gets `grace` to reach the end of
    /// its stream (a process that still holds it is cut off), then the shipper
    /// sends what they read.
    pub(super) async fn finish(self, grace: Duration) {
        for reader in self.readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout(grace, reader).await.is_err() {
                abort.abort();
            }
        }
        let _ = self.shipper.await;
    }
}

/// Reads lines (split at `MAX_LINE_BYTES`), lossily decoded, until end of file.
pub(super) async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    lines: mpsc::Sender<(&'static str, String)>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::new();
    while let Ok(available) = reader.fill_buf().await {
        if available.is_empty() {
            break;
        }
        let room = MAX_LINE_BYTES - line.len();
        let (take, complete) = match available.iter().take(room).position(|b| *b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => {
                let take = available.len().min(room);
                (take, line.len() + take >= MAX_LINE_BYTES)
            }
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if complete {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            line.clear();
            if lines.send((stream, text)).await.is_err() {
                break;
            }
        }
    }
    if !line.is_empty() {
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        let _ = lines.send((stream, text)).await;
    }
}

/// Batches log lines with sequence numbers and pushes them; past `max_bytes` the
/// rest is dropped after one marker line (the pipes are still drained, so the step
/// never blocks on a full pipe).
pub(super) async fn ship_logs(
    coordinators: Arc<Coordinators>,
    attempt: proto::AttemptRef,
    mut receiver: mpsc::Receiver<(&'static str, String)>,
    max_bytes: u64,
    log_path: PathBuf,
    mask: Vec<String>,
) {
    // Every shipped line is also kept in a local file (JSON lines), uploaded whole
    // when the attempt ends; it is created with the first line (a silent step has
    // no log to keep).
    let mut log_file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    let mut log_failed = false;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut capped = false;
    let mut batch: Vec<proto::LogLine> = Vec::new();
    let mut ticker = tokio::time::interval(LOG_BATCH_INTERVAL);
    let mut open = true;
    while open || !batch.is_empty() {
        tokio::select! {
            line = receiver.recv(), if open => match line {
                Some((stream, text)) => {
                    if capped {
                        continue;
                    }
                    // The step's secret values never leave the reader: not to
                    // the log file, not to the coordinator.
                    let text = super::secrets::mask_line(text, &mask);
                    bytes += text.len() as u64 + 1;
                    let text = if bytes > max_bytes {
                        capped = true;
                        format!("[ferry: this attempt's output passed the limit of {max_bytes} bytes; the rest is dropped]")
                    } else {
                        text
                    };
                    batch.push(proto::LogLine {
                        run_id: attempt.run_id,
                        step: attempt.step.clone(),
                        attempt: attempt.attempt,
                        stream: stream.to_string(),
                        seq,
                        timestamp_ms: now_ms(),
                        text,
                    });
                    seq += 1;
                    if batch.len() < LOG_BATCH_LINES {
                        continue;
                    }
                }
                None => open = false,
            },
            _ = ticker.tick() => {}
        }
        if batch.is_empty() {
            continue;
        }
        let lines = std::mem::take(&mut batch);
        if log_file.is_none() && !log_failed {
            match tokio::fs::File::create(&log_path).await {
                Ok(file) => log_file = Some(tokio::io::BufWriter::new(file)),
                Err(error) => {
                    tracing::warn!(%error, path = %log_path.display(), "cannot keep the attempt's log file");
                    log_failed = true;
                }
            }
        }
        if let Some(file) = log_file.as_mut() {
            let mut text = Vec::new();
            for line in &lines {
                serde_json::to_writer(
                    &mut text,
                    &serde_json::json!({
                        "stream": line.stream,
                        "seq": line.seq,
                        "timestamp_ms": line.timestamp_ms,
                        "text": line.text,
                    }),
                )
                .expect("log lines serialize");
                text.push(b'\n');
            }
            if let Err(error) = file.write_all(&text).await {
                tracing::warn!(%error, "cannot write the attempt's log file");
                log_file = None;
                log_failed = true;
            }
        }
        push_with_retry(&coordinators, &attempt, lines).await;
    }
    if let Some(mut file) = log_file
        && let Err(error) = file.flush().await
    {
        tracing::warn!(%error, "cannot write the attempt's log file");
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
