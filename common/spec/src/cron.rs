//! Cron expressions for pipeline schedules: parsing, and finding the ticks of a
//! schedule around a given instant.
//!
//! Everything here is pure: time comes in as an argument (milliseconds since the Unix
//! epoch, UTC) and the answers depend only on the expression and that argument, so
//! every coordinator replica that applies the same command computes the same ticks.
//!
//! Why hand-written and not a crate: `cron` (0.17) requires the seconds field,
//! numbers Sunday as 1 and ANDs day-of-month with day-of-week; `croner` (4.0) fits
//! the semantics but reports errors without naming the field ("Component error:
//! Position 61 is out of bounds"), accepts a wider dialect (`L`, `W`, `#`, a year
//! field) that schedules would then have to support forever, and brings chrono plus
//! the `derive_builder`/`darling` and `strum` proc-macro stacks. The grammar below
//! is small, and a bitset per field with a field-by-field search gives next and
//! previous ticks in bounded time without any date library.
//!
//! Grammar: 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds
//! first, separated by whitespace. Each field is a comma-separated list of `*`,
//! `N`, `A-B`, `*/S`, `A-B/S` or `A/S` (from A to the field's maximum). Months
//! accept `JAN`..`DEC`, weekdays `SUN`..`SAT` (any case); weekday 0 and 7 are both
//! Sunday, and `SUN` at the end of a range means 7 (`FRI-SUN`). When both
//! day-of-month and day-of-week are restricted (neither matches every value) a day
//! matches if either does, as in Vixie cron; otherwise both must match.

/// Seconds in one day.
const SECONDS_PER_DAY: i64 = 86_400;

/// How many calendar years the searches look ahead or back before concluding that
/// the expression never fires. Any month and day-of-month that exist at all occur
/// within 8 years (February 29 from 2096 to 2104 is the longest gap), and a
/// restricted day-of-week matches within every month, so "none within 8 years"
/// means "never" (for example `0 0 30 2 *`).
const SEARCH_YEARS: i64 = 8;

const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The shape of one field: its name in messages, the values `*` covers, the largest
/// value written explicitly (7 for Sunday in day-of-week) and its names if any.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    max_written: u32,
    names: &'static [&'static str],
    names_describe: &'static str,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    max_written: 59,
    names: &[],
    names_describe: "",
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    max_written: 59,
    names: &[],
    names_describe: "",
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    max_written: 23,
    names: &[],
    names_describe: "",
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    max_written: 31,
    names: &[],
    names_describe: "",
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    max_written: 12,
    names: MONTH_NAMES,
    names_describe: "a month name (JAN-DEC)",
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 6,
    max_written: 7,
    names: WEEKDAY_NAMES,
    names_describe: "a day name (SUN-SAT)",
};

/// A parsed cron expression (UTC).
///
/// Each field is a bitset: bit `v` is set when the field matches value `v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    expr: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// True when day-of-month and day-of-week are both restricted, so a day matches
    /// if either field matches (the Vixie cron rule) rather than both.
    either_day_field: bool,
}

/// The ticks of a schedule that fell in an interval, as [`Cron::due`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The latest tick in the interval, in milliseconds since the Unix epoch.
    pub latest_ms: i64,
    /// How many ticks the interval holds, counted up to the caller's cap.
    pub count: u64,
}

