//! Durations and enumerations written as text in YAML: every bad one refused naming its field, all
//! in one error, and the good ones reach the model (the xDS conversion fills the same fields typed).

use std::time::Duration;
use weft_config::*;

const BAD: &str = r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
    direction: sideways
    http:
      codec: http3
      idle_timeout: 5
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                route: { cluster: c, priority: urgent, timeout: 1.5 parsecs }
                request_headers_to_add: [{ name: x-a, value: b, action: replace }]
clusters:
  - name: c
    type: dns
    lb_policy: rr
    protocol: http3
    connect_timeout: 10000000000s
    subsets: { fallback_policy: everything }
    endpoints: [{ address: "127.0.0.1:1" }]
"#;

#[test]
fn every_bad_value_is_named() {
    let e = from_yaml(BAD).unwrap_err().to_string();
    for want in [
        "listeners[0].direction: unknown value \"sideways\" (inbound, outbound)",
        "listeners[0].http.codec: unknown value \"http3\" (auto, http1, http2)",
        "listeners[0].http.idle_timeout: \"5\" has no unit",
        "priority: unknown value \"urgent\" (default, high)",
        "timeout: \"1.5 parsecs\"",
        "action: unknown value \"replace\" (append, overwrite, add_if_absent)",
        "clusters[0].type: unknown value \"dns\" (static, strict_dns, original_dst)",
        "clusters[0].lb_policy: unknown value \"rr\" (round_robin, least_request, random, ring_hash, maglev)",
        "clusters[0].protocol: unknown value \"http3\" (http1, http2)",
        "clusters[0].connect_timeout: \"10000000000s\" is too large",
        "clusters[0].subsets.fallback_policy: unknown value \"everything\" (no_fallback, any_endpoint, default_subset)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn good_text_reaches_the_model() {
    let good = BAD
        .replace("sideways", "inbound")
        .replace("http3\n      idle", "http1\n      idle")
        .replace("idle_timeout: 5", "idle_timeout: 5s")
        .replace("urgent", "high")
        .replace("1.5 parsecs", "1.5s")
        .replace("replace", "add_if_absent")
        .replace("type: dns", "type: strict_dns")
        .replace("rr", "maglev")
        .replace("protocol: http3", "protocol: http2")
        .replace("10000000000s", "250ms")
        .replace("everything", "no_fallback");
    let c = from_yaml(&good).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].direction, Direction::Inbound);
    let cl = &c.clusters[0];
    assert!(matches!(cl.discovery, Discovery::StrictDns { .. }));
    assert!(matches!(cl.lb_policy, LbPolicy::Maglev { .. }));
    assert_eq!(cl.protocol, UpstreamProtocol::Http2);
    assert_eq!(cl.connect_timeout, Duration::from_millis(250));
}
