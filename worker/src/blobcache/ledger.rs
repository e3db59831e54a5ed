//! The blob cache's bookkeeping, without IO: which entries it holds, their
//! sizes, the order of their last use, which are in use by a staging attempt
//! (pinned), and which entries must go to admit a new one within the bound.
//! The cache (`super::BlobCache`) carries out what it decides on the disk.

use std::collections::{BTreeSet, HashMap};

/// What the cache last saw of an entry's file: its size, modification time
/// and mode. A use that finds them changed hashes the file again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub modified_ns: i128,
    pub mode: u32,
}

/// One entry as the ledger knows it.
#[derive(Debug, Clone)]
struct Entry {
    /// Tells this admission of the digest from a later one, so that a lease
    /// on an entry that was removed and admitted again unpins nothing.
    id: u64,
    stamp: Stamp,
    last_use: u64,
    pins: u32,
    /// Hashed by this process (on download, or on a first use after start).
    verified: bool,
}

/// An entry found by [`Ledger::lookup`], now pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub id: u64,
    pub stamp: Stamp,
    pub verified: bool,
}

/// What [`Ledger::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted (and pinned) as `id`, once the `evict`ed entries' files are gone.
    Admitted { id: u64, evict: Vec<String> },
    /// Larger than the whole bound (or the cache is off): used once, never kept.
    TooLarge,
    /// The entries in use leave no room: used once, nothing evicted.
    NoRoom,
    /// Already held (another admission got there first); nothing changed.
    Present,
}

/// Entries by digest, their total size within `max_bytes`, and their order of
/// last use.
#[derive(Debug)]
pub struct Ledger {
    max_bytes: u64,
    entries: HashMap<String, Entry>,
    /// `(last use, digest)`, oldest first.
    order: BTreeSet<(u64, String)>,
    total: u64,
    /// A logical clock: every use and admission takes the next tick.
    clock: u64,
    next_id: u64,
}

