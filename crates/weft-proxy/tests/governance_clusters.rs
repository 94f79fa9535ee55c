//! Cluster-side governance observed on the wire: outlier ejection, active health checks, panic
//! threshold, locality failover, priority spillover, subset / tag routing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_test_support::*;

/// An upstream named `name` whose health can be switched: when `failing`, every request (including
/// health checks on /healthz) gets a 500.
async fn switchable(name: &'static str, failing: Arc<AtomicBool>) -> Upstream {
    upstream(move |_| {
        let failing = failing.clone();
        async move {
            let mut r = if failing.load(Ordering::SeqCst) {
                text(500, "broken")
            } else {
                text(200, name)
            };
            r.headers_mut().insert("x-upstream", name.parse().unwrap());
            r
        }
    })
    .await
}

fn yaml(node: &str, route_extra: &str, cluster: &str) -> String {
    format!(
        r#"
{node}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: app {route_extra} }}
clusters:
{cluster}
"#
    )
}

async fn count(addr: std::net::SocketAddr, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut c = H1Client::connect(addr).await;
    let mut m = HashMap::new();
    for _ in 0..n {
        let got = c.send(req("GET", "/", "x", headers, "")).await;
        let key = if got.status == 200 {
            got.header("x-upstream").unwrap_or("?").to_string()
        } else {
            format!("status-{}", got.status.as_u16())
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

async fn clusters_json(proxy: &weft_proxy::Server) -> serde_json::Value {
    serde_json::from_slice(&admin(proxy, "/clusters").await.body).unwrap()
}

async fn host_field(proxy: &weft_proxy::Server, addr: std::net::SocketAddr, field: &str) -> serde_json::Value {
    let j = clusters_json(proxy).await;
    j["clusters"][0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == addr.to_string())
        .map(|h| h[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn consecutive_5xx_ejects_and_the_host_returns() {
    let bad_flag = Arc::new(AtomicBool::new(false));
    let a = switchable("a", bad_flag.clone()).await;
    let b = switchable("b", Arc::new(AtomicBool::new(false))).await;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    outlier_detection: {{ consecutive_5xx: 3, interval: 100ms, base_ejection_time: 500ms, max_ejection_percent: 50 }}
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]"#,
            a.addr, b.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    let before = count(addr, 20, &[]).await;
    assert_eq!(before["a"], 10, "{before:?}");

    bad_flag.store(true, Ordering::SeqCst);
    let during = count(addr, 40, &[]).await;
    // a gets at most 3 requests (the consecutive errors) before it is ejected.
    assert!(during.get("status-500").copied().unwrap_or(0) <= 3, "{during:?}");
    assert!(during["b"] >= 37, "{during:?}");
    assert_eq!(host_field(&proxy, a.addr, "ejected").await, true);
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_outlier_ejections_total{cluster=\"app\"}"),
        Some(1.0),
        "{stats}"
    );

    // Fixed; after the ejection time it takes traffic again.
    bad_flag.store(false, Ordering::SeqCst);
    assert!(
        within(Duration::from_secs(3), || async {
            host_field(&proxy, a.addr, "ejected").await == false
        })
        .await,
        "host a un-ejected"
    );
    let after = count(addr, 20, &[]).await;
    assert_eq!(after["a"], 10, "{after:?}");
}

#[tokio::test]
async fn max_ejection_percent_keeps_hosts_serving() {
    let ups: Vec<Upstream> = {
        let mut v = Vec::new();
        for name in ["a", "b", "c", "d"] {
            v.push(switchable(name, Arc::new(AtomicBool::new(true))).await);
        }
        v
    };
    let eps: Vec<String> = ups.iter().map(|u| format!("{{ address: \"{}\" }}", u.addr)).collect();
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            "  - name: app\n    outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 30s, max_ejection_percent: 50 }}\n    healthy_panic_threshold: 0\n    endpoints: [{}]",
            eps.join(", ")
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    count(addr, 40, &[]).await;
    let j = clusters_json(&proxy).await;
    let ejected = j["clusters"][0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["ejected"] == true)
        .count();
    assert_eq!(ejected, 2, "50% of 4 hosts at most: {j}");
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert!(metric(&stats, "weft_outlier_ejections_overflow_total{cluster=\"app\"}").unwrap() >= 1.0);
}

#[tokio::test]
async fn failure_percentage_ejects_a_partly_failing_host() {
    // c fails 60% of requests; a and b are fine.
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    let c = upstream(move |_| {
        let k = n2.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = if k % 5 < 3 { text(503, "flaky") } else { text(200, "c") };
            r.headers_mut().insert("x-upstream", "c".parse().unwrap());
            r
        }
    })
    .await;
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    outlier_detection: {{ consecutive_5xx: 0, consecutive_local_origin_failure: 0, interval: 300ms, base_ejection_time: 30s,
                         failure_percentage_threshold: 50, failure_percentage_minimum_hosts: 3, failure_percentage_request_volume: 10,
                         success_rate_minimum_hosts: 0, max_ejection_percent: 50 }}
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}, {{ address: "{}" }}]"#,
            a.addr, b.addr, c.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    count(addr, 60, &[]).await;
    assert!(
        within(Duration::from_secs(3), || async {
            host_field(&proxy, c.addr, "ejected").await == true
        })
        .await,
        "c ejected by failure percentage"
    );
    let after = count(addr, 30, &[]).await;
    assert_eq!(
        after.get("c").copied().unwrap_or(0) + after.get("status-503").copied().unwrap_or(0),
        0,
        "{after:?}"
    );
}

#[tokio::test]
async fn active_http_health_check_marks_a_killed_backend() {
    let a = switchable("a", Arc::new(AtomicBool::new(false))).await;
    let mut b = switchable("b", Arc::new(AtomicBool::new(false))).await;
    let b_addr = b.addr;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    health_checks: [{{ interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1, http: {{ path: /healthz, expected_statuses: ["200-299"] }} }}]
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]"#,
            a.addr, b.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    assert!(
        within(Duration::from_secs(2), || async {
            host_field(&proxy, b_addr, "health_checks").await["passed"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        })
        .await
    );
    assert!(a.seen.lock().iter().any(|s| s.uri.path() == "/healthz"));
    b.stop();
    assert!(
        within(Duration::from_secs(3), || async {
            host_field(&proxy, b_addr, "healthy").await == false
        })
        .await,
        "killed backend marked unhealthy"
    );
    let after = count(addr, 20, &[]).await;
    assert_eq!(
        after.get("a").copied(),
        Some(20),
        "all traffic to the healthy host: {after:?}"
    );
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert!(metric(&stats, "weft_health_check_failure_total{cluster=\"app\"}").unwrap() >= 2.0);
    assert_eq!(
        metric(&stats, "weft_upstream_hosts_eligible{cluster=\"app\"}"),
        Some(1.0),
        "{stats}"
    );

    // Bring b back on the same port: it turns healthy and takes traffic again.
    let _b2 = upstream_on(b_addr, |_| async {
        let mut r = text(200, "b");
        r.headers_mut().insert("x-upstream", "b".parse().unwrap());
        r
    })
    .await;
    assert!(
        within(Duration::from_secs(3), || async {
            host_field(&proxy, b_addr, "healthy").await == true
        })
        .await
    );
    let back = count(addr, 20, &[]).await;
    assert_eq!(back.get("b").copied(), Some(10), "{back:?}");
}

#[tokio::test]
async fn tcp_and_grpc_health_checks() {
    // gRPC health server answering SERVING for "good" and NOT_SERVING otherwise.
    let grpc = upstream(|s| async move {
        let want_good = s.body.len() > 5 && s.body[5..].windows(4).any(|w| w == b"good");
        let status: u8 = if want_good { 1 } else { 2 };
        let body = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(http_body_util::Full::new(body))
            .unwrap()
    })
    .await;
    let dead = dead_addr();
    let live = named_upstream("live").await;
    let proxy = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ route: {{ cluster: tcp }} }}] }}]
