//! walbench: durable append latency for Ferry's Raft log candidates.
//!
//! usage: walbench <mech> <case> <run-label>
//!   mech: plain | raftengine | sled | bare
//!   case: a (1 x 300 B / sync), b (1 x 30 KB / sync), c (8 x 30 KB / sync),
//!         d (4 threads, each 1 x 300 B / sync)
//!         for mech=bare: prealloc-zero | prealloc-fallocate | grow
//! Prints one markdown table row. Data goes under ./data/<mech>-<case>.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use raft_engine::{Config, Engine, LogBatch, MessageExt};

// ---------- raft-engine glue ----------
#[derive(Clone)]
pub struct MessageExtTyped;
impl MessageExt for MessageExtTyped {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

// ---------- workload ----------
struct Case {
    entry_size: usize,
    entries_per_batch: usize,
    batches_per_thread: usize,
    threads: usize,
}

fn case(name: &str) -> Case {
    match name {
        "a" => Case { entry_size: 300, entries_per_batch: 1, batches_per_thread: 3000, threads: 1 },
        "b" => Case { entry_size: 30_000, entries_per_batch: 1, batches_per_thread: 3000, threads: 1 },
        "c" => Case { entry_size: 30_000, entries_per_batch: 8, batches_per_thread: 3000, threads: 1 },
        "d" => Case { entry_size: 300, entries_per_batch: 1, batches_per_thread: 1000, threads: 4 },
        _ => panic!("unknown case {name}"),
    }
}

/// Incompressible pseudo-random payload (xorshift), so lz4 in raft-engine gains nothing.
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every entry gets its own pseudo-random payload (seeded by thread and index), so
/// raft-engine's per-batch lz4 cannot exploit repeated entries. Built outside the timer.
fn make_batch(c: &Case, first_index: u64, seed: u64) -> (Vec<Entry>, HardState) {
    let entries = (0..c.entries_per_batch as u64)
        .map(|i| {
            let mut e = Entry::default();
            e.term = 1;
            e.index = first_index + i;
            e.set_data(payload(c.entry_size, seed.wrapping_mul(1_000_003) ^ (first_index + i)).into());
            e
        })
        .collect();
    let mut hs = HardState::default();
    hs.term = 1;
    hs.vote = 1;
    hs.commit = first_index.saturating_sub(1);
    (entries, hs)
}

// ---------- plain segmented WAL ----------
const SEGMENT_BYTES: u64 = 64 << 20;

struct PlainWal {
    dir: PathBuf,
    dir_fd: File,
    file: File,
    seg_no: u64,
    written: u64,
    buf: Vec<u8>,
    /// Some(..) = segments are zero-filled ahead of time by a helper thread
    /// (PostgreSQL-style), so appends overwrite already-allocated, already-written
    /// blocks and fdatasync has no size or extent metadata to commit.
    spare: Option<std::thread::JoinHandle<PathBuf>>,
}

fn zero_filled_spare(dir: PathBuf, n: u64) -> PathBuf {
    let p = dir.join(format!("spare-{n}.tmp"));
    let mut f = File::create(&p).unwrap();
    let z = vec![0u8; 1 << 20];
    for _ in 0..(SEGMENT_BYTES >> 20) {
        f.write_all(&z).unwrap();
    }
    f.sync_all().unwrap();
    p
}

fn fdatasync(f: &File) {
    let r = unsafe { libc::fdatasync(f.as_raw_fd()) };
    assert_eq!(r, 0, "fdatasync: {}", std::io::Error::last_os_error());
}

impl PlainWal {
    fn open(dir: &Path, prealloc: bool) -> PlainWal {
        fs::create_dir_all(dir).unwrap();
        let dir_fd = File::open(dir).unwrap();
        if prealloc {
            // first segment prepared before the benchmark starts (untimed)
            let first = zero_filled_spare(dir.to_owned(), 0);
            let file = Self::install_spare(dir, &dir_fd, first, 0);
            let d2 = dir.to_owned();
            let spare = Some(std::thread::spawn(move || zero_filled_spare(d2, 1)));
            PlainWal { dir: dir.to_owned(), dir_fd, file, seg_no: 0, written: 0, buf: Vec::with_capacity(1 << 20), spare }
        } else {
            let file = Self::new_segment(dir, &dir_fd, 0);
            PlainWal { dir: dir.to_owned(), dir_fd, file, seg_no: 0, written: 0, buf: Vec::with_capacity(1 << 20), spare: None }
        }
    }
    fn install_spare(dir: &Path, dir_fd: &File, spare: PathBuf, n: u64) -> File {
        let name = dir.join(format!("{n:020}.wal"));
        fs::rename(&spare, &name).unwrap();
        dir_fd.sync_all().unwrap(); // make the rename durable
        OpenOptions::new().write(true).open(name).unwrap()
    }
    fn new_segment(dir: &Path, dir_fd: &File, n: u64) -> File {
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(format!("{n:020}.wal")))
            .unwrap();
        dir_fd.sync_all().unwrap(); // make the new directory entry durable
        f
    }
    /// Record = len u32 LE | crc32 u32 LE | kind u8 | protobuf bytes.
    fn push(&mut self, kind: u8, body: &[u8]) {
        self.buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(body);
        self.buf.extend_from_slice(&h.finalize().to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(body);
    }
    /// One durable batch: encode, one write(2), one fdatasync(2).
    fn append(&mut self, entries: &[Entry], hs: &HardState) {
        self.buf.clear();
        for e in entries {
            let b = e.write_to_bytes().unwrap();
            self.push(1, &b);
        }
        let b = hs.write_to_bytes().unwrap();
        self.push(2, &b);
        if self.written > 0 && self.written + self.buf.len() as u64 > SEGMENT_BYTES {
            fdatasync(&self.file);
            self.seg_no += 1;
            self.file = match self.spare.take() {
                None => Self::new_segment(&self.dir, &self.dir_fd, self.seg_no),
                Some(h) => {
                    let sp = h.join().unwrap(); // waits only if the helper is behind
                    let f = Self::install_spare(&self.dir, &self.dir_fd, sp, self.seg_no);
                    let (d2, n) = (self.dir.clone(), self.seg_no + 1);
                    self.spare = Some(std::thread::spawn(move || zero_filled_spare(d2, n)));
                    f
                }
            };
            self.written = 0;
        }
        if self.spare.is_some() {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(&self.buf, self.written).unwrap(); // pwrite(2)
        } else {
            self.file.write_all(&self.buf).unwrap(); // write(2), O_APPEND
        }
        fdatasync(&self.file);
        self.written += self.buf.len() as u64;
    }
}

// ---------- measurement ----------
fn rss_hwm_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads_now() -> usize {
    fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut t = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            t += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    t
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn report(mech: &str, casename: &str, label: &str, c: Option<&Case>, mut lat: Vec<Duration>, wall: Duration, bytes: u64, extra: &str) {
    lat.sort();
    let n = lat.len();
    let mean = lat.iter().sum::<Duration>() / n as u32;
    let shape = match c {
        Some(c) => format!("{}x{}B, {} thr", c.entries_per_batch, c.entry_size, c.threads),
        None => "4096B".to_string(),
    };
    println!(
        "| {mech} | {casename} | {label} | {shape} | {n} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} MiB | {extra} |",
        n as f64 / wall.as_secs_f64(),
        bytes as f64 / wall.as_secs_f64() / 1e6,
        ms(mean),
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(lat[n - 1]),
        ms(wall),
        rss_hwm_kib() / 1024,
    );
}

fn run_single<F: FnMut(&[Entry], &HardState)>(c: &Case, mut persist: F) -> (Vec<Duration>, Duration, u64) {
    let mut lat = Vec::with_capacity(c.batches_per_thread);
    let mut idx = 1u64;
    let mut bytes = 0u64;
    let t0 = Instant::now();
    for _ in 0..c.batches_per_thread {
        let (entries, hs) = make_batch(c, idx, 42);
        idx += entries.len() as u64;
        bytes += (c.entry_size * c.entries_per_batch) as u64;
        let s = Instant::now();
        persist(&entries, &hs); // encode + write + durable sync (sled: NOT durable)
        lat.push(s.elapsed());
    }
    (lat, t0.elapsed(), bytes)
}

fn run_threads<F: Fn(usize, &[Entry], &HardState) + Send + Sync + 'static>(c: &Case, persist: F) -> (Vec<Duration>, Duration, u64) {
    let persist = Arc::new(persist);
    let barrier = Arc::new(Barrier::new(c.threads + 1));
    let mut hs_ = vec![];
    for t in 0..c.threads {
        let persist = persist.clone();
        let barrier = barrier.clone();
        let (n, per, size) = (c.batches_per_thread, c.entries_per_batch, c.entry_size);
        hs_.push(std::thread::spawn(move || {
            let cc = Case { entry_size: size, entries_per_batch: per, batches_per_thread: n, threads: 1 };
            let mut lat = Vec::with_capacity(n);
            let mut idx = 1u64;
            barrier.wait();
            for _ in 0..n {
                let (entries, hs) = make_batch(&cc, idx, 42 + t as u64);
                idx += entries.len() as u64;
                let s = Instant::now();
                persist(t, &entries, &hs);
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    barrier.wait();
    let t0 = Instant::now();
    let mut lat = vec![];
    for h in hs_ {
        lat.extend(h.join().unwrap());
    }
    let wall = t0.elapsed();
    let bytes = (c.threads * c.batches_per_thread * c.entries_per_batch * c.entry_size) as u64;
    (lat, wall, bytes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mech, casename, label) = (args[1].as_str(), args[2].as_str(), args[3].as_str());
    let dir = PathBuf::from("data").join(format!("{mech}-{casename}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();

    match mech {
        "plain" | "plainpre" => {
            let c = case(casename);
            let pre = mech == "plainpre";
            let (lat, wall, bytes) = if c.threads == 1 {
                let mut wal = PlainWal::open(&dir, pre);
                run_single(&c, |e, hs| wal.append(e, hs))
            } else {
                // Naive shared WAL: a mutex around write+fdatasync, no group commit.
                let wal = Mutex::new(PlainWal::open(&dir, pre));
                run_threads(&c, move |_t, e, hs| wal.lock().unwrap().append(e, hs))
            };
            let extra = format!("threads={}, disk={} MB", threads_now(), dir_bytes(&dir) / 1_000_000);
            report(mech, casename, label, Some(&c), lat, wall, bytes, &extra);
        }
        "raftengine" => {
            let c = case(casename);
            let cfg = Config { dir: dir.to_string_lossy().into_owned(), ..Default::default() };
            let engine = Arc::new(Engine::open(cfg).unwrap());
            let persist = {
                let engine = engine.clone();
                move |region: usize, e: &[Entry], hs: &HardState| {
                    let mut b = LogBatch::default();
                    b.add_entries::<MessageExtTyped>(region as u64 + 1, e).unwrap();
                    b.put_message(region as u64 + 1, b"hard_state".to_vec(), hs).unwrap();
                    engine.write(&mut b, true).unwrap();
                }
            };
            let (lat, wall, bytes) = if c.threads == 1 {
                run_single(&c, |e, hs| persist(0, e, hs))
            } else {
                run_threads(&c, persist)
            };
            // sanity: read back the last entry of region 1
            let last = engine.last_index(1).unwrap();
            let e = engine.get_entry::<MessageExtTyped>(1, last).unwrap().unwrap();
            assert_eq!(e.data.len(), c.entry_size);
            let extra = format!("threads={}, disk={} MB", threads_now(), dir_bytes(&dir) / 1_000_000);
            report(mech, casename, label, Some(&c), lat, wall, bytes, &extra);
        }
        "sled" => {
            let c = case(casename);
            let db = sled::open(&dir).unwrap();
            let persist = move |region: usize, e: &[Entry], hs: &HardState| {
                for en in e {
                    let mut k = (region as u64).to_be_bytes().to_vec();
                    k.extend_from_slice(&en.index.to_be_bytes());
                    db.insert(k, en.write_to_bytes().unwrap()).unwrap();
                }
                db.insert(format!("hs{region}").as_bytes(), hs.write_to_bytes().unwrap()).unwrap();
                db.flush().unwrap(); // sync_file_range only: NOT durable
            };
            let (lat, wall, bytes) = if c.threads == 1 {
                run_single(&c, |e, hs| persist(0, e, hs))
            } else {
                run_threads(&c, persist)
            };
            let extra = format!("threads={}, disk={} MB, NOT durable", threads_now(), dir_bytes(&dir) / 1_000_000);
            report(mech, casename, label, Some(&c), lat, wall, bytes, &extra);
        }
        "bare" => {
            const N: usize = 3000;
            const BS: usize = 4096;
            let path = dir.join("f");
            let mut f = OpenOptions::new().create(true).read(true).write(true).open(&path).unwrap();
            match casename {
                "prealloc-zero" => {
                    f.write_all(&vec![0u8; N * BS]).unwrap();
                    f.sync_all().unwrap();
                    use std::io::Seek;
                    f.seek(std::io::SeekFrom::Start(0)).unwrap();
                }
                "prealloc-fallocate" => {
                    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (N * BS) as i64) };
                    assert_eq!(r, 0);
                    f.sync_all().unwrap();
                }
                "grow" => {}
                _ => panic!("unknown bare case"),
            }
            File::open(&dir).unwrap().sync_all().unwrap();
            let buf = payload(BS, 7);
            let mut lat = Vec::with_capacity(N);
            let t0 = Instant::now();
            for _ in 0..N {
                let s = Instant::now();
                f.write_all(&buf).unwrap();
                fdatasync(&f);
                lat.push(s.elapsed());
            }
            let wall = t0.elapsed();
            report(mech, casename, label, None, lat, wall, (N * BS) as u64, "write(2)+fdatasync(2)");
        }
        _ => panic!("unknown mech"),
    }
    let _ = fs::remove_dir_all(&dir);
}
