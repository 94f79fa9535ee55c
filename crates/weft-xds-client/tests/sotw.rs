//! State-of-the-world xDS end to end: a scripted control plane, a real proxy, real upstreams.

mod support;

use support::*;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Brings a SotW proxy to a warmed config: listener "out" (RDS "r") → cluster "c" (EDS) → `up`.
/// Checks warming, /ready and ACK contents on the way.
async fn warm_sotw(cp: &Cp, p: &Proxy, up: std::net::SocketAddr) -> std::net::SocketAddr {
    let cds = cp.sotw_req(0, CLUSTER).await;
    assert!(cds.resource_names.is_empty(), "CDS is wildcard");
    assert_eq!(
        cds.node.as_ref().map(|n| n.id.as_str()),
        Some("test-1"),
        "node on the first request"
    );
    let lds = cp.sotw_req(0, LISTENER).await;
    assert!(lds.resource_names.is_empty(), "LDS is wildcard");
    assert_eq!(p.ready_status().await, 503, "not ready before any config");

    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c1", "n1", vec![eds_cluster("c")]);
    let ack = cp.reply_to(m, "n1").await;
    assert_eq!(ack.sotw().version_info, "c1", "ACK carries the accepted version");
    assert!(ack.error().is_none());
    let eds = cp
        .wait_for(m, "EDS subscription", |r| {
            r.type_url() == ENDPOINT && !r.sotw().resource_names.is_empty()
        })
        .await;
    assert_eq!(eds.sotw().resource_names, vec!["c".to_string()]);
    // The cluster is warming: not part of the running config yet.
    assert!(
        !p.server.shared.snapshot.load().clusters.contains_key("c"),
        "cluster used before its EDS"
    );
    assert_eq!(p.ready_status().await, 503);

    let m = cp.mark();
    cp.send_sotw(ENDPOINT, "e1", "n2", vec![cla("c", &[up])]);
    assert_eq!(cp.reply_to(m, "n2").await.sotw().version_info, "e1");
    assert!(p.server.shared.snapshot.load().clusters.contains_key("c"));

    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n3", vec![listener("out", "r")]);
    assert_eq!(cp.reply_to(m, "n3").await.sotw().version_info, "l1");
    let rds = cp
        .wait_for(m, "RDS subscription", |r| {
            r.type_url() == ROUTE && !r.sotw().resource_names.is_empty()
        })
        .await;
    assert_eq!(rds.sotw().resource_names, vec!["r".to_string()]);
    assert!(
        p.server.listener_addr("out").is_none(),
        "listener bound before its routes"
    );
    assert_eq!(p.ready_status().await, 503, "not ready while the listener warms");

    let m = cp.mark();
    cp.send_sotw(ROUTE, "r1", "n4", vec![route_config("r", "c")]);
    assert_eq!(cp.reply_to(m, "n4").await.sotw().version_info, "r1");
    let addr = p.wait_listener("out").await;
    p.wait_ready().await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_end_to_end_warming_ready_and_traffic() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up).await;
    let (status, _, body) = get(addr, "svc", "/x").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
    assert_eq!(p.client.version("cds").as_deref(), Some("c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_names_field_keeps_old_config() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up).await;

    let mut bad = eds_cluster_msg("c");
    bad.lb_policy = 7;
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c2", "n5", vec![weft_xds_api::pack(CLUSTER, &bad)]);
    let nack = cp.reply_to(m, "n5").await;
    assert_eq!(nack.sotw().version_info, "c1", "NACK carries the last accepted version");
    let detail = nack.sotw().error_detail.clone().expect("error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("cluster \"c\": lb_policy: unsupported value 7"),
        "{}",
        detail.message
    );
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"), "old config keeps serving");

    // A value weft-config rejects is also NACKed, with the resource named.
    let mut bad = eds_cluster_msg("c");
    bad.connect_timeout = Some(weft_xds_api::pb::google::protobuf::Duration { seconds: 0, nanos: 0 });
    bad.circuit_breakers = Some(weft_xds_api::pb::envoy::config::cluster::v3::CircuitBreakers {
        thresholds: vec![
            weft_xds_api::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                max_connections: Some(weft_xds_api::pb::google::protobuf::UInt32Value { value: 0 }),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c3", "n6", vec![weft_xds_api::pack(CLUSTER, &bad)]);
    let nack = cp.reply_to(m, "n6").await;
    let msg = nack.error().expect("NACK");
    assert!(msg.starts_with("cluster \"c\": "), "{msg}");
    assert_eq!(nack.sotw().version_info, "c1");

    // An unknown, non-optional HTTP filter is refused with its path; an optional one is ignored.
    let unknown = |optional: bool| {
        weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter {
            name: "x".into(),
            is_optional: optional,
            ..Default::default()
        }
    };
    let m = cp.mark();
    let l = listener_with("out", "r", vec![unknown(false), router_filter()]);
    cp.send_sotw(LISTENER, "l2", "n7", vec![weft_xds_api::pack(LISTENER, &l)]);
    let msg = cp.reply_to(m, "n7").await.error().expect("NACK");
    assert!(
        msg.contains("listener \"out\": filter_chains[0].filters[0].typed_config.http_filters[0]: unknown filter \"x\" (not optional)"),
        "{msg}"
    );
    let m = cp.mark();
    let l = listener_with("out", "r", vec![unknown(true), router_filter()]);
    cp.send_sotw(LISTENER, "l3", "n8", vec![weft_xds_api::pack(LISTENER, &l)]);
    assert!(cp.reply_to(m, "n8").await.error().is_none());
    let (status, _, body) = get(p.wait_listener("out").await, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
    let status = p.client.status_json();
    assert!(status["types"]["lds"]["last_error"]
        .as_str()
        .unwrap()
        .contains("unknown filter"));
    assert_eq!(status["types"]["cds"]["rejected"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_eds_update_removal_and_missing_cluster() {
    let cp = Cp::start().await;
    let up1 = upstream("up1").await;
    let up2 = upstream("up2").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up1).await;

    // EDS update moves traffic.
    cp.send_sotw(ENDPOINT, "e2", "n10", vec![cla("c", &[up2])]);
    until_body(addr, "up2").await;

    // A route to a cluster nobody defined: 503 NC, not a NACK.
    let m = cp.mark();
    cp.send_sotw(ROUTE, "r2", "n11", vec![route_config("r", "nope")]);
    assert!(
        cp.reply_to(m, "n11").await.error().is_none(),
        "unknown cluster is not a NACK"
    );
    let (status, headers, _) = get(addr, "svc", "/").await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("x-weft-reason").map(String::as_str), Some("NC"));

    // Cluster removal (absent from a SotW CDS response) — route back to "c", then drop "c".
    cp.send_sotw(ROUTE, "r3", "n12", vec![route_config("r", "c")]);
    until_body(addr, "up2").await;
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c2", "n13", vec![]);
    assert!(cp.reply_to(m, "n13").await.error().is_none());
    let (status, headers, _) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, headers.get("x-weft-reason").map(String::as_str)),
        (503, Some("NC"))
    );
    // Its EDS subscription is dropped.
    cp.wait_for(m, "EDS unsubscribe", |r| {
        r.type_url() == ENDPOINT && r.sotw().resource_names.is_empty()
    })
    .await;

    // Listener removal unbinds it.
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n14", vec![]);
    assert!(cp.reply_to(m, "n14").await.error().is_none());
    assert!(p.server.listener_addr("out").is_none());
    let (status, _, _) = get(addr, "svc", "/").await;
    assert_eq!(status, 0, "nothing listens any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_reconnect_keeps_serving_and_resubscribes() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up).await;

    // Kill the whole control plane; the proxy keeps serving.
    let port_addr = cp.addr;
    cp.shutdown();
    weft_test_support::eventually("the proxy to notice the disconnect", WAIT, || async {
        (!p.client.connected()).then_some(())
    })
    .await;
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "up1"),
        "serves the last good config while disconnected"
    );

    // Restart on the same port: the client reconnects and resubscribes with what it holds.
    let cp2 = Cp::start_on(port_addr).await;
    let cds = cp2.sotw_req(0, CLUSTER).await;
    assert_eq!(cds.version_info, "c1", "resubscribes with the last accepted version");
    assert!(cds.response_nonce.is_empty(), "a new stream has no nonce");
    let eds = cp2.sotw_req(0, ENDPOINT).await;
    assert_eq!(eds.resource_names, vec!["c".to_string()]);
    let rds = cp2.sotw_req(0, ROUTE).await;
    assert_eq!(rds.resource_names, vec!["r".to_string()]);
    assert_eq!(rds.version_info, "r1");

    // Resync: the new control plane's state replaces the old.
    let up2 = upstream("up2").await;
    cp2.send_sotw(CLUSTER, "c9", "m1", vec![eds_cluster("c")]);
    cp2.send_sotw(ENDPOINT, "e9", "m2", vec![cla("c", &[up2])]);
    until_body(addr, "up2").await;
    assert_eq!(p.ready_status().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_sotw_streams_work() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "sotw", "");
    let addr = warm_sotw(&cp, &p, up).await;
    assert_eq!(cp.streams_opened(), 4, "one stream per type");
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));

    // Losing one of the four streams restarts the session: every type resubscribes.
    let m = cp.mark();
    cp.kill_stream(CLUSTER);
    cp.wait_streams(8).await;
    let cds = cp.sotw_req(m, CLUSTER).await;
    assert_eq!(cds.version_info, "c1");
    assert!(cds.node.is_some());
    assert_eq!(cp.sotw_req(m, ROUTE).await.resource_names, vec!["r".to_string()]);
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_fetch_timeout_applies_cluster_without_endpoints() {
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "  initial_fetch_timeout: 300ms\n");
    cp.sotw_req(0, CLUSTER).await;
    cp.send_sotw(CLUSTER, "c1", "n1", vec![eds_cluster("c")]);
    cp.send_sotw(LISTENER, "l1", "n2", vec![listener("out", "r")]);
    cp.sotw_req(0, ROUTE).await;
    cp.send_sotw(ROUTE, "r1", "n3", vec![route_config("r", "c")]);
    let addr = p.wait_listener("out").await;
    assert_eq!(p.ready_status().await, 503, "cluster still warming");
    // No EDS ever comes: after the timeout the cluster is used with no endpoints.
    p.wait_ready().await;
    let (status, headers, _) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, headers.get("x-weft-reason").map(String::as_str)),
        (503, Some("UH"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_resources_coexist_and_name_clash_is_nacked() {
    let cp = Cp::start().await;
    let fixed = upstream("static").await;
    let extra = format!("clusters:\n  - name: fixed\n    endpoints: [{{ address: \"{fixed}\" }}]\n");
    let p = Proxy::start(&cp, "ads_sotw", &extra);
    cp.sotw_req(0, LISTENER).await;
    // A dynamic route to the static cluster.
    cp.send_sotw(CLUSTER, "c1", "n1", vec![]);
    cp.send_sotw(LISTENER, "l1", "n2", vec![listener("out", "r")]);
    cp.sotw_req(0, ROUTE).await;
    cp.send_sotw(ROUTE, "r1", "n3", vec![route_config("r", "fixed")]);
    let addr = p.wait_listener("out").await;
    p.wait_ready().await;
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "static"));

    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c2", "n4", vec![eds_cluster("fixed")]);
    let msg = cp.reply_to(m, "n4").await.error().expect("NACK");
    assert_eq!(msg, "cluster \"fixed\": name clashes with a static cluster");

    // A reloaded bootstrap replaces the static part and keeps the dynamic one.
    let other = upstream("other").await;
    let yaml = format!("clusters:\n  - name: fixed\n    endpoints: [{{ address: \"{other}\" }}]\n");
    p.client.set_static(weft_config::from_yaml(&yaml).unwrap()).unwrap();
    until_body(addr, "other").await;
    assert!(p.server.listener_addr("out").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_warm_before_they_replace_the_running_version() {
    let cp = Cp::start().await;
    let up1 = upstream("up1").await;
    let up2 = upstream("up2").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up1).await;

    // The cluster now takes its endpoints from another assignment: until that arrives, the
    // running version (with its endpoints) keeps serving.
    let mut c = eds_cluster_msg("c");
    c.eds_cluster_config.as_mut().unwrap().service_name = "c-v2".into();
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c2", "n20", vec![weft_xds_api::pack(CLUSTER, &c)]);
    assert!(cp.reply_to(m, "n20").await.error().is_none());
    let eds = cp
        .wait_for(m, "EDS for c-v2", |r| {
            r.type_url() == ENDPOINT && r.sotw().resource_names == vec!["c-v2".to_string()]
        })
        .await;
    assert_eq!(eds.sotw().version_info, "e1");
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "up1"),
        "old cluster serves while the update warms"
    );
    cp.send_sotw(ENDPOINT, "e2", "n21", vec![cla("c-v2", &[up2])]);
    until_body(addr, "up2").await;

    // Same for a listener that switches to a route configuration not received yet.
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n22", vec![listener("out", "r2")]);
    assert!(cp.reply_to(m, "n22").await.error().is_none());
    cp.wait_for(m, "RDS for r2", |r| {
        r.type_url() == ROUTE && r.sotw().resource_names == vec!["r2".to_string()]
    })
    .await;
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "up2"),
        "old listener serves while the update warms"
    );
    let direct = weft_xds_api::pack(
        ROUTE,
        &route_config_with(
            "r2",
            vec![weft_xds_api::pb::envoy::config::route::v3::Route {
                r#match: Some(weft_xds_api::pb::envoy::config::route::v3::RouteMatch {
                    path_specifier: Some(
                        weft_xds_api::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix("/".into()),
                    ),
                    ..Default::default()
                }),
                action: Some(
                    weft_xds_api::pb::envoy::config::route::v3::route::Action::DirectResponse(
                        weft_xds_api::pb::envoy::config::route::v3::DirectResponseAction {
                            status: 200,
                            body: Some(weft_xds_api::pb::envoy::config::core::v3::DataSource {
                                specifier: Some(
                                    weft_xds_api::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                                        "direct".into(),
                                    ),
                                ),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }],
        ),
    );
    cp.send_sotw(ROUTE, "r2", "n23", vec![direct]);
    // A changed listener drains its old connections; new ones get the new routes.
    weft_test_support::eventually_ok("new routes to apply", WAIT, || async {
        let (status, _, body) = get(p.wait_listener("out").await, "svc", "/").await;
        if (status, body.as_str()) == (200, "direct") {
            Ok(())
        } else {
            Err((status, body))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_configuration_errors_name_the_rds_resource() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    let addr = warm_sotw(&cp, &p, up).await;
    let mut route = route_to("c");
    if let Some(weft_xds_api::pb::envoy::config::route::v3::route::Action::Route(a)) = &mut route.action {
        a.retry_policy = Some(weft_xds_api::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: "5xx,bogus".into(),
            ..Default::default()
        });
    }
    let m = cp.mark();
    cp.send_sotw(
        ROUTE,
        "r2",
        "n30",
        vec![weft_xds_api::pack(ROUTE, &route_config_with("r", vec![route]))],
    );
    let nack = cp.reply_to(m, "n30").await;
    assert_eq!(nack.sotw().version_info, "r1");
    let msg = nack.error().expect("NACK");
    assert!(
        msg.starts_with(
            "route_configuration \"r\": virtual_hosts[0].routes[0].route.retry_policy.retry_on[1]: unknown value \"bogus\""
        ),
        "{msg}"
    );
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_fetch_timeout_binds_listener_without_routes() {
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "  initial_fetch_timeout: 300ms\n");
    cp.sotw_req(0, LISTENER).await;
    cp.send_sotw(CLUSTER, "c1", "n1", vec![]);
    cp.send_sotw(LISTENER, "l1", "n2", vec![listener("out", "r")]);
    cp.sotw_req(0, ROUTE).await;
    assert!(p.server.listener_addr("out").is_none());
    assert_eq!(p.ready_status().await, 503);
    // The route configuration never comes: the listener is bound with no routes (404 NR).
    let addr = p.wait_listener("out").await;
    p.wait_ready().await;
    let (status, headers, _) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, headers.get("x-weft-reason").map(String::as_str)),
        (404, Some("NR"))
    );
    let x = p.client.status_json();
    assert!(x["warming"][0].as_str().unwrap().contains("(timed out)"), "{x}");
}

/// A listener whose port is taken is refused in its LDS response, naming the listener (Envoy's
/// `listener_create_failure`), not later in the RDS response of its valid routes. `/ready` does not
/// claim the listener, not even after the initial fetch timeout, and nothing is served with an
/// empty route table. Once the port is free, the next LDS response brings the listener up with its
/// routes; a listener that LDS accepted holds its port while its routes warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_listener_on_a_taken_port_is_nacked_in_lds() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_sotw", "  initial_fetch_timeout: 300ms\n");
    cp.sotw_req(0, CLUSTER).await;
    cp.sotw_req(0, LISTENER).await;
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c1", "n1", vec![eds_cluster("c")]);
    assert!(cp.reply_to(m, "n1").await.error().is_none());
    let m = cp.mark();
    cp.send_sotw(ENDPOINT, "e1", "n2", vec![cla("c", &[up])]);
    assert!(cp.reply_to(m, "n2").await.error().is_none());

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap();
    let mut l = listener_with("out", "r", vec![router_filter()]);
    l.address = Some(socket(taken));
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n3", vec![weft_xds_api::pack(LISTENER, &l)]);
    let nack = cp.reply_to(m, "n3").await;
    let msg = nack.error().expect("the listener is refused in LDS");
    assert!(
        msg.starts_with(&format!("listener \"out\": address: cannot bind {taken}")),
        "{msg}"
    );
    assert_eq!(nack.sotw().version_info, "", "nothing accepted yet");
    // Its routes are not asked for; past the initial fetch timeout nothing claims to be live.
    // A kept sleep: what is tested is a timeout (300 ms) expiring without effect, so the test
    // lets it expire, with margin; no request or counter marks "the timeout would have fired"
    // since nothing is waiting for a refused listener.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        !cp.log()[m..]
            .iter()
            .any(|r| r.type_url() == ROUTE && !r.sotw().resource_names.is_empty()),
        "RDS subscribed for a refused listener"
    );
    assert!(
        cp.log().iter().all(|r| r.type_url() != ROUTE || r.error().is_none()),
        "no RDS NACK"
    );
    assert_eq!(p.ready_status().await, 503, "ready without the listener");
    assert!(p.server.listener_addr("out").is_none());

    // The port is free now; the control plane sends the listeners again, plus one more.
    drop(blocker);
    let free = weft_test_support::free_addr();
    let mut l2 = listener_with("out2", "r", vec![router_filter()]);
    l2.address = Some(socket(free));
    let m = cp.mark();
    cp.send_sotw(
        LISTENER,
        "l2",
        "n4",
        vec![weft_xds_api::pack(LISTENER, &l), weft_xds_api::pack(LISTENER, &l2)],
    );
    let ack = cp.reply_to(m, "n4").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    cp.wait_for(m, "RDS subscription", |r| {
        r.type_url() == ROUTE && r.sotw().resource_names == vec!["r".to_string()]
    })
    .await;
    // Warming: the listeners' ports are held for them.
    assert!(p.server.listener_addr("out").is_none(), "bound before its routes");
    assert!(
        std::net::TcpListener::bind(free).is_err(),
        "a warming listener's port can be taken by someone else"
    );
    let m = cp.mark();
    cp.send_sotw(ROUTE, "r1", "n5", vec![route_config("r", "c")]);
    assert!(cp.reply_to(m, "n5").await.error().is_none());
    assert_eq!(p.wait_listener("out").await, taken);
    assert_eq!(p.wait_listener("out2").await, free);
    p.wait_ready().await;
    for a in [taken, free] {
        let (status, _, body) = get(a, "svc", "/x").await;
        assert_eq!((status, body.as_str()), (200, "up1"));
    }
}

