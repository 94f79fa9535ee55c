//! Routes fuzzer-built requests through a fixed route table, and fuzzes `query_param`.
//!
//! Input layout: NUL-separated fields
//!   0: selector bytes (method choice)
//!   1: Host value          2: path          3: query (without `?`)
//!   4: a query parameter name for `query_param`
//!   5..: headers, each field = one name-selector byte + the raw value bytes
//! URIs and header values are only built when they parse; otherwise a fallback is used.
//!
//! Checks: `RouteTable::route` and `query_param` never panic.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weft_proxy::router::{query_param, RouteTable};
use weft_proxy::stats::Metrics;

const CONFIG: &str = r#"
listeners:
  - name: fuzz
    address: 127.0.0.1:1
    http:
      route_config:
        virtual_hosts:
          - name: exact-host
            domains: ["api.example.com", "api.example.com:8443", "[::1]"]
            routes:
              - { name: exact-path, match: { path: /exact }, route: { cluster: c } }
              - { name: exact-ci, match: { path: /Exact/CI, case_sensitive: false }, route: { cluster: c } }
              - { name: regex-path, match: { regex: "/items/[0-9]+(/[a-z]*)?" }, route: { cluster: c } }
              - name: methods
                match: { prefix: /api, methods: [POST, PUT, PATCH] }
                route: { cluster: c }
              - name: headers
                match:
                  prefix: /api
                  headers:
                    - { name: x-canary, exact: "yes" }
                    - { name: x-user, regex: "u[0-9]{1,4}" }
                    - { name: x-tenant, prefix: "t-" }
                route: { cluster: c }
              - name: present-invert
                match:
                  prefix: /api
                  headers:
                    - { name: x-debug, present: true }
                    - { name: x-block, exact: "1", invert: true }
                route: { cluster: c }
              - name: absent
                match: { prefix: /api, headers: [{ name: authorization, present: false }] }
                route: { cluster: c }
              - name: query
                match:
                  prefix: /q
                  query_parameters:
                    - { name: v, exact: "2 x" }
                    - { name: "a b", regex: "[a-f]+%?" }
                    - { name: flag, present: true }
                route: { cluster: c }
              - { name: prefix-ci, match: { prefix: /CASE, case_sensitive: false }, route: { cluster: c } }
              - { name: catch-all, match: { prefix: / }, route: { cluster: c } }
          - name: suffix-host
            domains: ["*.example.com", "*.eu.example.com"]
            routes:
              - { name: unicode, match: { prefix: "/ü" }, route: { cluster: c } }
              - { name: regex-any, match: { regex: ".*\\.(png|jpg)" }, route: { cluster: c } }
              - { name: header-only, match: { prefix: /, headers: [{ name: x-canary, regex: ".*" }] }, route: { cluster: c } }
          - name: prefix-host
            domains: ["www.example.*"]
            routes:
              - { name: q-only, match: { prefix: /, query_parameters: [{ name: id, regex: "[0-9]+" }] }, route: { cluster: c } }
          - name: any
            domains: ["*"]
            routes:
              - { name: root, match: { path: / }, route: { cluster: c } }
              - { name: long-prefix, match: { prefix: /a/b/c/d/e/f }, route: { cluster: c } }
clusters:
  - name: c
    endpoints: [{ address: 127.0.0.1:2 }]
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let cfg = weft_config::from_yaml(CONFIG).unwrap_or_else(|e| panic!("fuzz config is invalid: {e}"));
        let weft_config::NetworkFilter::Http(h) = &cfg.listeners[0].filter_chains[0].filter else {
            panic!("fuzz config: expected an HTTP listener");
        };
        RouteTable::new(&h.route_config, "fuzz", &Metrics::new())
    })
}

const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

const HEADER_NAMES: [&str; 7] = [
    "x-canary",
    "x-user",
    "x-tenant",
    "x-debug",
    "x-block",
    "authorization",
    "x-other",
];

fuzz_target!(|data: &[u8]| {
    let t = table();
    let mut fields = data.split(|b| *b == 0);
    let sel = fields.next().unwrap_or(&[]);
    let host = String::from_utf8_lossy(fields.next().unwrap_or(&[])).into_owned();
    let path = fields.next().unwrap_or(&[]);
    let query = fields.next().unwrap_or(&[]);
    let qname = String::from_utf8_lossy(fields.next().unwrap_or(&[])).into_owned();

    let method = match sel.first() {
        Some(&b) if (b as usize) < METHODS.len() * 40 => METHODS[b as usize % METHODS.len()].clone(),
        Some(_) => Method::from_bytes(&sel[1..]).unwrap_or(Method::GET),
        None => Method::GET,
    };

    let mut headers = HeaderMap::new();
    for h in fields {
        let Some((&n, value)) = h.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(HEADER_NAMES[n as usize % HEADER_NAMES.len()]);
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }

    let mut target = path.to_vec();
    if !query.is_empty() {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    let uri = Uri::try_from(target.as_slice())
        .or_else(|_| Uri::try_from(path))
        .unwrap_or_else(|_| Uri::from_static("/"));

    let _ = t.route(&host, &method, &uri, &headers);

    // query_param on both the raw fuzzer query and the one the URI kept.
    let raw_query = String::from_utf8_lossy(query);
    let _ = query_param(&raw_query, &qname);
    if let Some(q) = uri.query() {
        for name in ["v", "a b", "flag", "id", qname.as_str()] {
            let _ = query_param(q, name);
        }
    }
});
