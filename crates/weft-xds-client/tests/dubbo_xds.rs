//! Envoy's `envoy.filters.network.dubbo_proxy` over xDS: what it becomes in weft's `rpc` model,
//! every field weft cannot honour refused naming the Envoy field, and end to end: a scripted
//! control plane pushes the listener and its clusters to a real proxy, Dubbo calls are routed by
//! interface, group, method, argument and attachment to the right provider, and an invalid
//! variant is NACKed with the field named while calls keep flowing on the accepted config.

// Control planes send the deprecated `route_config` and `exact_match`; the test does on purpose.
#![allow(deprecated)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use support::dubbo::{call, dubbo_routes, push_gold_and_silver, rpc_listener, Envoy};
use support::*;
use weft_config::rpc::{ArgMatch, RpcRoute};
use weft_xds_api::pack;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::envoy::r#type::v3 as typ;
use weft_xds_api::pb::google::protobuf::{value::Kind, Struct, Value};
use weft_xds_api::type_url::LISTENER;
use weft_xds_client::dubbo_xds::{DUBBO_PROXY_URL, DUBBO_ROUTER_NAME, DUBBO_ROUTER_URL};

const SVC: &str = "org.example.Greeter";
const OTHER: &str = "org.example.Other";

fn exact(v: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn method(name: matcher::StringMatcher, params: &[(u32, &str)]) -> dp::MethodMatch {
    use dp::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
    dp::MethodMatch {
        name: Some(name),
        params_match: params
            .iter()
            .map(|(i, v)| {
                (
                    *i,
                    dp::method_match::ParameterMatchSpecifier {
                        parameter_match_specifier: Some(P::ExactMatch(v.to_string())),
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
    }
}

fn header(name: &str, value: &str) -> rt::HeaderMatcher {
    rt::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::StringMatch(exact(value))),
        ..Default::default()
    }
}

fn route(m: dp::MethodMatch, headers: Vec<rt::HeaderMatcher>, cluster: &str) -> dp::Route {
    dp::Route {
        r#match: Some(dp::RouteMatch {
            method: Some(m),
            headers,
        }),
        route: Some(dp::RouteAction {
            cluster_specifier: Some(dp::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        }),
    }
}

/// The proxy the tests push: `Greeter` group g1 → gold; `Greeter` (any group): `echo("vip")`
/// → gold, `echo` with attachment lane=blue → gold, `echo` → silver; `Other` version 2.0 → gold.
fn proxy_msg(clusters: (&str, &str)) -> dp::DubboProxy {
    let (gold, silver) = clusters;
    dp::DubboProxy {
        stat_prefix: "dubbo".into(),
        dubbo_filters: vec![dp::DubboFilter {
            name: DUBBO_ROUTER_NAME.into(),
            config: Some(pack(
                DUBBO_ROUTER_URL,
                &weft_xds_api::pb::envoy::extensions::filters::network::dubbo_proxy::router::v3::Router {},
            )),
        }],
        route_specifier: Some(dp::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(
            dp::MultipleRouteConfiguration {
                name: "mrc".into(),
                route_config: vec![
                    dp::RouteConfiguration {
                        name: "grouped".into(),
                        interface: SVC.into(),
                        group: "g1".into(),
                        routes: vec![route(method(exact("echo"), &[]), vec![], gold)],
                        ..Default::default()
                    },
                    dp::RouteConfiguration {
                        name: "greeter".into(),
                        interface: SVC.into(),
                        routes: vec![
                            route(method(exact("echo"), &[(0, "vip")]), vec![], gold),
                            route(method(exact("echo"), &[]), vec![header("lane", "blue")], gold),
                            route(method(exact("echo"), &[]), vec![], silver),
                        ],
                        ..Default::default()
                    },
                    dp::RouteConfiguration {
                        name: "other".into(),
                        interface: OTHER.into(),
                        version: "2.0".into(),
                        routes: vec![route(method(exact("hello"), &[]), vec![], gold)],
                        ..Default::default()
                    },
                ],
            },
        )),
        ..Default::default()
    }
}

fn listener_msg(name: &str, d: &dp::DubboProxy) -> ls::Listener {
    rpc_listener(name, "envoy.filters.network.dubbo_proxy", pack(DUBBO_PROXY_URL, d))
}

/// Converts and validates as the xDS client does: the listener's RPC routes.
fn converted(d: &dp::DubboProxy) -> Result<Vec<RpcRoute>, String> {
    dubbo_routes(&listener_msg("dubbo", d), &d.stat_prefix)
}

#[test]
fn route_configurations_flatten_into_rpc_routes() {
    let routes = converted(&proxy_msg(("gold", "silver"))).unwrap();
    let summary: Vec<_> = routes
        .iter()
        .map(|r| {
            let m = &r.match_;
            (
                r.name.as_str(),
                m.interface.as_deref(),
                m.group.as_deref(),
                m.version.as_deref(),
                m.method.as_deref(),
                r.cluster.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("grouped/routes[0]", Some(SVC), Some("g1"), None, Some("echo"), "gold"),
            ("greeter/routes[0]", Some(SVC), None, None, Some("echo"), "gold"),
            ("greeter/routes[1]", Some(SVC), None, None, Some("echo"), "gold"),
            ("greeter/routes[2]", Some(SVC), None, None, Some("echo"), "silver"),
            ("other/routes[0]", Some(OTHER), None, Some("2.0"), Some("hello"), "gold"),
        ]
    );
    assert_eq!(
        routes[1].match_.arguments,
        vec![ArgMatch {
            index: 0,
            equals: "vip".into()
        }]
    );
    assert_eq!(
        routes[2].match_.attachments,
        vec![("lane".to_string(), "blue".to_string())]
    );

    // The deprecated `route_config`, interface "*", `exact_match`, a one-cluster weighted split,
    // metadata_match (subset) and no dubbo_filters (the default router) are accepted too.
    let mut r = route(method(exact("m"), &[(2, "42")]), vec![], "unused");
    r.r#match.as_mut().unwrap().headers = vec![rt::HeaderMatcher {
        name: "k".into(),
        header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::ExactMatch("v".into())),
        ..Default::default()
    }];
    let a = r.route.as_mut().unwrap();
    a.cluster_specifier = Some(dp::route_action::ClusterSpecifier::WeightedClusters(
        rt::WeightedCluster {
            clusters: vec![rt::weighted_cluster::ClusterWeight {
                name: "only".into(),
                weight: Some(weft_xds_api::pb::google::protobuf::UInt32Value { value: 100 }),
                ..Default::default()
            }],
            ..Default::default()
        },
    ));
    let lb = Struct {
        fields: [(
            "lane".to_string(),
            Value {
                kind: Some(Kind::StringValue("blue".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    a.metadata_match = Some(core::Metadata {
        filter_metadata: [("envoy.lb".to_string(), lb)].into_iter().collect(),
        ..Default::default()
    });
    let d = dp::DubboProxy {
        stat_prefix: "legacy".into(),
        route_config: vec![dp::RouteConfiguration {
            interface: "*".into(),
            routes: vec![r],
            ..Default::default()
        }],
        ..Default::default()
    };
    let routes = converted(&d).unwrap();
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!((r.match_.interface.as_deref(), r.cluster.as_str()), (None, "only"));
    assert_eq!(r.match_.attachments, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(
        r.match_.arguments,
        vec![ArgMatch {
            index: 2,
            equals: "42".into()
        }]
    );
    assert_eq!(r.subset.get("lane").map(String::as_str), Some("blue"));
}

/// One change to the accepted proxy message.
type Change = Box<dyn Fn(&mut dp::DubboProxy)>;

/// `safe_regex: ".*"` as the method name is a route for every method (how weft control and
/// other control planes write one; Envoy needs a method matcher); any other regex is refused.
#[test]
fn a_method_regex_of_dot_star_takes_every_method() {
    let regex = |r: &str| matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(
            matcher::RegexMatcher {
                regex: r.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut d = proxy_msg(("gold", "silver"));
    route_configs(&mut d)[2].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .method
        .as_mut()
        .unwrap()
        .name = Some(regex(".*"));
    let routes = converted(&d).unwrap();
    let last = routes.last().unwrap();
    assert_eq!(last.match_.interface.as_deref(), Some(OTHER));
    assert_eq!(last.match_.method, None, "{last:?}");
    route_configs(&mut d)[2].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .method
        .as_mut()
        .unwrap()
        .name = Some(regex("ec.*"));
    let err = converted(&d).unwrap_err();
    assert!(
        err.contains("route_config[2].routes[0].match.method.name.safe_regex: unsupported (exact matching only)"),
        "{err}"
    );
}

#[test]
fn what_weft_cannot_honour_is_refused_naming_the_field() {
    let base = "filter_chains[0].filters[0].typed_config";
    let mrc = format!("{base}.multiple_route_config.route_config");
    let cases: Vec<(Change, String)> = vec![
        (
            Box::new(|d| {
                use dp::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
                let rc = route_configs(d);
                let m = rc[1].routes[1].r#match.as_mut().unwrap().method.as_mut().unwrap();
                m.params_match.insert(
                    0,
                    dp::method_match::ParameterMatchSpecifier {
                        parameter_match_specifier: Some(P::RangeMatch(typ::Int64Range { start: 0, end: 9 })),
                    },
                );
            }),
            format!("{mrc}[1].routes[1].match.method.params_match[0]: range matching is not supported"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[0].routes[0].r#match.as_mut().unwrap().method.as_mut().unwrap().name =
                    Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix("ec".into())),
                        ..Default::default()
                    });
            }),
            format!("{mrc}[0].routes[0].match.method.name.prefix: unsupported (exact matching only)"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[0].routes[0].r#match.as_mut().unwrap().method.as_mut().unwrap().name =
                    Some(matcher::StringMatcher {
                        ignore_case: true,
                        ..exact("echo")
                    });
            }),
            format!("{mrc}[0].routes[0].match.method.name.ignore_case: unsupported"),
        ),
        (
            Box::new(|d| route_configs(d)[2].interface = "org.example.*".into()),
            format!("{mrc}[2].interface: wildcard \"org.example.*\" is not supported"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[1].routes[2].r#match.as_mut().unwrap().headers = vec![rt::HeaderMatcher {
                    name: "lane".into(),
                    header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
                    ..Default::default()
                }];
            }),
            format!("{mrc}[1].routes[2].match.headers[0]: only an exact value"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[1].routes[1].r#match.as_mut().unwrap().headers[0].invert_match = true;
            }),
            format!("{mrc}[1].routes[1].match.headers[0].invert_match: unsupported"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[0].routes[0].route.as_mut().unwrap().cluster_specifier = Some(
                    dp::route_action::ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
                        clusters: vec![
                            rt::weighted_cluster::ClusterWeight {
                                name: "a".into(),
                                ..Default::default()
                            },
                            rt::weighted_cluster::ClusterWeight {
                                name: "b".into(),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                );
            }),
            format!("{mrc}[0].routes[0].route.weighted_clusters: a split over several clusters is not supported"),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                rc[0].routes[0].route.as_mut().unwrap().metadata_match = Some(core::Metadata {
                    filter_metadata: [("other".to_string(), Struct::default())].into_iter().collect(),
                    ..Default::default()
                });
            }),
            format!("{mrc}[0].routes[0].route.metadata_match.filter_metadata[\"other\"]: unsupported"),
        ),
        (
            Box::new(|d| {
                d.dubbo_filters.insert(
                    0,
                    dp::DubboFilter {
                        name: "envoy.filters.dubbo.testing".into(),
                        config: None,
                    },
                )
            }),
            format!("{base}.dubbo_filters[0]: unsupported Dubbo filter \"envoy.filters.dubbo.testing\""),
        ),
        (
            Box::new(|d| {
                let rc = route_configs(d);
                let m = rc[0].routes[0].r#match.as_mut().unwrap().method.as_mut().unwrap();
                *m = method(exact("echo"), &[(300, "x")]);
            }),
            format!("{mrc}[0].routes[0].match.method.params_match[300]: argument index out of range [0, 255]"),
        ),
        (
            Box::new(|d| d.protocol_type = 7),
            format!("{base}.protocol_type: unsupported value 7"),
        ),
        (
            Box::new(|d| d.serialization_type = 3),
            format!("{base}.serialization_type: unsupported value 3"),
        ),
        (
            Box::new(|d| d.stat_prefix.clear()),
            format!("{base}.stat_prefix: must not be empty"),
        ),
        (
            Box::new(|d| {
                d.route_specifier = Some(dp::dubbo_proxy::RouteSpecifier::Drds(dp::Drds {
                    config_source: Some(ads()),
                    route_config_name: "x".into(),
                }))
            }),
            format!("{base}.drds: unsupported"),
        ),
        (
            Box::new(|d| {
                d.route_config = vec![dp::RouteConfiguration {
                    interface: "*".into(),
                    ..Default::default()
                }]
            }),
            format!("{base}.route_config: give route_config or multiple_route_config, not both"),
        ),
        (
            Box::new(|d| route_configs(d)[0].routes[0].r#match = None),
            format!("{mrc}[0].routes[0].match: is required"),
        ),
    ];
    for (i, (change, want)) in cases.iter().enumerate() {
        let mut d = proxy_msg(("gold", "silver"));
        change(&mut d);
        let e = converted(&d).expect_err(&format!("case {i} must be refused"));
        assert!(e.contains(want), "case {i}: want {want:?} in:\n{e}");
    }
}

