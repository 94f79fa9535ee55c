//! The workload's own mesh identity: its X.509 SVID chain, private key and the mesh trust roots.
//!
//! Held in an `ArcSwap` and replaced whole on every rotation (a new certificate, or new roots
//! during a root rollover — give both roots in the bundle while they overlap). The resolvers and
//! verifiers below read it at each handshake, so rotation applies to new handshakes with no restart,
//! and established connections are untouched.

use crate::error::TlsError;
use crate::peer::PeerIdentity;
use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// One generation of the identity.
#[derive(Debug)]
pub struct MeshMaterial {
    /// The SPIFFE ID in the leaf certificate.
    pub id: String,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    /// The leaf's `notAfter`, seconds since the Unix epoch.
    pub not_after: u64,
    /// An SM2 SVID (ShangMi), verified against SM2 roots.
    pub sm: bool,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
}

/// The current identity, empty until the first one is set: at most one standard (ECDSA, RSA…)
/// SVID and one SM2 SVID (`weft proxy --identity-key-type both`), each replaced on its own.
#[derive(Debug, Default)]
pub struct MeshIdentity {
    current: ArcSwapOption<MeshMaterial>,
    sm: ArcSwapOption<MeshMaterial>,
}

/// Key types a process declared for its mesh identity before loading its configuration
/// (`weft proxy --identity-key-type`): bit 0 standard, bit 1 SM2; 0: not declared (no check).
static DECLARED: AtomicU8 = AtomicU8::new(0);

/// Declares which SVIDs this process's mesh identity will hold, so that mesh listeners and
/// clusters asking for a suite family the identity cannot serve are refused at load.
pub fn declare_key_types(standard: bool, sm2: bool) {
    DECLARED.store(u8::from(standard) | (u8::from(sm2) << 1), Ordering::Relaxed);
}

/// What [`declare_key_types`] declared: `(standard, sm2)`, None when nothing was.
pub fn declared_key_types() -> Option<(bool, bool)> {
    match DECLARED.load(Ordering::Relaxed) {
        0 => None,
        d => Some((d & 1 != 0, d & 2 != 0)),
    }
}

/// Whether a DER certificate's key is SM2.
pub fn cert_is_sm2(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, c)| weft_sm::sign::is_sm2_spki(c.tbs_certificate.subject_pki.raw))
}

impl MeshIdentity {
    pub fn new() -> Arc<MeshIdentity> {
        Arc::new(MeshIdentity::default())
    }

    /// The standard SVID, else the SM2 one.
    pub fn current(&self) -> Option<Arc<MeshMaterial>> {
        self.current.load_full().or_else(|| self.sm.load_full())
    }

    /// The SM2 SVID, if there is one.
    pub fn current_sm(&self) -> Option<Arc<MeshMaterial>> {
        self.sm.load_full()
    }

    /// The standard SVID, if there is one.
    pub fn current_standard(&self) -> Option<Arc<MeshMaterial>> {
        self.current.load_full()
    }

    /// The SM2 SVID when `sm` and there is one, else the standard one (else whichever there is).
    pub fn select(&self, sm: bool) -> Option<Arc<MeshMaterial>> {
        if sm {
            self.sm.load_full().or_else(|| self.current.load_full())
        } else {
            self.current()
        }
    }

    /// The SVID whose roots verify a peer presenting `end_entity`: the SM2 one for an SM2 peer.
    /// The certificate is parsed only when there is an SM2 SVID to choose.
    pub fn for_peer(&self, end_entity: &[u8]) -> Option<Arc<MeshMaterial>> {
        match self.sm.load().is_some() {
            true => self.select(cert_is_sm2(end_entity)),
            false => self.current.load_full(),
        }
    }

    /// The SPIFFE ID currently held.
    pub fn id(&self) -> Option<String> {
        self.current().map(|m| m.id.clone())
    }

