//! Envoy's `HttpConnectionManager.tracing` → weft's `tracing` block.
//!
//! Accepted: `provider` named `envoy.tracers.opentelemetry` with an `OpenTelemetryConfig`
//! (`grpc_service.envoy_grpc.cluster_name` → OTLP/gRPC to that cluster; `http_service.http_uri`
//! with a cluster → OTLP/HTTP to that cluster at the URI's path; `service_name`), and
//! `random_sampling` (percent of new traces, default 100). `client_sampling`, `overall_sampling`,
//! `verbose`, `custom_tags`, resource detectors and samplers are ignored; other providers are
//! refused with the field named.

use weft_config::tracing::{OtlpProtocol, RawTracing};
use weft_config::typed::Typed;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::trace::v3 as trace;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

pub const OPENTELEMETRY_NAME: &str = "envoy.tracers.opentelemetry";
pub const OPENTELEMETRY_URL: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

fn add(errs: &mut ConfigError, path: &str, msg: impl std::fmt::Display) {
    errs.add(path, msg);
}

/// The raw tracing block for an HCM's `tracing`, or `None` when it has none (or no provider: Envoy
/// then only samples for its own stats, which weft does not do).
pub fn from_hcm(
    errs: &mut ConfigError,
    path: &str,
    t: Option<&hcm::http_connection_manager::Tracing>,
) -> Option<RawTracing> {
    let t = t?;
    let provider = t.provider.as_ref()?;
    let ppath = format!("{path}.provider");
    let any = match &provider.config_type {
        Some(trace::tracing::http::ConfigType::TypedConfig(a)) => a,
        None => {
            add(errs, &format!("{ppath}.typed_config"), "is required");
            return None;
        }
    };
    if any.type_url != OPENTELEMETRY_URL {
        add(
            errs,
            &format!("{ppath}.typed_config"),
            format!(
                "unsupported tracer \"{}\" ({}); weft exports OTLP ({OPENTELEMETRY_NAME})",
                provider.name, any.type_url
            ),
        );
        return None;
    }
    let cfg: trace::OpenTelemetryConfig = match weft_xds_api::unpack(any, OPENTELEMETRY_URL) {
        Ok(c) => c,
        Err(e) => {
            add(errs, &format!("{ppath}.typed_config"), e);
            return None;
        }
    };
    let cpath = format!("{ppath}.typed_config");
    let mut raw = RawTracing {
        provider: Some("otlp".into()),
        service_name: (!cfg.service_name.is_empty()).then(|| cfg.service_name.clone()),
        sampling_ratio: Some(t.random_sampling.as_ref().map_or(1.0, |p| p.value / 100.0)),
        ..RawTracing::default()
    };
    match (&cfg.grpc_service, &cfg.http_service) {
        (Some(g), None) => {
            use core::grpc_service::TargetSpecifier;
            match &g.target_specifier {
                Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => {
                    raw.endpoint = Some(e.cluster_name.clone());
                }
                Some(TargetSpecifier::GoogleGrpc(_)) => add(
                    errs,
                    &format!("{cpath}.grpc_service.google_grpc"),
                    "unsupported; use envoy_grpc",
                ),
                _ => add(
                    errs,
                    &format!("{cpath}.grpc_service.envoy_grpc.cluster_name"),
                    "is required",
                ),
            }
            raw.protocol = Some(Typed::Value(OtlpProtocol::Grpc));
            if let Some(d) = &g.timeout {
                raw.export_timeout = Some(crate::convert::dur(d));
            }
        }
        (None, Some(h)) => {
            raw.protocol = Some(Typed::Value(OtlpProtocol::Http));
            let upath = format!("{cpath}.http_service.http_uri");
            match &h.http_uri {
                Some(u) => {
                    match &u.http_upstream_type {
                        Some(core::http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => {
                            raw.endpoint = Some(c.clone())
                        }
                        _ => add(errs, &format!("{upath}.cluster"), "is required"),
                    }
                    raw.http_path = Some(uri_path(&u.uri));
                    if let Some(d) = &u.timeout {
                        raw.export_timeout = Some(crate::convert::dur(d));
                    }
                }
                None => add(errs, &upath, "is required"),
            }
        }
        (Some(_), Some(_)) => add(errs, &cpath, "only one of grpc_service, http_service may be set"),
        (None, None) => {
            // Envoy: no service means no export. weft has nothing to do either.
            return None;
        }
    }
    Some(raw)
}

/// The path of an absolute URI (`http://collector:4318/v1/traces` → `/v1/traces`).
fn uri_path(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => "/v1/traces".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_xds_api::pb::google::protobuf::Any;
    use weft_xds_api::prost::Message;

    fn hcm_tracing(cfg: trace::OpenTelemetryConfig, percent: Option<f64>) -> hcm::http_connection_manager::Tracing {
        hcm::http_connection_manager::Tracing {
            provider: Some(trace::tracing::Http {
                name: OPENTELEMETRY_NAME.into(),
                config_type: Some(trace::tracing::http::ConfigType::TypedConfig(Any {
                    type_url: OPENTELEMETRY_URL.into(),
                    value: cfg.encode_to_vec(),
                })),
            }),
            random_sampling: percent.map(|value| weft_xds_api::pb::envoy::r#type::v3::Percent { value }),
            ..Default::default()
        }
    }

    #[test]
    fn grpc_and_http_services() {
        let g = trace::OpenTelemetryConfig {
            grpc_service: Some(core::GrpcService {
                target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core::grpc_service::EnvoyGrpc {
                        cluster_name: "otel".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            service_name: "front".into(),
            ..Default::default()
        };
        let mut errs = ConfigError::default();
        let raw = from_hcm(&mut errs, "hcm.tracing", Some(&hcm_tracing(g, Some(25.0)))).unwrap();
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(raw.endpoint.as_deref(), Some("otel"));
        assert_eq!(raw.protocol, Some(Typed::Value(OtlpProtocol::Grpc)));
        assert_eq!(raw.sampling_ratio, Some(0.25));
        assert_eq!(raw.service_name.as_deref(), Some("front"));

        let h = trace::OpenTelemetryConfig {
            http_service: Some(core::HttpService {
                http_uri: Some(core::HttpUri {
                    uri: "http://collector:4318/otlp/v1/traces".into(),
                    http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster("otel-http".into())),
                    timeout: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let raw = from_hcm(&mut errs, "hcm.tracing", Some(&hcm_tracing(h, None))).unwrap();
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(raw.protocol, Some(Typed::Value(OtlpProtocol::Http)));
        assert_eq!(raw.http_path.as_deref(), Some("/otlp/v1/traces"));
        assert_eq!(raw.sampling_ratio, Some(1.0));
    }

    #[test]
    fn other_providers_are_refused_with_the_field() {
        let mut t = hcm_tracing(trace::OpenTelemetryConfig::default(), None);
        if let Some(p) = t.provider.as_mut() {
            p.config_type = Some(trace::tracing::http::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig".into(),
                value: vec![],
            }));
        }
        let mut errs = ConfigError::default();
        assert!(from_hcm(&mut errs, "hcm.tracing", Some(&t)).is_none());
        assert!(
            errs.lines()[0].starts_with("hcm.tracing.provider.typed_config: unsupported tracer"),
            "{errs}"
        );
    }
}
