//! Incremental (Delta) xDS end to end, including resume after a reconnect.

mod support;

use support::*;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

async fn warm_delta(cp: &Cp, p: &Proxy, up: std::net::SocketAddr) -> std::net::SocketAddr {
    let cds = cp.wait_for(0, "CDS", |r| r.type_url() == CLUSTER).await;
    assert!(cds.delta().resource_names_subscribe.is_empty(), "wildcard");
    assert!(cds.delta().node.is_some());
    cp.wait_for(0, "LDS", |r| r.type_url() == LISTENER).await;

    let m = cp.mark();
    cp.send_delta(CLUSTER, "n1", vec![("c".into(), eds_cluster("c"))], vec![]);
    let ack = cp.reply_to(m, "n1").await;
    assert!(ack.error().is_none());
    let eds = cp
        .wait_for(m, "EDS subscribe", |r| {
            r.type_url() == ENDPOINT && !r.delta().resource_names_subscribe.is_empty()
        })
        .await;
    assert_eq!(eds.delta().resource_names_subscribe, vec!["c".to_string()]);
    assert_eq!(p.ready_status().await, 503);

    cp.send_delta(ENDPOINT, "n2", vec![("c".into(), cla("c", &[up]))], vec![]);
    let m = cp.mark();
    cp.send_delta(LISTENER, "n3", vec![("out".into(), listener("out", "r"))], vec![]);
    assert!(cp.reply_to(m, "n3").await.error().is_none());
    let rds = cp
        .wait_for(m, "RDS subscribe", |r| {
            r.type_url() == ROUTE && !r.delta().resource_names_subscribe.is_empty()
        })
        .await;
    assert_eq!(rds.delta().resource_names_subscribe, vec!["r".to_string()]);
    assert!(p.server.listener_addr("out").is_none(), "listener warming");
    cp.send_delta(ROUTE, "n4", vec![("r".into(), route_config("r", "c"))], vec![]);
    let addr = p.wait_listener("out").await;
    p.wait_ready().await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_end_to_end_update_and_removal() {
    let cp = Cp::start().await;
    let up1 = upstream("up1").await;
    let up2 = upstream("up2").await;
    let p = Proxy::start(&cp, "ads_delta", "");
    let addr = warm_delta(&cp, &p, up1).await;
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));

    cp.send_delta(ENDPOINT, "n5", vec![("c".into(), cla("c", &[up2]))], vec![]);
    until_body(addr, "up2").await;

    // A NACK in Delta: nonce + error_detail.
    let mut bad = eds_cluster_msg("c");
    bad.lb_policy = 7;
    let m = cp.mark();
    cp.send_delta(
        CLUSTER,
        "n6",
        vec![("c".into(), weft_xds_api::pack(CLUSTER, &bad))],
        vec![],
    );
    let nack = cp.reply_to(m, "n6").await;
    assert!(nack
        .error()
        .unwrap()
        .contains("cluster \"c\": lb_policy: unsupported value 7"));
    until_body(addr, "up2").await;

    // A route configuration removed while its listener still names it: the listener stays, with
    // no routes (404 NR), as in Envoy; it is not a NACK.
    let m = cp.mark();
    cp.send_delta(ROUTE, "n6b", vec![], vec!["r".into()]);
    assert!(cp.reply_to(m, "n6b").await.error().is_none());
    weft_test_support::eventually_ok("routes to empty (404 NR)", WAIT, || async {
        let (status, headers, _) = get(p.wait_listener("out").await, "svc", "/").await;
        if (status, headers.get("x-weft-reason").map(String::as_str)) == (404, Some("NR")) {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    cp.send_delta(ROUTE, "n6c", vec![("r".into(), route_config("r", "c"))], vec![]);
    let addr = p.wait_listener("out").await;
    until_body(addr, "up2").await;

    // removed_resources: the cluster goes (NC), its EDS is unsubscribed.
    let m = cp.mark();
    cp.send_delta(CLUSTER, "n7", vec![], vec!["c".into()]);
    assert!(cp.reply_to(m, "n7").await.error().is_none());
    let unsub = cp
        .wait_for(m, "EDS unsubscribe", |r| {
            r.type_url() == ENDPOINT && !r.delta().resource_names_unsubscribe.is_empty()
        })
        .await;
    assert_eq!(unsub.delta().resource_names_unsubscribe, vec!["c".to_string()]);
    let (status, headers, _) = get(addr, "svc", "/").await;
    assert_eq!(
        (status, headers.get("x-weft-reason").map(String::as_str)),
        (503, Some("NC"))
    );

    let m = cp.mark();
    cp.send_delta(LISTENER, "n8", vec![], vec!["out".into()]);
    assert!(cp.reply_to(m, "n8").await.error().is_none());
    assert!(p.server.listener_addr("out").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_resumes_with_initial_resource_versions() {
    let cp = Cp::start().await;
    let up1 = upstream("up1").await;
    let p = Proxy::start(&cp, "ads_delta", "");
    let addr = warm_delta(&cp, &p, up1).await;

    let m = cp.mark();
    cp.kill_streams();
    // Keeps serving while reconnecting.
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
    cp.wait_streams(2).await;
    let cds = cp.wait_for(m, "CDS resume", |r| r.type_url() == CLUSTER).await;
    let v = &cds.delta().initial_resource_versions;
    assert_eq!(
        v.get("c").map(String::as_str),
        Some(weft_xds_api::content_version(&eds_cluster("c").value).as_str()),
        "{v:?}"
    );
    assert!(cds.delta().node.is_some(), "node on the new stream's first request");
    let lds = cp.wait_for(m, "LDS resume", |r| r.type_url() == LISTENER).await;
    assert!(lds.delta().initial_resource_versions.contains_key("out"));
    let eds = cp.wait_for(m, "EDS resume", |r| r.type_url() == ENDPOINT).await;
    assert_eq!(eds.delta().resource_names_subscribe, vec!["c".to_string()]);
    assert!(eds.delta().initial_resource_versions.contains_key("c"));
    let rds = cp.wait_for(m, "RDS resume", |r| r.type_url() == ROUTE).await;
    assert!(rds.delta().initial_resource_versions.contains_key("r"));

    // The server sends only what changed; the held rest stays.
    let up2 = upstream("up2").await;
    cp.send_delta(ENDPOINT, "k1", vec![("c".into(), cla("c", &[up2]))], vec![]);
    until_body(addr, "up2").await;
    assert_eq!(p.ready_status().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_delta_streams_work() {
    let cp = Cp::start().await;
    let up = upstream("up1").await;
    let p = Proxy::start(&cp, "delta", "");
    let addr = warm_delta(&cp, &p, up).await;
    assert_eq!(cp.streams_opened(), 4);
    let (status, _, body) = get(addr, "svc", "/").await;
    assert_eq!((status, body.as_str()), (200, "up1"));
}
