//! Envoy's access loggers over xDS (`envoy.access_loggers.file`, `envoy.access_loggers.stdout` with
//! their `log_format` (`SubstitutionFormatString`), and the gRPC access-log service clients
//! `envoy.access_loggers.http_grpc` / `tcp_grpc`) in weft's raw form.

use std::collections::BTreeMap;
use weft_config::grpc_log::RawGrpcAccessLog;
use weft_config::raw::RawAccessLog;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3::{data_source, substitution_format_string, SubstitutionFormatString};
use weft_xds_api::pb::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use weft_xds_api::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use weft_xds_api::pb::envoy::extensions::access_loggers::stream::v3::{stdout_access_log, StdoutAccessLog};
use weft_xds_api::pb::google::protobuf::{value::Kind as ValueKind, Any, Struct};

pub const FILE_URL: &str = weft_xds_api::type_url::FILE_ACCESS_LOG;
pub const STDOUT_URL: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
pub const HTTP_GRPC_URL: &str = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig";
pub const TCP_GRPC_URL: &str = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig";

/// Where an access logger sits: an HTTP connection manager or a TCP proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    Tcp,
}

/// One access logger's typed config (`p` is its path, e.g. `…access_log[0].typed_config`);
/// `None` when its type is not one of these (the caller reports it).
pub fn convert(errs: &mut ConfigError, p: &str, a: &Any, kind: Kind) -> Option<RawAccessLog> {
    if a.type_url == HTTP_GRPC_URL {
        if kind == Kind::Tcp {
            errs.add(p, "envoy.access_loggers.http_grpc logs HTTP requests; use envoy.access_loggers.tcp_grpc (TcpGrpcAccessLogConfig) on a tcp_proxy");
            return Some(RawAccessLog::default());
        }
        let g = match weft_xds_api::unpack::<HttpGrpcAccessLogConfig>(a, HTTP_GRPC_URL) {
            Ok(g) => g,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        if !g.additional_response_trailers_to_log.is_empty() {
            errs.add(format!("{p}.additional_response_trailers_to_log"), "unsupported");
        }
        let mut raw = grpc_common(errs, p, g.common_config.as_ref());
        raw.additional_request_headers_to_log = g.additional_request_headers_to_log;
        raw.additional_response_headers_to_log = g.additional_response_headers_to_log;
        return Some(RawAccessLog {
            grpc: Some(raw),
            ..RawAccessLog::default()
        });
    }
    if a.type_url == TCP_GRPC_URL {
        if kind == Kind::Http {
            errs.add(p, "envoy.access_loggers.tcp_grpc logs TCP sessions; use envoy.access_loggers.http_grpc (HttpGrpcAccessLogConfig) on an HTTP connection manager");
            return Some(RawAccessLog::default());
        }
        let g = match weft_xds_api::unpack::<TcpGrpcAccessLogConfig>(a, TCP_GRPC_URL) {
            Ok(g) => g,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        return Some(RawAccessLog {
            grpc: Some(grpc_common(errs, p, g.common_config.as_ref())),
            ..RawAccessLog::default()
        });
    }
    if a.type_url == FILE_URL {
        let f = match weft_xds_api::unpack::<FileAccessLog>(a, FILE_URL) {
            Ok(f) => f,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        let path = match f.path.as_str() {
            "/dev/stdout" => "stdout".to_string(),
            "/dev/stderr" => "stderr".to_string(),
            other => other.to_string(),
        };
        let mut raw = RawAccessLog {
            path: Some(path),
            ..RawAccessLog::default()
        };
        #[allow(deprecated)]
        match &f.access_log_format {
            None => {}
            Some(file_access_log::AccessLogFormat::LogFormat(s)) => {
                format(errs, &format!("{p}.log_format"), s, &mut raw);
            }
            Some(file_access_log::AccessLogFormat::Format(s)) => raw.format = Some(s.clone()),
            Some(
                file_access_log::AccessLogFormat::JsonFormat(s) | file_access_log::AccessLogFormat::TypedJsonFormat(s),
            ) => raw.json_format = json(errs, &format!("{p}.json_format"), s),
        }
        return Some(raw);
    }
    if a.type_url == STDOUT_URL {
        let f = match weft_xds_api::unpack::<StdoutAccessLog>(a, STDOUT_URL) {
            Ok(f) => f,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        let mut raw = RawAccessLog {
            path: Some("stdout".into()),
            ..RawAccessLog::default()
        };
        if let Some(stdout_access_log::AccessLogFormat::LogFormat(s)) = &f.access_log_format {
            format(errs, &format!("{p}.log_format"), s, &mut raw);
        }
        return Some(raw);
    }
    None
}

/// `common_config` of `http_grpc`/`tcp_grpc`: the Envoy API's own rules (`log_name` min_len 1,
/// `grpc_service` required, `transport_api_version` defined, `buffer_flush_interval` > 0), then
/// what weft can do (`envoy_grpc` only; fields that would change what is sent are refused).
fn grpc_common(errs: &mut ConfigError, p: &str, c: Option<&CommonGrpcAccessLogConfig>) -> RawGrpcAccessLog {
    use weft_xds_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    let p = format!("{p}.common_config");
    let Some(c) = c else {
        errs.add(&p, "is required");
        return RawGrpcAccessLog::default();
    };
    if c.log_name.is_empty() {
        errs.add(format!("{p}.log_name"), "must not be empty (min_len: 1)");
    }
    let cluster = match c.grpc_service.as_ref() {
        None => {
            errs.add(format!("{p}.grpc_service"), "is required");
            None
        }
        Some(g) => {
            if !g.initial_metadata.is_empty() {
                errs.add(format!("{p}.grpc_service.initial_metadata"), "unsupported");
            }
            match &g.target_specifier {
                Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => Some(e.cluster_name.clone()),
                Some(TargetSpecifier::EnvoyGrpc(_)) => {
                    errs.add(
                        format!("{p}.grpc_service.envoy_grpc.cluster_name"),
                        "must not be empty (min_len: 1)",
                    );
                    None
                }
                Some(TargetSpecifier::GoogleGrpc(_)) => {
                    errs.add(format!("{p}.grpc_service.google_grpc"), "unsupported; use envoy_grpc");
                    None
                }
                None => {
                    errs.add(format!("{p}.grpc_service.envoy_grpc"), "is required");
                    None
                }
            }
        }
    };
    // ApiVersion: AUTO (0) and V3 (2) are v3; V2 (1) is gone from Envoy too.
    match c.transport_api_version {
        0 | 2 => {}
        1 => errs.add(format!("{p}.transport_api_version"), "V2 is not supported; use V3"),
        v => errs.add(
            format!("{p}.transport_api_version"),
            format!("unsupported value {v} (defined_only)"),
        ),
    }
    let buffer_flush_interval = match &c.buffer_flush_interval {
        None => None,
        Some(d) if d.seconds > 0 || (d.seconds == 0 && d.nanos > 0) => Some(crate::convert::dur(d)),
        Some(_) => {
            errs.add(format!("{p}.buffer_flush_interval"), "must be greater than 0s (gt: 0s)");
            None
        }
    };
    if !c.custom_tags.is_empty() {
        errs.add(format!("{p}.custom_tags"), "unsupported");
    }
    // `filter_state_objects_to_log` names objects weft never has (nothing to log), and
    // `grpc_stream_retry_policy` is what weft does anyway (reconnect with backoff): both ignored.
    RawGrpcAccessLog {
        cluster,
        log_name: (!c.log_name.is_empty()).then(|| c.log_name.clone()),
        buffer_flush_interval,
        buffer_size_bytes: c.buffer_size_bytes.as_ref().map(|v| u64::from(v.value)),
        max_queue_size: None,
        additional_request_headers_to_log: Vec::new(),
        additional_response_headers_to_log: Vec::new(),
    }
}

/// `log_format`: text (inline or `text_format`) or a flat JSON map of strings. Envoy's default
/// format when no format is set, like Envoy.
fn format(errs: &mut ConfigError, p: &str, s: &SubstitutionFormatString, raw: &mut RawAccessLog) {
    if !s.formatters.is_empty() {
        errs.add(format!("{p}.formatters"), "unsupported");
    }
    if s.omit_empty_values {
        errs.add(format!("{p}.omit_empty_values"), "unsupported");
    }
    #[allow(deprecated)]
    match &s.format {
        None => raw.format = Some(String::new()),
        Some(substitution_format_string::Format::TextFormat(t)) => raw.format = Some(t.clone()),
        Some(substitution_format_string::Format::TextFormatSource(d)) => match &d.specifier {
            Some(data_source::Specifier::InlineString(t)) => raw.format = Some(t.clone()),
            Some(data_source::Specifier::InlineBytes(b)) => match std::str::from_utf8(b) {
                Ok(t) => raw.format = Some(t.to_string()),
                Err(_) => errs.add(format!("{p}.text_format_source.inline_bytes"), "is not UTF-8"),
            },
            _ => errs.add(
                format!("{p}.text_format_source"),
                "only inline_string and inline_bytes are supported",
            ),
        },
        Some(substitution_format_string::Format::JsonFormat(j)) => {
            raw.json_format = json(errs, &format!("{p}.json_format"), j)
        }
    }
}

fn json(errs: &mut ConfigError, p: &str, s: &Struct) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in &s.fields {
        match &v.kind {
            Some(ValueKind::StringValue(t)) => {
                out.insert(k.clone(), t.clone());
            }
            _ => errs.add(format!("{p}.{k}"), "only string values (format strings) are supported"),
        }
    }
    Some(out)
}
