//! Plain-text rendering for the terminal: aligned tables, durations, sizes, times.

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn duration_ms(ms: i64) -> String {
    if ms < 0 {
        return String::new();
    }
    if ms < 10_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

pub fn bytes(size: u64) -> String {
    ferry_common::spec::format_bytes(size)
}

pub fn cpus(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{:.2}", millis as f64 / 1000.0)
    }
}

/// Time since a Unix timestamp in milliseconds, e.g. "3s ago".
pub fn ago(timestamp_ms: i64, now_ms: i64) -> String {
    if timestamp_ms <= 0 {
        return "never".into();
    }
    let seconds = ((now_ms - timestamp_ms) / 1000).max(0);
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

pub use ferry_common::time::now_ms;

/// A Unix timestamp in milliseconds as a UTC date and time, `2026-11-25 10:00:00Z`
/// (whole seconds; the proleptic Gregorian calendar, so no crate is needed).
pub fn utc_time(timestamp_ms: i64) -> String {
    let seconds = timestamp_ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = ferry_common::cron::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// A number as a metric value: Rust's shortest exact form (`0.93`, `12`,
/// `0.0001`), in scientific notation when it is very large or very small
/// (`1e300`, `2.5e-7`) so that it never takes a whole screen.
pub fn metric(value: f64) -> String {
    let magnitude = value.abs();
    if value != 0.0 && !(1e-5..1e15).contains(&magnitude) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

/// A signed difference between two metric values, rounded to 6 decimals so that
/// float noise (`0.026000000000000023`) does not show: `+0.026`, `-3`, `+1e-9`.
pub fn delta(value: f64) -> String {
    let fixed = format!("{value:+.6}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if value != 0.0 && matches!(trimmed, "+0" | "-0") {
        // Too small for 6 decimals: keep its magnitude visible.
        return format!("{}{value:e}", if value > 0.0 { "+" } else { "" });
    }
    if value == 0.0 {
        return "0".to_string();
    }
    trimmed.to_string()
}

/// "1 run", "3 runs".
pub fn count(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A text progress bar, `▕████░░░░▏`.
pub fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (done as usize * width) / total as usize
    };
    format!("▕{}{}▏", "█".repeat(filled), "░".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(text, "A    LONGER\nxyz  1\nq    22");
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(duration_ms(1500), "1.50s");
        assert_eq!(duration_ms(185_000), "3m05s");
        assert_eq!(cpus(1500), "1.50");
        assert_eq!(bar(1, 2, 4), "▕██░░▏");
        assert_eq!(ago(1000, 4000), "3s ago");
        assert_eq!(count(1, "run"), "1 run");
        assert_eq!(count(0, "blob"), "0 blobs");
    }

    #[test]
    fn utc_times_follow_the_calendar() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(1_795_600_800_000), "2026-11-25 10:00:00Z");
        assert_eq!(utc_time(1_795_600_800_999), "2026-11-25 10:00:00Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(4_107_542_399_000), "2100-02-28 23:59:59Z");
        assert_eq!(utc_time(-86_400_000), "1969-12-31 00:00:00Z");
        assert_eq!(utc_time(-1), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn metric_values_and_deltas() {
        assert_eq!(metric(0.93), "0.93");
        assert_eq!(metric(12.0), "12");
        assert_eq!(metric(0.0001), "0.0001");
        assert_eq!(metric(1e308), "1e308");
        assert_eq!(metric(-2.5e-7), "-2.5e-7");
        assert_eq!(metric(123456789012345.0), "123456789012345");
        assert_eq!(metric(0.0), "0");
        assert_eq!(delta(0.956 - 0.93), "+0.026");
        assert_eq!(delta(-3.0), "-3");
        assert_eq!(delta(0.0), "0");
        assert_eq!(delta(1e-9), "+1e-9");
        assert_eq!(delta(-2.5e-8), "-2.5e-8");
    }
}
