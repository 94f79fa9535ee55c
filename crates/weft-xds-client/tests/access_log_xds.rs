//! Envoy's file and stdout access loggers with `log_format` over xDS become weft's access logs, and
//! a format weft cannot honour is refused with the Envoy field named.

use weft_config::raw::RawConfig;
use weft_config::*;
use weft_xds_api::pb::envoy::config::accesslog::v3 as al;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::extensions::access_loggers::file::v3 as file;
use weft_xds_api::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use weft_xds_api::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_xds_api::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use weft_xds_api::{pack, type_url};
use weft_xds_client::convert;

fn tcp_listener(log: Any) -> ls::Listener {
    let t = tcp::TcpProxy {
        stat_prefix: "db".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        access_log: vec![al::AccessLog {
            name: "envoy.access_loggers.x".into(),
            config_type: Some(al::access_log::ConfigType::TypedConfig(log)),
            ..Default::default()
        }],
        ..Default::default()
    };
    ls::Listener {
        name: "db".into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::TCP_PROXY, &t))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn model(log: Any) -> Result<Config, String> {
    let l = convert::listener(&tcp_listener(log))
        .map_err(|e| e.lines().join("; "))?
        .unwrap();
    let raw = RawConfig {
        listeners: vec![l.raw],
        ..Default::default()
    };
    let opts = ValidateOptions {
        allow_unknown_clusters: true,
        allow_empty_clusters: true,
        allow_empty_route_configs: true,
    };
    validate_with(raw, opts).map_err(|e| e.to_string())
}

fn tcp_log(c: &Config) -> &AccessLog {
    let f = &c.listeners[0].filter_chains[0].filter;
    let NetworkFilter::TcpProxy(t) = f else { panic!("{f:?}") };
    t.access_log.as_ref().unwrap()
}

fn text_source(s: &str) -> core::SubstitutionFormatString {
    core::SubstitutionFormatString {
        format: Some(core::substitution_format_string::Format::TextFormatSource(
            core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(s.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

const STDOUT: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

#[test]
fn stdout_logger_with_text_format_source() {
    let log = stream::StdoutAccessLog {
        access_log_format: Some(stream::stdout_access_log::AccessLogFormat::LogFormat(text_source(
            "%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST% %BYTES_SENT%\n",
        ))),
    };
    let c = model(pack(STDOUT, &log)).unwrap();
    let a = tcp_log(&c);
    assert_eq!(a.sink, LogSink::Stdout);
    let f = a.format.as_ref().expect("a text format");
    assert_eq!(f.source(), "%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST% %BYTES_SENT%\n");
    assert!(matches!(f.kind, log_format::FormatKind::Text(_)));
}

#[test]
fn file_logger_with_json_format_and_default_format() {
    let json = Struct {
        fields: [("code", "%RESPONSE_CODE%"), ("up", "%UPSTREAM_HOST%")]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.into())),
                    },
                )
            })
            .collect(),
    };
    let log = file::FileAccessLog {
        path: "/var/log/x.log".into(),
        access_log_format: Some(file::file_access_log::AccessLogFormat::LogFormat(
            core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::JsonFormat(json)),
                ..Default::default()
            },
        )),
    };
    let c = model(pack(type_url::FILE_ACCESS_LOG, &log)).unwrap();
    let a = tcp_log(&c);
    assert_eq!(a.sink, LogSink::File("/var/log/x.log".into()));
    let f = a.format.as_ref().unwrap();
    let log_format::FormatKind::Json(fields) = &f.kind else {
        panic!()
    };
    assert_eq!(
        fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["code", "up"]
    );

    // An empty log_format is Envoy's default format, as in Envoy.
    let log = file::FileAccessLog {
        path: "/dev/stdout".into(),
        access_log_format: Some(file::file_access_log::AccessLogFormat::LogFormat(Default::default())),
    };
    let c = model(pack(type_url::FILE_ACCESS_LOG, &log)).unwrap();
    assert_eq!(
        tcp_log(&c).format.as_ref().unwrap().source(),
        log_format::ENVOY_DEFAULT_FORMAT
    );
    // No log_format at all keeps weft's own JSON record.
    let log = file::FileAccessLog {
        path: "/dev/stdout".into(),
        access_log_format: None,
    };
    assert!(tcp_log(&model(pack(type_url::FILE_ACCESS_LOG, &log)).unwrap())
        .format
        .is_none());
}

