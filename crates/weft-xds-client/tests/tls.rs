//! UpstreamTlsContext → a cluster's `tls` block: Istio's SDS names as the mesh identity, files,
//! and refusals that name the field.

use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::Any;
use weft_xds_api::prost::Message;
use weft_xds_client::tls::{cluster_tls, UPSTREAM_TLS_URL};

fn socket(ctx: tls::UpstreamTlsContext) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url: UPSTREAM_TLS_URL.into(),
            value: ctx.encode_to_vec(),
        })),
    }
}

fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        ..Default::default()
    }
}

fn exact_san(s: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn file(f: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(f.into())),
        ..Default::default()
    })
}

#[test]
fn istio_mutual_is_the_mesh_identity_with_secure_naming() {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    let ctx = tls::UpstreamTlsContext {
        sni: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: vec![exact_san("spiffe://cluster.local/ns/default/sa/reviews")],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut errs = ConfigError::default();
    let t = cluster_tls(&mut errs, &socket(ctx)).unwrap();
    assert!(errs.lines().is_empty(), "{:?}", errs.lines());
    assert_eq!(t.mode.as_deref(), Some("mesh"));
    assert_eq!(t.alpn, None, "istio ALPN ids are dropped");
    assert_eq!(
        t.subject_alt_names,
        vec!["spiffe://cluster.local/ns/default/sa/reviews"]
    );
    assert_eq!(
        t.sni.as_deref(),
        Some("outbound_.9080_._.reviews.default.svc.cluster.local")
    );
    // And it validates as a weft cluster tls block.
    let mut fe = weft_config::ConfigError::default();
    let v = weft_config::tls::cluster_tls("clusters[0].tls", &t, false, None, &mut fe);
    assert!(fe.is_empty(), "{fe:?}");
    assert_eq!(v.mode, weft_config::tls::ClusterTlsMode::Mesh);
}

#[test]
fn files_are_simple_or_mutual() {
    use tls::common_tls_context::ValidationContextType;
    let ctx = tls::UpstreamTlsContext {
        sni: "api.example.com".into(),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file("/etc/c.crt"),
                private_key: file("/etc/c.key"),
                ..Default::default()
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                tls::CertificateValidationContext {
                    trusted_ca: file("/etc/ca.pem"),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut errs = ConfigError::default();
    let t = cluster_tls(&mut errs, &socket(ctx)).unwrap();
    assert!(errs.lines().is_empty(), "{:?}", errs.lines());
    assert_eq!(t.mode.as_deref(), Some("mutual"));
    assert_eq!(t.cert_file.as_deref(), Some("/etc/c.crt"));
    assert_eq!(t.trusted_ca_file.as_deref(), Some("/etc/ca.pem"));
}

#[test]
fn inline_pem_is_mutual_with_pem_fields() {
    use tls::common_tls_context::ValidationContextType;
    let inline = |s: &str| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineBytes(s.as_bytes().to_vec())),
            ..Default::default()
        })
    };
    let (chain, key, ca) = (
        "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n",
    );
    let ctx = tls::UpstreamTlsContext {
        sni: "api.example.com".into(),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: inline(chain),
                private_key: inline(key),
                ..Default::default()
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                tls::CertificateValidationContext {
                    trusted_ca: inline(ca),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut errs = ConfigError::default();
    let t = cluster_tls(&mut errs, &socket(ctx)).unwrap();
    assert!(errs.lines().is_empty(), "{:?}", errs.lines());
    assert_eq!(t.mode.as_deref(), Some("mutual"));
    assert_eq!((t.cert_file.as_deref(), t.cert_pem.as_deref()), (None, Some(chain)));
    assert_eq!(t.key_pem.as_deref(), Some(key));
    assert_eq!(t.trusted_ca_pem.as_deref(), Some(ca));
    assert!(!format!("{t:?}").contains("PRIVATE KEY"), "the key in Debug: {t:?}");
}

#[test]
fn unsupported_contexts_are_refused_naming_the_field() {
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("file-cert:/x")],
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::EnvironmentVariable("CHAIN".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut errs = ConfigError::default();
    cluster_tls(&mut errs, &socket(ctx));
    let all = errs.lines().join("\n");
    assert!(
        all.contains("transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: \"file-cert:/x\""),
        "{all}"
    );
    assert!(
        all.contains("common_tls_context.tls_certificates[0].certificate_chain.environment_variable: unsupported"),
        "{all}"
    );
    // A plaintext socket is no TLS at all.
    let raw = core::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: None,
    };
    let mut errs = ConfigError::default();
    assert!(cluster_tls(&mut errs, &raw).is_none() && errs.lines().is_empty());
}
