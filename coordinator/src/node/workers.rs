//! The leader's worker streams and heartbeats: attaching a stream (and sending
//! what is still assigned), pushing assignments and cancellations, stopping stale
//! attempts, and carrying out applied outcomes on this member.

use std::collections::HashMap;
use std::time::Duration;

use ferry_common::proto;
use ferry_common::time::now_ms;

use ferry_common::locks::lock;

use super::assignment::{attempt_ref, build_assignment};
use super::{Node, WorkerLink, WorkerSender};
use crate::state::{AttemptKey, Outcome};

impl Node {
    /// Which workers have a live stream and when each last sent a heartbeat: the
    /// leader's in-memory view (a follower asks the leader; an empty view when no
    /// leader answers).
    pub async fn live_workers(&self) -> HashMap<String, (bool, i64)> {
        let info = self.role();
        match info.leader {
            Some(leader) if leader == self.id => self.local_live_workers(),
            Some(leader) => {
                let Some(mut client) = self.transport.client(leader) else {
                    return HashMap::new();
                };
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    client.live_workers(proto::ClusterStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(response)) => response
                        .into_inner()
                        .workers
                        .into_iter()
                        .map(|w| (w.name, (w.connected, w.last_heartbeat_ms)))
                        .collect(),
                    _ => HashMap::new(),
                }
            }
            None => HashMap::new(),
        }
    }

    pub fn local_live_workers(&self) -> HashMap<String, (bool, i64)> {
        let heartbeats = lock(&self.heartbeats, "heartbeat").clone();
        let links = lock(&self.links, "links");
        let mut live: HashMap<String, (bool, i64)> = heartbeats
            .into_iter()
            .map(|(name, at)| (name, (false, at)))
            .collect();
        for (name, link) in links.iter() {
            live.entry(name.clone()).or_insert((false, 0)).0 = !link.sender.is_closed();
        }
        live
    }

    pub fn heartbeat(&self, worker: &str) {
        lock(&self.heartbeats, "heartbeat").insert(worker.to_string(), now_ms());
    }

    /// Attaches a worker's assignment stream (replacing an older one) and sends it
    /// every attempt that is assigned to it but not yet started.
    pub fn attach_worker(&self, worker: &str, session: &str, sender: WorkerSender) {
        lock(&self.links, "links").insert(
            worker.to_string(),
            WorkerLink {
                session: session.to_string(),
                sender,
            },
        );
        self.heartbeat(worker);
        let pending = self.read(|state| state.assigned_to(worker));
        for key in pending {
            self.push_assignment(&key, worker);
        }
        tracing::info!(worker, session, "worker stream attached");
        self.state_version.send_modify(|v| *v += 1);
    }

    pub fn session_of(&self, worker: &str) -> Option<String> {
        lock(&self.links, "links")
            .get(worker)
            .map(|link| link.session.clone())
    }

    fn send_to_worker(&self, worker: &str, message: proto::WorkerMessage) {
        let mut links = lock(&self.links, "links");
        let Some(link) = links.get(worker) else {
            return;
        };
        if let Err(error) = link.sender.try_send(Ok(message)) {
            // A full or closed stream is dropped: the worker reconnects and is sent
            // everything still assigned to it.
            tracing::warn!(worker, %error, "worker stream is not accepting; dropping it");
            links.remove(worker);
        }
    }

    /// Stops, on the worker, every attempt it says it runs that is no longer an
    /// active attempt of its own (cancelled or retried elsewhere while it was
    /// disconnected, or a cancel that was lost): fencing for processes, not only
    /// for reports.
    pub fn stop_stale_attempts(&self, worker: &str, running: Vec<AttemptKey>) {
        let stale: Vec<AttemptKey> = self.read(|state| {
            running
                .into_iter()
                .filter(|key| !state.holds(worker, key))
                .collect()
        });
        for key in stale {
            tracing::info!(run = key.run, step = %key.step, attempt = key.attempt, worker, "stopping a stale attempt");
            self.send_to_worker(
                worker,
                proto::WorkerMessage {
                    kind: Some(proto::worker_message::Kind::Cancel(attempt_ref(&key))),
                },
            );
        }
    }

    fn push_assignment(&self, key: &AttemptKey, worker: &str) {
        // Only the member holding the worker's stream (the leader) sends it work;
        // every other member applies the same Assign and has nothing to push.
        if !lock(&self.links, "links").contains_key(worker) {
            return;
        }
        // The leader opens the step's secrets here, for this message only: they
        // travel on the worker's mTLS stream and are kept nowhere.
        let keyring = self.keyring.as_deref();
        let assignment = self.read(|state| {
            build_assignment(state, key).map(|mut assignment| {
                assignment.secrets = super::secrets::secret_values(state, keyring, key);
                assignment
            })
        });
        match assignment {
            Some(assignment) => {
                tracing::debug!(run = key.run, step = %key.step, attempt = key.attempt, worker, "assigned");
                self.send_to_worker(
                    worker,
                    proto::WorkerMessage {
                        kind: Some(proto::worker_message::Kind::Assign(assignment)),
                    },
                );
            }
            None => tracing::warn!(%key, "cannot build the assignment"),
        }
    }

    pub(crate) fn carry_out(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Assigned(assigned)
            | Outcome::RunSubmitted { assigned, .. }
            | Outcome::Report { assigned, .. } => {
                self.metrics.placed(assigned.len());
                for (key, worker) in assigned {
                    self.push_assignment(key, worker);
                }
            }
            Outcome::Cancelled { stop } => {
                for (key, worker) in stop {
                    tracing::info!(run = key.run, step = %key.step, attempt = key.attempt, worker, "cancelling");
                    self.send_to_worker(
                        worker,
                        proto::WorkerMessage {
                            kind: Some(proto::worker_message::Kind::Cancel(attempt_ref(key))),
                        },
                    );
                }
            }
            Outcome::WorkerLost { worker, ended } => {
                // Closing its stream makes a worker that is in fact alive register
                // again; what it still runs is then stopped as stale.
                if lock(&self.links, "links").remove(worker).is_some() {
                    tracing::info!(worker, "closed the stream of a lost worker");
                }
                for key in ended {
                    tracing::warn!(run = key.run, step = %key.step, attempt = key.attempt, worker, "attempt lost with its worker");
                }
            }
            Outcome::Collected {
                runs,
                blobs,
                at_ms,
                grace_ms,
            } => {
                // Every member deletes its own copies. What is referenced again
                // by now (a member applying the entry late or again after a
                // restart) or was written within the grace period before the
                // collection (an upload whose record is not committed yet) stays.
                let live = self.read(crate::state::live_blobs);
                // The proposer's grace period, the same on every member, counted
                // back from the leader's time of the collection, or from this
                // member's clock if that is behind: a blob's write time is by this
                // member's clock, so a clock running slow must not make a fresh
                // blob look old (a fast one only keeps more).
                let before_ms = (*at_ms).min(now_ms()).saturating_sub(*grace_ms as i64);
                for run in runs {
                    self.live_logs.drop_run(*run);
                }
                let store = self.store.clone();
                let blob_store = self.blobs.clone();
                let runs = runs.clone();
                // A shared store (the S3 bucket) is cleaned by the leader
                // alone; the other members only drop their log lines.
                let deletes = !blob_store.is_shared() || self.role().is_leader();
                let blobs: Vec<String> = blobs
                    .iter()
                    .map(|(digest, _)| digest.clone())
                    .filter(|digest| deletes && !live.contains(digest))
                    .collect();
                tokio::spawn(async move {
                    // Then the blobs nothing refers to at all (a bundle uploaded
                    // for a submission that was refused or never made), on the
                    // same grace rule.
                    let unreferenced: Vec<String> = if deletes {
                        blob_store
                            .unreferenced(&live, before_ms)
                            .await
                            .into_iter()
                            .map(|(digest, _)| digest)
                            .filter(|digest| !blobs.contains(digest))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let mut freed = 0u64;
                    for digest in blobs.iter().chain(&unreferenced) {
                        match blob_store.delete(digest, before_ms).await {
                            Ok(bytes) => freed += bytes,
                            Err(error) => tracing::warn!(digest, %error, "could not delete a blob"),
                        }
                    }
                    let mut lines = 0;
                    for run in &runs {
                        match store.delete_logs(*run) {
                            Ok(n) => lines += n,
                            Err(error) => tracing::warn!(run, %error, "could not delete log lines"),
                        }
                    }
                    tracing::info!(
                        runs = runs.len(),
                        blobs = blobs.len(),
                        unreferenced = unreferenced.len(),
                        freed,
                        lines,
                        "garbage collected"
                    );
                });
            }
            Outcome::Registered { .. }
            | Outcome::ImageChecked { .. }
            | Outcome::WorkerMode(_)
            | Outcome::Done
            | Outcome::Revoked { .. }
            | Outcome::SecretSet { .. }
            | Outcome::Unchanged => {}
        }
    }
}
