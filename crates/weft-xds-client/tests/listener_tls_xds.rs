//! DownstreamTlsContext → a listener's `tls` block: Istio's SDS names as the mesh identity, an
//! Istio-style inbound listener (a `tls` chain and a `raw_buffer` twin) as PERMISSIVE, per-SNI
//! certificate chains, refusals naming the field; and over a real ADS stream, a listener delivered
//! this way terminates mTLS (real handshake, real request, the client's SPIFFE ID to the app) and
//! still serves plaintext in PERMISSIVE mode.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::BoolValue;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, LISTENER};
use weft_xds_api::{pack, type_url};
use weft_xds_client::convert;
use weft_xds_client::tls::DOWNSTREAM_TLS_URL;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        ..Default::default()
    }
}

fn file(f: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(f.into())),
        ..Default::default()
    })
}

fn socket_of(ctx: &tls::DownstreamTlsContext) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
            DOWNSTREAM_TLS_URL,
            ctx,
        ))),
    }
}

/// Istio's inbound context for ISTIO_MUTUAL: SDS `default`, validation SDS `ROOTCA`, client
/// certificates required.
fn istio_mutual() -> tls::DownstreamTlsContext {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    tls::DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(Default::default()),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An HCM with an inline route to `cluster`; `fcc` is its forward_client_cert_details.
fn hcm_filter(cluster: &str, fcc: i32) -> ls::Filter {
    let h = hcm::HttpConnectionManager {
        stat_prefix: "inbound".into(),
        forward_client_cert_details: fcc,
        http_filters: vec![router_filter()],
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route_config_with("inbound", vec![route_to(cluster)]),
        )),
        ..Default::default()
    };
    ls::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
    }
}

