//! With its CA on, weft control sends mesh mTLS in Istio's shapes: mesh destinations' clusters
//! carry an UpstreamTlsContext (SDS `default` + `ROOTCA` over `sds-grpc`, secure naming, Istio's
//! SNI), sidecars' inbound listeners a DownstreamTlsContext (PERMISSIVE: a `tls` chain and a
//! `raw_buffer` twin; STRICT: the TLS chain alone); DISABLE and no CA mean plaintext. weft's own
//! xDS client reads every one of these back into the same modes.

mod common;

use common::*;
use std::sync::Arc;
use weft_control::model::{parse_fragment, MeshTls, MtlsMode, World};
use weft_control::translate::{build_snapshot, node_resources, Kind, NodeInfo, Snapshot};
use weft_xds_api::pb::envoy::config::cluster::v3::Cluster;
use weft_xds_api::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use weft_xds_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use weft_xds_api::pb::envoy::config::core::v3::transport_socket::ConfigType;
use weft_xds_api::pb::envoy::config::listener::v3::Listener;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use weft_xds_api::type_url::{CLUSTER, LISTENER};
use weft_xds_api::unpack;

const REGISTRY: &str = r#"
services:
  - name: reviews
    port: 9080
    identities: [spiffe://cluster.local/ns/default/sa/reviews]
    endpoints: [{address: 127.0.0.1:9081, labels: {version: v1}}]
  - name: ratings
    protocol: grpc
    mtls: STRICT
    endpoints:
      - {address: 127.0.0.1:9091, labels: {security.weft.dev/identity: spiffe://cluster.local/ns/default/sa/ratings}}
  - name: legacy
    mtls: DISABLE
    endpoints: [{address: 127.0.0.1:9101}]
destinations:
  - service: reviews
    subsets: [{name: v1, labels: {version: v1}}]
"#;

fn snapshot(mesh: Option<MeshTls>) -> Snapshot {
    let f = parse_fragment("reg.yaml", REGISTRY).unwrap();
    let (mut world, errs) = World::build([("reg.yaml", &f)].into_iter());
    assert!(errs.is_empty(), "{errs:?}");
    world.mesh_tls = mesh;
    build_snapshot(1, Arc::new(world), None)
}

fn permissive() -> Option<MeshTls> {
    Some(MeshTls {
        default_mode: MtlsMode::Permissive,
        suites: Default::default(),
    })
}

fn cluster(s: &Snapshot, name: &str) -> Cluster {
    unpack(&s.maps[Kind::Cluster as usize][name].any, CLUSTER).unwrap()
}

fn inbound(s: &Snapshot, service: &str) -> Listener {
    let node = NodeInfo::from_node(&sidecar("n1", service));
    let mode = weft_control::mesh_tls::inbound_mode(&s.world, service);
    let own = node_resources(&node, None, None, None, mode, Default::default(), &Default::default());
    let name = format!("inbound|{service}");
    unpack(&own.maps[Kind::Listener as usize][name.as_str()].any, LISTENER).unwrap()
}

#[test]
fn mesh_destinations_get_istio_mutual_clusters_and_disable_stays_plaintext() {
    let s = snapshot(permissive());
    let c = cluster(&s, "reviews");
    let ts = c.transport_socket.as_ref().expect("mTLS to a mesh destination");
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!()
    };
    let ctx: tls::UpstreamTlsContext = unpack(any, weft_control::mesh_tls::UPSTREAM_TLS_URL).unwrap();
    assert_eq!(ctx.sni, "outbound_.9080_._.reviews");
    let common = ctx.common_tls_context.as_ref().unwrap();
    assert_eq!(common.alpn_protocols, vec!["http/1.1"]);
    let sds = &common.tls_certificate_sds_secret_configs[0];
    assert_eq!(sds.name, "default");
    // Istio's sds_config: gRPC to the bootstrap cluster `sds-grpc`, V3.
    let Some(ConfigSourceSpecifier::ApiConfigSource(api)) =
        sds.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref())
    else {
        panic!("{sds:?}")
    };
    let Some(TargetSpecifier::EnvoyGrpc(g)) = api.grpc_services[0].target_specifier.as_ref() else {
        panic!()
    };
    assert_eq!(g.cluster_name, "sds-grpc");
    // What weft's own xDS client makes of it: mode mesh, secure naming, the SNI.
    let x = weft_xds_client::convert::cluster(&c, false).unwrap();
    let t = x.raw.tls.unwrap();
    assert_eq!(t.mode.as_deref(), Some("mesh"));
    assert_eq!(
        t.subject_alt_names,
        vec!["spiffe://cluster.local/ns/default/sa/reviews"]
    );
    assert_eq!(t.sni.as_deref(), Some("outbound_.9080_._.reviews"));
    // The subset's SNI; gRPC's ALPN; identities from endpoint labels.
    let x = weft_xds_client::convert::cluster(&cluster(&s, "reviews|v1"), false).unwrap();
    assert_eq!(x.raw.tls.unwrap().sni.as_deref(), Some("outbound_.9080_.v1_.reviews"));
    let x = weft_xds_client::convert::cluster(&cluster(&s, "ratings"), false).unwrap();
    let t = x.raw.tls.unwrap();
    assert_eq!(t.alpn, Some(vec!["h2".to_string()]));
    assert_eq!(
        t.subject_alt_names,
        vec!["spiffe://cluster.local/ns/default/sa/ratings"]
    );
    // Proxyless gRPC clients get the clusters without TLS (they have no SDS).
    for name in ["reviews", "reviews|v1", "ratings"] {
        let g: Cluster = unpack(&s.grpc_clusters[name].any, CLUSTER).unwrap();
        assert!(g.transport_socket.is_none(), "{name}");
    }
    // DISABLE: no sidecar there, plaintext. No CA: plaintext everywhere.
    assert!(cluster(&s, "legacy").transport_socket.is_none());
    let plain = snapshot(None);
    for name in ["reviews", "reviews|v1", "ratings", "legacy"] {
        assert!(cluster(&plain, name).transport_socket.is_none(), "{name}");
    }
}

#[test]
fn inbound_listeners_terminate_mtls_by_mode() {
    let s = snapshot(permissive());
    // PERMISSIVE (the default): a tls chain, a raw_buffer twin, the TLS inspector.
    let l = inbound(&s, "reviews");
    assert_eq!(l.filter_chains.len(), 2);
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    let m = |i: usize| {
        l.filter_chains[i]
            .filter_chain_match
            .as_ref()
            .unwrap()
            .transport_protocol
            .clone()
    };
    assert_eq!((m(0).as_str(), m(1).as_str()), ("tls", "raw_buffer"));
    assert!(l.filter_chains[0].transport_socket.is_some() && l.filter_chains[1].transport_socket.is_none());
    let x = weft_xds_client::convert::listener(&l).unwrap().unwrap();
    let t = x.raw.tls.unwrap();
    assert_eq!(t.mode.as_deref(), Some("PERMISSIVE"));
    assert!(t.certificates.is_empty(), "the mesh identity");
    assert_eq!(
        t.forward_client_cert,
        Some(weft_config::typed::Typed::Value(
            weft_config::tls::ForwardClientCert::SanitizeSet
        ))
    );
    assert_eq!(x.raw.filter_chains.len(), 1);
    // STRICT: the TLS chain alone.
    let l = inbound(&s, "ratings");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.listener_filters.is_empty());
    let x = weft_xds_client::convert::listener(&l).unwrap().unwrap();
    assert_eq!(x.raw.tls.unwrap().mode.as_deref(), Some("STRICT"));
    // DISABLE, and no CA: plaintext.
    for l in [inbound(&s, "legacy"), inbound(&snapshot(None), "reviews")] {
        assert_eq!(l.filter_chains.len(), 1);
        assert!(l.filter_chains[0].transport_socket.is_none());
        assert!(weft_xds_client::convert::listener(&l)
            .unwrap()
            .unwrap()
            .raw
            .tls
            .is_none());
    }
    // A STRICT default applies to services that set no mode.
    let strict = snapshot(Some(MeshTls {
        default_mode: MtlsMode::Strict,
        suites: Default::default(),
    }));
    assert_eq!(inbound(&strict, "reviews").filter_chains.len(), 1);
    assert_eq!(inbound(&strict, "unknown-service").filter_chains.len(), 1);
}