impl Cron {
    /// Parses 5 fields (minute hour day-of-month month day-of-week) or 6 fields
    /// (second first). Supports `*`, lists `a,b`, ranges `a-b`, steps `*/n`, `a-b/n`
    /// and `a/n`, month and weekday names (`JAN`, `MON`), 0 or 7 = Sunday, and the
    /// usual day-of-month/day-of-week OR rule when both are restricted. With 5
    /// fields the second is 0.
    ///
    /// Errors are plain sentences naming the field and the problem, e.g.
    /// `cron expression "61 * * * *": minute field "61" is out of range (0-59)`.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let (second_field, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            count => {
                return Err(format!(
                    "cron expression {expr:?}: expected 5 fields (minute hour day-of-month \
                     month day-of-week) or 6 (with seconds first), got {count}"
                ));
            }
        };
        let in_expr = |problem: String| format!("cron expression {expr:?}: {problem}");
        let seconds = parse_field(second_field, &SECOND).map_err(in_expr)?;
        let minutes = parse_field(rest[0], &MINUTE).map_err(in_expr)?;
        let hours = parse_field(rest[1], &HOUR).map_err(in_expr)?;
        let days_of_month = parse_field(rest[2], &DAY_OF_MONTH).map_err(in_expr)?;
        let months = parse_field(rest[3], &MONTH).map_err(in_expr)?;
        let mut days_of_week = parse_field(rest[4], &DAY_OF_WEEK).map_err(in_expr)?;
        // Weekday 7 is another way to write Sunday.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let either_day_field =
            days_of_month != full_mask(&DAY_OF_MONTH) && days_of_week != full_mask(&DAY_OF_WEEK);
        Ok(Cron {
            expr: expr.trim().to_string(),
            seconds,
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            either_day_field,
        })
    }

    /// The expression as it was given, without surrounding whitespace.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first tick strictly after `after_ms`, in milliseconds since the Unix epoch
    /// (always a whole second). None when the expression never fires (for example
    /// February 30), which the search establishes by looking 8 years ahead, or when
    /// the tick would not fit in an `i64` of milliseconds.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = after_ms.div_euclid(1000).checked_add(1)?;
        self.first_tick_at_or_after(start)
    }

    /// The last tick at or before `at_ms`, in milliseconds since the Unix epoch
    /// (always a whole second). None when the expression never fires, which the
    /// search establishes by looking 8 years back.
    pub fn prev_at_or_before(&self, at_ms: i64) -> Option<i64> {
        self.last_tick_at_or_before(at_ms.div_euclid(1000))
    }

    /// The ticks in `(after_ms, now_ms]`: the latest one, and how many there are,
    /// counting up to `cap` (the count is `cap` when there are at least that many,
    /// so pass `cap >= 1`). None when the interval holds no tick.
    ///
    /// The cost is bounded by `cap` searches whatever the length of the interval.
    pub fn due(&self, after_ms: i64, now_ms: i64, cap: u64) -> Option<Due> {
        if now_ms <= after_ms {
            return None;
        }
        let latest_ms = self.prev_at_or_before(now_ms)?;
        if latest_ms <= after_ms {
            return None;
        }
        let mut count = 0;
        let mut cursor = after_ms;
        while count < cap && cursor < latest_ms {
            match self.next_after(cursor) {
                Some(tick) if tick <= latest_ms => {
                    count += 1;
                    cursor = tick;
                }
                _ => break,
            }
        }
        Some(Due { latest_ms, count })
    }

    /// True when the day (as days since the epoch, and its day of the month)
    /// matches the day-of-month and day-of-week fields.
    fn day_matches(&self, epoch_day: i64, day_of_month: u32) -> bool {
        let weekday = weekday_of(epoch_day);
        let dom = bit_is_set(self.days_of_month, day_of_month);
        let dow = bit_is_set(self.days_of_week, weekday);
        if self.either_day_field {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first tick at or after second `start` (seconds since the epoch).
    fn first_tick_at_or_after(&self, start: i64) -> Option<i64> {
        let mut day = start.div_euclid(SECONDS_PER_DAY);
        let mut floor = start.rem_euclid(SECONDS_PER_DAY) as i32;
        let (start_year, _, _) = civil_from_days(day);
        loop {
            let (year, month, day_of_month) = civil_from_days(day);
            if year > start_year + SEARCH_YEARS {
                return None;
            }
            if !bit_is_set(self.months, month) {
                // Skip to the first day of the next month.
                day += i64::from(days_in_month(year, month) - day_of_month + 1);
                floor = 0;
                continue;
            }
            if self.day_matches(day, day_of_month)
                && let Some(second_of_day) = self.first_time_at_or_after(floor)
            {
                return seconds_to_ms(day, second_of_day);
            }
            day += 1;
            floor = 0;
        }
    }

    /// The last tick at or before second `end` (seconds since the epoch).
    fn last_tick_at_or_before(&self, end: i64) -> Option<i64> {
        let mut day = end.div_euclid(SECONDS_PER_DAY);
        let mut ceiling = end.rem_euclid(SECONDS_PER_DAY) as i32;
        let (end_year, _, _) = civil_from_days(day);
        loop {
            let (year, month, day_of_month) = civil_from_days(day);
            if year < end_year - SEARCH_YEARS {
                return None;
            }
            if !bit_is_set(self.months, month) {
                // Skip to the last day of the previous month.
                day -= i64::from(day_of_month);
                ceiling = (SECONDS_PER_DAY - 1) as i32;
                continue;
            }
            if self.day_matches(day, day_of_month)
                && let Some(second_of_day) = self.last_time_at_or_before(ceiling)
            {
                return seconds_to_ms(day, second_of_day);
            }
            day -= 1;
            ceiling = (SECONDS_PER_DAY - 1) as i32;
        }
    }

    /// The first matching second of the day at or after `floor` (a second of the
    /// day), carrying into the next minute or hour when a field runs out.
    fn first_time_at_or_after(&self, floor: i32) -> Option<i32> {
        let (mut hour, mut minute, mut second) = (floor / 3600, floor / 60 % 60, floor % 60);
        loop {
            let matching_hour = first_set_at_or_after(self.hours, hour)?;
            if matching_hour != hour {
                (hour, minute, second) = (matching_hour, 0, 0);
            }
            let Some(matching_minute) = first_set_at_or_after(self.minutes, minute) else {
                (hour, minute, second) = (hour + 1, 0, 0);
                continue;
            };
            if matching_minute != minute {
                (minute, second) = (matching_minute, 0);
            }
            let Some(matching_second) = first_set_at_or_after(self.seconds, second) else {
                (minute, second) = (minute + 1, 0);
                continue;
            };
            return Some(hour * 3600 + minute * 60 + matching_second);
        }
    }

    /// The last matching second of the day at or before `ceiling` (a second of the
    /// day), borrowing from the previous minute or hour when a field runs out.
    fn last_time_at_or_before(&self, ceiling: i32) -> Option<i32> {
        let (mut hour, mut minute, mut second) = (ceiling / 3600, ceiling / 60 % 60, ceiling % 60);
        loop {
            let matching_hour = last_set_at_or_before(self.hours, hour)?;
            if matching_hour != hour {
                (hour, minute, second) = (matching_hour, 59, 59);
            }
            let Some(matching_minute) = last_set_at_or_before(self.minutes, minute) else {
                (hour, minute, second) = (hour - 1, 59, 59);
                continue;
            };
            if matching_minute != minute {
                (minute, second) = (matching_minute, 59);
            }
            let Some(matching_second) = last_set_at_or_before(self.seconds, second) else {
                (minute, second) = (minute - 1, 59);
                continue;
            };
            return Some(hour * 3600 + minute * 60 + matching_second);
        }
    }
}

/// Parses one field into its bitset. The error is the sentence after the
/// expression, e.g. `minute field "61" is out of range (0-59)`.
fn parse_field(field: &str, spec: &FieldSpec) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err(format!(
                "{} field {field:?} has an empty list element",
                spec.name
            ));
        }
        bits |= parse_item(item, spec).map_err(|(subject, predicate)| {
            if subject == field {
                format!("{} field {field:?} {predicate}", spec.name)
            } else {
                format!("{} field {field:?}: {subject:?} {predicate}", spec.name)
            }
        })?;
    }
    Ok(bits)
}

