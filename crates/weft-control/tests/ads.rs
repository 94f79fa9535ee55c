//! ADS over real sockets: a control plane on 127.0.0.1:0 fed by a temporary registry directory,
//! driven by fake sidecars (SotW and Delta) and a gRPC-style proxyless client.

mod common;

use common::*;
use std::time::{Duration, Instant};
use weft_xds_api::pb::envoy::config::cluster::v3::Cluster;
use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds_api::pb::envoy::config::listener::v3::Listener;
use weft_xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, HCM, LISTENER, ROUTE};
use weft_xds_api::unpack;

const QUIET: Duration = Duration::from_millis(400);

const SERVICES: &str = r#"
services:
  - name: productpage
    port: 9080
    endpoints:
      - {address: 127.0.0.1:9001}
  - name: reviews
    port: 9080
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}, locality: {region: eu, zone: eu-1}}
      - {address: 127.0.0.1:9082, weight: 3, labels: {version: v2}, locality: {region: eu, zone: eu-2}}
  - name: ratings
    protocol: grpc
    endpoints:
      - {address: 127.0.0.1:9091}
      - {address: 127.0.0.1:9092}
"#;

const POLICIES: &str = r#"
routes:
  - service: reviews
    http:
      - match: [{prefix: /api, method: GET, headers: {x-user: {exact: bob}}}]
        route: [{destination: reviews, subset: v2, weight: 90}, {destination: reviews, subset: v1, weight: 10}]
        retries: {attempts: 3, per_try_timeout: 1s, retry_on: [5xx, connect-failure]}
        timeout: 2s
        fault: {abort: {http_status: 503, percent: 10}, delay: {fixed: 1s, percent: 5}}
        mirror: {destination: reviews, subset: v1, percent: 10}
destinations:
  - service: reviews
    lb: least_request
    connection_limits: {max_connections: 100, max_pending_requests: 50, max_requests: 200, max_retries: 3}
    outlier_detection: {consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50}
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

fn registry() -> TempDir {
    let d = TempDir::new("control");
    d.write("services.yaml", SERVICES);
    d.write("policies.yaml", POLICIES);
    d
}

const ALL_CLUSTERS: [&str; 5] = ["productpage", "ratings", "reviews", "reviews|v1", "reviews|v2"];

