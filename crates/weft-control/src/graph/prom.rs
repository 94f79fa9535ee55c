//! Reads the two Istio-standard request families out of a sidecar's `/stats/prometheus` text
//! (Prometheus text / OpenMetrics exposition): `istio_requests_total` and
//! `istio_request_duration_milliseconds_bucket`. Everything else is skipped line by line.
//!
//! Series are summed by what the service graph needs — (reporter, destination service) — so a
//! sidecar's up-to-512 label sets per connection manager become a handful of [`Agg`]s. At most
//! [`MAX_SERIES`] distinct (reporter, destination) pairs are kept per scrape, and the text read is
//! bounded by the caller. A malformed line is skipped, never an error: one bad line must not hide
//! the rest of a sidecar's traffic.

use std::collections::BTreeMap;

/// Distinct (reporter, destination service) pairs kept from one scrape; more are dropped (and
/// counted in [`Scrape::dropped_series`]).
pub const MAX_SERIES: usize = 64;
/// Distinct reason codes kept per pair.
pub const MAX_REASONS: usize = 16;

/// Who reported a series: the calling side's sidecar (`source`, an outbound listener) or the
/// called side's (`destination`, an inbound listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

/// Cumulative counts of one (reporter, destination service) pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agg {
    pub requests: u64,
    /// Requests answered with a 5xx or carrying a weft reason code (`response_flags` not `-`).
    pub errors: u64,
    /// Errors by reason: the reason code (`UF`, `FI`, `NR`, ...) or, for a 5xx without one, the
    /// status (`503`).
    pub reasons: BTreeMap<String, u64>,
    /// Cumulative duration histogram: (upper bound in ms, count), ascending, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// The `request_protocol` values seen with requests (`http`, `grpc`, `dubbo`, `bolt`).
    pub protocols: std::collections::BTreeSet<String>,
}

/// Cumulative TCP counts of one (reporter, destination service) pair (`istio_tcp_*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpAgg {
    pub opened: u64,
    /// Sessions whose upstream connection failed (opened with a `response_flags` other than `-`).
    pub failed: u64,
    /// Bytes both ways (`istio_tcp_sent_bytes_total` + `istio_tcp_received_bytes_total`).
    pub bytes: u64,
}

/// What one scrape holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub series: BTreeMap<(Reporter, String), Agg>,
    /// TCP proxy sessions, by (reporter, destination service); bounded by [`MAX_SERIES`] too.
    pub tcp: BTreeMap<(Reporter, String), TcpAgg>,
    /// Series left out because [`MAX_SERIES`] was reached.
    pub dropped_series: u64,
}

/// One sample line: name, labels, value.
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// Parses `name{a="x",b="y"} value [timestamp]`. None for anything else (comments, blank lines,
/// malformed lines).
fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            r = r.trim_start_matches([' ', ',']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = r[..eq].trim();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            r = r[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            r = &r[end + 1..];
        }
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    Some(Line { name, labels, value })
}

fn label<'a>(l: &'a Line<'_>, key: &str) -> Option<&'a str> {
    l.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
}

/// A counter value as an integer (negative, NaN and absurd values are refused).
fn count(v: f64) -> Option<u64> {
    (0.0..1e18).contains(&v).then_some(v as u64)
}

/// Parses a `/stats/prometheus` body. Never fails: what cannot be read is skipped.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for raw in text.lines() {
        let Some(l) = parse_line(raw) else {
            continue;
        };
        let is_total = l.name == "istio_requests_total";
        let is_bucket = l.name == "istio_request_duration_milliseconds_bucket";
        let tcp_opened = l.name == "istio_tcp_connections_opened_total";
        let tcp_bytes = l.name == "istio_tcp_sent_bytes_total" || l.name == "istio_tcp_received_bytes_total";
        if !is_total && !is_bucket && !tcp_opened && !tcp_bytes {
            continue;
        }
        let reporter = match label(&l, "reporter") {
            Some("source") => Reporter::Source,
            Some("destination") => Reporter::Destination,
            _ => continue,
        };
        let Some(n) = count(l.value) else {
            continue;
        };
        let dest = label(&l, "destination_service").unwrap_or("unknown").to_string();
        let key = (reporter, dest);
        if tcp_opened || tcp_bytes {
            if !out.tcp.contains_key(&key) && out.tcp.len() >= MAX_SERIES {
                out.dropped_series += 1;
                continue;
            }
            let agg = out.tcp.entry(key).or_default();
            if tcp_bytes {
                agg.bytes = agg.bytes.saturating_add(n);
            } else {
                agg.opened = agg.opened.saturating_add(n);
                if label(&l, "response_flags").is_some_and(|f| !f.is_empty() && f != "-") {
                    agg.failed = agg.failed.saturating_add(n);
                }
            }
            continue;
        }
        if !out.series.contains_key(&key) && out.series.len() >= MAX_SERIES {
            out.dropped_series += 1;
            continue;
        }
        if is_total {
            let code: u16 = label(&l, "response_code").and_then(|c| c.parse().ok()).unwrap_or(0);
            let flags = label(&l, "response_flags").unwrap_or("-");
            let agg = out.series.entry(key).or_default();
            agg.requests = agg.requests.saturating_add(n);
            if let Some(p) = label(&l, "request_protocol").filter(|p| n > 0 && !p.is_empty()) {
                if agg.protocols.len() < 8 && !agg.protocols.contains(p) {
                    agg.protocols.insert(p.to_string());
                }
            }
            let reason = if !flags.is_empty() && flags != "-" {
                Some(flags.to_string())
            } else if code >= 500 {
                Some(code.to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                if n > 0 {
                    agg.errors = agg.errors.saturating_add(n);
                    if agg.reasons.contains_key(&reason) || agg.reasons.len() < MAX_REASONS {
                        let r = agg.reasons.entry(reason).or_default();
                        *r = r.saturating_add(n);
                    } else {
                        let r = agg.reasons.entry("other".into()).or_default();
                        *r = r.saturating_add(n);
                    }
                }
            }
        } else {
            let le = match label(&l, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(b) if b.is_finite() && b >= 0.0 => b,
                    _ => continue,
                },
                None => continue,
            };
            let agg = out.series.entry(key).or_default();
            match agg.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c = c.saturating_add(n),
                None => {
                    // Bounded: Istio has 19 bounds plus +Inf; a sidecar sending more is cut off.
                    if agg.buckets.len() < 64 {
                        agg.buckets.push((le, n));
                        agg.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
        }
    }
    out
}

