//! Governance policies (active health checks, panic threshold, locality LB, HIGH priority circuit
//! breakers and routes, global rate limiting) over real ADS sockets: what the proxies receive, and
//! that invalid values are refused with field paths and never pushed.

mod common;

use common::*;
use std::time::Duration;
use weft_xds_api::pb::envoy::config::cluster::v3::{cluster::common_lb_config::LocalityConfigSpecifier, Cluster};
use weft_xds_api::pb::envoy::config::core::v3::{
    grpc_service::TargetSpecifier, health_check::HealthChecker, ApiVersion, RoutingPriority,
};
use weft_xds_api::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use weft_xds_api::pb::envoy::config::route::v3::{
    rate_limit::action::ActionSpecifier, route::Action, route_action::hash_policy::PolicySpecifier, RouteAction,
    RouteConfiguration,
};
use weft_xds_api::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use weft_xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, HCM, LISTENER, ROUTE};
use weft_xds_api::unpack;

const RLS_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const QUIET: Duration = Duration::from_millis(400);

const SERVICES: &str = r#"
services:
  - name: productpage
    endpoints: [{address: 127.0.0.1:9001}]
  - name: reviews
    port: 9080
    endpoints:
      - {address: 127.0.0.1:9081, locality: {region: eu, zone: eu-1}}
      - {address: 127.0.0.1:9082, locality: {region: eu, zone: eu-2}}
  - name: ratings
    protocol: grpc
    endpoints: [{address: 127.0.0.1:9091}]
  - name: ratelimit
    protocol: grpc
    endpoints: [{address: 127.0.0.1:8081}]
"#;

const POLICIES: &str = r#"
routes:
  - service: reviews
    http:
      - match: [{prefix: /admin}]
        route: [{destination: reviews}]
        priority: high
        rate_limits:
          - actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]
          - actions: [{remote_address: {}}, {generic_key: {descriptor_value: reviews-api}}]
      - match: [{prefix: /sticky}]
        route: [{destination: reviews}]
        hash: {cookie: {name: sticky, ttl: 1h, path: /}}
  - service: ratings
    http:
      - route: [{destination: ratings}]
        priority: high
        rate_limits: [{actions: [{generic_key: {descriptor_value: ratings, descriptor_key: svc}}]}]
destinations:
  - service: reviews
    panic_threshold: 25
    locality_lb: zone_aware
    connection_limits:
      max_requests: 10
      high_priority: {max_requests: 100, max_pending_requests: 5}
    health_checks:
      - interval: 2s
        interval_jitter: 100ms
        timeout: 500ms
        healthy_threshold: 2
        unhealthy_threshold: 4
        http: {path: /healthz, host: reviews.local, expected_statuses: ["200-299", 418]}
  - service: ratelimit
    health_checks: [{tcp: {}}]
  - service: ratings
    locality_lb: weighted
    health_checks: [{grpc: {service_name: ratings.v1.Ratings}}]
"#;

const RLS: &str = r#"
rate_limit_service:
  service: ratelimit
  domain: mesh
  timeout: 250ms
  failure_mode_deny: true
"#;

fn any_of(r: &DeltaDiscoveryResponse, name: &str) -> weft_xds_api::pb::google::protobuf::Any {
    r.resources
        .iter()
        .find(|x| x.name == name)
        .and_then(|x| x.resource.clone())
        .unwrap_or_else(|| panic!("no resource {name}"))
}

fn hcm_of(l: &Listener) -> HttpConnectionManager {
    if let Some(api) = &l.api_listener {
        return unpack(api.api_listener.as_ref().unwrap(), HCM).unwrap();
    }
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!("no typed config")
    };
    unpack(any, HCM).unwrap()
}

fn action(rc: &RouteConfiguration, vhost: &str, idx: usize) -> RouteAction {
    let vh = rc.virtual_hosts.iter().find(|v| v.name == vhost).unwrap();
    let Some(Action::Route(a)) = &vh.routes[idx].action else {
        panic!("route action")
    };
    a.clone()
}

