//! Istio-standard metrics on `/stats/prometheus`: dashboard-style queries (a `sum` over label
//! matchers, evaluated on the parsed exposition text) return exactly the traffic sent.

use weft_test_support::*;

mod common;
use common::{parse, sum};

fn yaml(up: std::net::SocketAddr, dead: std::net::SocketAddr) -> String {
    format!(
        r#"
node:
  id: reviews-v1-abc
  metadata: {{ WORKLOAD_NAME: reviews-v1, NAMESPACE: bookinfo, CANONICAL_SERVICE: reviews, CANONICAL_REVISION: v1 }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    direction: inbound
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /dead }}
                route: {{ cluster: gone }}
              - match: {{ prefix: / }}
                route: {{ cluster: x }}
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: ratings }}
clusters:
  - name: x
    endpoints: [{{ address: "{up}" }}]
  - name: ratings
    endpoints: [{{ address: "{up}" }}]
  - name: gone
    endpoints: [{{ address: "{dead}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_queries_count_the_traffic() {
    let up = upstream::fixed_upstream("ok").await;
    let p = proxy::start_proxy(&yaml(up.addr, net::dead_addr()));
    let inbound = p.listener_addr("inbound").unwrap();
    let outbound = p.listener_addr("outbound").unwrap();
    let mut c = H1Client::connect(inbound).await;
    for i in 0..37 {
        assert_eq!(c.get(&format!("/item/{i}")).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(client::get(inbound, "/dead").await.status, 503);
    }
    let mut o = H1Client::connect(outbound).await;
    for _ in 0..5 {
        assert_eq!(o.get("/r").await.status, 200);
    }
    let text = proxy::stats(&p).await;
    let s = parse(&text);
    let dest = [
        ("reporter", "destination"),
        ("destination_service_name", "x"),
        ("response_code", "200"),
    ];
    assert_eq!(sum(&s, "istio_requests_total", &dest), 37.0, "{text}");
    assert_eq!(sum(&s, "istio_request_duration_milliseconds_count", &dest), 37.0);
    assert_eq!(
        sum(
            &s,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", "reviews-v1"),
                ("destination_workload_namespace", "bookinfo"),
                ("destination_canonical_service", "reviews"),
                ("destination_canonical_revision", "v1"),
                ("source_workload", "unknown"),
                ("request_protocol", "http"),
                ("connection_security_policy", "none"),
            ]
        ),
        41.0
    );
    // Failures carry their reason as response_flags.
    assert_eq!(
        sum(
            &s,
            "istio_requests_total",
            &[
                ("destination_service_name", "gone"),
                ("response_code", "503"),
                ("response_flags", "UF")
            ]
        ),
        4.0
    );
    // The outbound listener reports as the source, with this workload as the source.
    assert_eq!(
        sum(
            &s,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("source_workload", "reviews-v1"),
                ("destination_service", "ratings"),
                ("response_code", "200")
            ]
        ),
        5.0
    );
    // Response sizes come from the body's framed length (content-length): 5 responses of 2 bytes each ("ok").
    assert_eq!(
        sum(
            &s,
            "istio_response_bytes_sum",
            &[("reporter", "source"), ("response_code", "200")]
        ),
        10.0
    );
    // No path or id became a label value.
    assert!(!text.contains("/item/"), "paths must not be labels");
    // Weft's own metrics are still there.
    assert!(sum(&s, "weft_downstream_rq_total", &[]) >= 46.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_metrics_can_be_turned_off() {
    let up = upstream::fixed_upstream("ok").await;
    let y = yaml(up.addr, net::dead_addr()).replace(
        "CANONICAL_REVISION: v1",
        "CANONICAL_REVISION: v1, WEFT_ISTIO_METRICS: \"false\"",
    );
    let p = proxy::start_proxy(&y);
    assert_eq!(client::get(p.listener_addr("inbound").unwrap(), "/a").await.status, 200);
    let text = proxy::stats(&p).await;
    assert!(!text.contains("istio_requests_total{"), "{text}");
}

/// Requests the proxy answers by itself after a route matched (fault abort, the route's rate
/// limit) are labelled with the route's destination, as Istio labels them (its cluster's service
/// metadata when it has some, else the cluster's name); only a request that matched no route
/// (`NR`) says `destination_service="unknown"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_carry_the_routes_destination() {
    let up = upstream::fixed_upstream("ok").await;
    let y = format!(
        r#"
node:
  id: productpage-1
  metadata: {{ WORKLOAD_NAME: productpage-v1, NAMESPACE: bookinfo }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    http:
      route_config:
        virtual_hosts:
          - name: ratings
            domains: ["ratings"]
            routes:
              - match: {{ prefix: /fault }}
                route:
                  cluster: ratings
                  fault: {{ abort: {{ http_status: 503, percent: 100 }} }}
              - match: {{ prefix: /limited }}
                route:
                  cluster: ratings
                  local_rate_limit: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }}
              - match: {{ prefix: / }}
                route: {{ cluster: ratings }}
          - name: details
            domains: ["details"]
            routes:
              - match: {{ prefix: /fault }}
                route:
                  cluster: details
                  fault: {{ abort: {{ http_status: 500, percent: 100 }} }}
clusters:
  - name: ratings
    service: {{ host: ratings.bookinfo.svc.cluster.local, name: ratings, namespace: bookinfo }}
    endpoints: [{{ address: "{up}" }}]
  - name: details
    endpoints: [{{ address: "{up}" }}]
"#,
        up = up.addr
    );
    let p = proxy::start_proxy(&y);
    let out = p.listener_addr("outbound").unwrap();
    let get = |host: &'static str, path: &'static str| async move {
        client::send_once(out, client::req("GET", path, host, &[], ""))
            .await
            .unwrap()
            .status
            .as_u16()
    };
    for _ in 0..3 {
        assert_eq!(get("ratings", "/ok").await, 200);
    }
    for _ in 0..4 {
        assert_eq!(get("ratings", "/fault").await, 503);
    }
    // One token: the first passes, the next two are refused (RL).
    let limited = [
        get("ratings", "/limited").await,
        get("ratings", "/limited").await,
        get("ratings", "/limited").await,
    ];
    assert_eq!(limited, [200, 429, 429]);
    for _ in 0..2 {
        assert_eq!(get("details", "/fault").await, 500);
    }
    assert_eq!(get("nowhere", "/").await, 404);
    let text = proxy::stats(&p).await;
    let s = parse(&text);
    let ratings = |code: &'static str, flags: &'static str| {
        sum(
            &s,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("source_workload", "productpage-v1"),
                ("destination_service", "ratings.bookinfo.svc.cluster.local"),
                ("destination_service_name", "ratings"),
                ("destination_service_namespace", "bookinfo"),
                ("response_code", code),
                ("response_flags", flags),
            ],
        )
    };
    assert_eq!(ratings("200", "-"), 4.0, "{text}");
    assert_eq!(ratings("503", "FI"), 4.0, "{text}");
    assert_eq!(ratings("429", "RL"), 2.0, "{text}");
    // A cluster without service metadata: its name.
    assert_eq!(
        sum(
            &s,
            "istio_requests_total",
            &[
                ("destination_service", "details"),
                ("destination_service_name", "details"),
                ("response_code", "500"),
                ("response_flags", "FI")
            ]
        ),
        2.0,
        "{text}"
    );
    // Nothing matched: unknown.
    assert_eq!(
        sum(
            &s,
            "istio_requests_total",
            &[
                ("destination_service", "unknown"),
                ("response_code", "404"),
                ("response_flags", "NR")
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(sum(&s, "istio_requests_total", &[]), 13.0, "{text}");
}