/// The `q` quantile (0..1) of a cumulative histogram given as (upper bound, count) pairs, by
/// linear interpolation inside the bucket, as Prometheus's `histogram_quantile` does. None when
/// the histogram is empty. A quantile in the `+Inf` bucket gives the largest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut prev_bound = 0.0;
    let mut prev_count = 0u64;
    for &(bound, c) in buckets {
        if c as f64 >= rank && c > prev_count {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = (c - prev_count) as f64;
            let frac = (rank - prev_count as f64) / in_bucket;
            return Some(prev_bound + (bound - prev_bound) * frac.clamp(0.0, 1.0));
        }
        prev_bound = if bound.is_finite() { bound } else { prev_bound };
        prev_count = prev_count.max(c);
    }
    Some(prev_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_requests Total requests.
# TYPE istio_requests counter
istio_requests_total{reporter="source",source_workload="frontend",destination_service="reviews|v1",response_code="200",response_flags="-"} 90
istio_requests_total{reporter="source",source_workload="frontend",destination_service="reviews|v1",response_code="503",response_flags="UF"} 6
istio_requests_total{reporter="source",source_workload="frontend",destination_service="reviews|v1",response_code="503",response_flags="-"} 4
istio_requests_total{reporter="destination",destination_service="inbound|frontend",response_code="200",response_flags="-"} 100
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="reviews|v1",le="1.0"} 50
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="reviews|v1",le="5.0"} 100
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="reviews|v1",le="+Inf"} 100
weft_requests_total{listener="x"} 3
# EOF
"#;

    #[test]
    fn sums_by_reporter_and_destination() {
        let s = parse(TEXT);
        let a = &s.series[&(Reporter::Source, "reviews|v1".to_string())];
        assert_eq!(a.requests, 100);
        assert_eq!(a.errors, 10);
        assert_eq!(a.reasons["UF"], 6);
        assert_eq!(a.reasons["503"], 4);
        assert_eq!(a.buckets, vec![(1.0, 50), (5.0, 100), (f64::INFINITY, 100)]);
        let d = &s.series[&(Reporter::Destination, "inbound|frontend".to_string())];
        assert_eq!((d.requests, d.errors), (100, 0));
        assert_eq!(s.series.len(), 2);
    }

    #[test]
    fn escaped_label_values_and_bad_lines() {
        let s = parse(
            "istio_requests_total{reporter=\"source\",destination_service=\"a\\\"b\\\\c\",response_code=\"200\"} 2\n\
             istio_requests_total{reporter=\"source\",destination_service=\"x} 5\n\
             istio_requests_total{reporter=\"source\"} NaN\n\
             istio_requests_total{reporter=\"nobody\"} 5\n",
        );
        assert_eq!(s.series.len(), 1);
        assert_eq!(s.series[&(Reporter::Source, "a\"b\\c".to_string())].requests, 2);
    }

    #[test]
    fn tcp_sessions_and_bytes() {
        let s = parse(
            "istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"db\",response_flags=\"-\"} 7\n\
             istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"db\",response_flags=\"UF\"} 2\n\
             istio_tcp_sent_bytes_total{reporter=\"source\",destination_service=\"db\",response_flags=\"-\"} 700\n\
             istio_tcp_received_bytes_total{reporter=\"source\",destination_service=\"db\",response_flags=\"-\"} 300\n\
             istio_tcp_connections_closed_total{reporter=\"source\",destination_service=\"db\",response_flags=\"-\"} 7\n",
        );
        assert!(s.series.is_empty());
        let t = &s.tcp[&(Reporter::Source, "db".to_string())];
        assert_eq!((t.opened, t.failed, t.bytes), (9, 2, 1000));
    }

    #[test]
    fn quantile_interpolates() {
        let b = [(1.0, 50), (5.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(0.5, &b), Some(1.0));
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - 4.92).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.99, &[(1.0, 0), (f64::INFINITY, 0)]), None);
        assert_eq!(quantile(0.99, &[(1.0, 1), (f64::INFINITY, 100)]), Some(1.0));
    }

    #[test]
    fn series_are_bounded() {
        let mut text = String::new();
        for i in 0..(MAX_SERIES + 10) {
            text.push_str(&format!(
                "istio_requests_total{{reporter=\"source\",destination_service=\"s{i}\",response_code=\"200\"}} 1\n"
            ));
        }
        let s = parse(&text);
        assert_eq!(s.series.len(), MAX_SERIES);
        assert_eq!(s.dropped_series, 10);
    }
}
