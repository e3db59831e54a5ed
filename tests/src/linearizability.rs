//! A model-based linearizability checker (Wing–Gong search with memoised states), as in
//! Lowe's "Testing for linearizability" and the Porcupine checker.
//!
//! A test records the operations its clients ran against the real system, each with the
//! monotonic times of its invocation and response and the output it got. [`check`] then
//! searches depth-first for a sequential order of the operations that respects real time
//! (an operation that returned before another was invoked comes first) and in which every
//! output is what a sequential [`Model`] gives. It remembers every state it has explored (the
//! set of operations placed and the model state), so no dead end is explored twice.
//!
//! An operation whose outcome is unknown (it failed or timed out, and may or may not have
//! taken effect) has no response: it may be placed anywhere after its invocation, or not at
//! all, and its output is not checked. Such operations can multiply the states to explore,
//! so the search tries them only after the completed candidates, treats unknown-outcome
//! operations whose inputs print alike (`{:?}`) as interchangeable, and skips a state when
//! one with the same model state and completed operations but fewer unknown-outcome
//! operations placed has been explored already.

use std::collections::HashMap;
use std::fmt::{Debug, Write as _};
use std::hash::Hash;

/// The sequential specification of the system under test. States are hashed and compared
/// to memoise the search, so they should be small.
pub trait Model: Clone + Hash + Eq {
    type Input: Clone + Debug;
    type Output: Clone + Debug + PartialEq;
    /// Applies `input` to the state; returns the output the sequential specification gives.
    fn step(&self, input: &Self::Input) -> (Self, Self::Output);
}

/// One operation of a recorded history.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// The client that ran the operation; the checker only shows it in explanations.
    pub client: usize,
    pub input: I,
    /// Monotonic times (e.g. nanoseconds since the test began) of invocation and response.
    pub invoked: u128,
    /// None when the outcome is unknown (the call failed or timed out in a way that may or
    /// may not have taken effect): such an operation may be linearized anywhere after its
    /// invocation, or not at all, and its output is not checked.
    pub returned: Option<(u128, O)>,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The history is linearizable: `order` holds the indices into the history of the
    /// operations that took effect, in linearization order. Unknown-outcome operations
    /// missing from it are taken not to have happened.
    Linearizable { order: Vec<usize> },
    /// No linearization exists. The explanation shows the longest linearizable prefix found
    /// and why none of the operations that could come next fits after it.
    NotLinearizable { explanation: String },
    /// The search explored `max_states` states without reaching a verdict.
    GaveUp { explored: usize },
}

/// A node of the depth-first search.
struct Frame<M> {
    state: M,
    /// The operations placed so far, one bit per index into the history.
    done: Vec<u64>,
    /// The operation placed last (None at the root), and how many completed ones are placed.
    op: Option<usize>,
    completed: usize,
    /// Positions in `by_invocation` and `by_response` before which every operation is placed.
    first_invoked: usize,
    first_returned: usize,
    /// The next candidate to try, a position in `by_invocation`, and whether the completed
    /// candidates are exhausted so that the unknown-outcome ones are being tried.
    cursor: usize,
    unknown_pass: bool,
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 == 1
}

fn describe<I: Debug, O: Debug>(i: usize, op: &Operation<I, O>) -> String {
    let response = match &op.returned {
        Some((time, output)) => format!("returned {output:?} at {time}"),
        None => "outcome unknown".to_string(),
    };
    let (client, input, invoked) = (op.client, &op.input, op.invoked);
    format!("#{i} (client {client}) {input:?} invoked at {invoked}, {response}")
}

