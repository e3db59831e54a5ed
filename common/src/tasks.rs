//! Fail-stop supervision of a daemon's background tasks.
//!
//! A coordinator whose Raft loop died but whose servers still answer is worse
//! than a crashed one: it looks alive to clients and supervisors while it can no
//! longer commit. So every long-lived task is spawned through [`spawn`]: if it
//! returns before the daemon asked it to stop, or panics, the process logs which
//! task it was and exits with [`DIED`], and whatever supervises the process
//! (systemd, Kubernetes, the test harness) sees a clean crash and restarts it.
//! [`install_panic_hook`] makes a panic anywhere (a request handler, a helper
//! task) abort the process the same way, after logging the task it happened in.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The exit status of a process stopped because one of its tasks died
/// (EX_SOFTWARE, "internal software error").
pub const DIED: i32 = 70;

tokio::task_local! {
    /// The supervised task a piece of code runs in, for the panic hook.
    static TASK: &'static str;
}

/// How a supervised task ended before it was asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDeath {
    pub task: &'static str,
    pub reason: String,
}

impl std::fmt::Display for TaskDeath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {:?} {}", self.task, self.reason)
    }
}

/// Spawns `task` under supervision: if it returns while `stopping` is false, or
/// panics, the process exits with status [`DIED`] after logging the task's name.
/// The handle lets the owner wait for it at shutdown.
pub fn spawn<F>(name: &'static str, stopping: watch::Receiver<bool>, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(supervised(name, stopping, task, die))
}

/// The supervision itself, with what to do on a death as a parameter (tests
/// record it instead of exiting).
pub async fn supervised<F>(
    name: &'static str,
    stopping: watch::Receiver<bool>,
    task: F,
    on_death: impl FnOnce(TaskDeath),
) where
    F: Future<Output = ()> + Send + 'static,
{
    // Run on its own task so that a panic (when panics unwind) is seen here as a
    // join error instead of unwinding through the supervisor.
    let ended = tokio::spawn(TASK.scope(name, task)).await;
    let reason = match ended {
        Ok(()) if *stopping.borrow() => return,
        Ok(()) => "returned while the process was still running".to_string(),
        Err(error) if error.is_panic() => format!("panicked: {}", panic_text(error.into_panic())),
        // Cancelled: the runtime is shutting down.
        Err(_) => return,
    };
    on_death(TaskDeath { task: name, reason });
}

/// Logs the death and stops the process.
pub fn die(death: TaskDeath) {
    tracing::error!(
        task = death.task,
        reason = %death.reason,
        "a background task died; stopping the process so that it is restarted cleanly"
    );
    eprintln!("fatal: {death}; stopping the process");
    std::process::exit(DIED);
}

/// The name of the supervised task the caller runs in, if any.
pub fn current() -> Option<&'static str> {
    TASK.try_with(|name| *name).ok()
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Makes any panic log where it happened (the supervised task, if any, and the
/// thread) and then abort the process: a panic must never leave a daemon half
/// alive (a task gone, a lock poisoned). Called first thing in each daemon's
/// `main`; the previous hook (the standard message) still runs before the abort.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            task = current().unwrap_or("-"),
            thread = thread.name().unwrap_or("-"),
            panic = %info,
            "panic; stopping the process"
        );
        previous(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    async fn supervise_once(
        stopping: bool,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Option<TaskDeath> {
        let (_stop, receiver) = watch::channel(stopping);
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        supervised("loop", receiver, task, move |death| {
            *record.lock().expect("test lock") = Some(death);
        })
        .await;
        seen.lock().expect("test lock").take()
    }

    #[tokio::test]
    async fn a_task_returning_early_is_a_death_naming_it() {
        let death = supervise_once(false, async {}).await;
        assert_eq!(
            death,
            Some(TaskDeath {
                task: "loop",
                reason: "returned while the process was still running".to_string()
            })
        );
    }

    #[tokio::test]
    async fn a_task_returning_at_shutdown_is_fine() {
        assert_eq!(supervise_once(true, async {}).await, None);
    }

    #[tokio::test]
    async fn a_panic_is_a_death_with_its_message() {
        let death = supervise_once(true, async { panic!("boom") }).await;
        let death = death.expect("a panic is a death even while stopping");
        assert_eq!(death.task, "loop");
        assert_eq!(death.reason, "panicked: boom");
    }

    #[tokio::test]
    async fn the_task_knows_its_name() {
        let (_stop, receiver) = watch::channel(false);
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        supervised(
            "named",
            receiver,
            async move {
                *record.lock().expect("test lock") = current();
            },
            |_| {},
        )
        .await;
        assert_eq!(*seen.lock().expect("test lock"), Some("named"));
        assert_eq!(current(), None);
    }
}
