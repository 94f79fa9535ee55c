//! One route model: a YAML `match.grpc` (gRPC / Dubbo3 Triple service, method, version, group,
//! attachment) and the Envoy `RouteMatch` a control plane sends for the same route (`path`,
//! `grpc: {}`, exact header matchers) validate to the same weft route match.

use weft_config::raw::{RawConfig, RawHttp, RawListener};
use weft_config::*;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_client::convert;

fn exact(name: &str, v: &str) -> rt::HeaderMatcher {
    rt::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn first_match(cfg: &Config) -> RouteMatch {
    let NetworkFilter::Http(h) = &cfg.listeners[0].filter_chains[0].filter else {
        panic!("not http")
    };
    h.route_config.virtual_hosts[0].routes[0].match_.clone()
}

#[test]
fn yaml_grpc_match_equals_the_envoy_route_match() {
    let yaml = from_yaml(
        r#"
listeners:
  - name: tri
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: greeter
            domains: ["*"]
            routes:
              - match: { grpc: { service: org.apache.dubbo.samples.Greeter, method: sayHello, version: 2.0.0, group: blue, attachments: { lane: canary } } }
                route: { cluster: greeter }
clusters:
  - { name: greeter, protocol: http2, endpoints: [{ address: 127.0.0.1:9 }] }
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let rc = rt::RouteConfiguration {
        name: "tri".into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "greeter".into(),
            domains: vec!["*".into()],
            routes: vec![rt::Route {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Path(
                        "/org.apache.dubbo.samples.Greeter/sayHello".into(),
                    )),
                    grpc: Some(rt::route_match::GrpcRouteMatchOptions {}),
                    headers: vec![
                        exact("tri-service-version", "2.0.0"),
                        exact("tri-service-group", "blue"),
                        exact("lane", "canary"),
                    ],
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster("greeter".into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let raw = RawConfig {
        listeners: vec![RawListener {
            name: Some("tri".into()),
            address: Some("127.0.0.1:0".into()),
            http: Some(RawHttp {
                route_config: Some(convert::route_config(&rc).unwrap_or_else(|e| panic!("{e:?}"))),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let xds = validate_with(
        raw,
        ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let (a, b) = (first_match(&yaml), first_match(&xds));
    assert_eq!(a, b);
    assert_eq!(
        a.path,
        PathMatch::Exact("/org.apache.dubbo.samples.Greeter/sayHello".into())
    );
    assert_eq!(
        a.headers.len(),
        4,
        "content-type, version, group, lane: {:?}",
        a.headers
    );
}
