//! The `tls` blocks: accepted forms and errors naming the field.

use weft_config::tls::*;

fn base(listener_tls: &str, cluster_tls: &str) -> String {
    format!(
        "listeners:\n  - name: edge\n    address: 127.0.0.1:0\n{listener_tls}    http:\n      route_config:\n        virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n              - match: {{ prefix: / }}\n                route: {{ cluster: app }}\nclusters:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:1 }}]\n{cluster_tls}"
    )
}

#[test]
fn edge_listener_and_cluster() {
    let y = base(
        "    tls:\n      certificates:\n        - { cert_file: a.crt, key_file: a.key, server_names: [a.example.com, \"*.b.example.com\"] }\n      require_client_certificate: true\n      trusted_ca_file: ca.pem\n      min_version: \"1.3\"\n      forward_client_cert: sanitize_set\n",
        "    tls: { mode: mutual, sni: api.example.com, trusted_ca_file: ca.pem, cert_file: c.crt, key_file: c.key, subject_alt_names: [api.example.com] }\n",
    );
    let c = weft_config::from_yaml(&y).unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.mode, TlsMode::Strict);
    assert_eq!(t.alpn, vec!["h2", "http/1.1"]);
    assert_eq!(t.min_version, TlsMinVersion::V13);
    assert_eq!(t.forward_client_cert, ForwardClientCert::SanitizeSet);
    assert!(t.require_client_certificate && !t.is_mesh());
    let ct = c.clusters[0].tls.as_ref().unwrap();
    assert_eq!((ct.mode, ct.sni.as_str()), (ClusterTlsMode::Mutual, "api.example.com"));
    assert_eq!(ct.alpn, vec!["http/1.1"]);
}

#[test]
fn mesh_forms() {
    let y = base(
        "    tls: { mode: PERMISSIVE }\n",
        "    protocol: http2\n    tls: { mode: ISTIO_MUTUAL, subject_alt_names: [\"spiffe://cluster.local/ns/a/sa/b\"] }\n",
    );
    let c = weft_config::from_yaml(&y).unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert!(t.is_mesh() && t.require_client_certificate);
    assert_eq!(t.mode, TlsMode::Permissive);
    let ct = c.clusters[0].tls.as_ref().unwrap();
    assert_eq!((ct.mode, ct.sni.as_str()), (ClusterTlsMode::Mesh, MESH_SNI));
    assert_eq!(ct.alpn, vec!["h2"]);
}

