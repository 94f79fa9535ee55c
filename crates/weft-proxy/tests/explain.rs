//! `POST /explain` on a running proxy: the listener, virtual host, route (and why earlier routes
//! did not match), cluster, subset, eligible endpoints and policies for many routing cases, with
//! real requests alongside to show that explain has no side effects and agrees with what happens.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use weft_test_support::*;

fn yaml(a: SocketAddr, b: SocketAddr, dead: SocketAddr) -> String {
    format!(
        r#"
node: {{ id: explain-1, region: r1, zone: z1 }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      authorization:
        policies:
          - {{ name: deny-private, action: DENY, rules: [{{ to: [{{ paths: ["/private*"] }}] }}] }}
          - {{ name: allow-local, action: ALLOW, rules: [{{ from: [{{ ip_blocks: [127.0.0.1/32] }}] }}] }}
      route_config:
        name: main
        virtual_hosts:
          - name: reviews
            domains: ["reviews", "reviews.svc"]
            routes:
              - name: by-header
                match: {{ prefix: /, headers: [{{ name: x-user, exact: "1" }}] }}
                route: {{ cluster: reviews-v2 }}
              - name: exact-path
                match: {{ path: /exact }}
                route: {{ cluster: reviews }}
              - name: regex-path
                match: {{ regex: "/items/[0-9]+" }}
                route: {{ cluster: reviews }}
              - name: post-only
                match: {{ prefix: /write, methods: [POST] }}
                route: {{ cluster: reviews, timeout: 2s, retry_policy: {{ retry_on: [5xx], num_retries: 3 }} }}
              - name: query
                match: {{ prefix: /search, query_parameters: [{{ name: q, exact: weft }}] }}
                route: {{ cluster: reviews }}
              - name: split
                match: {{ prefix: /split }}
                route: {{ weighted_clusters: [{{ name: reviews, weight: 80 }}, {{ name: reviews-v2, weight: 20 }}] }}
              - name: limited
                match: {{ prefix: /limited }}
                route: {{ cluster: reviews, local_rate_limit: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }} }}
              - name: faulty
                match: {{ prefix: /fault }}
                route: {{ cluster: reviews, fault: {{ abort: {{ http_status: 503, percent: 100 }}, headers: [{{ name: x-chaos, exact: "on" }}] }} }}
              - name: mirrored
                match: {{ prefix: /mirror }}
                route: {{ cluster: reviews, request_mirror_policies: [{{ cluster: reviews-v2, percent: 50 }}] }}
              - name: subset
                match: {{ prefix: /subset }}
                route: {{ cluster: users }}
              - name: local
                match: {{ prefix: /local }}
                route: {{ cluster: zoned }}
              - name: sick
                match: {{ prefix: /sick }}
                route: {{ cluster: sick }}
              - name: old
                match: {{ prefix: /old }}
                redirect: {{ path: /new }}
              - name: ping
                match: {{ prefix: /ping }}
                direct_response: {{ status: 200, body: pong }}
              - name: api
                match: {{ prefix: /api }}
                route: {{ cluster: reviews }}
          - name: shop
            domains: ["*.example.com"]
            routes:
              - {{ name: shop-all, match: {{ prefix: / }}, route: {{ cluster: reviews }} }}
clusters:
  - name: reviews
    endpoints: [{{ address: "{a}" }}]
  - name: reviews-v2
    endpoints: [{{ address: "{b}" }}]
  - name: users
    lb_policy: round_robin
    subsets: {{ tag_header: x-weft-tag, tag_label: tag, fallback_policy: any_endpoint }}
    endpoints:
      - {{ address: "{a}", labels: {{ version: v1 }} }}
      - {{ address: "{b}", labels: {{ version: v2, tag: canary }} }}
  - name: zoned
    locality_aware: true
    endpoints:
      - {{ address: "{a}", region: r1, zone: z1 }}
      - {{ address: "{b}", region: r1, zone: z2 }}
  - name: sick
    health_checks: [{{ interval: 50ms, timeout: 200ms, unhealthy_threshold: 1, tcp: {{}} }}]
    endpoints: [{{ address: "{a}" }}, {{ address: "{dead}" }}, {{ address: "{b}" }}]
"#
    )
}

struct Env {
    proxy: std::sync::Arc<weft_proxy::Server>,
    a: Upstream,
    b: Upstream,
    dead: SocketAddr,
}

async fn env() -> Env {
    let a = upstream(|_| async { text(200, "a") }).await;
    let b = upstream(|_| async { text(200, "b") }).await;
    let dead = dead_addr();
    let proxy = start_proxy(&yaml(a.addr, b.addr, dead));
    Env { proxy, a, b, dead }
}

