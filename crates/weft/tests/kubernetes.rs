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

/// One GET with extra request headers: (status, body).
fn http_h(addr: SocketAddr, host: &str, headers: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// `n` requests: how many each upstream answered (non-200s under "error").
fn tally(outbound: SocketAddr, headers: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = match http_h(outbound, "reviews.shop", headers) {
            Some((200, b)) => b,
            _ => "error".into(),
        };
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

fn istio_pod(name: &str, version: &str) -> serde_json::Value {
    let mut p = fixture(&format!("pod-reviews-{version}.json"));
    let md = p["metadata"].as_object_mut().unwrap();
    for k in [
        "uid",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        md.remove(k);
    }
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!("shop");
    p
}

fn in_shop(mut o: serde_json::Value) -> serde_json::Value {
    let md = o["metadata"].as_object_mut().unwrap();
    for k in ["uid", "resourceVersion", "annotations"] {
        md.remove(k);
    }
    o["metadata"]["namespace"] = json!("shop");
    o
}

/// Istio's VirtualService and DestinationRule, read as-is, through real list/watch traffic of the
/// stand-in API server, `weft control` and a real `weft proxy` sidecar: a 90/10 split between two
/// DestinationRule subsets (pod labels → endpoints), a header-match route, the retry/timeout policy
/// in the xDS the sidecar receives, a live weight edit, an unsupported route skipped and reported
/// (the rest served), an ingress-only VirtualService refused and reported, and a deletion reverting.
#[test]
fn istio_virtual_services_and_destination_rules_steer_a_weft_sidecar() {
    let api = KubeApi::start();
    let mut ns = fixture("namespace-bookinfo.json");
    ns["metadata"]["name"] = json!("shop");
    api.apply(ns);
    let mut svc = fixture("service-reviews.json");
    svc["metadata"]["namespace"] = json!("shop");
    svc["spec"]["ports"] = json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 9080}]);
    api.apply(in_shop(svc));
    let (v1, v2) = (name_server("v1"), name_server("v2"));
    for (pod, version, upstream) in [("reviews-v1-a", "v1", v1), ("reviews-v2-b", "v2", v2)] {
        api.apply(istio_pod(pod, version));
        let mut s = slice(&format!("reviews-{version}"), "reviews", "127.0.0.1", upstream.port());
        s["endpoints"][0]["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": "shop"});
        api.apply(s);
    }
    api.apply(in_shop(fixture("destinationrule-reviews.json")));
    let vs = in_shop(fixture("virtualservice-reviews.json"));
    api.apply(vs.clone());

    let (_control, xds, admin) = start_control(&format!("kubernetes?api={}", api.url()));
    let dir = TempDir::new("weft-k8s-istio");
    let (_sidecar, sadmin, outbound) = start_sidecar(
        &dir,
        "sidecar-istio",
        "client",
        &format!("  address: \"{xds}\"\n  mode: ads_delta\n"),
    );
    eventually_blocking("routes served", Duration::from_secs(10), || {
        (http_h(outbound, "reviews.shop", "")?.0 == 200).then_some(())
    });

    // 90/10 between the subsets.
    let t = tally(outbound, "", 300);
    eprintln!("istio: 90/10 split over 300 requests: {t:?}");
    let (n1, n2) = (t.get("v1").copied().unwrap_or(0), t.get("v2").copied().unwrap_or(0));
    assert_eq!(n1 + n2, 300, "{t:?}");
    assert!((8..=60).contains(&n2), "{t:?}");
    // The header-match route: always v2.
    let t = tally(outbound, "end-user: jason\r\n", 30);
    assert_eq!(t.get("v2"), Some(&30), "{t:?}");

    // The retry and timeout policy in the configuration the sidecar runs (from weft control's xDS).
    let (status, body) = http(sadmin, "x", "/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    for want in [
        "{\"name\":\"reviews.shop|v1\",\"weight\":90},{\"name\":\"reviews.shop|v2\",\"weight\":10}",
        "\"num_retries\":3,\"per_try_timeout\":\"2s\"",
        "\"connect_failure\":true,\"five_xx\":false,\"gateway_error\":true",
        "\"timeout\":\"10s\"",
    ] {
        assert!(compact.contains(want), "{want} not in {body}");
    }

    // A live edit: all to v2, behind a route weft cannot honour (a regex rewrite catching every
    // path); that route is skipped and reported, not served without its rewrite.
    let mut edited = vs.clone();
    edited["spec"]["http"][1]["route"][0]["weight"] = json!(0);
    edited["spec"]["http"][1]["route"][1]["weight"] = json!(100);
    let rewrite = json!({"match": [{"uri": {"prefix": "/"}}],
        "rewrite": {"uriRegexRewrite": {"match": "^/", "rewrite": "/v1/"}},
        "route": [{"destination": {"host": "reviews", "subset": "v1"}}]});
    edited["spec"]["http"].as_array_mut().unwrap().insert(0, rewrite);
    api.apply(edited);
    let took = time_until("edited weights applied", Duration::from_secs(5), || {
        tally(outbound, "", 20).get("v2") == Some(&20)
    });
    eprintln!("istio: VirtualService weight edit → traffic after {took:?}");
    let t = tally(outbound, "", 50);
    assert_eq!(t.get("v2"), Some(&50), "{t:?}");

    // A WeftRoute for the same service wins over the VirtualService; the difference is a conflict
    // on /debug/registry. Deleting it brings the VirtualService back.
    api.apply(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftRoute",
        "metadata": {"name": "reviews-weft", "namespace": "shop"},
        "spec": {"service": "reviews.shop", "http": [{"route": [{"destination": "reviews.shop", "subset": "v1"}]}]}
    }));
    time_until("the WeftRoute wins", Duration::from_secs(5), || {
        tally(outbound, "", 20).get("v1") == Some(&20)
    });
    let (_, body) = http(admin, "x", "/debug/registry").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &v["conflicts"][0];
    assert_eq!(c["kind"], "routes", "{v}");
    assert_eq!(c["kept"], "k8s:weftroute/shop/reviews-weft", "{v}");
    assert_eq!(c["dropped"], "k8s:virtualservice/shop/reviews", "{v}");
    assert!(api.delete("WeftRoute", "shop", "reviews-weft"));
    time_until("the VirtualService back", Duration::from_secs(5), || {
        tally(outbound, "", 20).get("v2") == Some(&20)
    });

    // Refused and reported: the rewrite route, and a VirtualService for an ingress gateway only.
    let mut gw = vs.clone();
    gw["metadata"]["name"] = json!("reviews-ingress");
    gw["spec"]["gateways"] = json!(["bookinfo-gateway"]);
    api.apply(gw);
    let skipped = eventually_blocking("skipped Istio parts reported", Duration::from_secs(5), || {
        let (_, body) = http(admin, "x", "/debug/registry")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let s = v["registries"][0]["skipped"].clone();
        (s.get("VirtualService shop/reviews-ingress").is_some()
            && s.get("VirtualService shop/reviews http[0]").is_some())
        .then_some(s)
    });
    eprintln!("istio: skipped {skipped}");
    assert!(skipped["VirtualService shop/reviews http[0]"]
        .as_str()
        .unwrap()
        .contains("rewrite.uriRegexRewrite is not supported"));
    assert!(skipped["VirtualService shop/reviews-ingress"]
        .as_str()
        .unwrap()
        .contains("gateways"));

    // Deleted: back to the Service's plain route over every endpoint.
    assert!(api.delete("VirtualService", "shop", "reviews"));
    time_until("deletion reverts to both versions", Duration::from_secs(5), || {
        let t = tally(outbound, "", 20);
        t.contains_key("v1") && t.contains_key("v2")
    });
    let (_, body) = http(admin, "x", "/debug/registry").unwrap();
    assert!(!body.contains("VirtualService shop/reviews http[0]"), "{body}");
}

