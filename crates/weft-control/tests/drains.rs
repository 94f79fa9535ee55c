//! Endpoint drains on the admin API over a real ADS stream: a drained endpoint leaves the EDS a
//! proxy is sent, the drain is `converged` only once that proxy has ACKed it, undrain puts it back,
//! and bad or cross-site requests are refused.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT};

const SERVICES: &str = "services:\n  - name: frontend\n    port: 8080\n    endpoints: [{address: 127.0.0.1:9001}]\n  - name: cart\n    port: 8080\n    endpoints: [{address: 127.0.0.1:9011}, {address: 127.0.0.1:9012}]\n";

/// A raw HTTP/1.1 POST (connection: close) with extra header lines: (status, body).
async fn post(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn cart_endpoints(r: &DeltaDiscoveryResponse) -> usize {
    assert_eq!(r.type_url, ENDPOINT);
    let any = r.resources[0].resource.as_ref().expect("resource body");
    let cla: ClusterLoadAssignment = weft_xds_api::unpack(any, ENDPOINT).unwrap();
    assert_eq!(cla.cluster_name, "cart");
    cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
}

async fn drains(admin: SocketAddr, epoch: u64) -> serde_json::Value {
    let (status, body) = http_get(admin, &format!("/endpoints/drains?epoch={epoch}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_drain_leaves_eds_and_converges_only_when_acked() {
    let dir = TempDir::new("drains");
    dir.write("services.yaml", SERVICES);
    let cp = start(&dir).await;
    wait_ready(&cp).await;
    let admin = cp.admin_addr().unwrap();
    let meta = [
        ("weft.outbound", "127.0.0.1:15001"),
        ("weft.inbound", "127.0.0.1:15006"),
        ("weft.app", "127.0.0.1:8080"),
    ];
    let mut fe = Delta::connect(cp.xds_addr(), node("fe-1", "frontend", &meta)).await;
    fe.subscribe(CLUSTER, &[], &[]).await;
    let cds = fe.expect().await;
    fe.ack(&cds).await;
    fe.subscribe(ENDPOINT, &["cart"], &[]).await;
    let eds = fe.expect().await;
    assert_eq!(cart_endpoints(&eds), 2);
    fe.ack(&eds).await;

    // Refusals, naming what is wrong; nothing is drained by them.
    let (s, b) = post(admin, "/endpoints/drain?service=nope&address=127.0.0.1:9011", "").await;
    assert_eq!((s, b.trim()), (404, "no service \"nope\" in the registry"));
    let (s, b) = post(admin, "/endpoints/drain?service=cart&address=127.0.0.1:9999", "").await;
    assert_eq!(
        (s, b.trim()),
        (404, "service \"cart\" has no endpoint 127.0.0.1:9999 in the registry")
    );
    let (s, b) = post(admin, "/endpoints/drain?service=cart&address=nope", "").await;
    assert_eq!(
        (s, b.trim()),
        (400, "query parameter `address`: \"nope\" is not IP:port")
    );
    let (s, _) = post(
        admin,
        "/endpoints/drain?service=cart&address=127.0.0.1:9011",
        "origin: http://evil.example\r\n",
    )
    .await;
    assert_eq!(s, 403, "a cross-site drain is refused");
    assert!(fe.recv(Duration::from_millis(300)).await.is_none(), "nothing changed");

    // The drain: the proxy is sent cart without 127.0.0.1:9011.
    let (s, b) = post(admin, "/endpoints/drain?service=cart&address=127.0.0.1%3A9011", "").await;
    assert_eq!(s, 200, "{b}");
    let epoch = serde_json::from_str::<serde_json::Value>(&b).unwrap()["epoch"]
        .as_u64()
        .unwrap();
    let eds = fe.expect().await;
    assert_eq!(cart_endpoints(&eds), 1);
    // Not converged while the proxy has not ACKed it.
    let v = drains(admin, epoch).await;
    assert_eq!(v["converged"], false, "{v}");
    assert_eq!(v["pending"][0]["node_id"], "fe-1", "{v}");
    assert!(
        v["pending"][0]["waiting"]
            .as_str()
            .unwrap()
            .contains("has not ACKed eds"),
        "{v}"
    );
    assert_eq!(v["drains"][0]["address"], "127.0.0.1:9011");
    assert_eq!(v["drains"][0]["registered"], true);
    fe.ack(&eds).await;
    weft_test_support::eventually("the drain to converge", T, || async {
        (drains(admin, epoch).await["converged"] == true).then_some(())
    })
    .await;
    // Draining again changes nothing.
    let (s, b) = post(admin, "/endpoints/drain?service=cart&address=127.0.0.1:9011", "").await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&b).unwrap()["epoch"], epoch);
    assert!(fe.recv(Duration::from_millis(300)).await.is_none());

    // Undrain: back in the EDS.
    let (s, b) = post(admin, "/endpoints/undrain?service=cart&address=127.0.0.1:9011", "").await;
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["was_drained"], true);
    let epoch = v["epoch"].as_u64().unwrap();
    let eds = fe.expect().await;
    assert_eq!(cart_endpoints(&eds), 2);
    fe.ack(&eds).await;
    weft_test_support::eventually("the undrain to converge", T, || async {
        let v = drains(admin, epoch).await;
        (v["converged"] == true && v["drains"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    cp.stop().await;
}

/// A control plane on `dir`'s registry that keeps its state in `state`.
async fn start_with_state(dir: &TempDir, state: &std::path::Path) -> std::io::Result<weft_control::ControlPlane> {
    let mut opts = weft_control::ControlOptions::new(dir.path());
    opts.debounce = Duration::from_millis(50);
    opts.registry = Box::new(weft_control::registry::FileRegistry {
        dir: dir.path().to_path_buf(),
        interval: Duration::from_millis(50),
    });
    opts.state_dir = Some(state.to_path_buf());
    weft_control::ControlPlane::start(opts).await
}

/// A sidecar of `frontend` subscribed to cart's endpoints: the count it is sent first.
async fn cart_endpoints_seen(cp: &weft_control::ControlPlane, id: &str) -> (Delta, usize) {
    let meta = [
        ("weft.outbound", "127.0.0.1:15001"),
        ("weft.inbound", "127.0.0.1:15006"),
        ("weft.app", "127.0.0.1:8080"),
    ];
    let mut fe = Delta::connect(cp.xds_addr(), node(id, "frontend", &meta)).await;
    fe.subscribe(CLUSTER, &[], &[]).await;
    let cds = fe.expect().await;
    fe.ack(&cds).await;
    fe.subscribe(ENDPOINT, &["cart"], &[]).await;
    let eds = fe.expect().await;
    fe.ack(&eds).await;
    let n = cart_endpoints(&eds);
    (fe, n)
}

#[tokio::test]
async fn a_drain_survives_a_restart_of_the_control_plane_with_a_state_dir() {
    let dir = TempDir::new("drains-state");
    dir.write("services.yaml", SERVICES);
    let state = dir.join("state");
    let file = state.join("drains.json");

    let cp = start_with_state(&dir, &state).await.unwrap();
    wait_ready(&cp).await;
    let admin = cp.admin_addr().unwrap();
    let (s, b) = post(admin, "/endpoints/drain?service=cart&address=127.0.0.1:9011", "").await;
    assert_eq!(s, 200, "{b}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["drains"][0]["service"], "cart", "{saved}");
    assert_eq!(saved["drains"][0]["address"], "127.0.0.1:9011", "{saved}");
    // Written by rename: no temporary file is left next to it.
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["drains.json"]);
    cp.stop().await;

    // Restarted: the drain is there before any proxy connects, and the first EDS a proxy gets
    // already leaves the endpoint out.
    let cp = start_with_state(&dir, &state).await.unwrap();
    wait_ready(&cp).await;
    let admin = cp.admin_addr().unwrap();
    let v = drains(admin, 0).await;
    assert_eq!(v["drains"][0]["address"], "127.0.0.1:9011", "{v}");
    assert_eq!(v["drains"][0]["registered"], true, "{v}");
    assert_eq!(v["drains"][0]["since_unix"], saved["drains"][0]["since_unix"], "{v}");
    let (_fe, n) = cart_endpoints_seen(&cp, "fe-2").await;
    assert_eq!(n, 1, "the restarted control plane kept the drain");
    let (s, b) = post(admin, "/endpoints/undrain?service=cart&address=127.0.0.1:9011", "").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["was_drained"],
        true
    );
    cp.stop().await;

    // Undrained, and restarted again: nothing is drained.
    let cp = start_with_state(&dir, &state).await.unwrap();
    wait_ready(&cp).await;
    let (_fe, n) = cart_endpoints_seen(&cp, "fe-3").await;
    assert_eq!(n, 2);
    assert_eq!(
        drains(cp.admin_addr().unwrap(), 0).await["drains"],
        serde_json::json!([])
    );
    cp.stop().await;

    // A damaged state file stops the control plane at start, naming the file and the entry,
    // rather than silently putting a drained instance back.
    std::fs::write(&file, r#"{"drains": [{"service": "cart", "address": "nowhere"}]}"#).unwrap();
    let err = start_with_state(&dir, &state).await.err().expect("refused");
    assert!(
        err.to_string().contains("drains.json: drains[0].address: not IP:port"),
        "{err}"
    );
    std::fs::write(&file, "{").unwrap();
    let err = start_with_state(&dir, &state).await.err().expect("refused");
    assert!(err.to_string().contains("drains.json: not JSON"), "{err}");
}
