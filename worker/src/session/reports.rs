//! Delivering attempts' final reports: [`Reports`] sends them in batches
//! (`StepsFinished`), retrying what the coordinator could not take yet, and falls
//! back to one `StepFinished` call per report on a coordinator without the batch
//! call. Every call follows the shared choice of coordinator.

use std::sync::Arc;
use std::time::Duration;

use ferry_common::proto;
use tokio::sync::{mpsc, oneshot, watch};

use super::leader::Coordinators;

/// Most reports sent in one call.
const REPORT_BATCH: usize = 64;

/// Sends attempts' final reports, several per call: one call is in flight at a
/// time, and what piles up meanwhile goes in the next, so that a busy worker
/// sends few calls and an idle one sends each report at once.
#[derive(Clone)]
pub struct Reports {
    queue: mpsc::UnboundedSender<(proto::StepFinishedRequest, oneshot::Sender<()>)>,
}

impl Reports {
    /// Starts the sender; it stops when the worker shuts down.
    pub fn start(coordinators: Arc<Coordinators>, shutdown: watch::Receiver<bool>) -> Reports {
        let (queue, mut pending) =
            mpsc::unbounded_channel::<(proto::StepFinishedRequest, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let mut batched = true;
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while batch.len() < REPORT_BATCH {
                    match pending.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // Answered, or the worker stops (what is left is dropped with it).
                if batched && deliver_batch(&coordinators, &mut batch, shutdown.clone()).await {
                    continue;
                }
                // A coordinator without batch calls: one report per call.
                batched = false;
                for (report, done) in batch {
                    deliver(&coordinators, report, shutdown.clone()).await;
                    let _ = done.send(());
                }
            }
        });
        Reports { queue }
    }

    /// Delivers one report (see [`deliver`]); returns once it was answered or the
    /// worker stops.
    pub async fn deliver(
        &self,
        report: proto::StepFinishedRequest,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (done, answered) = oneshot::channel();
        if self.queue.send((report, done)).is_err() {
            return;
        }
        tokio::select! {
            _ = answered => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// Delivers a batch of reports, retrying what could not be taken, until each is
/// answered (its sender told) or the worker stops, and returns true. Returns
/// false, with the batch untouched, when the coordinator has no batch call.
async fn deliver_batch(
    coordinators: &Coordinators,
    batch: &mut Vec<(proto::StepFinishedRequest, oneshot::Sender<()>)>,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let mut delay = Duration::from_millis(100);
    while !batch.is_empty() {
        let request = proto::StepsFinishedRequest {
            reports: batch.iter().map(|(report, _)| report.clone()).collect(),
        };
        let answer = tokio::select! {
            answer = coordinators.call(None, |mut agent| {
                let request = request.clone();
                async move { agent.steps_finished(request).await }
            }) => answer,
            _ = shutdown.wait_for(|s| *s) => return true,
        };
        match answer {
            Ok(answer) if answer.acks.len() == batch.len() => {
                let mut again = Vec::new();
                for ((report, done), ack) in batch.drain(..).zip(answer.acks) {
                    if ack.retry {
                        again.push((report, done));
                        continue;
                    }
                    if !ack.accepted {
                        tracing::warn!(detail = %ack.detail, "report refused as stale");
                    }
                    let _ = done.send(());
                }
                *batch = again;
            }
            Ok(answer) => {
                tracing::warn!(
                    sent = batch.len(),
                    answered = answer.acks.len(),
                    "the coordinator answered a different number of reports; sending them again"
                );
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => return false,
            Err(status) if ferry_common::channel::is_refusal(status.code()) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "reports refused");
                for (_, done) in batch.drain(..) {
                    let _ = done.send(());
                }
                return true;
            }
            Err(status) => tracing::debug!(%status, "reports not delivered; retrying"),
        }
        if batch.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return true,
        }
        delay = (delay * 2).min(Duration::from_secs(3));
    }
    true
}

/// Delivers a report to the current coordinator, retrying through failovers and
/// restarts until it is answered (accepted or refused as stale) or the worker stops.
/// A report is idempotent (by step and attempt), so sending it again is safe.
async fn deliver(
    coordinators: &Coordinators,
    report: proto::StepFinishedRequest,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let answer = tokio::select! {
            answer = coordinators.call(None, |mut agent| {
                let report = report.clone();
                async move { agent.step_finished(report).await }
            }) => answer,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match answer {
            Ok(ack) => {
                if !ack.accepted {
                    tracing::warn!(detail = %ack.detail, "report refused as stale");
                }
                return;
            }
            Err(status) if ferry_common::channel::is_refusal(status.code()) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "report refused");
                return;
            }
            Err(status) => {
                tracing::debug!(%status, "report not delivered; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
}
