//! TLS chosen per endpoint (`tls_matches`, Envoy's `transport_socket_matches`) and cipher suites
//! restricted by name (`cipher_suites`), through real sockets on 127.0.0.1: a cluster whose one
//! endpoint is a weft TLS listener that requires a client certificate and whose other is a plaintext
//! HTTP server; a listener offering one TLS 1.3 suite, and rustls clients offering it or others.

use std::collections::HashMap;
use std::net::SocketAddr;
use weft_proxy::Server;
use weft_test_support::*;
use weft_tls::testcerts::Ca;

struct Certs {
    dir: TempDir,
}

fn certs() -> Certs {
    let dir = TempDir::new("endpoint-tls");
    let ca = Ca::new("weft test endpoint CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["backend.example.com"]).write(dir.path(), "backend");
    ca.leaf_dns(&["client.example.com"]).write(dir.path(), "client");
    Certs { dir }
}

/// A weft proxy terminating TLS (client certificate required, from `ca.crt`) in front of `app`.
fn tls_server(c: &Certs, app: SocketAddr) -> std::sync::Arc<Server> {
    let d = c.dir.path().display();
    start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: {d}/backend.crt, key_file: {d}/backend.key }}]
      require_client_certificate: true
      trusted_ca_file: {d}/ca.crt
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
"#
    ))
}

/// The front proxy: cluster `mixed` over `endpoints`, with `tls` blocks (`{d}` is the cert dir).
fn front(c: &Certs, cluster_tls: &str) -> String {
    let cluster_tls = cluster_tls.replace("{d}", &c.dir.path().display().to_string());
    format!(
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
              - match: {{ prefix: / }}
                route: {{ cluster: mixed }}
clusters:
  - name: mixed
    lb_policy: round_robin
{cluster_tls}
"#
    )
}

const MUTUAL: &str = "{ mode: mutual, sni: backend.example.com, trusted_ca_file: {d}/ca.crt, cert_file: {d}/client.crt, key_file: {d}/client.key }";

