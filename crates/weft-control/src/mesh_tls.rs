//! Mesh mTLS in the resources weft control sends, in Istio's shapes so that a real Envoy sidecar
//! (its identity from `weft sds-agent`) and a weft sidecar read the same resources:
//!
//! - a mesh destination's clusters originate mTLS: an `UpstreamTlsContext` whose certificate is
//!   the SDS secret `default` (the workload's own SVID) and whose validation is the SDS secret
//!   `ROOTCA` (the mesh roots), both fetched from the bootstrap cluster `sds-grpc` as
//!   istio-agent serves them; secure naming by the destination's SPIFFE IDs; SNI
//!   `outbound_.<port>_.<subset>_.<service>` as Istio's;
//! - a sidecar's inbound listener terminates it with a `DownstreamTlsContext` (same secrets,
//!   client certificates required): STRICT is that chain alone, PERMISSIVE adds a `raw_buffer`
//!   twin with the same filters, told apart by the TLS inspector.
//!
//! A destination in mode DISABLE (no sidecar with an identity) is called in plaintext. A mesh
//! destination some of whose endpoints have no sidecar ([`model::Endpoint::sidecar`]) is called as
//! Istio calls it: its endpoints with a sidecar carry the metadata
//! `envoy.transport_socket_match: {tlsMode: istio}` ([`TLS_MODE_KEY`]), and its clusters have no
//! `transport_socket` but `transport_socket_matches`: `tlsMode-istio` (that metadata → the mTLS
//! socket) and `tlsMode-disabled` (an empty match, which every other endpoint matches → plaintext).

use crate::model::{self, MtlsMode, MtlsSuites, World};
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::{BoolValue, Duration as PbDuration};

/// The bootstrap cluster an Envoy sidecar reaches its SDS server by (Istio's name; the
/// `weft sds-agent` socket). weft sidecars do not use it: `default`/`ROOTCA` name their own
/// identity.
pub const SDS_CLUSTER: &str = "sds-grpc";
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub use weft_xds_api::type_url::{
    DOWNSTREAM_TLS_CONTEXT as DOWNSTREAM_TLS_URL, TLS_INSPECTOR as TLS_INSPECTOR_URL,
    UPSTREAM_TLS_CONTEXT as UPSTREAM_TLS_URL,
};
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// The inbound mode of the sidecars of `service`; None: no mesh mTLS (no CA).
pub fn inbound_mode(world: &World, service: &str) -> Option<MtlsMode> {
    let m = world.mesh_tls.as_ref()?;
    Some(world.services.get(service).map_or(m.default_mode, |s| m.mode_of(s)))
}

/// The suite families of the mesh TLS contexts (`--mtls-suites`; standard without a CA).
pub fn suites(world: &World) -> MtlsSuites {
    world.mesh_tls.as_ref().map_or(MtlsSuites::Standard, |m| m.suites)
}

/// `tls_params` for `suites`: none for standard (as Istio), else `cipher_suites` naming
/// `TLS_SM4_GCM_SM3` (weft's `sm` family), first, then for `both` the standard TLS 1.3 suites and
/// the ECDHE-ECDSA TLS 1.2 ones (mesh SVIDs are ECDSA).
fn tls_params(suites: MtlsSuites) -> Option<tls::TlsParameters> {
    let names: &[&str] = match suites {
        MtlsSuites::Standard => return None,
        MtlsSuites::Sm => &["TLS_SM4_GCM_SM3"],
        MtlsSuites::Both => &[
            "TLS_SM4_GCM_SM3",
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ],
    };
    Some(tls::TlsParameters {
        cipher_suites: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    })
}

