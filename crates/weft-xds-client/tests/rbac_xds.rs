//! Envoy RBAC over xDS: `envoy.filters.http.rbac` (rules and shadow_rules) and
//! `envoy.filters.network.rbac` become weft's `authorization` block, evaluated by the same engine as
//! the YAML form; every matcher kind weft cannot evaluate is refused naming its Envoy field.

// Real control planes still send deprecated Envoy fields; the test sends them on purpose.
#![allow(deprecated)]

use http::{HeaderMap, Method};
use std::collections::HashMap;
use weft_config::authz::{Authorization, RbacAction};
use weft_config::raw::RawConfig;
use weft_config::*;
use weft_proxy::authz::{Authorizer, AuthzInput, HttpView};
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::rbac::v3 as rbac;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use weft_xds_api::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::UInt32Value;
use weft_xds_api::{pack, type_url};
use weft_xds_client::convert;
use weft_xds_client::rbac_xds::{HTTP_RBAC_URL, NETWORK_RBAC_URL};

fn exact(v: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn prefix(v: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(v.into())),
        ..Default::default()
    }
}

fn perm(r: rbac::permission::Rule) -> rbac::Permission {
    rbac::Permission { rule: Some(r) }
}

fn princ(i: rbac::principal::Identifier) -> rbac::Principal {
    rbac::Principal { identifier: Some(i) }
}

fn cidr(a: &str, len: u32) -> core::CidrRange {
    core::CidrRange {
        address_prefix: a.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn rules(action: rbac::rbac::Action, policies: Vec<(&str, rbac::Policy)>) -> rbac::Rbac {
    rbac::Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// Istio-shaped policies: DENY `/admin*`; ALLOW GET from the `reviews` SPIFFE ID in 10/8, or
/// anything carrying `x-ops: yes` from an authenticated peer in namespace ops; shadow: DENY
/// everything from 192.0.2.0/24.
fn http_filters() -> Vec<http_rbac::Rbac> {
    use rbac::permission::Rule as R;
    use rbac::principal::Identifier as I;
    let deny = rules(
        rbac::rbac::Action::Deny,
        vec![(
            "deny-admin",
            rbac::Policy {
                permissions: vec![perm(R::UrlPath(matcher::PathMatcher {
                    rule: Some(matcher::path_matcher::Rule::Path(prefix("/admin"))),
                }))],
                principals: vec![princ(I::Any(true))],
                ..Default::default()
            },
        )],
    );
    let allow = rules(
        rbac::rbac::Action::Allow,
        vec![
            (
                "reviews-get",
                rbac::Policy {
                    permissions: vec![perm(R::AndRules(rbac::permission::Set {
                        rules: vec![
                            perm(R::Header(rt::HeaderMatcher {
                                name: ":method".into(),
                                header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::StringMatch(
                                    exact("GET"),
                                )),
                                ..Default::default()
                            })),
                            perm(R::DestinationPort(9080)),
                        ],
                    }))],
                    principals: vec![princ(I::AndIds(rbac::principal::Set {
                        ids: vec![
                            princ(I::Authenticated(rbac::principal::Authenticated {
                                principal_name: Some(exact("spiffe://td/ns/default/sa/reviews")),
                            })),
                            princ(I::DirectRemoteIp(cidr("10.0.0.0", 8))),
                        ],
                    }))],
                    ..Default::default()
                },
            ),
            (
                "ops",
                rbac::Policy {
                    permissions: vec![perm(R::Any(true))],
                    principals: vec![princ(I::AndIds(rbac::principal::Set {
                        ids: vec![
                            princ(I::Authenticated(rbac::principal::Authenticated {
                                principal_name: Some(matcher::StringMatcher {
                                    match_pattern: Some(matcher::string_matcher::MatchPattern::Contains(
                                        "/ns/ops/".into(),
                                    )),
                                    ..Default::default()
                                }),
                            })),
                            princ(I::Header(rt::HeaderMatcher {
                                name: "x-ops".into(),
                                header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::ExactMatch(
                                    "yes".into(),
                                )),
                                ..Default::default()
                            })),
                            princ(I::NotId(Box::new(princ(I::RemoteIp(cidr("203.0.113.0", 24)))))),
                        ],
                    }))],
                    ..Default::default()
                },
            ),
        ],
    );
    let shadow = rules(
        rbac::rbac::Action::Deny,
        vec![(
            "watch",
            rbac::Policy {
                permissions: vec![perm(R::Any(true))],
                principals: vec![princ(I::OrIds(rbac::principal::Set {
                    ids: vec![princ(I::SourceIp(cidr("192.0.2.0", 24)))],
                }))],
                ..Default::default()
            },
        )],
    );
    vec![
        http_rbac::Rbac {
            rules: Some(deny),
            shadow_rules: Some(shadow),
            ..Default::default()
        },
        http_rbac::Rbac {
            rules: Some(allow),
            ..Default::default()
        },
    ]
}

fn http_listener(filters: &[http_rbac::Rbac]) -> ls::Listener {
    let mut http_filters: Vec<hcm::HttpFilter> = filters
        .iter()
        .map(|r| hcm::HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(HTTP_RBAC_URL, r))),
            ..Default::default()
        })
        .collect();
    http_filters.push(hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            type_url::ROUTER,
            &weft_xds_api::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    });
    let h = hcm::HttpConnectionManager {
        stat_prefix: "inbound".into(),
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
        http_filters,
        ..Default::default()
    };
    ls::Listener {
        name: "inbound".into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_listener(r: Option<&net_rbac::Rbac>) -> ls::Listener {
    let t = tcp::TcpProxy {
        stat_prefix: "db".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        ..Default::default()
    };
    let mut filters: Vec<ls::Filter> = r
        .map(|r| ls::Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(ls::filter::ConfigType::TypedConfig(pack(NETWORK_RBAC_URL, r))),
        })
        .into_iter()
        .collect();
    filters.push(ls::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::TCP_PROXY, &t))),
    });
    let mut l = http_listener(&[]);
    l.name = "db".into();
    l.filter_chains[0].filters = filters;
    l
}

