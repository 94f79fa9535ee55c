//! The `tls` blocks of listeners and clusters: their YAML form, their validated form, and the
//! validation (errors name the field path, e.g. `listeners[0].tls.certificates[0].cert_file`).
//!
//! Files are named here and read when the configuration is put into effect (and again when they
//! change): an unreadable or invalid file refuses the configuration there, naming the same field.
//! Each file field has an inline twin (`cert_pem` beside `cert_file`, ...) holding the PEM itself,
//! which is what xDS `inline_bytes`/`inline_string` data sources become.

use crate::errors::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// The client CAs as PEM, instead of `trusted_ca_file`.
    pub trusted_ca_pem: Option<String>,
    /// "1.2" (default) or "1.3".
    pub min_version: Option<String>,
    /// x-forwarded-client-cert handling: sanitize (default), forward_only, append_forward,
    /// sanitize_set, always_forward_only.
    pub forward_client_cert: Option<crate::typed::Typed<ForwardClientCert>>,
    /// PERMISSIVE: how long to wait for a connection's first bytes before treating it as
    /// plaintext. Default 200ms.
    pub detect_timeout: Option<crate::typed::RawDuration>,
    /// Suite families offered: `standard` (default) and/or `sm` (ShangMi, RFC 8998: needs an SM2
    /// certificate among `certificates`, served to clients that prefer TLS_SM4_GCM_SM3).
    pub suites: Option<Vec<String>>,
    /// The cipher suites offered, by OpenSSL/BoringSSL or IANA name (Envoy's `cipher_suites`),
    /// instead of `suites`: see [`cipher_suites`].
    pub cipher_suites: Option<Vec<String>>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCertificate {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The chain (leaf first) and key as PEM, instead of the files.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    pub server_names: Vec<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClusterTls {
    /// simple (default: verify the server), mutual (also present a client certificate), or mesh
    /// (ISTIO_MUTUAL: the workload's SVID, mesh roots).
    pub mode: Option<String>,
    pub sni: Option<String>,
    pub trusted_ca_file: Option<String>,
    pub trusted_ca_pem: Option<String>,
    /// The server's certificate must carry one of these SANs (URI or DNS; SPIFFE IDs for mesh).
    pub subject_alt_names: Vec<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The client certificate chain and key as PEM, instead of the files.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// Default: h2 for protocol http2, http/1.1 for http1.
    pub alpn: Option<Vec<String>>,
    pub min_version: Option<String>,
    /// Suite families offered, most preferred first: `standard` (default) and/or `sm` (ShangMi,
    /// RFC 8998).
    pub suites: Option<Vec<String>>,
    /// The cipher suites offered, by name, instead of `suites`: see [`cipher_suites`].
    pub cipher_suites: Option<Vec<String>>,
}

/// A private key's length instead of the key, for `Debug`.
fn redacted(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|k| format!("({} bytes)", k.len()))
}

impl std::fmt::Debug for RawCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &redacted(&self.key_pem))
            .field("server_names", &self.server_names)
            .finish()
    }
}

impl std::fmt::Debug for RawClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClusterTls")
            .field("mode", &self.mode)
            .field("sni", &self.sni)
            .field("trusted_ca_file", &self.trusted_ca_file)
            .field("trusted_ca_pem", &self.trusted_ca_pem)
            .field("subject_alt_names", &self.subject_alt_names)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &redacted(&self.key_pem))
            .field("alpn", &self.alpn)
            .field("min_version", &self.min_version)
            .field("suites", &self.suites)
            .field("cipher_suites", &self.cipher_suites)
            .finish()
    }
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

/// PEM data: a file, or the PEM itself (a `*_pem` field, an xDS inline data source).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(Arc<str>),
}

/// Never shows inline data (it may be a private key): `(inline PEM, 1234 bytes)`.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => write!(f, "{}", p.display()),
            Pem::Inline(s) => write!(f, "(inline PEM, {} bytes)", s.len()),
        }
    }
}

