//! Envoy TLS transport sockets → weft `tls` blocks. Clusters: `envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`. SDS references named `default` (certificate) and `ROOTCA` (validation), the
//! names istio-agent serves, mean the proxy's own mesh identity (`mode: mesh`); certificates and CA
//! given as files become `mutual`/`simple`. Everything else is refused with the field named.

use crate::convert::Errs;
use weft_config::tls::RawClusterTls;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

pub const UPSTREAM_TLS_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";

fn file(errs: &mut Errs, path: &str, d: &Option<core::DataSource>) -> Option<String> {
    use core::data_source::Specifier;
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) if !f.is_empty() => Some(f.clone()),
        Some(_) => {
            errs.add(path, "only filename data sources are supported (or SDS default/ROOTCA)");
            None
        }
        None => {
            errs.add(path, "is required");
            None
        }
    }
}

/// A cluster's `transport_socket`; `None` for plaintext (absent or raw_buffer) or on error.
pub fn cluster_tls(errs: &mut Errs, ts: &core::TransportSocket) -> Option<RawClusterTls> {
    use core::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None if ts.name == RAW_BUFFER => return None,
        None => {
            errs.add("transport_socket", "typed_config is required");
            return None;
        }
    };
    if any.type_url != UPSTREAM_TLS_URL {
        if ts.name == RAW_BUFFER || any.type_url.ends_with(".RawBuffer") {
            return None;
        }
        errs.add(
            "transport_socket.typed_config",
            format!("unsupported transport socket {} ({})", ts.name, any.type_url),
        );
        return None;
    }
    let ctx: tls::UpstreamTlsContext = match weft_xds_api::unpack(any, UPSTREAM_TLS_URL) {
        Ok(c) => c,
        Err(e) => {
            errs.add("transport_socket.typed_config", e);
            return None;
        }
    };
    let p = "transport_socket.typed_config.common_tls_context";
    let common = ctx.common_tls_context.unwrap_or_default();
    let mut out = RawClusterTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        // Only what weft speaks: Istio's `istio-peer-exchange`/`istio` would make a weft (or any
        // server without them) refuse the handshake for want of a common protocol.
        alpn: Some(
            common
                .alpn_protocols
                .iter()
                .filter(|a| *a == "h2" || *a == "http/1.1")
                .cloned()
                .collect::<Vec<_>>(),
        )
        .filter(|v| !v.is_empty()),
        ..Default::default()
    };
    if let Some(params) = &common.tls_params {
        // envoy.extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol: 3 TLSv1_2, 4 TLSv1_3.
        match params.tls_minimum_protocol_version {
            0..=3 => {}
            4 => out.min_version = Some("1.3".into()),
            v => errs.add(
                &format!("{p}.tls_params.tls_minimum_protocol_version"),
                format!("unknown value {v}"),
            ),
        }
    }
    // The certificate: SDS `default` (the mesh identity) or one pair of files.
    let mut mesh_cert = false;
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        if s.name == "default" && i == 0 {
            mesh_cert = true;
        } else {
            errs.add(
                &format!("{p}.tls_certificate_sds_secret_configs[{i}].name"),
                format!("{:?}: only the proxy's own identity \"default\" is served", s.name),
            );
        }
    }
    match common.tls_certificates.as_slice() {
        [] => {}
        [c] if !mesh_cert => {
            out.cert_file = file(
                errs,
                &format!("{p}.tls_certificates[0].certificate_chain"),
                &c.certificate_chain,
            );
            out.key_file = file(errs, &format!("{p}.tls_certificates[0].private_key"), &c.private_key);
        }
        _ => errs.add(
            &format!("{p}.tls_certificates"),
            "at most one certificate, and not with SDS",
        ),
    }
    // Validation: SDS `ROOTCA` (the mesh roots) and/or a context with a CA file and SAN matchers.
    use tls::common_tls_context::ValidationContextType as V;
    let (mut mesh_roots, mut vc) = (false, None);
    let mut sds_name = |errs: &mut Errs, path: &str, s: &tls::SdsSecretConfig| {
        if s.name == "ROOTCA" {
            mesh_roots = true;
        } else {
            errs.add(path, format!("{:?}: only the mesh roots \"ROOTCA\" are served", s.name));
        }
    };
    match &common.validation_context_type {
        None => {}
        Some(V::ValidationContext(v)) => vc = Some(v.clone()),
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            sds_name(errs, &format!("{p}.validation_context_sds_secret_config.name"), s)
        }
        Some(V::CombinedValidationContext(c)) => {
            vc = c.default_validation_context.clone();
            if let Some(s) = &c.validation_context_sds_secret_config {
                sds_name(
                    errs,
                    &format!("{p}.combined_validation_context.validation_context_sds_secret_config.name"),
                    s,
                );
            }
        }
        Some(_) => errs.add(
            &format!("{p}.validation_context_type"),
            "unsupported validation context",
        ),
    }
    if let Some(v) = &vc {
        let vp = format!("{p}.validation_context");
        if v.trusted_ca.is_some() {
            out.trusted_ca_file = file(errs, &format!("{vp}.trusted_ca"), &v.trusted_ca);
        }
        use weft_xds_api::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
            match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(s)) => out.subject_alt_names.push(s.clone()),
                _ => errs.add(
                    &format!("{vp}.match_typed_subject_alt_names[{i}].matcher"),
                    "only exact matchers are supported",
                ),
            }
        }
        #[allow(deprecated)]
        let legacy = &v.match_subject_alt_names;
        for (i, m) in legacy.iter().enumerate() {
            match &m.match_pattern {
                Some(MatchPattern::Exact(s)) => out.subject_alt_names.push(s.clone()),
                _ => errs.add(
                    &format!("{vp}.match_subject_alt_names[{i}]"),
                    "only exact matchers are supported",
                ),
            }
        }
    }
    out.mode = Some(
        match (mesh_cert, mesh_roots) {
            (true, true) => "mesh",
            (false, false) if out.cert_file.is_some() => "mutual",
            (false, false) => "simple",
            _ => {
                errs.add(
                    p,
                    "SDS \"default\" and \"ROOTCA\" go together (the mesh identity and its roots)",
                );
                "simple"
            }
        }
        .into(),
    );
    if mesh_cert && mesh_roots {
        out.trusted_ca_file = None;
    }
    Some(out)
}