/// Checks whether `history` is linearizable with respect to the model starting in `initial`,
/// giving up after exploring `max_states` search states (each costs a clone of the model
/// state and a bitset over the history; a few million fit easily in memory).
///
/// Panics if an operation responded before it was invoked.
pub fn check<M: Model>(
    initial: M,
    history: &[Operation<M::Input, M::Output>],
    max_states: usize,
) -> Verdict {
    let n = history.len();
    let respond = |i: usize| history[i].returned.as_ref().map(|(time, _)| *time);
    for (i, op) in history.iter().enumerate() {
        let ok = respond(i).is_none_or(|time| time >= op.invoked);
        assert!(ok, "operation {i} responded before it was invoked");
    }
    let mut by_invocation: Vec<usize> = (0..n).collect();
    by_invocation.sort_by_key(|&i| history[i].invoked);
    let mut by_response: Vec<usize> = (0..n).filter(|&i| respond(i).is_some()).collect();
    by_response.sort_by_key(|&i| respond(i));
    let total = by_response.len();
    if total == 0 {
        return Verdict::Linearizable { order: Vec::new() };
    }
    // Unknown-outcome operations with equal inputs are interchangeable, so they are placed
    // in invocation order: each waits for its latest earlier twin.
    let mut twin = vec![None; n];
    let mut latest = HashMap::new();
    let mut unknown_mask = vec![0u64; n.div_ceil(64)];
    for &i in by_invocation.iter().filter(|&&i| respond(i).is_none()) {
        twin[i] = latest.insert(format!("{:?}", history[i].input), i);
        unknown_mask[i / 64] |= 1 << (i % 64);
    }
    // Keeps the unknown-outcome operations of a set, or (with `unknown` false) the others.
    let masked = |done: &[u64], unknown: bool| -> Vec<u64> {
        let mask = |m: u64| if unknown { m } else { !m };
        done.iter()
            .zip(&unknown_mask)
            .map(|(d, m)| d & mask(*m))
            .collect()
    };
    // Explored states, keyed by the completed operations placed and the model state, each
    // with the sets of unknown-outcome operations placed on the way to it.
    let mut memo: HashMap<(Vec<u64>, M), Vec<Vec<u64>>> = HashMap::new();
    let frame = |state, done: Vec<u64>, op, completed, (mut first_invoked, mut first_returned)| {
        while first_invoked < n && is_set(&done, by_invocation[first_invoked]) {
            first_invoked += 1;
        }
        while first_returned < total && is_set(&done, by_response[first_returned]) {
            first_returned += 1;
        }
        let (cursor, unknown_pass) = (first_invoked, false);
        Frame {
            state,
            done,
            op,
            completed,
            first_invoked,
            first_returned,
            cursor,
            unknown_pass,
        }
    };
    let root = frame(initial.clone(), vec![0; n.div_ceil(64)], None, 0, (0, 0));
    let mut stack = vec![root];
    let (mut explored, mut longest, mut most) = (1, Vec::new(), 0);
    while let Some(top) = stack.last_mut() {
        // A candidate must have been invoked no later than the earliest response among the
        // completed operations not yet placed.
        let bound = respond(by_response[top.first_returned]).expect("a completed operation");
        let mut next = None;
        loop {
            let candidate = by_invocation.get(top.cursor);
            let Some(&i) = candidate.filter(|&&i| history[i].invoked <= bound) else {
                if top.unknown_pass {
                    break;
                }
                (top.cursor, top.unknown_pass) = (top.first_invoked, true);
                continue;
            };
            top.cursor += 1;
            let waits = twin[i].is_some_and(|t| !is_set(&top.done, t));
            if is_set(&top.done, i) || respond(i).is_none() != top.unknown_pass || waits {
                continue;
            }
            let (state, output) = top.state.step(&history[i].input);
            if matches!(&history[i].returned, Some((_, o)) if *o != output) {
                continue;
            }
            let mut done = top.done.clone();
            done[i / 64] |= 1 << (i % 64);
            let (key, unknown) = ((masked(&done, false), state), masked(&done, true));
            let covered = |seen: &Vec<u64>| seen.iter().zip(&unknown).all(|(s, u)| s & !u == 0);
            if !memo.get(&key).is_some_and(|sets| sets.iter().any(covered)) {
                next = Some((i, done, key, unknown));
                break;
            }
        }
        let Some((i, done, key, unknown)) = next else {
            stack.pop();
            continue;
        };
        if explored >= max_states {
            return Verdict::GaveUp { explored };
        }
        explored += 1;
        let state = key.1.clone();
        memo.entry(key).or_default().push(unknown);
        let completed = top.completed + usize::from(respond(i).is_some());
        let hint = (top.first_invoked, top.first_returned);
        stack.push(frame(state, done, Some(i), completed, hint));
        if completed > most {
            most = completed;
            longest = stack.iter().filter_map(|frame| frame.op).collect();
        }
        if completed == total {
            return Verdict::Linearizable { order: longest };
        }
    }
    let explanation = explain(initial, history, &longest);
    Verdict::NotLinearizable { explanation }
}

