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
        .map_err(|e| e.join("; "))?
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
        e.contains("access_log.format") && e.contains("unknown operator %NOT_AN_OPERATOR%"),
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