/// Converts and validates as the xDS client does; the listener's authorization block.
fn converted(l: &ls::Listener) -> Result<Authorization, String> {
    let x = convert::listener(l).map_err(|e| e.lines().join("\n"))?.unwrap();
    let raw = RawConfig {
        listeners: vec![x.raw],
        ..Default::default()
    };
    let cfg = validate_with(
        raw,
        ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    )
    .map_err(|e| e.to_string())?;
    let l = &cfg.listeners[0];
    let a = match &l.filter_chains[0].filter {
        NetworkFilter::Http(h) => h.authorization.clone(),
        NetworkFilter::TcpProxy(t) => t.authorization.clone(),
        NetworkFilter::Rpc(_) => None,
    };
    Ok(*a.expect("an authorization block"))
}

fn input<'a>(
    principal: Option<&'a str>,
    peer: &str,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
) -> AuthzInput<'a> {
    AuthzInput {
        http: Some(HttpView {
            method,
            path,
            authority: "ratings",
            headers,
            jwt: None,
        }),
        principal,
        direct_remote: peer.parse().unwrap(),
        remote: peer.parse().unwrap(),
        local: Some("127.0.0.1:9080".parse().unwrap()),
        sni: None,
    }
}

#[test]
fn http_rbac_rules_and_shadow_rules_become_stages() {
    let a = converted(&http_listener(&http_filters())).unwrap();
    let kinds: Vec<_> = a.stages.iter().map(|s| (s.action, s.shadow)).collect();
    // Shadow stages are evaluated first; the enforced ones keep the filter order.
    assert_eq!(
        kinds,
        vec![
            (RbacAction::Deny, true),
            (RbacAction::Deny, false),
            (RbacAction::Allow, false)
        ]
    );
    let az = Authorizer::new(&a, None);
    let h = HeaderMap::new();
    let (get, post) = (Method::GET, Method::POST);
    let reviews = Some("spiffe://td/ns/default/sa/reviews");
    let d = az.check(&input(reviews, "10.1.1.1", &get, "/ratings/1", &h));
    assert!(d.allowed);
    assert_eq!(d.policy_str(), Some("reviews-get"));
    assert_eq!(d.shadow.map(|s| s.0), Some(true));
    // DENY before ALLOW.
    let d = az.check(&input(reviews, "10.1.1.1", &get, "/admin/x", &h));
    assert_eq!(d.details_str(), Some("rbac_access_denied_matched_policy[deny-admin]"));
    // Outside 10/8, another method, another principal: nothing allows.
    for (p, peer, m) in [
        (reviews, "127.0.0.1", &get),
        (reviews, "10.1.1.1", &post),
        (Some("spiffe://td/ns/default/sa/other"), "10.1.1.1", &get),
        (None, "10.1.1.1", &get),
    ] {
        let d = az.check(&input(p, peer, m, "/r", &h));
        assert!(!d.allowed, "{p:?} {peer} {m}");
        assert_eq!(d.details_str(), Some("rbac_access_denied_matched_policy[none]"));
    }
    // The ops policy: namespace, header, and not 203.0.113.0/24; the shadow rule sees 192.0.2.x.
    let mut ops = HeaderMap::new();
    ops.insert("x-ops", "yes".parse().unwrap());
    let d = az.check(&input(Some("spiffe://td/ns/ops/sa/x"), "192.0.2.9", &post, "/r", &ops));
    assert!(d.allowed);
    assert_eq!(d.policy_str(), Some("ops"));
    assert_eq!(
        d.shadow_str().map(|(a, p)| (a, p.map(|p| p.to_string()))),
        Some((false, Some("watch".into())))
    );
    assert!(
        !az.check(&input(
            Some("spiffe://td/ns/ops/sa/x"),
            "203.0.113.5",
            &post,
            "/r",
            &ops
        ))
        .allowed
    );
}

