//! The one lock-poisoning policy of Ferry's daemons.
//!
//! A lock is poisoned when a thread panicked while holding it. Every daemon
//! installs `tasks::install_panic_hook`, which aborts the process on any panic, so
//! a poisoned lock cannot be observed there; in tests (where panics unwind) it
//! means the test already failed, and the right answer is to fail loudly too,
//! never to go on with data a panicking writer may have left half changed.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`; a poisoned one panics, naming `what`.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    mutex.lock().unwrap_or_else(|_| poisoned(what))
}

/// Reads `lock`; a poisoned one panics, naming `what`.
pub fn read<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockReadGuard<'a, T> {
    lock.read().unwrap_or_else(|_| poisoned(what))
}

/// Writes `lock`; a poisoned one panics, naming `what`.
pub fn write<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockWriteGuard<'a, T> {
    lock.write().unwrap_or_else(|_| poisoned(what))
}

fn poisoned(what: &str) -> ! {
    panic!("the {what} lock is poisoned: a thread panicked while holding it")
}
