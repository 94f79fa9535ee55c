//! The peer's identity after a handshake, and why a handshake failed.

use rustls::{CertificateError, Error};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// What a peer's leaf certificate says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The URI SANs (a SPIFFE ID is one).
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// The subject, RFC 4514 form.
    pub subject: String,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub sha256: String,
}

impl PeerIdentity {
    /// The SPIFFE ID: the first `spiffe://` URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }

    /// The name to show for this peer: its SPIFFE ID, else its first URI or DNS SAN, else subject.
    pub fn principal(&self) -> &str {
        self.spiffe_id()
            .or(self.uris.first().map(String::as_str))
            .or(self.dns.first().map(String::as_str))
            .unwrap_or(&self.subject)
    }

    /// Parses a DER certificate; `None` if it is not X.509.
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut id = PeerIdentity {
            subject: cert.subject().to_string(),
            sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => id.uris.push(u.to_string()),
                    GeneralName::DNSName(d) => id.dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }

    /// The identity of the leaf of a presented chain.
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
        chain?.first().and_then(|c| PeerIdentity::from_der(c))
    }

    /// Whether any SAN (URI or DNS) equals one of `allowed`.
    pub fn matches_any(&self, allowed: &[String]) -> bool {
        self.uris
            .iter()
            .chain(&self.dns)
            .any(|n| allowed.iter().any(|a| a == n))
    }
}

/// Logs a refused peer certificate with the peer's identity (when it parses) and the reason.
/// `what`: "client certificate refused", "server certificate refused".
pub(crate) fn log_refused(end_entity: &CertificateDer<'_>, e: &Error, what: &'static str) {
    let who = PeerIdentity::from_der(end_entity);
    tracing::warn!(
        peer = who.as_ref().map_or("-", |p| p.principal()),
        reason = FailureReason::of(e).as_str(),
        error = %e,
        "{what}"
    );
}

/// Why a handshake failed, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The peer's chain does not lead to a trusted root (or is badly signed).
    Untrusted,
    Expired,
    NotYetValid,
    /// Secure naming: the certificate is valid but for another identity.
    WrongIdentity,
    /// A client certificate was required and none was sent.
    NoCertificate,
    /// No common protocol version, cipher suite or ALPN protocol; a malformed message.
    Protocol,
    /// The peer refused *our* certificate (it sent an alert).
    PeerRejected,
    /// The connection closed or failed during the handshake.
    Io,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 9] = [
        FailureReason::Untrusted,
        FailureReason::Expired,
        FailureReason::NotYetValid,
        FailureReason::WrongIdentity,
        FailureReason::NoCertificate,
        FailureReason::Protocol,
        FailureReason::PeerRejected,
        FailureReason::Io,
        FailureReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Untrusted => "untrusted",
            FailureReason::Expired => "expired",
            FailureReason::NotYetValid => "not_yet_valid",
            FailureReason::WrongIdentity => "wrong_identity",
            FailureReason::NoCertificate => "no_certificate",
            FailureReason::Protocol => "protocol",
            FailureReason::PeerRejected => "peer_rejected",
            FailureReason::Io => "io",
            FailureReason::Other => "other",
        }
    }

    /// Classifies a rustls error.
    pub fn of(e: &Error) -> FailureReason {
        match e {
            Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => FailureReason::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    FailureReason::NotYetValid
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }
                | CertificateError::ApplicationVerificationFailure => FailureReason::WrongIdentity,
                CertificateError::Other(o) if o.0.downcast_ref::<crate::verify::WrongIdentity>().is_some() => {
                    FailureReason::WrongIdentity
                }
                _ => FailureReason::Untrusted,
            },
            Error::NoCertificatesPresented => FailureReason::NoCertificate,
            Error::AlertReceived(_) => FailureReason::PeerRejected,
            Error::PeerIncompatible(_)
            | Error::PeerMisbehaved(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::InvalidMessage(_)
            | Error::NoApplicationProtocol => FailureReason::Protocol,
            _ => FailureReason::Other,
        }
    }

    /// Classifies a handshake's I/O error (tokio-rustls wraps the rustls error in it).
    pub fn of_io(e: &std::io::Error) -> FailureReason {
        match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            Some(r) => FailureReason::of(r),
            None => FailureReason::Io,
        }
    }
}
