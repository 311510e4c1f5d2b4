//! Human durations as written in the config and on the command line: `30s`, `5m`, `1h`, `2h30m`, `1d`.
//!
//! One parser for every place a duration is typed, so `--for 2h30m` and `max_duration = "2h30m"` can
//! never disagree.

use std::time::Duration;

/// Parses `1d2h30m15s`-style durations: one or more `<digits><unit>` parts with units `d`, `h`, `m`,
/// `s`, largest first, each unit at most once. Zero is refused: no duration in portcullis means "none".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let invalid = || format!("{text:?} is not a duration (use forms like 30s, 5m, 1h, 2h30m, 1d)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
        let position = UNITS[next_unit..]
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(invalid)?;
        let seconds = UNITS[next_unit + position].1;
        total = value
            .checked_mul(seconds)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        next_unit += position + 1;
        rest = &rest[digits + unit.len_utf8()..];
    }
    if total == 0 {
        return Err(format!("{text:?} is zero; a duration must be positive"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds back into the shortest form `parse_duration` reads (`2h30m`, `1d`, `45s`).
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            out.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("30s", 30),
            ("5m", 300),
            ("1h", 3_600),
            ("2h30m", 9_000),
            ("1d", 86_400),
            ("1d1h1m1s", 90_061),
            ("90m", 5_400),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "",
            "9x",
            "h",
            "1",
            "1h1h",
            "30m1h",
            "-1h",
            "1.5h",
            "0s",
            "0h0m",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for seconds in [1, 59, 60, 3_600, 9_000, 86_400, 90_061] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }
}
