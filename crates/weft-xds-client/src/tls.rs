//! Envoy TLS transport sockets → weft `tls` blocks. Clusters: `envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`. SDS references named `default` (certificate) and `ROOTCA` (validation), the
//! names istio-agent serves, mean the proxy's own mesh identity (`mode: mesh`); certificates and CA
//! given as files become `mutual`/`simple`. Everything else is refused with the field named.

use weft_config::tls::RawClusterTls;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

pub use weft_xds_api::type_url::{
    DOWNSTREAM_TLS_CONTEXT as DOWNSTREAM_TLS_URL, UPSTREAM_TLS_CONTEXT as UPSTREAM_TLS_URL,
};
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";

/// A secret a listener or cluster takes from SDS over the ADS stream (`sds_config: { ads: {} }`):
/// a certificate and its key, or trust roots. Filled in when the listener or cluster is assembled;
/// until the secret has arrived the resource is warming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub slot: Slot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The listener's certificate at this index (a cluster's client certificate: 0).
    Cert(usize),
    /// The trust roots (a listener's client CAs, a cluster's server CAs).
    Ca,
}

/// An SDS reference weft can follow: a secret on the ADS stream. (Istio's `default` and `ROOTCA`
/// are the mesh identity, handled apart; secrets from another config source are not followed.)
fn over_ads(s: &tls::SdsSecretConfig) -> bool {
    matches!(
        s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()),
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    )
}

const SDS_HINT: &str = "or a secret over ADS (sds_config: { ads: {} })";

/// A PEM data source: `(file, inline PEM)`, one of them set (both None on error).
fn pem(errs: &mut ConfigError, path: &str, d: &Option<core::DataSource>) -> (Option<String>, Option<String>) {
    use core::data_source::Specifier;
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) if !f.is_empty() => (Some(f.clone()), None),
        Some(Specifier::InlineString(s)) if !s.is_empty() => (None, Some(s.clone())),
        Some(Specifier::InlineBytes(b)) if !b.is_empty() => match String::from_utf8(b.clone()) {
            Ok(s) => (None, Some(s)),
            Err(_) => {
                errs.add(format!("{path}.inline_bytes"), "is not PEM text (not UTF-8)");
                (None, None)
            }
        },
        Some(Specifier::EnvironmentVariable(_)) => {
            errs.add(
                format!("{path}.environment_variable"),
                "unsupported (give filename, inline_bytes or inline_string; or SDS default/ROOTCA)",
            );
            (None, None)
        }
        _ => {
            errs.add(path, "is required");
            (None, None)
        }
    }
}

/// A cluster's `transport_socket`; `None` for plaintext (absent or raw_buffer) or on error.
/// The ALPN protocols weft speaks, of those offered: Istio's `istio-peer-exchange`/`istio` would
/// make a weft (or any peer without them) refuse the handshake for want of a common protocol.
fn weft_alpn(common: &tls::CommonTlsContext) -> Option<Vec<String>> {
    Some(
        common
            .alpn_protocols
            .iter()
            .filter(|a| *a == "h2" || *a == "http/1.1")
            .cloned()
            .collect::<Vec<_>>(),
    )
    .filter(|v| !v.is_empty())
}

/// `tls_params.tls_minimum_protocol_version` (TlsParameters.TlsProtocol: 0 auto, 1 TLSv1_0,
/// 2 TLSv1_1, 3 TLSv1_2, 4 TLSv1_3): weft's floor is 1.2, so only 1.3 changes anything.
fn min_version(errs: &mut ConfigError, p: &str, params: &tls::TlsParameters) -> Option<String> {
    match params.tls_minimum_protocol_version {
        0..=3 => None,
        4 => Some("1.3".into()),
        v => {
            errs.add(
                format!("{p}.tls_params.tls_minimum_protocol_version"),
                format!("unknown value {v}"),
            );
            None
        }
    }
}