/// What weft control sends with mTLS passes the Envoy API's validation rules.
#[test]
fn emitted_tls_resources_pass_the_api_validation_rules() {
    for mode in [MtlsMode::Permissive, MtlsMode::Strict] {
        let s = snapshot(Some(MeshTls {
            default_mode: mode,
            suites: Default::default(),
        }));
        for name in ["reviews", "reviews|v1", "ratings", "legacy"] {
            let errs = weft_xds_client::pgv::cluster(&cluster(&s, name));
            assert!(errs.is_empty(), "{name}: {errs:?}");
        }
        for svc in ["reviews", "ratings", "legacy"] {
            let errs = weft_xds_client::pgv::listener(&inbound(&s, svc));
            assert!(errs.is_empty(), "{svc}: {errs:?}");
        }
    }
}

#[test]
fn bad_modes_and_identities_are_refused_naming_the_field() {
    let e = parse_fragment(
        "bad.yaml",
        "services: [{name: a, mtls: MAYBE, identities: [spiffe://x/ns/a/sa/b, not-a-spiffe-id], endpoints: []}]\n",
    )
    .unwrap_err()
    .join("\n");
    assert!(e.contains("services[0].mtls: unknown mode \"MAYBE\""), "{e}");
    assert!(
        e.contains("services[0].identities[1]: \"not-a-spiffe-id\" is not a SPIFFE ID"),
        "{e}"
    );
}

