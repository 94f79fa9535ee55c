//! The `tls` blocks of listeners and clusters: their YAML form, their validated form, and the
//! validation (errors name the field path, e.g. `listeners[0].tls.certificates[0].cert_file`).
//!
//! Files are named here and read when the configuration is put into effect (and again when they
//! change): an unreadable or invalid file refuses the configuration there, naming the same field.

use crate::validate::FieldError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

// ---- YAML ----

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListenerTls {
    /// STRICT (default), PERMISSIVE (TLS and plaintext on one port) or DISABLE.
    pub mode: Option<String>,
    /// Certificates chosen by SNI. None: the workload's mesh identity (SVID), with client
    /// certificates required and verified against the mesh roots.
    pub certificates: Vec<RawCertificate>,
    /// ALPN protocols offered, most preferred first; default [h2, http/1.1].
    pub alpn: Option<Vec<String>>,
    /// Ask clients for a certificate and verify it against `trusted_ca_file`.
    pub require_client_certificate: Option<bool>,
    pub trusted_ca_file: Option<String>,
    /// "1.2" (default) or "1.3".
    pub min_version: Option<String>,
    /// x-forwarded-client-cert handling: sanitize (default), forward_only, append_forward,
    /// sanitize_set, always_forward_only.
    pub forward_client_cert: Option<String>,
    /// PERMISSIVE: how long to wait for a connection's first bytes before treating it as
    /// plaintext. Default 200ms.
    pub detect_timeout: Option<String>,
    /// Suite families offered: `standard` (default) and/or `sm` (ShangMi, RFC 8998: needs an SM2
    /// certificate among `certificates`, served to clients that prefer TLS_SM4_GCM_SM3).
    pub suites: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCertificate {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClusterTls {
    /// simple (default: verify the server), mutual (also present a client certificate), or mesh
    /// (ISTIO_MUTUAL: the workload's SVID, mesh roots).
    pub mode: Option<String>,
    pub sni: Option<String>,
    pub trusted_ca_file: Option<String>,
    /// The server's certificate must carry one of these SANs (URI or DNS; SPIFFE IDs for mesh).
    pub subject_alt_names: Vec<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Default: h2 for protocol http2, http/1.1 for http1.
    pub alpn: Option<Vec<String>>,
    pub min_version: Option<String>,
    /// Suite families offered, most preferred first: `standard` (default) and/or `sm` (ShangMi,
    /// RFC 8998).
    pub suites: Option<Vec<String>>,
}

// ---- validated ----

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    #[default]
    Strict,
    Permissive,
    Disable,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub enum TlsMinVersion {
    #[default]
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

/// A family of cipher suites.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsSuite {
    /// AES-GCM and ChaCha20-Poly1305 (TLS 1.3 and 1.2), X25519 and NIST curves, RSA/ECDSA/Ed25519.
    Standard,
    /// ShangMi (RFC 8998): TLS 1.3 TLS_SM4_GCM_SM3, curveSM2, sm2sig_sm3.
    Sm,
}

/// Envoy's `forward_client_cert_details`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// Remove the header (untrusted sources cannot set it).
    #[default]
    Sanitize,
    /// Pass the client's header through only when the connection is mTLS.
    ForwardOnly,
    /// mTLS: append this hop's details to the client's header.
    AppendForward,
    /// mTLS: replace the header with this hop's details (`By=<own id>;URI=<peer id>`).
    SanitizeSet,
    /// Pass the header through whatever the connection.
    AlwaysForwardOnly,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CertificateFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ListenerTls {
    pub mode: TlsMode,
    /// Empty: the mesh identity.
    pub certificates: Vec<CertificateFiles>,
    pub alpn: Vec<String>,
    pub require_client_certificate: bool,
    pub trusted_ca_file: Option<PathBuf>,
    pub min_version: TlsMinVersion,
    pub forward_client_cert: ForwardClientCert,
    #[serde(serialize_with = "ser_dur")]
    pub detect_timeout: Duration,
    /// Most preferred first; never empty.
    pub suites: Vec<TlsSuite>,
}

impl ListenerTls {
    /// Whether the listener serves with the workload's mesh identity (no certificate files).
    pub fn is_mesh(&self) -> bool {
        self.certificates.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterTlsMode {
    #[default]
    Simple,
    Mutual,
    Mesh,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClusterTls {
    pub mode: ClusterTlsMode,
    pub sni: String,
    pub trusted_ca_file: Option<PathBuf>,
    pub subject_alt_names: Vec<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub alpn: Vec<String>,
    pub min_version: TlsMinVersion,
    /// Most preferred first; never empty.
    pub suites: Vec<TlsSuite>,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

/// The SNI a mesh cluster sends when none is given.
pub const MESH_SNI: &str = "mesh.weft.internal";

// ---- validation ----

fn err(errors: &mut Vec<FieldError>, path: &str, message: impl Into<String>) {
    errors.push(FieldError {
        path: path.to_string(),
        message: message.into(),
    });
}

fn file(errors: &mut Vec<FieldError>, path: &str, v: &Option<String>) -> Option<PathBuf> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => {
            err(errors, path, "is required");
            None
        }
    }
}

fn min_version(errors: &mut Vec<FieldError>, path: &str, v: &Option<String>) -> TlsMinVersion {
    match v.as_deref() {
        None | Some("1.2") | Some("TLSv1_2") => TlsMinVersion::V12,
        Some("1.3") | Some("TLSv1_3") => TlsMinVersion::V13,
        Some(o) => {
            err(
                errors,
                path,
                format!("unknown value {o:?} (expected \"1.2\" or \"1.3\")"),
            );
            TlsMinVersion::V12
        }
    }
}

fn suites(errors: &mut Vec<FieldError>, path: &str, v: &Option<Vec<String>>) -> Vec<TlsSuite> {
    let Some(v) = v else {
        return vec![TlsSuite::Standard];
    };
    if v.is_empty() {
        err(errors, path, "at least one suite family (standard, sm) is required");
        return vec![TlsSuite::Standard];
    }
    let mut out = Vec::new();
    for (i, name) in v.iter().enumerate() {
        let s = match name.to_ascii_lowercase().as_str() {
            "standard" => TlsSuite::Standard,
            "sm" | "shangmi" => TlsSuite::Sm,
            _ => {
                err(
                    errors,
                    &format!("{path}[{i}]"),
                    format!("unknown suite family {name:?} (standard or sm)"),
                );
                continue;
            }
        };
        if out.contains(&s) {
            err(errors, &format!("{path}[{i}]"), format!("{name:?} is listed twice"));
            continue;
        }
        out.push(s);
    }
    if out.is_empty() {
        out.push(TlsSuite::Standard);
    }
    out
}

fn alpn(errors: &mut Vec<FieldError>, path: &str, v: &[String]) -> Vec<String> {
    for (i, p) in v.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            err(errors, &format!("{path}[{i}]"), "an ALPN protocol id is 1 to 255 bytes");
        }
    }
    v.to_vec()
}

fn server_name_ok(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A listener's `tls` block at `path` (e.g. `listeners[0].tls`).
pub fn listener_tls(path: &str, t: &RawListenerTls, errors: &mut Vec<FieldError>) -> ListenerTls {
    let mode = match t.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("STRICT") => TlsMode::Strict,
        Some("PERMISSIVE") => TlsMode::Permissive,
        Some("DISABLE") => TlsMode::Disable,
        Some(_) => {
            err(
                errors,
                &format!("{path}.mode"),
                format!(
                    "unknown value {:?} (STRICT, PERMISSIVE or DISABLE)",
                    t.mode.as_deref().unwrap_or_default()
                ),
            );
            TlsMode::Strict
        }
    };
    let mut certificates = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let p = format!("{path}.certificates[{i}]");
        let cert = file(errors, &format!("{p}.cert_file"), &c.cert_file);
        let key = file(errors, &format!("{p}.key_file"), &c.key_file);
        for (j, n) in c.server_names.iter().enumerate() {
            if !server_name_ok(n) {
                err(
                    errors,
                    &format!("{p}.server_names[{j}]"),
                    format!("{n:?} is not a DNS name"),
                );
            }
        }
        if let (Some(cert_file), Some(key_file)) = (cert, key) {
            certificates.push(CertificateFiles {
                cert_file,
                key_file,
                server_names: c.server_names.clone(),
            });
        }
    }
    let require = t.require_client_certificate.unwrap_or(false);
    let trusted_ca_file = t.trusted_ca_file.as_ref().filter(|s| !s.is_empty()).map(PathBuf::from);
    if require && trusted_ca_file.is_none() && !t.certificates.is_empty() {
        err(
            errors,
            &format!("{path}.trusted_ca_file"),
            "is required with require_client_certificate",
        );
    }
    if t.certificates.is_empty() && trusted_ca_file.is_some() {
        err(
            errors,
            &format!("{path}.trusted_ca_file"),
            "a mesh listener (no certificates) verifies clients against the mesh roots",
        );
    }
    let forward_client_cert = match t.forward_client_cert.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("sanitize") => ForwardClientCert::Sanitize,
        Some("forward_only") => ForwardClientCert::ForwardOnly,
        Some("append_forward") => ForwardClientCert::AppendForward,
        Some("sanitize_set") => ForwardClientCert::SanitizeSet,
        Some("always_forward_only") => ForwardClientCert::AlwaysForwardOnly,
        Some(o) => {
            err(
                errors,
                &format!("{path}.forward_client_cert"),
                format!(
                    "unknown value {o:?} (sanitize, forward_only, append_forward, sanitize_set, always_forward_only)"
                ),
            );
            ForwardClientCert::Sanitize
        }
    };
    let detect_timeout = match t.detect_timeout.as_deref() {
        None => Duration::from_millis(200),
        Some(s) => match crate::duration::parse(s) {
            Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(60) => d,
            Ok(_) => {
                err(errors, &format!("{path}.detect_timeout"), "must be in (0s, 60s]");
                Duration::from_millis(200)
            }
            Err(e) => {
                err(errors, &format!("{path}.detect_timeout"), e);
                Duration::from_millis(200)
            }
        },
    };
    let suites = suites(errors, &format!("{path}.suites"), &t.suites);
    if suites.contains(&TlsSuite::Sm) && t.certificates.is_empty() {
        err(
            errors,
            &format!("{path}.suites"),
            "sm needs an SM2 certificate in certificates (a mesh listener serves the workload's ECDSA identity)",
        );
    }
    ListenerTls {
        suites,
        mode,
        certificates,
        alpn: match &t.alpn {
            None => vec!["h2".into(), "http/1.1".into()],
            Some(v) => alpn(errors, &format!("{path}.alpn"), v),
        },
        require_client_certificate: require || t.certificates.is_empty(),
        trusted_ca_file,
        min_version: min_version(errors, &format!("{path}.min_version"), &t.min_version),
        forward_client_cert,
        detect_timeout,
    }
}