/// `common_tls_context.tls_params` (`p` is the context's path): the minimum version and the
/// cipher suites (Envoy's names, checked here so that a NACK names the xDS field; see
/// [`weft_config::tls::cipher_suites`]). A maximum below TLS 1.3, `ecdh_curves`,
/// `signature_algorithms` and `compliance_policies` are refused (weft's groups and signature
/// schemes follow the suite families).
fn tls_params(errs: &mut ConfigError, p: &str, params: &tls::TlsParameters) -> (Option<String>, Option<Vec<String>>) {
    let min = min_version(errs, p, params);
    if matches!(params.tls_maximum_protocol_version, 1..=3) {
        errs.add(
            format!("{p}.tls_params.tls_maximum_protocol_version"),
            "unsupported (weft always offers TLS 1.3)",
        );
    } else if params.tls_maximum_protocol_version > 4 {
        errs.add(
            format!("{p}.tls_params.tls_maximum_protocol_version"),
            format!("unknown value {}", params.tls_maximum_protocol_version),
        );
    }
    for (f, set) in [
        ("ecdh_curves", !params.ecdh_curves.is_empty()),
        ("signature_algorithms", !params.signature_algorithms.is_empty()),
        ("compliance_policies", !params.compliance_policies.is_empty()),
    ] {
        if set {
            errs.add(
                format!("{p}.tls_params.{f}"),
                "unsupported (weft's key exchange groups and signature schemes follow the suite families: X25519, P-256, P-384 and RSA/ECDSA/Ed25519 for the standard suites, curveSM2 and sm2sig_sm3 for TLS_SM4_GCM_SM3)",
            );
        }
    }
    if params.cipher_suites.is_empty() {
        return (min, None);
    }
    weft_config::tls::cipher_suites(errs, &format!("{p}.tls_params.cipher_suites"), &params.cipher_suites);
    (min, Some(params.cipher_suites.clone()))
}

pub fn cluster_tls(errs: &mut ConfigError, ts: &core::TransportSocket) -> Option<RawClusterTls> {
    cluster_tls_with_secrets(errs, ts, &mut Vec::new())
}

/// [`cluster_tls`], with the SDS secrets it needs pushed on `secrets`.
pub fn cluster_tls_with_secrets(
    errs: &mut ConfigError,
    ts: &core::TransportSocket,
    secrets: &mut Vec<SecretRef>,
) -> Option<RawClusterTls> {
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
        alpn: weft_alpn(&common),
        ..Default::default()
    };
    if let Some(params) = &common.tls_params {
        (out.min_version, out.cipher_suites) = tls_params(errs, p, params);
    }
    // The certificate: SDS `default` (the mesh identity), a secret over ADS, or one pair of files.
    let (mut mesh_cert, mut sds_cert) = (false, false);
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        if s.name == "default" && i == 0 {
            mesh_cert = true;
        } else if i == 0 && !s.name.is_empty() && over_ads(s) {
            sds_cert = true;
            secrets.push(SecretRef {
                name: s.name.clone(),
                slot: Slot::Cert(0),
            });
        } else {
            errs.add(
                format!("{p}.tls_certificate_sds_secret_configs[{i}].name"),
                format!(
                    "{:?}: only the proxy's own identity \"default\" is served, {SDS_HINT}, one of them",
                    s.name
                ),
            );
        }
    }
    match common.tls_certificates.as_slice() {
        [] => {}
        [c] if !mesh_cert && !sds_cert => {
            (out.cert_file, out.cert_pem) = pem(
                errs,
                &format!("{p}.tls_certificates[0].certificate_chain"),
                &c.certificate_chain,
            );
            (out.key_file, out.key_pem) = pem(errs, &format!("{p}.tls_certificates[0].private_key"), &c.private_key);
        }
        _ => errs.add(
            format!("{p}.tls_certificates"),
            "at most one certificate, and not with SDS",
        ),
    }
    // Validation: SDS `ROOTCA` (the mesh roots) and/or a context with a CA file and SAN matchers.
    use tls::common_tls_context::ValidationContextType as V;
    let (mut mesh_roots, mut vc) = (false, None);
    let mut sds_ca = false;
    let mut sds_name = |errs: &mut ConfigError, path: &str, s: &tls::SdsSecretConfig| {
        if s.name == "ROOTCA" {
            mesh_roots = true;
        } else if !s.name.is_empty() && over_ads(s) {
            sds_ca = true;
            secrets.push(SecretRef {
                name: s.name.clone(),
                slot: Slot::Ca,
            });
        } else {
            errs.add(
                path,
                format!("{:?}: only the mesh roots \"ROOTCA\" are served, {SDS_HINT}", s.name),
            );
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
        Some(_) => errs.add(format!("{p}.validation_context_type"), "unsupported validation context"),
    }
    if let Some(v) = &vc {
        let vp = format!("{p}.validation_context");
        if v.trusted_ca.is_some() {
            (out.trusted_ca_file, out.trusted_ca_pem) = pem(errs, &format!("{vp}.trusted_ca"), &v.trusted_ca);
        }
        use weft_xds_api::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
            match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(s)) => out.subject_alt_names.push(s.clone()),
                _ => errs.add(
                    format!("{vp}.match_typed_subject_alt_names[{i}].matcher"),
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
                    format!("{vp}.match_subject_alt_names[{i}]"),
                    "only exact matchers are supported",
                ),
            }
        }
    }
    out.mode = Some(
        match (mesh_cert, mesh_roots) {
            (true, true) => "mesh",
            (false, false) if out.cert_file.is_some() || out.cert_pem.is_some() || sds_cert => "mutual",
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
        (out.trusted_ca_file, out.trusted_ca_pem) = (None, None);
    }
    Some(out)
}