fn filter_names(h: &HttpConnectionManager) -> Vec<&str> {
    h.http_filters.iter().map(|f| f.name.as_str()).collect()
}

#[tokio::test]
async fn governance_policies_become_standard_envoy_fields() {
    let dir = TempDir::new("control");
    dir.write("services.yaml", SERVICES);
    dir.write("policies.yaml", POLICIES);
    dir.write("mesh.yaml", RLS);
    let cp = start(&dir).await;
    let mut d = Delta::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;

    d.subscribe(CLUSTER, &[], &[]).await;
    let cds = d.expect().await;
    d.ack(&cds).await;
    let reviews: Cluster = unpack(&any_of(&cds, "reviews"), CLUSTER).unwrap();
    assert_eq!(reviews.health_checks.len(), 1);
    let hc = &reviews.health_checks[0];
    assert_eq!(hc.interval.unwrap().seconds, 2);
    assert_eq!(hc.interval_jitter.unwrap().nanos, 100_000_000);
    assert_eq!(hc.timeout.unwrap().nanos, 500_000_000);
    assert_eq!(hc.healthy_threshold.unwrap().value, 2);
    assert_eq!(hc.unhealthy_threshold.unwrap().value, 4);
    let Some(HealthChecker::HttpHealthCheck(h)) = &hc.health_checker else {
        panic!("http check: {hc:?}")
    };
    assert_eq!((h.path.as_str(), h.host.as_str()), ("/healthz", "reviews.local"));
    let ranges: Vec<(i64, i64)> = h.expected_statuses.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(ranges, [(200, 300), (418, 419)], "half-open ranges");
    let rl: Cluster = unpack(&any_of(&cds, "ratelimit"), CLUSTER).unwrap();
    assert!(matches!(
        rl.health_checks[0].health_checker,
        Some(HealthChecker::TcpHealthCheck(_))
    ));
    // Envoy requires these four on every health check: defaults fill them in.
    let tcp = &rl.health_checks[0];
    assert!(tcp.interval.is_some() && tcp.timeout.is_some());
    assert_eq!(tcp.unhealthy_threshold.unwrap().value, 3);
    assert_eq!(tcp.healthy_threshold.unwrap().value, 1);
    let lb = reviews.common_lb_config.as_ref().unwrap();
    assert_eq!(lb.healthy_panic_threshold.as_ref().unwrap().value, 25.0);
    assert!(matches!(
        lb.locality_config_specifier,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_))
    ));
    let cb = reviews.circuit_breakers.as_ref().unwrap();
    assert_eq!(cb.thresholds.len(), 2);
    assert_eq!(cb.thresholds[0].priority, RoutingPriority::Default as i32);
    assert_eq!(cb.thresholds[0].max_requests.unwrap().value, 10);
    assert_eq!(cb.thresholds[1].priority, RoutingPriority::High as i32);
    assert_eq!(cb.thresholds[1].max_requests.unwrap().value, 100);
    assert_eq!(cb.thresholds[1].max_pending_requests.unwrap().value, 5);
    let ratings: Cluster = unpack(&any_of(&cds, "ratings"), CLUSTER).unwrap();
    let Some(HealthChecker::GrpcHealthCheck(g)) = &ratings.health_checks[0].health_checker else {
        panic!("grpc check")
    };
    assert_eq!(g.service_name, "ratings.v1.Ratings");
    let lb = ratings.common_lb_config.as_ref().unwrap();
    assert!(lb.healthy_panic_threshold.is_none());
    assert!(matches!(
        lb.locality_config_specifier,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));
    // No panic threshold or locality policy, no common_lb_config.
    assert!(rl.common_lb_config.is_none() && rl.circuit_breakers.is_none());
    let pp: Cluster = unpack(&any_of(&cds, "productpage"), CLUSTER).unwrap();
    assert!(pp.health_checks.is_empty());

    d.subscribe(LISTENER, &[], &[]).await;
    let lds = d.expect().await;
    d.ack(&lds).await;
    let outbound: Listener = unpack(&any_of(&lds, "outbound"), LISTENER).unwrap();
    let h = hcm_of(&outbound);
    assert_eq!(
        filter_names(&h),
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.router"
        ]
    );
    let f = &h.http_filters[2];
    assert!(!f.is_optional, "a rate limit filter that must work is not optional");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("typed config")
    };
    let rl: RateLimitFilter = unpack(any, RLS_URL).unwrap();
    assert_eq!(rl.domain, "mesh");
    assert!(rl.failure_mode_deny);
    assert_eq!(rl.timeout.unwrap().nanos, 250_000_000);
    let svc = rl.rate_limit_service.unwrap();
    assert_eq!(svc.transport_api_version, ApiVersion::V3 as i32);
    let Some(TargetSpecifier::EnvoyGrpc(g)) = svc.grpc_service.unwrap().target_specifier else {
        panic!("envoy_grpc")
    };
    assert_eq!(g.cluster_name, "ratelimit", "the service's EDS cluster");
    // Inbound traffic is not limited here: its route table has no rate_limits.
    let inbound: Listener = unpack(&any_of(&lds, "inbound|productpage"), LISTENER).unwrap();
    assert!(!filter_names(&hcm_of(&inbound)).contains(&"envoy.filters.http.ratelimit"));

    d.subscribe(ROUTE, &["outbound"], &[]).await;
    let rds = d.expect().await;
    d.ack(&rds).await;
    let rc: RouteConfiguration = unpack(&any_of(&rds, "outbound"), ROUTE).unwrap();
    let a = action(&rc, "reviews", 0);
    assert_eq!(a.priority, RoutingPriority::High as i32);
    assert_eq!(a.rate_limits.len(), 2);
    match &a.rate_limits[0].actions[0].action_specifier {
        Some(ActionSpecifier::RequestHeaders(r)) => {
            assert_eq!((r.header_name.as_str(), r.descriptor_key.as_str()), ("x-user", "user"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.rate_limits[1].actions[0].action_specifier,
        Some(ActionSpecifier::RemoteAddress(_))
    ));
    match &a.rate_limits[1].actions[1].action_specifier {
        Some(ActionSpecifier::GenericKey(g)) => {
            assert_eq!(
                (g.descriptor_value.as_str(), g.descriptor_key.as_str()),
                ("reviews-api", "")
            )
        }
        other => panic!("{other:?}"),
    }
    // A cookie hash: Envoy's hash_policy.cookie with its ttl and path.
    let sticky = action(&rc, "reviews", 1);
    let [hp] = &sticky.hash_policy[..] else {
        panic!("{:?}", sticky.hash_policy)
    };
    let Some(PolicySpecifier::Cookie(c)) = &hp.policy_specifier else {
        panic!("{hp:?}")
    };
    assert_eq!((c.name.as_str(), c.path.as_str()), ("sticky", "/"));
    assert_eq!(c.ttl.unwrap().seconds, 3600);
    assert!(c.attributes.is_empty());
    // The catch-all route stays at default priority without limits.
    let last = action(&rc, "reviews", 2);
    assert!(last.priority == 0 && last.rate_limits.is_empty());

    // A proxyless gRPC client: its API listener gets neither the filter nor the route fields.
    let mut g = Delta::connect(cp.xds_addr(), node("grpc-1", "", &[])).await;
    g.subscribe(LISTENER, &["ratings"], &[]).await;
    let glds = g.expect().await;
    let api: Listener = unpack(&any_of(&glds, "ratings"), LISTENER).unwrap();
    let h = hcm_of(&api);
    assert_eq!(
        filter_names(&h),
        ["envoy.filters.http.fault", "envoy.filters.http.router"]
    );
    let Some(RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!("inline routes")
    };
    let a = action(rc, "ratings", 0);
    assert!(a.priority == 0 && a.rate_limits.is_empty(), "{a:?}");

    // Removing the rate limit service: the outbound listener loses the filter and the routes lose
    // their descriptors, so no route names a service that is gone.
    dir.write("policies.yaml", &POLICIES.replace("rate_limits:", "x_rate_limits:"));
    // (that file is invalid: unknown field; nothing is pushed)
    assert!(d.recv(QUIET).await.is_none());
    let no_limits = POLICIES
        .lines()
        .filter(|l| !l.contains("rate_limits") && !l.contains("- actions:"))
        .collect::<Vec<_>>()
        .join("\n");
    dir.write("policies.yaml", &no_limits);
    dir.remove("mesh.yaml");
    let mut got_listener = false;
    let mut got_routes = false;
    while !(got_listener && got_routes) {
        let r = d.expect().await;
        d.ack(&r).await;
        if r.type_url == LISTENER {
            if let Some(x) = r.resources.iter().find(|x| x.name == "outbound") {
                let l: Listener = unpack(x.resource.as_ref().unwrap(), LISTENER).unwrap();
                let names = filter_names(&hcm_of(&l)).join(",");
                if !names.contains("envoy.filters.http.ratelimit,") {
                    got_listener = true;
                }
            }
        }
        if r.type_url == ROUTE {
            if let Some(x) = r.resources.iter().find(|x| x.name == "outbound") {
                let rc: RouteConfiguration = unpack(x.resource.as_ref().unwrap(), ROUTE).unwrap();
                let a = action(&rc, "reviews", 0);
                assert_eq!(a.priority, RoutingPriority::High as i32);
                got_routes = a.rate_limits.is_empty();
            }
        }
    }
    // And adding it back while connected puts the filter back on the outbound listener.
    dir.write("mesh.yaml", RLS);
    loop {
        let r = d.expect().await;
        d.ack(&r).await;
        if r.type_url == LISTENER {
            let l: Listener = unpack(&any_of(&r, "outbound"), LISTENER).unwrap();
            assert!(filter_names(&hcm_of(&l)).contains(&"envoy.filters.http.ratelimit"));
            break;
        }
    }
    cp.stop().await;
}

#[tokio::test]
async fn invalid_governance_policies_are_rejected_with_field_paths_and_not_pushed() {
    let dir = TempDir::new("control");
    dir.write("services.yaml", SERVICES);
    dir.write("policies.yaml", POLICIES);
    dir.write("mesh.yaml", RLS);
    let cp = start(&dir).await;
    let mut d = Delta::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;
    for (t, names) in [(CLUSTER, vec![]), (LISTENER, vec![]), (ROUTE, vec!["outbound"])] {
        d.subscribe(t, &names, &[]).await;
        let r = d.expect().await;
        d.ack(&r).await;
    }
    assert!(d.recv(QUIET).await.is_none());

    let bad = r#"
routes:
  - service: productpage
    http:
      - route: [{destination: productpage}]
        priority: urgent
        rate_limits:
          - actions: []
          - actions: [{remote_address: {}, generic_key: {descriptor_value: x}}]
          - actions: [{request_headers: {header_name: X-User, descriptor_key: ""}}]
          - actions: [{generic_key: {descriptor_value: ""}}]
destinations:
  - service: productpage
    panic_threshold: 150
    locality_lb: nearest
    health_checks:
      - {interval: 1ms, timeout: 0s, healthy_threshold: 0, http: {path: healthz, expected_statuses: ["99", "300-200", "abc"]}}
      - {tcp: {}, http: {}}
      - {}
      - grpc: {}
"#;
    dir.write("bad.yaml", bad);
    let rls_bad = "rate_limit_service: {service: productpage, domain: \"\", timeout: nope}\n";
    dir.write("mesh.yaml", rls_bad);
    let admin = cp.admin_addr().unwrap();
    let body = weft_test_support::eventually("bad.yaml and mesh.yaml to be reported", T, || async {
        let body = http_get(admin, "/debug/registry").await.1;
        (body.contains("bad.yaml") && body.contains("mesh.yaml")).then_some(body)
    })
    .await;
    for want in [
        "bad.yaml: routes[0].http[0].priority: unknown value",
        "bad.yaml: routes[0].http[0].rate_limits[0].actions: needs at least one action",
        "bad.yaml: routes[0].http[0].rate_limits[1].actions[0]: give exactly one of",
        "bad.yaml: routes[0].http[0].rate_limits[2].actions[0].request_headers.header_name",
        "bad.yaml: routes[0].http[0].rate_limits[2].actions[0].request_headers.descriptor_key",
        "bad.yaml: routes[0].http[0].rate_limits[3].actions[0].generic_key.descriptor_value",
        "bad.yaml: destinations[0].panic_threshold: 150 is not a percentage",
        "bad.yaml: destinations[0].locality_lb: unknown locality_lb",
        "bad.yaml: destinations[0].health_checks[0].interval: must be at least 10ms",
        "bad.yaml: destinations[0].health_checks[0].timeout: must be more than 0",
        "bad.yaml: destinations[0].health_checks[0].healthy_threshold: must be 1..1000",
        "bad.yaml: destinations[0].health_checks[0].http.path: must start with '/'",
        "bad.yaml: destinations[0].health_checks[0].http.expected_statuses[0]",
        "bad.yaml: destinations[0].health_checks[0].http.expected_statuses[1]",
        "bad.yaml: destinations[0].health_checks[0].http.expected_statuses[2]",
        "bad.yaml: destinations[0].health_checks[1]: give exactly one of http, tcp, grpc",
        "bad.yaml: destinations[0].health_checks[1]: at most one health check per destination",
        "bad.yaml: destinations[0].health_checks[2]: give exactly one of http, tcp, grpc",
        "mesh.yaml: rate_limit_service.domain: must not be empty",
        "mesh.yaml: rate_limit_service.timeout",
    ] {
        assert!(body.contains(want), "missing {want:?} in {body}");
    }
    assert!(d.recv(QUIET).await.is_none(), "nothing invalid is pushed");

    // Reference errors: the rate limit service must be a registered gRPC service, rate_limits need
    // one, and gRPC health checks need an HTTP/2 (grpc) service.
    dir.write(
        "bad.yaml",
        "destinations: [{service: productpage, health_checks: [{grpc: {}}]}]\n",
    );
    dir.write(
        "mesh.yaml",
        "rate_limit_service: {service: productpage, domain: mesh}\n",
    );
    let body = weft_test_support::eventually("the rate limit service errors to be reported", T, || async {
        let body = http_get(admin, "/debug/registry").await.1;
        (body.contains("must be protocol grpc") && body.contains("need an HTTP/2")).then_some(body)
    })
    .await;
    assert!(
        body.contains("mesh.yaml: rate_limit_service.service: service \\\"productpage\\\" must be protocol grpc"),
        "{body}"
    );
    assert!(
        body.contains("bad.yaml: destinations[0].health_checks[0].grpc: gRPC health checks need an HTTP/2"),
        "{body}"
    );
    assert!(d.recv(QUIET).await.is_none(), "nothing invalid is pushed");
    cp.stop().await;
}

#[test]
fn rate_limits_without_a_rate_limit_service_name_the_field() {
    let f = weft_control::model::parse_fragment(
        "p.yaml",
        "services: [{name: a, endpoints: []}]\nroutes: [{service: a, http: [{route: [{destination: a}], rate_limits: [{actions: [{remote_address: {}}]}]}]}]\n",
    )
    .unwrap();
    let (_, errs) = weft_control::model::World::build([("p.yaml", &f)].into_iter());
    let all = errs["p.yaml"].join("\n");
    assert!(
        all.contains("p.yaml: routes[0].http[0].rate_limits: needs a rate_limit_service"),
        "{all}"
    );
    // Two files defining it is an error too.
    let a = weft_control::model::parse_fragment(
        "a.yaml",
        "services: [{name: rls, protocol: grpc, endpoints: []}]\nrate_limit_service: {service: rls, domain: d}\n",
    )
    .unwrap();
    let b = weft_control::model::parse_fragment("b.yaml", "rate_limit_service: {service: rls, domain: e}\n").unwrap();
    let (w, errs) = weft_control::model::World::build([("a.yaml", &a), ("b.yaml", &b)].into_iter());
    assert!(errs["b.yaml"][0].contains("rate_limit_service: block \"rate_limit_service\" is already defined in a.yaml"));
    assert_eq!(w.rate_limit_service.unwrap().domain, "d");
}

/// Every resource weft control emits, for sidecars and proxyless gRPC clients alike, passes the
/// Envoy API's validation rules as weft's xDS client applies them (`weft_xds_client::pgv`).
#[test]
fn every_emitted_resource_passes_the_api_validation_rules() {
    use weft_control::translate::{build_snapshot, node_resources, Kind, NodeInfo};
    use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use weft_xds_client::pgv;
    let extra = r#"
routes:
  - service: productpage
    http:
      - match: [{prefix: /x, headers: {x-a: {exact: b}, x-c: {regex: "^d"}}}]
        route: [{destination: productpage}]
        retries: {attempts: 3, per_try_timeout: 1s, retry_on: [5xx]}
        timeout: 2s
        fault: {abort: {http_status: 503, percent: 10}, delay: {fixed: 1s, percent: 5}}
        mirror: {destination: productpage, percent: 10}
        rate_limit: {requests: 100, per: 1s, burst: 200}
        hash: {header: x-user}
destinations:
  - service: productpage
    lb: least_request
    outlier_detection: {consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50}
"#;
    let fragments: Vec<(&str, weft_control::model::Fragment)> = [
        ("services.yaml", SERVICES),
        ("policies.yaml", POLICIES),
        ("mesh.yaml", RLS),
        ("extra.yaml", extra),
    ]
    .into_iter()
    .map(|(n, y)| (n, weft_control::model::parse_fragment(n, y).unwrap()))
    .collect();
    let (world, errors) = weft_control::model::World::build(fragments.iter().map(|(n, f)| (*n, f)));
    assert!(errors.is_empty(), "{errors:?}");
    let snap = build_snapshot(1, std::sync::Arc::new(world), None);
    let node = NodeInfo::from_node(&sidecar("pp-1", "productpage"));
    let own = node_resources(
        &node,
        weft_control::translate::active_rls(&snap.world),
        None,
        None,
        None,
        Default::default(),
        &Default::default(),
    );
    let mut checked = 0;
    let all = snap.maps.iter().enumerate().chain(own.maps.iter().enumerate());
    let all = all.map(|(i, m)| (i, m.values().cloned().collect::<Vec<_>>())).chain([
        (Kind::Listener as usize, snap.api_listeners.values().cloned().collect()),
        (Kind::Cluster as usize, snap.grpc_clusters.values().cloned().collect()),
    ]);
    for (i, list) in all {
        for r in list {
            let errs = if i == Kind::Listener as usize {
                pgv::listener(&unpack(&r.any, LISTENER).unwrap())
            } else if i == Kind::Route as usize {
                pgv::route_configuration(&unpack(&r.any, ROUTE).unwrap())
            } else if i == Kind::Cluster as usize {
                pgv::cluster(&unpack(&r.any, CLUSTER).unwrap())
            } else {
                pgv::load_assignment(&unpack::<ClusterLoadAssignment>(&r.any, ENDPOINT).unwrap())
            };
            assert!(errs.is_empty(), "type {i} {}: {errs:?}", r.name);
            checked += 1;
        }
    }
    assert!(checked >= 19, "{checked}");
}
