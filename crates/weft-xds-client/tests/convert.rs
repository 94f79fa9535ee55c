//! Field coverage of the Envoy → weft mapping (docs/xds.md): full resources in, the validated weft
//! model out, plus the error paths NACKs carry.

use std::collections::HashMap;
use std::time::Duration;
use weft_config::raw::{self, RawConfig, RawNode};
use weft_config::*;
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::common::fault::v3 as cfault;
use weft_xds_api::pb::envoy::extensions::filters::http::fault::v3 as fault;
use weft_xds_api::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::envoy::r#type::v3 as typ;
use weft_xds_api::pb::google::protobuf::{
    value::Kind, BoolValue, Duration as PbDuration, Struct, UInt32Value, UInt64Value, Value,
};
use weft_xds_api::{pack, type_url};
use weft_xds_client::convert;

fn d(ms: i64) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn sock(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn pct(n: u32) -> Option<typ::FractionalPercent> {
    Some(typ::FractionalPercent {
        numerator: n,
        denominator: 0,
    })
}

fn strings(kv: &[(&str, &str)]) -> Struct {
    Struct {
        fields: kv
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

fn full_cluster() -> cl::Cluster {
    use weft_xds_api::pb::envoy::extensions::upstreams::http::v3 as up;
    let h2 = up::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: d(30_000),
            ..Default::default()
        }),
        upstream_protocol_options: Some(up::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            up::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    up::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Default::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    cl::Cluster {
        name: "reviews".into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: None,
            service_name: "reviews-eds".into(),
        }),
        connect_timeout: d(250),
        lb_policy: cl::cluster::LbPolicy::RingHash as i32,
        lb_config: Some(cl::cluster::LbConfig::RingHashLbConfig(cl::cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 2048 }),
            maximum_ring_size: Some(UInt64Value { value: 4096 }),
            ..Default::default()
        })),
        circuit_breakers: Some(cl::CircuitBreakers {
            thresholds: vec![
                cl::circuit_breakers::Thresholds {
                    priority: 0,
                    max_connections: u32v(10),
                    max_pending_requests: u32v(11),
                    max_requests: u32v(12),
                    max_retries: u32v(2),
                    retry_budget: Some(cl::circuit_breakers::thresholds::RetryBudget {
                        budget_percent: Some(typ::Percent { value: 25.0 }),
                        min_retry_concurrency: u32v(4),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                cl::circuit_breakers::Thresholds {
                    priority: 1,
                    max_requests: u32v(99),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        outlier_detection: Some(cl::OutlierDetection {
            consecutive_5xx: u32v(3),
            interval: d(1000),
            base_ejection_time: d(5000),
            max_ejection_percent: u32v(50),
            ..Default::default()
        }),
        health_checks: vec![core::HealthCheck {
            timeout: d(500),
            interval: d(2000),
            healthy_threshold: u32v(2),
            unhealthy_threshold: u32v(3),
            health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
                core::health_check::HttpHealthCheck {
                    path: "/healthz".into(),
                    host: "reviews".into(),
                    expected_statuses: vec![typ::Int64Range { start: 200, end: 300 }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        common_lb_config: Some(cl::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(typ::Percent { value: 40.0 }),
            locality_config_specifier: Some(
                cl::cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(Default::default()),
            ),
            ..Default::default()
        }),
        lb_subset_config: Some(cl::cluster::LbSubsetConfig {
            fallback_policy: 2,
            default_subset: Some(strings(&[("version", "v1")])),
            ..Default::default()
        }),
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack(type_url::HTTP_PROTOCOL_OPTIONS, &h2),
        )]),
        ..Default::default()
    }
}

fn full_cla() -> ep::ClusterLoadAssignment {
    let lbe = |ip: &str, w: u32, health: i32, labels: &[(&str, &str)]| ep::LbEndpoint {
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: sock(ip, 9080),
            ..Default::default()
        })),
        load_balancing_weight: u32v(w),
        health_status: health,
        metadata: Some(core::Metadata {
            filter_metadata: HashMap::from([("envoy.lb".to_string(), strings(labels))]),
            ..Default::default()
        }),
    };
    ep::ClusterLoadAssignment {
        cluster_name: "reviews-eds".into(),
        endpoints: vec![
            ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "eu".into(),
                    zone: "eu-1".into(),
                    sub_zone: "rack-a".into(),
                }),
                load_balancing_weight: u32v(1),
                priority: 0,
                lb_endpoints: vec![
                    lbe("10.0.0.1", 3, 1, &[("version", "v1")]),
                    // UNHEALTHY and DRAINING endpoints take no traffic in Envoy: left out.
                    lbe("10.0.0.2", 1, 2, &[]),
                    lbe("10.0.0.3", 1, 3, &[]),
                ],
                ..Default::default()
            },
            ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "us".into(),
                    zone: "us-1".into(),
                    sub_zone: String::new(),
                }),
                load_balancing_weight: u32v(1),
                priority: 1,
                lb_endpoints: vec![lbe("10.0.1.1", 1, 0, &[("version", "v2")])],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// A generating cookie hash policy: ttl 1h, path `/`, attributes `SameSite=Lax` and `Secure`.
