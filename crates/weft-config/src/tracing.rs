//! The connection manager's `tracing` block: distributed tracing exported over OTLP.
//!
//! ```yaml
//! tracing:
//!   provider: otlp                # the only provider
//!   endpoint: otel-collector      # a cluster name, or host:port
//!   protocol: grpc                # grpc | http (OTLP/HTTP with protobuf bodies, POST /v1/traces)
//!   sampling_ratio: 0.01          # for new traces; a parent's decision is followed
//!   force_sample_on_error: true   # export a failed exchange's spans even when not sampled
//!   service_name: reviews-sidecar
//!   propagators: [w3c, b3, b3multi, sw8]
//!   max_queue_size: 2048          # exchanges waiting for export; more are dropped and counted
//!   batch_size: 512
//!   export_timeout: 2s
//! ```
//!
//! Raw (YAML/xDS) form, its validation (errors name the field), and the model the proxy runs.

use crate::errors::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The `tracing` block as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub protocol: Option<crate::typed::Typed<OtlpProtocol>>,
    pub sampling_ratio: Option<f64>,
    pub force_sample_on_error: Option<bool>,
    pub service_name: Option<String>,
    pub propagators: Option<Vec<String>>,
    pub max_queue_size: Option<u64>,
    pub batch_size: Option<u64>,
    pub export_timeout: Option<crate::typed::RawDuration>,
    /// OTLP/HTTP only: the request path (default `/v1/traces`).
    pub http_path: Option<String>,
}

/// How trace context travels in request headers.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Propagator {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// Zipkin B3, the single `b3` header.
    B3,
    /// Zipkin B3, the `x-b3-*` headers.
    B3multi,
    /// Apache SkyWalking's `sw8` header (cross-process propagation protocol v3).
    Sw8,
}

impl Propagator {
    pub fn parse(s: &str) -> Option<Propagator> {
        Some(match s {
            "w3c" | "tracecontext" => Propagator::W3c,
            "b3" => Propagator::B3,
            "b3multi" => Propagator::B3multi,
            "sw8" | "skywalking" => Propagator::Sw8,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

/// Where spans go.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TraceEndpoint {
    /// A `host:port` (resolved when the exporter connects).
    Address(String),
    /// A cluster of the configuration; a host is picked from it for each connection.
    Cluster(String),
}

/// Validated tracing settings.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Tracing {
    pub endpoint: TraceEndpoint,
    pub protocol: OtlpProtocol,
    /// Fraction (0–1) of new traces sampled.
    pub sampling_ratio: f64,
    pub force_sample_on_error: bool,
    pub service_name: String,
    /// Extracted in this order (the first that parses wins); all are injected upstream.
    pub propagators: Vec<Propagator>,
    pub max_queue_size: u32,
    pub batch_size: u32,
    #[serde(serialize_with = "ser_dur")]
    pub export_timeout: Duration,
    pub http_path: String,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Validates a `tracing` block at `path`. Problems are added to `errors`.
pub fn validate(
    path: &str,
    raw: &RawTracing,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
    errors: &mut ConfigError,
) -> Option<Tracing> {
    let before = errors.len();
    let mut err = |field: &str, msg: String| errors.add(format!("{path}.{field}"), msg);
    match raw.provider.as_deref() {
        None | Some("otlp") | Some("opentelemetry") => {}
        Some(o) => err("provider", format!("unknown provider \"{o}\" (otlp)")),
    }
    let endpoint = match raw.endpoint.as_deref() {
        None | Some("") => {
            err("endpoint", "is required (a cluster name or host:port)".into());
            None
        }
        Some(e) if clusters.contains(e) => Some(TraceEndpoint::Cluster(e.to_string())),
        Some(e) if e.parse::<SocketAddr>().is_ok() || looks_like_host_port(e) => {
            Some(TraceEndpoint::Address(e.to_string()))
        }
        Some(e) if allow_unknown_clusters && !e.contains(':') => Some(TraceEndpoint::Cluster(e.to_string())),
        Some(e) => {
            err(
                "endpoint",
                format!("\"{e}\" is neither a known cluster nor a host:port"),
            );
            None
        }
    };
    let protocol = match raw.protocol.as_ref().map(|p| p.get()) {
        None => OtlpProtocol::Grpc,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            err("protocol", e);
            OtlpProtocol::Grpc
        }
    };
    let sampling_ratio = match raw.sampling_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            err("sampling_ratio", format!("{r} is out of range [0, 1]"));
            1.0
        }
    };
    let service_name = match raw.service_name.as_deref() {
        None => "weft".to_string(),
        Some("") => {
            err("service_name", "must not be empty".into());
            "weft".to_string()
        }
        Some(s) => s.to_string(),
    };
    let mut propagators = Vec::new();
    match &raw.propagators {
        None => propagators.extend([Propagator::W3c, Propagator::B3, Propagator::B3multi]),
        Some(list) if list.is_empty() => err("propagators", "must name at least one propagator".into()),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                match Propagator::parse(p) {
                    Some(p) if propagators.contains(&p) => err(&format!("propagators[{i}]"), "is listed twice".into()),
                    Some(p) => propagators.push(p),
                    None => err(
                        &format!("propagators[{i}]"),
                        format!("unknown propagator \"{p}\" (w3c, b3, b3multi, sw8)"),
                    ),
                }
            }
        }
    }
    let mut bounded = |field: &str, v: Option<u64>, min: u64, max: u64, default: u32| match v {
        None => default,
        Some(n) if (min..=max).contains(&n) => n as u32,
        Some(n) => {
            err(field, format!("{n} is out of range [{min}, {max}]"));
            default
        }
    };
    let max_queue_size = bounded("max_queue_size", raw.max_queue_size, 1, 1 << 20, 2048);
    let batch_size = bounded("batch_size", raw.batch_size, 1, 1 << 16, 512);
    let export_timeout = match raw.export_timeout.as_ref() {
        None => Duration::from_secs(2),
        Some(s) => match s.get() {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                err("export_timeout", "must be greater than 0".into());
                Duration::from_secs(2)
            }
            Err(e) => {
                err("export_timeout", e.to_string());
                Duration::from_secs(2)
            }
        },
    };
    let http_path = match raw.http_path.as_deref() {
        None => "/v1/traces".to_string(),
        Some(p) if p.starts_with('/') && http::uri::PathAndQuery::try_from(p).is_ok() => p.to_string(),
        Some(p) => {
            err("http_path", format!("\"{p}\" is not an absolute path"));
            "/v1/traces".to_string()
        }
    };
    let out = endpoint.map(|endpoint| Tracing {
        endpoint,
        protocol,
        sampling_ratio,
        force_sample_on_error: raw.force_sample_on_error.unwrap_or(true),
        service_name,
        propagators,
        max_queue_size,
        batch_size,
        export_timeout,
        http_path,
    });
    if errors.len() == before {
        out
    } else {
        None
    }
}

