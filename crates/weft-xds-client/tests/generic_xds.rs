//! Envoy's `envoy.filters.network.generic_proxy` with its Dubbo codec over xDS: how its virtual
//! hosts and `xds.type.matcher.v3` trees flatten into weft's ordered RPC routes (a chosen virtual
//! host is not left for the default one), every field weft cannot honour refused naming the Envoy
//! field, and end to end: the listener pushed to weft and to Envoy 1.40 routes the same calls to
//! the same providers, and a variant only Envoy can honour is NACKed by weft while calls keep
//! flowing.

mod support;

use std::collections::HashMap;
use support::dubbo::{call, dubbo_routes, push_gold_and_silver, rpc_listener, Envoy};
use support::*;
use weft_config::rpc::RpcRoute;
use weft_xds_api::pack;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::action::v3 as action;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gm;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::router::v3 as router;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as em;
use weft_xds_api::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use weft_xds_api::pb::xds::core::v3::TypedExtensionConfig as XdsExt;
use weft_xds_api::pb::xds::r#type::matcher::v3 as xm;
use weft_xds_api::type_url::LISTENER;
use weft_xds_client::generic_xds::{DUBBO_CODEC_URL, GENERIC_PROXY_URL, ROUTER_URL, ROUTE_ACTION_URL};

use xm::matcher::matcher_list::predicate::{self as pred, single_predicate as sp};
use xm::matcher::matcher_list::{FieldMatcher, Predicate};
use xm::matcher::{on_match, MatcherList, MatcherTree, MatcherType, OnMatch};

const SVC: &str = "org.example.Greeter";
const OTHER: &str = "org.example.Other";
const THIRD: &str = "org.example.Third";
const PKG: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.";

fn input(kind: &str) -> XdsExt {
    let url = format!("{PKG}{kind}");
    let typed_config = match kind {
        "MethodMatchInput" => pack(&url, &gm::MethodMatchInput {}),
        "HostMatchInput" => pack(&url, &gm::HostMatchInput {}),
        "RequestMatchInput" => pack(&url, &gm::RequestMatchInput {}),
        _ => unreachable!(),
    };
    XdsExt {
        name: kind.into(),
        typed_config: Some(typed_config),
    }
}

fn property(name: &str) -> XdsExt {
    XdsExt {
        name: "property".into(),
        typed_config: Some(pack(
            &format!("{PKG}PropertyMatchInput"),
            &gm::PropertyMatchInput {
                property_name: name.into(),
            },
        )),
    }
}

fn xexact(v: &str) -> xm::StringMatcher {
    xm::StringMatcher {
        match_pattern: Some(xm::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn eexact(v: &str) -> em::StringMatcher {
    em::StringMatcher {
        match_pattern: Some(em::string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

/// `input == v`.
fn is(input: XdsExt, v: &str) -> Predicate {
    Predicate {
        match_type: Some(pred::MatchType::SinglePredicate(pred::SinglePredicate {
            input: Some(input),
            matcher: Some(sp::Matcher::ValueMatch(xexact(v))),
        })),
    }
}

fn and(ps: Vec<Predicate>) -> Predicate {
    Predicate {
        match_type: Some(pred::MatchType::AndMatcher(pred::PredicateList { predicate: ps })),
    }
}

fn or(ps: Vec<Predicate>) -> Predicate {
    Predicate {
        match_type: Some(pred::MatchType::OrMatcher(pred::PredicateList { predicate: ps })),
    }
}

/// The generic proxy's own request matcher: method and properties at once.
fn request(method: &str, props: &[(&str, &str)]) -> Predicate {
    let rm = gm::RequestMatcher {
        method: Some(eexact(method)),
        properties: props
            .iter()
            .map(|(k, v)| gm::KeyValueMatchEntry {
                name: k.to_string(),
                string_match: Some(eexact(v)),
            })
            .collect(),
        ..Default::default()
    };
    Predicate {
        match_type: Some(pred::MatchType::SinglePredicate(pred::SinglePredicate {
            input: Some(input("RequestMatchInput")),
            matcher: Some(sp::Matcher::CustomMatch(XdsExt {
                name: "request".into(),
                typed_config: Some(pack(&format!("{PKG}RequestMatcher"), &rm)),
            })),
        })),
    }
}

fn route_action(cluster: &str) -> action::RouteAction {
    action::RouteAction {
        cluster_specifier: Some(action::route_action::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    }
}

fn to(a: action::RouteAction) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Action(XdsExt {
            name: "route".into(),
            typed_config: Some(pack(ROUTE_ACTION_URL, &a)),
        })),
        ..Default::default()
    }
}

fn nested(m: xm::Matcher) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Matcher(Box::new(m))),
        ..Default::default()
    }
}

fn list(items: Vec<(Predicate, OnMatch)>) -> xm::Matcher {
    xm::Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: items
                .into_iter()
                .map(|(p, o)| FieldMatcher {
                    predicate: Some(p),
                    on_match: Some(o),
                })
                .collect(),
        })),
        on_no_match: None,
    }
}

