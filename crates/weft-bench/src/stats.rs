//! Per-connection statistics, merging and the final report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency tracked: 60 s, in microseconds.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Io,
}

/// Error counters by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ErrorCounts {
    /// TCP connect, TLS handshake (or HTTP/2 handshake) failures.
    pub connect: u64,
    /// Requests that did not complete within `--timeout`.
    pub timeout: u64,
    /// Connection resets and other I/O or protocol errors.
    pub io: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// gRPC responses whose grpc-status was missing or not 0 (OK).
    pub grpc: u64,
    /// Dubbo / Bolt responses whose status is not success (Dubbo 20, Bolt 0); by status in the
    /// report's `rpc_statuses`.
    pub rpc: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.status_4xx + self.status_5xx + self.grpc + self.rpc
    }

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.io += o.io;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.grpc += o.grpc;
        self.rpc += o.rpc;
    }
}

/// Responses per HTTP status class.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

impl StatusClasses {
    fn add(&mut self, o: &StatusClasses) {
        self.s1xx += o.s1xx;
        self.s2xx += o.s2xx;
        self.s3xx += o.s3xx;
        self.s4xx += o.s4xx;
        self.s5xx += o.s5xx;
    }
}

/// Latency distribution summary, all values in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub stdev_us: f64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            stdev_us: h.stdev(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Auto-resizing keeps idle connections cheap; values are clamped to
    // [1 µs, 60 s] on record so the range never exceeds the 60 s bound.
    Histogram::new(3).expect("valid histogram parameters")
}

fn to_us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

/// Statistics gathered by one connection (shared by its streams).
pub(crate) struct ConnStats {
    pub corrected: Histogram<u64>,
    pub service: Histogram<u64>,
    pub requests: u64,
    pub responses: u64,
    pub successes: u64,
    pub unsent: u64,
    pub bytes: u64,
    pub errors: ErrorCounts,
    pub status: StatusClasses,
    pub rpc_statuses: BTreeMap<u16, u64>,
    pub first_start: Option<Instant>,
    pub last_done: Option<Instant>,
}

impl ConnStats {
    pub fn new() -> ConnStats {
        ConnStats {
            corrected: new_histogram(),
            service: new_histogram(),
            requests: 0,
            responses: 0,
            successes: 0,
            unsent: 0,
            bytes: 0,
            errors: ErrorCounts::default(),
            status: StatusClasses::default(),
            rpc_statuses: BTreeMap::new(),
            first_start: None,
            last_done: None,
        }
    }

    fn touch(&mut self, start: Instant, done: Instant) {
        self.requests += 1;
        if self.first_start.is_none_or(|f| start < f) {
            self.first_start = Some(start);
        }
        if self.last_done.is_none_or(|l| done > l) {
            self.last_done = Some(done);
        }
    }

    /// Record a request that got a response.
    #[allow(clippy::too_many_arguments)]
    pub fn record_response(
        &mut self,
        start: Instant,
        sent: Instant,
        done: Instant,
        status: Option<u16>,
        grpc_ok: Option<bool>,
        rpc: Option<(u16, bool)>,
        bytes: u64,
    ) {
        self.touch(start, done);
        self.responses += 1;
        self.bytes += bytes;
        // `record` (not `saturating_record`) so that auto-resize kicks in;
        // values are already clamped to the 60 s bound.
        let _ = self.corrected.record(to_us(done.saturating_duration_since(start)));
        let _ = self.service.record(to_us(done.saturating_duration_since(sent)));
        let mut ok = true;
        if let Some(code) = status {
            match code / 100 {
                1 => self.status.s1xx += 1,
                2 => self.status.s2xx += 1,
                3 => self.status.s3xx += 1,
                4 => {
                    self.status.s4xx += 1;
                    self.errors.status_4xx += 1;
                    ok = false;
                }
                _ => {
                    self.status.s5xx += 1;
                    self.errors.status_5xx += 1;
                    ok = false;
                }
            }
        }
        if grpc_ok == Some(false) {
            // Only counted as a gRPC error when the HTTP layer itself was fine,
            // so that one failed call is one error.
            if ok {
                self.errors.grpc += 1;
            }
            ok = false;
        }
        if let Some((status, rpc_ok)) = rpc {
            *self.rpc_statuses.entry(status).or_default() += 1;
            if !rpc_ok {
                self.errors.rpc += 1;
                ok = false;
            }
        }
        if ok {
            self.successes += 1;
        }
    }