/// A cluster's `tls` block at `path`. `http2`: the cluster speaks HTTP/2 (the default ALPN);
/// `dns_host`: its strict_dns host name, the default SNI.
pub fn cluster_tls(
    path: &str,
    t: &RawClusterTls,
    http2: bool,
    dns_host: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> ClusterTls {
    let mode = match t.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("simple") => ClusterTlsMode::Simple,
        Some("mutual") => ClusterTlsMode::Mutual,
        Some("mesh") | Some("istio_mutual") => ClusterTlsMode::Mesh,
        Some(o) => {
            err(
                errors,
                &format!("{path}.mode"),
                format!("unknown value {o:?} (simple, mutual or mesh)"),
            );
            ClusterTlsMode::Simple
        }
    };
    let trusted_ca_file = t.trusted_ca_file.as_ref().filter(|s| !s.is_empty()).map(PathBuf::from);
    let (mut cert_file, mut key_file) = (None, None);
    match mode {
        ClusterTlsMode::Simple | ClusterTlsMode::Mutual => {
            if trusted_ca_file.is_none() {
                err(
                    errors,
                    &format!("{path}.trusted_ca_file"),
                    "is required (weft does not trust the system roots implicitly)",
                );
            }
            if mode == ClusterTlsMode::Mutual {
                cert_file = file(errors, &format!("{path}.cert_file"), &t.cert_file);
                key_file = file(errors, &format!("{path}.key_file"), &t.key_file);
            } else if t.cert_file.is_some() || t.key_file.is_some() {
                err(
                    errors,
                    &format!("{path}.cert_file"),
                    "a client certificate needs mode: mutual",
                );
            }
        }
        ClusterTlsMode::Mesh => {
            for (f, v) in [
                ("trusted_ca_file", &t.trusted_ca_file),
                ("cert_file", &t.cert_file),
                ("key_file", &t.key_file),
            ] {
                if v.is_some() {
                    err(
                        errors,
                        &format!("{path}.{f}"),
                        "mode mesh uses the workload's identity and the mesh roots",
                    );
                }
            }
        }
    }
    let sni = match (&t.sni, mode) {
        (Some(s), _) => {
            if !server_name_ok(s) || s.starts_with("*.") {
                err(errors, &format!("{path}.sni"), format!("{s:?} is not a DNS name"));
            }
            s.clone()
        }
        (None, ClusterTlsMode::Mesh) => MESH_SNI.to_string(),
        (None, _) => match dns_host {
            Some(h) => h.to_string(),
            None => {
                if t.subject_alt_names.is_empty() {
                    err(
                        errors,
                        &format!("{path}.sni"),
                        "is required to verify the server (or give subject_alt_names)",
                    );
                }
                "localhost".to_string()
            }
        },
    };
    let suites = suites(errors, &format!("{path}.suites"), &t.suites);
    if suites.contains(&TlsSuite::Sm) && mode == ClusterTlsMode::Mesh {
        err(
            errors,
            &format!("{path}.suites"),
            "sm needs SM2 trust roots (trusted_ca_file); mode mesh uses the workload's ECDSA identity",
        );
    }
    ClusterTls {
        suites,
        mode,
        sni,
        trusted_ca_file,
        subject_alt_names: t.subject_alt_names.clone(),
        cert_file,
        key_file,
        alpn: match &t.alpn {
            None if http2 => vec!["h2".into()],
            None => vec!["http/1.1".into()],
            Some(v) => alpn(errors, &format!("{path}.alpn"), v),
        },
        min_version: min_version(errors, &format!("{path}.min_version"), &t.min_version),
    }
}