/// An SDS secret reference as Istio writes it for Envoy.
fn sds(name: &str) -> tls::SdsSecretConfig {
    use core::api_config_source::ApiType;
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                core::ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: core::ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![core::GrpcService {
                        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                            core::grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            // Wait for the secret however long it takes, as Istio does.
            initial_fetch_timeout: Some(PbDuration { seconds: 0, nanos: 0 }),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// The workload's certificate (`default`), the mesh roots (`ROOTCA`), and SAN matchers for
/// secure naming (none: any identity the roots vouch for).
fn common(alpn: &[&str], sans: &[String], suites: MtlsSuites) -> tls::CommonTlsContext {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    let matchers = sans
        .iter()
        .map(|s| tls::SubjectAltNameMatcher {
            san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        tls_params: tls_params(suites),
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(tls::CertificateValidationContext {
                    match_typed_subject_alt_names: matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Istio's SNI for a mesh destination: `outbound_.<port>_.<subset>_.<service>`.
pub fn sni(svc: &model::Service, subset: Option<&str>) -> String {
    format!(
        "outbound_.{}_.{}_.{}",
        svc.port.unwrap_or(80),
        subset.unwrap_or(""),
        svc.name
    )
}

/// The transport socket of a mesh destination's cluster (or subset cluster).
pub fn upstream(svc: &model::Service, subset: Option<&str>, suites: MtlsSuites) -> core::TransportSocket {
    // The ALPN the cluster's codec speaks: a server that picked h2 for an HTTP/1.1 client (or the
    // reverse) would break the connection. Istio's own `istio-peer-exchange` is not offered:
    // weft's server, like any rustls server, refuses a client whose protocols it has none of.
    let alpn: &[&str] = match svc.protocol {
        model::Protocol::Grpc => &["h2"],
        model::Protocol::Http => &["http/1.1"],
        model::Protocol::Tcp | model::Protocol::Dubbo => &[],
    };
    let ctx = tls::UpstreamTlsContext {
        sni: sni(svc, subset),
        common_tls_context: Some(common(alpn, &svc.server_identities(), suites)),
        ..Default::default()
    };
    core::TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(weft_xds_api::pack(
            UPSTREAM_TLS_URL,
            &ctx,
        ))),
    }
}

/// The endpoint metadata key transport socket matching reads, and what marks an endpoint with a
/// sidecar (Istio's).
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_MODE_KEY: &str = "tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Whether `svc`'s endpoints mix workloads with and without a sidecar: its clusters then choose
/// the transport socket per endpoint ([`per_endpoint`]).
pub fn mixed(svc: &model::Service) -> bool {
    svc.endpoints.iter().any(|e| !e.sidecar) && svc.endpoints.iter().any(|e| e.sidecar)
}

/// Istio's `transport_socket_matches` for a mesh destination with mixed endpoints: mTLS to the
/// endpoints marked `tlsMode: istio`, plaintext to the others.
pub fn per_endpoint(
    svc: &model::Service,
    subset: Option<&str>,
    suites: MtlsSuites,
) -> Vec<cl::cluster::TransportSocketMatch> {
    use weft_xds_api::pb::google::protobuf::{value::Kind, Any, Struct, Value};
    let tls_mode = Struct {
        fields: [(
            TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(Kind::StringValue(TLS_MODE_ISTIO.into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    vec![
        cl::cluster::TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(tls_mode),
            transport_socket: Some(upstream(svc, subset, suites)),
        },
        cl::cluster::TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(core::TransportSocket {
                name: RAW_BUFFER.into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
                    type_url: RAW_BUFFER_URL.into(),
                    value: Vec::new(),
                })),
            }),
        },
    ]
}

/// An inbound listener's filter chains (and listener filters) for `filters` in `mode`: one
/// plaintext chain without mTLS; the TLS chain alone in STRICT; in PERMISSIVE the TLS chain
/// (`transport_protocol: tls`) and a `raw_buffer` twin with the same filters, which Envoy tells
/// apart with its TLS inspector and weft by peeking at the first bytes.
pub fn inbound_chains(
    filters: Vec<ls::Filter>,
    mode: Option<MtlsMode>,
    suites: MtlsSuites,
) -> (Vec<ls::FilterChain>, Vec<ls::ListenerFilter>) {
    let mode = match mode {
        Some(m @ (MtlsMode::Strict | MtlsMode::Permissive)) => m,
        _ => {
            return (
                vec![ls::FilterChain {
                    filters,
                    ..Default::default()
                }],
                Vec::new(),
            )
        }
    };
    let ctx = tls::DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(common(&["h2", "http/1.1"], &[], suites)),
        ..Default::default()
    };
    let tls_chain = |transport_protocol: &str| ls::FilterChain {
        name: "mtls".into(),
        filter_chain_match: (!transport_protocol.is_empty()).then(|| ls::FilterChainMatch {
            transport_protocol: transport_protocol.into(),
            ..Default::default()
        }),
        filters: filters.clone(),
        transport_socket: Some(core::TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(weft_xds_api::pack(
                DOWNSTREAM_TLS_URL,
                &ctx,
            ))),
        }),
        ..Default::default()
    };
    match mode {
        MtlsMode::Strict => (vec![tls_chain("")], Vec::new()),
        _ => (
            vec![
                tls_chain("tls"),
                ls::FilterChain {
                    name: "plaintext".into(),
                    filter_chain_match: Some(ls::FilterChainMatch {
                        transport_protocol: "raw_buffer".into(),
                        ..Default::default()
                    }),
                    filters,
                    ..Default::default()
                },
            ],
            vec![ls::ListenerFilter {
                name: TLS_INSPECTOR.into(),
                config_type: Some(ls::listener_filter::ConfigType::TypedConfig(weft_xds_api::pack(
                    TLS_INSPECTOR_URL,
                    &tls_inspector::TlsInspector::default(),
                ))),
                ..Default::default()
            }],
        ),
    }
}