/// Describes the longest linearizable prefix found and why nothing fits after it.
fn explain<M: Model>(
    mut state: M,
    history: &[Operation<M::Input, M::Output>],
    prefix: &[usize],
) -> String {
    let completed = |i: &usize| history[*i].returned.is_some();
    let placed = prefix.iter().filter(|i| completed(i)).count();
    let total = (0..history.len()).filter(completed).count();
    let unknown = prefix.len() - placed;
    let mut text = format!(
        "The history is not linearizable. The longest linearizable prefix found places \
         {placed} of the {total} completed operations and {unknown} of unknown outcome; \
         it ends with:\n"
    );
    let mut done = vec![false; history.len()];
    for (position, &i) in prefix.iter().enumerate() {
        state = state.step(&history[i].input).0;
        done[i] = true;
        if position + 20 >= prefix.len() {
            let _ = writeln!(text, "  {}", describe(i, &history[i]));
        }
    }
    let pending = (0..history.len()).filter(|&i| !done[i]);
    let responses = pending.clone().filter_map(|i| history[i].returned.as_ref());
    let bound = responses.map(|(time, _)| *time).min().unwrap_or(u128::MAX);
    let (ready, waiting): (Vec<_>, Vec<_>) = pending.partition(|&i| history[i].invoked <= bound);
    text.push_str("None of the operations that could come next fits after it:\n");
    for i in ready {
        let output = state.step(&history[i].input).1;
        let why = match &history[i].returned {
            Some((_, expected)) if *expected != output => format!("the model returns {output:?}"),
            _ => "it fits, but no continuation does".to_string(),
        };
        let _ = writeln!(text, "  {}: {why}", describe(i, &history[i]));
    }
    text + &format!(
        "{} operations invoked later must wait for these.",
        waiting.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register holding a number: a write returns None, a read returns Some(value).
    #[derive(Clone, Hash, PartialEq, Eq)]
    struct Register(u64);
    #[derive(Clone, Debug)]
    enum Reg {
        Write(u64),
        Read,
    }
    impl Model for Register {
        type Input = Reg;
        type Output = Option<u64>;
        fn step(&self, input: &Reg) -> (Self, Option<u64>) {
            match *input {
                Reg::Write(value) => (Register(value), None),
                Reg::Read => (self.clone(), Some(self.0)),
            }
        }
    }

    /// Ferry's job counter: `Submit` returns the new id (count + 1), `Count` the count.
    #[derive(Clone, Hash, PartialEq, Eq)]
    struct Counter(u64);
    #[derive(Clone, Debug)]
    enum Job {
        Submit,
        Count,
    }
    impl Model for Counter {
        type Input = Job;
        type Output = u64;
        fn step(&self, input: &Job) -> (Self, u64) {
            let count = self.0 + u64::from(matches!(input, Job::Submit));
            (Counter(count), count)
        }
    }

    fn op<I, O>(input: I, invoked: u128, returned: Option<(u128, O)>) -> Operation<I, O> {
        let client = invoked as usize;
        Operation {
            client,
            input,
            invoked,
            returned,
        }
    }
    fn write(value: u64, from: u128, to: Option<u128>) -> Operation<Reg, Option<u64>> {
        op(Reg::Write(value), from, to.map(|to| (to, None)))
    }
    fn read(value: u64, from: u128, to: u128) -> Operation<Reg, Option<u64>> {
        op(Reg::Read, from, Some((to, Some(value))))
    }
    fn job(input: Job, output: u64, from: u128, to: u128) -> Operation<Job, u64> {
        op(input, from, Some((to, output)))
    }

    /// Checks `history`; when it is linearizable, verifies the witness order by the rules.
    fn lin<M: Model>(initial: M, history: &[Operation<M::Input, M::Output>]) -> bool {
        let verdict = check(initial.clone(), history, 1_000_000);
        let Verdict::Linearizable { order } = verdict else {
            let failed = matches!(verdict, Verdict::NotLinearizable { .. });
            return if failed { false } else { panic!("{verdict:?}") };
        };
        let response = |j: usize| history[j].returned.as_ref();
        let mut state = initial;
        for (position, &i) in order.iter().enumerate() {
            let (next, output) = state.step(&history[i].input);
            assert!(response(i).is_none_or(|(_, o)| *o == output), "#{i}");
            let invoked = history[i].invoked;
            let returned_before = |&j: &usize| response(j).is_some_and(|(t, _)| *t < invoked);
            assert!(!order[position..].iter().any(returned_before), "{order:?}");
            state = next;
        }
        let placed = order.iter().filter(|&&i| response(i).is_some()).count();
        let completed = history.iter().filter(|op| op.returned.is_some()).count();
        placed == completed || panic!("{placed} of {completed} completed operations placed")
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [write(1, 0, Some(1)), read(1, 2, 3), write(2, 4, Some(5))];
        let verdict = check(Register(0), &history, 9);
        assert_eq!(
            verdict,
            Verdict::Linearizable {
                order: vec![0, 1, 2]
            }
        );
        assert!(lin(Register(0), &[]) && lin(Register(0), &[write(1, 0, None)]));
    }

    #[test]
    fn overlapping_operations_take_effect_in_either_order() {
        assert!(lin(Register(0), &[write(1, 0, Some(10)), read(1, 2, 8)]));
        assert!(lin(Register(0), &[write(1, 0, Some(10)), read(0, 2, 8)]));
        assert!(lin(Register(0), &[read(1, 0, 10), write(1, 2, Some(5))]));
        let (first, second) = (job(Job::Submit, 1, 0, 9), job(Job::Submit, 2, 1, 5));
        assert!(lin(Counter(0), &[first.clone(), second.clone()]));
        assert!(lin(Counter(0), &[second, job(Job::Submit, 1, 1, 5)]));
        assert!(lin(Counter(0), &[first.clone(), job(Job::Count, 0, 1, 5)]));
        assert!(lin(Counter(0), &[first, job(Job::Count, 1, 1, 5)]));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        let history = [write(1, 0, Some(1)), write(2, 2, Some(3)), read(1, 4, 5)];
        let Verdict::NotLinearizable { explanation } = check(Register(0), &history, 9) else {
            panic!("a stale read was accepted");
        };
        assert!(explanation.contains("places 2 of the 3"), "{explanation}");
        let why =
            "#2 (client 4) Read invoked at 4, returned Some(1) at 5: the model returns Some(2)";
        assert!(explanation.contains(why), "{explanation}");
    }

    #[test]
    fn read_of_a_write_not_yet_invoked_is_not_linearizable() {
        assert!(!lin(Register(0), &[read(1, 0, 1), write(1, 2, Some(3))]));
        assert!(!lin(Register(0), &[read(1, 0, 1), write(1, 2, None)]));
    }

    #[test]
    fn unknown_outcome_writes_may_or_may_not_take_effect() {
        assert!(lin(Register(0), &[write(1, 0, None), read(1, 5, 6)]));
        let verdict = check(Register(0), &[write(1, 0, None), read(0, 5, 6)], 9);
        assert_eq!(verdict, Verdict::Linearizable { order: vec![1] });
        // They may take effect in any order, long after their invocation.
        let history = [
            write(2, 0, None),
            write(1, 1, None),
            read(1, 3, 4),
            read(2, 9, 9),
        ];
        assert!(lin(Register(0), &history));
        // Once seen to have taken effect, a write cannot be undone.
        let history = [write(1, 0, None), read(1, 5, 6), read(0, 7, 8)];
        assert!(!lin(Register(0), &history));
    }

    #[test]
    fn two_submits_returning_the_same_id_are_not_linearizable() {
        let history = [job(Job::Submit, 1, 0, 9), job(Job::Submit, 1, 1, 5)];
        assert!(!lin(Counter(0), &history));
    }

    #[test]
    fn search_gives_up_at_the_state_limit() {
        let history: Vec<_> = (1..=20).map(|id| job(Job::Submit, id, 0, 100)).collect();
        let verdict = check(Counter(0), &history, 5);
        assert_eq!(verdict, Verdict::GaveUp { explored: 5 });
    }

    /// Runs 200 random operations (made from random numbers below 8), one every 100 time
    /// units, then widens each into a random interval of up to 400 either side; one in ten
    /// loses its response, and half of those their effect too.
    fn random_history<M: Model>(
        mut state: M,
        mut seed: u64,
        input: impl Fn(u64) -> M::Input,
    ) -> Vec<Operation<M::Input, M::Output>> {
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            u128::from(seed % below)
        };
        let mut history = Vec::new();
        for point in (1000..).step_by(100).take(200) {
            let input = input(random(8) as u64);
            let (next, output) = state.step(&input);
            let lost = random(10) == 0;
            if !lost || random(2) == 0 {
                state = next;
            }
            let returned = (!lost).then(|| (point + random(400), output));
            history.push(op(input, point - random(400), returned));
        }
        history
    }

    #[test]
    fn random_concurrent_histories_of_real_executions_are_linearizable() {
        let started = std::time::Instant::now();
        for seed in 1..=5 {
            let submit_or_count = |r| if r % 3 == 0 { Job::Count } else { Job::Submit };
            let mut history = random_history(Counter(0), seed, submit_or_count);
            assert!(lin(Counter(0), &history), "seed {seed}");
            let read_or_write = |r| if r < 4 { Reg::Read } else { Reg::Write(r % 4) };
            let register = random_history(Register(0), seed, read_or_write);
            assert!(lin(Register(0), &register), "seed {seed}");
            // Corrupting the last response makes the history fail.
            let last = history.iter_mut().rev().find_map(|op| op.returned.as_mut());
            last.expect("a completed operation").1 += 1000;
            assert!(!lin(Counter(0), &history), "seed {seed}");
        }
        let elapsed = started.elapsed();
        assert!(elapsed.as_secs() < 5, "too slow: {elapsed:?}");
    }
}