// ---- listeners ----

/// A filter chain's `transport_socket` (`path` is the chain's, e.g. `filter_chains[0]`): `None`
/// for plaintext (absent or raw_buffer) or on error. `server_names` are the chain's
/// `filter_chain_match.server_names`, which select its certificate. The listener's assembly
/// ([`crate::convert::listener`]) merges the chains' blocks into the listener's one `tls`.
pub fn listener_tls(
    errs: &mut ConfigError,
    path: &str,
    ts: &core::TransportSocket,
    server_names: &[String],
    secrets: &mut Vec<SecretRef>,
) -> Option<weft_config::tls::RawListenerTls> {
    use core::transport_socket::ConfigType;
    let tp = format!("{path}.transport_socket");
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None if ts.name == RAW_BUFFER => return None,
        None => {
            errs.add(&tp, "typed_config is required");
            return None;
        }
    };
    if any.type_url != DOWNSTREAM_TLS_URL {
        if ts.name == RAW_BUFFER || any.type_url.ends_with(".RawBuffer") {
            return None;
        }
        errs.add(
            format!("{tp}.typed_config"),
            format!("unsupported transport socket {} ({})", ts.name, any.type_url),
        );
        return None;
    }
    let ctx: tls::DownstreamTlsContext = match weft_xds_api::unpack(any, DOWNSTREAM_TLS_URL) {
        Ok(c) => c,
        Err(e) => {
            errs.add(format!("{tp}.typed_config"), e);
            return None;
        }
    };
    let dp = format!("{tp}.typed_config");
    if ctx.require_sni.as_ref().is_some_and(|b| b.value) {
        errs.add(
            format!("{dp}.require_sni"),
            "unsupported (weft serves clients that send no SNI with the first certificate)",
        );
    }
    if ctx.ocsp_staple_policy != 0 {
        errs.add(
            format!("{dp}.ocsp_staple_policy"),
            "unsupported (weft does not staple OCSP responses)",
        );
    }
    let p = format!("{dp}.common_tls_context");
    let common = ctx.common_tls_context.unwrap_or_default();
    let mut out = weft_config::tls::RawListenerTls {
        alpn: weft_alpn(&common),
        ..Default::default()
    };
    if let Some(params) = &common.tls_params {
        (out.min_version, out.cipher_suites) = tls_params(errs, &p, params);
    }
    for (f, set) in [
        (
            "tls_certificate_provider_instance",
            common.tls_certificate_provider_instance.is_some(),
        ),
        (
            "custom_tls_certificate_selector",
            common.custom_tls_certificate_selector.is_some(),
        ),
        ("custom_handshaker", common.custom_handshaker.is_some()),
        ("key_log", common.key_log.is_some()),
    ] {
        if set {
            errs.add(format!("{p}.{f}"), "unsupported");
        }
    }
    #[allow(deprecated)]
    let providers = common.tls_certificate_certificate_provider.is_some()
        || common.tls_certificate_certificate_provider_instance.is_some();
    if providers {
        errs.add(format!("{p}.tls_certificate_certificate_provider"), "unsupported");
    }
    // The certificate: SDS `default` (the mesh identity), a secret over ADS, or one pair of files.
    let (mut mesh_cert, mut sds_cert) = (false, false);
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        if s.name == "default" && i == 0 {
            mesh_cert = true;
        } else if i == 0 && !s.name.is_empty() && over_ads(s) {
            sds_cert = true;
            secrets.push(SecretRef {
                name: s.name.clone(),
                slot: Slot::Cert(0),
            });
            // Filled in from the secret when the listener is assembled.
            out.certificates.push(weft_config::tls::RawCertificate {
                server_names: server_names.to_vec(),
                ..Default::default()
            });
        } else {
            errs.add(
                format!("{p}.tls_certificate_sds_secret_configs[{i}].name"),
                format!(
                    "{:?}: only the proxy's own identity \"default\" is served, {SDS_HINT}, one of them",
                    s.name
                ),
            );
        }
    }
    match common.tls_certificates.as_slice() {
        [] if !mesh_cert && !sds_cert => errs.add(
            format!("{p}.tls_certificates"),
            "a certificate is required (tls_certificates, SDS \"default\", or a secret over ADS)",
        ),
        [] => {}
        [c] if !mesh_cert && !sds_cert => {
            let (cert_file, cert_pem) = pem(
                errs,
                &format!("{p}.tls_certificates[0].certificate_chain"),
                &c.certificate_chain,
            );
            let (key_file, key_pem) = pem(errs, &format!("{p}.tls_certificates[0].private_key"), &c.private_key);
            out.certificates.push(weft_config::tls::RawCertificate {
                cert_file,
                key_file,
                cert_pem,
                key_pem,
                server_names: server_names.to_vec(),
            });
        }
        _ => errs.add(
            format!("{p}.tls_certificates"),
            "one certificate per filter chain, and not with SDS (give each server name its own filter chain)",
        ),
    }
    // Validation: SDS `ROOTCA` (the mesh roots) or a context with a CA file.
    use tls::common_tls_context::ValidationContextType as V;
    let (mut mesh_roots, mut vc) = (false, None);
    let mut sds_ca = false;
    let mut sds_name = |errs: &mut ConfigError, path: &str, s: &tls::SdsSecretConfig| {
        if s.name == "ROOTCA" {
            mesh_roots = true;
        } else if !s.name.is_empty() && over_ads(s) {
            sds_ca = true;
            secrets.push(SecretRef {
                name: s.name.clone(),
                slot: Slot::Ca,
            });
        } else {
            errs.add(
                path,
                format!("{:?}: only the mesh roots \"ROOTCA\" are served, {SDS_HINT}", s.name),
            );
        }
    };
    match &common.validation_context_type {
        None => {}
        Some(V::ValidationContext(v)) => vc = Some((format!("{p}.validation_context"), v.clone())),
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            sds_name(errs, &format!("{p}.validation_context_sds_secret_config.name"), s)
        }
        Some(V::CombinedValidationContext(c)) => {
            vc = c
                .default_validation_context
                .clone()
                .map(|v| (format!("{p}.combined_validation_context.default_validation_context"), v));
            if let Some(s) = &c.validation_context_sds_secret_config {
                sds_name(
                    errs,
                    &format!("{p}.combined_validation_context.validation_context_sds_secret_config.name"),
                    s,
                );
            }
        }
        Some(_) => errs.add(format!("{p}.validation_context_type"), "unsupported validation context"),
    }
    if let Some((vp, v)) = &vc {
        if v.trusted_ca.is_some() {
            (out.trusted_ca_file, out.trusted_ca_pem) = pem(errs, &format!("{vp}.trusted_ca"), &v.trusted_ca);
        }
        #[allow(deprecated)]
        let legacy_sans = !v.match_subject_alt_names.is_empty();
        for (f, set, why) in [
            (
                "match_typed_subject_alt_names",
                !v.match_typed_subject_alt_names.is_empty(),
                "a listener accepts every client its roots vouch for; restrict callers with an authorization policy (RBAC principals)",
            ),
            (
                "match_subject_alt_names",
                legacy_sans,
                "a listener accepts every client its roots vouch for; restrict callers with an authorization policy (RBAC principals)",
            ),
            ("verify_certificate_spki", !v.verify_certificate_spki.is_empty(), "unsupported"),
            ("verify_certificate_hash", !v.verify_certificate_hash.is_empty(), "unsupported"),
            ("crl", v.crl.is_some(), "unsupported (no revocation lists)"),
            ("allow_expired_certificate", v.allow_expired_certificate, "unsupported"),
            ("trust_chain_verification", v.trust_chain_verification != 0, "unsupported (weft always verifies)"),
            ("custom_validator_config", v.custom_validator_config.is_some(), "unsupported"),
            ("ca_certificate_provider_instance", v.ca_certificate_provider_instance.is_some(), "unsupported"),
            ("system_root_certs", v.system_root_certs.is_some(), "unsupported (weft does not trust the system roots implicitly)"),
        ] {
            if set {
                errs.add(format!("{vp}.{f}"), why);
            }
        }
    }
    let require = ctx.require_client_certificate.as_ref().is_some_and(|b| b.value);
    match (mesh_cert, mesh_roots) {
        (true, true) => {
            if out.trusted_ca_file.is_some() || out.trusted_ca_pem.is_some() {
                errs.add(
                    &p,
                    "the mesh roots (SDS \"ROOTCA\") and a trusted_ca cannot be combined",
                );
            }
            if !require {
                errs.add(
                    format!("{dp}.require_client_certificate"),
                    "must be true with the mesh identity (SDS \"default\"/\"ROOTCA\"): weft's mesh listeners always require a client certificate",
                );
            }
            if !server_names.is_empty() {
                errs.add(
                    format!("{path}.filter_chain_match.server_names"),
                    "unsupported with the mesh identity (a mesh listener serves its one identity whatever the SNI)",
                );
            }
        }
        (false, false) => {
            if require {
                out.require_client_certificate = Some(true);
                if out.trusted_ca_file.is_none() && out.trusted_ca_pem.is_none() && !sds_ca {
                    errs.add(
                        format!("{dp}.require_client_certificate"),
                        "needs a validation context with trusted_ca",
                    );
                }
            }
        }
        _ => errs.add(
            &p,
            "SDS \"default\" and \"ROOTCA\" go together (the mesh identity and its roots)",
        ),
    }
    Some(out)
}