clusters:
  - name: tcp
    healthy_panic_threshold: 0
    health_checks: [{{ interval: 100ms, timeout: 200ms, unhealthy_threshold: 1, tcp: {{}} }}]
    endpoints: [{{ address: "{dead}" }}, {{ address: "{live}" }}]
  - name: grpc-good
    health_checks: [{{ interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, grpc: {{ service_name: good }} }}]
    endpoints: [{{ address: "{g}" }}]
  - name: grpc-bad
    health_checks: [{{ interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, grpc: {{ service_name: bad }} }}]
    endpoints: [{{ address: "{g}" }}]
"#,
        live = live.addr,
        g = grpc.addr
    ));
    let addr = proxy.listener_addr("web").unwrap();
    let find = |j: &serde_json::Value, cluster: &str| -> serde_json::Value {
        j["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap()
            .clone()
    };
    assert!(
        within(Duration::from_secs(3), || async {
            let j = clusters_json(&proxy).await;
            find(&j, "grpc-bad")["hosts"][0]["healthy"] == false
                && find(&j, "grpc-good")["hosts"][0]["health_checks"]["passed"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 2
                && find(&j, "tcp")["eligible_hosts"] == 1
        })
        .await,
        "{}",
        clusters_json(&proxy).await
    );
    let j = clusters_json(&proxy).await;
    assert_eq!(find(&j, "grpc-good")["hosts"][0]["healthy"], true);
    assert!(grpc
        .seen
        .lock()
        .iter()
        .all(|s| s.uri.path() == "/grpc.health.v1.Health/Check" && s.version == http::Version::HTTP_2));
    let c = count(addr, 10, &[]).await;
    assert_eq!(c.get("live").copied(), Some(10), "{c:?}");
}

#[tokio::test]
async fn panic_threshold_serves_when_most_hosts_fail_checks() {
    // Health checks fail everywhere (wrong path), but requests would succeed: with the default 50%
    // panic threshold weft ignores health and keeps serving.
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    health_checks: [{{ interval: 100ms, timeout: 200ms, unhealthy_threshold: 1, http: {{ path: /healthz, expected_statuses: ["204"] }} }}]
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]"#,
            a.addr, b.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    assert!(
        within(Duration::from_secs(3), || async {
            clusters_json(&proxy).await["clusters"][0]["panic"] == true
        })
        .await
    );
    let c = count(addr, 20, &[]).await;
    assert_eq!(
        c.get("a").copied().unwrap_or(0) + c.get("b").copied().unwrap_or(0),
        20,
        "{c:?}"
    );
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_upstream_panic{cluster=\"app\"}"),
        Some(1.0),
        "{stats}"
    );
}