fn cookie_policy() -> rt::route_action::hash_policy::Cookie {
    rt::route_action::hash_policy::Cookie {
        name: "sticky".into(),
        ttl: d(3_600_000),
        path: "/".into(),
        attributes: vec![
            rt::route_action::hash_policy::CookieAttribute {
                name: "SameSite".into(),
                value: "Lax".into(),
            },
            rt::route_action::hash_policy::CookieAttribute {
                name: "Secure".into(),
                value: String::new(),
            },
        ],
    }
}

fn full_routes() -> rt::RouteConfiguration {
    use rt::header_matcher::HeaderMatchSpecifier as H;
    let fault_cfg = fault::HttpFault {
        delay: Some(cfault::FaultDelay {
            percentage: pct(10),
            fault_delay_secifier: Some(cfault::fault_delay::FaultDelaySecifier::FixedDelay(PbDuration {
                seconds: 0,
                nanos: 200_000_000,
            })),
        }),
        abort: Some(fault::FaultAbort {
            percentage: pct(5),
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
        headers: vec![rt::HeaderMatcher {
            name: "x-fault".into(),
            header_match_specifier: Some(H::PresentMatch(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let rl_cfg = lrl::LocalRateLimit {
        stat_prefix: "rl".into(),
        token_bucket: Some(typ::TokenBucket {
            max_tokens: 10,
            tokens_per_fill: u32v(5),
            fill_interval: d(1000),
        }),
        descriptors: vec![
            weft_xds_api::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor {
                entries: vec![
                    weft_xds_api::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
                        key: "user".into(),
                        value: String::new(),
                    },
                ],
                token_bucket: None,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let main = rt::Route {
        name: "main".into(),
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/api/".into())),
            case_sensitive: Some(BoolValue { value: false }),
            headers: vec![
                rt::HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(H::StringMatch(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("GET".into())),
                        ignore_case: false,
                    })),
                    ..Default::default()
                },
                rt::HeaderMatcher {
                    name: "x-env".into(),
                    invert_match: true,
                    header_match_specifier: Some(H::StringMatch(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Suffix(".prod".into())),
                        ignore_case: false,
                    })),
                    ..Default::default()
                },
            ],
            query_parameters: vec![rt::QueryParameterMatcher {
                name: "debug".into(),
                query_parameter_match_specifier: Some(
                    rt::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
                ),
            }],
            ..Default::default()
        }),
        typed_per_filter_config: HashMap::from([
            (
                "envoy.filters.http.fault".to_string(),
                pack(type_url::FAULT, &fault_cfg),
            ),
            (
                "envoy.filters.http.local_ratelimit".to_string(),
                pack(type_url::LOCAL_RATE_LIMIT, &rl_cfg),
            ),
        ]),
        request_headers_to_add: vec![core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: "x-route".into(),
                value: "main".into(),
                ..Default::default()
            }),
            append_action: 2,
            ..Default::default()
        }],
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::WeightedClusters(
                rt::WeightedCluster {
                    clusters: vec![
                        rt::weighted_cluster::ClusterWeight {
                            name: "reviews".into(),
                            weight: u32v(90),
                            ..Default::default()
                        },
                        rt::weighted_cluster::ClusterWeight {
                            name: "reviews-v2".into(),
                            weight: u32v(10),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            )),
            timeout: d(3000),
            max_stream_duration: Some(rt::route_action::MaxStreamDuration {
                grpc_timeout_header_max: d(2000),
                ..Default::default()
            }),
            prefix_rewrite: "/".into(),
            host_rewrite_specifier: Some(rt::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "reviews.internal".into(),
            )),
            retry_policy: Some(rt::RetryPolicy {
                retry_on: "5xx,connect-failure,retriable-status-codes".into(),
                num_retries: u32v(2),
                per_try_timeout: d(500),
                retriable_status_codes: vec![409],
                retry_back_off: Some(rt::retry_policy::RetryBackOff {
                    base_interval: d(10),
                    max_interval: d(100),
                }),
                ..Default::default()
            }),
            hash_policy: vec![
                rt::route_action::HashPolicy {
                    terminal: true,
                    policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::Header(
                        rt::route_action::hash_policy::Header {
                            header_name: "x-user".into(),
                            ..Default::default()
                        },
                    )),
                },
                rt::route_action::HashPolicy {
                    terminal: false,
                    policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                        rt::route_action::hash_policy::ConnectionProperties { source_ip: true },
                    )),
                },
                rt::route_action::HashPolicy {
                    terminal: false,
                    policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::Cookie(cookie_policy())),
                },
            ],
            request_mirror_policies: vec![rt::route_action::RequestMirrorPolicy {
                cluster: "shadow".into(),
                runtime_fraction: Some(core::RuntimeFractionalPercent {
                    default_value: pct(50),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            }],
            rate_limits: vec![rt::RateLimit {
                actions: vec![rt::rate_limit::Action {
                    action_specifier: Some(rt::rate_limit::action::ActionSpecifier::RequestHeaders(
                        rt::rate_limit::action::RequestHeaders {
                            header_name: "x-user".into(),
                            descriptor_key: "user".into(),
                            skip_if_absent: false,
                        },
                    )),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let redirect = rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::Path("/old".into())),
            ..Default::default()
        }),
        action: Some(rt::route::Action::Redirect(rt::RedirectAction {
            host_redirect: "new.example.com".into(),
            response_code: 4,
            scheme_rewrite_specifier: Some(rt::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)),
            path_rewrite_specifier: Some(rt::redirect_action::PathRewriteSpecifier::PathRedirect("/new".into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let direct = rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::SafeRegex(matcher::RegexMatcher {
                regex: "/health[a-z]*".into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        action: Some(rt::route::Action::DirectResponse(rt::DirectResponseAction {
            status: 200,
            body: Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString("ok".into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    rt::RouteConfiguration {
        name: "outbound".into(),
        response_headers_to_remove: vec!["x-powered-by".into()],
        virtual_hosts: vec![rt::VirtualHost {
            name: "reviews".into(),
            domains: vec!["reviews".into(), "reviews:9080".into()],
            routes: vec![main, redirect, direct],
            retry_policy: Some(rt::RetryPolicy {
                retry_on: "reset".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn full_listener() -> ls::Listener {
    use weft_xds_api::pb::envoy::config::accesslog::v3 as al;
    use weft_xds_api::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    let log = al::AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(al::access_log::ConfigType::TypedConfig(pack(
            type_url::FILE_ACCESS_LOG,
            &FileAccessLog {
                path: "/dev/stdout".into(),
                ..Default::default()
            },
        ))),
        ..Default::default()
    };
    let filter = |name: &str, url: &str, value: Vec<u8>, optional: bool| hcm::HttpFilter {
        name: name.into(),
        is_optional: optional,
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
            weft_xds_api::pb::google::protobuf::Any {
                type_url: url.into(),
                value,
            },
        )),
        ..Default::default()
    };
    use weft_xds_api::prost::Message;
    let h = hcm::HttpConnectionManager {
        stat_prefix: "ingress".into(),
        codec_type: 2,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(full_routes())),
        stream_idle_timeout: d(300_000),
        request_headers_timeout: d(10_000),
        max_request_headers_kb: u32v(64),
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: 1,
        generate_request_id: Some(BoolValue { value: false }),
        via: "weft".into(),
        server_name: "weft".into(),
        access_log: vec![log],
        http_filters: vec![
            filter(
                "envoy.filters.http.fault",
                type_url::FAULT,
                fault::HttpFault::default().encode_to_vec(),
                true,
            ),
            filter(
                "envoy.filters.http.local_ratelimit",
                type_url::LOCAL_RATE_LIMIT,
                lrl::LocalRateLimit {
                    stat_prefix: "all".into(),
                    token_bucket: Some(typ::TokenBucket {
                        max_tokens: 100,
                        tokens_per_fill: u32v(100),
                        fill_interval: d(1000),
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
                true,
            ),
            filter("envoy.filters.http.router", type_url::ROUTER, vec![], false),
        ],
        ..Default::default()
    };
    ls::Listener {
        name: "ingress".into(),
        address: sock("127.0.0.1", 0),
        filter_chains: vec![ls::FilterChain {
            filter_chain_match: Some(ls::FilterChainMatch {
                destination_port: u32v(8080),
                source_prefix_ranges: vec![core::CidrRange {
                    address_prefix: "10.0.0.0".into(),
                    prefix_len: u32v(8),
                }],
                ..Default::default()
            }),
            filters: vec![ls::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_listener() -> ls::Listener {
    let t = tcp::TcpProxy {
        stat_prefix: "db".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        idle_timeout: d(3_600_000),
        ..Default::default()
    };
    ls::Listener {
        name: "db".into(),
        address: sock("::1", 0),
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

/// Converts and validates through weft-config exactly as the client does.
fn model() -> Config {
    let mut c = convert::cluster(&full_cluster(), true).unwrap();
    assert_eq!(c.eds.as_deref(), Some("reviews-eds"));
    assert!(!c.locality_weighted);
    c.raw.endpoints = convert::load_assignment(&full_cla()).unwrap().plain;
    let l = convert::listener(&full_listener()).unwrap().unwrap();
    let t = convert::listener(&tcp_listener()).unwrap().unwrap();
    let raw = RawConfig {
        node: RawNode {
            zone: Some("eu-1".into()),
            ..Default::default()
        },
        listeners: vec![l.raw, t.raw],
        clusters: vec![c.raw],
        ..Default::default()
    };
    validate_with(
        raw,
        ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn cluster_and_endpoints_map_onto_the_model() {
    let cfg = model();
    let c = &cfg.clusters[0];
    assert_eq!(c.name, "reviews");
    assert_eq!(c.discovery, Discovery::Static);
    assert_eq!(
        c.lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 2048,
            max_ring_size: 4096
        }
    );
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.pool.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.circuit_breakers.max_connections, 10);
    assert_eq!(c.circuit_breakers.max_pending_requests, 11);
    assert_eq!(c.circuit_breakers.max_requests, 12);
    assert_eq!(c.circuit_breakers.max_retries, 2);
    assert_eq!(c.circuit_breakers.high_priority.as_ref().unwrap().max_requests, 99);
    let rb = c.retry_budget.as_ref().unwrap();
    assert_eq!((rb.budget_percent, rb.min_retry_concurrency), (25.0, 4));
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx, 3);
    assert_eq!(od.base_ejection_time, Duration::from_secs(5));
    assert_eq!(od.max_ejection_percent, 50);
    let hc = &c.health_checks[0];
    assert_eq!(
        (hc.interval, hc.timeout),
        (Duration::from_secs(2), Duration::from_millis(500))
    );
    assert_eq!(
        hc.kind,
        HealthCheckKind::Http {
            path: "/healthz".into(),
            host: Some("reviews".into()),
            expected_statuses: vec![(200, 299)],
        }
    );
    assert_eq!(c.healthy_panic_threshold, 40.0);
    assert!(c.locality_aware);
    let s = c.subsets.as_ref().unwrap();
    assert_eq!(s.fallback_policy, SubsetFallback::DefaultSubset);
    assert_eq!(s.default_subset.get("version").map(String::as_str), Some("v1"));

    // Endpoints: unhealthy / draining left out, locality, priority, weight and labels kept.
    assert_eq!(c.endpoints.len(), 2, "{:?}", c.endpoints);
    let e = &c.endpoints[0];
    assert_eq!(e.address.to_string(), "10.0.0.1:9080");
    assert_eq!((e.weight, e.priority), (3, 0));
    assert_eq!(
        e.locality,
        Locality {
            region: "eu".into(),
            zone: "eu-1".into(),
            sub_zone: "rack-a".into()
        }
    );
    assert_eq!(e.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(c.endpoints[1].priority, 1);
}

#[test]
fn listener_and_routes_map_onto_the_model() {
    let cfg = model();
    let l = &cfg.listeners[0];
    assert_eq!(l.address.to_string(), "127.0.0.1:0");
    let fc = &l.filter_chains[0];
    assert_eq!(fc.match_.destination_port, Some(8080));
    assert_eq!(fc.match_.source_prefixes[0].prefix_len, 8);
    let NetworkFilter::Http(h) = &fc.filter else { panic!() };
    assert_eq!(h.stat_prefix, "ingress");
    assert_eq!(h.codec, Codec::Http2);
    // stream_idle_timeout maps onto its own field; the connection idle timeout keeps its default.
    assert_eq!(h.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(h.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(h.request_headers_timeout, Some(Duration::from_secs(10)));
    assert_eq!(h.max_request_headers_kb, 64);
    assert!(h.use_remote_address);
    assert_eq!(h.xff_num_trusted_hops, 1);
    assert!(!h.generate_request_id);
    assert_eq!(h.via.as_deref(), Some("weft"));
    assert_eq!(h.server_name.as_deref(), Some("weft"));
    assert_eq!(h.access_log.as_ref().unwrap().sink, LogSink::Stdout);
    assert_eq!(h.local_rate_limit.as_ref().unwrap().max_tokens, 100);
    assert!(h.rate_limit_service.is_none());

    let rc = &h.route_config;
    assert_eq!(rc.name, "outbound");
    assert_eq!(rc.headers.response_remove, vec!["x-powered-by".to_string()]);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains[1], DomainMatch::Exact("reviews:9080".into()));
    assert!(vh.retry_policy.as_ref().unwrap().retry_on.reset);
    let r = &vh.routes[0];
    assert_eq!(r.match_.path, PathMatch::Prefix("/api/".into()));
    assert!(!r.match_.case_sensitive);
    assert_eq!(r.match_.methods, vec!["GET".to_string()]);
    assert_eq!(r.match_.headers[0].name, "x-env");
    assert!(r.match_.headers[0].invert);
    assert!(matches!(&r.match_.headers[0].rule, StringRule::Regex(re) if re == r".*\.prod"));
    assert_eq!(r.match_.query_parameters[0].rule, StringRule::Present(true));
    assert_eq!(r.headers.request_add[0].action, HeaderAppendAction::Overwrite);
    let RouteAction::Forward(f) = &r.action else { panic!() };
    assert_eq!(f.clusters.iter().map(|c| c.weight).collect::<Vec<_>>(), vec![90, 10]);
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    // grpc_timeout_header_max: a gRPC request's deadline replaces the timeout, capped at 2s.
    assert_eq!(f.max_grpc_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        f.effective_timeout(Some(Duration::from_secs(5))),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        f.effective_timeout(Some(Duration::from_millis(100))),
        Some(Duration::from_millis(100))
    );
    assert_eq!(f.effective_timeout(None), Some(Duration::from_secs(3)));
    assert_eq!(f.prefix_rewrite.as_deref(), Some("/"));
    assert_eq!(f.host_rewrite.as_deref(), Some("reviews.internal"));
    let rp = f.retry_policy.as_ref().unwrap();
    assert!(rp.retry_on.five_xx && rp.retry_on.connect_failure && rp.retry_on.retriable_status_codes);
    assert_eq!(rp.num_retries, 2);
    assert_eq!(rp.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(rp.retriable_status_codes, vec![409]);
    assert_eq!(
        (rp.backoff_base, rp.backoff_max),
        (Duration::from_millis(10), Duration::from_millis(100))
    );
    assert_eq!(
        f.hash_policy,
        vec![
            HashPolicy::Header {
                name: http::HeaderName::from_static("x-user"),
                terminal: true
            },
            HashPolicy::SourceIp { terminal: false },
            HashPolicy::Cookie {
                name: "sticky".into(),
                terminal: false,
                generate: Some(Box::new(CookieGen {
                    ttl: Duration::from_secs(3600),
                    path: Some("/".into()),
                    attributes: vec![
                        CookieAttribute {
                            name: "SameSite".into(),
                            value: Some("Lax".into())
                        },
                        CookieAttribute {
                            name: "Secure".into(),
                            value: None
                        },
                    ],
                })),
            },
        ]
    );
    assert_eq!(f.request_mirror_policies[0].cluster, "shadow");
    assert_eq!(f.request_mirror_policies[0].percent, 50.0);
    let fp = f.fault.as_ref().unwrap();
    assert_eq!(fp.delay.as_ref().unwrap().fixed, Duration::from_millis(200));
    assert_eq!(fp.delay.as_ref().unwrap().percent, 10.0);
    assert_eq!(fp.abort.as_ref().unwrap().status, AbortStatus::Http(503));
    assert_eq!(fp.abort.as_ref().unwrap().percent, 5.0);
    assert_eq!(fp.headers[0].name, "x-fault");
    let lr = f.local_rate_limit.as_ref().unwrap();
    assert_eq!((lr.max_tokens, lr.tokens_per_fill), (10, 5));
    assert_eq!(lr.descriptor_header.as_deref(), Some("x-user"));
    // No rate limit service on this connection manager: route descriptors are dropped, as Envoy
    // ignores them.
    assert!(f.rate_limits.is_empty());

    let RouteAction::Redirect(rd) = &vh.routes[1].action else {
        panic!()
    };
    assert_eq!(
        (rd.scheme.as_deref(), rd.host.as_deref(), rd.path.as_deref(), rd.status),
        (Some("https"), Some("new.example.com"), Some("/new"), 308)
    );
    let RouteAction::DirectResponse(dr) = &vh.routes[2].action else {
        panic!()
    };
    assert_eq!((dr.status, dr.body.as_str()), (200, "ok"));
    assert_eq!(vh.routes[2].match_.path, PathMatch::Regex("/health[a-z]*".into()));

    let NetworkFilter::TcpProxy(t) = &cfg.listeners[1].filter_chains[0].filter else {
        panic!()
    };
    assert_eq!(cfg.listeners[1].address.to_string(), "[::1]:0");
    assert_eq!(
        (t.cluster.as_str(), t.idle_timeout),
        ("db", Some(Duration::from_secs(3600)))
    );
}

#[test]
fn unsupported_fields_are_refused_with_envoy_paths() {
    let mut c = full_cluster();
    c.lb_policy = 7;
    let e = convert::cluster(&c, true).unwrap_err().lines();
    assert!(e.contains(&"lb_policy: unsupported value 7".to_string()), "{e:?}");

    let mut c = full_cluster();
    c.transport_socket = Some(Default::default());
    let e = convert::cluster(&c, true).unwrap_err().lines();
    assert!(e[0].starts_with("transport_socket: "), "{e:?}");

    let mut l = full_listener();
    l.filter_chains[0].filters[0].name = "x".into();
    l.filter_chains[0].filters[0].config_type = None;
    let e = convert::listener(&l).unwrap_err().lines();
    assert_eq!(
        e,
        vec!["filter_chains[0].filters[0]: unknown filter \"x\" (not optional)".to_string()]
    );

    let mut l = full_listener();
    l.filter_chains[0].filter_chain_match.as_mut().unwrap().server_names = vec!["a".into()];
    let e = convert::listener(&l).unwrap_err().lines();
    assert_eq!(
        e,
        vec!["filter_chains[0].filter_chain_match.server_names: unsupported without a TLS transport_socket (weft chooses only a certificate by SNI)".to_string()]
    );

    let mut rc = full_routes();
    if let Some(rt::route::Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        a.cluster_specifier = Some(rt::route_action::ClusterSpecifier::ClusterHeader("x".into()));
    }
    let e = convert::route_config(&rc).unwrap_err().lines();
    assert!(
        e[0].starts_with("virtual_hosts[0].routes[0].route.cluster_specifier: "),
        "{e:?}"
    );

    // An API listener (proxyless gRPC) has no socket: ignored, not refused.
    let api = ls::Listener {
        name: "reviews".into(),
        api_listener: Some(Default::default()),
        ..Default::default()
    };
    assert!(convert::listener(&api).unwrap().is_none());
}

/// The weft model of a route configuration alone (as RDS delivers it), or the refusal.
fn route_model(rc: &rt::RouteConfiguration) -> Result<Config, String> {
    let raw_rc = convert::route_config(rc).map_err(|e| e.lines().join("; "))?;
    let raw = RawConfig {
        listeners: vec![weft_config::raw::RawListener {
            name: Some("web".into()),
            address: Some("127.0.0.1:0".into()),
            http: Some(weft_config::raw::RawHttp {
                route_config: Some(raw_rc),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let opts = ValidateOptions {
        allow_unknown_clusters: true,
        allow_empty_clusters: true,
        allow_empty_route_configs: true,
    };
    validate_with(raw, opts).map_err(|e| e.to_string())
}

/// One route to cluster `c` hashing on cookie `c`.
fn cookie_routes(c: rt::route_action::hash_policy::Cookie) -> rt::RouteConfiguration {
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
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster("c".into())),
                    hash_policy: vec![rt::route_action::HashPolicy {
                        terminal: false,
                        policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::Cookie(c)),
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn cookie_hash_policy_path_and_attributes_need_a_ttl() {
    // Without ttl Envoy generates nothing, so path / attributes would be dropped: refused instead.
    type Edit = fn(&mut rt::route_action::hash_policy::Cookie);
    let edits: [(&str, Edit); 3] = [
        ("path", |c| c.ttl = None),
        ("attributes", |c| {
            c.ttl = None;
            c.path = String::new();
        }),
        ("attributes[0].name", |c| c.attributes[0].name = "Same Site".into()),
    ];
    for (field, edit) in edits {
        let mut c = cookie_policy();
        edit(&mut c);
        let e = route_model(&cookie_routes(c)).unwrap_err();
        assert!(e.contains(&format!("hash_policy[0].cookie.{field}")), "{field}: {e}");
    }
    // Without ttl, path and attributes: a cookie that is only read.
    let read_only = rt::route_action::hash_policy::Cookie {
        name: "sticky".into(),
        ..Default::default()
    };
    let m = route_model(&cookie_routes(read_only)).unwrap_or_else(|e| panic!("{e}"));
    let NetworkFilter::Http(h) = &m.listeners[0].filter_chains[0].filter else {
        panic!()
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert!(matches!(&f.hash_policy[0], HashPolicy::Cookie { generate: None, name, .. } if name == "sticky"));
    // ttl 0: generated as a session cookie.
    let session = rt::route_action::hash_policy::Cookie {
        name: "sticky".into(),
        ttl: d(0),
        ..Default::default()
    };
    let m = route_model(&cookie_routes(session)).unwrap_or_else(|e| panic!("{e}"));
    let NetworkFilter::Http(h) = &m.listeners[0].filter_chains[0].filter else {
        panic!()
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    let HashPolicy::Cookie { generate: Some(g), .. } = &f.hash_policy[0] else {
        panic!("{:?}", f.hash_policy)
    };
    assert_eq!(g.ttl, Duration::ZERO);
}

#[test]
fn locality_weights_become_endpoint_weights_with_locality_weighted_lb() {
    let mut c = full_cluster();
    c.common_lb_config.as_mut().unwrap().locality_config_specifier =
        Some(cl::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(Default::default()));
    let x = convert::cluster(&c, true).unwrap();
    assert!(x.locality_weighted);
    assert_eq!(x.raw.locality_aware, None, "locality weighting is not zone preference");
    let ep = |ip: &str| ep::LbEndpoint {
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: sock(ip, 80),
            ..Default::default()
        })),
        ..Default::default()
    };
    let la = ep::ClusterLoadAssignment {
        cluster_name: "x".into(),
        endpoints: vec![
            ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    zone: "a".into(),
                    ..Default::default()
                }),
                load_balancing_weight: u32v(1),
                lb_endpoints: vec![ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")],
                ..Default::default()
            },
            ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    zone: "b".into(),
                    ..Default::default()
                }),
                load_balancing_weight: u32v(1),
                lb_endpoints: vec![ep("10.0.1.1")],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let e = convert::load_assignment(&la).unwrap();
    // Without locality weighting: 4 equal endpoints (zone a gets 3/4 of the traffic).
    assert!(e.plain.iter().all(|x| x.weight == Some(1)));
    // With it: each zone gets half.
    let w: Vec<_> = e.locality_weighted.iter().map(|x| x.weight.unwrap()).collect();
    assert_eq!(w, vec![1667, 1667, 1667, 5000]);
}

#[test]
fn connection_limit_filter_is_the_listener_connection_limit() {
    use weft_xds_api::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
    let mut l = full_listener();
    let limit = |n: u64| ls::Filter {
        name: "envoy.filters.network.connection_limit".into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pack(
            convert::CONNECTION_LIMIT_URL,
            &ConnectionLimit {
                stat_prefix: "cl".into(),
                max_connections: Some(UInt64Value { value: n }),
                ..Default::default()
            },
        ))),
    };
    l.filter_chains[0].filters.insert(0, limit(500));
    let x = convert::listener(&l).unwrap().unwrap();
    assert_eq!(x.raw.max_connections, Some(500));

    // Anything else before the terminal filter is refused, with its index.
    let mut l = full_listener();
    let mut other = limit(1);
    other.config_type = None;
    other.name = "envoy.filters.network.ext_authz".into();
    l.filter_chains[0].filters.insert(0, other);
    let e = convert::listener(&l).unwrap_err().lines();
    assert!(
        e[0].starts_with("filter_chains[0].filters[0]: unknown filter \"envoy.filters.network.ext_authz\""),
        "{e:?}"
    );
}

/// The Envoy API's own validation rules (protoc-gen-validate annotations) are applied before the
/// conversion, as Envoy does, each violation named by its Envoy path.
#[test]
fn api_validation_rules_are_applied_with_envoy_paths() {
    use weft_xds_api::prost::Message;
    let with_hcm = |f: &dyn Fn(&mut hcm::HttpConnectionManager)| {
        let mut l = full_listener();
        let Some(ls::filter::ConfigType::TypedConfig(any)) = &mut l.filter_chains[0].filters[0].config_type else {
            panic!("the first filter has a typed config");
        };
        let mut h = hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        f(&mut h);
        any.value = h.encode_to_vec();
        convert::listener(&l).unwrap_err().lines()
    };
    let p = "filter_chains[0].filters[0].typed_config";
    assert_eq!(
        with_hcm(&|h| h.stat_prefix.clear()),
        vec![format!("{p}.stat_prefix: must not be empty (min_len: 1)")]
    );
    assert_eq!(
        with_hcm(&|h| h.codec_type = 9),
        vec![format!("{p}.codec_type: undefined enum value 9 (defined_only)")]
    );
    assert_eq!(
        with_hcm(&|h| h.max_request_headers_kb = u32v(0)),
        vec![format!("{p}.max_request_headers_kb: 0 is out of range [1, 8192]")]
    );
    assert_eq!(
        with_hcm(&|h| h.http_filters[0].name.clear()),
        vec![format!("{p}.http_filters[0].name: must not be empty (min_len: 1)")]
    );
    assert_eq!(
        with_hcm(&|h| h.route_specifier = None),
        vec![format!("{p}.route_specifier: is required")]
    );

    let mut c = full_cluster();
    c.connect_timeout = d(0);
    c.name.clear();
    assert_eq!(
        convert::cluster(&c, true).unwrap_err().lines(),
        vec![
            "name: must not be empty (min_len: 1)".to_string(),
            "connect_timeout: must be greater than 0s (gt)".to_string()
        ]
    );
    let mut c = full_cluster();
    c.health_checks[0].timeout = None;
    c.outlier_detection.as_mut().unwrap().max_ejection_percent = u32v(101);
    assert_eq!(
        convert::cluster(&c, true).unwrap_err().lines(),
        vec![
            "outlier_detection.max_ejection_percent: 101 is out of range [0, 100]".to_string(),
            "health_checks[0].timeout: is required".to_string()
        ]
    );

    let mut la = full_cla();
    la.cluster_name.clear();
    la.endpoints[0].lb_endpoints[0].load_balancing_weight = u32v(0);
    assert_eq!(
        convert::load_assignment(&la).unwrap_err().lines(),
        vec![
            "cluster_name: must not be empty (min_len: 1)".to_string(),
            "endpoints[0].lb_endpoints[0].load_balancing_weight: 0 is out of range [1, 4294967295]".to_string()
        ]
    );

    let mut rc = full_routes();
    rc.virtual_hosts[0].domains.clear();
    rc.virtual_hosts[0].routes[0].r#match = None;
    assert_eq!(
        convert::route_config(&rc).unwrap_err().lines(),
        vec![
            "virtual_hosts[0].domains: needs at least 1 item (min_items: 1)".to_string(),
            "virtual_hosts[0].routes[0].match: is required".to_string()
        ]
    );
}

#[test]
fn traffic_direction_is_the_listener_direction() {
    let mut l = full_listener();
    assert_eq!(convert::listener(&l).unwrap().unwrap().raw.direction, None);
    l.traffic_direction = 1;
    assert_eq!(
        convert::listener(&l).unwrap().unwrap().raw.direction,
        Some(raw::Typed::Value(Direction::Inbound))
    );
    l.traffic_direction = 2;
    assert_eq!(
        convert::listener(&l).unwrap().unwrap().raw.direction,
        Some(raw::Typed::Value(Direction::Outbound))
    );
}

#[test]
fn original_dst_listener_filter_and_interception_fields() {
    let mut l = full_listener();
    let raw = convert::listener(&l).unwrap().unwrap().raw;
    assert_eq!(
        (raw.original_destination, raw.transparent, raw.bind_to_port),
        (None, None, None)
    );
    l.listener_filters.push(ls::ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        ..Default::default()
    });
    l.transparent = Some(BoolValue { value: true });
    l.bind_to_port = Some(BoolValue { value: false });
    let raw = convert::listener(&l).unwrap().unwrap().raw;
    assert_eq!(raw.original_destination, Some(true));
    assert_eq!((raw.transparent, raw.bind_to_port), (Some(true), Some(false)));

    let mut l = full_listener();
    l.use_original_dst = Some(BoolValue { value: true });
    assert_eq!(
        convert::listener(&l).unwrap().unwrap().raw.original_destination,
        Some(true)
    );

    // The TLS inspector is accepted (weft peeks at connections itself); others are refused.
    l.listener_filters.push(ls::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        ..Default::default()
    });
    assert!(convert::listener(&l).is_ok());
    l.listener_filters[0].name = "envoy.filters.listener.http_inspector".into();
    let errs = convert::listener(&l).err().unwrap().lines();
    assert!(
        errs.iter().any(|e| e.contains("listener_filters[0]: unsupported")),
        "{errs:?}"
    );
}

#[test]
fn original_src_listener_filter_is_the_listeners_original_source() {
    use weft_xds_api::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
    const URL: &str = "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
    let filter = |o: &OriginalSrc| ls::ListenerFilter {
        name: "envoy.filters.listener.original_src".into(),
        config_type: Some(ls::listener_filter::ConfigType::TypedConfig(pack(URL, o))),
        ..Default::default()
    };
    // Istio's TPROXY inbound shape: original_dst, then original_src, on a transparent listener.
    let mut l = full_listener();
    l.transparent = Some(BoolValue { value: true });
    l.listener_filters.push(ls::ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        ..Default::default()
    });
    // Istio sends mark 1337 (its TPROXY return path routes marked replies by an ip rule).
    l.listener_filters.push(filter(&OriginalSrc {
        bind_port: false,
        mark: 1337,
    }));
    let raw = convert::listener(&l).unwrap().unwrap().raw;
    assert_eq!(
        (raw.original_destination, raw.original_source, raw.original_source_mark),
        (Some(true), Some(true), Some(1337))
    );
    // Through weft-config's validation into the model the proxy runs.
    let cfg = validate_with(
        RawConfig {
            listeners: vec![raw],
            ..Default::default()
        },
        ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.listeners[0].original_source && cfg.listeners[0].transparent);
    assert_eq!(cfg.listeners[0].original_source_mark, 1337);
    // Without the filter: off. By name only (no typed_config): on, with the defaults.
    assert_eq!(
        convert::listener(&full_listener())
            .unwrap()
            .unwrap()
            .raw
            .original_source,
        None
    );
    let mut l = full_listener();
    l.listener_filters.push(ls::ListenerFilter {
        name: "envoy.filters.listener.original_src".into(),
        ..Default::default()
    });
    assert_eq!(convert::listener(&l).unwrap().unwrap().raw.original_source, Some(true));

    // What weft does not do is refused (NACKed), naming the field, never ignored.
    let mut l = full_listener();
    l.listener_filters.push(filter(&OriginalSrc {
        bind_port: true,
        mark: 1337,
    }));
    let errs = convert::listener(&l).err().unwrap().lines();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("listener_filters[0].typed_config.bind_port: unsupported")),
        "{errs:?}"
    );
    // A typed_config that is not an OriginalSrc.
    let mut l = full_listener();
    l.listener_filters.push(ls::ListenerFilter {
        name: "envoy.filters.listener.original_src".into(),
        config_type: Some(ls::listener_filter::ConfigType::TypedConfig(
            weft_xds_api::pb::google::protobuf::Any {
                type_url: URL.into(),
                value: vec![0xff, 0xff],
            },
        )),
        ..Default::default()
    });
    let errs = convert::listener(&l).err().unwrap().lines();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("listener_filters[0].typed_config: cannot decode")),
        "{errs:?}"
    );
}

/// Istio's cluster metadata `filter_metadata.istio.services[0]` becomes the cluster's `service`
/// (the Istio metrics' `destination_service*`); without it there is none.
#[test]
fn istio_service_metadata_names_the_clusters_service() {
    let mut c = full_cluster();
    assert!(convert::cluster(&c, true).unwrap().raw.service.is_none());
    let entry = strings(&[
        ("host", "reviews.shop.svc.cluster.local"),
        ("name", "reviews"),
        ("namespace", "shop"),
    ]);
    let services = Value {
        kind: Some(Kind::ListValue(weft_xds_api::pb::google::protobuf::ListValue {
            values: vec![Value {
                kind: Some(Kind::StructValue(entry)),
            }],
        })),
    };
    c.metadata = Some(core::Metadata {
        filter_metadata: HashMap::from([(
            "istio".to_string(),
            Struct {
                fields: [("services".to_string(), services)].into(),
            },
        )]),
        ..Default::default()
    });
    let s = convert::cluster(&c, true).unwrap().raw.service.unwrap();
    assert_eq!(s.host.as_deref(), Some("reviews.shop.svc.cluster.local"));
    assert_eq!(s.name.as_deref(), Some("reviews"));
    assert_eq!(s.namespace.as_deref(), Some("shop"));
}

/// Durations arrive typed: kept to the nanosecond (not rounded through text), and bounded by the
/// same rule as YAML's text, the NACK naming the weft field.
#[test]
fn durations_arrive_typed_and_meet_the_yaml_bounds() {
    let validated = |c: &cl::Cluster| {
        let raw = RawConfig {
            node: RawNode {
                zone: Some("eu-1".into()),
                ..Default::default()
            },
            clusters: vec![convert::cluster(c, true).unwrap().raw],
            ..Default::default()
        };
        let opts = ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        };
        validate_with(raw, opts)
    };
    let mut c = full_cluster();
    c.connect_timeout = Some(PbDuration {
        seconds: 0,
        nanos: 1_500,
    });
    assert_eq!(
        convert::cluster(&c, true).unwrap().raw.connect_timeout,
        Some(raw::RawDuration::Value(Duration::from_nanos(1_500)))
    );
    let cfg = validated(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.clusters[0].connect_timeout, Duration::from_nanos(1_500));

    c.connect_timeout = Some(PbDuration {
        seconds: 20_000_000_000,
        nanos: 0,
    });
    let e = validated(&c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "clusters[0].connect_timeout: \"20000000000s\" is too large"
    );
}