/// Parses one list element (`*`, `N`, `A-B`, each optionally `/S`) into a bitset.
/// The error names the offending text and what is wrong with it.
fn parse_item(item: &str, spec: &FieldSpec) -> Result<u64, (String, String)> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(step)?)),
        None => (item, None),
    };
    let (start, end) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((start, end)) = range.split_once('-') {
        let start_value = parse_value(start, spec, false)?;
        let end_value = parse_value(end, spec, true)?;
        if start_value > end_value {
            return Err((
                range.to_string(),
                format!("is a backwards range ({start} comes after {end})"),
            ));
        }
        (start_value, end_value)
    } else {
        let value = parse_value(range, spec, false)?;
        // `A/S` runs from A to the end of the field.
        (value, if step.is_some() { spec.max } else { value })
    };
    let step = step.unwrap_or(1);
    Ok((start..=end)
        .step_by(step)
        .fold(0u64, |bits, value| bits | (1 << value)))
}

/// Parses the step after `/`: a whole number of at least 1. Steps larger than any
/// field are clamped, since they select only the start of the range anyway.
fn parse_step(step: &str) -> Result<usize, (String, String)> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            step.to_string(),
            "is not a valid step (a number)".to_string(),
        ));
    }
    match step.parse::<u32>().unwrap_or(u32::MAX) {
        0 => Err((
            step.to_string(),
            "is not a valid step (steps start at 1)".to_string(),
        )),
        value => Ok(value.min(64) as usize),
    }
}

/// Parses a number or a name within the field's range. `range_end` lets `SUN` end a
/// weekday range as 7, so that `FRI-SUN` is not backwards.
fn parse_value(text: &str, spec: &FieldSpec, range_end: bool) -> Result<u32, (String, String)> {
    let out_of_range = || {
        (
            text.to_string(),
            format!("is out of range ({}-{})", spec.min, spec.max_written),
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let value = text.parse::<u32>().map_err(|_| out_of_range())?;
        if value < spec.min || value > spec.max_written {
            return Err(out_of_range());
        }
        return Ok(value);
    }
    if let Some(index) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        let value = spec.min + index as u32;
        // Sunday is weekday 0, the only named value whose field starts at 0.
        return Ok(if range_end && value == 0 { 7 } else { value });
    }
    let expected = if spec.names.is_empty() {
        "is not a number".to_string()
    } else {
        format!("is not a number or {}", spec.names_describe)
    };
    Err((text.to_string(), expected))
}

/// The bitset with every value that `*` covers in the field.
fn full_mask(spec: &FieldSpec) -> u64 {
    (spec.min..=spec.max).fold(0u64, |bits, value| bits | (1 << value))
}

fn bit_is_set(bits: u64, value: u32) -> bool {
    value < 64 && bits & (1 << value) != 0
}

/// The smallest set value that is at least `value`, if any.
fn first_set_at_or_after(bits: u64, value: i32) -> Option<i32> {
    if !(0..64).contains(&value) {
        return None;
    }
    let remaining = bits & (u64::MAX << value);
    (remaining != 0).then(|| remaining.trailing_zeros() as i32)
}