#[tokio::test]
async fn sotw_sidecar_initial_push_and_ack_stops_resends() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("productpage-1", "productpage")).await;

    c.request(CLUSTER, &[]).await;
    let cds = c.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    let mut want: Vec<String> = ALL_CLUSTERS.iter().map(|s| s.to_string()).collect();
    want.push("inbound|productpage".into());
    want.sort();
    assert_eq!(names_of_any(&cds.resources, CLUSTER), want);
    let reviews: Cluster = cds
        .resources
        .iter()
        .map(|a| unpack::<Cluster>(a, CLUSTER).unwrap())
        .find(|c| c.name == "reviews")
        .unwrap();
    assert_eq!(reviews.lb_policy, 1, "least_request");
    assert_eq!(reviews.eds_cluster_config.as_ref().unwrap().service_name, "reviews");
    assert!(reviews.circuit_breakers.is_some() && reviews.outlier_detection.is_some());
    c.ack(&cds, &[]).await;

    c.request(ENDPOINT, &ALL_CLUSTERS).await;
    let eds = c.expect().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(names_of_any(&eds.resources, ENDPOINT), ALL_CLUSTERS);
    let cla: ClusterLoadAssignment = eds
        .resources
        .iter()
        .map(|a| unpack::<ClusterLoadAssignment>(a, ENDPOINT).unwrap())
        .find(|c| c.cluster_name == "reviews")
        .unwrap();
    assert_eq!(cla.endpoints.len(), 2, "two localities");
    for loc in &cla.endpoints {
        assert!(loc.load_balancing_weight.unwrap().value > 0);
        for e in &loc.lb_endpoints {
            assert!(e.load_balancing_weight.unwrap().value > 0);
            let md = &e.metadata.as_ref().unwrap().filter_metadata["envoy.lb"];
            assert!(md.fields.contains_key("version"));
        }
    }
    let v2: ClusterLoadAssignment = eds
        .resources
        .iter()
        .map(|a| unpack::<ClusterLoadAssignment>(a, ENDPOINT).unwrap())
        .find(|c| c.cluster_name == "reviews|v2")
        .unwrap();
    assert_eq!(v2.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 1);
    c.ack(&eds, &ALL_CLUSTERS).await;

    c.request(LISTENER, &[]).await;
    let lds = c.expect().await;
    assert_eq!(
        names_of_any(&lds.resources, LISTENER),
        ["inbound|productpage", "outbound"]
    );
    for a in &lds.resources {
        let l: Listener = unpack(a, LISTENER).unwrap();
        let f = &l.filter_chains[0].filters[0];
        let Some(weft_xds_api::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) = &f.config_type
        else {
            panic!("no typed config")
        };
        let hcm: HttpConnectionManager = unpack(any, HCM).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!("rds")
        };
        assert_eq!(rds.route_config_name, l.name);
        assert_eq!(hcm.http_filters.last().unwrap().name, "envoy.filters.http.router");
        assert_eq!(hcm.http_filters[0].name, "envoy.filters.http.fault");
    }
    c.ack(&lds, &[]).await;

    c.request(ROUTE, &["outbound", "inbound|productpage"]).await;
    let rds = c.expect().await;
    assert_eq!(names_of_any(&rds.resources, ROUTE), ["inbound|productpage", "outbound"]);
    let out: RouteConfiguration = rds
        .resources
        .iter()
        .map(|a| unpack::<RouteConfiguration>(a, ROUTE).unwrap())
        .find(|r| r.name == "outbound")
        .unwrap();
    let vh = out.virtual_hosts.iter().find(|v| v.name == "reviews").unwrap();
    assert_eq!(vh.domains, ["reviews", "reviews:9080"]);
    let first = &vh.routes[0];
    assert!(first.typed_per_filter_config.contains_key("envoy.filters.http.fault"));
    let Some(weft_xds_api::pb::envoy::config::route::v3::route::Action::Route(a)) = &first.action else {
        panic!("route action")
    };
    assert!(a.retry_policy.is_some() && a.timeout.is_some() && !a.request_mirror_policies.is_empty());
    // Routes without retries of their own (here: the catch-all of a service without routes) retry
    // what the app cannot have seen: a failed connection, twice.
    let vh = out.virtual_hosts.iter().find(|v| v.name == "ratings").unwrap();
    let Some(weft_xds_api::pb::envoy::config::route::v3::route::Action::Route(a)) = &vh.routes.last().unwrap().action
    else {
        panic!("route action")
    };
    let p = a.retry_policy.as_ref().expect("a default retry policy");
    assert_eq!(p.retry_on, "connect-failure");
    assert_eq!(p.num_retries.as_ref().unwrap().value, 2);
    c.ack(&rds, &["outbound", "inbound|productpage"]).await;

    // ACKed everything: nothing more is sent.
    assert!(c.recv(QUIET).await.is_none());
    cp.stop().await;
}

async fn delta_sidecar_synced(cp: &weft_control::ControlPlane, id: &str) -> Delta {
    let mut d = Delta::connect(cp.xds_addr(), sidecar(id, "productpage")).await;
    d.subscribe(CLUSTER, &[], &[]).await;
    let cds = d.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.resources.len(), 6);
    d.ack(&cds).await;
    d.subscribe(ENDPOINT, &ALL_CLUSTERS, &[]).await;
    let eds = d.expect().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(eds.resources.len(), 5);
    for r in &eds.resources {
        assert_eq!(r.version.len(), 16);
    }
    d.ack(&eds).await;
    d.subscribe(LISTENER, &[], &[]).await;
    let lds = d.expect().await;
    d.ack(&lds).await;
    d.subscribe(ROUTE, &["outbound"], &[]).await;
    let rds = d.expect().await;
    d.ack(&rds).await;
    assert!(d.recv(Duration::from_millis(200)).await.is_none());
    d
}

#[tokio::test]
async fn delta_one_endpoint_change_sends_one_cla_per_client() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut a = delta_sidecar_synced(&cp, "pp-1").await;
    let mut b = delta_sidecar_synced(&cp, "pp-2").await;

    let started = Instant::now();
    dir.write("services.yaml", &SERVICES.replace("127.0.0.1:9092", "127.0.0.1:9093"));
    for c in [&mut a, &mut b] {
        let r = c.expect().await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(r.type_url, ENDPOINT);
        assert_eq!(r.resources.len(), 1);
        assert_eq!(r.resources[0].name, "ratings");
        assert!(r.removed_resources.is_empty());
        c.ack(&r).await;
    }
    for c in [&mut a, &mut b] {
        assert!(c.recv(QUIET).await.is_none(), "nothing but the one CLA");
    }
    cp.stop().await;
}

