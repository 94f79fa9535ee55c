//! `access_log` entries of kind `grpc` (Envoy's gRPC access-log service): the list form beside a
//! file log, defaults, and bad values refused with the field named.

use std::time::Duration;
use weft_config::{from_yaml, NetworkFilter};

fn yaml(http_log: &str, tcp_log: &str) -> String {
    format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    http:
      access_log: {http_log}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}]
  - name: db
    address: 127.0.0.1:5433
    tcp_proxy: {{ cluster: app, access_log: {tcp_log} }}
clusters:
  - name: app
    endpoints: [{{ address: 127.0.0.1:9000 }}]
  - name: als
    endpoints: [{{ address: 127.0.0.1:9001 }}]
"#
    )
}

#[test]
fn list_with_a_file_log_and_a_grpc_log() {
    let c = from_yaml(&yaml(
        r#"[{ path: stdout, format: "" }, { grpc: { cluster: als, log_name: web-log, buffer_flush_interval: 250ms, buffer_size_bytes: 0, additional_request_headers_to_log: [X-User, x-user], additional_response_headers_to_log: [x-cache] } }]"#,
        "{ grpc: { cluster: als, log_name: tcp-log } }",
    ))
    .unwrap();
    let NetworkFilter::Http(h) = &c.listeners[0].filter_chains[0].filter else {
        panic!()
    };
    assert!(h.access_log.as_ref().is_some_and(|l| l.format.is_some()));
    let g = h.grpc_access_log.as_ref().expect("grpc log");
    assert_eq!(g.cluster, "als");
    assert_eq!(g.log_name, "web-log");
    assert_eq!(g.buffer_flush_interval, Duration::from_millis(250));
    assert_eq!(g.buffer_size_bytes, 0);
    assert_eq!(g.additional_request_headers_to_log, vec!["x-user".to_string()]);
    assert_eq!(g.additional_response_headers_to_log, vec!["x-cache".to_string()]);
    let NetworkFilter::TcpProxy(t) = &c.listeners[1].filter_chains[0].filter else {
        panic!()
    };
    assert!(t.access_log.is_none());
    let g = t.grpc_access_log.as_ref().expect("grpc log");
    assert_eq!(
        (g.buffer_flush_interval, g.buffer_size_bytes, g.max_queue_size),
        (Duration::from_secs(1), 16384, 4096),
        "Envoy's defaults (1 s, 16 KiB) and weft's queue bound"
    );
}

#[test]
fn bad_grpc_logs_are_refused_naming_the_field() {
    let cases = [
        (
            "{ grpc: { log_name: x } }",
            "listeners[0].http.access_log.grpc.cluster: is required",
        ),
        (
            "{ grpc: { cluster: nope, log_name: x } }",
            "listeners[0].http.access_log.grpc.cluster: unknown cluster \"nope\"",
        ),
        (
            "[{ path: stdout }, { grpc: { cluster: als } }]",
            "listeners[0].http.access_log[1].grpc.log_name: is required",
        ),
        (
            "{ grpc: { cluster: als, log_name: x, buffer_flush_interval: 0s } }",
            "access_log.grpc.buffer_flush_interval: must be between 1ms and 1h",
        ),
        (
            "{ grpc: { cluster: als, log_name: x, buffer_size_bytes: 99999999 } }",
            "access_log.grpc.buffer_size_bytes: 99999999 is out of range",
        ),
        (
            "{ grpc: { cluster: als, log_name: x, max_queue_size: 0 } }",
            "access_log.grpc.max_queue_size: 0 is out of range",
        ),
        (
            "{ grpc: { cluster: als, log_name: x, additional_request_headers_to_log: [ok, \"bad name\"] } }",
            "access_log.grpc.additional_request_headers_to_log[1]: \"bad name\" is not a valid header name",
        ),
        (
            "{ path: stdout, grpc: { cluster: als, log_name: x } }",
            "access_log.grpc: a grpc access log takes no path",
        ),
        (
            "[{ grpc: { cluster: als, log_name: a } }, { grpc: { cluster: als, log_name: b } }]",
            "http.access_log[1]: at most one grpc access log per filter",
        ),
        (
            "[{ path: stdout }, { path: stderr }]",
            "http.access_log[1]: at most one file/stdout access log per filter",
        ),
        (
            "{ grpc: { cluster: als, log_name: x, flush: 1s } }",
            "unknown field `flush`",
        ),
    ];
    for (log, want) in cases {
        let e = from_yaml(&yaml(log, "{ path: stdout }")).expect_err(log).to_string();
        assert!(e.contains(want), "{log}: wanted {want:?} in\n{e}");
    }
    let e = from_yaml(&yaml("{ path: stdout }", "{ grpc: { cluster: als } }"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[1].tcp_proxy.access_log.grpc.log_name: is required"),
        "{e}"
    );
}