    /// Record a request that failed without a response.
    pub fn record_error(&mut self, start: Instant, done: Instant, kind: ErrorKind) {
        self.touch(start, done);
        match kind {
            ErrorKind::Connect => self.errors.connect += 1,
            ErrorKind::Timeout => self.errors.timeout += 1,
            ErrorKind::Io => self.errors.io += 1,
        }
    }

    pub fn merge(&mut self, o: &ConnStats) {
        // Both histograms auto-resize, so adding cannot fail on range.
        let _ = self.corrected.add(&o.corrected);
        let _ = self.service.add(&o.service);
        self.requests += o.requests;
        self.responses += o.responses;
        self.successes += o.successes;
        self.unsent += o.unsent;
        self.bytes += o.bytes;
        self.errors.add(&o.errors);
        self.status.add(&o.status);
        for (k, v) in &o.rpc_statuses {
            *self.rpc_statuses.entry(*k).or_default() += v;
        }
        if let Some(f) = o.first_start {
            if self.first_start.is_none_or(|s| f < s) {
                self.first_start = Some(f);
            }
        }
        if let Some(l) = o.last_done {
            if self.last_done.is_none_or(|s| l > s) {
                self.last_done = Some(l);
            }
        }
    }
}

/// The result of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL as given.
    pub target: String,
    /// Wire protocol used: `"http/1.1"`, `"h2"`, `"grpc"` or `"tcp"`. For
    /// TLS targets, the protocol the server selected by ALPN (`"grpc"` for
    /// gRPC, which runs over `h2`).
    pub protocol: crate::Protocol,
    /// TLS details for `https://` targets, `null` otherwise.
    pub tls: Option<TlsReport>,
    /// `"open-loop"` (with `--rate`) or `"closed-loop"`.
    pub mode: String,
    /// Target total rate in requests/s (open-loop only).
    pub rate: Option<f64>,
    pub connections: usize,
    pub streams: usize,
    /// Warm-up time excluded from the statistics, seconds.
    pub warmup_secs: f64,
    /// Length of the measured window, seconds.
    pub duration_secs: f64,
    /// Requests attempted in the measured window (responses + failures).
    pub requests: u64,
    /// Requests that got a complete response (any status).
    pub responses: u64,
    /// Responses that were not errors (status < 400 and, for gRPC, grpc-status 0; Dubbo / Bolt:
    /// the success status).
    pub successes: u64,
    /// Open-loop requests still owed when the run was cut off (not sent).
    pub unsent: u64,
    /// Completed responses per second over the measured window.
    pub throughput_rps: f64,
    /// Response bytes received (HTTP: body bytes; TCP: echoed bytes).
    pub bytes_received: u64,
    pub bytes_per_sec: f64,
    pub errors: ErrorCounts,
    /// Total of all error counters.
    pub errors_total: u64,
    pub status_classes: StatusClasses,
    /// Dubbo / Bolt: responses per protocol status (Dubbo: 20 OK, 30/31 timeouts, 60 service not
    /// found, 70 service error, 80 server error, …; Bolt: 0 success, 6 no processor, 7 timeout, …).
    /// Empty for the other protocols.
    pub rpc_statuses: BTreeMap<u16, u64>,
    /// Latency measured from each request's scheduled send time (corrected
    /// for coordinated omission). Equal to `service_time` in closed-loop mode.
    pub latency: LatencySummary,
    /// Latency measured from the actual send time (uncorrected).
    pub service_time: LatencySummary,
}

/// TLS details of a run against an `https://` target.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// TLS version negotiated ("TLSv1.3" or "TLSv1.2").
    pub version: String,
    /// ALPN protocol the server selected ("h2" or "http/1.1"), `null` if it
    /// selected none (then HTTP/1.1 is spoken).
    pub alpn: Option<String>,
    /// ALPN protocols offered, most preferred first.
    pub alpn_offered: Vec<String>,
    /// Server name sent (SNI) and verified: `--sni` or the URL host.
    pub server_name: String,
    /// False with `--insecure` (certificate not verified).
    pub verified: bool,
    /// Handshake time (TCP connect excluded) of every new connection of the
    /// run — the ones opened before the clock starts and any reconnects,
    /// warm-up included; the reachability probe is not counted. Only
    /// `count`, `mean_us`, the percentiles and `max_us` are meaningful.
    pub handshake: LatencySummary,
    /// Handshakes that failed during the run (each also counts as a
    /// connect error when a request was waiting on it).
    pub handshake_failures: u64,
}