    /// Replaces the identity from PEM text (chain leaf first, key, root bundle).
    pub fn set_pem(&self, chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<(), TlsError> {
        let chain =
            crate::pem::certs_from_pem(chain_pem.as_bytes()).map_err(|r| TlsError::invalid("identity.chain", r))?;
        let key = crate::pem::key_from_pem(key_pem.as_bytes()).map_err(|r| TlsError::invalid("identity.key", r))?;
        let roots =
            crate::pem::certs_from_pem(roots_pem.as_bytes()).map_err(|r| TlsError::invalid("identity.roots", r))?;
        self.set(chain, key, roots)
    }

    /// Replaces the identity of the key's type (an SM2 key replaces the SM2 SVID, any other the
    /// standard one). The leaf must carry a `spiffe://` URI SAN and match the key.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<(), TlsError> {
        let leaf = chain
            .first()
            .and_then(|c| PeerIdentity::from_der(c))
            .ok_or_else(|| TlsError::invalid("identity.chain", "no parseable leaf certificate"))?;
        let id = leaf
            .spiffe_id()
            .ok_or_else(|| TlsError::invalid("identity.chain", "the leaf certificate has no spiffe:// URI SAN"))?
            .to_string();
        let not_after = x509_parser::parse_x509_certificate(&chain[0])
            .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
            .unwrap_or(0);
        let key = crate::pem::certified_key(chain, key).map_err(|r| TlsError::invalid("identity.key", r))?;
        let sm = weft_sm::is_sm2(key.key.as_ref());
        let roots = Arc::new(crate::pem::root_store(&roots).map_err(|r| TlsError::invalid("identity.roots", r))?);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::provider())
            .build()
            .map_err(|e| TlsError::invalid("identity.roots", e))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), crate::provider())
            .build()
            .map_err(|e| TlsError::invalid("identity.roots", e))?;
        let m = Some(Arc::new(MeshMaterial {
            id,
            key,
            roots,
            not_after,
            sm,
            client_verifier,
            server_verifier,
        }));
        if sm {
            self.sm.store(m);
        } else {
            self.current.store(m);
        }
        Ok(())
    }
}

/// Serves the mesh identity's certificate (whatever the SNI): the SM2 SVID to a ClientHello that
/// prefers ShangMi ([`weft_sm::client_hello_prefers_sm`]) when there is one, else the standard one.
#[derive(Debug)]
pub struct MeshServerResolver(pub Arc<MeshIdentity>);

impl ResolvesServerCert for MeshServerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sm = self.0.sm.load().is_some()
            && weft_sm::client_hello_prefers_sm(
                hello.cipher_suites(),
                hello.signature_schemes(),
                crate::resolver::standard_suite_ids(),
            );
        self.0.select(sm).map(|m| m.key.clone())
    }
}

/// Presents the mesh identity's certificate as a client certificate: the SM2 SVID when the server
/// accepts `sm2sig_sm3` and either the cluster prefers ShangMi (`sm_first`) or the server accepts
/// nothing else; else the standard one.
#[derive(Debug)]
pub struct MeshClientResolver {
    pub mesh: Arc<MeshIdentity>,
    pub sm_first: bool,
}

impl ResolvesClientCert for MeshClientResolver {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let sm_ok = schemes.contains(&weft_sm::sm2sig_sm3());
        let only_sm = schemes.iter().all(|s| *s == weft_sm::sm2sig_sm3());
        self.mesh
            .select(sm_ok && (self.sm_first || only_sm))
            .map(|m| m.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Presents one fixed client certificate.
#[derive(Debug)]
pub struct StaticClientCert(pub Arc<CertifiedKey>);

impl ResolvesClientCert for StaticClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against the mesh roots current at each handshake.
#[derive(Debug)]
pub struct MeshClientVerifier {
    pub mesh: Arc<MeshIdentity>,
    /// Whether a client certificate is required (strict) or only asked for.
    pub mandatory: bool,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let m = self
            .mesh
            .for_peer(end_entity)
            .ok_or_else(|| Error::General("no mesh identity yet".into()))?;
        let r = m.client_verifier.verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &r {
            crate::peer::log_refused(end_entity, e, "client certificate refused");
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &crate::provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &crate::provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::provider().signature_verification_algorithms.supported_schemes()
    }
}