fn tree(input: XdsExt, map: Vec<(&str, OnMatch)>) -> xm::Matcher {
    use xm::matcher::matcher_tree::{MatchMap, TreeType};
    xm::Matcher {
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(input),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap {
                map: map
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<HashMap<_, _>>(),
            })),
        })),
        on_no_match: None,
    }
}

/// The proxy the tests push:
/// - `Greeter`: `echo` in group g1 → gold (tried twice), `echo` with attachment lane=blue → gold,
///   `echo` → silver; anything else of `Greeter` has no route (its virtual host is chosen).
/// - `Other`: version 2.0 `hello` → gold; anything else of `Other` has no route.
/// - the default routes: `hello` or `hi` of any other interface → silver.
fn proxy_msg(clusters: (&str, &str)) -> gp::GenericProxy {
    let (gold, silver) = clusters;
    let mut twice = route_action(gold);
    twice.name = "greeter-g1".into();
    twice.retry_policy = Some(core::RetryPolicy {
        num_retries: Some(UInt32Value { value: 2 }),
        ..Default::default()
    });
    let mut quick = route_action(silver);
    quick.timeout = Some(PbDuration { seconds: 2, nanos: 0 });
    gp::GenericProxy {
        stat_prefix: "generic".into(),
        codec_config: Some(core::TypedExtensionConfig {
            name: "envoy.generic_proxy.codecs.dubbo".into(),
            typed_config: Some(pack(
                DUBBO_CODEC_URL,
                &weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::codecs::dubbo::v3::DubboCodecConfig {},
            )),
        }),
        filters: vec![core::TypedExtensionConfig {
            name: "envoy.filters.generic.router".into(),
            typed_config: Some(pack(ROUTER_URL, &router::Router::default())),
        }],
        route_specifier: Some(gp::generic_proxy::RouteSpecifier::RouteConfig(gp::RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vec![
                gp::VirtualHost {
                    name: "greeter".into(),
                    hosts: vec![SVC.into()],
                    routes: Some(list(vec![
                        (
                            and(vec![is(input("MethodMatchInput"), "echo"), is(property("group"), "g1")]),
                            to(twice),
                        ),
                        (request("echo", &[("lane", "blue")]), to(route_action(gold))),
                        (is(input("MethodMatchInput"), "echo"), to(quick)),
                    ])),
                },
                gp::VirtualHost {
                    name: "other".into(),
                    hosts: vec![OTHER.into()],
                    routes: Some(tree(
                        property("version"),
                        vec![(
                            "2.0",
                            nested(list(vec![(
                                is(input("MethodMatchInput"), "hello"),
                                to(route_action(gold)),
                            )])),
                        )],
                    )),
                },
            ],
            routes: Some(list(vec![(
                or(vec![is(input("MethodMatchInput"), "hello"), is(input("MethodMatchInput"), "hi")]),
                to(route_action(silver)),
            )])),
        })),
        ..Default::default()
    }
}

