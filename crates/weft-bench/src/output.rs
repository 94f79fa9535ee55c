//! Human-readable report (a short table in the style of wrk2).

use std::fmt::Write;

use crate::stats::{LatencySummary, Report};

/// Format microseconds as us / ms / s with two decimals.
pub(crate) fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

pub(crate) fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", UNITS[i])
}

fn latency_row(out: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "    {label:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        fmt_us(l.mean_us),
        fmt_us(l.p50_us as f64),
        fmt_us(l.p90_us as f64),
        fmt_us(l.p99_us as f64),
        fmt_us(l.p999_us as f64),
        fmt_us(l.p9999_us as f64),
        fmt_us(l.max_us as f64),
    );
}

pub(crate) fn human(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Running {:.2}s test @ {} ({})",
        r.duration_secs,
        r.target,
        if r.tls.is_some() {
            r.protocol.tls_label()
        } else {
            r.protocol.label()
        }
    );
    let mode = match r.rate {
        Some(rate) => format!("open-loop at {rate} req/s"),
        None => "closed-loop".to_string(),
    };
    let warm = if r.warmup_secs > 0.0 {
        format!(", {:.2}s warm-up excluded", r.warmup_secs)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {} connections x {} streams, {mode}{warm}",
        r.connections, r.streams
    );
    if let Some(t) = &r.tls {
        let h = &t.handshake;
        let _ = writeln!(
            out,
            "  TLS: {}, ALPN {}, server name {}{}",
            t.version,
            t.alpn.as_deref().unwrap_or("none"),
            t.server_name,
            if t.verified { "" } else { " (NOT verified: --insecure)" }
        );
        let failed = if t.handshake_failures > 0 {
            format!(", {} failed", t.handshake_failures)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  TLS handshakes: {}, mean {}, p99 {}{failed}",
            h.count,
            fmt_us(h.mean_us),
            fmt_us(h.p99_us as f64)
        );
    }
    let _ = writeln!(
        out,
        "    {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "Latency", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    if r.rate.is_some() {
        latency_row(&mut out, "corrected", &r.latency);
        latency_row(&mut out, "service", &r.service_time);
    } else {
        latency_row(&mut out, "latency", &r.latency);
    }
    let _ = writeln!(
        out,
        "  {} requests in {:.2}s, {} read",
        r.requests,
        r.duration_secs,
        fmt_bytes(r.bytes_received as f64)
    );
    if r.errors_total > 0 {
        let e = &r.errors;
        let _ = writeln!(
            out,
            "  Errors: connect {}, timeout {}, io {}, 4xx {}, 5xx {}, grpc {}, rpc {}",
            e.connect, e.timeout, e.io, e.status_4xx, e.status_5xx, e.grpc, e.rpc
        );
    }
    if r.unsent > 0 {
        let _ = writeln!(out, "  Unsent (owed when cut off): {}", r.unsent);
    }
    let s = &r.status_classes;
    let classes: Vec<String> = [
        ("1xx", s.s1xx),
        ("2xx", s.s2xx),
        ("3xx", s.s3xx),
        ("4xx", s.s4xx),
        ("5xx", s.s5xx),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{k} {n}"))
    .collect();
    if !classes.is_empty() {
        let _ = writeln!(out, "  Status: {}", classes.join(", "));
    }
    if !r.rpc_statuses.is_empty() {
        let st: Vec<String> = r.rpc_statuses.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(out, "  RPC responses by status: {}", st.join(", "));
    }
    let _ = writeln!(out, "Requests/sec: {:>10.2}", r.throughput_rps);
    let _ = writeln!(out, "Transfer/sec: {:>10}", fmt_bytes(r.bytes_per_sec));
    out
}
