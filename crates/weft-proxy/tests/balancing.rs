//! Load balancing, weighted routing, retries, timeouts and circuit breakers, observed on the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_test_support::*;

/// Sends `n` requests over `conns` keep-alive connections and counts `x-upstream` values.
async fn spread(
    addr: std::net::SocketAddr,
    n: usize,
    conns: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> HashMap<String, usize> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(H1Client::connect(addr).await);
    }
    let mut counts = HashMap::new();
    for i in 0..n {
        let hs = headers(i);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got = clients[i % conns].send(req("GET", "/", "x", &hs, "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        *counts
            .entry(got.header("x-upstream").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_clusters_split_within_tolerance() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let yaml = one_route_yaml(
        "{ weighted_clusters: [{ name: a, weight: 70 }, { name: b, weight: 20 }, { name: c, weight: 10 }] }",
        &format!(
            "  - {{ name: a, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: b, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: c, endpoints: [{{ address: \"{}\" }}] }}",
            a.addr, b.addr, c.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let counts = spread(proxy.listener_addr("web").unwrap(), 10_000, 8, |_| vec![]).await;
    for (name, want) in [("a", 0.70), ("b", 0.20), ("c", 0.10)] {
        let got = counts[name] as f64 / 10_000.0;
        assert!((got - want).abs() < 0.02, "{name}: {got} vs {want} ({counts:?})");
    }
}

#[tokio::test]
async fn round_robin_weights_across_endpoints() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\", weight: 3 }}, {{ address: \"{}\", weight: 1 }}] }}",
            a.addr, b.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let counts = spread(proxy.listener_addr("web").unwrap(), 400, 4, |_| vec![]).await;
    assert_eq!(counts["a"], 300, "{counts:?}");
    assert_eq!(counts["b"], 100, "{counts:?}");
}

#[tokio::test]
async fn ring_hash_and_maglev_are_sticky() {
    for policy in ["ring_hash", "maglev"] {
        let ups = [
            named_upstream("a").await,
            named_upstream("b").await,
            named_upstream("c").await,
        ];
        let eps: Vec<String> = ups.iter().map(|u| format!("{{ address: \"{}\" }}", u.addr)).collect();
        let yaml = one_route_yaml(
            "{ cluster: app, hash_policy: [{ header: x-user }] }",
            &format!(
                "  - {{ name: app, lb_policy: {policy}, endpoints: [{}] }}",
                eps.join(", ")
            ),
        );
        let proxy = start_proxy(&yaml);
        let addr = proxy.listener_addr("web").unwrap();
        let mut c = H1Client::connect(addr).await;
        let mut owner: HashMap<usize, String> = HashMap::new();
        let mut per_host: HashMap<String, usize> = HashMap::new();
        for round in 0..5 {
            for user in 0..200 {
                let got = c
                    .send(req("GET", "/", "x", &[("x-user", &format!("user-{user}"))], ""))
                    .await;
                let host = got.header("x-upstream").unwrap().to_string();
                if round == 0 {
                    *per_host.entry(host.clone()).or_default() += 1;
                    owner.insert(user, host);
                } else {
                    assert_eq!(owner[&user], host, "{policy}: user-{user} moved between requests");
                }
            }
        }
        assert_eq!(per_host.len(), 3, "{policy}: all hosts get users: {per_host:?}");
        assert!(per_host.values().all(|n| *n > 30), "{policy}: {per_host:?}");
    }
}

#[tokio::test]
async fn least_request_avoids_the_busy_host() {
    let slow = upstream(|_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut r = text(200, "slow");
        r.headers_mut().insert("x-upstream", "slow".parse().unwrap());
        r
    })
    .await;
    let fast = named_upstream("fast").await;
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!(
            "  - {{ name: app, lb_policy: least_request, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            slow.addr, fast.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    // 20 concurrent clients each sending 10 requests: the slow host accumulates in-flight requests
    // and P2C steers new ones away from it.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            let mut slow_hits = 0;
            for _ in 0..10 {
                if c.get("/").await.header("x-upstream") == Some("slow") {
                    slow_hits += 1;
                }
            }
            slow_hits
        }));
    }
    let mut slow_total = 0;
    for t in tasks {
        slow_total += t.await.unwrap();
    }
    assert!(
        slow_total < 60,
        "slow host got {slow_total} of 200 (round robin would give 100)"
    );
}