#[test]
fn errors_name_the_field() {
    let y = base(
        "    tls:\n      mode: sometimes\n      certificates: [{ cert_file: a.crt }]\n      require_client_certificate: true\n      min_version: \"1.1\"\n      forward_client_cert: maybe\n",
        "    tls: { mode: mutual }\n",
    );
    let e = weft_config::from_yaml(&y).unwrap_err().to_string();
    for want in [
        "listeners[0].tls.mode: unknown value \"sometimes\"",
        "listeners[0].tls.certificates[0].key_file: is required",
        "listeners[0].tls.trusted_ca_file: is required with require_client_certificate",
        "listeners[0].tls.min_version: unknown value \"1.1\"",
        "listeners[0].tls.forward_client_cert: unknown value \"maybe\"",
        "clusters[0].tls.trusted_ca_file: is required",
        "clusters[0].tls.cert_file: is required",
        "clusters[0].tls.key_file: is required",
        "clusters[0].tls.sni: is required",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn tls_on_tcp_proxy_is_refused() {
    let y = "listeners:\n  - name: t\n    address: 127.0.0.1:0\n    tls: {}\n    tcp_proxy: { cluster: app }\nclusters:\n  - name: app\n    endpoints: [{ address: 127.0.0.1:1 }]\n";
    let e = weft_config::from_yaml(y).unwrap_err().to_string();
    assert!(e.contains("listeners[0].tls: TLS termination applies to HTTP"), "{e}");
}

#[test]
fn suite_families() {
    let y = base(
        "    tls:\n      certificates:\n        - { cert_file: ec.crt, key_file: ec.key }\n        - { cert_file: sm.crt, key_file: sm.key }\n      suites: [standard, sm]\n",
        "    tls: { sni: api.example.com, trusted_ca_file: sm-root.pem, suites: [SM] }\n",
    );
    let c = weft_config::from_yaml(&y).unwrap();
    assert_eq!(
        c.listeners[0].tls.as_ref().unwrap().suites,
        vec![TlsSuite::Standard, TlsSuite::Sm]
    );
    assert_eq!(c.clusters[0].tls.as_ref().unwrap().suites, vec![TlsSuite::Sm]);
    // Default: standard only.
    let c = weft_config::from_yaml(&base("    tls: { mode: PERMISSIVE }\n", "")).unwrap();
    assert_eq!(c.listeners[0].tls.as_ref().unwrap().suites, vec![TlsSuite::Standard]);
}

#[test]
fn suite_errors_name_the_field() {
    let y = base(
        "    tls:\n      suites: [sm, gost, sm]\n",
        "    tls: { mode: mesh, suites: [] }\n",
    );
    let e = weft_config::from_yaml(&y).unwrap_err().to_string();
    for want in [
        "listeners[0].tls.suites[1]: unknown suite family \"gost\"",
        "listeners[0].tls.suites[2]: \"sm\" is listed twice",
        "clusters[0].tls.suites: at least one suite family",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // Mesh with sm is the identity's business (weft proxy --identity-key-type), not the model's.
    let y = base("    tls: { suites: [sm] }\n", "    tls: { mode: mesh, suites: [sm] }\n");
    weft_config::from_yaml(&y).unwrap();
}

#[test]
fn inline_pem_fields() {
    let cert = "\"-----BEGIN CERTIFICATE-----\\nA\\n-----END CERTIFICATE-----\\n\"";
    let key = "\"-----BEGIN PRIVATE KEY-----\\nSECRET\\n-----END PRIVATE KEY-----\\n\"";
    let y = base(
        &format!("    tls:\n      certificates:\n        - {{ cert_pem: {cert}, key_pem: {key} }}\n      require_client_certificate: true\n      trusted_ca_pem: {cert}\n"),
        &format!("    tls: {{ mode: mutual, sni: api.example.com, trusted_ca_pem: {cert}, cert_pem: {cert}, key_pem: {key} }}\n"),
    );
    let c = weft_config::from_yaml(&y).unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert!(matches!(&t.certificates[0].key, Pem::Inline(k) if k.contains("SECRET")));
    assert!(matches!(t.trusted_ca, Some(Pem::Inline(_))));
    let ct = c.clusters[0].tls.as_ref().unwrap();
    assert!(matches!(
        (&ct.cert, &ct.key, &ct.trusted_ca),
        (Some(Pem::Inline(_)), Some(Pem::Inline(_)), Some(Pem::Inline(_)))
    ));
    // What /config_dump shows: never the key.
    let dump = serde_json::to_string(&c).unwrap();
    assert!(!dump.contains("SECRET") && dump.contains("(inline PEM, "), "{dump}");

    let y = base(
        &format!("    tls:\n      certificates:\n        - {{ cert_file: a.crt, cert_pem: {cert}, key_pem: \"not pem\" }}\n"),
        "    tls: { mode: mutual, sni: api.example.com, trusted_ca_pem: \"x\", cert_pem: \"-----BEGIN CERTIFICATE-----\" }\n",
    );
    let e = weft_config::from_yaml(&y).unwrap_err().to_string();
    for want in [
        "listeners[0].tls.certificates[0].cert_pem: give cert_file or cert_pem, not both",
        "listeners[0].tls.certificates[0].key_pem: is not PEM (no -----BEGIN line)",
        "clusters[0].tls.trusted_ca_pem: is not PEM",
        "clusters[0].tls.key_file: is required",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(!e.contains("clusters[0].tls.trusted_ca_file: is required"), "{e}");
}

#[test]
fn cipher_suites_follow_envoys_names_and_rules() {
    let run = |v: &[&str]| {
        let mut errors = weft_config::ConfigError::default();
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        let out = cipher_suites(&mut errors, "tls.cipher_suites", &v);
        (out, errors.to_string())
    };
    // TLS 1.2 names only: the three TLS 1.3 suites stay on (BoringSSL's cipher_suites governs
    // TLS 1.2), before the named ones; IANA spellings and any case are accepted.
    let ((families, list), e) = run(&[
        "ecdhe-ecdsa-aes128-gcm-sha256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ]);
    assert!(e.is_empty(), "{e}");
    assert_eq!(families, vec![TlsSuite::Standard]);
    assert_eq!(
        list,
        vec![
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-CHACHA20-POLY1305"
        ]
    );
    // A TLS 1.3 name restricts TLS 1.3; an equal-preference group keeps its order; SM first makes
    // the families [sm, standard]; duplicates are dropped.
    let ((families, list), e) = run(&[
        "TLS_SM4_GCM_SM3",
        "[TLS_AES_128_GCM_SHA256|ECDHE-ECDSA-AES256-GCM-SHA384]",
        "TLS_AES_128_GCM_SHA256",
    ]);
    assert!(e.is_empty(), "{e}");
    assert_eq!(families, vec![TlsSuite::Sm, TlsSuite::Standard]);
    assert_eq!(
        list,
        vec![
            "TLS_SM4_GCM_SM3",
            "TLS_AES_128_GCM_SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384"
        ]
    );
    assert_eq!(run(&["TLS_SM4_GCM_SM3"]).0 .0, vec![TlsSuite::Sm]);
    // Unknown and unimplemented names, malformed groups, an empty list.
    let (_, e) = run(&[
        "RC4-MD5",
        "AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-SHA256",
        "[|]",
        "[ECDHE-RSA-AES128-GCM-SHA256",
    ]);
    assert!(
        e.contains("tls.cipher_suites[0]: unknown cipher suite \"RC4-MD5\""),
        "{e}"
    );
    assert!(
        e.contains("tls.cipher_suites[1]: cipher suite \"AES128-GCM-SHA256\" is not implemented"),
        "{e}"
    );
    assert!(
        e.contains("tls.cipher_suites[2]: cipher suite \"ECDHE-RSA-AES128-SHA256\" is not implemented"),
        "{e}"
    );
    assert!(
        e.contains("tls.cipher_suites[3]: \"[|]\": an equal-preference group"),
        "{e}"
    );
    assert!(e.contains("tls.cipher_suites[4]"), "{e}");
    // Istio's default inbound list: the two names without ECDHE (not implemented) are left out.
    let ((families, list), e) = run(&[
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
    ]);
    assert!(e.is_empty(), "{e}");
    assert_eq!(families, vec![TlsSuite::Standard]);
    assert_eq!(list.len(), 3 + 4, "{list:?}");
    assert!(!list.iter().any(|c| c.starts_with("AES")), "{list:?}");
    assert!(run(&[])
        .1
        .contains("tls.cipher_suites: at least one cipher suite is required"));
    // In a block: not with `suites`; an SM-only cluster; the validated list in the model.
    let y = base(
        "",
        "    tls: { sni: a.example.com, trusted_ca_file: ca.pem, suites: [sm], cipher_suites: [TLS_SM4_GCM_SM3] }\n",
    );
    let e = weft_config::from_yaml(&y).unwrap_err().to_string();
    assert!(
        e.contains("clusters[0].tls.cipher_suites: give suites or cipher_suites, not both"),
        "{e}"
    );
    let y = base(
        "",
        "    tls: { sni: a.example.com, trusted_ca_file: ca.pem, cipher_suites: [TLS_SM4_GCM_SM3] }\n",
    );
    let c = weft_config::from_yaml(&y).unwrap();
    let ct = c.clusters[0].tls.as_ref().unwrap();
    assert_eq!(ct.suites, vec![TlsSuite::Sm]);
    assert_eq!(ct.cipher_suites, vec!["TLS_SM4_GCM_SM3"]);
    assert_eq!(cipher_suite_id("TLS_SM4_GCM_SM3"), Some(0x00c6));
}
