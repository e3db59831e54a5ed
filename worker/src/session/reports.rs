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

/// Most reports waiting for the sender. A report waits in the queue only while
/// its attempt's task waits for the answer, so the queue never holds more than
/// the attempts in hand; the bound is there so that it cannot grow without limit
/// if that ever changed.
const REPORT_QUEUE: usize = 4 * REPORT_BATCH;

/// How long the sender waits for a report before looking at its fault point
/// again (debug builds; see `ferry_common::faults`), so that the point is reached
/// even on an idle worker.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A report on its way, with the sender to tell once it was answered.
type Queued = (proto::StepFinishedRequest, oneshot::Sender<()>);

/// Sends attempts' final reports, several per call: one call is in flight at a
/// time, and what piles up meanwhile goes in the next, so that a busy worker
/// sends few calls and an idle one sends each report at once.
#[derive(Clone)]
pub struct Reports {
    queue: mpsc::Sender<Queued>,
}

impl Reports {
    /// Starts the sender as the supervised task "reports"; it stops when the
    /// worker shuts down.
    pub fn start(coordinators: Arc<Coordinators>, shutdown: watch::Receiver<bool>) -> Reports {
        let (queue, pending) = mpsc::channel(REPORT_QUEUE);
        ferry_common::tasks::spawn(
            "reports",
            shutdown.clone(),
            send_reports(coordinators, pending, shutdown),
        );
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
        // A full queue makes this wait for room rather than drop the report: a
        // final report must never be lost (its attempt stays in hand, and is
        // listed to the coordinator as running, until it is answered).
        let delivered = async {
            if self.queue.send((report, done)).await.is_ok() {
                let _ = answered.await;
            }
        };
        tokio::select! {
            _ = delivered => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// The sender's loop: takes what is queued, up to a batch at a time, and delivers
/// it. Returns only once the worker stops.
async fn send_reports(
    coordinators: Arc<Coordinators>,
    mut pending: mpsc::Receiver<Queued>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batched = true;
    loop {
        if ferry_common::faults::should_return("worker.reports") {
            return;
        }
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            first = pending.recv() => first,
            _ = tokio::time::sleep(IDLE_WAKE) => continue,
        };
        let Some(first) = first else {
            // Every `Reports` is gone, which happens only as the worker stops:
            // wait for the flag so that this end is not taken for a death.
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        };
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
}

/// Delivers a batch of reports, retrying what could not be taken, until each is
/// answered (its sender told) or the worker stops, and returns true. Returns
/// false, with the batch untouched, when the coordinator has no batch call.
async fn deliver_batch(
    coordinators: &Coordinators,
    batch: &mut Vec<Queued>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinators() -> (tempfile::TempDir, Arc<Coordinators>) {
        let (dir, coordinators) = super::super::leader::tests::coordinators(&["127.0.0.1:1"]);
        (dir, Arc::new(coordinators))
    }

    // The sender is supervised: ending before the worker stops would be taken for
    // a death. The clock is paused, so the idle wakes take no real time.
    #[tokio::test(start_paused = true)]
    async fn the_sender_ends_only_once_the_worker_stops() {
        let (_dir, coordinators) = coordinators();
        let (stop, shutdown) = watch::channel(false);

        // Idle: it waits.
        let (queue, pending) = mpsc::channel(1);
        let sender = tokio::spawn(send_reports(
            coordinators.clone(),
            pending,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!sender.is_finished());

        // Every `Reports` dropped (as when the worker's context goes away): it still
        // waits for the stop.
        drop(queue);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!sender.is_finished());

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), sender)
            .await
            .expect("the sender ends once the worker stops")
            .unwrap();
    }
}
