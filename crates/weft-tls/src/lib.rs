//! TLS for weft's data plane, on rustls with the *ring* provider plus ShangMi (RFC 8998,
//! `weft-sm`) where a listener or cluster asks for it ([`Suite`]).
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

pub use config::{
    client_config, client_config_with_ciphers, client_config_with_suites, server_config, ClientAuth, ClientCert,
    Connector, ServerSettings, TlsVersion, Trust,
};
pub use error::TlsError;
pub use mesh::MeshIdentity;
pub use peer::{FailureReason, PeerIdentity};
pub use pem::PemSource;
pub use resolver::{CertFiles, SniResolver};
pub use rustls;
pub use tokio_rustls;

use std::sync::{Arc, OnceLock};

/// The provider weft verifies certificates and loads keys with: *ring* plus ShangMi (SM2 keys,
/// SM2 certificate chains, `sm2sig_sm3`). Which suites a configuration negotiates is
/// [`provider_for`]'s.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(weft_sm::with_sm(rustls::crypto::ring::default_provider())))
        .clone()
}

/// A family of cipher suites a listener or cluster offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// *ring*'s TLS 1.3 and 1.2 suites (AES-GCM, ChaCha20-Poly1305), X25519 and the NIST curves.
    Standard,
    /// RFC 8998: TLS 1.3 `TLS_SM4_GCM_SM3` with `curveSM2` (needs an SM2 certificate on a listener).
    Sm,
}

/// [`provider`] negotiating `suites`, in that order of preference (their suites and key exchange
/// groups; a client sends its first key share for the first family's first group). Verification
/// and keys are [`provider`]'s whatever the suites.
pub fn provider_for(suites: &[Suite]) -> Arc<rustls::crypto::CryptoProvider> {
    provider_for_ciphers(suites, &[])
}

/// [`provider_for`] offering only the cipher suites `ciphers` (IANA ids, most preferred first;
/// `TLS_SM4_GCM_SM3` among them for [`Suite::Sm`]); empty: every suite of `suites`' families.
/// Ids of suites outside `suites`' families, or not implemented, are left out.
pub fn provider_for_ciphers(suites: &[Suite], ciphers: &[u16]) -> Arc<rustls::crypto::CryptoProvider> {
    type Key = (Vec<Suite>, Vec<u16>);
    type Cache = parking_lot::Mutex<Vec<(Key, Arc<rustls::crypto::CryptoProvider>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock();
    if let Some((_, p)) = cache.iter().find(|(k, _)| k.0 == suites && k.1 == ciphers) {
        return p.clone();
    }
    let all = provider();
    let standard = rustls::crypto::ring::default_provider();
    let mut p = (*all).clone();
    p.cipher_suites.clear();
    p.kx_groups.clear();
    for s in suites {
        match s {
            Suite::Standard => {
                p.cipher_suites.extend(standard.cipher_suites.iter().copied());
                p.kx_groups.extend(standard.kx_groups.iter().copied());
            }
            Suite::Sm => {
                p.cipher_suites.push(weft_sm::TLS13_SM4_GCM_SM3);
                p.kx_groups.push(&weft_sm::CURVE_SM2);
            }
        }
    }
    if !ciphers.is_empty() {
        let family = std::mem::take(&mut p.cipher_suites);
        p.cipher_suites = ciphers
            .iter()
            .filter_map(|id| family.iter().find(|s| u16::from(s.suite()) == *id).copied())
            .collect();
    }
    let p = Arc::new(p);
    cache.push(((suites.to_vec(), ciphers.to_vec()), p.clone()));
    p
}