#[test]
fn bad_formats_are_refused_with_the_field_named() {
    let log = stream::StdoutAccessLog {
        access_log_format: Some(stream::stdout_access_log::AccessLogFormat::LogFormat(text_source(
            "%NOT_AN_OPERATOR%",
        ))),
    };
    let e = model(pack(STDOUT, &log)).unwrap_err();
    assert!(
        e.contains("access_log[0].format") && e.contains("unknown operator %NOT_AN_OPERATOR%"),
        "{e}"
    );

    let mut s = text_source("x");
    s.format = Some(core::substitution_format_string::Format::TextFormatSource(
        core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename("/etc/f".into())),
            ..Default::default()
        },
    ));
    let log = stream::StdoutAccessLog {
        access_log_format: Some(stream::stdout_access_log::AccessLogFormat::LogFormat(s)),
    };
    let e = model(pack(STDOUT, &log)).unwrap_err();
    assert!(
        e.contains("log_format.text_format_source") && e.contains("inline_string"),
        "{e}"
    );
}

// ---- envoy.access_loggers.http_grpc / tcp_grpc: Envoy's gRPC access-log service ----

use weft_xds_api::pb::envoy::extensions::access_loggers::grpc::v3 as als;
use weft_xds_api::pb::envoy::extensions::filters::http::router::v3 as router;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

const HTTP_GRPC: &str = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig";
const TCP_GRPC: &str = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig";