fn listener_msg(name: &str, g: &gp::GenericProxy) -> ls::Listener {
    rpc_listener(name, "envoy.filters.network.generic_proxy", pack(GENERIC_PROXY_URL, g))
}

/// Converts and validates as the xDS client does: the listener's RPC routes.
fn converted(g: &gp::GenericProxy) -> Result<Vec<RpcRoute>, String> {
    dubbo_routes(&listener_msg("generic", g), &g.stat_prefix)
}

fn route_config(g: &mut gp::GenericProxy) -> &mut gp::RouteConfiguration {
    match g.route_specifier.as_mut() {
        Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) => rc,
        _ => unreachable!(),
    }
}

/// A route's match and target in one line, for comparing whole route lists.
fn show(r: &RpcRoute) -> String {
    let m = &r.match_;
    let mut parts = Vec::new();
    for (k, v) in [
        ("interface", &m.interface),
        ("method", &m.method),
        ("version", &m.version),
        ("group", &m.group),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    for (k, v) in &m.attachments {
        parts.push(format!("@{k}={v}"));
    }
    let to = if r.no_route {
        "NO ROUTE".to_string()
    } else {
        r.cluster.clone()
    };
    format!("{} -> {to}", parts.join(" "))
}

#[test]
fn virtual_hosts_and_match_trees_flatten_into_rpc_routes() {
    let routes = converted(&proxy_msg(("gold", "silver"))).unwrap();
    let got: Vec<String> = routes.iter().map(show).collect();
    assert_eq!(
        got,
        [
            format!("interface={SVC} method=echo group=g1 -> gold"),
            format!("interface={SVC} method=echo @lane=blue -> gold"),
            format!("interface={SVC} method=echo -> silver"),
            format!("interface={SVC} -> NO ROUTE"),
            format!("interface={OTHER} method=hello version=2.0 -> gold"),
            format!("interface={OTHER} -> NO ROUTE"),
            "method=hello -> silver".to_string(),
            "method=hi -> silver".to_string(),
        ]
    );
    // The action's name, retries (num_retries counts tries) and timeout (Envoy's 15s default).
    assert_eq!(routes[0].name, "greeter-g1");
    let r = routes[0].retries.unwrap();
    assert_eq!((r.attempts, r.idempotent), (1, false));
    assert_eq!(routes[0].timeout, Some(std::time::Duration::from_secs(15)));
    assert_eq!(routes[1].name, "greeter/route2");
    assert!(routes[1].retries.is_none());
    assert_eq!(routes[2].timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(routes[3].name, "greeter/no-route");

    // Without a default, a chosen virtual host needs no closing route: nothing is after it.
    let mut g = proxy_msg(("gold", "silver"));
    route_config(&mut g).routes = None;
    let got: Vec<String> = converted(&g).unwrap().iter().map(show).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|r| !r.contains("NO ROUTE")), "{got:?}");

    // A host whose last route takes all its calls is not closed; contradictions are dropped.
    let mut g = proxy_msg(("gold", "silver"));
    route_config(&mut g).virtual_hosts[1].routes = Some(list(vec![
        (
            and(vec![
                is(input("HostMatchInput"), THIRD),
                is(input("MethodMatchInput"), "x"),
            ]),
            to(route_action("gold")),
        ),
        (is(input("HostMatchInput"), OTHER), to(route_action("silver"))),
    ]));
    let got: Vec<String> = converted(&g).unwrap().iter().map(show).collect();
    assert_eq!(
        got[4..6],
        [
            format!("interface={OTHER} -> silver"),
            "method=hello -> silver".to_string()
        ]
    );
}

/// A change to the pushed proxy.
type Edit = dyn Fn(&mut gp::GenericProxy);

