//! Fault injection points for tests, compiled only into debug builds (the test
//! suite runs debug binaries; a release build has none of this).
//!
//! A daemon started with `FERRY_FAULTS=NAME=ACTION[,NAME=ACTION...]` arms those
//! points when it receives SIGUSR1, so that a test chooses the moment. Actions:
//! `panic` (the point panics) and `return` (the point asks its task to return, as
//! if it had ended by itself). Used to test fail-stop supervision: a member whose
//! Raft loop panics must exit, not keep serving without Raft.

/// The environment variable naming the faults to arm on SIGUSR1.
pub const ENV: &str = "FERRY_FAULTS";

#[cfg(debug_assertions)]
mod armed {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static ANY: AtomicBool = AtomicBool::new(false);
    pub static POINTS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

    pub fn action(name: &str) -> Option<String> {
        if !ANY.load(Ordering::Relaxed) {
            return None;
        }
        let points = POINTS.lock().unwrap_or_else(|poison| poison.into_inner());
        points.as_ref()?.get(name).cloned()
    }

    pub fn arm(spec: &str) -> Result<(), String> {
        let mut parsed = HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, action)) = item.split_once('=') else {
                return Err(format!("fault {item:?} is not NAME=ACTION"));
            };
            if !matches!(action, "panic" | "return") {
                return Err(format!(
                    "fault {name}: unknown action {action:?} (panic or return)"
                ));
            }
            parsed.insert(name.to_string(), action.to_string());
        }
        *POINTS.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(parsed);
        ANY.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A point that panics when armed with `panic`.
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if armed::action(name).as_deref() == Some("panic") {
        panic!("fault injected at {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A point that panics when armed with `panic` and says true when armed with
/// `return` (its task then returns).
#[inline]
pub fn should_return(name: &str) -> bool {
    #[cfg(debug_assertions)]
    match armed::action(name).as_deref() {
        Some("panic") => panic!("fault injected at {name}"),
        Some("return") => return true,
        _ => {}
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
    false
}

/// In a debug build with `FERRY_FAULTS` set: checks the list now (a bad one is an
/// error naming the problem) and arms it when SIGUSR1 arrives. Otherwise nothing.
pub fn install() -> Result<(), String> {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var(ENV) {
        armed::arm(&spec)?;
        // Parsed and stored, but not armed until the signal.
        armed::ANY.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut signal =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| format!("cannot listen for SIGUSR1: {e}"))?;
        tokio::spawn(async move {
            if signal.recv().await.is_some() {
                eprintln!("faults armed: {spec}");
                armed::ANY.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    Ok(())
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn a_bad_list_is_refused_with_the_reason() {
        assert!(armed::arm("raft.loop").unwrap_err().contains("NAME=ACTION"));
        assert!(
            armed::arm("raft.loop=explode")
                .unwrap_err()
                .contains("explode")
        );
    }
}