#[test]
fn network_rbac_guards_a_tcp_proxy() {
    use rbac::permission::Rule as R;
    use rbac::principal::Identifier as I;
    let r = net_rbac::Rbac {
        stat_prefix: "db".into(),
        rules: Some(rules(
            rbac::rbac::Action::Allow,
            vec![(
                "app-only",
                rbac::Policy {
                    permissions: vec![perm(R::DestinationPort(5432))],
                    principals: vec![princ(I::DirectRemoteIp(cidr("127.0.0.0", 8)))],
                    ..Default::default()
                },
            )],
        )),
        ..Default::default()
    };
    let a = converted(&tcp_listener(Some(&r))).unwrap();
    assert_eq!(a.stages.len(), 1);
    let az = Authorizer::new(&a, None);
    let tcp = |peer: &str, port: u16| AuthzInput {
        http: None,
        principal: None,
        direct_remote: peer.parse().unwrap(),
        remote: peer.parse().unwrap(),
        local: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        sni: None,
    };
    assert!(az.check(&tcp("127.0.0.2", 5432)).allowed);
    assert!(!az.check(&tcp("127.0.0.2", 5433)).allowed);
    assert!(!az.check(&tcp("10.0.0.1", 5432)).allowed);

    // An HTTP-only matcher on a TCP proxy is refused by validation, naming the field.
    let mut r2 = r.clone();
    r2.rules
        .as_mut()
        .unwrap()
        .policies
        .get_mut("app-only")
        .unwrap()
        .permissions = vec![perm(R::UrlPath(matcher::PathMatcher {
        rule: Some(matcher::path_matcher::Rule::Path(prefix("/"))),
    }))];
    let e = converted(&tcp_listener(Some(&r2))).unwrap_err();
    assert!(
        e.contains("authorization.rbac[0].rules.policies[app-only].permissions[0].url_path: needs an HTTP request"),
        "{e}"
    );

    // Network RBAC before an HTTP connection manager: refused, pointing at the HTTP filter.
    let mut l = http_listener(&[]);
    l.filter_chains[0].filters.insert(
        0,
        ls::Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(ls::filter::ConfigType::TypedConfig(pack(NETWORK_RBAC_URL, &r))),
        },
    );
    let e = convert::listener(&l).unwrap_err().lines();
    assert!(
        e[0].starts_with(
            "filter_chains[0].filters[0]: envoy.filters.network.rbac before an HTTP connection manager is unsupported"
        ),
        "{e:?}"
    );
}

#[test]
fn unsupported_matchers_are_nacked_naming_the_field() {
    use rbac::permission::Rule as R;
    use rbac::principal::Identifier as I;
    let p = "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules";
    let with = |perm_rule: Option<R>, id: Option<I>, f: &dyn Fn(&mut http_rbac::Rbac)| {
        let mut r = http_rbac::Rbac {
            rules: Some(rules(
                rbac::rbac::Action::Allow,
                vec![(
                    "p",
                    rbac::Policy {
                        permissions: vec![perm(perm_rule.unwrap_or(R::Any(true)))],
                        principals: vec![princ(id.unwrap_or(I::Any(true)))],
                        ..Default::default()
                    },
                )],
            )),
            ..Default::default()
        };
        f(&mut r);
        convert::listener(&http_listener(&[r])).unwrap_err().lines()
    };
    let none = |_: &mut http_rbac::Rbac| {};
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            with(Some(R::Metadata(Default::default())), None, &none),
            format!("{p}.policies[p].permissions[0].metadata: unsupported"),
        ),
        (
            with(Some(R::DestinationPortRange(Default::default())), None, &none),
            format!("{p}.policies[p].permissions[0].destination_port_range: unsupported"),
        ),
        (
            with(None, Some(I::FilterState(Default::default())), &none),
            format!("{p}.policies[p].principals[0].filter_state: unsupported"),
        ),
        (
            with(
                None,
                Some(I::Header(rt::HeaderMatcher {
                    name: "x".into(),
                    header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::RangeMatch(
                        Default::default(),
                    )),
                    ..Default::default()
                })),
                &none,
            ),
            format!("{p}.policies[p].principals[0].header.range_match: unsupported"),
        ),
        (
            with(None, None, &|r| {
                r.rules.as_mut().unwrap().policies.get_mut("p").unwrap().condition = Some(Default::default())
            }),
            format!("{p}.policies[p].condition: unsupported (CEL)"),
        ),
        (
            with(None, None, &|r| r.matcher = Some(Default::default())),
            "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.matcher: unsupported (use rules)"
                .into(),
        ),
    ];
    for (errs, want) in cases {
        assert_eq!(errs, vec![want]);
    }
}