/// `name:port` with a non-empty name and a valid port.
fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, raw: &RawTracing, clusters: &HashSet<String>, allow: bool) -> (Option<Tracing>, ConfigError) {
        let mut e = ConfigError::default();
        (validate(path, raw, clusters, allow, &mut e), e)
    }

    fn raw(endpoint: &str) -> RawTracing {
        RawTracing {
            endpoint: Some(endpoint.into()),
            ..RawTracing::default()
        }
    }

    #[test]
    fn defaults_and_endpoint_kinds() {
        let clusters: HashSet<String> = ["otel".to_string()].into();
        let (t, e) = check("t", &raw("otel"), &clusters, false);
        assert!(e.is_empty(), "{e:?}");
        let t = t.unwrap();
        assert_eq!(t.endpoint, TraceEndpoint::Cluster("otel".into()));
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.sampling_ratio, 1.0);
        assert_eq!(
            t.propagators,
            vec![Propagator::W3c, Propagator::B3, Propagator::B3multi]
        );
        let (t, _) = check("t", &raw("127.0.0.1:4317"), &clusters, false);
        assert_eq!(t.unwrap().endpoint, TraceEndpoint::Address("127.0.0.1:4317".into()));
        let (t, _) = check("t", &raw("collector.local:4317"), &clusters, false);
        assert!(t.is_some());
    }

    #[test]
    fn bad_fields_are_named() {
        let r = RawTracing {
            endpoint: Some("nope".into()),
            protocol: Some("udp".into()),
            sampling_ratio: Some(1.5),
            propagators: Some(vec!["w3c".into(), "jaeger".into(), "w3c".into()]),
            max_queue_size: Some(0),
            export_timeout: Some("0s".into()),
            provider: Some("zipkin".into()),
            ..RawTracing::default()
        };
        let (t, e) = check("listeners[0].http.tracing", &r, &HashSet::new(), false);
        assert!(t.is_none());
        let fields: Vec<&str> = e.errors.iter().map(|f| f.path.as_str()).collect();
        for f in [
            "provider",
            "endpoint",
            "protocol",
            "sampling_ratio",
            "propagators[1]",
            "propagators[2]",
            "max_queue_size",
            "export_timeout",
        ] {
            let want = format!("listeners[0].http.tracing.{f}");
            assert!(fields.contains(&want.as_str()), "{want} not in {fields:?}");
        }
    }
}