fn common(log_name: &str, cluster: &str) -> als::CommonGrpcAccessLogConfig {
    als::CommonGrpcAccessLogConfig {
        log_name: log_name.into(),
        grpc_service: Some(core::GrpcService {
            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                core::grpc_service::EnvoyGrpc {
                    cluster_name: cluster.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        transport_api_version: 2,
        ..Default::default()
    }
}

fn entry(a: Any) -> al::AccessLog {
    al::AccessLog {
        name: "envoy.access_loggers.x".into(),
        config_type: Some(al::access_log::ConfigType::TypedConfig(a)),
        ..Default::default()
    }
}

/// An HCM listener with an inline route and the given access loggers, validated.
fn hcm_model(logs: Vec<al::AccessLog>) -> Result<Config, String> {
    use weft_xds_api::pb::envoy::config::route::v3 as rt;
    let h = hcm::HttpConnectionManager {
        stat_prefix: "web".into(),
        access_log: logs,
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                type_url::ROUTER,
                &router::Router::default(),
            ))),
            ..Default::default()
        }],
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rt::RouteConfiguration {
                name: "r".into(),
                virtual_hosts: vec![rt::VirtualHost {
                    name: "all".into(),
                    domains: vec!["*".into()],
                    routes: vec![rt::Route {
                        r#match: Some(rt::RouteMatch {
                            path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(rt::route::Action::Route(rt::RouteAction {
                            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster("app".into())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut l = tcp_listener(Any::default());
    l.filter_chains[0].filters[0] = ls::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
    };
    let l = convert::listener(&l).map_err(|e| e.lines().join("; "))?.unwrap();
    let raw = RawConfig {
        listeners: vec![l.raw],
        ..Default::default()
    };
    let opts = ValidateOptions {
        allow_unknown_clusters: true,
        allow_empty_clusters: true,
        allow_empty_route_configs: true,
    };
    validate_with(raw, opts).map_err(|e| e.to_string())
}

#[test]
fn http_grpc_beside_a_file_log_becomes_a_grpc_access_log() {
    let mut c = common("istio-als", "als-collector");
    c.buffer_flush_interval = Some(PbDuration {
        seconds: 0,
        nanos: 200_000_000,
    });
    c.buffer_size_bytes = Some(UInt32Value { value: 4096 });
    c.filter_state_objects_to_log = vec!["wasm.upstream_peer".into()];
    let g = als::HttpGrpcAccessLogConfig {
        common_config: Some(c),
        additional_request_headers_to_log: vec!["X-User".into()],
        additional_response_headers_to_log: vec!["x-cache".into()],
        ..Default::default()
    };
    let file = stream::StdoutAccessLog::default();
    let cfg = hcm_model(vec![entry(pack(STDOUT, &file)), entry(pack(HTTP_GRPC, &g))]).unwrap();
    let NetworkFilter::Http(h) = &cfg.listeners[0].filter_chains[0].filter else {
        panic!()
    };
    assert_eq!(h.access_log.as_ref().unwrap().sink, LogSink::Stdout);
    let a = h.grpc_access_log.as_ref().expect("the gRPC log");
    assert_eq!(a.cluster, "als-collector");
    assert_eq!(a.log_name, "istio-als");
    assert_eq!(a.buffer_flush_interval, std::time::Duration::from_millis(200));
    assert_eq!(a.buffer_size_bytes, 4096);
    assert_eq!(a.additional_request_headers_to_log, ["x-user"]);
    assert_eq!(a.additional_response_headers_to_log, ["x-cache"]);
}

#[test]
fn tcp_grpc_on_a_tcp_proxy_with_envoys_defaults() {
    let g = als::TcpGrpcAccessLogConfig {
        common_config: Some(common("tcp-als", "als-collector")),
    };
    let c = model(pack(TCP_GRPC, &g)).unwrap();
    let NetworkFilter::TcpProxy(t) = &c.listeners[0].filter_chains[0].filter else {
        panic!()
    };
    assert!(t.access_log.is_none());
    let a = t.grpc_access_log.as_ref().unwrap();
    assert_eq!((a.cluster.as_str(), a.log_name.as_str()), ("als-collector", "tcp-als"));
    assert_eq!(
        (a.buffer_flush_interval, a.buffer_size_bytes),
        (std::time::Duration::from_secs(1), 16384)
    );
}

#[test]
fn bad_grpc_loggers_are_refused_with_the_field_named() {
    let p = "filter_chains[0].filters[0].typed_config.access_log[0].typed_config";
    let tcp = |c: Option<als::CommonGrpcAccessLogConfig>| {
        model(pack(TCP_GRPC, &als::TcpGrpcAccessLogConfig { common_config: c })).unwrap_err()
    };
    let mut google = common("x", "c");
    google.grpc_service.as_mut().unwrap().target_specifier =
        Some(core::grpc_service::TargetSpecifier::GoogleGrpc(Default::default()));
    let mut v2 = common("x", "c");
    v2.transport_api_version = 1;
    let mut zero = common("x", "c");
    zero.buffer_flush_interval = Some(PbDuration::default());
    let mut tags = common("x", "c");
    tags.custom_tags = vec![Default::default()];
    let mut no_service = common("x", "c");
    no_service.grpc_service = None;
    let cases = [
        (tcp(None), format!("{p}.common_config: is required")),
        (
            tcp(Some(common("", "c"))),
            format!("{p}.common_config.log_name: must not be empty (min_len: 1)"),
        ),
        (
            tcp(Some(common("x", ""))),
            format!("{p}.common_config.grpc_service.envoy_grpc.cluster_name: must not be empty"),
        ),
        (
            tcp(Some(no_service)),
            format!("{p}.common_config.grpc_service: is required"),
        ),
        (
            tcp(Some(google)),
            format!("{p}.common_config.grpc_service.google_grpc: unsupported; use envoy_grpc"),
        ),
        (
            tcp(Some(v2)),
            format!("{p}.common_config.transport_api_version: V2 is not supported"),
        ),
        (
            tcp(Some(zero)),
            format!("{p}.common_config.buffer_flush_interval: must be greater than 0s"),
        ),
        (tcp(Some(tags)), format!("{p}.common_config.custom_tags: unsupported")),
        (
            model(pack(
                HTTP_GRPC,
                &als::HttpGrpcAccessLogConfig {
                    common_config: Some(common("x", "c")),
                    ..Default::default()
                },
            ))
            .unwrap_err(),
            format!("{p}: envoy.access_loggers.http_grpc logs HTTP requests; use envoy.access_loggers.tcp_grpc"),
        ),
    ];
    for (e, want) in cases {
        assert!(e.contains(&want), "wanted {want:?} in\n{e}");
    }
    // HTTP: trailers, a tcp_grpc on a connection manager, two gRPC logs, a bad header name.
    let g = |headers: Vec<String>, trailers: Vec<String>| {
        entry(pack(
            HTTP_GRPC,
            &als::HttpGrpcAccessLogConfig {
                common_config: Some(common("x", "c")),
                additional_request_headers_to_log: headers,
                additional_response_trailers_to_log: trailers,
                ..Default::default()
            },
        ))
    };
    let e = hcm_model(vec![g(vec![], vec!["grpc-status".into()])]).unwrap_err();
    assert!(
        e.contains("access_log[0].typed_config.additional_response_trailers_to_log: unsupported"),
        "{e}"
    );
    let t = entry(pack(
        TCP_GRPC,
        &als::TcpGrpcAccessLogConfig {
            common_config: Some(common("x", "c")),
        },
    ));
    let e = hcm_model(vec![t]).unwrap_err();
    assert!(
        e.contains("access_log[0].typed_config: envoy.access_loggers.tcp_grpc logs TCP sessions"),
        "{e}"
    );
    let e = hcm_model(vec![g(vec![], vec![]), g(vec![], vec![])]).unwrap_err();
    assert!(
        e.contains("access_log[1]: weft supports one file/stdout access log and one gRPC access log per filter"),
        "{e}"
    );
    let e = hcm_model(vec![g(vec!["bad header".into()], vec![])]).unwrap_err();
    assert!(
        e.contains(
            "access_log[0].grpc.additional_request_headers_to_log[0]: \"bad header\" is not a valid header name"
        ),
        "{e}"
    );
}
