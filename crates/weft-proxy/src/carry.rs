//! Counter totals carried over a hot restart.
//!
//! Users graph totals (`rate(weft_downstream_rq_total[1m])`, dashboards of `istio_requests_total`):
//! if a new process started from zero, every upgrade would look like a counter reset. So the old
//! process sends the additive series of its Prometheus output (every sample of a `counter` or
//! `histogram` family: totals, histogram buckets, sums and counts) in the hand-over, and the new
//! process adds them to its own output. Gauges (open connections, hosts eligible) describe the
//! process that reports them and are not carried.
//!
//! The carry works on the text exposition, after every registry (weft's, Istio's, the admin
//! extensions') has been encoded, so every counter in `/stats/prometheus` is covered without each
//! metric knowing about hot restarts, and nothing on the request path changes. A series the old
//! process had and the new one has not (yet) is printed with the old value in its family (or in a
//! family of its own at the end).
//!
//! The carried totals are the process's: set once after a hand-over (and raised to the old
//! process's final totals when it exits), read by `/stats/prometheus`.

use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A sample value: counters are integers, histogram sums are not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(u64),
    Float(f64),
}

impl Num {
    fn parse(s: &str) -> Option<Num> {
        if let Ok(i) = s.parse::<u64>() {
            return Some(Num::Int(i));
        }
        let f: f64 = s.parse().ok()?;
        (f.is_finite() && f >= 0.0).then_some(Num::Float(f))
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a.saturating_add(b)),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn to_json(self) -> Value {
        match self {
            Num::Int(i) => json!(i),
            Num::Float(f) => json!(f),
        }
    }

    fn from_json(v: &Value) -> Option<Num> {
        if let Some(i) = v.as_u64() {
            return Some(Num::Int(i));
        }
        v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(Num::Float)
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// One additive family of the exposition: its type and its samples by series (`name{labels}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub samples: BTreeMap<String, Num>,
}

/// The additive series of one process's Prometheus output, by family name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub families: BTreeMap<String, Family>,
}

/// At most this many series are carried (a larger exposition is cut, never a huge allocation).
pub const MAX_SERIES: usize = 200_000;

/// Whether samples of a family of this type add up across processes.
fn additive(kind: &str) -> bool {
    matches!(kind, "counter" | "histogram")
}

/// Splits a sample line into (series, value, rest): the series is the metric name and its label
/// set (label values may hold spaces, quotes and braces, escaped as the text format says).
pub fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b' ' && bytes[i] != b'{' {
        i += 1;
    }
    if i == 0 || i == bytes.len() {
        return None;
    }
    if bytes[i] == b'{' {
        let mut in_quotes = false;
        let mut escaped = false;
        i += 1;
        loop {
            let c = *bytes.get(i)?;
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_quotes = false;
                }
            } else if c == b'"' {
                in_quotes = true;
            } else if c == b'}' {
                i += 1;
                break;
            }
            i += 1;
        }
        if bytes.get(i) != Some(&b' ') {
            return None;
        }
    }
    let series = &line[..i];
    let after = &line[i + 1..];
    let end = after.find(' ').unwrap_or(after.len());
    let value = &after[..end];
    if value.is_empty() {
        return None;
    }
    Some((series, value, &after[end..]))
}

/// `# TYPE name kind` → (name, kind).
fn type_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("# TYPE ")?;
    let (name, kind) = rest.split_once(' ')?;
    Some((name, kind.trim()))
}

/// A family name as the protocol field accepts it.
fn family_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace())
}

/// The family a comment line (`# HELP`, `# TYPE`, `# UNIT`) describes.
fn comment_family(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .or_else(|| line.strip_prefix("# UNIT "))?;
    Some(rest.split(' ').next().unwrap_or(rest))
}

impl Totals {
    /// The additive samples of a text exposition. Lines that do not parse are skipped; `_created`
    /// samples (timestamps) are not totals and are skipped too.
    pub fn from_exposition(text: &str) -> Totals {
        let mut t = Totals::default();
        let mut kind: Option<(String, String)> = None;
        let mut count = 0usize;
        for line in text.lines() {
            if line.starts_with('#') {
                if let Some((name, k)) = type_line(line) {
                    kind = Some((name.to_string(), k.to_string()));
                }
                continue;
            }
            let Some((family, k)) = &kind else { continue };
            if !additive(k) || !family_name(family) {
                continue;
            }
            let Some((series, value, _)) = split_sample(line) else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if name.ends_with("_created") {
                continue;
            }
            let Some(v) = Num::parse(value) else { continue };
            if count >= MAX_SERIES {
                break;
            }
            count += 1;
            let f = t.families.entry(family.clone()).or_insert_with(|| Family {
                kind: k.clone(),
                samples: BTreeMap::new(),
            });
            f.samples.insert(series.to_string(), v);
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.families.values().all(|f| f.samples.is_empty())
    }

    pub fn series(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    /// The hand-over protocol's `counters` field: `{family: {type, samples: {series: value}}}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (name, f) in &self.families {
            let samples: Map<String, Value> = f.samples.iter().map(|(s, v)| (s.clone(), v.to_json())).collect();
            m.insert(name.clone(), json!({"type": f.kind, "samples": samples}));
        }
        Value::Object(m)
    }