/// The largest set value that is at most `value`, if any.
fn last_set_at_or_before(bits: u64, value: i32) -> Option<i32> {
    if value < 0 {
        return None;
    }
    let remaining = bits & (u64::MAX >> (63 - value.min(63)));
    (remaining != 0).then(|| 63 - remaining.leading_zeros() as i32)
}

/// Milliseconds since the epoch of a second of a day, or None on overflow.
fn seconds_to_ms(epoch_day: i64, second_of_day: i32) -> Option<i64> {
    epoch_day
        .checked_mul(SECONDS_PER_DAY)?
        .checked_add(i64::from(second_of_day))?
        .checked_mul(1000)
}

/// Day of the week of a day since the epoch, 0 = Sunday (1970-01-01 was a Thursday).
fn weekday_of(epoch_day: i64) -> u32 {
    (epoch_day + 4).rem_euclid(7) as u32
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The proleptic Gregorian (year, month, day) of a day since the epoch, by Howard
/// Hinnant's `civil_from_days` algorithm.
pub fn civil_from_days(epoch_day: i64) -> (i64, u32, u32) {
    let z = epoch_day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days since the epoch of a proleptic Gregorian date (Hinnant's
    /// `days_from_civil`), the inverse of `civil_from_days`, for building
    /// expected instants.
    fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let month = i64::from(month);
        let day_of_year =
            (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// Milliseconds since the epoch of a UTC date and time.
    fn utc(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> i64 {
        (days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second)
            * 1000
    }

    fn cron(expr: &str) -> Cron {
        Cron::parse(expr).unwrap_or_else(|error| panic!("{error}"))
    }

    fn parse_error(expr: &str) -> String {
        Cron::parse(expr).expect_err("expected a parse error")
    }

    fn values(bits: u64) -> Vec<u32> {
        (0..64).filter(|&value| bit_is_set(bits, value)).collect()
    }

    // --- civil dates -------------------------------------------------------------

    #[test]
    fn date_helpers_agree_with_known_instants() {
        // Constants from `date -u -d ... +%s`.
        assert_eq!(utc(2025, 3, 1, 0, 0, 0), 1_740_787_200_000);
        assert_eq!(utc(2028, 2, 29, 0, 0, 0), 1_835_395_200_000);
        assert_eq!(utc(2024, 12, 31, 23, 59, 59), 1_735_689_599_000);
        assert_eq!(utc(2000, 2, 29, 12, 34, 56), 951_827_696_000);
        assert_eq!(utc(2104, 2, 29, 0, 0, 0), 4_233_686_400_000);
        assert_eq!(utc(1969, 12, 31, 23, 59, 59), -1000);
        // 2028-02-29 is a Tuesday, 2025-03-01 a Saturday.
        assert_eq!(weekday_of(days_from_civil(2028, 2, 29)), 2);
        assert_eq!(weekday_of(days_from_civil(2025, 3, 1)), 6);
    }

    #[test]
    fn civil_from_days_round_trips_over_four_centuries() {
        let first = days_from_civil(1900, 1, 1);
        let last = days_from_civil(2300, 12, 31);
        let mut expected = (1900, 1, 1);
        for day in first..=last {
            assert_eq!(civil_from_days(day), expected, "day {day}");
            let (year, month, day_of_month) = expected;
            expected = if day_of_month < days_in_month(year, month) {
                (year, month, day_of_month + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }

    // --- parsing -----------------------------------------------------------------

    #[test]
    fn five_fields_mean_second_zero_and_six_fields_put_seconds_first() {
        let five = cron("* * * * *");
        assert_eq!(values(five.seconds), vec![0]);
        assert_eq!(values(five.minutes), (0..60).collect::<Vec<_>>());
        assert_eq!(values(five.hours), (0..24).collect::<Vec<_>>());
        assert_eq!(values(five.days_of_month), (1..32).collect::<Vec<_>>());
        assert_eq!(values(five.months), (1..13).collect::<Vec<_>>());
        assert_eq!(values(five.days_of_week), (0..7).collect::<Vec<_>>());

        let six = cron("*/15 30 2 * * *");
        assert_eq!(values(six.seconds), vec![0, 15, 30, 45]);
        assert_eq!(values(six.minutes), vec![30]);
        assert_eq!(values(six.hours), vec![2]);
    }

    #[test]
    fn lists_ranges_and_steps() {
        let parsed = cron("1,5,10 9-17 */10 1-12/3 *");
        assert_eq!(values(parsed.minutes), vec![1, 5, 10]);
        assert_eq!(values(parsed.hours), (9..=17).collect::<Vec<_>>());
        assert_eq!(values(parsed.days_of_month), vec![1, 11, 21, 31]);
        assert_eq!(values(parsed.months), vec![1, 4, 7, 10]);

        let mixed = cron("0-10/5,30,50-52 * * * *");
        assert_eq!(values(mixed.minutes), vec![0, 5, 10, 30, 50, 51, 52]);

        // `A/S` runs from A to the end of the field; a huge step keeps only A.
        assert_eq!(values(cron("5/20 * * * *").minutes), vec![5, 25, 45]);
        assert_eq!(values(cron("*/100 * * * *").minutes), vec![0]);
        assert_eq!(values(cron("7 * * * *").minutes), vec![7]);
    }

    #[test]
    fn month_and_weekday_names_in_any_case() {
        let parsed = cron("0 0 * jan,Mar-may mon-fri");
        assert_eq!(values(parsed.months), vec![1, 3, 4, 5]);
        assert_eq!(values(parsed.days_of_week), vec![1, 2, 3, 4, 5]);
        assert_eq!(values(cron("0 0 * DEC SAT,SUN").days_of_week), vec![0, 6]);
        assert_eq!(values(cron("0 0 * JAN-DEC/6 *").months), vec![1, 7]);
        assert_eq!(
            values(cron("0 0 * * MON-SAT/2").days_of_week),
            vec![1, 3, 5]
        );
    }

    #[test]
    fn sunday_is_zero_or_seven() {
        assert_eq!(values(cron("0 0 * * 0").days_of_week), vec![0]);
        assert_eq!(values(cron("0 0 * * 7").days_of_week), vec![0]);
        assert_eq!(values(cron("0 0 * * 5-7").days_of_week), vec![0, 5, 6]);
        assert_eq!(values(cron("0 0 * * FRI-SUN").days_of_week), vec![0, 5, 6]);
        assert_eq!(
            values(cron("0 0 * * 0-7").days_of_week),
            (0..7).collect::<Vec<_>>()
        );
    }

    #[test]
    fn either_day_field_only_when_both_are_restricted() {
        assert!(cron("0 0 1 * MON").either_day_field);
        assert!(!cron("0 0 1 * *").either_day_field);
        assert!(!cron("0 0 * * MON").either_day_field);
        // A field that lists every value is not a restriction.
        assert!(!cron("0 0 1-31 * MON").either_day_field);
        assert!(!cron("0 0 1 * 0-6").either_day_field);
        assert!(!cron("0 0 1 * */1").either_day_field);
    }

    #[test]
    fn expression_is_kept_without_surrounding_whitespace() {
        assert_eq!(cron("  */5  * * * *\n").expr(), "*/5  * * * *");
    }

    #[test]
    fn wrong_field_count_is_reported_with_the_expected_shapes() {
        assert_eq!(
            parse_error("* * *"),
            "cron expression \"* * *\": expected 5 fields (minute hour day-of-month month \
             day-of-week) or 6 (with seconds first), got 3"
        );
        assert!(parse_error("").ends_with("got 0"));
        assert!(parse_error("* * * * * * *").ends_with("got 7"));
    }

    #[test]
    fn out_of_range_values_name_the_field_and_its_range() {
        assert_eq!(
            parse_error("61 * * * *"),
            "cron expression \"61 * * * *\": minute field \"61\" is out of range (0-59)"
        );
        assert_eq!(
            parse_error("60 * * * * *"),
            "cron expression \"60 * * * * *\": second field \"60\" is out of range (0-59)"
        );
        assert_eq!(
            parse_error("0 1,24 * * *"),
            "cron expression \"0 1,24 * * *\": hour field \"1,24\": \"24\" is out of range (0-23)"
        );
        assert!(
            parse_error("0 0 0 * *").ends_with("day-of-month field \"0\" is out of range (1-31)")
        );
        assert!(
            parse_error("0 0 32 * *").ends_with("day-of-month field \"32\" is out of range (1-31)")
        );
        assert!(parse_error("0 0 * 13 *").ends_with("month field \"13\" is out of range (1-12)"));
        assert!(
            parse_error("0 0 * * 8").ends_with("day-of-week field \"8\" is out of range (0-7)")
        );
        assert!(parse_error("0 0 * * 1-99999999999").ends_with(
            "day-of-week field \"1-99999999999\": \"99999999999\" is out of range (0-7)"
        ));
    }

    #[test]
    fn malformed_values_name_the_field_and_the_text() {
        assert!(parse_error("x * * * *").ends_with("minute field \"x\" is not a number"));
        assert!(
            parse_error("0 0 * FOO *")
                .ends_with("month field \"FOO\" is not a number or a month name (JAN-DEC)")
        );
        assert!(parse_error("0 0 * * MON-FUN").ends_with(
            "day-of-week field \"MON-FUN\": \"FUN\" is not a number or a day name (SUN-SAT)"
        ));
        // Names belong to their own field only.
        assert!(
            parse_error("0 0 * MON *")
                .ends_with("month field \"MON\" is not a number or a month name (JAN-DEC)")
        );
        assert!(parse_error("0 JAN * * *").ends_with("hour field \"JAN\" is not a number"));
        assert!(parse_error("-5 * * * *").ends_with("minute field \"-5\": \"\" is not a number"));
        assert!(
            parse_error("*-5 * * * *").ends_with("minute field \"*-5\": \"*\" is not a number")
        );
        assert!(parse_error("1.5 * * * *").ends_with("minute field \"1.5\" is not a number"));
    }

    #[test]
    fn bad_steps_ranges_and_lists_are_reported() {
        assert!(
            parse_error("*/0 * * * *")
                .ends_with("minute field \"*/0\": \"0\" is not a valid step (steps start at 1)")
        );
        assert!(
            parse_error("*/x * * * *")
                .ends_with("minute field \"*/x\": \"x\" is not a valid step (a number)")
        );
        assert!(
            parse_error("*/ * * * *")
                .ends_with("minute field \"*/\": \"\" is not a valid step (a number)")
        );
        assert!(
            parse_error("0 17-9 * * *")
                .ends_with("hour field \"17-9\" is a backwards range (17 comes after 9)")
        );
        assert!(
            parse_error("0 0 * * SAT-MON/2").ends_with(
                "day-of-week field \"SAT-MON/2\": \"SAT-MON\" is a backwards range (SAT comes after MON)"
            )
        );
        assert!(
            parse_error("1,,2 * * * *")
                .ends_with("minute field \"1,,2\" has an empty list element")
        );
        assert!(
            parse_error("1, * * * *").ends_with("minute field \"1,\" has an empty list element")
        );
    }

    // --- next_after ----------------------------------------------------------------

    #[test]
    fn next_after_is_strictly_after_and_on_whole_seconds() {
        let every_minute = cron("* * * * *");
        let noon = utc(2025, 6, 1, 12, 0, 0);
        assert_eq!(every_minute.next_after(noon), Some(noon + 60_000));
        assert_eq!(every_minute.next_after(noon - 1), Some(noon));
        assert_eq!(every_minute.next_after(noon + 59_999), Some(noon + 60_000));
        // Before the epoch too.
        assert_eq!(every_minute.next_after(-1), Some(0));
        assert_eq!(every_minute.next_after(-60_001), Some(-60_000));
    }

    #[test]
    fn next_after_carries_across_minute_hour_day_month_and_year() {
        let at_minute_30 = cron("30 * * * *");
        assert_eq!(
            at_minute_30.next_after(utc(2025, 6, 1, 12, 45, 0)),
            Some(utc(2025, 6, 1, 13, 30, 0))
        );
        let at_half_past_two = cron("30 2 * * *");
        assert_eq!(
            at_half_past_two.next_after(utc(2025, 6, 30, 3, 0, 0)),
            Some(utc(2025, 7, 1, 2, 30, 0))
        );
        assert_eq!(
            cron("0 0 * * *").next_after(utc(2024, 12, 31, 23, 59, 59)),
            Some(utc(2025, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            cron("59 23 31 12 *").next_after(utc(2025, 1, 1, 0, 0, 0)),
            Some(utc(2025, 12, 31, 23, 59, 0))
        );
        // The 31st skips the months that have no 31st.
        assert_eq!(
            cron("0 0 31 * *").next_after(utc(2025, 3, 31, 0, 0, 0)),
            Some(utc(2025, 5, 31, 0, 0, 0))
        );
        // Hours and minutes run out together: the next matching day's first time.
        assert_eq!(
            cron("15,45 8-9 * * *").next_after(utc(2025, 6, 1, 9, 45, 0)),
            Some(utc(2025, 6, 2, 8, 15, 0))
        );
        // Months named in the expression, across a year.
        assert_eq!(
            cron("0 12 1 FEB,NOV *").next_after(utc(2025, 11, 1, 12, 0, 0)),
            Some(utc(2026, 2, 1, 12, 0, 0))
        );
    }

    #[test]
    fn next_after_handles_leap_years() {
        let leap_day = cron("0 0 29 2 *");
        assert_eq!(
            leap_day.next_after(utc(2025, 3, 1, 0, 0, 0)),
            Some(1_835_395_200_000) // 2028-02-29T00:00:00Z
        );
        assert_eq!(
            leap_day.next_after(utc(2024, 2, 28, 0, 0, 0)),
            Some(utc(2024, 2, 29, 0, 0, 0))
        );
        // 2100 is not a leap year: the longest gap, eight years.
        assert_eq!(
            leap_day.next_after(utc(2096, 3, 1, 0, 0, 0)),
            Some(4_233_686_400_000) // 2104-02-29T00:00:00Z
        );
        // 2000 is.
        assert_eq!(
            leap_day.next_after(utc(1997, 1, 1, 0, 0, 0)),
            Some(utc(2000, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            cron("0 0 28 * *").next_after(utc(2025, 2, 28, 0, 0, 0)),
            Some(utc(2025, 3, 28, 0, 0, 0))
        );
    }

    #[test]
    fn next_after_is_none_for_dates_that_never_exist() {
        assert_eq!(
            cron("0 0 30 2 *").next_after(utc(2025, 1, 1, 0, 0, 0)),
            None
        );
        assert_eq!(cron("0 0 31 4,6,9,11 *").next_after(0), None);
        assert_eq!(
            cron("0 0 30 2 *").prev_at_or_before(utc(2025, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 13th or any Friday. 2025-06-01 is a Sunday; Friday 2025-06-06 comes first.
        let either = cron("0 0 13 * FRI");
        assert_eq!(
            either.next_after(utc(2025, 6, 1, 0, 0, 0)),
            Some(utc(2025, 6, 6, 0, 0, 0))
        );
        assert_eq!(
            either.next_after(utc(2025, 6, 6, 0, 0, 0)),
            Some(utc(2025, 6, 13, 0, 0, 0)) // A Friday the 13th.
        );
        assert_eq!(
            either.next_after(utc(2025, 7, 11, 0, 0, 0)),
            Some(utc(2025, 7, 13, 0, 0, 0)) // A Sunday, matched by the day of month.
        );
        // Only one restricted: both must match, so only Mondays.
        let mondays = cron("0 0 * * MON");
        assert_eq!(
            mondays.next_after(utc(2025, 6, 1, 0, 0, 0)),
            Some(utc(2025, 6, 2, 0, 0, 0))
        );
        // Every day of the month plus Mondays is every day, not only Mondays.
        let all_days = cron("0 0 1-31 * MON");
        assert_eq!(
            all_days.next_after(utc(2025, 6, 3, 0, 0, 0)),
            Some(utc(2025, 6, 9, 0, 0, 0))
        );
        // With seven as Sunday: Sundays in June 2025 are the 1st, 8th, 15th.
        let sundays = cron("0 0 * 6 7");
        assert_eq!(
            sundays.next_after(utc(2025, 6, 1, 0, 0, 0)),
            Some(utc(2025, 6, 8, 0, 0, 0))
        );
    }

    #[test]
    fn six_field_expressions_fire_on_seconds() {
        let every_two_seconds = cron("*/2 * * * * *");
        let start = utc(2025, 6, 1, 12, 0, 0);
        assert_eq!(every_two_seconds.next_after(start), Some(start + 2000));
        assert_eq!(every_two_seconds.next_after(start + 1), Some(start + 2000));
        assert_eq!(
            every_two_seconds.next_after(start + 1000),
            Some(start + 2000)
        );
        assert_eq!(
            every_two_seconds.next_after(utc(2025, 12, 31, 23, 59, 58)),
            Some(utc(2026, 1, 1, 0, 0, 0))
        );
        let at_second_30 = cron("30 0 0 * * *");
        assert_eq!(
            at_second_30.next_after(utc(2025, 6, 1, 0, 0, 30)),
            Some(utc(2025, 6, 2, 0, 0, 30))
        );
    }

    #[test]
    fn next_after_matches_a_brute_force_search() {
        let expressions = [
            "*/7 */5 * * *",
            "0 0 1,15 * MON",
            "13 3-5 */3 FEB-APR *",
            "5,55 23 28-31 * *",
            "*/20 59 23 31 12 *",
            "0 0 29 2 SUN",
        ];
        for expr in expressions {
            let parsed = cron(expr);
            // Five-field expressions fire only on whole minutes, so scanning those is
            // exhaustive and keeps the test fast.
            let stride = if parsed.seconds == 1 { 60_000 } else { 1000 };
            let mut cursor = utc(2023, 12, 30, 0, 0, 0);
            let end = utc(2024, 5, 1, 0, 0, 0);
            let mut brute = cursor + stride;
            for _ in 0..50 {
                let next = parsed.next_after(cursor).expect("fires");
                if next > end {
                    break;
                }
                // Every second between cursor and next fails to match, and next matches.
                while brute < next {
                    assert!(!matches_naively(&parsed, brute), "{expr} at {brute}");
                    brute += stride;
                }
                assert!(matches_naively(&parsed, next), "{expr} at {next}");
                assert_eq!(parsed.prev_at_or_before(next + 999), Some(next), "{expr}");
                assert!(
                    parsed
                        .prev_at_or_before(next - 1)
                        .is_none_or(|prev| prev <= cursor)
                );
                cursor = next;
                brute = next + stride;
            }
        }
    }

    fn matches_naively(parsed: &Cron, ms: i64) -> bool {
        let seconds = ms / 1000;
        let day = seconds.div_euclid(SECONDS_PER_DAY);
        let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY) as u32;
        let (_, month, day_of_month) = civil_from_days(day);
        bit_is_set(parsed.seconds, second_of_day % 60)
            && bit_is_set(parsed.minutes, second_of_day / 60 % 60)
            && bit_is_set(parsed.hours, second_of_day / 3600)
            && bit_is_set(parsed.months, month)
            && parsed.day_matches(day, day_of_month)
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        let every_second = cron("* * * * * *");
        assert_eq!(every_second.next_after(i64::MAX), None);
        // The last whole second that fits in milliseconds has no successor.
        let last_second = i64::MAX / 1000 * 1000;
        assert_eq!(every_second.next_after(last_second - 1), Some(last_second));
        assert_eq!(every_second.next_after(last_second), None);
        assert_eq!(
            every_second.prev_at_or_before(i64::MAX),
            Some(i64::MAX / 1000 * 1000)
        );
        assert_eq!(
            every_second.next_after(i64::MIN),
            Some(i64::MIN / 1000 * 1000)
        );
        assert!(every_second.prev_at_or_before(i64::MIN).is_none());
        assert_eq!(
            every_second.due(i64::MIN, i64::MAX, 3),
            Some(Due {
                latest_ms: i64::MAX / 1000 * 1000,
                count: 3
            })
        );
        let yearly = cron("0 0 1 1 *");
        assert_eq!(yearly.next_after(i64::MAX - 1000), None);
        assert!(yearly.next_after(i64::MIN).is_some());
    }

    // --- prev_at_or_before ------------------------------------------------------------

    #[test]
    fn prev_at_or_before_includes_the_instant_and_borrows_across_boundaries() {
        let every_minute = cron("* * * * *");
        let noon = utc(2025, 6, 1, 12, 0, 0);
        assert_eq!(every_minute.prev_at_or_before(noon), Some(noon));
        assert_eq!(every_minute.prev_at_or_before(noon + 59_999), Some(noon));
        assert_eq!(
            every_minute.prev_at_or_before(noon - 1),
            Some(noon - 60_000)
        );
        assert_eq!(
            cron("0 0 29 2 *").prev_at_or_before(utc(2028, 2, 28, 0, 0, 0)),
            Some(utc(2024, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            cron("30 2 * * *").prev_at_or_before(utc(2025, 1, 1, 2, 29, 59)),
            Some(utc(2024, 12, 31, 2, 30, 0))
        );
        assert_eq!(
            cron("15,45 8-9 * * *").prev_at_or_before(utc(2025, 6, 2, 8, 14, 0)),
            Some(utc(2025, 6, 1, 9, 45, 0))
        );
    }

    // --- due ---------------------------------------------------------------------------

    #[test]
    fn due_is_none_when_the_interval_holds_no_tick() {
        let hourly = cron("0 * * * *");
        let one = utc(2025, 6, 1, 1, 0, 0);
        assert_eq!(hourly.due(one, one + 3_599_999, 10), None);
        assert_eq!(hourly.due(one, one, 10), None);
        assert_eq!(hourly.due(one + 1, one, 10), None);
        // The lower end is excluded.
        assert_eq!(hourly.due(one, one + 1, 10), None);
    }

    #[test]
    fn due_reports_one_tick_with_the_upper_end_included() {
        let hourly = cron("0 * * * *");
        let one = utc(2025, 6, 1, 1, 0, 0);
        let two = one + 3_600_000;
        assert_eq!(
            hourly.due(one, two, 10),
            Some(Due {
                latest_ms: two,
                count: 1
            })
        );
        assert_eq!(
            hourly.due(one - 1, one + 5, 10),
            Some(Due {
                latest_ms: one,
                count: 1
            })
        );
    }

    #[test]
    fn due_counts_many_ticks_and_stops_at_the_cap() {
        let hourly = cron("0 * * * *");
        let day_start = utc(2025, 6, 1, 0, 0, 0);
        let day_end = utc(2025, 6, 2, 0, 0, 0);
        assert_eq!(
            hourly.due(day_start, day_end + 1, 100),
            Some(Due {
                latest_ms: day_end,
                count: 24
            })
        );
        assert_eq!(
            hourly.due(day_start, day_end, 24),
            Some(Due {
                latest_ms: day_end,
                count: 24
            })
        );
        assert_eq!(
            hourly.due(day_start, day_end, 5),
            Some(Due {
                latest_ms: day_end,
                count: 5
            })
        );
        assert_eq!(
            hourly.due(day_start, day_end, 0),
            Some(Due {
                latest_ms: day_end,
                count: 0
            })
        );
    }

    #[test]
    fn due_over_years_of_every_second_is_bounded_by_the_cap() {
        let every_second = cron("* * * * * *");
        let after = utc(2025, 1, 1, 0, 0, 0);
        let now = utc(2028, 1, 1, 0, 0, 0) + 500;
        let started = std::time::Instant::now();
        assert_eq!(
            every_second.due(after, now, 1000),
            Some(Due {
                latest_ms: utc(2028, 1, 1, 0, 0, 0),
                count: 1000
            })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        // Sparser schedules over the same gap: all of their ticks are counted.
        let monthly = cron("0 0 1 * *");
        assert_eq!(
            monthly.due(after, now, 1000),
            Some(Due {
                latest_ms: utc(2028, 1, 1, 0, 0, 0),
                count: 36
            })
        );
        assert_eq!(cron("0 0 29 2 *").due(after, now, 1000), None);
    }
}
