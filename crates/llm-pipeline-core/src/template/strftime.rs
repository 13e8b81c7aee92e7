//! `strftime_now`, the one clock a chat template may read: Llama 3's header prints today's date
//! with `strftime_now("%d %b %Y")`.
//!
//! `transformers` passes the format to Python's `strftime`, that is to the C library. This module
//! reproduces C's output, in UTC, for the directives templates use, glibc's `%-d` style unpadded
//! numbers included, and leaves a directive it does not know as written, as glibc does, instead
//! of failing the render. The calendar is computed by hand from days since the epoch: no date
//! crate is in the dependency tree, and `chrono`'s formatter fails on an unknown directive where
//! C keeps it.

use std::time::{SystemTime, UNIX_EPOCH};

/// `strftime_now(format)`: the current time in UTC, formatted like Python's `strftime`.
pub(super) fn strftime_now(format: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    strftime_utc(format, i64::try_from(seconds).unwrap_or(i64::MAX))
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats the UTC time `unix_seconds` with C `strftime` directives (the common subset chat
/// templates use, plus glibc's `%-d` style unpadded numbers). Unknown directives stay as written.
fn strftime_utc(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let padded = spec != Some('-');
        if !padded {
            spec = chars.next();
        }
        let number = |value: i64, width: usize| {
            if padded {
                format!("{value:0width$}")
            } else {
                value.to_string()
            }
        };
        let text = match spec {
            Some('a') => WEEKDAYS[weekday][..3].to_owned(),
            Some('A') => WEEKDAYS[weekday].to_owned(),
            Some('b' | 'h') => month_name[..3].to_owned(),
            Some('B') => month_name.to_owned(),
            Some('d') => number(day, 2),
            Some('e') => format!("{day:2}"),
            Some('H') => number(hour, 2),
            Some('I') => number(hour12, 2),
            Some('j') => number(day_of_year, 3),
            Some('m') => number(month, 2),
            Some('M') => number(minute, 2),
            Some('S') => number(second, 2),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            Some('y') => number(year.rem_euclid(100), 2),
            Some('Y') => year.to_string(),
            Some('u') => (if weekday == 0 { 7 } else { weekday }).to_string(),
            Some('w') => weekday.to_string(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('D') => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('Z') => "UTC".to_owned(),
            Some('z') => "+0000".to_owned(),
            Some('%') => "%".to_owned(),
            Some(other) => format!("%{}{other}", if padded { "" } else { "-" }),
            None => (if padded { "%" } else { "%-" }).to_owned(),
        };
        out.push_str(&text);
    }
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A proleptic Gregorian date to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_c_strftime_in_utc() {
        // Expected strings are Python's time.strftime(fmt, time.gmtime(t)) on Linux.
        let format =
            "%d %b %Y|%a %A %B %d %e %H %I %j %m %M %S %p %y %Y %u %w %F %D %T %%|%-d %-m %-H %Q";
        let cases = [
            (
                1_721_952_000,
                "26 Jul 2024|Fri Friday July 26 26 00 12 208 07 00 00 AM 24 2024 5 5 2024-07-26 07/26/24 00:00:00 %|26 7 0 %Q",
            ),
            (
                1_721_999_109,
                "26 Jul 2024|Fri Friday July 26 26 13 01 208 07 05 09 PM 24 2024 5 5 2024-07-26 07/26/24 13:05:09 %|26 7 13 %Q",
            ),
            (
                951_782_400,
                "29 Feb 2000|Tue Tuesday February 29 29 00 12 060 02 00 00 AM 00 2000 2 2 2000-02-29 02/29/00 00:00:00 %|29 2 0 %Q",
            ),
            (
                0,
                "01 Jan 1970|Thu Thursday January 01  1 00 12 001 01 00 00 AM 70 1970 4 4 1970-01-01 01/01/70 00:00:00 %|1 1 0 %Q",
            ),
            (
                1_735_689_599,
                "31 Dec 2024|Tue Tuesday December 31 31 23 11 366 12 59 59 PM 24 2024 2 2 2024-12-31 12/31/24 23:59:59 %|31 12 23 %Q",
            ),
        ];
        for (seconds, expected) in cases {
            assert_eq!(strftime_utc(format, seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1_000_000, -1, 0, 59, 10_957, 20_000, 1_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