/// As in `Debug`: the path, or `(inline PEM, N bytes)` (what /config_dump shows).
impl Serialize for Pem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{self:?}"))
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CertificateFiles {
    pub cert: Pem,
    pub key: Pem,
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ListenerTls {
    pub mode: TlsMode,
    /// Empty: the mesh identity.
    pub certificates: Vec<CertificateFiles>,
    pub alpn: Vec<String>,
    pub require_client_certificate: bool,
    pub trusted_ca: Option<Pem>,
    pub min_version: TlsMinVersion,
    pub forward_client_cert: ForwardClientCert,
    #[serde(serialize_with = "ser_dur")]
    pub detect_timeout: Duration,
    /// Most preferred first; never empty.
    pub suites: Vec<TlsSuite>,
    /// The suites offered when restricted by `cipher_suites` (canonical names, most preferred
    /// first, `TLS_SM4_GCM_SM3` included); empty: every suite of `suites`' families.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
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
    pub trusted_ca: Option<Pem>,
    pub subject_alt_names: Vec<String>,
    pub cert: Option<Pem>,
    pub key: Option<Pem>,
    pub alpn: Vec<String>,
    pub min_version: TlsMinVersion,
    /// Most preferred first; never empty.
    pub suites: Vec<TlsSuite>,
    /// As [`ListenerTls::cipher_suites`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

/// The SNI a mesh cluster sends when none is given.
pub const MESH_SNI: &str = "mesh.weft.internal";

// ---- validation ----

fn err(errors: &mut ConfigError, path: &str, message: impl Into<String>) {
    errors.add(path, message.into());
}

/// `<prefix><stem>_file` or `<prefix><stem>_pem` (not both); `required`: one of them must be given.
fn pem(
    errors: &mut ConfigError,
    prefix: &str,
    stem: &str,
    file: &Option<String>,
    inline: &Option<String>,
    required: bool,
) -> Option<Pem> {
    match (file.as_deref().filter(|s| !s.is_empty()), inline.as_deref()) {
        (Some(_), Some(_)) => {
            err(
                errors,
                &format!("{prefix}{stem}_pem"),
                format!("give {stem}_file or {stem}_pem, not both"),
            );
            None
        }
        (Some(f), None) => Some(Pem::File(PathBuf::from(f))),
        (None, Some(p)) if p.contains("-----BEGIN ") => Some(Pem::Inline(Arc::from(p))),
        (None, Some(_)) => {
            err(
                errors,
                &format!("{prefix}{stem}_pem"),
                "is not PEM (no -----BEGIN line)",
            );
            None
        }
        (None, None) => {
            if required {
                err(errors, &format!("{prefix}{stem}_file"), "is required");
            }
            None
        }
    }
}

fn min_version(errors: &mut ConfigError, path: &str, v: &Option<String>) -> TlsMinVersion {
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

fn suites(errors: &mut ConfigError, path: &str, v: &Option<Vec<String>>) -> Vec<TlsSuite> {
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

/// The cipher suites weft implements: (canonical name, IANA id, TLS 1.3, other accepted names).
/// Canonical names are Envoy's: OpenSSL/BoringSSL names for TLS 1.2, IANA names for TLS 1.3.
const CIPHERS: &[(&str, u16, bool, &[&str])] = &[
    ("TLS_AES_256_GCM_SHA384", 0x1302, true, &["TLS13_AES_256_GCM_SHA384"]),
    ("TLS_AES_128_GCM_SHA256", 0x1301, true, &["TLS13_AES_128_GCM_SHA256"]),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        0x1303,
        true,
        &["TLS13_CHACHA20_POLY1305_SHA256"],
    ),
    ("TLS_SM4_GCM_SM3", 0x00c6, true, &["TLS13_SM4_GCM_SM3"]),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        0xc02c,
        false,
        &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        0xc02b,
        false,
        &["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        0xcca9,
        false,
        &["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"],
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        0xc030,
        false,
        &["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"],
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        0xc02f,
        false,
        &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        0xcca8,
        false,
        &["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"],
    ),
];

/// The canonical name of the ShangMi suite.
pub const SM_CIPHER: &str = "TLS_SM4_GCM_SM3";

/// BoringSSL names weft (rustls) does not implement: refused like unknown names, with a clearer
/// message (no forward secrecy, CBC, 3DES, PSK).
fn not_implemented(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.contains("-CBC")
        || n.ends_with("-SHA")
        || n.contains("PSK")
        || n.starts_with("AES")
        || n.starts_with("DES")
        || n.starts_with("DHE-")
        || n.starts_with("TLS_DHE_")
        || (n.contains("AES") && !n.contains("GCM"))
        || n.contains("_CBC_")
        || n.starts_with("TLS_RSA_")
        || n.contains("CCM")
        || n.contains("CAMELLIA")
        || n.contains("ARIA")
}

/// The IANA id of a canonical cipher suite name (as in a validated `cipher_suites`).
pub fn cipher_suite_id(canonical: &str) -> Option<u16> {
    CIPHERS.iter().find(|c| c.0 == canonical).map(|c| c.1)
}

/// A `cipher_suites` list (Envoy's `tls_params.cipher_suites` semantics, on what rustls
/// implements): names are OpenSSL/BoringSSL (`ECDHE-ECDSA-AES128-GCM-SHA256`) or IANA
/// (`TLS_AES_128_GCM_SHA256`, `TLS_ECDHE_..._WITH_...`), case-insensitive; `[A|B]` is an
/// equal-preference group (rustls has no such notion: its members are offered in that order);
/// `TLS_SM4_GCM_SM3` is the `sm` family. As in Envoy (BoringSSL), a list that names no standard
/// TLS 1.3 suite leaves the standard TLS 1.3 suites on (the list restricts TLS 1.2); one that names
/// some offers only those; one that names only TLS 1.3 suites turns TLS 1.2 off. An unknown name is
/// an error naming it; a name weft knows but does not implement is left out, or an error naming it
/// when the list names nothing weft implements. Returns the families in order of first appearance
/// and the suites offered, canonical names, most preferred first.
pub fn cipher_suites(errors: &mut ConfigError, path: &str, v: &[String]) -> (Vec<TlsSuite>, Vec<String>) {
    let mut named: Vec<&'static (&'static str, u16, bool, &'static [&'static str])> = Vec::new();
    let mut unimplemented: Vec<(String, String)> = Vec::new();
    for (i, entry) in v.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let entry = entry.trim();
        let members: Vec<&str> = match entry.strip_prefix('[') {
            Some(rest) => match rest.strip_suffix(']') {
                Some(inner) if inner.split('|').all(|m| !m.trim().is_empty()) => {
                    inner.split('|').map(str::trim).collect()
                }
                _ => {
                    err(errors, &p, format!("{entry:?}: an equal-preference group is [A|B|...]"));
                    continue;
                }
            },
            None => vec![entry],
        };
        for m in members {
            let found = CIPHERS
                .iter()
                .find(|c| c.0.eq_ignore_ascii_case(m) || c.3.iter().any(|a| a.eq_ignore_ascii_case(m)));
            match found {
                Some(c) => {
                    if !named.iter().any(|n| n.0 == c.0) {
                        named.push(c);
                    }
                }
                None if !m.is_empty() && not_implemented(m) => unimplemented.push((p.clone(), m.to_string())),
                None => err(errors, &p, format!("unknown cipher suite {m:?}")),
            }
        }
    }
    if v.is_empty() {
        err(errors, path, "at least one cipher suite is required");
    }
    // Names weft knows but does not implement are left out, as OpenSSL leaves out what it cannot
    // offer, when the list names something weft does implement: Istio's default inbound list
    // names `AES256-GCM-SHA384` and `AES128-GCM-SHA256` beside its ECDHE suites. A list of only
    // such names is refused (nothing would be offered).
    if named.is_empty() {
        for (p, m) in unimplemented {
            err(
                errors,
                &p,
                format!("cipher suite {m:?} is not implemented by weft (rustls: ECDHE with AES-GCM or ChaCha20-Poly1305, TLS 1.3 suites, TLS_SM4_GCM_SM3), and the list names no suite weft implements"),
            );
        }
    }
    let mut families = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let standard13_named = named.iter().any(|c| c.2 && c.0 != SM_CIPHER);
    for c in &named {
        let family = if c.0 == SM_CIPHER {
            TlsSuite::Sm
        } else {
            TlsSuite::Standard
        };
        if !families.contains(&family) {
            families.push(family);
            if family == TlsSuite::Standard && !standard13_named {
                out.extend(
                    CIPHERS
                        .iter()
                        .filter(|d| d.2 && d.0 != SM_CIPHER)
                        .map(|d| d.0.to_string()),
                );
            }
        }
        out.push(c.0.to_string());
    }
    if families.is_empty() {
        families.push(TlsSuite::Standard);
    }
    (families, out)
}

