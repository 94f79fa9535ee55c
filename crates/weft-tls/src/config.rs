//! rustls configurations for listeners (server side) and clusters (client side).

use crate::error::TlsError;
use crate::mesh::{MeshClientResolver, MeshClientVerifier, MeshIdentity, StaticClientCert};
use crate::verify::{NamingVerifier, Roots, SmOnlySchemes};
use crate::Suite;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The lowest TLS version accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    V12,
    V13,
}

impl TlsVersion {
    /// The versions for `provider`'s suites: TLS 1.2 only when one of them is a TLS 1.2 suite
    /// (ShangMi alone is TLS 1.3 only: RFC 8998 defines no TLS 1.2 suite).
    fn versions(self, provider: &rustls::crypto::CryptoProvider) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        let has12 = provider
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS12);
        match self {
            TlsVersion::V12 if has12 => &BOTH,
            _ => &V13,
        }
    }
}

/// The field for cipher-suite errors: `cipher_suites` when they are restricted, else `suites`.
fn suites_field(field: &str, ciphers: &[u16]) -> String {
    if ciphers.is_empty() {
        format!("{field}suites")
    } else {
        format!("{field}cipher_suites")
    }
}

/// Whether and how a listener verifies client certificates.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    None,
    /// Asked for; when sent, verified against these roots.
    Optional(Arc<RootCertStore>),
    Required(Arc<RootCertStore>),
    /// Required, verified against the mesh roots of the moment.
    Mesh(Arc<MeshIdentity>),
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// ALPN protocols offered, most preferred first (`h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    pub min_version: TlsVersion,
    pub client_auth: ClientAuth,
    /// The suite families offered, most preferred first (the client's order decides).
    pub suites: Vec<Suite>,
    /// The cipher suites offered (IANA ids, most preferred first); empty: all of `suites`'.
    pub cipher_suites: Vec<u16>,
}

/// A listener's server configuration. `field` names the block for errors (`tls`).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    s: &ServerSettings,
    field: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    if s.suites.is_empty() {
        return Err(TlsError::invalid(format!("{field}suites"), "no suite family"));
    }
    let provider = crate::provider_for_ciphers(&s.suites, &s.cipher_suites);
    if provider.cipher_suites.is_empty() {
        return Err(TlsError::invalid(
            suites_field(field, &s.cipher_suites),
            "no cipher suite",
        ));
    }
    let versions = s.min_version.versions(&provider);
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::invalid(format!("{field}min_version"), e))?;
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match &s.client_auth {
        ClientAuth::None => None,
        ClientAuth::Optional(roots) | ClientAuth::Required(roots) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::provider());
            if matches!(s.client_auth, ClientAuth::Optional(_)) {
                v = v.allow_unauthenticated();
            }
            Some(
                v.build()
                    .map_err(|e| TlsError::invalid(format!("{field}client_certificate.trusted_ca_file"), e))?,
            )
        }
        ClientAuth::Mesh(mesh) => Some(Arc::new(MeshClientVerifier {
            mesh: mesh.clone(),
            mandatory: true,
        })),
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        // ShangMi alone: the CertificateRequest lists sm2sig_sm3 only (RFC 8998 §3.1).
        Some(v) if s.suites == [Suite::Sm] => builder.with_client_cert_verifier(Arc::new(SmOnlySchemes(v))),
        Some(v) => builder.with_client_cert_verifier(v),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = s.alpn.clone();
    // Tickets would outlive a rotated identity's trust decision; stateful resumption only.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Where a cluster's trust comes from.
#[derive(Clone, Debug)]
pub enum Trust {
    Roots(Arc<RootCertStore>),
    Mesh(Arc<MeshIdentity>),
}

/// The certificate a cluster presents.
#[derive(Clone, Debug)]
pub enum ClientCert {
    None,
    Static(Arc<CertifiedKey>),
    Mesh(Arc<MeshIdentity>),
}

/// A cluster's client configuration: chain verified against `trust`; identity checked against
/// `allowed_sans` when non-empty (secure naming), else against the server name. Standard suites.
pub fn client_config(
    trust: Trust,
    allowed_sans: Vec<String>,
    cert: ClientCert,
    alpn: Vec<Vec<u8>>,
    min_version: TlsVersion,
    field: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_suites(trust, allowed_sans, cert, alpn, min_version, &[Suite::Standard], field)
}

