//! Durable storage beside the Raft log, in the same sled database.
//!
//! The state machine itself is not stored record by record: its durable form is
//! the Raft log (`consensus::storage`), a snapshot of the whole state plus the
//! entries after it. A start decodes the snapshot and re-applies the entries
//! (`apply` is deterministic), so nothing is written per command but the entry.
//! This module encodes and decodes those snapshots.
//!
//! The `state` tree is the layout of a coordinator from before replication (one
//! record per run, worker and member); it is read once, to carry such a data
//! directory into a one-member cluster, and then emptied.
//!
//! The `logs` tree holds log lines keyed by run and arrival order; `log_index`
//! makes a resent batch idempotent. Logs are bytes beside the state, not commands.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::{AuditLog, Catalog, Member, Policy, Revocations, Run, RunId, State, Worker};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database in {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("state database error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "the state database is corrupt: record {key:?} cannot be decoded ({detail}); \
         restore the data directory from a backup; in a cluster, instead remove this \
         member (`ferry cluster remove-member`), empty its data directory and add it \
         again under a new id with `join = true`, so that it copies the state from the others"
    )]
    Corrupt { key: String, detail: String },
}

const NEXT_RUN_KEY: &[u8] = b"meta/next_run_id";
/// How a snapshot that does not decode is named in the error.
const SNAPSHOT_RECORD: &[u8] = b"raft snapshot data";

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    logs: sled::Tree,
    log_index: sled::Tree,
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: String,
    pub attempt: u32,
    pub stream: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub text: String,
}

