//! Server-certificate verification with secure naming.
//!
//! The chain is verified by webpki against the trust roots (a fixed store, or the mesh roots at the
//! time of the handshake). Then, when a list of allowed names is given, the leaf must carry one of
//! them as a URI SAN (a SPIFFE ID) or DNS SAN, and the SNI host name is *not* required to match
//! (Envoy's `match_subject_alt_names` semantics). Without a list, the leaf must be valid for the
//! server name the connection was opened for.

use crate::mesh::MeshIdentity;
use crate::peer::PeerIdentity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// A certificate valid but for none of the allowed identities.
#[derive(Debug)]
pub struct WrongIdentity {
    pub presented: String,
    pub allowed: Vec<String>,
}

impl std::fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer identity {} is not one of {:?}", self.presented, self.allowed)
    }
}

impl std::error::Error for WrongIdentity {}

/// Where the trust roots come from.
#[derive(Debug, Clone)]
pub enum Roots {
    Fixed(Arc<WebPkiServerVerifier>),
    /// The mesh roots current at each handshake.
    Mesh(Arc<MeshIdentity>),
}

impl Roots {
    pub fn fixed(store: Arc<RootCertStore>) -> Result<Roots, Error> {
        let v = WebPkiServerVerifier::builder_with_provider(store, crate::provider())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        Ok(Roots::Fixed(v))
    }
}

/// Verifies the chain, then the identity (see the module docs).
#[derive(Debug)]
pub struct NamingVerifier {
    roots: Roots,
    allowed: Vec<String>,
    /// Accept any identity the roots vouch for (a mesh cluster without a list of identities).
    any: bool,
}

impl NamingVerifier {
    pub fn new(roots: Roots, allowed: Vec<String>) -> NamingVerifier {
        NamingVerifier {
            roots,
            allowed,
            any: false,
        }
    }

    /// Chain verification only: any identity the roots vouch for.
    pub fn any_identity(roots: Roots) -> NamingVerifier {
        NamingVerifier {
            roots,
            allowed: vec![],
            any: true,
        }
    }

    fn inner(&self, end_entity: &[u8]) -> Result<Arc<WebPkiServerVerifier>, Error> {
        match &self.roots {
            Roots::Fixed(v) => Ok(v.clone()),
            Roots::Mesh(m) => m
                .for_peer(end_entity)
                .map(|c| c.server_verifier.clone())
                .ok_or_else(|| Error::General("no mesh identity yet".into())),
        }
    }
}

impl ServerCertVerifier for NamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let r = self.check(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &r {
            crate::peer::log_refused(end_entity, e, "server certificate refused");
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

impl NamingVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let r = self
            .inner(end_entity)?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if self.allowed.is_empty() && !self.any {
            return r;
        }
        match r {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if self.any {
            return Ok(ServerCertVerified::assertion());
        }
        let id = PeerIdentity::from_der(end_entity).ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if id.matches_any(&self.allowed) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(WrongIdentity {
                    presented: id.principal().to_string(),
                    allowed: self.allowed.clone(),
                }),
            ))))
        }
    }
}

/// RFC 8998 §3.1: with `TLS_SM4_GCM_SM3`, `sm2sig_sm3` must be the only signature algorithm in
/// `signature_algorithms` (the ClientHello's and the CertificateRequest's); Tongsuo in strict mode
/// refuses anything else. A configuration offering only ShangMi wraps its verifier in this, which
/// narrows the advertised schemes and delegates everything else.
#[derive(Debug)]
pub struct SmOnlySchemes<V: ?Sized>(pub Arc<V>);

fn sm_only(schemes: Vec<SignatureScheme>) -> Vec<SignatureScheme> {
    schemes.into_iter().filter(|s| *s == weft_sm::sm2sig_sm3()).collect()
}

impl ServerCertVerifier for SmOnlySchemes<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sm_only(self.0.supported_verify_schemes())
    }
}

impl ClientCertVerifier for SmOnlySchemes<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sm_only(self.0.supported_verify_schemes())
    }
}
