//! The ports the tests' daemons listen on: one allocator per process hands each
//! port out once, from a range the kernel never gives away by itself, in blocks
//! that test processes running side by side claim from each other with lock files.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Ports claimed from other processes at a time.
const BLOCK: u32 = 64;
/// The lowest port handed out when the range below the kernel's ephemeral range
/// is used: the ports under it hold most well-known services' defaults.
const PREFERRED_LOW: u32 = 20_000;
/// The kernel's default ephemeral range, used when `/proc` cannot be read.
const DEFAULT_EPHEMERAL: (u32, u32) = (32_768, 60_999);

/// A port on 127.0.0.1 for a daemon to listen on, different from every other
/// port this process was given, and free of any other claim.
///
/// Members of a replicated cluster must know each other's addresses before any
/// of them starts, and a restarted member must come back on its own port, so a
/// daemon cannot simply bind port 0 and report the port it got. The obvious
/// alternative, binding port 0 here, reading the port and closing the socket for
/// the daemon to bind later, races: until the daemon binds, that port is free
/// again, and the kernel hands ports of its ephemeral range to any `bind(0)` (a
/// test of another thread doing the same) and to the local end of any outgoing
/// connection (a worker, a client, a Raft peer dialling out), so the daemon could
/// find its port taken. This allocator removes the race at its root instead of
/// narrowing it:
///
/// - Ports come from a range outside the ephemeral range read from
///   `/proc/sys/net/ipv4/ip_local_port_range` (with the default 32768–60999:
///   20000–32767), so neither `bind(0)` nor an outgoing connection is ever given
///   one: only a process that asks for that very port can take it.
/// - Within the process, a port is handed out at most once (the tests run as
///   threads of one binary and all ask here), so no two daemons of the process
///   are given the same port, and a port a test keeps unbound on purpose (nothing
///   listens there) stays unbound.
/// - Across processes (test binaries of other checkouts, `ferry-bench`), ports
///   are claimed in blocks of 64 by taking an exclusive `flock` on a file under
///   the temporary directory, held until the process exits (the kernel releases
///   it even after SIGKILL). A process skips the blocks other processes hold; the
///   first block tried is random, so processes rarely contend at all.
/// - Each port is checked bindable once, when it is handed out, which skips the
///   ports some unrelated program listens on already.
///
/// What remains out of reach is an unrelated program that binds a port of this
/// range by number after the check; nothing a test does can prevent that.
///
/// A cluster keeps each member's port for its life, so a member restarted by a
/// test comes back on the same port (its listening socket uses `SO_REUSEADDR`,
/// so connections of its previous life in `TIME_WAIT` do not hold it).
pub fn free_port() -> u16 {
    static ALLOCATOR: OnceLock<Mutex<PortAllocator>> = OnceLock::new();
    ALLOCATOR
        .get_or_init(|| Mutex::new(PortAllocator::new()))
        .lock()
        // A panic while the allocator was locked left it consistent: every
        // field is updated before a port is handed out.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .next_port()
}

/// Hands out the ports of the blocks this process has claimed, in order.
struct PortAllocator {
    /// The first port of block 0; blocks follow each other without gaps.
    first_port: u32,
    blocks: u32,
    /// How many blocks have been tried (claimed or found taken), starting at
    /// `start_block` and wrapping round.
    blocks_tried: u32,
    start_block: u32,
    /// The next port to hand out and the end (exclusive) of the block it is in.
    next: u32,
    end: u32,
    /// The lock files of the blocks claimed: held open for the life of the
    /// process, since closing one would release its block to other processes.
    held: Vec<File>,
    lock_dir: PathBuf,
}

impl PortAllocator {
    fn new() -> PortAllocator {
        let (first_port, end_port) = allocation_range(ephemeral_range());
        let blocks = (end_port - first_port) / BLOCK;
        assert!(
            blocks > 0,
            "no room for test ports outside the ephemeral range {:?} \
             (/proc/sys/net/ipv4/ip_local_port_range)",
            ephemeral_range()
        );
        PortAllocator {
            first_port,
            blocks,
            blocks_tried: 0,
            start_block: (random_u64() % u64::from(blocks)) as u32,
            next: 0,
            end: 0,
            held: Vec::new(),
            lock_dir: std::env::temp_dir().join("ferry-tests-ports"),
        }
    }

