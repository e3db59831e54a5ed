//! The worker's Prometheus metrics, served at `GET /metrics` when
//! `[metrics] listen` is set in worker.toml (`ferry dev` serves them with the
//! coordinator's): what it offers and what its attempts hold now (CPU, memory,
//! GPUs), attempts started by runtime, log bytes written, and attempts killed
//! for going over their memory limit. Names start with `ferry_worker_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `in_use` (held by running attempts) or `capacity` (offered).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// How an attempt runs: `process` or `container`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabels {
    pub runtime: &'static str,
}

/// What a worker counts (cheap atomics, kept whether or not they are served).
#[derive(Clone, Default)]
pub struct WorkerMetrics {
    cpu_millis: Family<StateLabels, Gauge>,
    memory_bytes: Family<StateLabels, Gauge>,
    gpus: Family<StateLabels, Gauge>,
    attempts: Family<RuntimeLabels, Counter>,
    log_bytes: Counter,
    memory_kills: Counter,
}

/// The resources an attempt holds while it runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

impl WorkerMetrics {
    /// Registers every family in `registry` under `worker_`.
    pub fn register(&self, registry: &mut Registry) {
        let worker = registry.sub_registry_with_prefix("worker");
        worker.register(
            "cpu_millis",
            "CPU in thousandths of a core: offered (capacity) and held by running attempts (in_use)",
            self.cpu_millis.clone(),
        );
        worker.register(
            "memory_bytes",
            "Memory offered (capacity) and requested by running attempts (in_use)",
            self.memory_bytes.clone(),
        );
        worker.register(
            "gpus",
            "GPUs offered (capacity) and held by running attempts (in_use)",
            self.gpus.clone(),
        );
        worker.register(
            "attempts",
            "Attempts started, by runtime (process or container)",
            self.attempts.clone(),
        );
        worker.register(
            "log_bytes",
            "Bytes of step output written to attempt logs",
            self.log_bytes.clone(),
        );
        worker.register(
            "memory_kills",
            "Attempts killed for going over their memory limit",
            self.memory_kills.clone(),
        );
    }

    /// What this worker offers.
    pub fn set_capacity(&self, capacity: Held) {
        let state = StateLabels { state: "capacity" };
        self.cpu_millis
            .get_or_create(&state)
            .set(capacity.cpu_millis as i64);
        self.memory_bytes
            .get_or_create(&state)
            .set(capacity.memory_bytes as i64);
        self.gpus.get_or_create(&state).set(capacity.gpus as i64);
        self.add_in_use(Held::default(), 0);
    }

    /// An attempt holding `held` started, in a container or not.
    pub fn attempt_started(&self, held: Held, container: bool) {
        let runtime = if container { "container" } else { "process" };
        self.attempts
            .get_or_create(&RuntimeLabels { runtime })
            .inc();
        self.add_in_use(held, 1);
    }

    /// An attempt holding `held` ended.
    pub fn attempt_ended(&self, held: Held) {
        self.add_in_use(held, -1);
    }

    /// `bytes` of an attempt's output went to its log.
    pub fn logged(&self, bytes: u64) {
        self.log_bytes.inc_by(bytes);
    }

    /// An attempt was killed for going over its memory limit.
    pub fn memory_killed(&self) {
        self.memory_kills.inc();
    }

    fn add_in_use(&self, held: Held, sign: i64) {
        let state = StateLabels { state: "in_use" };
        self.cpu_millis
            .get_or_create(&state)
            .inc_by(sign * held.cpu_millis as i64);
        self.memory_bytes
            .get_or_create(&state)
            .inc_by(sign * held.memory_bytes as i64);
        self.gpus
            .get_or_create(&state)
            .inc_by(sign * held.gpus as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_hold_resources_while_they_run() {
        let metrics = WorkerMetrics::default();
        let mut registry = Registry::with_prefix("ferry");
        metrics.register(&mut registry);
        metrics.set_capacity(Held {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: 2,
        });
        let held = Held {
            cpu_millis: 1500,
            memory_bytes: 1 << 30,
            gpus: 1,
        };
        metrics.attempt_started(held, true);
        metrics.attempt_started(held, false);
        metrics.attempt_ended(held);
        metrics.logged(42);
        metrics.memory_killed();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "ferry_worker_cpu_millis{state=\"capacity\"} 4000",
            "ferry_worker_cpu_millis{state=\"in_use\"} 1500",
            "ferry_worker_gpus{state=\"in_use\"} 1",
            "ferry_worker_memory_bytes{state=\"in_use\"} 1073741824",
            "ferry_worker_attempts_total{runtime=\"container\"} 1",
            "ferry_worker_attempts_total{runtime=\"process\"} 1",
            "ferry_worker_log_bytes_total 42",
            "ferry_worker_memory_kills_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