/// A mesh destination whose endpoints mix workloads with and without a sidecar (`sidecar: false`
/// in the registry; a Kubernetes Pod without weft's sidecar) is sent as Istio sends it: its
/// clusters have `transport_socket_matches` (`tlsMode-istio` → mTLS, `tlsMode-disabled` `{}` →
/// plaintext) and no `transport_socket`, its sidecar endpoints carry `tlsMode: istio`; weft's own
/// xDS client reads it back into per-endpoint TLS.
#[test]
fn mixed_endpoints_get_tls_per_endpoint_like_istio() {
    use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let reg = r#"
services:
  - name: reviews
    port: 9080
    identities: [spiffe://cluster.local/ns/default/sa/reviews]
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v1}, sidecar: false}
  - name: ratings
    endpoints: [{address: 127.0.0.1:9091}]
destinations:
  - service: reviews
    subsets: [{name: v1, labels: {version: v1}}]
"#;
    let f = parse_fragment("reg.yaml", reg).unwrap();
    let (mut world, errs) = World::build([("reg.yaml", &f)].into_iter());
    assert!(errs.is_empty(), "{errs:?}");
    assert!(!world.services["reviews"].endpoints[1].sidecar);
    world.mesh_tls = permissive();
    let s = build_snapshot(1, Arc::new(world.clone()), None);
    for name in ["reviews", "reviews|v1"] {
        let c = cluster(&s, name);
        assert!(c.transport_socket.is_none(), "{name}");
        let m = &c.transport_socket_matches;
        assert_eq!(m.len(), 2, "{name}");
        assert_eq!(
            (m[0].name.as_str(), m[1].name.as_str()),
            ("tlsMode-istio", "tlsMode-disabled")
        );
        assert!(m[1].r#match.as_ref().unwrap().fields.is_empty());
        assert_eq!(
            m[1].transport_socket.as_ref().unwrap().name,
            "envoy.transport_sockets.raw_buffer"
        );
        assert!(weft_xds_client::pgv::cluster(&c).is_empty(), "{name}");
        let x = weft_xds_client::convert::cluster(&c, false).unwrap();
        assert!(x.raw.tls.is_none());
        let t = x.raw.tls_matches[0].tls.as_ref().unwrap();
        assert_eq!(t.mode.as_deref(), Some("mesh"));
        assert_eq!(
            t.subject_alt_names,
            vec!["spiffe://cluster.local/ns/default/sa/reviews"]
        );
        assert!(x.raw.tls_matches[1].tls.is_none());
        // Proxyless gRPC: plaintext, no matches.
        let g: Cluster = unpack(&s.grpc_clusters[name].any, CLUSTER).unwrap();
        assert!(
            g.transport_socket.is_none() && g.transport_socket_matches.is_empty(),
            "{name}"
        );
        // The endpoints: tlsMode on the one with a sidecar only.
        let la: ClusterLoadAssignment = unpack(
            &s.maps[Kind::Endpoint as usize][name].any,
            weft_xds_api::type_url::ENDPOINT,
        )
        .unwrap();
        let eps = convert_eps(&la);
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[0].tls_match.get("tlsMode").map(String::as_str),
            Some("istio"),
            "{name}"
        );
        assert!(eps[1].tls_match.is_empty(), "{name}");
    }
    // Every endpoint with a sidecar (ratings): one socket for all; its endpoints are marked anyway,
    // so that a cluster switching to per-endpoint choice before its endpoints arrive never sends
    // plaintext to a sidecar.
    let c = cluster(&s, "ratings");
    assert!(c.transport_socket.is_some() && c.transport_socket_matches.is_empty());
    let la: ClusterLoadAssignment = unpack(
        &s.maps[Kind::Endpoint as usize]["ratings"].any,
        weft_xds_api::type_url::ENDPOINT,
    )
    .unwrap();
    assert_eq!(
        convert_eps(&la)[0].tls_match.get("tlsMode").map(String::as_str),
        Some("istio")
    );
    // A service explicitly STRICT: mTLS (and secure naming) to every endpoint, even one without a
    // sidecar, which is then refused rather than sent plaintext.
    let mut strict = world.clone();
    Arc::make_mut(strict.services.get_mut("reviews").unwrap()).mtls = Some(MtlsMode::Strict);
    let st = build_snapshot(1, Arc::new(strict), None);
    let c = cluster(&st, "reviews");
    assert!(c.transport_socket.is_some() && c.transport_socket_matches.is_empty());
    // DISABLE, or no CA: no socket, no marks.
    let plain = build_snapshot(
        1,
        Arc::new(World {
            mesh_tls: None,
            ..world
        }),
        None,
    );
    let c = cluster(&plain, "reviews");
    assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
    let la: ClusterLoadAssignment = unpack(
        &plain.maps[Kind::Endpoint as usize]["reviews"].any,
        weft_xds_api::type_url::ENDPOINT,
    )
    .unwrap();
    assert!(convert_eps(&la).iter().all(|e| e.tls_match.is_empty()));
    // A bad value is refused naming the field.
    let e = parse_fragment(
        "bad.yaml",
        "services: [{name: a, endpoints: [{address: 127.0.0.1:1, sidecar: maybe}]}]\n",
    )
    .unwrap_err()
    .join("\n");
    assert!(e.contains("sidecar"), "{e}");
}