fn corrupt(key: &[u8], detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| corrupt(key, format!("expected 8 bytes, found {}", value.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // Its own user's only (0700), whatever the process's umask.
        ferry_common::durable::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.display().to_string(),
            source: sled::Error::Io(source),
        })?;
        // Ferry flushes explicitly before acknowledging anything, so sled's own
        // periodic flush would only compete with it.
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Store {
            state: db.open_tree("state")?,
            logs: db.open_tree("logs")?,
            log_index: db.open_tree("log_index")?,
            db,
        })
    }

    /// The state a coordinator from before replication left in the `state` tree
    /// (one record per run, worker and member, the run-id counter and the applied
    /// index), or `None` when the tree holds nothing. A record that does not decode
    /// is reported, never skipped: serving a partial state would be serving wrong
    /// state.
    pub fn load_legacy(&self) -> Result<Option<State>, StoreError> {
        if self.state.is_empty() {
            return Ok(None);
        }
        let mut runs = Vec::new();
        for item in self.state.scan_prefix(b"run/") {
            let (key, value) = item?;
            runs.push(serde_json::from_slice::<Run>(&value).map_err(|e| corrupt(&key, e))?);
        }
        let mut workers = Vec::new();
        for item in self.state.scan_prefix(b"worker/") {
            let (key, value) = item?;
            workers.push(serde_json::from_slice::<Worker>(&value).map_err(|e| corrupt(&key, e))?);
        }
        let mut members = Vec::new();
        for item in self.state.scan_prefix(b"member/") {
            let (key, value) = item?;
            members.push(serde_json::from_slice::<Member>(&value).map_err(|e| corrupt(&key, e))?);
        }
        let next_run_id = match self.state.get(NEXT_RUN_KEY)? {
            Some(value) => decode_u64(NEXT_RUN_KEY, &value)?,
            None => 1,
        };
        if let Some(highest) = runs.iter().map(|r| r.id).max()
            && highest >= next_run_id
        {
            return Err(corrupt(
                NEXT_RUN_KEY,
                format!("run {highest} exists but the next run id is {next_run_id}"),
            ));
        }
        Ok(Some(
            State::from_records(runs, workers, next_run_id).with_members(members),
        ))
    }

    /// Empties the `state` tree once its content lives in the Raft log.
    pub fn clear_legacy(&self) -> Result<(), StoreError> {
        self.state.clear()?;
        Ok(())
    }

    /// The whole state machine as bytes, for a Raft snapshot.
    pub fn snapshot_data(state: &State) -> Vec<u8> {
        StateImage::of(state).encode()
    }

    /// The state a Raft snapshot holds.
    pub fn state_from_snapshot(data: &[u8]) -> Result<State, StoreError> {
        if data.is_empty() {
            return Ok(State::from_records(Vec::new(), Vec::new(), 1));
        }
        let data: SnapshotData =
            serde_json::from_slice(data).map_err(|e| corrupt(SNAPSHOT_RECORD, e))?;
        Ok(
            State::from_records(data.runs, data.workers, data.next_run_id)
                .with_members(data.members)
                .with_catalog(data.catalog)
                .with_policy(data.policy)
                .with_revocations(data.revocations)
                .with_audit(data.audit),
        )
    }

    /// Appends log lines of one attempt; lines already stored (same step, attempt
    /// and sequence number) are skipped, so a resent batch is harmless.
    pub fn append_logs(&self, run: RunId, lines: &[LogRecord]) -> Result<usize, StoreError> {
        let mut stored = 0;
        for line in lines {
            let mut index_key = run.to_be_bytes().to_vec();
            index_key.extend_from_slice(line.step.as_bytes());
            index_key.push(0);
            index_key.extend_from_slice(&line.attempt.to_be_bytes());
            index_key.extend_from_slice(&line.seq.to_be_bytes());
            if self
                .log_index
                .compare_and_swap(&index_key, None as Option<&[u8]>, Some(&[] as &[u8]))?
                .is_err()
            {
                continue;
            }
            let mut key = run.to_be_bytes().to_vec();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            self.logs
                .insert(key, serde_json::to_vec(line).expect("log lines serialize"))?;
            stored += 1;
        }
        Ok(stored)
    }

    /// Deletes every stored log line of a run (`ferry gc`).
    pub fn delete_logs(&self, run: RunId) -> Result<usize, StoreError> {
        let prefix = run.to_be_bytes();
        let mut deleted = 0;
        for tree in [&self.logs, &self.log_index] {
            let keys: Vec<sled::IVec> =
                tree.scan_prefix(prefix).keys().collect::<Result<_, _>>()?;
            for key in keys {
                tree.remove(key)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The database, shared with the Raft log (one flush makes both durable).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Log lines of a run in arrival order, after `cursor` (an opaque key returned
    /// earlier), at most `limit` of them; returns the new cursor.
    pub fn read_logs(
        &self,
        run: RunId,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<LogRecord>, Option<Vec<u8>>), StoreError> {
        let prefix = run.to_be_bytes();
        let mut end = prefix.to_vec();
        end.extend_from_slice(&[0xff; 9]);
        let range = match cursor {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                self.logs.range(start..end)
            }
            None => self.logs.range(prefix.to_vec()..end),
        };
        let mut lines = Vec::new();
        let mut last = cursor.map(|c| c.to_vec());
        for item in range.take(limit) {
            let (key, value) = item?;
            lines.push(serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?);
            last = Some(key.to_vec());
        }
        Ok((lines, last))
    }
}

/// The state machine at one moment, cheap to take (runs are shared, not copied)
/// so that the Raft loop can hand it to another thread to encode while it goes
/// on applying commands.
pub struct StateImage {
    runs: Vec<std::sync::Arc<Run>>,
    workers: Vec<Worker>,
    members: Vec<Member>,
    next_run_id: RunId,
    catalog: Catalog,
    policy: Policy,
    revocations: Revocations,
    audit: AuditLog,
}

impl StateImage {
    pub fn of(state: &State) -> StateImage {
        StateImage {
            runs: state.runs.values().cloned().collect(),
            workers: state.workers.values().cloned().collect(),
            members: state.members.values().cloned().collect(),
            next_run_id: state.next_run_id,
            catalog: state.catalog.clone(),
            policy: state.policy.clone(),
            revocations: state.revocations.clone(),
            audit: state.audit.clone(),
        }
    }

    /// The same JSON as [`SnapshotData`], encoded from the shared records.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct View<'a> {
            runs: Vec<&'a Run>,
            workers: &'a [Worker],
            members: &'a [Member],
            next_run_id: RunId,
            catalog: &'a Catalog,
            policy: &'a Policy,
            revocations: &'a Revocations,
            audit: &'a AuditLog,
        }
        let view = View {
            runs: self.runs.iter().map(|run| run.as_ref()).collect(),
            workers: &self.workers,
            members: &self.members,
            next_run_id: self.next_run_id,
            catalog: &self.catalog,
            policy: &self.policy,
            revocations: &self.revocations,
            audit: &self.audit,
        };
        serde_json::to_vec(&view).expect("state always serializes")
    }
}

/// What a Raft snapshot carries: every record of the state machine.
#[derive(Deserialize)]
struct SnapshotData {
    runs: Vec<Run>,
    workers: Vec<Worker>,
    members: Vec<Member>,
    next_run_id: RunId,
    /// Absent from snapshots made before the cache, schedules and pins existed.
    #[serde(default)]
    catalog: Catalog,
    /// Absent from snapshots made before projects and added administrators.
    #[serde(default)]
    policy: Policy,
    /// Absent from snapshots made before revocation existed.
    #[serde(default)]
    revocations: Revocations,
    /// Absent from snapshots made before the audit log existed.
    #[serde(default)]
    audit: AuditLog,
}