    /// Reads a `counters` field; names the first bad entry. A field that is absent (a peer built
    /// before counters were carried) is `Ok` and empty.
    pub fn from_json(v: &Value) -> Result<Totals, String> {
        let mut t = Totals::default();
        if v.is_null() {
            return Ok(t);
        }
        let obj = v.as_object().ok_or("counters is not an object")?;
        let mut count = 0usize;
        for (name, f) in obj {
            if !family_name(name) {
                return Err(format!("counters: family name {name:?} is not a metric name"));
            }
            let kind = f["type"]
                .as_str()
                .filter(|k| additive(k))
                .ok_or_else(|| format!("counters.{name}.type is not counter or histogram"))?;
            let samples = f["samples"]
                .as_object()
                .ok_or_else(|| format!("counters.{name}.samples is not an object"))?;
            let mut family = Family {
                kind: kind.to_string(),
                samples: BTreeMap::new(),
            };
            for (series, value) in samples {
                count += 1;
                if count > MAX_SERIES {
                    return Err(format!("counters: more than {MAX_SERIES} series"));
                }
                // The series must print back as one sample line of the text format.
                let probe = format!("{series} 0");
                if series.contains('\n') || split_sample(&probe).map(|(s, _, _)| s) != Some(series.as_str()) {
                    return Err(format!("counters.{name}.samples: {series:?} is not a series"));
                }
                let v = Num::from_json(value)
                    .ok_or_else(|| format!("counters.{name}.samples.{series}: not a non-negative number"))?;
                family.samples.insert(series.clone(), v);
            }
            t.families.insert(name.clone(), family);
        }
        Ok(t)
    }