#[tokio::test]
async fn retries_on_5xx_and_connect_failure_are_counted() {
    // Fails the first two requests it sees, then succeeds.
    let calls = Arc::new(AtomicU64::new(0));
    let calls2 = calls.clone();
    let flaky = upstream(move |_| {
        let n = calls2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                text(503, "not yet")
            } else {
                text(200, "finally")
            }
        }
    })
    .await;
    let dead = dead_addr();
    let ok = named_upstream("ok").await;
    let yaml = format!(
        r#"
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
              - match: {{ prefix: /flaky-once }}
                route: {{ cluster: flaky, retry_policy: {{ retry_on: [5xx], num_retries: 0 }} }}
              - match: {{ prefix: /flaky }}
                route:
                  cluster: flaky
                  retry_policy: {{ retry_on: [5xx], num_retries: 2, retry_back_off: {{ base_interval: 1ms, max_interval: 5ms }} }}
              - match: {{ prefix: /mixed }}
                route:
                  cluster: mixed
                  retry_policy: {{ retry_on: [connect-failure], num_retries: 3, retry_back_off: {{ base_interval: 1ms }} }}
clusters:
  - {{ name: flaky, endpoints: [{{ address: "{flaky}" }}] }}
  - {{ name: mixed, connect_timeout: 1s, endpoints: [{{ address: "{dead}" }}, {{ address: "{ok}" }}] }}
"#,
        flaky = flaky.addr,
        ok = ok.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let got = c.send(req("POST", "/flaky", "x", &[], "payload")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "finally");
    assert_eq!(flaky.hits(), 3, "one try plus two retries");
    // Every try carried the whole (buffered) body.
    assert!(flaky.seen.lock().iter().all(|s| s.body.as_ref() == b"payload"));

    calls.store(0, Ordering::SeqCst);
    let got = c.get("/flaky-once").await;
    assert_eq!(got.status, 503, "no retries configured: the app's 503 comes through");
    assert_eq!(got.header("x-weft-reason"), None);

    // Round robin over a dead and a live endpoint: every request still succeeds.
    for _ in 0..20 {
        let got = c.get("/mixed").await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(ok.hits(), 20);

    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_upstream_rq_retry_total{cluster=\"flaky\"}"),
        Some(2.0),
        "{stats}"
    );
    let mixed_retries = metric(&stats, "weft_upstream_rq_retry_total{cluster=\"mixed\"}").unwrap();
    // Without outlier detection the dead host stays in rotation: between half and all requests try it first.
    assert!((8.0..=20.0).contains(&mixed_retries), "{mixed_retries}");
}

#[tokio::test]
async fn per_try_timeout_retries_on_another_host() {
    let slow = slow_upstream(Duration::from_secs(3), 200, "slow").await;
    let fast = named_upstream("fast").await;
    let yaml = one_route_yaml(
        "{ cluster: app, timeout: 2s, retry_policy: { retry_on: [per-try-timeout], num_retries: 1, per_try_timeout: 100ms, retry_back_off: { base_interval: 1ms } } }",
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            slow.addr, fast.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    for _ in 0..4 {
        let t = Instant::now();
        let got = c.get("/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-upstream"), Some("fast"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}

#[tokio::test]
async fn streamed_bodies_are_not_retried_after_sending() {
    // A request body larger than the retry buffer is streamed; after it has gone upstream a 5xx is
    // returned as is, not retried.
    let up = upstream(|s| async move { text(503, &format!("saw {}", s.body.len())) }).await;
    let yaml = one_route_yaml(
        "{ cluster: app, retry_policy: { retry_on: [5xx], num_retries: 3 } }",
        &format!("  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let big = "x".repeat(200 * 1024);
    let mut c = H1Client::connect(addr).await;
    let got = c.send(req("POST", "/", "x", &[], &big)).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), format!("saw {}", big.len()));
    assert_eq!(up.hits(), 1, "a streamed body cannot be replayed");
    // A small body is buffered and retried.
    let got = c.send(req("POST", "/", "x", &[], "small")).await;
    assert_eq!(got.status, 503);
    assert_eq!(up.hits(), 1 + 4);
}

#[tokio::test]
async fn circuit_breaker_overflow_is_immediate_and_marked() {
    let slow = slow_upstream(Duration::from_millis(500), 200, "ok").await;
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!(
            "  - {{ name: app, circuit_breakers: {{ max_requests: 2 }}, endpoints: [{{ address: \"{}\" }}] }}",
            slow.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let got = H1Client::connect(addr).await.get("/").await;
            (
                got.status.as_u16(),
                got.header("x-weft-reason").map(str::to_string),
                got.header("x-weft-overflow").is_some(),
                t.elapsed(),
            )
        }));
    }
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        let (status, reason, flag, elapsed) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(reason.as_deref(), Some("UO"));
                assert!(flag);
                assert!(
                    elapsed < Duration::from_millis(300),
                    "overflow answered at once: {elapsed:?}"
                );
                overflow += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(overflow, 4);
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_upstream_rq_overflow_total{cluster=\"app\"}"),
        Some(4.0),
        "{stats}"
    );
}

#[tokio::test]
async fn high_priority_routes_have_their_own_circuit_breaker() {
    let slow = slow_upstream(Duration::from_millis(500), 200, "ok").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /vip }}
                route: {{ cluster: app, priority: high }}
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    circuit_breakers: {{ max_requests: 1, high_priority: {{ max_requests: 3 }} }}
    endpoints: [{{ address: "{}" }}]
"#,
        slow.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let fire = |path: &'static str| {
        tokio::spawn(async move {
            let got = H1Client::connect(addr).await.get(path).await;
            (got.status.as_u16(), got.header("x-weft-reason").map(str::to_string))
        })
    };
    // Two default-priority requests: one fits, one overflows.
    // Four high-priority ones at the same time: three fit their own threshold, one overflows.
    let mut default = vec![fire("/"), fire("/")];
    let mut high = vec![fire("/vip"), fire("/vip"), fire("/vip"), fire("/vip")];
    let count = |tasks: &mut Vec<tokio::task::JoinHandle<(u16, Option<String>)>>| {
        let tasks = std::mem::take(tasks);
        async move {
            let mut ok = 0;
            let mut uo = 0;
            for t in tasks {
                match t.await.unwrap() {
                    (200, _) => ok += 1,
                    (503, Some(r)) if r == "UO" => uo += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (ok, uo)
        }
    };
    assert_eq!(count(&mut default).await, (1, 1));
    assert_eq!(count(&mut high).await, (3, 1));
}
