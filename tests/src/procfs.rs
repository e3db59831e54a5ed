//! What the kernel says about a process or a directory, as tests and
//! benchmarks read it: one place for `/proc/PID/status` figures and for the
//! bytes a directory takes on disk.

use std::path::Path;

/// A `/proc/PID/status` figure in KiB (`VmHWM`: peak resident memory,
/// `VmRSS`: resident now); `None` once the process is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
}

/// A process's peak resident memory (`VmHWM`) in MiB; `None` once it is gone.
pub fn peak_mib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmHWM").map(|kib| kib / 1024)
}

/// Bytes allocated on disk under `dir` (its holes not counted, unlike
/// `du -sb`).
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// The CPU time the process's live threads have had, in nanoseconds: the sum
/// of the first field of `/proc/PID/task/*/schedstat` (finer than
/// [`cpu_ticks`]' 10 ms ticks; a thread that already ended is not counted).
pub fn cpu_ns(pid: i32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let on_cpu = stat.split_whitespace().next().unwrap_or("0");
        total += on_cpu.parse::<u64>()?;
    }
    Ok(total)
}

/// The process's user plus system CPU time, in clock ticks.
pub fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which ends with the last ')').
    let rest = &stat[stat
        .rfind(')')
        .ok_or_else(|| anyhow::anyhow!("no command name in /proc/{pid}/stat"))?
        + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}
