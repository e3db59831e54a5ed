//! The live lines of running attempts, for `ferry logs` and `ferry logs -f`:
//! on the member that receives them (the leader), in memory, the newest
//! [`TAIL_BYTES`] of each attempt. They are a view, not a record: an attempt's
//! log is stored once, as the compressed blob its worker uploads with the report,
//! and its tail is dropped once that report is applied. A new leader's tails
//! start with the first batch it receives.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::state::RunId;

use ferry_common::locks::lock;

use crate::store::LogRecord;

/// Bytes kept per running attempt at most (text and a line's own cost, so that
/// short lines are bounded too); past them the oldest lines go.
pub const TAIL_BYTES: usize = 1024 * 1024;
/// What a line costs beside its text and step name (the record, its strings'
/// headers, the queue's slot).
const LINE_COST: usize = 128;

fn cost(line: &LogRecord) -> usize {
    LINE_COST + line.text.len() + line.step.len()
}
/// How often tails of attempts that are no longer running are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One attempt's newest lines.
#[derive(Default)]
struct Tail {
    lines: VecDeque<LogRecord>,
    bytes: usize,
    /// The highest sequence number received: a batch sent again adds nothing.
    last_seq: Option<u64>,
}

/// The key of an attempt's tail.
type AttemptKey = (RunId, String, u32);

#[derive(Default)]
pub struct LiveLogs {
    tails: Mutex<HashMap<AttemptKey, Tail>>,
    swept: Mutex<Option<Instant>>,
}

impl LiveLogs {
    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, Tail>> {
        lock(&self.tails, "live log tails")
    }

    /// Adds an attempt's batch (lines past the newest it has), dropping the
    /// oldest past the bound; returns how many were new.
    pub fn append(&self, run: RunId, step: &str, attempt: u32, lines: Vec<LogRecord>) -> usize {
        let mut tails = self.tails();
        let tail = tails.entry((run, step.to_string(), attempt)).or_default();
        let mut added = 0;
        for line in lines {
            if tail.last_seq.is_some_and(|last| line.seq <= last) {
                continue;
            }
            tail.last_seq = Some(line.seq);
            tail.bytes += cost(&line);
            tail.lines.push_back(line);
            added += 1;
        }
        while tail.bytes > TAIL_BYTES {
            let Some(old) = tail.lines.pop_front() else {
                break;
            };
            tail.bytes -= cost(&old);
        }
        added
    }

    /// Up to `limit` lines of `run`'s attempts (of `step` when not empty), each
    /// attempt's past the sequence number in `after`, skipping the attempts
    /// `skip` names; in order within an attempt.
    pub fn read(
        &self,
        run: RunId,
        step: &str,
        after: &HashMap<(String, u32), u64>,
        skip: impl Fn(&str, u32) -> bool,
        limit: usize,
    ) -> Vec<LogRecord> {
        let tails = self.tails();
        let mut keys: Vec<&AttemptKey> = tails
            .keys()
            .filter(|(r, s, a)| *r == run && (step.is_empty() || s == step) && !skip(s, *a))
            .collect();
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let seen = after.get(&(key.1.clone(), key.2)).copied();
            let tail = &tails[key];
            // Lines are in sequence order: skip the seen ones from the front.
            let start = tail
                .lines
                .partition_point(|line| seen.is_some_and(|seen| line.seq <= seen));
            for line in tail.lines.range(start..) {
                if out.len() >= limit {
                    return out;
                }
                out.push(line.clone());
            }
        }
        out
    }

    /// Drops an attempt's tail (its report is applied: its blob is the log).
    pub fn drop_attempt(&self, run: RunId, step: &str, attempt: u32) {
        self.tails().remove(&(run, step.to_string(), attempt));
    }

    /// Drops the tails of a run's attempts (the run was collected).
    pub fn drop_run(&self, run: RunId) {
        self.tails().retain(|(r, _, _), _| *r != run);
    }

    /// At most once a second: drops the tails `running` says are of attempts
    /// no longer running (ended without a report this member applied, lost).
    pub fn sweep(&self, running: impl Fn(RunId, &str, u32) -> bool) {
        {
            let mut swept = lock(&self.swept, "live log sweep");
            if swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            *swept = Some(Instant::now());
        }
        self.tails()
            .retain(|(run, step, attempt), _| running(*run, step, *attempt));
    }

    /// Bytes held, all tails together.
    pub fn bytes(&self) -> usize {
        self.tails().values().map(|tail| tail.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, text: &str) -> LogRecord {
        LogRecord {
            step: "train".into(),
            attempt: 1,
            stream: "stdout".into(),
            seq,
            timestamp_ms: 0,
            text: text.into(),
        }
    }

    #[test]
    fn a_tail_keeps_the_newest_lines_once_each() {
        let live = LiveLogs::default();
        assert_eq!(
            live.append(7, "train", 1, vec![line(0, "a"), line(1, "b")]),
            2
        );
        assert_eq!(
            live.append(7, "train", 1, vec![line(1, "b"), line(2, "c")]),
            1
        );
        let all = live.read(7, "", &HashMap::new(), |_, _| false, 100);
        assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1, 2]);
        let after = HashMap::from([(("train".to_string(), 1), 1)]);
        let rest = live.read(7, "train", &after, |_, _| false, 100);
        assert_eq!(rest.iter().map(|l| l.seq).collect::<Vec<_>>(), [2]);
        assert!(
            live.read(7, "other", &HashMap::new(), |_, _| false, 100)
                .is_empty()
        );
        assert!(
            live.read(7, "", &HashMap::new(), |_, _| true, 100)
                .is_empty()
        );
        assert_eq!(live.read(7, "", &HashMap::new(), |_, _| false, 2).len(), 2);

        // Bounded whatever the volume: the oldest go.
        let big = "x".repeat(1000);
        for seq in 3..10_000 {
            live.append(7, "train", 1, vec![line(seq, &big)]);
        }
        assert!(live.bytes() <= TAIL_BYTES);
        let kept = live.read(7, "", &HashMap::new(), |_, _| false, usize::MAX);
        assert_eq!(kept.last().unwrap().seq, 9_999);
        assert!(kept.len() < 1100);
        // Short lines too.
        for seq in 10_000..200_000 {
            live.append(7, "train", 1, vec![line(seq, "y")]);
        }
        assert!(live.bytes() <= TAIL_BYTES);
        let kept = live.read(7, "", &HashMap::new(), |_, _| false, usize::MAX);
        assert!(kept.len() < 10_000, "{}", kept.len());

        live.drop_attempt(7, "train", 1);
        assert_eq!(live.bytes(), 0);
        live.append(8, "train", 1, vec![line(0, "a")]);
        live.sweep(|_, _, _| false);
        assert_eq!(live.bytes(), 0);
    }
}
