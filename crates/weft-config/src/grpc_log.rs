//! An access log of kind `grpc`: entries streamed to a collector over Envoy's gRPC access-log service
//! (`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`), what SkyWalking's OAP and other
//! mesh log pipelines consume.
//!
//! ```yaml
//! access_log:
//!   - path: stdout                       # a file/stdout log may sit beside it
//!   - grpc:
//!       cluster: als-collector           # a cluster of this configuration
//!       log_name: weft-outbound          # sent in the identifier of each stream
//!       buffer_flush_interval: 1s
//!       buffer_size_bytes: 16384
//!       max_queue_size: 4096             # entries waiting; more are dropped and counted
//!       additional_request_headers_to_log: [x-user]
//!       additional_response_headers_to_log: [x-cache]
//! ```
//!
//! Raw (YAML/xDS) form, its validation (errors name the field), and the model the proxy runs.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// The `grpc` block of an access log entry, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpcAccessLog {
    pub cluster: Option<String>,
    pub log_name: Option<String>,
    pub buffer_flush_interval: Option<crate::typed::RawDuration>,
    pub buffer_size_bytes: Option<u64>,
    pub max_queue_size: Option<u64>,
    pub additional_request_headers_to_log: Vec<String>,
    pub additional_response_headers_to_log: Vec<String>,
}

/// A validated gRPC access log.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
pub struct GrpcAccessLog {
    /// The collector: a cluster of the configuration (a host is picked from it for each stream).
    pub cluster: String,
    /// Sent in `StreamAccessLogsMessage.identifier.log_name` on each stream's first message.
    pub log_name: String,
    /// A batch is sent at least this often.
    #[serde(serialize_with = "ser_dur")]
    pub buffer_flush_interval: Duration,
    /// A batch is sent as soon as its entries' encoded size reaches this (0: every entry at once).
    pub buffer_size_bytes: u32,
    /// Entries waiting for the sender; when full, more are dropped and counted.
    pub max_queue_size: u32,
    /// Lowercase header names copied into `request.request_headers`.
    pub additional_request_headers_to_log: Vec<String>,
    /// Lowercase header names copied into `response.response_headers`.
    pub additional_response_headers_to_log: Vec<String>,
}

pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_BUFFER_SIZE_BYTES: u32 = 16 * 1024;
pub const DEFAULT_MAX_QUEUE_SIZE: u32 = 4096;
const MAX_BUFFER_SIZE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_QUEUE_SIZE: u64 = 1 << 20;
const MAX_HEADERS: usize = 64;

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

/// Validates a `grpc` block at `path` (e.g. `listeners[0].filter_chains[0].http.access_log[1].grpc`).
/// Problems are added to `errors`.
pub fn validate(
    path: &str,
    raw: &RawGrpcAccessLog,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
    errors: &mut crate::errors::ConfigError,
) -> Option<GrpcAccessLog> {
    let before = errors.len();
    let mut err = |field: &str, msg: String| errors.add(format!("{path}.{field}"), msg);
    let cluster = match raw.cluster.as_deref() {
        None | Some("") => {
            err("cluster", "is required (the collector's cluster)".into());
            None
        }
        Some(c) if clusters.contains(c) || allow_unknown_clusters => Some(c.to_string()),
        Some(c) => {
            err("cluster", format!("unknown cluster \"{c}\""));
            None
        }
    };
    let log_name = match raw.log_name.as_deref() {
        None | Some("") => {
            err("log_name", "is required (it names the log to the collector)".into());
            None
        }
        Some(n) => Some(n.to_string()),
    };
    let buffer_flush_interval = match raw.buffer_flush_interval.as_ref() {
        None => DEFAULT_FLUSH_INTERVAL,
        Some(s) => match s.get() {
            Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(3600) => d,
            Ok(_) => {
                err("buffer_flush_interval", "must be between 1ms and 1h".into());
                DEFAULT_FLUSH_INTERVAL
            }
            Err(e) => {
                err("buffer_flush_interval", e);
                DEFAULT_FLUSH_INTERVAL
            }
        },
    };
    let buffer_size_bytes = match raw.buffer_size_bytes {
        None => DEFAULT_BUFFER_SIZE_BYTES,
        Some(n) if n <= MAX_BUFFER_SIZE_BYTES => n as u32,
        Some(n) => {
            err(
                "buffer_size_bytes",
                format!("{n} is out of range [0, {MAX_BUFFER_SIZE_BYTES}]"),
            );
            DEFAULT_BUFFER_SIZE_BYTES
        }
    };
    let max_queue_size = match raw.max_queue_size {
        None => DEFAULT_MAX_QUEUE_SIZE,
        Some(n) if (1..=MAX_QUEUE_SIZE).contains(&n) => n as u32,
        Some(n) => {
            err("max_queue_size", format!("{n} is out of range [1, {MAX_QUEUE_SIZE}]"));
            DEFAULT_MAX_QUEUE_SIZE
        }
    };
    let mut headers = |field: &str, names: &[String]| -> Vec<String> {
        if names.len() > MAX_HEADERS {
            err(field, format!("at most {MAX_HEADERS} headers"));
        }
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if n.starts_with(':') || http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                err(&format!("{field}[{i}]"), format!("\"{n}\" is not a valid header name"));
                continue;
            }
            let n = n.to_ascii_lowercase();
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    };
    let additional_request_headers_to_log = headers(
        "additional_request_headers_to_log",
        &raw.additional_request_headers_to_log,
    );
    let additional_response_headers_to_log = headers(
        "additional_response_headers_to_log",
        &raw.additional_response_headers_to_log,
    );
    match (cluster, log_name) {
        (Some(cluster), Some(log_name)) if errors.len() == before => Some(GrpcAccessLog {
            cluster,
            log_name,
            buffer_flush_interval,
            buffer_size_bytes,
            max_queue_size,
            additional_request_headers_to_log,
            additional_response_headers_to_log,
        }),
        _ => None,
    }
}
