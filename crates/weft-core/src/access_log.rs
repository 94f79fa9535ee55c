//! Access log sinks: one record per line (weft's JSON object, or an Envoy-style format), written through a buffer that a background task
//! flushes every 250 ms (and whenever it grows past 64 KiB), so logging costs a formatted line and an
//! uncontended lock per request rather than a syscall.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use weft_config::log_format::LogFormat;
use weft_config::{AccessLog, LogSink};

const FLUSH_THRESHOLD: usize = 64 * 1024;

/// One open sink (file, stdout, stderr) and its buffer, shared by every logger writing to it.
struct Sink {
    buf: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Sink {
    fn open(sink: &LogSink) -> io::Result<Sink> {
        let out: Box<dyn Write + Send> = match sink {
            LogSink::Stdout => Box::new(io::stdout()),
            LogSink::Stderr => Box::new(io::stderr()),
            LogSink::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        };
        Ok(Sink {
            buf: Mutex::new(Vec::with_capacity(FLUSH_THRESHOLD)),
            out: Mutex::new(out),
        })
    }

    /// Appends whatever `fill` writes (one or more whole lines) to the buffer.
    fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.lock();
        fill(&mut buf);
        if buf.len() >= FLUSH_THRESHOLD {
            let data = std::mem::take(&mut *buf);
            drop(buf);
            self.write_out(&data);
        }
    }

    fn flush(&self) {
        let data = {
            let mut buf = self.buf.lock();
            if buf.is_empty() {
                return;
            }
            std::mem::take(&mut *buf)
        };
        self.write_out(&data);
    }

    fn write_out(&self, data: &[u8]) {
        let mut out = self.out.lock();
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

/// One configured access log: a shared sink and the format its lines take.
pub struct AccessLogger {
    sink: Arc<Sink>,
    format: Option<LogFormat>,
}

impl AccessLogger {
    /// The Envoy-style format, when the access log configures one (`None`: weft's JSON record).
    pub fn format(&self) -> Option<&LogFormat> {
        self.format.as_ref()
    }

    /// Appends one record (a JSON object without the trailing newline).
    pub fn log(&self, record: &serde_json::Value) {
        self.sink.append(|buf| {
            let _ = serde_json::to_writer(&mut *buf, record);
            buf.push(b'\n');
        });
    }

    /// Appends one entry in the configured format, formatted straight into the sink's buffer
    /// (nothing when no format is configured: callers then write weft's record with [`Self::log`]).
    pub fn log_entry(&self, e: &crate::log_format::LogEntry<'_>) {
        if let Some(f) = &self.format {
            self.sink.append(|buf| crate::log_format::write(f, e, buf));
        }
    }

    pub fn flush(&self) {
        self.sink.flush();
    }
}

/// Opens each sink once and hands out loggers sharing it; flushes them periodically.
#[derive(Default)]
pub struct AccessLogs {
    open: Mutex<HashMap<LogSink, Weak<Sink>>>,
}

impl AccessLogs {
    fn sink(&self, sink: &LogSink) -> io::Result<Arc<Sink>> {
        let mut open = self.open.lock();
        if let Some(l) = open.get(sink).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let l = Arc::new(Sink::open(sink)?);
        open.insert(sink.clone(), Arc::downgrade(&l));
        Ok(l)
    }

    /// A logger writing weft's JSON record to `sink`.
    pub fn get(&self, sink: &LogSink) -> io::Result<Arc<AccessLogger>> {
        Ok(Arc::new(AccessLogger {
            sink: self.sink(sink)?,
            format: None,
        }))
    }

    /// The logger an access log's configuration asks for (its sink and format).
    pub fn get_for(&self, log: &AccessLog) -> io::Result<Arc<AccessLogger>> {
        Ok(Arc::new(AccessLogger {
            sink: self.sink(&log.sink)?,
            format: log.format.clone(),
        }))
    }

    pub fn flush_all(&self) {
        let sinks: Vec<_> = {
            let mut open = self.open.lock();
            open.retain(|_, w| w.strong_count() > 0);
            open.values().filter_map(Weak::upgrade).collect()
        };
        for s in sinks {
            s.flush();
        }
    }

    pub async fn flush_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            self.flush_all();
        }
    }
}

/// Label of the gRPC access-log metrics: the log's `log_name` (several filters naming the same
/// collector and log share one stream) and `kind` (`http` or `tcp`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct GrpcLogLabel {
    pub log_name: String,
    pub kind: String,
}

/// Counters of one gRPC access logger (see `weft_telemetry::als`).
#[derive(Clone, Default)]
pub struct GrpcLogCounters {
    /// Entries handed to an open stream.
    pub sent: prometheus_client::metrics::counter::Counter,
    /// Entries lost: the queue was full, no stream could be opened, or the stream was backed up.
    pub dropped: prometheus_client::metrics::counter::Counter,
    /// Streams opened to the collector.
    pub streams: prometheus_client::metrics::counter::Counter,
    /// Failed attempts to connect to the collector, and streams that ended with an error.
    pub stream_failures: prometheus_client::metrics::counter::Counter,
}

/// The gRPC access loggers' metric families, registered with the process registry once.
#[derive(Default)]
pub struct GrpcLogMetrics {
    sent: prometheus_client::metrics::family::Family<GrpcLogLabel, prometheus_client::metrics::counter::Counter>,
    dropped: prometheus_client::metrics::family::Family<GrpcLogLabel, prometheus_client::metrics::counter::Counter>,
    streams: prometheus_client::metrics::family::Family<GrpcLogLabel, prometheus_client::metrics::counter::Counter>,
    stream_failures:
        prometheus_client::metrics::family::Family<GrpcLogLabel, prometheus_client::metrics::counter::Counter>,
}

impl GrpcLogMetrics {
    pub(crate) fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "access_log_grpc_sent",
            "Access-log entries sent on a stream to the gRPC access-log service",
            self.sent.clone(),
        );
        r.register(
            "access_log_grpc_dropped",
            "Access-log entries dropped: queue full, collector unreachable or backed up",
            self.dropped.clone(),
        );
        r.register(
            "access_log_grpc_streams",
            "Streams opened to the gRPC access-log service",
            self.streams.clone(),
        );
        r.register(
            "access_log_grpc_stream_failures",
            "Failed connects to the gRPC access-log service and streams it ended with an error",
            self.stream_failures.clone(),
        );
    }

    /// The counters of the logger named `log_name` of `kind` (`http`, `tcp`).
    pub fn counters(&self, log_name: &str, kind: &str) -> GrpcLogCounters {
        let l = GrpcLogLabel {
            log_name: log_name.to_string(),
            kind: kind.to_string(),
        };
        GrpcLogCounters {
            sent: self.sent.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            streams: self.streams.get_or_create(&l).clone(),
            stream_failures: self.stream_failures.get_or_create(&l).clone(),
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn timestamp(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_timestamp(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// [`timestamp`], appended to a buffer.
pub fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