#[tokio::test]
async fn delta_removing_a_service_sends_removed_resources() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut d = delta_sidecar_synced(&cp, "pp-1").await;
    let without = SERVICES.replace(
        "  - name: ratings\n    protocol: grpc\n    endpoints:\n      - {address: 127.0.0.1:9091}\n      - {address: 127.0.0.1:9092}\n",
        "",
    );
    assert_ne!(without, SERVICES);
    dir.write("services.yaml", &without);
    let cds = d.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.removed_resources, ["ratings"]);
    assert!(cds.resources.is_empty());
    d.ack(&cds).await;
    let eds = d.expect().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(eds.removed_resources, ["ratings"]);
    d.ack(&eds).await;
    let rds = d.expect().await;
    assert_eq!(rds.type_url, ROUTE, "outbound loses the ratings virtual host");
    assert_eq!(rds.resources[0].name, "outbound");
    cp.stop().await;
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_gets_only_the_difference() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut d = Delta::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;
    d.subscribe(ENDPOINT, &ALL_CLUSTERS, &[]).await;
    let eds = d.expect().await;
    let versions: Vec<(String, String)> = eds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    d.ack(&eds).await;
    drop(d);

    dir.write("services.yaml", &SERVICES.replace("127.0.0.1:9001", "127.0.0.1:9002"));
    // Wait until the control plane has published the change.
    let gen0 = cp.registry_status.lock().unwrap().generation;
    weft_test_support::eventually("the registry change to be published", T, || async {
        (cp.registry_status.lock().unwrap().generation > gen0).then_some(())
    })
    .await;

    let mut d = Delta::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;
    d.subscribe(ENDPOINT, &ALL_CLUSTERS, &versions).await;
    let r = d.expect().await;
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, "productpage");
    d.ack(&r).await;
    assert!(d.recv(QUIET).await.is_none());
    cp.stop().await;
}

#[tokio::test]
async fn nack_is_recorded_and_not_resent() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("reviews-7", "reviews")).await;
    c.request(CLUSTER, &[]).await;
    let cds = c.expect().await;
    c.nack(&cds, &[], "cluster \"reviews\": lb_policy: unsupported value 7")
        .await;
    assert!(c.recv(QUIET).await.is_none(), "a NACKed response is not resent");
    let (status, body) = http_get(cp.admin_addr().unwrap(), "/debug/proxies").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = &v["proxies"][0];
    assert_eq!(p["node_id"], "reviews-7");
    assert_eq!(p["stream"], "sotw");
    assert_eq!(p["types"]["cds"]["nacks"], 1);
    assert!(p["types"]["cds"]["last_nack"]
        .as_str()
        .unwrap()
        .contains("unsupported value 7"));
    let (status, body) = http_get(cp.admin_addr().unwrap(), "/debug/config/reviews-7").await;
    assert_eq!(status, 200);
    assert!(body.contains("inbound|reviews"), "{body}");
    let (_, metrics) = http_get(cp.admin_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("weft_control_nacks_total{type=\"cds\"} 1"),
        "{metrics}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn invalid_policy_file_is_rejected_reported_and_not_pushed() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut d = delta_sidecar_synced(&cp, "pp-1").await;
    // Unknown subset: the whole file is rejected, its previous content stays in effect.
    dir.write(
        "policies.yaml",
        &POLICIES.replace("subset: v2, weight: 90", "subset: v9, weight: 90"),
    );
    let admin = cp.admin_addr().unwrap();
    let reported = weft_test_support::eventually("the bad subset to be reported", T, || async {
        let (_, body) = http_get(admin, "/debug/registry").await;
        body.contains("v9").then_some(body)
    })
    .await;
    assert!(
        reported.contains("policies.yaml: routes[0].http[0].route[0].subset: unknown subset \\\"v9\\\""),
        "{reported}"
    );
    assert!(d.recv(QUIET).await.is_none(), "nothing invalid is pushed");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(metrics.contains("weft_control_registry_errors_total 1"), "{metrics}");
    // A YAML syntax error is rejected the same way.
    dir.write("policies.yaml", "routes: [unclosed");
    // The control plane has read and rejected it once it counts a second registry error; only
    // then does "nothing is pushed" mean something.
    weft_test_support::eventually("the syntax error to be counted", T, || async {
        let (_, metrics) = http_get(admin, "/metrics").await;
        metrics.contains("weft_control_registry_errors_total 2").then_some(())
    })
    .await;
    assert!(d.recv(QUIET).await.is_none());
    // Fixing the file applies it.
    dir.write("policies.yaml", &POLICIES.replace("weight: 90", "weight: 80"));
    let r = d.expect().await;
    assert_eq!(r.type_url, ROUTE);
    let (_, body) = http_get(admin, "/debug/registry").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["errors"].as_object().unwrap().is_empty(), "{body}");
    cp.stop().await;
}

