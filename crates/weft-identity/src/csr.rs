//! The workload's private key and its certificate signing request.

use crate::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

/// A fresh ECDSA P-256 key. It stays in this process: only its CSR is sent to the CA.
pub fn new_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A PEM CSR for `id` (one URI SAN, empty subject, like istio-agent's) signed by `key`.
pub fn csr_pem(key: &KeyPair, id: &SpiffeId) -> Result<String, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    p.serialize_request(key)?.pem()
}