/// Sends `n` requests through `proxy` and counts the bodies by text; every answer must be a 200.
async fn spread(proxy: &Server, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let got = get(proxy.listener_addr("web").unwrap(), "/x").await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        *seen.entry(got.text()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn one_cluster_reaches_an_mtls_endpoint_and_a_plaintext_one() {
    let c = certs();
    let app = upstream(|_| async { text(200, "tls-backend") }).await;
    let plain = upstream(|_| async { text(200, "plain-backend") }).await;
    let server = tls_server(&c, app.addr);
    let tls_addr = server.listener_addr("web").unwrap();

    // Plaintext by default; the endpoint marked tlsMode: istio matches the mutual TLS entry.
    let yaml = front(
        &c,
        &format!(
            r#"    endpoints:
      - {{ address: "{tls_addr}", tls_match: {{ tlsMode: istio }} }}
      - {{ address: "{}" }}
    tls_matches:
      - {{ name: tlsMode-istio, match: {{ tlsMode: istio }}, tls: {MUTUAL} }}"#,
            plain.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let seen = spread(&proxy, 6).await;
    assert_eq!(seen.get("tls-backend"), Some(&3), "{seen:?}");
    assert_eq!(seen.get("plain-backend"), Some(&3), "{seen:?}");
    let hs = stat(&proxy, "weft_tls_handshakes_total{side=\"upstream\",name=\"mixed\"}").await;
    assert!(hs.unwrap_or(0.0) >= 1.0, "{hs:?}");
    // The TLS server saw a verified client certificate on every connection it accepted.
    let down = stat(&server, "weft_tls_handshakes_total{side=\"downstream\",name=\"web\"}").await;
    assert!(down.unwrap_or(0.0) >= 1.0, "{down:?}");
    // /clusters shows each host's TLS and the entry that chose it.
    let clusters: serde_json::Value = serde_json::from_str(&admin(&proxy, "/clusters").await.text()).unwrap();
    let hosts = &clusters["clusters"][0]["hosts"];
    let by_addr = |a: SocketAddr| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["address"] == a.to_string())
            .cloned()
            .unwrap()
    };
    let h = by_addr(tls_addr);
    assert_eq!(
        (h["tls"].as_str(), h["tls_match"].as_str()),
        (Some("mutual"), Some("tlsMode-istio")),
        "{h}"
    );
    let h = by_addr(plain.addr);
    assert!(h["tls"].is_null() && h["tls_match"].is_null(), "{h}");

    // Istio's shape: no cluster-wide socket chosen (here a default that would fail: no client
    // certificate), a tlsMode-istio entry, and a tlsMode-disabled entry with an empty match that
    // every other endpoint matches (plaintext). The locality's metadata is consulted when the
    // endpoint's matches nothing: the TLS endpoint carries tlsMode on its locality only.
    let yaml = front(
        &c,
        &format!(
            r#"    tls: {{ sni: backend.example.com, trusted_ca_file: {{d}}/ca.crt }}
    endpoints:
      - {{ address: "{tls_addr}", tls_match: {{ other: x }}, locality_tls_match: {{ tlsMode: istio }} }}
      - {{ address: "{}" }}
    tls_matches:
      - {{ name: tlsMode-istio, match: {{ tlsMode: istio }}, tls: {MUTUAL} }}
      - {{ name: tlsMode-disabled, match: {{}} }}"#,
            plain.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    // `{}` matches the TLS endpoint's own metadata first: both endpoints are plaintext, and the
    // TLS server refuses the plaintext request (no response: 503 or 502), while the plaintext
    // endpoint answers.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let got = get(proxy.listener_addr("web").unwrap(), "/x").await;
        statuses.push((got.status.as_u16(), got.text()));
    }
    assert!(
        statuses.iter().any(|(s, b)| *s == 200 && b == "plain-backend"),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|(s, _)| *s >= 500), "{statuses:?}");
    assert!(!statuses.iter().any(|(_, b)| b == "tls-backend"), "{statuses:?}");

    // Without endpoint metadata, the locality's tlsMode decides: mutual TLS.
    let yaml = front(
        &c,
        &format!(
            r#"    tls: {{ sni: backend.example.com, trusted_ca_file: {{d}}/ca.crt }}
    endpoints:
      - {{ address: "{tls_addr}", locality_tls_match: {{ tlsMode: istio }} }}
      - {{ address: "{}", tls_match: {{ tlsMode: disabled }} }}
    tls_matches:
      - {{ name: tlsMode-istio, match: {{ tlsMode: istio }}, tls: {MUTUAL} }}
      - {{ name: tlsMode-disabled, match: {{ tlsMode: disabled }} }}"#,
            plain.addr
        ),
    );
    // The first endpoint's own metadata is empty, so only `{ tlsMode: istio }` on its locality
    // matches; the second matches the plaintext entry.
    let proxy = start_proxy(&yaml);
    let seen = spread(&proxy, 4).await;
    assert_eq!(seen.get("tls-backend"), Some(&2), "{seen:?}");
    assert_eq!(seen.get("plain-backend"), Some(&2), "{seen:?}");
}

/// An endpoint whose TLS choice changes on reload starts with a fresh pool: a pooled mTLS
/// connection is never used for the plaintext choice (and the reverse).
#[tokio::test]
async fn a_changed_tls_choice_does_not_reuse_pooled_connections() {
    let c = certs();
    let app = upstream(|_| async { text(200, "tls-backend") }).await;
    let server = tls_server(&c, app.addr);
    let tls_addr = server.listener_addr("web").unwrap();
    let yaml = |mark: &str| {
        front(
            &c,
            &format!(
                r#"    endpoints: [{{ address: "{tls_addr}"{mark} }}]
    tls_matches:
      - {{ name: tlsMode-istio, match: {{ tlsMode: istio }}, tls: {MUTUAL} }}"#
            ),
        )
    };
    let marked = yaml(", tls_match: { tlsMode: istio }");
    let proxy = start_proxy(&marked);
    let addr = proxy.listener_addr("web").unwrap();
    // Keep-alive: the first request leaves an idle mTLS connection in the pool.
    let mut client = H1Client::connect(addr).await;
    let got = client.get("/x").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "tls-backend"));
    let hs = stat(&proxy, "weft_tls_handshakes_total{side=\"upstream\",name=\"mixed\"}").await;
    assert_eq!(hs, Some(1.0));
    // The same address without the mark: plaintext, which the TLS server refuses.
    proxy.apply(weft_config::from_yaml(&yaml("")).unwrap()).unwrap();
    let got = get(addr, "/x").await;
    assert!(got.status.as_u16() >= 500, "{} {}", got.status, got.text());
    // Marked again: mTLS on a new connection.
    proxy.apply(weft_config::from_yaml(&marked).unwrap()).unwrap();
    let got = get(addr, "/x").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "tls-backend"));
    let hs = stat(&proxy, "weft_tls_handshakes_total{side=\"upstream\",name=\"mixed\"}").await;
    assert_eq!(hs, Some(2.0));
}