/// Asks the admin API; panics unless it answers 200 with JSON.
async fn explain(e: &Env, method: &str, url: &str, headers: &[(&str, &str)]) -> Value {
    let admin = admin_addr(&e.proxy);
    let h: serde_json::Map<String, Value> = headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let body = json!({ "method": method, "url": url, "headers": h }).to_string();
    let got = send_once(
        admin,
        req(
            "POST",
            "/explain",
            &admin.to_string(),
            &[("content-type", "application/json")],
            &body,
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    serde_json::from_str(&got.text()).unwrap()
}

fn route(v: &Value) -> &str {
    v["route"]["name"].as_str().unwrap_or("<none>")
}

fn outcome(v: &Value) -> &str {
    v["verdict"]["outcome"].as_str().unwrap()
}

/// The reason recorded for a skipped route.
fn why<'v>(v: &'v Value, route: &str) -> &'v str {
    v["routes_not_matched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["route"] == route)
        .unwrap_or_else(|| panic!("{route} not among the skipped routes: {v:#}"))["why"]
        .as_str()
        .unwrap()
}

async fn real(e: &Env, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let addr = e.proxy.listener_addr("web").unwrap();
    let got = send_once(addr, req(method, path, host, headers, "")).await.unwrap();
    (got.status.as_u16(), got.text())
}

#[tokio::test]
async fn routing_cases() {
    let e = env().await;

    // 1. Header match: the first route, to reviews-v2; a real request lands on b.
    let v = explain(&e, "GET", "http://reviews/x", &[("x-user", "1")]).await;
    assert_eq!(route(&v), "by-header", "{v:#}");
    assert_eq!(v["listener"]["name"], "web");
    assert_eq!(v["listener"]["filter_chain"], 0);
    assert_eq!(v["virtual_host"]["name"], "reviews");
    assert_eq!(v["virtual_host"]["matched_by"], "exact domain \"reviews\"");
    assert_eq!(
        v["clusters"],
        json!([{ "name": "reviews-v2", "weight": 1, "share_percent": 100.0 }])
    );
    assert_eq!(v["upstream"][0]["candidates"], json!([e.b.addr.to_string()]));
    assert_eq!(outcome(&v), "forward");
    assert_eq!(
        real(&e, "GET", "/x", "reviews", &[("x-user", "1")]).await,
        (200, "b".into())
    );

    // 2. Header mismatch: why the header route failed, then a later prefix route.
    let v = explain(&e, "GET", "http://reviews/api/a", &[("x-user", "2")]).await;
    assert_eq!(route(&v), "api");
    assert_eq!(why(&v, "by-header"), "header x-user: wants exact \"1\", got \"2\"");
    assert_eq!(why(&v, "exact-path"), "exact path \"/exact\" does not match \"/api/a\"");
    assert_eq!(why(&v, "post-only"), "path prefix \"/write\" does not match \"/api/a\"");
    assert_eq!(v["routes_not_matched"].as_array().unwrap().len(), 14);

    // 3. Exact path.
    let v = explain(&e, "GET", "http://reviews/exact", &[]).await;
    assert_eq!(route(&v), "exact-path");
    assert_eq!(why(&v, "by-header"), "header x-user: wants exact \"1\", got absent");

    // 4. Regex path, and a path the regex refuses (no other route: NR).
    let v = explain(&e, "GET", "http://reviews/items/42", &[]).await;
    assert_eq!(route(&v), "regex-path");
    let v = explain(&e, "GET", "http://reviews/items/x", &[]).await;
    assert_eq!(outcome(&v), "no_route");
    assert_eq!(v["verdict"]["response_flags"], "NR");
    assert_eq!(v["verdict"]["status"], 404);
    assert!(
        why(&v, "regex-path").starts_with("path regex ^(?:/items/[0-9]+)$ does not match"),
        "{v:#}"
    );

    // 5. Method: GET is refused by the POST-only route; POST gets its retry policy and timeout.
    let v = explain(&e, "GET", "http://reviews/write", &[]).await;
    assert_eq!(outcome(&v), "no_route");
    assert_eq!(why(&v, "post-only"), "method GET is not one of [POST]");
    let v = explain(&e, "POST", "http://reviews/write", &[]).await;
    assert_eq!(route(&v), "post-only");
    assert_eq!(v["policies"]["timeout"], "2000ms");
    assert_eq!(v["policies"]["retry_policy"]["num_retries"], 3, "{v:#}");

    // 6. Query parameter.
    let v = explain(&e, "GET", "http://reviews/search?q=weft", &[]).await;
    assert_eq!(route(&v), "query");
    let v = explain(&e, "GET", "http://reviews/search?q=rust", &[]).await;
    assert_eq!(
        why(&v, "query"),
        "query parameter q: wants exact \"weft\", got \"rust\""
    );

    // 7. Weighted clusters: both, with their shares.
    let v = explain(&e, "GET", "http://reviews/split", &[]).await;
    assert_eq!(
        v["clusters"],
        json!([{ "name": "reviews", "weight": 80, "share_percent": 80.0 },
               { "name": "reviews-v2", "weight": 20, "share_percent": 20.0 }])
    );
    assert_eq!(v["upstream"].as_array().unwrap().len(), 2);

    // 8. Fault: applies only with the header; then the verdict is the abort.
    let v = explain(&e, "GET", "http://reviews/fault", &[("x-chaos", "on")]).await;
    assert_eq!(outcome(&v), "fault_abort");
    assert_eq!(v["verdict"]["response_flags"], "FI");
    let v = explain(&e, "GET", "http://reviews/fault", &[]).await;
    assert_eq!(outcome(&v), "forward");
    assert_eq!(v["policies"]["fault"]["applies_to_this_request"], false);

    // 9. Mirror.
    let v = explain(&e, "GET", "http://reviews/mirror", &[]).await;
    assert_eq!(
        v["policies"]["mirrors"],
        json!([{ "cluster": "reviews-v2", "percent": 50.0 }])
    );

    // 10. Subset by tag header: only the canary host; round robin described, not stepped.
    let v = explain(&e, "GET", "http://reviews/subset", &[("x-weft-tag", "canary")]).await;
    let u = &v["upstream"][0];
    assert_eq!(u["subset"], json!({ "tag": "canary" }));
    assert_eq!(u["candidates"], json!([e.b.addr.to_string()]));
    let v = explain(&e, "GET", "http://reviews/subset", &[]).await;
    assert_eq!(v["upstream"][0]["candidates"].as_array().unwrap().len(), 2);
    assert!(
        v["upstream"][0]["pick"]
            .as_str()
            .unwrap()
            .starts_with("round robin over 2"),
        "{v:#}"
    );

    // 11. Locality: the node is in r1/z1, so only a's zone is in the preferred level.
    let v = explain(&e, "GET", "http://reviews/local", &[]).await;
    let u = &v["upstream"][0];
    assert_eq!(u["preferred_level"], json!({ "priority": 0, "locality_distance": 0 }));
    assert_eq!(u["candidates"], json!([e.a.addr.to_string()]));
    assert_eq!(u["endpoints"][1]["locality_distance"], 1);

    // 12. No virtual host, and a suffix domain.
    let v = explain(&e, "GET", "http://nowhere.local/", &[]).await;
    assert_eq!(outcome(&v), "no_route");
    assert_eq!(v["verdict"]["detail"], "no virtual host serves \"nowhere.local\"");
    let v = explain(&e, "GET", "http://shop.example.com/", &[]).await;
    assert_eq!(v["virtual_host"]["matched_by"], "suffix domain \"*.example.com\"");
    assert_eq!(route(&v), "shop-all");

    // 13. Redirect and direct response.
    assert_eq!(
        outcome(&explain(&e, "GET", "http://reviews/old", &[]).await),
        "redirect"
    );
    let v = explain(&e, "GET", "http://reviews/ping", &[]).await;
    assert_eq!(outcome(&v), "direct_response");
    assert_eq!(v["verdict"]["status"], 200);

    // 14. Authorization: a local caller is allowed by the ALLOW policy, and said so.
    assert_eq!(v["policies"]["authorization"]["decision"], "allowed");
    assert_eq!(
        v["policies"]["authorization"]["detail"],
        "allowed by policy allow-local[0]"
    );
}

/// A raw HTTP/1.1 request from a chosen loopback source address: (status, body).
async fn from_source(source: &str, to: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn explain_from(e: &Env, url: &str, source: &str) -> Value {
    let admin = admin_addr(&e.proxy);
    let body = json!({ "method": "GET", "url": url, "source": source }).to_string();
    let got = send_once(
        admin,
        req(
            "POST",
            "/explain",
            &admin.to_string(),
            &[("content-type", "application/json")],
            &body,
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    serde_json::from_str(&got.text()).unwrap()
}

#[tokio::test]
async fn authorization_decisions_match_real_requests() {
    let e = env().await;
    let web = e.proxy.listener_addr("web").unwrap();

    // 15. Denied by a DENY policy, before any route is considered.
    let v = explain(&e, "GET", "http://reviews/private/x", &[]).await;
    assert_eq!(outcome(&v), "denied", "{v:#}");
    assert_eq!(v["verdict"]["status"], 403);
    assert_eq!(v["verdict"]["detail"], "denied by policy deny-private[0]");
    assert_eq!(
        v["policies"]["authorization"]["response_code_details"],
        "rbac_access_denied_matched_policy[deny-private[0]]"
    );
    let (status, body) = from_source("127.0.0.1", web, "/private/x").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // 16. Allowed by the ALLOW policy: explain says which, and the request goes through.
    let v = explain(&e, "GET", "http://reviews/api/x", &[]).await;
    assert_eq!(outcome(&v), "forward", "{v:#}");
    assert_eq!(v["policies"]["authorization"]["policy"], "allow-local[0]");
    assert_eq!(from_source("127.0.0.1", web, "/api/x").await.0, 200);

    // 17. Another source: no ALLOW policy matches, so the default is deny.
    let v = explain_from(&e, "http://reviews/api/x", "127.0.0.2").await;
    assert_eq!(outcome(&v), "denied", "{v:#}");
    assert_eq!(
        v["verdict"]["detail"],
        "denied: ALLOW policies exist and none matches (default deny)"
    );
    assert_eq!(
        v["policies"]["authorization"]["response_code_details"],
        "rbac_access_denied_matched_policy[none]"
    );
    let (status, body) = from_source("127.0.0.2", web, "/api/x").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // Counted: two denials, and the allowed request.
    let admin = admin_addr(&e.proxy);
    let m = send_once(admin, req("GET", "/stats/prometheus", &admin.to_string(), &[], ""))
        .await
        .unwrap()
        .text();
    assert!(m.contains("weft_rbac_denied_total{listener=\"web\"} 2"), "{m}");
    assert!(m.contains("weft_rbac_allowed_total{listener=\"web\"} 1"), "{m}");
}

#[tokio::test]
async fn rate_limit_is_peeked_not_consumed() {
    let e = env().await;
    for _ in 0..3 {
        let v = explain(&e, "GET", "http://reviews/limited", &[]).await;
        assert_eq!(v["policies"]["local_rate_limit"]["tokens_now"], 1, "{v:#}");
        assert_eq!(outcome(&v), "forward");
    }
    // The one token is still there for a real request, which takes it.
    assert_eq!(real(&e, "GET", "/limited", "reviews", &[]).await.0, 200);
    let v = explain(&e, "GET", "http://reviews/limited", &[]).await;
    assert_eq!(v["policies"]["local_rate_limit"]["tokens_now"], 0);
    assert_eq!(outcome(&v), "rate_limited");
    assert_eq!(v["verdict"]["response_flags"], "RL");
    assert_eq!(real(&e, "GET", "/limited", "reviews", &[]).await.0, 429);
}

#[tokio::test]
async fn unhealthy_endpoints_are_not_candidates() {
    let e = env().await;
    let dead = e.dead.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let v = explain(&e, "GET", "http://reviews/sick", &[]).await;
        let eps = v["upstream"][0]["endpoints"].as_array().unwrap().clone();
        let d = eps.iter().find(|h| h["address"] == dead.as_str()).unwrap().clone();
        if d["healthy"] == false || std::time::Instant::now() >= deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let u = &v["upstream"][0];
    let d = u["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == dead.as_str())
        .unwrap();
    assert_eq!(d["eligible"], false, "{v:#}");
    let mut c: Vec<String> = u["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    c.sort();
    let mut want = vec![e.a.addr.to_string(), e.b.addr.to_string()];
    want.sort();
    assert_eq!(c, want);
}

#[tokio::test]
async fn bad_explain_requests_get_400_naming_the_field() {
    let e = env().await;
    let admin = admin_addr(&e.proxy);
    for (body, want) in [
        ("not json", "body is not JSON"),
        (r#"{"method":"GET"}"#, "url: required"),
        (
            r#"{"url":"http://reviews/","headers":{"x":1}}"#,
            "headers.x: must be a string",
        ),
        (r#"{"url":"/relative"}"#, "url: needs a host"),
    ] {
        let got = send_once(
            admin,
            req(
                "POST",
                "/explain",
                &admin.to_string(),
                &[("content-type", "application/json")],
                body,
            ),
        )
        .await
        .unwrap();
        assert_eq!(got.status, 400, "{body}");
        assert!(got.text().contains(want), "{body}: {}", got.text());
    }
}