fn chain(
    name: &str,
    transport_protocol: &str,
    server_names: &[&str],
    ctx: Option<&tls::DownstreamTlsContext>,
) -> ls::FilterChain {
    ls::FilterChain {
        name: name.into(),
        filter_chain_match: Some(ls::FilterChainMatch {
            transport_protocol: transport_protocol.into(),
            server_names: server_names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![hcm_filter("app", 3)],
        transport_socket: ctx.map(socket_of),
        ..Default::default()
    }
}

fn listener_of(chains: Vec<ls::FilterChain>) -> ls::Listener {
    ls::Listener {
        name: "inbound".into(),
        address: Some(socket("127.0.0.1:0".parse().unwrap())),
        filter_chains: chains,
        ..Default::default()
    }
}

fn converted(l: &ls::Listener) -> Result<weft_config::tls::RawListenerTls, String> {
    match convert::listener(l) {
        Ok(Some(x)) => {
            assert_eq!(x.raw.filter_chains.len(), 1, "the chains merge into one");
            Ok(x.raw.tls.expect("a tls block"))
        }
        Ok(None) => panic!("api listener"),
        Err(e) => Err(e.lines().join("\n")),
    }
}

#[test]
fn istio_inbound_tls_and_raw_buffer_chains_are_permissive_with_the_mesh_identity() {
    let ctx = istio_mutual();
    let l = listener_of(vec![
        chain("tls", "tls", &[], Some(&ctx)),
        chain("plaintext", "raw_buffer", &[], None),
    ]);
    let t = converted(&l).unwrap();
    assert_eq!(t.mode.as_deref(), Some("PERMISSIVE"));
    assert!(t.certificates.is_empty(), "the mesh identity");
    assert_eq!(
        t.forward_client_cert,
        Some(weft_config::typed::Typed::Value(
            weft_config::tls::ForwardClientCert::SanitizeSet
        ))
    );
    assert_eq!(t.alpn, Some(vec!["h2".to_string(), "http/1.1".to_string()]));
    // Validated as YAML would be: a mesh listener requiring client certificates.
    let v = weft_config::tls::listener_tls("listeners[0].tls", &t, &mut Default::default());
    assert!(v.is_mesh() && v.require_client_certificate);
    assert_eq!(v.mode, weft_config::tls::TlsMode::Permissive);

    // The TLS chain alone: STRICT.
    let l = listener_of(vec![chain("tls", "tls", &[], Some(&ctx))]);
    assert_eq!(converted(&l).unwrap().mode.as_deref(), Some("STRICT"));
    let l = listener_of(vec![chain("tls", "", &[], Some(&ctx))]);
    assert_eq!(converted(&l).unwrap().mode.as_deref(), Some("STRICT"));
}

#[test]
fn file_certificates_per_server_name_become_sni_selection() {
    let ctx_for = |c: &str| tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file(&format!("/etc/{c}.crt")),
                private_key: file(&format!("/etc/{c}.key")),
                ..Default::default()
            }],
            validation_context_type: Some(tls::common_tls_context::ValidationContextType::ValidationContext(
                tls::CertificateValidationContext {
                    trusted_ca: file("/etc/clients.pem"),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let (a, b) = (ctx_for("a"), ctx_for("b"));
    let l = listener_of(vec![
        chain("a", "tls", &["a.example.com"], Some(&a)),
        chain("b", "tls", &["b.example.com", "*.b.example.com"], Some(&b)),
    ]);
    let t = converted(&l).unwrap();
    assert_eq!(t.mode.as_deref(), Some("STRICT"));
    assert_eq!(t.require_client_certificate, Some(true));
    assert_eq!(t.trusted_ca_file.as_deref(), Some("/etc/clients.pem"));
    let certs: Vec<_> = t
        .certificates
        .iter()
        .map(|c| (c.cert_file.clone().unwrap(), c.server_names.clone()))
        .collect();
    assert_eq!(
        certs,
        vec![
            ("/etc/a.crt".to_string(), vec!["a.example.com".to_string()]),
            (
                "/etc/b.crt".to_string(),
                vec!["b.example.com".to_string(), "*.b.example.com".to_string()]
            ),
        ]
    );
}

#[test]
fn what_weft_cannot_honour_is_refused_naming_the_field() {
    let base = istio_mutual();
    let refused = |chains: Vec<ls::FilterChain>| converted(&listener_of(chains)).unwrap_err();

    // Peer SAN matching on a listener.
    let mut ctx = base.clone();
    if let Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(c)) =
        &mut ctx.common_tls_context.as_mut().unwrap().validation_context_type
    {
        c.default_validation_context = Some(tls::CertificateValidationContext {
            match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                matcher: Some(matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(CLIENT_ID.into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let e = refused(vec![chain("tls", "tls", &[], Some(&ctx))]);
    assert!(
        e.contains("filter_chains[0].transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names: "),
        "{e}"
    );
    // The mesh identity without required client certificates.
    let mut ctx = base.clone();
    ctx.require_client_certificate = None;
    let e = refused(vec![chain("tls", "tls", &[], Some(&ctx))]);
    assert!(
        e.contains("filter_chains[0].transport_socket.typed_config.require_client_certificate: must be true"),
        "{e}"
    );
    // Another SDS name; a key from an environment variable.
    let mut ctx = base.clone();
    ctx.common_tls_context
        .as_mut()
        .unwrap()
        .tls_certificate_sds_secret_configs = vec![sds("kubernetes://my-cert")];
    let e = refused(vec![chain("tls", "tls", &[], Some(&ctx))]);
    assert!(
        e.contains("tls_certificate_sds_secret_configs[0].name: \"kubernetes://my-cert\""),
        "{e}"
    );
    let inline = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file("/etc/a.crt"),
                private_key: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::EnvironmentVariable("KEY".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = refused(vec![chain("tls", "tls", &[], Some(&inline))]);
    assert!(
        e.contains("tls_certificates[0].private_key.environment_variable: unsupported"),
        "{e}"
    );
    // A plaintext chain without a TLS twin beside a TLS chain (different filters).
    let mut other = chain("plain", "raw_buffer", &[], None);
    other.filters = vec![hcm_filter("elsewhere", 0)];
    let e = refused(vec![chain("tls", "tls", &[], Some(&base)), other]);
    assert!(
        e.contains("filter_chains: filter chain 1") && e.contains("plaintext only"),
        "{e}"
    );
    // TLS passthrough, and SNI matching without TLS.
    let e = refused(vec![chain("pass", "tls", &[], None)]);
    assert!(
        e.contains("filter_chains[0].filter_chain_match.transport_protocol: \"tls\" without a TLS transport_socket"),
        "{e}"
    );
    let e = refused(vec![chain("sni", "", &["a.example.com"], None)]);
    assert!(
        e.contains("filter_chains[0].filter_chain_match.server_names: unsupported without a TLS transport_socket"),
        "{e}"
    );
    // Cipher suites nobody knows; curves weft cannot restrict.
    let mut ctx = base.clone();
    ctx.common_tls_context.as_mut().unwrap().tls_params = Some(tls::TlsParameters {
        cipher_suites: vec![
            "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
            "[AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]".into(),
            "NO-SUCH-CIPHER".into(),
        ],
        ecdh_curves: vec!["P-256".into()],
        ..Default::default()
    });
    let e = refused(vec![chain("tls", "tls", &[], Some(&ctx))]);
    // AES128-GCM-SHA256 (not implemented) is left out beside the implemented names.
    assert!(!e.contains("AES128-GCM-SHA256"), "{e}");
    assert!(
        e.contains("common_tls_context.tls_params.cipher_suites[2]: unknown cipher suite \"NO-SUCH-CIPHER\""),
        "{e}"
    );
    assert!(!e.contains("cipher_suites[0]"), "{e}");
    assert!(
        e.contains("common_tls_context.tls_params.ecdh_curves: unsupported"),
        "{e}"
    );
    // Known names become the listener's cipher_suites, SM included.
    let mut ctx = base.clone();
    ctx.common_tls_context.as_mut().unwrap().tls_params = Some(tls::TlsParameters {
        cipher_suites: vec!["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into()],
        ..Default::default()
    });
    let t = converted(&listener_of(vec![chain("tls", "tls", &[], Some(&ctx))])).unwrap();
    assert_eq!(
        t.cipher_suites,
        Some(vec![
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".to_string()
        ])
    );
}

/// Sends the cluster `app` (EDS) and its one endpoint `addr`, each ACKed (nonces n1, n2).
async fn send_app_cluster(cp: &Cp, addr: std::net::SocketAddr) {
    cp.sotw_req(0, CLUSTER).await;
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c1", "n1", vec![eds_cluster("app")]);
    cp.reply_to(m, "n1").await;
    let m = cp.mark();
    cp.send_sotw(ENDPOINT, "e1", "n2", vec![cla("app", &[addr])]);
    cp.reply_to(m, "n2").await;
}

/// An mTLS client with `leaf` as its certificate, trusting `ca` and expecting `server_id`.
fn mtls_client(ca: &weft_tls::testcerts::Ca, leaf: &weft_tls::testcerts::Leaf) -> weft_tls::Connector {
    let mesh = weft_tls::mesh::MeshIdentity::new();
    mesh.set_pem(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem).unwrap();
    let cfg = weft_tls::client_config(
        weft_tls::Trust::Mesh(mesh.clone()),
        vec![SERVER_ID.to_string()],
        weft_tls::ClientCert::Mesh(mesh),
        vec![b"http/1.1".to_vec()],
        weft_tls::TlsVersion::V12,
        "",
    )
    .unwrap();
    weft_tls::Connector::new(cfg, "outbound_.9080_._.reviews.default.svc.cluster.local", "").unwrap()
}

async fn request_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> String {
    s.write_all(
        b"GET /hello HTTP/1.1\r\nhost: reviews\r\nx-forwarded-client-cert: forged\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_mesh_listener_over_ads_terminates_mtls_and_serves_plaintext() {
    let ca = weft_tls::testcerts::Ca::new("mesh root");
    let server_leaf = ca.leaf_uri(SERVER_ID);
    let client_leaf = ca.leaf_uri(CLIENT_ID);
    let app = weft_test_support::upstream(|s| async move {
        let xfcc = s
            .headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        weft_test_support::text(200, &format!("xfcc={xfcc}"))
    })
    .await;

    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    p.server
        .shared
        .tls
        .mesh
        .set_pem(&server_leaf.cert_pem, &server_leaf.key_pem, &ca.cert_pem)
        .unwrap();
    send_app_cluster(&cp, app.addr).await;
    // A listener weft cannot honour is NACKed with the field named.
    let mut bad = istio_mutual();
    bad.require_sni = Some(BoolValue { value: true });
    let m = cp.mark();
    cp.send_sotw(
        LISTENER,
        "l0",
        "n3",
        vec![pack(
            type_url::LISTENER,
            &listener_of(vec![chain("tls", "tls", &[], Some(&bad))]),
        )],
    );
    let nack = cp.reply_to(m, "n3").await;
    let e = nack.error().expect("a NACK");
    assert!(
        e.contains("filter_chains[0].transport_socket.typed_config.require_sni"),
        "{e}"
    );
    // Istio's inbound shape: PERMISSIVE with the mesh identity.
    let ctx = istio_mutual();
    let l = listener_of(vec![
        chain("tls", "tls", &[], Some(&ctx)),
        chain("plaintext", "raw_buffer", &[], None),
    ]);
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n4", vec![pack(type_url::LISTENER, &l)]);
    let ack = cp.reply_to(m, "n4").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    let addr = p.wait_listener("inbound").await;

    // mTLS: the server proves SERVER_ID, the app sees the client's SPIFFE ID (sanitize_set).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = mtls_client(&ca, &client_leaf)
        .connect(tcp)
        .await
        .expect("mTLS handshake");
    let resp = request_over(tls).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("By={SERVER_ID};")) && resp.contains(&format!("URI={CLIENT_ID}")),
        "{resp}"
    );
    // Plaintext on the same port (PERMISSIVE): served, the forged header removed.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let resp = request_over(tcp).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("xfcc=none"),
        "{resp}"
    );
    // A client certificate from another CA is refused at the handshake.
    let other = weft_tls::testcerts::Ca::new("other root");
    let stranger = other.leaf_uri(CLIENT_ID);
    let mesh = weft_tls::mesh::MeshIdentity::new();
    mesh.set_pem(&stranger.cert_pem, &stranger.key_pem, &ca.cert_pem)
        .unwrap();
    let cfg = weft_tls::client_config(
        weft_tls::Trust::Mesh(mesh.clone()),
        vec![],
        weft_tls::ClientCert::Mesh(mesh),
        vec![],
        weft_tls::TlsVersion::V12,
        "",
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = weft_tls::Connector::new(cfg, "x.example", "")
        .unwrap()
        .connect(tcp)
        .await;
    let refused = match r {
        Err(_) => true,
        Ok(s) => !request_over(s).await.starts_with("HTTP/1.1 200"),
    };
    assert!(refused, "a client from another CA was served");

    // STRICT: the TLS chain alone; plaintext is refused.
    let l = listener_of(vec![chain("tls", "tls", &[], Some(&ctx))]);
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n5", vec![pack(type_url::LISTENER, &l)]);
    assert!(cp.reply_to(m, "n5").await.error().is_none());
    let addr = p.wait_listener("inbound").await;
    weft_test_support::eventually("plaintext refused by the STRICT listener", WAIT, || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        (!request_over(tcp).await.starts_with("HTTP/1.1 200")).then_some(())
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = mtls_client(&ca, &client_leaf)
        .connect(tcp)
        .await
        .expect("mTLS handshake");
    assert!(request_over(tls).await.starts_with("HTTP/1.1 200"));
}

fn inline_bytes(pem: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn inline_string(pem: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(pem.into())),
        ..Default::default()
    })
}

/// An edge certificate given inline (what go-control-plane and most xDS servers send).
fn inline_ctx(chain: Option<core::DataSource>, key: Option<core::DataSource>) -> tls::DownstreamTlsContext {
    tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: chain,
                private_key: key,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A TLS client trusting `ca`, sending `sni`.
fn edge_client(ca: &weft_tls::testcerts::Ca, sni: &str) -> weft_tls::Connector {
    let roots = weft_tls::pem::roots("ca", &weft_tls::PemSource::Inline(ca.cert_pem.as_str().into())).unwrap();
    let cfg = weft_tls::client_config(
        weft_tls::Trust::Roots(roots),
        vec![],
        weft_tls::ClientCert::None,
        vec![b"http/1.1".to_vec()],
        weft_tls::TlsVersion::V12,
        "",
    )
    .unwrap();
    weft_tls::Connector::new(cfg, sni, "").unwrap()
}

#[test]
fn inline_data_sources_become_pem_fields_and_env_vars_are_refused() {
    let ca = weft_tls::testcerts::Ca::new("edge root");
    let leaf = ca.leaf_dns(&["a.example.com"]);
    let mut ctx = inline_ctx(inline_bytes(&leaf.cert_pem), inline_string(&leaf.key_pem));
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.validation_context_type = Some(tls::common_tls_context::ValidationContextType::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline_string(&ca.cert_pem),
                ..Default::default()
            },
        ));
    }
    let t = converted(&listener_of(vec![chain("a", "tls", &["a.example.com"], Some(&ctx))])).unwrap();
    let c = &t.certificates[0];
    assert_eq!((c.cert_file.as_deref(), c.key_file.as_deref()), (None, None));
    assert_eq!(c.cert_pem.as_deref(), Some(leaf.cert_pem.as_str()));
    assert_eq!(c.key_pem.as_deref(), Some(leaf.key_pem.as_str()));
    assert_eq!(t.trusted_ca_pem.as_deref(), Some(ca.cert_pem.as_str()));
    // The private key never shows in a Debug rendering of the converted block.
    assert!(!format!("{t:?}").contains("PRIVATE KEY"), "{t:?}");

    let env = Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::EnvironmentVariable("KEY".into())),
        ..Default::default()
    });
    let e = converted(&listener_of(vec![chain(
        "a",
        "tls",
        &[],
        Some(&inline_ctx(inline_bytes(&leaf.cert_pem), env)),
    )]))
    .unwrap_err();
    assert!(
        e.contains("tls_certificates[0].private_key.environment_variable: unsupported"),
        "{e}"
    );
    let e = converted(&listener_of(vec![chain(
        "a",
        "tls",
        &[],
        Some(&inline_ctx(
            inline_bytes(&leaf.cert_pem),
            Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineBytes(vec![0xff, 0xfe])),
                ..Default::default()
            }),
        )),
    )]))
    .unwrap_err();
    assert!(e.contains("private_key.inline_bytes: is not PEM text"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_certificates_over_ads_are_served_by_sni_and_a_bad_one_is_nacked() {
    let ca = weft_tls::testcerts::Ca::new("edge root");
    let a = ca.leaf_dns(&["a.example.com"]);
    let b = ca.leaf_dns(&["b.example.com"]);
    let app = weft_test_support::upstream(|_| async move { weft_test_support::text(200, "edge app") }).await;
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    send_app_cluster(&cp, app.addr).await;

    // Two chains, each with its certificate inline (bytes for one, a string for the other).
    let l = listener_of(vec![
        chain(
            "a",
            "tls",
            &["a.example.com"],
            Some(&inline_ctx(inline_bytes(&a.cert_pem), inline_bytes(&a.key_pem))),
        ),
        chain(
            "b",
            "tls",
            &["b.example.com"],
            Some(&inline_ctx(inline_string(&b.cert_pem), inline_string(&b.key_pem))),
        ),
    ]);
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n3", vec![pack(type_url::LISTENER, &l)]);
    let ack = cp.reply_to(m, "n3").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    let addr = p.wait_listener("inbound").await;
    for (sni, leaf) in [("a.example.com", &a), ("b.example.com", &b)] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let s = edge_client(&ca, sni).connect(tcp).await.expect("TLS handshake");
        let served = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        let want = weft_tls::pem::certs("x", &weft_tls::PemSource::Inline(leaf.cert_pem.as_str().into())).unwrap();
        assert_eq!(served, want[0], "the certificate for {sni}");
        let resp = request_over(s).await;
        assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("edge app"), "{resp}");
    }

    // A key that does not match its certificate: NACKed naming the inline field, and the
    // listener keeps serving its previous certificates.
    let bad = listener_of(vec![chain(
        "a",
        "tls",
        &["a.example.com"],
        Some(&inline_ctx(inline_bytes(&a.cert_pem), inline_bytes(&b.key_pem))),
    )]);
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l2", "n4", vec![pack(type_url::LISTENER, &bad)]);
    let nack = cp.reply_to(m, "n4").await;
    let e = nack.error().expect("a NACK");
    assert!(
        e.contains("certificates[0].key_pem") && e.contains("does not match"),
        "{e}"
    );
    assert!(!e.contains("PRIVATE KEY"), "the key leaked into the NACK: {e}");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = edge_client(&ca, "b.example.com")
        .connect(tcp)
        .await
        .expect("still served");
    assert!(request_over(s).await.starts_with("HTTP/1.1 200"));
}

