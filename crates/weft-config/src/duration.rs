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
    let value: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number followed by a unit"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("\"{s}\" has an unknown unit \"{unit}\" (ns, us, ms, s, m, h)")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("\"{s}\" is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
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
    }

    #[test]
    fn formats_round_trip() {
        for s in ["5s", "250ms", "100us", "0s", "1500ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