    fn next_port(&mut self) -> u16 {
        loop {
            while self.next < self.end {
                let port = u16::try_from(self.next).expect("ports stay below 65536");
                self.next += 1;
                if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return port;
                }
            }
            self.claim_next_block();
        }
    }

    /// Moves on to the next block no other process holds.
    fn claim_next_block(&mut self) {
        while self.blocks_tried < self.blocks {
            let block = (self.start_block + self.blocks_tried) % self.blocks;
            self.blocks_tried += 1;
            let first = self.first_port + block * BLOCK;
            if self.claim(first) {
                self.next = first;
                self.end = first + BLOCK;
                return;
            }
        }
        panic!(
            "every block of test ports from {} to {} is in use by this or another \
             test process",
            self.first_port,
            self.first_port + self.blocks * BLOCK - 1
        );
    }

    /// Takes the lock of the block starting at `first`; false when another
    /// process holds it. Where locks cannot be taken at all (no writable
    /// temporary directory, a file system without `flock`), the block counts as
    /// claimed: ports stay unique within the process, which is what matters most.
    fn claim(&mut self, first: u32) -> bool {
        let _ = std::fs::create_dir_all(&self.lock_dir);
        let path = self.lock_dir.join(format!("block-{first}"));
        // A lock file another user created cannot be opened for writing; a
        // read-only descriptor locks just as well.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|_| File::open(&path));
        let Ok(file) = file else {
            return true;
        };
        match file.try_lock() {
            Ok(()) => {
                self.held.push(file);
                true
            }
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(_)) => true,
        }
    }
}

/// The kernel's ephemeral port range (inclusive), from which it picks the port
/// of a `bind(0)` and the local port of an outgoing connection.
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut numbers = text.split_whitespace().map(str::parse::<u32>);
            match (numbers.next(), numbers.next()) {
                (Some(Ok(low)), Some(Ok(high))) if low <= high && high <= 65_535 => {
                    Some((low, high))
                }
                _ => None,
            }
        })
        .unwrap_or(DEFAULT_EPHEMERAL)
}

/// The ports (start inclusive, end exclusive, a whole number of blocks) to hand
/// out: the larger of the unprivileged ranges below and above the ephemeral one.
fn allocation_range((low, high): (u32, u32)) -> (u32, u32) {
    let below_start = if low >= PREFERRED_LOW + 16 * BLOCK {
        PREFERRED_LOW
    } else {
        1024
    };
    let below = (below_start, low.max(below_start));
    let above = ((high + 1).max(1024), 65_536);
    let (start, end) = if below.1 - below.0 >= above.1 - above.0 {
        below
    } else {
        above
    };
    (start, start + (end - start) / BLOCK * BLOCK)
}

/// A random number for this process, with no dependency: the standard library
/// seeds each `RandomState` from the operating system's randomness.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ephemeral_range_leaves_the_ports_below_it() {
        assert_eq!(allocation_range((32_768, 60_999)), (20_000, 32_736));
    }

    #[test]
    fn a_range_starting_low_leaves_the_ports_above_it() {
        assert_eq!(allocation_range((1024, 50_000)), (50_001, 65_489));
    }

    #[test]
    fn a_block_another_process_holds_is_skipped() {
        let locks = tempfile::tempdir().expect("temp dir");
        let allocator = || {
            let mut allocator = PortAllocator::new();
            allocator.lock_dir = locks.path().to_path_buf();
            allocator.start_block = 0;
            allocator
        };
        // Two allocators stand for two processes: their locks are taken through
        // separate open files, which exclude each other as across processes.
        let (mut one, mut other) = (allocator(), allocator());
        let first_port = one.first_port;
        let block_of = |port: u16| (u32::from(port) - first_port) / BLOCK;
        let (mine, theirs) = (one.next_port(), other.next_port());
        assert_eq!(block_of(mine), 0);
        assert_eq!(block_of(theirs), 1);
    }

    #[test]
    fn ports_are_never_handed_out_twice_and_lie_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(
            ports
                .iter()
                .all(|port| !(low..=high).contains(&u32::from(*port))),
            "{ports:?} inside {low}..={high}"
        );
    }
}