impl Ledger {
    /// An empty ledger that holds at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Ledger {
        Ledger {
            max_bytes,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            total: 0,
            clock: 0,
            next_id: 1,
        }
    }

    /// Bytes held by the entries.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `digest` has an entry.
    pub fn contains(&self, digest: &str) -> bool {
        self.entries.contains_key(digest)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert(&mut self, digest: &str, stamp: Stamp, pins: u32, verified: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let last_use = self.tick();
        self.order.insert((last_use, digest.to_string()));
        self.total = self.total.saturating_add(stamp.size);
        self.entries.insert(
            digest.to_string(),
            Entry {
                id,
                stamp,
                last_use,
                pins,
                verified,
            },
        );
        id
    }

    /// Records an entry found on disk at start, unverified and unpinned, as
    /// used after every entry recorded before it (call oldest first).
    pub fn insert_found(&mut self, digest: &str, stamp: Stamp) {
        if !self.entries.contains_key(digest) {
            self.insert(digest, stamp, 0, false);
        }
    }

    /// The entry of `digest`, pinned and marked as used now; `None` if there is
    /// none.
    pub fn lookup(&mut self, digest: &str) -> Option<Found> {
        let now = self.tick();
        let entry = self.entries.get_mut(digest)?;
        self.order.remove(&(entry.last_use, digest.to_string()));
        entry.last_use = now;
        entry.pins += 1;
        self.order.insert((now, digest.to_string()));
        Some(Found {
            id: entry.id,
            stamp: entry.stamp,
            verified: entry.verified,
        })
    }

    /// Records that entry `id` of `digest` was hashed and matches, with its
    /// file's stamp as it is now.
    pub fn mark_verified(&mut self, digest: &str, id: u64, stamp: Stamp) {
        if let Some(entry) = self.entries.get_mut(digest)
            && entry.id == id
        {
            entry.verified = true;
            self.total = self.total - entry.stamp.size + stamp.size;
            entry.stamp = stamp;
        }
    }

    /// Releases one pin of entry `id` of `digest` (nothing if that entry is gone).
    pub fn unpin(&mut self, digest: &str, id: u64) {
        if let Some(entry) = self.entries.get_mut(digest)
            && entry.id == id
        {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Forgets entry `id` of `digest` (found damaged, or refused by its user),
    /// pinned or not; `true` if it was there and its file is to be removed.
    pub fn remove(&mut self, digest: &str, id: u64) -> bool {
        match self.entries.get(digest) {
            Some(entry) if entry.id == id => {
                self.forget(digest);
                true
            }
            _ => false,
        }
    }

    fn forget(&mut self, digest: &str) {
        if let Some(entry) = self.entries.remove(digest) {
            self.order.remove(&(entry.last_use, digest.to_string()));
            self.total -= entry.stamp.size;
        }
    }

    /// The unpinned entries to evict, least recently used first, so that
    /// `incoming` more bytes fit within the bound; `None` when the unpinned
    /// entries are not enough (then nothing is to go).
    fn room_for(&self, incoming: u64) -> Option<Vec<String>> {
        let mut excess = self
            .total
            .saturating_add(incoming)
            .saturating_sub(self.max_bytes);
        let mut evict = Vec::new();
        for (_, digest) in &self.order {
            if excess == 0 {
                break;
            }
            let entry = &self.entries[digest];
            if entry.pins > 0 {
                continue;
            }
            excess = excess.saturating_sub(entry.stamp.size);
            evict.push(digest.clone());
        }
        (excess == 0).then_some(evict)
    }

    /// Admits a verified blob of `stamp.size` bytes as `digest`, pinned once,
    /// evicting least recently used unpinned entries to stay within the bound.
    /// The evicted entries are forgotten here; the caller removes their files.
    pub fn admit(&mut self, digest: &str, stamp: Stamp) -> Admission {
        if self.entries.contains_key(digest) {
            return Admission::Present;
        }
        if self.max_bytes == 0 || stamp.size > self.max_bytes {
            return Admission::TooLarge;
        }
        let Some(evict) = self.room_for(stamp.size) else {
            return Admission::NoRoom;
        };
        for digest in &evict {
            self.forget(digest);
        }
        let id = self.insert(digest, stamp, 1, true);
        Admission::Admitted { id, evict }
    }

    /// The unpinned entries to evict, oldest first, to bring the total within
    /// the bound (after the bound was lowered); forgotten here.
    pub fn shrink(&mut self) -> Vec<String> {
        let evict = self.room_for(0).unwrap_or_default();
        for digest in &evict {
            self.forget(digest);
        }
        evict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(size: u64) -> Stamp {
        Stamp {
            size,
            ..Stamp::default()
        }
    }

    fn admitted(ledger: &mut Ledger, digest: &str, size: u64) -> (u64, Vec<String>) {
        match ledger.admit(digest, sized(size)) {
            Admission::Admitted { id, evict } => (id, evict),
            other => panic!("{digest} not admitted: {other:?}"),
        }
    }

    #[test]
    fn the_least_recently_used_entries_go_first_and_the_total_stays_within_the_bound() {
        let mut ledger = Ledger::new(100);
        let (a, evict) = admitted(&mut ledger, "a", 40);
        assert!(evict.is_empty());
        let (b, _) = admitted(&mut ledger, "b", 40);
        ledger.unpin("a", a);
        ledger.unpin("b", b);
        // `a` is used again: `b` is now the least recently used.
        let found = ledger.lookup("a").unwrap();
        assert_eq!((found.id, found.stamp.size, found.verified), (a, 40, true));
        ledger.unpin("a", a);
        let (c, evict) = admitted(&mut ledger, "c", 50);
        assert_eq!(evict, ["b"]);
        assert!(!ledger.contains("b") && ledger.contains("a") && ledger.contains("c"));
        assert_eq!(ledger.total(), 90);
        ledger.unpin("c", c);
        // Two go for one large entry, oldest first; an exact fit is allowed.
        let (_, evict) = admitted(&mut ledger, "d", 100);
        assert_eq!(evict, ["a", "c"]);
        assert_eq!((ledger.total(), ledger.len()), (100, 1));
        assert!(ledger.lookup("b").is_none());
    }

    #[test]
    fn entries_in_use_are_never_evicted() {
        let mut ledger = Ledger::new(100);
        let (a, _) = admitted(&mut ledger, "a", 60);
        // `a` is still pinned by its admission: `b` cannot fit, nothing goes.
        assert_eq!(ledger.admit("b", sized(60)), Admission::NoRoom);
        assert!(ledger.contains("a"));
        // A second user pins it too; one release is not enough.
        ledger.lookup("a").unwrap();
        ledger.unpin("a", a);
        assert_eq!(ledger.admit("b", sized(60)), Admission::NoRoom);
        ledger.unpin("a", a);
        let (_, evict) = admitted(&mut ledger, "b", 60);
        assert_eq!(evict, ["a"]);
        // Pinned entries are skipped, an older unpinned one still goes.
        let mut ledger = Ledger::new(100);
        let (old, _) = admitted(&mut ledger, "old", 30);
        let (_busy, _) = admitted(&mut ledger, "busy", 30);
        ledger.unpin("old", old);
        let (_, evict) = admitted(&mut ledger, "new", 60);
        assert_eq!(evict, ["old"]);
        assert!(ledger.contains("busy"));
    }

    #[test]
    fn a_blob_larger_than_the_bound_is_never_admitted_and_evicts_nothing() {
        let mut ledger = Ledger::new(100);
        let (a, _) = admitted(&mut ledger, "a", 10);
        ledger.unpin("a", a);
        assert_eq!(ledger.admit("huge", sized(101)), Admission::TooLarge);
        assert!(ledger.contains("a"));
        assert_eq!(ledger.total(), 10);
        // Off: nothing is ever admitted.
        let mut off = Ledger::new(0);
        assert_eq!(off.admit("a", sized(1)), Admission::TooLarge);
        assert_eq!(off.admit("empty", sized(0)), Admission::TooLarge);
        assert!(off.is_empty());
        // An empty blob fits even a full cache.
        let mut full = Ledger::new(10);
        admitted(&mut full, "ten", 10);
        let (_, evict) = admitted(&mut full, "empty", 0);
        assert!(evict.is_empty());
    }

    #[test]
    fn a_digest_is_admitted_once_and_a_removed_entry_ignores_stale_leases() {
        let mut ledger = Ledger::new(100);
        let (first, _) = admitted(&mut ledger, "a", 10);
        assert_eq!(ledger.admit("a", sized(10)), Admission::Present);
        assert_eq!(ledger.total(), 10);
        // Found damaged and removed while pinned, then admitted again.
        assert!(ledger.remove("a", first));
        assert!(!ledger.remove("a", first), "removed once");
        assert_eq!(ledger.total(), 0);
        let (second, _) = admitted(&mut ledger, "a", 10);
        assert_ne!(first, second);
        // The old lease's release and removal touch nothing of the new entry.
        ledger.unpin("a", first);
        assert!(!ledger.remove("a", first));
        assert_eq!(ledger.admit("b", sized(95)), Admission::NoRoom);
        ledger.unpin("a", second);
        assert!(matches!(
            ledger.admit("b", sized(95)),
            Admission::Admitted { .. }
        ));
    }

    #[test]
    fn entries_found_at_start_are_unverified_keep_their_order_and_shrink_to_the_bound() {
        let mut ledger = Ledger::new(50);
        // Oldest first, as the cache lists them by modification time.
        for (digest, size) in [("old", 20), ("mid", 20), ("new", 20)] {
            ledger.insert_found(digest, sized(size));
        }
        assert_eq!(ledger.total(), 60);
        assert_eq!(ledger.shrink(), ["old"]);
        assert_eq!(ledger.total(), 40);
        let found = ledger.lookup("mid").unwrap();
        assert!(!found.verified);
        let stamp = Stamp {
            size: 20,
            modified_ns: 7,
            mode: 0o444,
        };
        ledger.mark_verified("mid", found.id, stamp);
        let again = ledger.lookup("mid").unwrap();
        assert!(again.verified);
        assert_eq!(again.stamp, stamp);
        // Within the bound: nothing to shrink.
        assert!(ledger.shrink().is_empty());
    }
}