/// A connection manager with an empty `stat_prefix` breaks the API's validation rules (Envoy
/// refuses it): NACKed with the field named, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_api_validation_rule_violation_is_nacked_with_the_field() {
    let cp = Cp::start().await;
    let _p = Proxy::start(&cp, "ads_sotw", "");
    cp.sotw_req(0, LISTENER).await;
    let mut l = listener_with("out", "r", vec![router_filter()]);
    let Some(weft_xds_api::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &mut l.filter_chains[0].filters[0].config_type
    else {
        panic!("typed config");
    };
    use weft_xds_api::prost::Message;
    let mut h = weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    h.stat_prefix.clear();
    any.value = h.encode_to_vec();
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n1", vec![weft_xds_api::pack(LISTENER, &l)]);
    let nack = cp.reply_to(m, "n1").await;
    assert_eq!(
        nack.error().as_deref(),
        Some("listener \"out\": filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty (min_len: 1)")
    );
}

/// Envoy's `http_grpc` access logger over LDS: a valid one is ACKed (the running connection
/// manager gets the gRPC log), one without `log_name` is NACKed with the field in `error_detail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_http_grpc_access_logger_acked_and_a_bad_one_nacked_with_the_field() {
    use weft_xds_api::pb::envoy::config::accesslog::v3 as al;
    use weft_xds_api::pb::envoy::config::core::v3 as core;
    use weft_xds_api::pb::envoy::config::listener::v3::filter::ConfigType;
    use weft_xds_api::pb::envoy::extensions::access_loggers::grpc::v3 as als;
    use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use weft_xds_api::prost::Message;
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    cp.sotw_req(0, LISTENER).await;
    let with_log = |log_name: &str| {
        let mut l = listener_with("out", "r", vec![router_filter()]);
        let Some(ConfigType::TypedConfig(any)) = &mut l.filter_chains[0].filters[0].config_type else {
            panic!("typed config");
        };
        let mut h = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let g = als::HttpGrpcAccessLogConfig {
            common_config: Some(als::CommonGrpcAccessLogConfig {
                log_name: log_name.into(),
                grpc_service: Some(core::GrpcService {
                    target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                        core::grpc_service::EnvoyGrpc {
                            cluster_name: "als".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                transport_api_version: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        h.access_log = vec![al::AccessLog {
            name: "envoy.access_loggers.http_grpc".into(),
            config_type: Some(al::access_log::ConfigType::TypedConfig(weft_xds_api::pack(
                "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                &g,
            ))),
            ..Default::default()
        }];
        any.value = h.encode_to_vec();
        weft_xds_api::pack(LISTENER, &l)
    };
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n1", vec![with_log("")]);
    let nack = cp.reply_to(m, "n1").await;
    assert_eq!(
        nack.error().as_deref(),
        Some("listener \"out\": filter_chains[0].filters[0].typed_config.access_log[0].typed_config.common_config.log_name: must not be empty (min_len: 1)")
    );
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n2", vec![with_log("istio-als")]);
    let ack = cp.reply_to(m, "n2").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    let rds = cp
        .wait_for(m, "RDS subscription", |r| {
            r.type_url() == ROUTE && !r.sotw().resource_names.is_empty()
        })
        .await;
    assert_eq!(rds.sotw().resource_names, vec!["r".to_string()]);
    let m = cp.mark();
    cp.send_sotw(ROUTE, "r1", "n3", vec![route_config("r", "als")]);
    assert!(cp.reply_to(m, "n3").await.error().is_none());
    // The listener is warm: the running connection manager has the gRPC log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let snap = p.server.shared.snapshot.load();
        let got =
            snap.config
                .listeners
                .iter()
                .find(|l| l.name == "out")
                .and_then(|l| match &l.filter_chains[0].filter {
                    weft_config::NetworkFilter::Http(h) => h.grpc_access_log.clone(),
                    _ => None,
                });
        if let Some(g) = got {
            assert_eq!((g.cluster.as_str(), g.log_name.as_str()), ("als", "istio-als"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener with its gRPC log never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
