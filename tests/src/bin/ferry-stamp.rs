//! `ferry-stamp FILE`: the step of `ferry-bench latency`. Reads the precise clock
//! first thing and writes it to FILE (seconds since the epoch, microseconds, the
//! format of bash's `$EPOCHREALTIME`) through a temporary file and a rename, so a
//! reader never sees half of it. Standard library only, so that it starts fast:
//! what it costs to start is measured and printed by the benchmark.

fn main() -> std::io::Result<()> {
    let now = std::time::SystemTime::now();
    let Some(file) = std::env::args_os().nth(1) else {
        eprintln!("usage: ferry-stamp FILE");
        std::process::exit(2);
    };
    let seconds = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let file = std::path::PathBuf::from(file);
    // The rename would replace whatever FILE is: only a regular file, or none.
    if let Ok(meta) = std::fs::symlink_metadata(&file)
        && !meta.is_file()
    {
        eprintln!("ferry-stamp: {} is not a regular file", file.display());
        std::process::exit(2);
    }
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, format!("{seconds:.6}\n"))?;
    std::fs::rename(&temporary, &file)
}
