//! ShangMi TLS (RFC 8998) for rustls: TLS 1.3 `TLS_SM4_GCM_SM3` with `curveSM2` key exchange and
//! `sm2sig_sm3` signatures, over RustCrypto's `sm2`, `sm3` and `sm4`.
//!
//! - [`provider`]: a rustls `CryptoProvider` with only the SM suite, group and signatures.
//! - [`with_sm`]: another provider (weft's *ring* one) with the SM suite, group, keys and
//!   verification algorithms added, so one configuration serves both families and picks by
//!   ClientHello.
//! - Certificates: webpki builds and checks the chain (trust anchors, validity, name constraints,
//!   key usage, SANs) through the two SM2 signature verification algorithms of [`sign`] — the
//!   certificate ID `1234567812345678` for chains, the TLS ID `TLSv1.3+GM+Cipher+Suite` for
//!   CertificateVerify — so rustls' `WebPkiServerVerifier`/`WebPkiClientVerifier` and weft's own
//!   secure-naming verifiers work on SM2 certificates unchanged.
//! - [`cert`]: SM2 certificate authorities and leaves (roots, SPIFFE leaves) for tests and the mesh CA.
//!
//! Not supported, refused by rustls' negotiation: TLS 1.2 and TLCP (GB/T 38636) SM suites, SM4-CCM
//! (`TLS_SM4_CCM_SM3`), SM2 encryption.
#![forbid(unsafe_code)]

pub mod cert;
pub mod kx;
pub mod sign;
pub mod suite;

pub use sm2;

pub use kx::{CURVE_SM2, CURVE_SM2_ID};
pub use sign::{is_sm2, sm2sig_sm3, Sm2KeyProvider, Sm2SigningKey, SM2SIG_SM3_ID, SM2_SM3_CERT, SM2_SM3_TLS13};
pub use suite::{TLS13_SM4_GCM_SM3, TLS_SM4_GCM_SM3_ID};

use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom, WebPkiSupportedAlgorithms};
use rustls::SignatureScheme;
use rustls_pki_types::SignatureVerificationAlgorithm;

/// The OS random source (`getrandom`), for the SM-only provider.
#[derive(Debug)]
struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, buf).map_err(|_| GetRandomFailed)
    }
}

static SM_ONLY_ALGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[&sign::SM2_SM3_CERT, &sign::SM2_SM3_CERT_NULL_PARAMS],
    mapping: &[(SignatureScheme::Unknown(SM2SIG_SM3_ID), &[&sign::SM2_SM3_TLS13])],
};

/// A provider with only ShangMi: `TLS_SM4_GCM_SM3`, `curveSM2`, `sm2sig_sm3`, SM2 keys.
/// Use with `.with_protocol_versions(&[&rustls::version::TLS13])`.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![TLS13_SM4_GCM_SM3],
        kx_groups: vec![&CURVE_SM2],
        signature_verification_algorithms: SM_ONLY_ALGS,
        secure_random: &OsRandom,
        key_provider: &Sm2KeyProvider { fallback: None },
    }
}

/// `base` with ShangMi added after its own suites and groups (a peer that offers both families gets
/// `base`'s unless it prefers SM), its SM2 keys loaded here and every other key by `base`.
///
/// Leaks two small allocations (the merged algorithm tables): call it once per process (weft keeps
/// the result in a `OnceLock`).
pub fn with_sm(base: CryptoProvider) -> CryptoProvider {
    let mut all: Vec<&'static dyn SignatureVerificationAlgorithm> = base.signature_verification_algorithms.all.to_vec();
    all.extend(SM_ONLY_ALGS.all);
    let mut mapping = base.signature_verification_algorithms.mapping.to_vec();
    mapping.extend(SM_ONLY_ALGS.mapping);
    let mut cipher_suites = base.cipher_suites;
    cipher_suites.push(TLS13_SM4_GCM_SM3);
    let mut kx_groups = base.kx_groups;
    kx_groups.push(&CURVE_SM2);
    CryptoProvider {
        cipher_suites,
        kx_groups,
        signature_verification_algorithms: WebPkiSupportedAlgorithms {
            all: Vec::leak(all),
            mapping: Vec::leak(mapping),
        },
        secure_random: base.secure_random,
        key_provider: Box::leak(Box::new(Sm2KeyProvider {
            fallback: Some(base.key_provider),
        })),
    }
}

/// Whether a ClientHello asks for ShangMi: it offers `sm2sig_sm3`, and `TLS_SM4_GCM_SM3` comes
/// before every suite of `others` (the server's other suites) in its list, so a server that follows
/// the client's order negotiates the SM suite and should present its SM2 certificate.
pub fn client_hello_prefers_sm(
    suites: &[rustls::CipherSuite],
    schemes: &[SignatureScheme],
    others: &[rustls::CipherSuite],
) -> bool {
    let sm = rustls::CipherSuite::Unknown(TLS_SM4_GCM_SM3_ID);
    schemes.contains(&sm2sig_sm3())
        && suites
            .iter()
            .find(|s| **s == sm || others.contains(s))
            .is_some_and(|s| *s == sm)
}
