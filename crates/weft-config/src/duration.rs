//! Durations as users write them: `250ms`, `5s`, `1.5s`, `2m`, `1h`, `100us`.

use std::time::Duration;

/// Parses a duration such as `5s` or `250ms`. A bare number is rejected: units avoid a whole class
/// of "was that seconds or milliseconds?" outages.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{s}\" has no unit (use e.g. 250ms, 5s, 1m)"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("\"{s}\" has no number"));
    }
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("\"{s}\" has an unknown unit \"{unit}\" (ns, us, ms, s, m, h)")),
    };
    // Decimal arithmetic in integers, so "1.1s" is exactly 1100ms and formatting round-trips.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(format!("\"{s}\" is not a number followed by a unit"));
    }
    let too_large = || format!("\"{s}\" is too large");
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
    let mut scale = unit_nanos;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break; // finer than a nanosecond
        }
        nanos += u128::from(d - b'0') * scale;
    }
    if nanos > MAX_NANOS {
        return Err(too_large());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// The longest duration weft accepts (10^9 seconds, ~31 years).
const MAX_NANOS: u128 = 1_000_000_000 * 1_000_000_000;

/// The bound [`parse`] applies, for a duration that arrived typed (over xDS).
pub fn check(d: Duration) -> Result<Duration, String> {
    if d.as_nanos() > MAX_NANOS {
        Err(format!("\"{}\" is too large", format(d)))
    } else {
        Ok(d)
    }
}

/// Formats a duration in the shortest unit that represents it exactly (ms resolution or finer).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("100us").unwrap(), Duration::from_micros(100));
        assert!(parse("5").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5 parsecs").is_err());
        assert!(parse("1e400s").is_err());
        assert!(parse("1.2.3s").is_err());
        assert!(parse(".s").is_err());
        assert_eq!(parse(".5s").unwrap(), Duration::from_millis(500));
        assert!(parse("99999999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["5s", "250ms", "100us", "0s", "1500ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        // The fuzzer's reproducer: decimal input must survive format -> parse exactly.
        let d = parse("2020.071h").unwrap();
        assert_eq!(parse(&format(d)).unwrap(), d);
    }
}