/// A WeftAuthorization reaches the inbound listener of the selected service's sidecar: a DENY on
/// `/admin*` answers 403 there, the rest goes through; deleting it lets `/admin` through again.
/// An invalid one is skipped and says why in its status.
#[test]
fn a_weft_authorization_deny_is_enforced_by_the_sidecar_and_lifted_when_deleted() {
    let api = KubeApi::start();
    let mut ns = fixture("namespace-bookinfo.json");
    ns["metadata"]["name"] = json!("shop");
    api.apply(ns);
    let (_control, xds, _admin) = start_control(&format!("kubernetes?api={}", api.url()));

    // The `web.shop` workload's sidecar: its inbound listener leads to the app.
    let app = name_server("web-app");
    let (sadmin, inbound) = (free_addr(), free_addr());
    let dir = TempDir::new("weft-k8s-authz");
    let cfg = format!(
        "node:\n  id: web-1\n  cluster: web.shop\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{}\"\n    weft.inbound: \"{inbound}\"\n    weft.app: \"{app}\"\nadmin:\n  address: \"{sadmin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\n",
        free_addr()
    );
    let path = dir.join("web-1.yaml");
    std::fs::write(&path, cfg).unwrap();
    let _sidecar = ChildGuard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(&path)
            .env("WEFT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft proxy"),
    );
    time_until("the inbound listener serves", Duration::from_secs(20), || {
        http(inbound, "web.shop", "/admin/users").is_some_and(|(s, b)| s == 200 && b == "web-app")
    });

    let policy = |name: &str, action: &str| {
        json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "WeftAuthorization",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"name": name, "service": "web.shop", "action": action,
                     "rules": [{"to": [{"paths": ["/admin*"]}]}]}
        })
    };
    api.apply(policy("bad", "FORBID"));
    api.apply(policy("no-admin", "DENY"));
    let took = time_until("the DENY enforced", Duration::from_secs(5), || {
        http(inbound, "web.shop", "/admin/users").is_some_and(|(s, _)| s == 403)
    });
    eprintln!("kubernetes: WeftAuthorization ADDED → 403 at the sidecar after {took:?}");
    assert_eq!(http(inbound, "web.shop", "/"), Some((200, "web-app".to_string())));
    let status = |name: &str| {
        api.get("WeftAuthorization", "shop", name)
            .and_then(|o| o["status"]["conditions"][0].as_object().cloned())
    };
    time_until("both statuses written", Duration::from_secs(5), || {
        status("bad").is_some() && status("no-admin").is_some()
    });
    let bad = status("bad").unwrap();
    assert_eq!(bad["status"], "False");
    assert!(bad["message"].as_str().unwrap().starts_with("spec.action: "), "{bad:?}");
    assert_eq!(status("no-admin").unwrap()["status"], "True");

    assert!(api.delete("WeftAuthorization", "shop", "no-admin"));
    let took = time_until("the DENY lifted", Duration::from_secs(5), || {
        http(inbound, "web.shop", "/admin/users").is_some_and(|(s, b)| s == 200 && b == "web-app")
    });
    eprintln!("kubernetes: WeftAuthorization DELETED → 200 again after {took:?}");
}