// ---- secrets (SDS over ADS) ----

/// (file, inline PEM): one of them set.
pub type PemPair = (Option<String>, Option<String>);

/// An SDS `Secret` as weft uses it: a certificate chain and key, or trust roots.
#[derive(Clone, Default, PartialEq)]
pub struct XSecret {
    /// The chain and the key of a `tls_certificate` secret.
    pub cert: Option<(PemPair, PemPair)>,
    /// The roots of a `validation_context` secret.
    pub ca: Option<PemPair>,
}

/// Never shows a private key.
impl std::fmt::Debug for XSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XSecret")
            .field("cert", &self.cert.as_ref().map(|(c, _)| c))
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// A `Secret` resource; refusals name the field.
pub fn secret(s: &tls::Secret) -> Result<XSecret, ConfigError> {
    use tls::secret::Type;
    let mut errs = ConfigError::default();
    let mut out = XSecret::default();
    match &s.r#type {
        Some(Type::TlsCertificate(c)) => {
            let chain = pem(&mut errs, "tls_certificate.certificate_chain", &c.certificate_chain);
            let key = pem(&mut errs, "tls_certificate.private_key", &c.private_key);
            for (f, set) in [
                ("password", c.password.is_some()),
                ("ocsp_staple", c.ocsp_staple.is_some()),
                ("private_key_provider", c.private_key_provider.is_some()),
                ("watched_directory", c.watched_directory.is_some()),
                ("pkcs12", c.pkcs12.is_some()),
                (
                    "signed_certificate_timestamp",
                    !c.signed_certificate_timestamp.is_empty(),
                ),
            ] {
                if set {
                    errs.add(format!("tls_certificate.{f}"), "unsupported");
                }
            }
            out.cert = Some((chain, key));
        }
        Some(Type::ValidationContext(v)) => {
            out.ca = Some(pem(&mut errs, "validation_context.trusted_ca", &v.trusted_ca));
            #[allow(deprecated)]
            let sans = !v.match_typed_subject_alt_names.is_empty() || !v.match_subject_alt_names.is_empty();
            for (f, set) in [
                ("match_typed_subject_alt_names", sans),
                ("verify_certificate_spki", !v.verify_certificate_spki.is_empty()),
                ("verify_certificate_hash", !v.verify_certificate_hash.is_empty()),
                ("crl", v.crl.is_some()),
                ("allow_expired_certificate", v.allow_expired_certificate),
                ("custom_validator_config", v.custom_validator_config.is_some()),
            ] {
                if set {
                    errs.add(
                        format!("validation_context.{f}"),
                        "unsupported in a secret (weft reads only trusted_ca from it; give SAN matchers in the cluster's default_validation_context)",
                    );
                }
            }
        }
        Some(Type::SessionTicketKeys(_)) => errs.add("session_ticket_keys", "unsupported"),
        Some(Type::GenericSecret(_)) => errs.add("generic_secret", "unsupported (weft has no use for it)"),
        None => errs.add("type", "a tls_certificate or a validation_context is required"),
    }
    errs.or(out)
}
