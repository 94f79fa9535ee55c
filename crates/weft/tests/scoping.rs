//! Configuration scoping end to end: `weft control --scoping on-demand` sends a real `weft proxy`
//! sidecar (Delta ADS) nothing of the mesh, and the sidecar learns from its traffic: a request for
//! a service it was not sent is held while the proxy asks for it by name, then routed; a request for
//! a service that does not exist is answered 404 at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_test_support::{eventually_blocking, TempDir};

mod blocking;
use blocking::{http, name_server, start_control, start_sidecar};

fn xds_status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "x", "/xds").expect("/xds");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn held(status: &serde_json::Value, t: &str) -> Vec<String> {
    status["types"][t]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_on_demand_sidecar_learns_services_from_its_traffic() {
    let reg = TempDir::new("scoping-reg");
    let dir = TempDir::new("scoping");
    let payments = name_server("payments");
    let catalog = name_server("catalog");
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: frontend\n    endpoints: []\n  - name: payments\n    port: 8080\n    endpoints: [{{address: \"{payments}\"}}]\n  - name: catalog\n    endpoints: [{{address: \"{catalog}\"}}]\n"
        ),
    );
    let (_control, xds, _) = start_control(&reg, &["--scoping", "on-demand"]);
    let (_proxy, admin, outbound) = start_sidecar(
        &dir,
        "fe-1",
        "frontend",
        &format!("  address: \"{xds}\"\n  mode: ads_delta\n  on_demand_idle: 3s\n"),
    );

    // Nothing of the mesh at start: only its own inbound cluster.
    let st = xds_status(admin);
    assert_eq!(held(&st, "cds"), ["inbound|frontend"], "{st}");

    // The first call to payments is held while the sidecar asks for it, then routed.
    let t = Instant::now();
    let r = http(outbound, "payments:8080", "/pay");
    let first = t.elapsed();
    assert_eq!(r, Some((200, "payments".to_string())), "first call, after {first:?}");
    assert!(first < Duration::from_secs(2), "on-demand took {first:?}");
    // Later calls find it at once.
    let t = Instant::now();
    assert_eq!(http(outbound, "payments", "/pay"), Some((200, "payments".to_string())));
    let second = t.elapsed();
    eprintln!("first call (on demand) {first:?}, second call {second:?}");

    // A service nobody registered: 404 without waiting out the discovery window.
    let t = Instant::now();
    let r = http(outbound, "nosuch", "/").expect("a response");
    assert_eq!(r.0, 404, "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(1500), "took {:?}", t.elapsed());
    // Asked again at once: answered from the negative cache.
    let t = Instant::now();
    assert_eq!(http(outbound, "nosuch", "/").map(|r| r.0), Some(404));
    assert!(t.elapsed() < Duration::from_millis(300), "took {:?}", t.elapsed());

    // The sidecar holds payments (learned) and still nothing of catalog.
    let st = xds_status(admin);
    let mut cds = held(&st, "cds");
    cds.sort();
    assert_eq!(cds, ["inbound|frontend", "payments"], "{st}");
    assert_eq!(st["on_demand"], serde_json::json!(["payments"]), "{st}");

    // catalog is learned too when called.
    assert_eq!(http(outbound, "catalog", "/"), Some((200, "catalog".to_string())));

    // Unused services are forgotten (`on_demand_idle: 3s`): catalog, kept busy, stays; payments,
    // not called any more, is unsubscribed and its cluster removed.
    let t = Instant::now();
    eventually_blocking("payments to be forgotten", Duration::from_secs(15), || {
        assert_eq!(http(outbound, "catalog", "/"), Some((200, "catalog".to_string())));
        std::thread::sleep(Duration::from_millis(200));
        let st = xds_status(admin);
        (!held(&st, "cds").contains(&"payments".to_string())).then_some(())
    });
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "forgotten too early: {:?}",
        t.elapsed()
    );
    let st = xds_status(admin);
    assert_eq!(st["on_demand"], serde_json::json!(["catalog"]), "{st}");
    assert!(held(&st, "cds").contains(&"catalog".to_string()), "{st}");
    // And learned again when called again.
    assert_eq!(http(outbound, "payments", "/"), Some((200, "payments".to_string())));
}
