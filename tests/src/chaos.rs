//! A nemesis for a partitionable cluster (`netns`) and the history it is
//! judged by: clients submit runs and count them through the real CLI while
//! the nemesis kills, restarts, partitions (isolating a member or the leader,
//! splitting off a minority, cutting one direction of a link), makes links
//! flaky and heals, at random from a printed seed, for a bounded time. Then the
//! faults are healed, every member restarted, and the recorded history checked
//! by the Wing–Gong checker (`linearizability`) against a counter of runs; every
//! member must end with the same runs. The schedule of actions is a function of
//! the seed alone (an action aimed at "the leader" resolves at run time), so a
//! failing seed can be replayed. Used by the integration tests (a short run) and
//! by `ferry-bench chaos` (as long as asked).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::linearizability::{Model, Operation, Verdict, check};
use crate::{CLIENT, CliResult, Cluster, bin, parse_run_id, write_pipeline};

/// The sequential specification the cluster must look like: a counter of
/// runs, where a submission returns the new run's id (ids are handed out in
/// order) and a count returns how many runs there are.
#[derive(Clone, Hash, PartialEq, Eq, Debug)]
pub struct RunCounter(pub u64);

#[derive(Clone, Debug)]
pub enum RunOp {
    Submit,
    Count,
}

impl Model for RunCounter {
    type Input = RunOp;
    type Output = u64;

    fn step(&self, input: &RunOp) -> (RunCounter, u64) {
        match input {
            RunOp::Submit => (RunCounter(self.0 + 1), self.0 + 1),
            RunOp::Count => (self.clone(), self.0),
        }
    }
}

/// What a client thread needs to run the `ferry` CLI against the cluster,
/// without sharing the cluster (which the nemesis changes).
#[derive(Clone)]
pub struct Client {
    home: PathBuf,
    addresses: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    namespace: Option<String>,
}

impl Client {
    pub fn of(cluster: &Cluster) -> Client {
        Client {
            home: cluster.root.path().to_path_buf(),
            addresses: cluster.addresses(),
            ca: cluster.pki.ca(),
            cert: cluster.pki.cert(CLIENT),
            key: cluster.pki.key(CLIENT),
            namespace: cluster
                .network
                .as_ref()
                .map(|n| n.namespace(crate::netns::Place::Hub).to_string()),
        }
    }

    /// Runs `ferry` with every member's address; a call still running after
    /// `limit` is killed and reported as failed (code None).
    pub fn ferry(&self, args: &[&str], limit: Duration) -> CliResult {
        let mut command = match &self.namespace {
            Some(namespace) => crate::netns::command_in(namespace, bin("ferry")),
            None => Command::new(bin("ferry")),
        };
        command
            .args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FERRY_CONFIG")
            .env("FERRY_COORDINATOR", &self.addresses)
            .env("FERRY_CA", &self.ca)
            .env("FERRY_CERT", &self.cert)
            .env("FERRY_KEY", &self.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run ferry");
        let readers = [
            child.stdout.take().map(|mut out| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = out.read_to_string(&mut text);
                    text
                })
            }),
            child.stderr.take().map(|mut err| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = err.read_to_string(&mut text);
                    text
                })
            }),
        ];
        let deadline = Instant::now() + limit;
        let code = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let [stdout, stderr] = readers.map(|reader| {
            reader
                .map(|r| r.join().unwrap_or_default())
                .unwrap_or_default()
        });
        CliResult {
            code,
            stdout,
            stderr,
        }
    }

    /// The leader some member reports (each asked in turn, a few seconds
    /// each): a cut-off member may know of none.
    pub fn leader(&self) -> Option<u64> {
        self.addresses.split(',').find_map(|address| {
            let one = Client {
                addresses: address.to_string(),
                ..self.clone()
            };
            let args = ["cluster", "status", "--output", "json"];
            let status = one.ferry(&args, Duration::from_secs(3));
            let leader = status.success().then(|| status.json())?["leader_id"].as_u64()?;
            (leader != 0).then_some(leader)
        })
    }
}