#[tokio::test]
async fn grpc_client_gets_api_listener_by_exact_name() {
    let dir = registry();
    let cp = start(&dir).await;
    // A proxyless gRPC client: no cluster, no weft metadata, asks for `xds:///ratings`.
    let mut c = Sotw::connect(cp.xds_addr(), node("grpc-client-1", "", &[])).await;
    c.request(LISTENER, &["ratings"]).await;
    let lds = c.expect().await;
    assert_eq!(names_of_any(&lds.resources, LISTENER), ["ratings"]);
    let l: Listener = unpack(&lds.resources[0], LISTENER).unwrap();
    let hcm: HttpConnectionManager = unpack(l.api_listener.unwrap().api_listener.as_ref().unwrap(), HCM).unwrap();
    assert_eq!(hcm.http_filters.last().unwrap().name, "envoy.filters.http.router");
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("inline route config")
    };
    assert_eq!(rc.virtual_hosts[0].domains[0], "ratings");
    c.ack(&lds, &["ratings"]).await;
    c.request(CLUSTER, &["ratings"]).await;
    let cds = c.expect().await;
    assert_eq!(names_of_any(&cds.resources, CLUSTER), ["ratings"]);
    c.ack(&cds, &["ratings"]).await;
    c.request(ENDPOINT, &["ratings"]).await;
    let eds = c.expect().await;
    let cla: ClusterLoadAssignment = unpack(&eds.resources[0], ENDPOINT).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
    c.ack(&eds, &["ratings"]).await;
    assert!(c.recv(QUIET).await.is_none());
    cp.stop().await;
}

