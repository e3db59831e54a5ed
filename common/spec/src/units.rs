//! Units: durations (`1h30m`), memory sizes (`512Mi`) and CPU amounts (`500m`),
//! parsed exactly (no floating point) and formatted the way Ferry shows them.

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h`, `1h30m`, `1.5h` or `2d`
/// into milliseconds. Components are `<number><unit>` with units `ms`, `s`, `m`,
/// `h`, `d`; fractions of a millisecond are dropped. `0s` gives `Ok(0)`: callers
/// that need a positive duration check that themselves.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    const HINT: &str = "use e.g. 500ms, 30s, 10m, 1h or 1h30m";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the duration is empty ({HINT})"));
    }
    let bytes = t.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    while pos < bytes.len() {
        let num_start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
            pos += 1;
        }
        let number = &t[num_start..pos];
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = &t[unit_start..pos];
        if number.is_empty() {
            return Err(format!("{text:?} is not a duration ({HINT})"));
        }
        if unit.is_empty() {
            return Err(format!(
                "{text:?} is not a duration: {number:?} has no unit ({HINT})"
            ));
        }
        let unit_ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration: unknown unit {unit:?} (units are ms, s, m, h, d)"
                ));
            }
        };
        let (value, _exact) = scaled_decimal(number, unit_ms)
            .map_err(|why| format!("{text:?} is not a duration: {why}"))?;
        total = total
            .checked_add(value)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    u64::try_from(total).map_err(|_| format!("{text:?} is too long a duration"))
}

/// Renders a duration in milliseconds the way specs write durations and reasons
/// say them: `250ms`, `1.5s`, `2m`, `1m30s`, `1h30m`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        };
    }
    let minutes = ms / 60_000;
    let seconds = (ms % 60_000) / 1000;
    if minutes < 60 {
        return if seconds == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{seconds}s")
        };
    }
    let (hours, minutes) = (minutes / 60, minutes % 60);
    if minutes == 0 {
        format!("{hours}h")
    } else {
        format!("{hours}h{minutes}m")
    }
}

/// Renders a size the way Ferry shows sizes: `512 B`, `1.5 KiB`, `40.0 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a memory size: a plain number of bytes (`1048576`) or a number with a
/// binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`K`, `M`, `G`, `T`) suffix, e.g.
/// `512Mi`, `1.5Gi`, `2G`. Fractions of a byte are dropped; the size must be > 0.
pub fn parse_memory_bytes(text: &str) -> Result<u64, String> {
    const HINT: &str =
        "use bytes or a suffix: Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000)";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the memory size is empty ({HINT})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; a memory size must be positive"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a memory size ({HINT})"));
    }
    let multiplier: u128 = match suffix {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a memory size: unknown suffix {suffix:?} ({HINT})"
            ));
        }
    };
    let (bytes, _exact) = scaled_decimal(number, multiplier)
        .map_err(|why| format!("{text:?} is not a memory size: {why}"))?;
    if bytes == 0 {
        return Err(format!("memory size {text:?} must be greater than zero"));
    }
    u64::try_from(bytes).map_err(|_| format!("memory size {text:?} is too large"))
}

/// Parses a CPU amount: a number of cores (`2`, `0.5`) or millicores (`500m`).
/// The amount must be a whole number of millicores and greater than zero.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    const HINT: &str = "use a number of cores such as 0.5 or 2, or millicores such as \"500m\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the CPU amount is empty ({HINT})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; a CPU amount must be positive"
        ));
    }
    let millis = if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{text:?} is not a CPU amount: millicores must be a whole number ({HINT})"
            ));
        }
        m.parse::<u64>()
            .map_err(|_| format!("CPU amount {text:?} is too large"))?
    } else {
        if !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{text:?} is not a CPU amount ({HINT})"));
        }
        let (millis, exact) = scaled_decimal(t, 1_000)
            .map_err(|why| format!("{text:?} is not a CPU amount: {why}"))?;
        if !exact {
            return Err(format!(
                "CPU amount {text:?} is finer than one millicore (0.001 cores)"
            ));
        }
        u64::try_from(millis).map_err(|_| format!("CPU amount {text:?} is too large"))?
    };
    if millis == 0 {
        return Err(format!("CPU amount {text:?} must be greater than zero"));
    }
    Ok(millis)
}

/// `digits[.digits]` times `scale`, exactly, rounded down. Returns whether the
/// result was exact.
fn scaled_decimal(number: &str, scale: u128) -> Result<(u128, bool), String> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{number:?} is not a number"));
    }
    let too_large = || format!("{number:?} is too large");
    let mut value: u128 = 0;
    for b in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    value = value.checked_mul(scale).ok_or_else(too_large)?;
    // Fraction digits beyond 30 cannot change the result for any scale we use.
    let frac = &frac[..frac.len().min(30)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for b in frac.bytes() {
        numerator = numerator * 10 + u128::from(b - b'0');
        denominator *= 10;
    }
    let scaled = numerator.checked_mul(scale).ok_or_else(too_large)?;
    let value = value
        .checked_add(scaled / denominator)
        .ok_or_else(too_large)?;
    Ok((value, scaled % denominator == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1m30s500ms"), Ok(90_500));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_duration_ms(" 5s "), Ok(5_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        for bad in [
            "", "10", "1h30", "10 m", "10M", "5us", "m", "-1s", "1..5s", "ms5",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_duration_ms("10").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("99999999999999999999d").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_bytes("1024"), Ok(1024));
        assert_eq!(parse_memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_memory_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory_bytes("1Ti"), Ok(1 << 40));
        assert_eq!(parse_memory_bytes("1K"), Ok(1000));
        assert_eq!(parse_memory_bytes("3M"), Ok(3_000_000));
        assert_eq!(parse_memory_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory_bytes("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Ok(3 << 29));
        for bad in [
            "", "0", "12GB", "1 Gi", "Mi", "-1Mi", "1mi", "lots", "1.2.3M",
        ] {
            assert!(parse_memory_bytes(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_memory_bytes("12GB").unwrap_err().contains("\"GB\""));
        assert!(parse_memory_bytes("99999999999999999999Ti").is_err());
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("1.25"), Ok(1250));
        assert_eq!(parse_cpu_millis("2.0"), Ok(2000));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        for bad in ["", "0", "0m", "0.0001", "1.5m", "m", "-1", "two", "1e3"] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?} should fail");
        }
    }
}