/// A small seeded generator (xorshift64*): the nemesis's only source of choice.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.max(1))
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// A member id from `ids` (not empty).
    fn pick(&mut self, ids: &[u64]) -> u64 {
        ids[self.below(ids.len() as u64) as usize]
    }
}

/// A seed from the clock, for runs that are not replaying one.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1)
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// How long the nemesis acts (clients run for this long and a little more).
    pub duration: Duration,
    pub seed: u64,
    /// Coordinators (3 or 5).
    pub members: u64,
    /// Concurrent client threads.
    pub clients: usize,
    /// The longest one CLI call of a client may take before it is killed (and
    /// its outcome counts as unknown).
    pub call_limit: Duration,
    /// The checker gives up after exploring this many states.
    pub max_states: usize,
}

impl ChaosOptions {
    pub fn new(duration: Duration, seed: u64) -> ChaosOptions {
        ChaosOptions {
            duration,
            seed,
            members: 3,
            clients: 3,
            call_limit: Duration::from_secs(15),
            max_states: 5_000_000,
        }
    }
}

/// What a chaos run did and found.
#[derive(Debug)]
pub struct ChaosReport {
    pub seed: u64,
    /// Every action of the nemesis, with the seconds since the start.
    pub actions: Vec<String>,
    pub operations: usize,
    pub completed: usize,
    pub acknowledged_submissions: usize,
    pub verdict: Verdict,
    /// Every member's runs once healed (None: a member did not answer).
    pub final_runs: Vec<(u64, Option<BTreeSet<u64>>)>,
    /// Every member holds the same runs, and they include every acknowledged one.
    pub converged: bool,
}

/// One action of the nemesis.
#[derive(Clone, Debug)]
enum Action {
    Kill(u64),
    Restart(u64),
    Isolate(u64),
    IsolateLeader,
    Split(Vec<u64>),
    Cut(u64, u64),
    Flaky(u64, u64, f64, Duration),
    Heal,
}

/// Chooses the next action from the seed and what the nemesis did so far
/// (which members it killed), never anything the cluster reports.
fn choose(random: &mut Random, ids: &[u64], killed: &BTreeSet<u64>) -> Action {
    let running: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !killed.contains(id))
        .collect();
    let minority = (ids.len() as u64 - 1) / 2;
    match random.below(8) {
        0 if (killed.len() as u64) < minority => Action::Kill(random.pick(&running)),
        0 | 1 if !killed.is_empty() => {
            let killed: Vec<u64> = killed.iter().copied().collect();
            Action::Restart(random.pick(&killed))
        }
        2 => Action::Isolate(random.pick(ids)),
        3 => Action::IsolateLeader,
        4 => {
            let mut side = Vec::new();
            let size = 1 + random.below(minority.max(1));
            while (side.len() as u64) < size {
                let id = random.pick(ids);
                if !side.contains(&id) {
                    side.push(id);
                }
            }
            side.sort_unstable();
            Action::Split(side)
        }
        5 => {
            let from = random.pick(ids);
            let others: Vec<u64> = ids.iter().copied().filter(|id| *id != from).collect();
            Action::Cut(from, random.pick(&others))
        }
        6 => {
            let a = random.pick(ids);
            let others: Vec<u64> = ids.iter().copied().filter(|id| *id != a).collect();
            let loss = (10 + random.below(31)) as f64 / 100.0;
            let delay = Duration::from_millis(5 + random.below(96));
            Action::Flaky(a, random.pick(&others), loss, delay)
        }
        _ => Action::Heal,
    }
}

