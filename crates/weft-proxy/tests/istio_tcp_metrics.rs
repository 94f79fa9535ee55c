//! Istio-standard TCP metrics on `/stats/prometheus` for TCP proxy listeners: dashboard-style sums
//! over `istio_tcp_*` return exactly the sessions and bytes sent through real connections.

use std::net::SocketAddr;
use std::time::Duration;
use weft_test_support::*;

mod common;
use common::{doubling_upstream, parse, sum, tcp_session};

fn yaml(up: SocketAddr, dead: SocketAddr, metadata: &str) -> String {
    format!(
        r#"
node:
  id: db-proxy-1
  metadata: {{ WORKLOAD_NAME: orders-v1, NAMESPACE: shop{metadata} }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: db-in
    address: 127.0.0.1:0
    tcp_proxy: {{ cluster: db }}
  - name: db-out
    address: 127.0.0.1:0
    direction: outbound
    tcp_proxy: {{ cluster: gone }}
clusters:
  - name: db
    endpoints: [{{ address: "{up}" }}]
  - name: gone
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
"#
    )
}

/// One session of `n` bytes; the reply's length.
async fn session(addr: SocketAddr, n: usize) -> usize {
    tcp_session(addr, n).await.1.unwrap_or_default()
}

#[tokio::test]
async fn tcp_sessions_and_bytes_sum_exactly() {
    let up = doubling_upstream().await;
    let proxy = start_proxy(&yaml(up, dead_addr(), ""));
    let inbound = proxy.listener_addr("db-in").unwrap();
    let outbound = proxy.listener_addr("db-out").unwrap();
    let sizes = [1usize, 1000, 70_000];
    for n in sizes {
        assert_eq!(session(inbound, n).await, 2 * n);
    }
    for _ in 0..2 {
        assert_eq!(session(outbound, 10).await, 0);
    }
    let sent: usize = sizes.iter().sum();
    // Closed is counted when the session's copy loop has ended: wait for the last one.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let samples = loop {
        let s = parse(&admin(&proxy, "/stats/prometheus").await.text());
        let closed = sum(&s, "istio_tcp_connections_closed_total", &[]);
        if closed >= 5.0 || std::time::Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dest = [
        ("reporter", "destination"),
        ("destination_service", "db"),
        ("response_flags", "-"),
    ];
    assert_eq!(sum(&samples, "istio_tcp_connections_opened_total", &dest), 3.0);
    assert_eq!(sum(&samples, "istio_tcp_connections_closed_total", &dest), 3.0);
    assert_eq!(sum(&samples, "istio_tcp_received_bytes_total", &dest), sent as f64);
    assert_eq!(sum(&samples, "istio_tcp_sent_bytes_total", &dest), (2 * sent) as f64);
    let labels = &samples
        .iter()
        .find(|s| s.name == "istio_tcp_sent_bytes_total" && s.labels["reporter"] == "destination")
        .unwrap()
        .labels;
    for (k, v) in [
        ("destination_workload", "orders-v1"),
        ("destination_workload_namespace", "shop"),
        ("destination_service_name", "db"),
        ("source_workload", "unknown"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "none"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}: {labels:?}");
    }
    assert!(
        !labels.contains_key("response_code"),
        "TCP metrics have no response code"
    );
    // Outbound sessions whose upstream is dead: reporter=source, flagged UF, no bytes.
    let src = [
        ("reporter", "source"),
        ("destination_service", "gone"),
        ("response_flags", "UF"),
    ];
    assert_eq!(sum(&samples, "istio_tcp_connections_opened_total", &src), 2.0);
    assert_eq!(sum(&samples, "istio_tcp_connections_closed_total", &src), 2.0);
    assert_eq!(sum(&samples, "istio_tcp_received_bytes_total", &src), 0.0);
    assert_eq!(sum(&samples, "istio_tcp_connections_opened_total", &[]), 5.0);
}

#[tokio::test]
async fn node_metadata_turns_them_off() {
    let up = doubling_upstream().await;
    let proxy = start_proxy(&yaml(up, dead_addr(), ", WEFT_ISTIO_METRICS: \"false\""));
    assert_eq!(session(proxy.listener_addr("db-in").unwrap(), 10).await, 20);
    let text = admin(&proxy, "/stats/prometheus").await.text();
    assert!(!text.contains("istio_tcp_connections_opened_total{"), "{text}");
}