fn convert_eps(
    la: &weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> Vec<weft_config::raw::RawEndpoint> {
    weft_xds_client::convert::load_assignment(la).unwrap().plain
}

/// `--mtls-suites`: the mesh TLS contexts carry `tls_params.cipher_suites` (SM only, or SM first
/// then the standard suites), which weft's xDS client reads back as the listener's and cluster's
/// `cipher_suites`; standard (the default) sends none, as Istio.
#[test]
fn mtls_suites_set_the_cipher_suites_of_mesh_contexts() {
    use weft_control::model::MtlsSuites;
    let with = |suites| {
        snapshot(Some(MeshTls {
            default_mode: MtlsMode::Strict,
            suites,
        }))
    };
    let inbound_with = |s: &Snapshot, suites| -> Listener {
        let node = NodeInfo::from_node(&sidecar("n1", "reviews"));
        let mode = weft_control::mesh_tls::inbound_mode(&s.world, "reviews");
        let own = node_resources(&node, None, None, None, mode, suites, &Default::default());
        unpack(&own.maps[Kind::Listener as usize]["inbound|reviews"].any, LISTENER).unwrap()
    };
    for (suites, want) in [
        (MtlsSuites::Standard, None),
        (MtlsSuites::Sm, Some(vec!["TLS_SM4_GCM_SM3".to_string()])),
    ] {
        let s = with(suites);
        let c = weft_xds_client::convert::cluster(&cluster(&s, "reviews"), false).unwrap();
        assert_eq!(c.raw.tls.unwrap().cipher_suites, want, "{suites:?}");
        let l = weft_xds_client::convert::listener(&inbound_with(&s, suites))
            .unwrap()
            .unwrap();
        assert_eq!(l.raw.tls.unwrap().cipher_suites, want, "{suites:?}");
    }
    let s = with(MtlsSuites::Both);
    let c = weft_xds_client::convert::cluster(&cluster(&s, "reviews"), false).unwrap();
    let got = c.raw.tls.unwrap().cipher_suites.unwrap();
    assert_eq!(got[0], "TLS_SM4_GCM_SM3");
    assert!(got.contains(&"TLS_AES_128_GCM_SHA256".to_string()), "{got:?}");
    // What the proxy's model makes of it: sm first, then standard.
    let yaml = format!(
        "listeners: []\nclusters:\n  - name: x\n    endpoints: [{{ address: 127.0.0.1:1 }}]\n    tls: {{ mode: mesh, cipher_suites: {got:?} }}\n"
    );
    let cfg = weft_config::from_yaml(&yaml).unwrap();
    assert_eq!(
        cfg.clusters[0].tls.as_ref().unwrap().suites,
        vec![weft_config::tls::TlsSuite::Sm, weft_config::tls::TlsSuite::Standard]
    );
}