#[tokio::test]
async fn sotw_cds_change_resends_eds_for_changed_clusters() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;
    c.request(CLUSTER, &[]).await;
    let cds = c.expect().await;
    c.ack(&cds, &[]).await;
    c.request(ENDPOINT, &ALL_CLUSTERS).await;
    let eds = c.expect().await;
    c.ack(&eds, &ALL_CLUSTERS).await;
    assert!(c.recv(Duration::from_millis(200)).await.is_none());
    // Changing the destination policy changes clusters reviews, reviews|v1, reviews|v2 only.
    dir.write(
        "policies.yaml",
        &POLICIES.replace("max_connections: 100", "max_connections: 101"),
    );
    let cds = c.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.resources.len(), 6, "SotW CDS carries the full set");
    let eds = c.expect().await;
    assert_eq!(eds.type_url, ENDPOINT, "fresh EDS after CDS so Envoy can warm");
    assert_eq!(
        names_of_any(&eds.resources, ENDPOINT),
        ["reviews", "reviews|v1", "reviews|v2"]
    );
    cp.stop().await;
}

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_explicit_wildcard() {
    let dir = registry();
    let cp = start(&dir).await;
    let mut d = Delta::connect(cp.xds_addr(), node("grpc-like", "", &[])).await;
    // Explicit "*" is a wildcard: every cluster (this node has no inbound cluster).
    d.subscribe(CLUSTER, &["*"], &[]).await;
    let cds = d.expect().await;
    assert_eq!(cds.resources.len(), ALL_CLUSTERS.len());
    d.ack(&cds).await;
    d.subscribe(ENDPOINT, &["ratings"], &[]).await;
    let eds = d.expect().await;
    assert_eq!(eds.resources.len(), 1);
    d.ack(&eds).await;
    // Subscribing more sends only the new one.
    d.subscribe(ENDPOINT, &["reviews"], &[]).await;
    let eds = d.expect().await;
    assert_eq!(
        eds.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["reviews"]
    );
    d.ack(&eds).await;
    // Unsubscribed resources are forgotten: a change to them sends nothing.
    d.tx.send(weft_xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_unsubscribe: vec!["ratings".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    dir.write("services.yaml", &SERVICES.replace("127.0.0.1:9092", "127.0.0.1:9093"));
    assert!(d.recv(QUIET).await.is_none(), "unsubscribed resource not sent");
    // Re-subscribing sends the current version.
    d.subscribe(ENDPOINT, &["ratings"], &[]).await;
    let eds = d.expect().await;
    assert_eq!(eds.resources[0].name, "ratings");
    let cla: ClusterLoadAssignment = unpack(eds.resources[0].resource.as_ref().unwrap(), ENDPOINT).unwrap();
    assert!(format!("{cla:?}").contains("9093"));
    cp.stop().await;
}

#[tokio::test]
async fn deleting_a_policy_file_drops_dangling_subset_references() {
    let dir = TempDir::new("control");
    dir.write("services.yaml", SERVICES);
    dir.write(
        "routes.yaml",
        "routes:\n  - service: reviews\n    http:\n      - route: [{destination: reviews, subset: v2}]\n",
    );
    dir.write(
        "dest.yaml",
        "destinations:\n  - service: reviews\n    subsets: [{name: v2, labels: {version: v2}}]\n",
    );
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("pp-1", "productpage")).await;
    c.request(ROUTE, &["outbound"]).await;
    let rds = c.expect().await;
    let rc: RouteConfiguration = unpack(&rds.resources[0], ROUTE).unwrap();
    assert!(format!("{rc:?}").contains("reviews|v2"));
    c.ack(&rds, &["outbound"]).await;
    // A deletion is always accepted; the route that referenced its subset falls back to the service.
    dir.remove("dest.yaml");
    let rds = c.expect().await;
    let rc: RouteConfiguration = unpack(&rds.resources[0], ROUTE).unwrap();
    assert!(
        !format!("{rc:?}").contains("reviews|v2"),
        "no reference to a cluster that no longer exists"
    );
    cp.stop().await;
}

/// `lb: least_request`: sidecars (weft, Envoy) get `lb_policy: LEAST_REQUEST`; a proxyless gRPC
/// client (by its user agent) gets a typed `load_balancing_policy` list, least_request first and
/// round robin after it (gRPC uses the first entry it implements), for the cluster and its subsets.
#[tokio::test]
async fn proxyless_grpc_clients_get_a_typed_policy_list_for_least_request() {
    use weft_xds_api::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    let dir = registry();
    let cp = start(&dir).await;
    wait_ready(&cp).await;
    let mut grpc_node = node("grpc-1", "", &[]);
    grpc_node.user_agent_name = "gRPC C-core linux".into();
    let mut g = Sotw::connect(cp.xds_addr(), grpc_node).await;
    g.request(CLUSTER, &["reviews", "reviews|v1"]).await;
    let r = g.expect().await;
    assert_eq!(r.resources.len(), 2);
    for any in &r.resources {
        let c: Cluster = unpack(any, CLUSTER).unwrap();
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32, "{}", c.name);
        let urls: Vec<String> = c
            .load_balancing_policy
            .expect("load_balancing_policy")
            .policies
            .iter()
            .map(|p| {
                p.typed_extension_config
                    .as_ref()
                    .unwrap()
                    .typed_config
                    .as_ref()
                    .unwrap()
                    .type_url
                    .clone()
            })
            .collect();
        assert_eq!(
            urls,
            [
                "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
                "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
                "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
            ],
            "{}",
            c.name
        );
    }
    let mut s = Sotw::connect(cp.xds_addr(), sidecar("p-1", "productpage")).await;
    s.request(CLUSTER, &[]).await;
    let r = s.expect().await;
    let reviews = r
        .resources
        .iter()
        .map(|a| unpack::<Cluster>(a, CLUSTER).unwrap())
        .find(|c| c.name == "reviews")
        .unwrap();
    assert_eq!(reviews.lb_policy, LbPolicy::LeastRequest as i32);
    assert!(reviews.load_balancing_policy.is_none());
    cp.stop().await;
}