/// `suites` or `cipher_suites` (not both) at `path` (the block's, e.g. `clusters[0].tls`).
fn suites_or_ciphers(
    errors: &mut ConfigError,
    path: &str,
    s: &Option<Vec<String>>,
    c: &Option<Vec<String>>,
) -> (Vec<TlsSuite>, Vec<String>) {
    match c {
        None => (suites(errors, &format!("{path}.suites"), s), Vec::new()),
        Some(_) if s.is_some() => {
            err(
                errors,
                &format!("{path}.cipher_suites"),
                "give suites or cipher_suites, not both (TLS_SM4_GCM_SM3 in cipher_suites is the sm family)",
            );
            (suites(errors, &format!("{path}.suites"), s), Vec::new())
        }
        Some(c) => cipher_suites(errors, &format!("{path}.cipher_suites"), c),
    }
}

fn alpn(errors: &mut ConfigError, path: &str, v: &[String]) -> Vec<String> {
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
pub fn listener_tls(path: &str, t: &RawListenerTls, errors: &mut ConfigError) -> ListenerTls {
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
        let cert = pem(errors, &format!("{p}."), "cert", &c.cert_file, &c.cert_pem, true);
        let key = pem(errors, &format!("{p}."), "key", &c.key_file, &c.key_pem, true);
        for (j, n) in c.server_names.iter().enumerate() {
            if !server_name_ok(n) {
                err(
                    errors,
                    &format!("{p}.server_names[{j}]"),
                    format!("{n:?} is not a DNS name"),
                );
            }
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertificateFiles {
                cert,
                key,
                server_names: c.server_names.clone(),
            });
        }
    }
    let require = t.require_client_certificate.unwrap_or(false);
    let trusted_ca = pem(
        errors,
        &format!("{path}."),
        "trusted_ca",
        &t.trusted_ca_file,
        &t.trusted_ca_pem,
        false,
    );
    if require && trusted_ca.is_none() && !t.certificates.is_empty() {
        err(
            errors,
            &format!("{path}.trusted_ca_file"),
            "is required with require_client_certificate",
        );
    }
    if t.certificates.is_empty() && trusted_ca.is_some() {
        err(
            errors,
            &format!("{path}.trusted_ca_file"),
            "a mesh listener (no certificates) verifies clients against the mesh roots",
        );
    }
    let forward_client_cert = match t.forward_client_cert.as_ref().map(|f| f.get()) {
        None => ForwardClientCert::Sanitize,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            err(errors, &format!("{path}.forward_client_cert"), e);
            ForwardClientCert::Sanitize
        }
    };
    let detect_timeout = match t.detect_timeout.as_ref() {
        None => Duration::from_millis(200),
        Some(s) => match s.get() {
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
    let (suites, cipher_suites) = suites_or_ciphers(errors, path, &t.suites, &t.cipher_suites);
    // A mesh listener (no certificates) may offer sm: whether the workload's identity holds an SM2
    // SVID is checked where the listener is built (weft proxy --identity-key-type sm2 or both).
    ListenerTls {
        suites,
        cipher_suites,
        mode,
        certificates,
        alpn: match &t.alpn {
            None => vec!["h2".into(), "http/1.1".into()],
            Some(v) => alpn(errors, &format!("{path}.alpn"), v),
        },
        require_client_certificate: require || t.certificates.is_empty(),
        trusted_ca,
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
    errors: &mut ConfigError,
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
    let p = format!("{path}.");
    let trusted_ca = match mode {
        ClusterTlsMode::Mesh => None,
        _ => pem(errors, &p, "trusted_ca", &t.trusted_ca_file, &t.trusted_ca_pem, false),
    };
    let (mut cert, mut key) = (None, None);
    match mode {
        ClusterTlsMode::Simple | ClusterTlsMode::Mutual => {
            if trusted_ca.is_none() && t.trusted_ca_pem.is_none() {
                err(
                    errors,
                    &format!("{path}.trusted_ca_file"),
                    "is required (weft does not trust the system roots implicitly)",
                );
            }
            if mode == ClusterTlsMode::Mutual {
                cert = pem(errors, &p, "cert", &t.cert_file, &t.cert_pem, true);
                key = pem(errors, &p, "key", &t.key_file, &t.key_pem, true);
            } else if t.cert_file.is_some() || t.key_file.is_some() || t.cert_pem.is_some() || t.key_pem.is_some() {
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
                ("trusted_ca_pem", &t.trusted_ca_pem),
                ("cert_file", &t.cert_file),
                ("cert_pem", &t.cert_pem),
                ("key_file", &t.key_file),
                ("key_pem", &t.key_pem),
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
    let (suites, cipher_suites) = suites_or_ciphers(errors, path, &t.suites, &t.cipher_suites);
    // mode mesh with sm: checked against the workload's identity where the cluster is built.
    ClusterTls {
        suites,
        cipher_suites,
        mode,
        sni,
        trusted_ca,
        subject_alt_names: t.subject_alt_names.clone(),
        cert,
        key,
        alpn: match &t.alpn {
            None if http2 => vec!["h2".into()],
            None => vec!["http/1.1".into()],
            Some(v) => alpn(errors, &format!("{path}.alpn"), v),
        },
        min_version: min_version(errors, &format!("{path}.min_version"), &t.min_version),
    }
}
