//! The wall clock, read in one place.
//!
//! In debug builds (the test suite's binaries) `FERRY_CLOCK_OFFSET_MS` shifts this
//! process's clock by a signed number of milliseconds, so that a test can run a
//! member whose clock is wrong; release builds have no such knob.

/// The environment variable holding a debug build's clock offset.
pub const CLOCK_OFFSET_ENV: &str = "FERRY_CLOCK_OFFSET_MS";

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    system.saturating_add(offset_ms())
}

/// Checks the debug build's clock offset now, so that a bad value stops the
/// daemon at start with the reason instead of at its first reading of the clock.
pub fn check_offset() -> Result<(), String> {
    #[cfg(debug_assertions)]
    debug_offset::parsed().clone()?;
    Ok(())
}

#[cfg(debug_assertions)]
fn offset_ms() -> i64 {
    debug_offset::parsed().clone().unwrap_or(0)
}

#[cfg(not(debug_assertions))]
fn offset_ms() -> i64 {
    0
}

#[cfg(debug_assertions)]
mod debug_offset {
    use std::sync::OnceLock;

    static OFFSET: OnceLock<Result<i64, String>> = OnceLock::new();

    pub fn parsed() -> &'static Result<i64, String> {
        OFFSET.get_or_init(|| match std::env::var(super::CLOCK_OFFSET_ENV) {
            Err(_) => Ok(0),
            Ok(value) => parse(&value),
        })
    }

    pub fn parse(value: &str) -> Result<i64, String> {
        value.trim().parse::<i64>().map_err(|_| {
            format!(
                "{}={value:?} is not a whole number of milliseconds",
                super::CLOCK_OFFSET_ENV
            )
        })
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_or_are_refused_with_the_reason() {
        assert_eq!(debug_offset::parse("-1800000"), Ok(-1_800_000));
        assert_eq!(debug_offset::parse(" 7200000 "), Ok(7_200_000));
        let refused = debug_offset::parse("30m").unwrap_err();
        assert!(refused.contains(CLOCK_OFFSET_ENV) && refused.contains("30m"));
    }
}