    /// `text` with these totals added: each carried series is added to the sample of the same
    /// series, or printed in its family if the exposition has none, or in a family of its own
    /// before `# EOF`.
    pub fn apply(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len() + self.series() * 64);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut families_seen: HashSet<&str> = HashSet::new();
        // The family whose samples are being printed, and its carried samples.
        let mut current: Option<(&str, &Family)> = None;
        let flush = |out: &mut String, current: &Option<(&str, &Family)>, seen: &HashSet<&str>| {
            if let Some((_, f)) = current {
                for (series, v) in &f.samples {
                    if !seen.contains(series.as_str()) {
                        out.push_str(series);
                        out.push(' ');
                        out.push_str(&v.to_string());
                        out.push('\n');
                    }
                }
            }
        };
        let mut eof_written = false;
        for line in text.lines() {
            if line == "# EOF" {
                flush(&mut out, &current, &seen);
                current = None;
                self.write_unseen_families(&mut out, &families_seen);
                out.push_str("# EOF\n");
                eof_written = true;
                continue;
            }
            if line.starts_with('#') {
                let fam = comment_family(line);
                if fam.is_some() && fam != current.map(|(n, _)| n) {
                    flush(&mut out, &current, &seen);
                    current = None;
                    if let Some((name, f)) = fam.and_then(|n| self.families.get_key_value(n)) {
                        families_seen.insert(name.as_str());
                        current = Some((name.as_str(), f));
                    }
                }
                out.push_str(line);
                out.push('\n');
                continue;
            }
            if let Some((_, f)) = current {
                if let Some((series, value, rest)) = split_sample(line) {
                    if let (Some((key, carried)), Some(own)) = (f.samples.get_key_value(series), Num::parse(value)) {
                        seen.insert(key.as_str());
                        out.push_str(series);
                        out.push(' ');
                        out.push_str(&own.add(*carried).to_string());
                        out.push_str(rest);
                        out.push('\n');
                        continue;
                    }
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        if !eof_written {
            flush(&mut out, &current, &seen);
            self.write_unseen_families(&mut out, &families_seen);
        }
        out
    }

    fn write_unseen_families(&self, out: &mut String, families_seen: &HashSet<&str>) {
        for (name, f) in &self.families {
            if families_seen.contains(name.as_str()) || f.samples.is_empty() {
                continue;
            }
            out.push_str(&format!("# TYPE {name} {}\n", f.kind));
            for (series, v) in &f.samples {
                out.push_str(&format!("{series} {v}\n"));
            }
        }
    }
}

static CARRIED: RwLock<Option<Arc<Totals>>> = RwLock::new(None);

/// Sets the totals carried from the process this one took over (replacing earlier ones: the old
/// process's final totals replace the snapshot it sent at the hand-over).
pub fn set(t: Totals) {
    *CARRIED.write() = (!t.is_empty()).then(|| Arc::new(t));
}

/// The exposition with the carried totals added (unchanged when nothing was carried).
pub fn apply(text: String) -> String {
    let carried = CARRIED.read().clone();
    match carried {
        Some(t) => t.apply(&text),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "# HELP weft_downstream_cx Downstream connections accepted.\n\
# TYPE weft_downstream_cx counter\n\
weft_downstream_cx_total{listener=\"web\"} 3\n\
# HELP weft_downstream_cx_active Downstream connections open.\n\
# TYPE weft_downstream_cx_active gauge\n\
weft_downstream_cx_active{listener=\"web\"} 2\n\
# HELP weft_rq_time_seconds Time.\n\
# TYPE weft_rq_time_seconds histogram\n\
weft_rq_time_seconds_sum{listener=\"web\"} 0.5\n\
weft_rq_time_seconds_count{listener=\"web\"} 3\n\
weft_rq_time_seconds_bucket{le=\"0.1\",listener=\"web\"} 3\n\
weft_rq_time_seconds_bucket{le=\"+Inf\",listener=\"web\"} 3\n\
# EOF\n";

    #[test]
    fn counters_and_histograms_carry_gauges_do_not() {
        let old = "# TYPE weft_downstream_cx counter\n\
weft_downstream_cx_total{listener=\"web\"} 10\n\
weft_downstream_cx_total{listener=\"gone\"} 4\n\
# TYPE weft_downstream_cx_active gauge\n\
weft_downstream_cx_active{listener=\"web\"} 7\n\
# TYPE weft_rq_time_seconds histogram\n\
weft_rq_time_seconds_sum{listener=\"web\"} 1.25\n\
weft_rq_time_seconds_count{listener=\"web\"} 10\n\
weft_rq_time_seconds_bucket{le=\"0.1\",listener=\"web\"} 9\n\
weft_rq_time_seconds_bucket{le=\"+Inf\",listener=\"web\"} 10\n\
# TYPE istio_requests counter\n\
istio_requests_total{a=\"x y\",b=\"q\\\"}\"} 5\n\
# EOF\n";
        let t = Totals::from_exposition(old);
        assert_eq!(t.series(), 7, "{t:?}");
        // Through the protocol and back.
        let t = Totals::from_json(&t.to_json()).unwrap();
        let out = t.apply(OWN);
        assert!(out.contains("weft_downstream_cx_total{listener=\"web\"} 13\n"), "{out}");
        assert!(out.contains("weft_downstream_cx_total{listener=\"gone\"} 4\n"), "{out}");
        assert!(out.contains("weft_downstream_cx_active{listener=\"web\"} 2\n"), "{out}");
        assert!(
            out.contains("weft_rq_time_seconds_sum{listener=\"web\"} 1.75\n"),
            "{out}"
        );
        assert!(out.contains("weft_rq_time_seconds_bucket{le=\"0.1\",listener=\"web\"} 12\n"));
        assert!(out.contains("weft_rq_time_seconds_count{listener=\"web\"} 13\n"));
        // A family the new process does not have: its own block, before # EOF.
        let istio = out.find("# TYPE istio_requests counter\nistio_requests_total{a=\"x y\",b=\"q\\\"}\"} 5\n");
        assert!(istio.is_some_and(|i| i < out.find("# EOF").unwrap()), "{out}");
        assert!(out.ends_with("# EOF\n"));
        // The unseen series stays inside its family's block (before the gauge family starts).
        assert!(out.find("listener=\"gone\"").unwrap() < out.find("# HELP weft_downstream_cx_active").unwrap());
        // Carrying again (a chain of restarts) adds up.
        let again = Totals::from_exposition(&out).apply(OWN);
        assert!(
            again.contains("weft_downstream_cx_total{listener=\"web\"} 16\n"),
            "{again}"
        );
    }

    #[test]
    fn samples_split_with_quoted_labels() {
        assert_eq!(
            split_sample("a{x=\"} \\\" {\"} 4 # {t=\"1\"} 1"),
            Some(("a{x=\"} \\\" {\"}", "4", " # {t=\"1\"} 1"))
        );
        assert_eq!(split_sample("b 1.5"), Some(("b", "1.5", "")));
        for bad in ["", "a", "a{x=\"1\"", "a{x=\"1\"}5", "{} 1", "a "] {
            assert_eq!(split_sample(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_counters_fields_are_named() {
        assert!(Totals::from_json(&Value::Null).unwrap().is_empty());
        for (bad, needle) in [
            (json!([]), "not an object"),
            (json!({"a": {"type": "gauge", "samples": {}}}), "counters.a.type"),
            (json!({"a": {"type": "counter"}}), "counters.a.samples"),
            (
                json!({"a": {"type": "counter", "samples": {"a_total": -1}}}),
                "not a non-negative",
            ),
            (
                json!({"a": {"type": "counter", "samples": {"a_total x": 1}}}),
                "is not a series",
            ),
            (
                json!({"a": {"type": "counter", "samples": {"a\n": 1}}}),
                "is not a series",
            ),
            (json!({"a b": {"type": "counter", "samples": {}}}), "not a metric name"),
        ] {
            let e = Totals::from_json(&bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
