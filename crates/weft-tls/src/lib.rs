//! TLS for weft's data plane, on rustls with the *ring* provider.
//!
//! - [`pem`]: certificates, keys and trust roots from PEM files, with errors naming the field.
//! - [`resolver`]: server certificates chosen by SNI, reloaded from their files when they change.
//! - [`mesh`]: the workload's own identity (an X.509 SVID, its key and the mesh roots), swapped in
//!   place on rotation; the resolvers and verifiers that read it at every handshake.
//! - [`verify`]: the server-certificate verifier with secure naming (allowed SPIFFE IDs / SANs).
//! - [`config`]: rustls `ServerConfig`/`ClientConfig` builders and the upstream [`config::Connector`].
//! - [`peer`]: the peer's identity from a finished handshake; handshake failure reasons.
//! - [`stats`]: handshake counters by outcome.
//! - [`sniff`]: TLS or plaintext from a connection's first bytes (permissive listeners).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod mesh;
pub mod peer;
pub mod pem;
pub mod resolver;
pub mod sniff;
pub mod stats;
#[cfg(feature = "test-certs")]
pub mod testcerts;
pub mod verify;

pub use config::{client_config, server_config, ClientAuth, ClientCert, Connector, ServerSettings, TlsVersion, Trust};
pub use error::TlsError;
pub use mesh::MeshIdentity;
pub use peer::{FailureReason, PeerIdentity};
pub use resolver::{CertFiles, SniResolver};
pub use rustls;
pub use tokio_rustls;

use std::sync::{Arc, OnceLock};

/// The crypto provider every weft TLS configuration uses (*ring*).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