#[test]
fn what_weft_cannot_honour_is_refused_naming_the_field() {
    let tc = "filter_chains[0].filters[0].typed_config";
    let rc = format!("{tc}.route_config");
    let cases: Vec<(Box<Edit>, String)> = vec![
        (
            Box::new(|g| {
                g.codec_config.as_mut().unwrap().typed_config = Some(pack(
                    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs.http1.v3.Http1CodecConfig",
                    &weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::codecs::http1::v3::Http1CodecConfig::default(),
                ))
            }),
            format!("{tc}.codec_config: unsupported codec"),
        ),
        (
            Box::new(|g| {
                g.filters[0].typed_config = Some(pack(
                    ROUTER_URL,
                    &router::Router {
                        bind_upstream_connection: true,
                    },
                ))
            }),
            format!("{tc}.filters[0].typed_config.bind_upstream_connection: unsupported"),
        ),
        (
            Box::new(|g| {
                let r = g.filters[0].clone();
                g.filters.push(r);
            }),
            format!("{tc}.filters[0]: the router is terminal: it must be the last filter"),
        ),
        (
            Box::new(|g| g.filters.clear()),
            format!("{tc}.filters: a terminal filter is required"),
        ),
        (
            Box::new(|g| g.stat_prefix.clear()),
            format!("{tc}.stat_prefix: must not be empty"),
        ),
        (
            Box::new(|g| {
                g.route_specifier = Some(gp::generic_proxy::RouteSpecifier::GenericRds(gp::GenericRds {
                    config_source: Some(ads()),
                    route_config_name: "r".into(),
                }))
            }),
            format!("{tc}.generic_rds: unsupported"),
        ),
        (
            Box::new(|g| route_config(g).virtual_hosts[0].hosts.push("*.example.Other".into())),
            format!("{rc}.virtual_hosts[0].hosts[1]: wildcard host \"*.example.Other\" is not supported"),
        ),
        (
            Box::new(|g| route_config(g).virtual_hosts[1].hosts.push(SVC.into())),
            format!("{rc}.virtual_hosts[1].hosts[1]: host \"{SVC}\" appears twice"),
        ),
        (
            Box::new(|g| {
                let rc = route_config(g);
                rc.virtual_hosts[0].hosts.push("*".into());
            }),
            format!("{rc}.routes: cannot be given with a \"*\" virtual host"),
        ),
        (
            Box::new(|g| {
                route_config(g).virtual_hosts[0].routes = Some(list(vec![(
                    Predicate {
                        match_type: Some(pred::MatchType::NotMatcher(Box::new(is(input("MethodMatchInput"), "x")))),
                    },
                    to(route_action("gold")),
                )]))
            }),
            format!("{rc}.virtual_hosts[0].routes.matcher_list.matchers[0].predicate.not_matcher: unsupported"),
        ),
        (
            Box::new(|g| {
                route_config(g).routes = Some(list(vec![(is(property("lane"), ""), to(route_action("gold")))]))
            }),
            format!("{rc}.routes.matcher_list.matchers[0].predicate.single_predicate.value_match.exact: must not be empty"),
        ),
        (
            Box::new(|g| {
                let mut p = is(property("lane"), "x");
                if let Some(pred::MatchType::SinglePredicate(s)) = p.match_type.as_mut() {
                    s.matcher = Some(sp::Matcher::ValueMatch(xm::StringMatcher {
                        match_pattern: Some(xm::string_matcher::MatchPattern::SafeRegex(xm::RegexMatcher {
                            regex: ".*".into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }));
                }
                route_config(g).routes = Some(list(vec![(p, to(route_action("gold")))]))
            }),
            format!("{rc}.routes.matcher_list.matchers[0].predicate.single_predicate.value_match.safe_regex: safe_regex \".*\" matches any interface or method only"),
        ),
        (
            Box::new(|g| {
                let mut m = list(vec![(is(input("MethodMatchInput"), "x"), to(route_action("gold")))]);
                if let Some(MatcherType::MatcherList(l)) = m.matcher_type.as_mut() {
                    l.matchers[0].on_match.as_mut().unwrap().keep_matching = true;
                }
                route_config(g).routes = Some(m)
            }),
            format!("{rc}.routes.matcher_list.matchers[0].on_match.keep_matching: unsupported"),
        ),
        (
            Box::new(|g| {
                let mut a = route_action("gold");
                a.timeout = Some(PbDuration::default());
                route_config(g).routes = Some(list(vec![(is(input("MethodMatchInput"), "x"), to(a))]))
            }),
            format!("{rc}.routes.matcher_list.matchers[0].on_match.action.typed_config.timeout: 0 (no timeout) is unsupported"),
        ),
        (
            Box::new(|g| {
                let mut a = route_action("gold");
                a.retry_policy = Some(core::RetryPolicy {
                    num_retries: Some(UInt32Value { value: 9 }),
                    ..Default::default()
                });
                route_config(g).routes = Some(list(vec![(is(input("MethodMatchInput"), "x"), to(a))]))
            }),
            format!("{rc}.routes.matcher_list.matchers[0].on_match.action.typed_config.retry_policy.num_retries: 9 is out of range [1, 6]"),
        ),
        (
            Box::new(|g| {
                let mut a = route_action("gold");
                a.cluster_specifier = Some(action::route_action::ClusterSpecifier::WeightedClusters(
                    rt::WeightedCluster {
                        clusters: vec![
                            rt::weighted_cluster::ClusterWeight {
                                name: "gold".into(),
                                ..Default::default()
                            },
                            rt::weighted_cluster::ClusterWeight {
                                name: "silver".into(),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    },
                ));
                route_config(g).routes = Some(list(vec![(is(input("MethodMatchInput"), "x"), to(a))]))
            }),
            format!("{rc}.routes.matcher_list.matchers[0].on_match.action.typed_config.weighted_clusters: a split over several clusters is not supported"),
        ),
        (
            Box::new(|g| {
                use xm::matcher::matcher_tree::{MatchMap, TreeType};
                let mut m = tree(input("MethodMatchInput"), vec![]);
                if let Some(MatcherType::MatcherTree(t)) = m.matcher_type.as_mut() {
                    t.tree_type = Some(TreeType::PrefixMatchMap(MatchMap::default()));
                }
                route_config(g).routes = Some(m)
            }),
            format!("{rc}.routes.matcher_tree.prefix_match_map: unsupported"),
        ),
        (
            Box::new(|g| {
                let many = (0..1100).map(|i| is(input("MethodMatchInput"), &format!("m{i}"))).collect();
                route_config(g).routes = Some(list(vec![(or(many), to(route_action("gold")))]))
            }),
            format!("{rc}: the match trees flatten into more than 1024 routes"),
        ),
    ];
    for (i, (edit, want)) in cases.iter().enumerate() {
        let mut g = proxy_msg(("gold", "silver"));
        edit(&mut g);
        let err = converted(&g).expect_err(&format!("case {i} ({want}) was accepted"));
        assert!(err.contains(want.as_str()), "case {i}: want {want:?} in\n{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

/// `g` with a `not_matcher` in `Other`'s tree: valid for Envoy, which weft's routes cannot express.
fn with_not(mut g: gp::GenericProxy) -> gp::GenericProxy {
    route_config(&mut g).virtual_hosts[1].routes = Some(list(vec![(
        Predicate {
            match_type: Some(pred::MatchType::NotMatcher(Box::new(is(
                input("MethodMatchInput"),
                "bye",
            )))),
        },
        to(route_action("gold")),
    )]));
    g
}

/// The calls the pushed listener must route (`proxy_msg`): by property, by the request matcher,
/// by method, by version through an exact-match map, by the default routes, and those that match
/// no route, which neither weft nor Envoy sends to the default routes once a virtual host is
/// chosen. weft answers "no route" with Dubbo's `SERVICE_NOT_FOUND` (60); Envoy with its own
/// error status (`no_route` is `None` for it).
async fn check(addr: std::net::SocketAddr, no_route: Option<u16>) {
    assert_eq!(
        call(addr, SVC, "", "echo", "a", &[("group", "g1")]).await.unwrap(),
        "gold:echo:a"
    );
    assert_eq!(
        call(addr, SVC, "", "echo", "b", &[("lane", "blue")]).await.unwrap(),
        "gold:echo:b"
    );
    assert_eq!(call(addr, SVC, "", "echo", "c", &[]).await.unwrap(), "silver:echo:c");
    assert_eq!(
        call(addr, OTHER, "2.0", "hello", "d", &[]).await.unwrap(),
        "gold:hello:d"
    );
    assert_eq!(
        call(addr, THIRD, "", "hello", "e", &[]).await.unwrap(),
        "silver:hello:e"
    );
    assert_eq!(call(addr, THIRD, "", "hi", "f", &[]).await.unwrap(), "silver:hi:f");
    for (svc, version, m) in [
        (SVC, "", "hello"),
        (OTHER, "1.0", "hello"),
        (OTHER, "2.0", "bye"),
        (THIRD, "", "bye"),
    ] {
        let (status, msg) = call(addr, svc, version, m, "x", &[]).await.unwrap_err();
        match no_route {
            Some(want) => assert_eq!(status, want, "{svc} {version} {m}: {msg}"),
            None => assert_ne!(status, 20, "{svc} {version} {m}: {msg}"),
        }
    }
}

#[tokio::test]
async fn generic_proxy_pushed_over_xds_routes_calls_and_invalid_updates_are_nacked() {
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    push_gold_and_silver(&cp).await;
    let m = cp.mark();
    let good = listener_msg("generic", &proxy_msg(("gold", "silver")));
    cp.send_sotw(LISTENER, "l1", "n3", vec![pack(LISTENER, &good)]);
    let ack = cp.reply_to(m, "n3").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    p.wait_ready().await;
    let addr = p.wait_listener("generic").await;

    check(addr, Some(60)).await;

    // A not_matcher: NACKed naming the field; the last good config keeps serving.
    let m = cp.mark();
    let bad = listener_msg("generic", &with_not(proxy_msg(("gold", "silver"))));
    cp.send_sotw(LISTENER, "l2", "n4", vec![pack(LISTENER, &bad)]);
    let nack = cp.reply_to(m, "n4").await;
    let msg = nack.error().expect("NACK");
    assert!(
        msg.contains("listener \"generic\": filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[1].routes.matcher_list.matchers[0].predicate.not_matcher: unsupported"),
        "{msg}"
    );
    assert_eq!(nack.sotw().version_info, "l1", "NACK carries the last accepted version");
    assert_eq!(p.wait_listener("generic").await, addr);
    check(addr, Some(60)).await;

    // A valid update applies: the default routes now go to gold.
    let m = cp.mark();
    let moved = listener_msg("generic", &proxy_msg(("gold", "gold")));
    cp.send_sotw(LISTENER, "l3", "n5", vec![pack(LISTENER, &moved)]);
    assert!(cp.reply_to(m, "n5").await.error().is_none());
    let addr = p.wait_listener("generic").await;
    weft_test_support::eventually_ok("calls to follow the new routes", WAIT, || async {
        match call(addr, THIRD, "", "hi", "g", &[]).await {
            Ok(v) if v == "gold:hi:g" => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

/// The same resources, pushed the same way to Envoy 1.40 (its build has the contrib generic
/// proxy and Dubbo codec): it ACKs the listener and routes the same calls to the same providers,
/// and ACKs the variant weft refuses. Under `CI=true` a missing Envoy fails the test.
#[tokio::test]
async fn envoy_accepts_the_same_listener_and_routes_the_same_calls() {
    let cp = Cp::start().await;
    let Some(envoy) = Envoy::start(&cp, "envoy-generic-1").await else {
        return;
    };
    let listen = weft_test_support::free_addr();
    push_gold_and_silver(&cp).await;
    let l = listener_msg("generic", &proxy_msg(("gold", "silver")));
    envoy.accepts(&cp, l, listen, "l1").await;
    envoy.wait_bound(listen).await;
    check(listen, None).await;

    let l = listener_msg("generic", &with_not(proxy_msg(("gold", "silver"))));
    envoy.accepts(&cp, l, listen, "l2").await;
}