#[cfg(test)]
fn run_key(id: RunId) -> Vec<u8> {
    format!("run/{id:020}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::spec::parse_pipeline;

    fn pipeline() -> ferry_common::spec::Pipeline {
        parse_pipeline(
            "p.yaml",
            "name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n",
            &Default::default(),
        )
        .unwrap()
    }

    fn one_run_state() -> State {
        let mut state = State::from_records(Vec::new(), Vec::new(), 1);
        state
            .apply(crate::state::Command::SubmitRun {
                pipeline: pipeline(),
                bundle_digest: "d".into(),
                submitter: "alice".into(),
                request_id: Some("r-1".into()),
                options: Default::default(),
                now_ms: 5,
                placements: Vec::new(),
            })
            .unwrap();
        state
    }

    #[test]
    fn a_snapshot_holds_the_whole_state() {
        let mut state = one_run_state();
        state.catalog.cache.insert(
            "key".into(),
            crate::state::CacheEntry {
                run: 1,
                step: "a".into(),
                outputs: Vec::new(),
                created_ms: 3,
            },
        );
        state.catalog.pins.insert(
            "best".into(),
            crate::state::Pin {
                digest: "d".into(),
                size: 1,
                owner: "alice".into(),
                created_ms: 4,
            },
        );
        state.policy.admins.insert("bob".into());
        state
            .apply(crate::state::Command::CreateProject {
                name: "vision".into(),
                owner: "carol".into(),
                now_ms: 5,
            })
            .unwrap();
        state.revocations.serials.insert(
            "ab12".into(),
            crate::state::Revoked {
                by: "alice".into(),
                at_ms: 5,
            },
        );
        let restored = Store::state_from_snapshot(&Store::snapshot_data(&state)).unwrap();
        assert_eq!(restored.runs, state.runs);
        assert_eq!(restored.catalog, state.catalog, "cache index and pins kept");
        assert_eq!(
            restored.policy, state.policy,
            "projects and administrators kept"
        );
        assert_eq!(restored.revocations, state.revocations, "deny list kept");
        assert_eq!(restored.next_run_id, 2);
        assert_eq!(
            restored.requests.get("r-1"),
            Some(&1),
            "derived index rebuilt"
        );
        let empty = Store::state_from_snapshot(&[]).unwrap();
        assert!(empty.runs.is_empty());
        assert_eq!(empty.next_run_id, 1);
    }

    #[test]
    fn an_undecodable_snapshot_is_refused() {
        let error = Store::state_from_snapshot(b"{\"runs\": nope")
            .unwrap_err()
            .to_string();
        assert!(error.contains("corrupt"), "{error}");
        assert!(error.contains("raft snapshot"), "{error}");
    }

    #[test]
    fn state_from_before_replication_is_read_then_cleared() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.load_legacy().unwrap().is_none());
            let state = one_run_state();
            let run = serde_json::to_vec(state.runs[&1].as_ref()).unwrap();
            store.state.insert(run_key(1), run).unwrap();
            store
                .state
                .insert(NEXT_RUN_KEY, &2u64.to_be_bytes())
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let state = store.load_legacy().unwrap().expect("legacy state");
        assert_eq!(state.runs.len(), 1);
        assert_eq!(state.next_run_id, 2);
        assert_eq!(state.runs[&1].submitter, "alice");
        store.clear_legacy().unwrap();
        assert!(store.load_legacy().unwrap().is_none());
    }

    #[test]
    fn a_corrupt_legacy_record_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .state
            .insert(run_key(1), b"{not json".to_vec())
            .unwrap();
        store
            .state
            .insert(NEXT_RUN_KEY, &2u64.to_be_bytes())
            .unwrap();
        let error = store.load_legacy().unwrap_err().to_string();
        assert!(error.contains("corrupt"), "{error}");
        assert!(error.contains("run/00000000000000000001"), "{error}");
    }

    #[test]
    fn logs_are_idempotent_and_read_in_order_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let line = |seq: u64| LogRecord {
            step: "a".into(),
            attempt: 1,
            stream: "stdout".into(),
            seq,
            timestamp_ms: 0,
            text: format!("line {seq}"),
        };
        assert_eq!(store.append_logs(7, &[line(0), line(1)]).unwrap(), 2);
        assert_eq!(store.append_logs(7, &[line(1), line(2)]).unwrap(), 1);
        store.append_logs(8, &[line(0)]).unwrap();
        let (first, cursor) = store.read_logs(7, None, 2).unwrap();
        assert_eq!(first.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1]);
        let (rest, _) = store.read_logs(7, cursor.as_deref(), 100).unwrap();
        assert_eq!(rest.iter().map(|l| l.seq).collect::<Vec<_>>(), [2]);
    }
}