fn sds_over_ads(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn cert_secret(name: &str, leaf: &weft_tls::testcerts::Leaf) -> weft_xds_api::pb::google::protobuf::Any {
    pack(
        type_url::SECRET,
        &tls::Secret {
            name: name.into(),
            r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: inline_bytes(&leaf.cert_pem),
                private_key: inline_bytes(&leaf.key_pem),
                ..Default::default()
            })),
        },
    )
}

/// The certificate a TLS client sees at `addr` for `sni`, and whether a request then succeeds.
async fn served(ca: &weft_tls::testcerts::Ca, addr: std::net::SocketAddr, sni: &str) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let s = edge_client(ca, sni).connect(tcp).await.ok()?;
    let cert = s.get_ref().1.peer_certificates()?[0].to_vec();
    request_over(s).await.starts_with("HTTP/1.1 200").then_some(cert)
}

fn der(leaf: &weft_tls::testcerts::Leaf) -> Vec<u8> {
    weft_tls::pem::certs("x", &weft_tls::PemSource::Inline(leaf.cert_pem.as_str().into())).unwrap()[0].to_vec()
}

/// A listener whose certificate is an SDS secret on the ADS stream: the proxy asks for the secret
/// by name, the listener starts serving once it arrives, a new version of the secret is served to
/// new handshakes without touching the listener, and a secret whose key does not match is NACKed
/// while the previous certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_secrets_over_ads_serve_and_rotate_a_listener_certificate() {
    let ca = weft_tls::testcerts::Ca::new("edge root");
    let (one, two) = (ca.leaf_dns(&["a.example.com"]), ca.leaf_dns(&["a.example.com"]));
    let app = weft_test_support::upstream(|_| async move { weft_test_support::text(200, "edge app") }).await;
    let cp = Cp::start().await;
    let p = Proxy::start(&cp, "ads_sotw", "");
    send_app_cluster(&cp, app.addr).await;

    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_over_ads("edge-cert")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let l = listener_of(vec![chain("a", "tls", &["a.example.com"], Some(&ctx))]);
    let m = cp.mark();
    cp.send_sotw(LISTENER, "l1", "n3", vec![pack(type_url::LISTENER, &l)]);
    assert!(cp.reply_to(m, "n3").await.error().is_none());
    // The listener waits for its certificate: the proxy asks for the secret by name.
    let req = cp.sotw_req(m, type_url::SECRET).await;
    assert_eq!(req.resource_names, vec!["edge-cert".to_string()]);
    assert!(
        p.server.listener_addr("inbound").is_none(),
        "a listener ran without its certificate"
    );

    let m = cp.mark();
    cp.send_sotw(type_url::SECRET, "s1", "n4", vec![cert_secret("edge-cert", &one)]);
    let ack = cp.reply_to(m, "n4").await;
    assert!(ack.error().is_none(), "{:?}", ack.error());
    let addr = p.wait_listener("inbound").await;
    assert_eq!(served(&ca, addr, "a.example.com").await, Some(der(&one)));

    // Rotation: a new version of the secret.
    let m = cp.mark();
    cp.send_sotw(type_url::SECRET, "s2", "n5", vec![cert_secret("edge-cert", &two)]);
    assert!(cp.reply_to(m, "n5").await.error().is_none());
    weft_test_support::eventually("the rotated certificate served", WAIT, || async {
        (served(&ca, p.server.listener_addr("inbound")?, "a.example.com").await? == der(&two)).then_some(())
    })
    .await;

    // A key that does not match: NACKed, the last good certificate keeps serving.
    let bad = pack(
        type_url::SECRET,
        &tls::Secret {
            name: "edge-cert".into(),
            r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: inline_bytes(&one.cert_pem),
                private_key: inline_bytes(&two.key_pem),
                ..Default::default()
            })),
        },
    );
    let m = cp.mark();
    cp.send_sotw(type_url::SECRET, "s3", "n6", vec![bad]);
    let nack = cp.reply_to(m, "n6").await;
    let e = nack.error().expect("a NACK");
    assert!(e.contains("key_pem") && e.contains("does not match"), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    let addr = p.server.listener_addr("inbound").unwrap();
    assert_eq!(served(&ca, addr, "a.example.com").await, Some(der(&two)));
}

