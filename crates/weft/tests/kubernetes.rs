//! End to end through the Kubernetes registry: the stand-in API server (weft-test-support's
//! `kube_api`, real list/watch HTTP from recorded fixtures; no real API server runs here) →
//! `weft control --registry kubernetes?api=...` → a real `weft proxy` sidecar over xDS → a real
//! HTTP upstream on loopback. An EndpointSlice ADDED event must reach the sidecar's traffic within
//! 1 s; DELETED must take it out within 1 s. Also: the bootstrap the injector writes into a pod is
//! accepted by `weft proxy --check`.

use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_test_support::kube_api::{fixture, KubeApi};
use weft_test_support::peers::ChildGuard;
use weft_test_support::{eventually_blocking, free_addr, TempDir};

mod blocking;
use blocking::{http, name_server, start_sidecar};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn start_control(registry: &str) -> (ChildGuard, SocketAddr, SocketAddr) {
    let (xds, admin) = (free_addr(), free_addr());
    let child = ChildGuard(
        Command::new(WEFT)
            .args(["control", "--registry", registry, "--debounce", "20ms"])
            .args(["--xds", &xds.to_string(), "--admin", &admin.to_string()])
            .env("WEFT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft control"),
    );
    eventually_blocking("weft control /ready", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    });
    (child, xds, admin)
}

fn slice(name: &str, service: &str, ip: &str, port: u16) -> serde_json::Value {
    let mut s = fixture("endpointslice-reviews.json");
    s["metadata"]["name"] = json!(name);
    s["metadata"]["namespace"] = json!("shop");
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(service);
    s["metadata"]["ownerReferences"][0]["name"] = json!(service);
    let md = s["metadata"].as_object_mut().unwrap();
    md.remove("uid");
    md.remove("resourceVersion");
    s["endpoints"] = json!([{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}]);
    s["ports"] = json!([{"name": "http", "protocol": "TCP", "port": port}]);
    s
}

fn time_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what}: not within {limit:?}");
}

#[test]
fn an_endpointslice_event_reaches_a_weft_sidecar_within_a_second() {
    let api = KubeApi::start();
    let mut ns = fixture("namespace-bookinfo.json");
    ns["metadata"]["name"] = json!("shop");
    api.apply(ns);
    let mut svc = fixture("service-reviews.json");
    svc["metadata"]["name"] = json!("web");
    svc["metadata"]["namespace"] = json!("shop");
    svc["spec"]["ports"] = json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]);
    api.apply(svc);

    let (_control, xds, admin) = start_control(&format!("kubernetes?api={}", api.url()));
    let dir = TempDir::new("weft-k8s-e2e");
    let (_sidecar, _sadmin, outbound) = start_sidecar(
        &dir,
        "sidecar-1",
        "client",
        &format!("  address: \"{xds}\"\n  mode: ads_delta\n"),
    );
    // The Service exists but has no endpoints yet: no 200.
    assert!(http(outbound, "web.shop", "/").is_none_or(|(s, _)| s != 200));

    let upstream = name_server("web-1");
    api.apply(slice("web-abcde", "web", "127.0.0.1", upstream.port()));
    let added = time_until("ADDED EndpointSlice → traffic", Duration::from_secs(5), || {
        http(outbound, "web.shop", "/").is_some_and(|(s, b)| s == 200 && b == "web-1")
    });
    eprintln!("kubernetes: EndpointSlice ADDED → traffic through the sidecar after {added:?}");
    assert!(added < Duration::from_secs(1), "{added:?}");

    // The registry on /debug/registry.
    let (_, body) = http(admin, "x", "/debug/registry").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reg = &v["registries"][0];
    assert!(reg["name"].as_str().unwrap().starts_with("kubernetes registry"), "{v}");
    assert_eq!(reg["connected"], true);

    assert!(api.delete("EndpointSlice", "shop", "web-abcde"));
    let deleted = time_until(
        "DELETED EndpointSlice → out of traffic",
        Duration::from_secs(5),
        || http(outbound, "web.shop", "/").is_none_or(|(s, _)| s != 200),
    );
    eprintln!("kubernetes: EndpointSlice DELETED → out of traffic after {deleted:?}");
    assert!(deleted < Duration::from_secs(1), "{deleted:?}");

    // The API server goes away: weft control keeps serving the last state and says so.
    let upstream2 = name_server("web-2");
    api.apply(slice("web-fghij", "web", "127.0.0.1", upstream2.port()));
    time_until("second endpoint", Duration::from_secs(5), || {
        http(outbound, "web.shop", "/").is_some_and(|(s, b)| s == 200 && b == "web-2")
    });
    api.set_down(true);
    eventually_blocking("registry shown disconnected", Duration::from_secs(10), || {
        let (_, body) = http(admin, "x", "/debug/registry")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["registries"][0]["connected"] == false).then_some(())
    });
    for _ in 0..20 {
        let r = http(outbound, "web.shop", "/");
        assert!(r.as_ref().is_some_and(|(s, b)| *s == 200 && b == "web-2"), "{r:?}");
    }
}

#[test]
fn the_injected_bootstrap_is_a_valid_weft_proxy_configuration() {
    let pod = fixture("pod-reviews-v1-injected.json");
    let bootstrap = pod["metadata"]["annotations"]["sidecar.weft.dev/bootstrap"]
        .as_str()
        .unwrap();
    let dir = TempDir::new("weft-k8s-bootstrap");
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap).unwrap();
    let out = Command::new(WEFT)
        .args(["proxy", "--check", "-c"])
        .arg(&path)
        .output()
        .expect("run weft proxy --check");
    assert!(
        out.status.success(),
        "weft proxy --check refused the injected bootstrap: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