/// Starts a partitionable cluster, runs the clients and the nemesis, heals,
/// checks. `say` is given a line for every action and every finding.
pub fn run(options: &ChaosOptions, say: &mut dyn FnMut(String)) -> ChaosReport {
    let mut cluster = Cluster::start_partitionable(options.members, "");
    let pipeline = write_pipeline(
        &cluster.path("chaos"),
        "name: chaos\nsteps:\n  - name: noop\n    command: [\"true\"]\n",
        &[],
    );
    let path = pipeline.to_str().expect("utf-8 path").to_string();
    let client = Client::of(&cluster);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..options.clients)
        .map(|number| {
            let (client, stop, history, path) =
                (client.clone(), stop.clone(), history.clone(), path.clone());
            let limit = options.call_limit;
            std::thread::spawn(move || {
                // Bounded in count as well as by the stop flag.
                for n in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let op = if (n + number) % 2 == 0 {
                        RunOp::Submit
                    } else {
                        RunOp::Count
                    };
                    let invoked = start.elapsed().as_nanos();
                    let output = match op {
                        RunOp::Submit => {
                            let result = client.ferry(&["run", &path], limit);
                            result
                                .success()
                                .then(|| parse_run_id(&result.stdout))
                                .flatten()
                        }
                        RunOp::Count => {
                            let args = ["runs", "--output", "json", "--limit", "0"];
                            let result = client.ferry(&args, limit);
                            result
                                .success()
                                .then(|| result.json().as_array().map(|runs| runs.len() as u64))
                                .flatten()
                        }
                    };
                    let returned = output.map(|value| (start.elapsed().as_nanos(), value));
                    if returned.is_none() && matches!(op, RunOp::Count) {
                        // A failed read had no effect: leave it out.
                        continue;
                    }
                    let operation = Operation {
                        client: number,
                        input: op,
                        invoked,
                        returned,
                    };
                    history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(operation);
                }
            })
        })
        .collect();

    say(format!(
        "chaos: seed {} ({} members, {} clients, {:?}); replay with the same seed",
        options.seed, options.members, options.clients, options.duration
    ));
    let ids: Vec<u64> = (1..=options.members).collect();
    let mut random = Random::new(options.seed);
    let mut killed = BTreeSet::new();
    let mut actions = Vec::new();
    let end = start + options.duration;
    // Bounded in count as well as by the clock.
    for _ in 0..10_000 {
        if Instant::now() >= end {
            break;
        }
        let action = choose(&mut random, &ids, &killed);
        let pause = Duration::from_millis(300 + random.below(2_700));
        let done = match &action {
            Action::Kill(id) => {
                cluster.kill_member(*id);
                killed.insert(*id);
                format!("kill {id}")
            }
            Action::Restart(id) => {
                cluster.spawn_coordinator(*id, false);
                killed.remove(id);
                format!("restart {id}")
            }
            Action::Isolate(id) => {
                cluster.network().isolate(*id);
                format!("isolate {id}")
            }
            Action::IsolateLeader => match client.leader() {
                Some(leader) => {
                    cluster.network().isolate(leader);
                    format!("isolate the leader ({leader})")
                }
                None => "isolate the leader (none known: nothing done)".to_string(),
            },
            Action::Split(side) => {
                cluster.network().split(side);
                format!("split {side:?} from the rest")
            }
            Action::Cut(from, to) => {
                cluster.network().cut(*from, *to);
                format!("cut {from} -> {to} (one way)")
            }
            Action::Flaky(a, b, loss, delay) => {
                cluster.network().flaky(*a, *b, *loss, *delay);
                format!(
                    "flaky {a} <-> {b}: {:.0}% loss, {delay:?} delay",
                    loss * 100.0
                )
            }
            Action::Heal => {
                cluster.network().heal();
                "heal".to_string()
            }
        };
        let line = format!("[{:6.2}s] {done}", start.elapsed().as_secs_f64());
        say(line.clone());
        actions.push(line);
        std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
    }

    cluster.network().heal();
    for id in std::mem::take(&mut killed) {
        cluster.spawn_coordinator(id, false);
    }
    let line = format!(
        "[{:6.2}s] heal and restart everything",
        start.elapsed().as_secs_f64()
    );
    say(line.clone());
    actions.push(line);
    // The clients go on until two more submissions are acknowledged after
    // the heal (bounded), so the history ends on a working cluster.
    let acknowledged = |history: &Mutex<Vec<Operation<RunOp, u64>>>| {
        let history = history.lock().unwrap_or_else(|p| p.into_inner());
        history
            .iter()
            .filter(|op| matches!(op.input, RunOp::Submit) && op.returned.is_some())
            .count()
    };
    let target = acknowledged(&history) + 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged(&history) < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().expect("client thread");
    }
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    let completed = history.iter().filter(|op| op.returned.is_some()).count();
    let acked: BTreeSet<u64> = history
        .iter()
        .filter(|op| matches!(op.input, RunOp::Submit))
        .filter_map(|op| op.returned.as_ref().map(|(_, id)| *id))
        .collect();
    say(format!(
        "history: {} operations, {completed} completed, {} acknowledged submissions",
        history.len(),
        acked.len()
    ));
    let verdict = check(RunCounter(0), &history, options.max_states);
    say(format!(
        "checker: {}",
        match &verdict {
            Verdict::Linearizable { .. } => "linearizable".to_string(),
            Verdict::GaveUp { explored } => format!("gave up after {explored} states"),
            Verdict::NotLinearizable { explanation } => explanation.clone(),
        }
    ));

    let mut final_runs;
    let deadline = Instant::now() + Duration::from_secs(60);
    let converged = loop {
        final_runs = ids
            .iter()
            .map(|id| (*id, cluster.run_ids(Some(*id), true)))
            .collect::<Vec<_>>();
        let first = final_runs[0].1.clone();
        let same = final_runs
            .iter()
            .all(|(_, runs)| runs.is_some() && *runs == first);
        let complete = first.as_ref().is_some_and(|runs| runs.is_superset(&acked));
        if (same && complete) || Instant::now() > deadline {
            break same && complete;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let counts: Vec<String> = final_runs
        .iter()
        .map(|(id, runs)| match runs {
            Some(runs) => format!("member {id}: {} runs", runs.len()),
            None => format!("member {id}: no answer"),
        })
        .collect();
    say(format!(
        "convergence: {} ({})",
        if converged {
            "every member holds the same runs, every acknowledged one among them"
        } else {
            "NOT converged"
        },
        counts.join(", ")
    ));
    ChaosReport {
        seed: options.seed,
        actions,
        operations: history.len(),
        completed,
        acknowledged_submissions: acked.len(),
        verdict,
        final_runs,
        converged,
    }
}

/// `ferry-bench chaos`: the nemesis against a partitionable cluster for
/// `seconds` (seed from the clock unless given), printing every action, then
/// the verdicts; an error unless the history is linearizable and the members
/// converged.
pub fn bench(
    seconds: u64,
    seed: Option<u64>,
    members: u64,
    clients: Option<usize>,
) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(fresh_seed);
    let mut chaos = ChaosOptions::new(std::time::Duration::from_secs(seconds), seed);
    chaos.members = members;
    if let Some(clients) = clients {
        chaos.clients = clients;
    }
    let report = run(&chaos, &mut |line| println!("{line}"));
    println!("replay with: ferry-bench chaos --seed {seed} --seconds {seconds}");
    use crate::linearizability::Verdict;
    match (&report.verdict, report.converged) {
        (Verdict::Linearizable { .. }, true) => Ok(()),
        (Verdict::Linearizable { .. }, false) => {
            anyhow::bail!("chaos seed {seed}: the members did not converge")
        }
        (Verdict::GaveUp { explored }, _) => {
            anyhow::bail!("chaos seed {seed}: the checker gave up after {explored} states")
        }
        (Verdict::NotLinearizable { .. }, _) => {
            anyhow::bail!("chaos seed {seed}: the history is not linearizable")
        }
    }
}