#[tokio::test]
async fn locality_aware_routing_fails_over_and_back() {
    let flags: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let a1 = switchable("zone-a-1", flags[0].clone()).await;
    let a2 = switchable("zone-a-2", flags[1].clone()).await;
    let b1 = switchable("zone-b-1", flags[2].clone()).await;
    let c1 = switchable("other-region", flags[3].clone()).await;
    let proxy = start_proxy(&yaml(
        "node: { id: sidecar-1, region: r1, zone: a }",
        "",
        &format!(
            r#"  - name: app
    locality_aware: true
    healthy_panic_threshold: 0
    health_checks: [{{ interval: 100ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, http: {{ path: /healthz }} }}]
    endpoints:
      - {{ address: "{}", region: r1, zone: a }}
      - {{ address: "{}", region: r1, zone: a }}
      - {{ address: "{}", region: r1, zone: b }}
      - {{ address: "{}", region: r2, zone: x }}"#,
            a1.addr, a2.addr, b1.addr, c1.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    let c = count(addr, 40, &[]).await;
    assert_eq!(
        c.get("zone-a-1").copied().unwrap_or(0) + c.get("zone-a-2").copied().unwrap_or(0),
        40,
        "local zone first: {c:?}"
    );

    // Zone a lost: traffic moves to zone b (same region) before the other region.
    flags[0].store(true, Ordering::SeqCst);
    flags[1].store(true, Ordering::SeqCst);
    assert!(
        within(Duration::from_secs(3), || async {
            clusters_json(&proxy).await["clusters"][0]["eligible_hosts"] == 2
        })
        .await
    );
    let c = count(addr, 40, &[]).await;
    assert_eq!(c.get("zone-b-1").copied(), Some(40), "{c:?}");

    // Region lost too: cross-region failover.
    flags[2].store(true, Ordering::SeqCst);
    assert!(
        within(Duration::from_secs(3), || async {
            clusters_json(&proxy).await["clusters"][0]["eligible_hosts"] == 1
        })
        .await
    );
    let c = count(addr, 20, &[]).await;
    assert_eq!(c.get("other-region").copied(), Some(20), "{c:?}");

    // Recovery: back to the local zone.
    for f in &flags {
        f.store(false, Ordering::SeqCst);
    }
    assert!(
        within(Duration::from_secs(3), || async {
            clusters_json(&proxy).await["clusters"][0]["eligible_hosts"] == 4
        })
        .await
    );
    let c = count(addr, 40, &[]).await;
    assert_eq!(
        c.get("zone-a-1").copied().unwrap_or(0) + c.get("zone-a-2").copied().unwrap_or(0),
        40,
        "{c:?}"
    );
}

#[tokio::test]
async fn priority_spillover_follows_health() {
    let f = Arc::new(AtomicBool::new(false));
    let p0a = switchable("p0a", Arc::new(AtomicBool::new(false))).await;
    let p0b = switchable("p0b", f.clone()).await;
    let p1 = switchable("p1", Arc::new(AtomicBool::new(false))).await;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    healthy_panic_threshold: 0
    health_checks: [{{ interval: 100ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, http: {{ path: /healthz }} }}]
    endpoints:
      - {{ address: "{}", priority: 0 }}
      - {{ address: "{}", priority: 0 }}
      - {{ address: "{}", priority: 1 }}"#,
            p0a.addr, p0b.addr, p1.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    let c = count(addr, 100, &[]).await;
    assert_eq!(c.get("p1").copied().unwrap_or(0), 0, "{c:?}");
    f.store(true, Ordering::SeqCst);
    assert!(
        within(Duration::from_secs(3), || async {
            clusters_json(&proxy).await["clusters"][0]["eligible_hosts"] == 2
        })
        .await
    );
    // Priority 0 is 50% healthy: it takes 50% x 1.4 = 70% of the load, priority 1 the rest.
    let c = count(addr, 2000, &[]).await;
    let p1_share = c.get("p1").copied().unwrap_or(0) as f64 / 2000.0;
    assert!((p1_share - 0.30).abs() < 0.05, "{c:?}");
}

#[tokio::test]
async fn tag_header_routes_to_the_subset() {
    let v1 = named_upstream("v1").await;
    let gray = named_upstream("gray").await;
    let canary = named_upstream("canary").await;
    let proxy = start_proxy(&yaml(
        "",
        "",
        &format!(
            r#"  - name: app
    subsets: {{ tag_header: x-weft-tag, tag_label: tag, fallback_policy: default_subset, default_subset: {{ version: v1 }} }}
    endpoints:
      - {{ address: "{}", labels: {{ version: v1 }} }}
      - {{ address: "{}", labels: {{ version: v2, tag: gray }} }}
      - {{ address: "{}", labels: {{ version: v2, tag: canary }} }}"#,
            v1.addr, gray.addr, canary.addr
        ),
    ));
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(count(addr, 20, &[]).await.get("v1").copied(), Some(20));
    assert_eq!(
        count(addr, 20, &[("x-weft-tag", "gray")]).await.get("gray").copied(),
        Some(20)
    );
    assert_eq!(
        count(addr, 20, &[("x-weft-tag", "canary")])
            .await
            .get("canary")
            .copied(),
        Some(20)
    );
    // An unknown tag falls back to the default subset.
    assert_eq!(
        count(addr, 20, &[("x-weft-tag", "nope")]).await.get("v1").copied(),
        Some(20)
    );
}