#[test]
fn secrets_convert_and_refuse_what_weft_cannot_use() {
    let ca = weft_tls::testcerts::Ca::new("r");
    let leaf = ca.leaf_dns(&["a.example.com"]);
    let s = weft_xds_client::tls::secret(&tls::Secret {
        name: "c".into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: file("/etc/c.crt"),
            private_key: inline_string(&leaf.key_pem),
            ..Default::default()
        })),
    })
    .unwrap();
    let ((cf, _), (_, kp)) = s.cert.clone().unwrap();
    assert_eq!(
        (cf.as_deref(), kp.as_deref()),
        (Some("/etc/c.crt"), Some(leaf.key_pem.as_str()))
    );
    assert!(!format!("{s:?}").contains("PRIVATE KEY"), "{s:?}");
    let e = weft_xds_client::tls::secret(&tls::Secret {
        name: "g".into(),
        r#type: Some(tls::secret::Type::GenericSecret(Default::default())),
    })
    .unwrap_err();
    assert!(e.lines()[0].starts_with("generic_secret: unsupported"), "{e:?}");
    // A secret from another config source than ADS is not followed: refused naming the field.
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("edge-cert")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = converted(&listener_of(vec![chain("a", "tls", &[], Some(&ctx))])).unwrap_err();
    assert!(
        e.contains("tls_certificate_sds_secret_configs[0].name: \"edge-cert\"")
            && e.contains("sds_config: { ads: {} }"),
        "{e}"
    );
}