fn route_configs(d: &mut dp::DubboProxy) -> &mut Vec<dp::RouteConfiguration> {
    match d.route_specifier.as_mut() {
        Some(dp::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(m)) => &mut m.route_config,
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

/// `d` with an argument range on `Greeter`'s attachment route: valid for Envoy, which weft's RPC
/// routes cannot express.
fn with_range(mut d: dp::DubboProxy) -> dp::DubboProxy {
    use dp::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
    let m = route_configs(&mut d)[1].routes[1].r#match.as_mut().unwrap();
    m.method.as_mut().unwrap().params_match.insert(
        0,
        dp::method_match::ParameterMatchSpecifier {
            parameter_match_specifier: Some(P::RangeMatch(typ::Int64Range { start: 1, end: 5 })),
        },
    );
    d
}

/// The calls the pushed listener must route (`proxy_msg`): by argument value, by attachment, the
/// rest of the method; by group; by version; and two that match no route, answered with Dubbo's
/// `SERVICE_NOT_FOUND` (60) by weft and by Envoy alike.
async fn check(addr: SocketAddr) {
    assert_eq!(call(addr, SVC, "", "echo", "vip", &[]).await.unwrap(), "gold:echo:vip");
    assert_eq!(
        call(addr, SVC, "", "echo", "x", &[("lane", "blue")]).await.unwrap(),
        "gold:echo:x"
    );
    assert_eq!(call(addr, SVC, "", "echo", "x", &[]).await.unwrap(), "silver:echo:x");
    assert_eq!(
        call(addr, SVC, "", "echo", "y", &[("group", "g1")]).await.unwrap(),
        "gold:echo:y"
    );
    assert_eq!(
        call(addr, OTHER, "2.0", "hello", "z", &[]).await.unwrap(),
        "gold:hello:z"
    );
    for (svc, version, m) in [(OTHER, "1.0", "hello"), (SVC, "", "bye")] {
        let (status, msg) = call(addr, svc, version, m, "x", &[]).await.unwrap_err();
        assert_eq!(status, 60, "{svc} {version} {m}: {msg}");
    }
}

#[tokio::test]
async fn dubbo_proxy_pushed_over_xds_routes_calls_and_invalid_updates_are_nacked() {
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    push_gold_and_silver(&cp).await;
    let m = cp.mark();
    let good = listener_msg("dubbo", &proxy_msg(("gold", "silver")));
    cp.send_sotw(LISTENER, "l1", "n3", vec![pack(LISTENER, &good)]);
    let ack = cp.reply_to(m, "n3").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    p.wait_ready().await;
    let addr = p.wait_listener("dubbo").await;

    check(addr).await;

    // An argument range: NACKed naming the field; the last good config keeps serving.
    let bad = with_range(proxy_msg(("gold", "silver")));
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n4", vec![pack(LISTENER, &listener_msg("dubbo", &bad))]);
    let nack = cp.reply_to(m, "n4").await;
    let msg = nack.error().expect("NACK");
    assert!(
        msg.contains(
            "listener \"dubbo\": filter_chains[0].filters[0].typed_config.multiple_route_config.route_config[1].routes[1].match.method.params_match[0]: range matching is not supported"
        ),
        "{msg}"
    );
    assert_eq!(nack.sotw().version_info, "l1", "NACK carries the last accepted version");
    assert_eq!(p.wait_listener("dubbo").await, addr);
    check(addr).await;

    // A valid update applies: everything of Greeter now goes to silver.
    let mut moved = proxy_msg(("silver", "silver"));
    route_configs(&mut moved).remove(0);
    let m = cp.mark();
    cp.send_sotw(
        LISTENER,
        "l3",
        "n5",
        vec![pack(LISTENER, &listener_msg("dubbo", &moved))],
    );
    assert!(cp.reply_to(m, "n5").await.error().is_none());
    let addr = p.wait_listener("dubbo").await;
    weft_test_support::eventually_ok("calls to follow the new routes", WAIT, || async {
        match call(addr, SVC, "", "echo", "vip", &[]).await {
            Ok(v) if v == "silver:echo:vip" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(
        call(addr, SVC, "", "echo", "y", &[("group", "g1")]).await.unwrap(),
        "silver:echo:y"
    );
}

/// The same resources, pushed the same way to Envoy 1.40 (`interop/.venv-envoy`, whose build has
/// the contrib Dubbo proxy): it ACKs the listener and routes the same calls to the same providers.
/// Under `CI=true` a missing Envoy fails the test.
#[tokio::test]
async fn envoy_accepts_the_same_listener_and_routes_the_same_calls() {
    let cp = Cp::start().await;
    let Some(envoy) = Envoy::start(&cp, "envoy-dubbo-1").await else {
        return;
    };
    let listen = weft_test_support::free_addr();
    push_gold_and_silver(&cp).await;
    let l = listener_msg("dubbo", &proxy_msg(("gold", "silver")));
    envoy.accepts(&cp, l, listen, "l1").await;

    envoy.wait_bound(listen).await;
    check(listen).await;

    // The variant weft NACKs (an argument range) is valid for Envoy: one that weft refuses
    // rather than half-honours.
    let l = listener_msg("dubbo", &with_range(proxy_msg(("gold", "silver"))));
    envoy.accepts(&cp, l, listen, "l2").await;
}