/// [`client_config`] offering `suites`, most preferred first.
pub fn client_config_with_suites(
    trust: Trust,
    allowed_sans: Vec<String>,
    cert: ClientCert,
    alpn: Vec<Vec<u8>>,
    min_version: TlsVersion,
    suites: &[Suite],
    field: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_ciphers(trust, allowed_sans, cert, alpn, min_version, suites, &[], field)
}

/// [`client_config_with_suites`] offering only the cipher suites `ciphers` (IANA ids, most
/// preferred first; empty: all of `suites`').
#[allow(clippy::too_many_arguments)]
pub fn client_config_with_ciphers(
    trust: Trust,
    allowed_sans: Vec<String>,
    cert: ClientCert,
    alpn: Vec<Vec<u8>>,
    min_version: TlsVersion,
    suites: &[Suite],
    ciphers: &[u16],
    field: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    if suites.is_empty() {
        return Err(TlsError::invalid(format!("{field}suites"), "no suite family"));
    }
    let provider = crate::provider_for_ciphers(suites, ciphers);
    if provider.cipher_suites.is_empty() {
        return Err(TlsError::invalid(suites_field(field, ciphers), "no cipher suite"));
    }
    let versions = min_version.versions(&provider);
    let verifier = match trust {
        Trust::Roots(r) => NamingVerifier::new(
            Roots::fixed(r).map_err(|e| TlsError::invalid(format!("{field}trusted_ca_file"), e))?,
            allowed_sans,
        ),
        Trust::Mesh(m) if allowed_sans.is_empty() => NamingVerifier::any_identity(Roots::Mesh(m)),
        Trust::Mesh(m) => NamingVerifier::new(Roots::Mesh(m), allowed_sans),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::invalid(format!("{field}min_version"), e))?
        .dangerous()
        .with_custom_certificate_verifier(if suites == [Suite::Sm] {
            // ShangMi alone: the ClientHello lists sm2sig_sm3 only (RFC 8998 §3.1).
            Arc::new(SmOnlySchemes(Arc::new(verifier) as Arc<dyn ServerCertVerifier>))
        } else {
            Arc::new(verifier)
        });
    let mut cfg = match cert {
        ClientCert::None => builder.with_no_client_auth(),
        ClientCert::Static(k) => builder.with_client_cert_resolver(Arc::new(StaticClientCert(k))),
        ClientCert::Mesh(m) => builder.with_client_cert_resolver(Arc::new(MeshClientResolver {
            mesh: m,
            sm_first: suites.first() == Some(&Suite::Sm),
        })),
    };
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// Originates TLS on upstream connections of one cluster.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    counters: Option<Arc<crate::stats::HandshakeCounters>>,
}

impl Connector {
    /// `sni` is sent as the server name (and verified when no SAN list is given).
    pub fn new(config: Arc<ClientConfig>, sni: &str, field: &str) -> Result<Connector, TlsError> {
        let server_name = ServerName::try_from(sni.to_string())
            .map_err(|e| TlsError::invalid(format!("{field}sni"), format!("{sni:?}: {e}")))?;
        Ok(Connector {
            config,
            server_name,
            counters: None,
        })
    }

    /// Counts this connector's handshakes (and failures by reason) in `counters`.
    pub fn with_counters(mut self, counters: Arc<crate::stats::HandshakeCounters>) -> Connector {
        self.counters = Some(counters);
        self
    }

    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The TLS handshake on a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let r = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await;
        if let Some(c) = &self.counters {
            match &r {
                Ok(s) => c.completed(s.get_ref().1.negotiated_cipher_suite().map(|s| s.suite())),
                Err(e) => c.failed(crate::peer::FailureReason::of_io(e)),
            }
        }
        r
    }

    /// The ALPN protocol the server chose on `s`.
    pub fn alpn(s: &TlsStream<TcpStream>) -> Option<&[u8]> {
        s.get_ref().1.alpn_protocol()
    }
}