#[test]
fn tls_matches_are_validated_naming_the_field() {
    let yaml = r#"
listeners: []
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1" }]
    tls_matches:
      - { name: m, match: { tlsMode: istio }, tls: { mode: simple, sni: a.example.com } }
"#;
    let err = weft_config::from_yaml(yaml).unwrap_err().to_string();
    assert!(err.contains("clusters[0].tls_matches[0].tls.trusted_ca_file"), "{err}");
    let yaml = r#"
listeners: []
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1", tls_match: { tlsMode: [istio] } }]
"#;
    assert!(weft_config::from_yaml(yaml).is_err());
}

/// A rustls client trusting `ca.crt`, offering only `ciphers` (IANA ids).
fn client(c: &Certs, ciphers: &[u16]) -> weft_tls::Connector {
    let roots = weft_tls::pem::read_roots("ca", &c.dir.join("ca.crt")).unwrap();
    let cfg = weft_tls::client_config_with_ciphers(
        weft_tls::Trust::Roots(roots),
        vec![],
        weft_tls::ClientCert::None,
        vec![b"http/1.1".to_vec()],
        weft_tls::TlsVersion::V12,
        &[weft_tls::Suite::Standard],
        ciphers,
        "",
    )
    .unwrap();
    weft_tls::Connector::new(cfg, "backend.example.com", "").unwrap()
}

#[tokio::test]
async fn a_listener_restricted_by_cipher_suites_refuses_clients_offering_only_others() {
    let c = certs();
    let app = upstream(|_| async { text(200, "ok") }).await;
    let d = c.dir.path().display();
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: {d}/backend.crt, key_file: {d}/backend.key }}]
      cipher_suites: ["[TLS_AES_256_GCM_SHA384|TLS_CHACHA20_POLY1305_SHA256]", ECDHE-ECDSA-AES128-GCM-SHA256]
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{}" }}]
"#,
        app.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let handshake = |ciphers: &'static [u16]| {
        let conn = client(&c, ciphers);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.connect(tcp)
                .await
                .map(|s| s.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()))
        }
    };
    // TLS_AES_128_GCM_SHA256 (1.3) and ECDHE-ECDSA-AES256-GCM-SHA384 (1.2) are not offered.
    let err = handshake(&[0x1301, 0xc02c]).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("handshake"), "{err}");
    let ok = handshake(&[0x1302]).await.unwrap();
    assert_eq!(ok, Some(weft_tls::rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    let ok = handshake(&[0x1303]).await.unwrap();
    assert_eq!(ok, Some(weft_tls::rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    // TLS 1.2 with the one TLS 1.2 suite named.
    let ok = handshake(&[0xc02b]).await.unwrap();
    assert_eq!(
        ok,
        Some(weft_tls::rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    let total = stats(&proxy).await;
    assert!(
        total.contains("weft_tls_handshake_failures_total{side=\"downstream\",name=\"web\""),
        "{total}"
    );
    // /config_dump shows the suites offered.
    let dump: serde_json::Value = serde_json::from_str(&admin(&proxy, "/config_dump").await.text()).unwrap();
    assert_eq!(
        dump["config"]["listeners"][0]["tls"]["cipher_suites"],
        serde_json::json!([
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        ]),
        "{dump}"
    );

    // Unknown names are refused naming the field and the name; so are names weft does not
    // implement when the list names nothing it does (beside an implemented one they are left out).
    let bad = yaml.replace("ECDHE-ECDSA-AES128-GCM-SHA256]", "NOT-A-CIPHER]");
    let err = weft_config::from_yaml(&bad).unwrap_err().to_string();
    assert!(err.contains("listeners[0].tls.cipher_suites[1]"), "{err}");
    assert!(err.contains("unknown cipher suite \"NOT-A-CIPHER\""), "{err}");
    let list = r#"["[TLS_AES_256_GCM_SHA384|TLS_CHACHA20_POLY1305_SHA256]", ECDHE-ECDSA-AES128-GCM-SHA256]"#;
    assert!(yaml.contains(list));
    let bad = yaml.replace(list, "[AES256-SHA, AES128-GCM-SHA256]");
    let err = weft_config::from_yaml(&bad).unwrap_err().to_string();
    assert!(
        err.contains("listeners[0].tls.cipher_suites[1]: cipher suite \"AES128-GCM-SHA256\" is not implemented"),
        "{err}"
    );
    weft_config::from_yaml(&yaml.replace(list, "[ECDHE-ECDSA-AES128-GCM-SHA256, AES128-GCM-SHA256]"))
        .expect("an unimplemented name beside an implemented one is left out");
}
