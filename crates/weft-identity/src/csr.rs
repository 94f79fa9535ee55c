//! The workload's private key and its certificate signing request.

use crate::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SigningKey as _};
use std::fmt;

/// Which kind of key a workload identity is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA P-256 (the default; what Istio and Envoy use).
    #[default]
    Ecdsa,
    /// SM2 (ShangMi, RFC 8998): an SM2 SVID from weft control's `--ca-sm2` root.
    Sm2,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Ecdsa => "ecdsa",
            KeyType::Sm2 => "sm2",
        })
    }
}

/// A workload's private key. It stays in this process: only its CSR is sent to the CA.
pub enum WorkloadKey {
    Ecdsa(Box<KeyPair>),
    Sm2(weft_sm::sm2::SecretKey),
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadKey({})", self.key_type())
    }
}

impl WorkloadKey {
    /// A fresh key of `kind` (OS randomness).
    pub fn generate(kind: KeyType) -> Result<WorkloadKey, String> {
        match kind {
            KeyType::Ecdsa => new_key()
                .map(|k| WorkloadKey::Ecdsa(Box::new(k)))
                .map_err(|e| e.to_string()),
            KeyType::Sm2 => Ok(WorkloadKey::Sm2(weft_sm::cert::new_key())),
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            WorkloadKey::Ecdsa(_) => KeyType::Ecdsa,
            WorkloadKey::Sm2(_) => KeyType::Sm2,
        }
    }

    /// A PEM CSR for `id` (one URI SAN, empty subject).
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, String> {
        match self {
            WorkloadKey::Ecdsa(k) => csr_pem(k, id).map_err(|e| e.to_string()),
            WorkloadKey::Sm2(k) => weft_sm::cert::csr(k, &[id.to_string()])
                .map(|der| weft_sm::cert::pem("CERTIFICATE REQUEST", &der))
                .map_err(|e| e.to_string()),
        }
    }

    /// The public key as it appears in a certificate's subjectPublicKey (an uncompressed point).
    pub fn public_key_raw(&self) -> Vec<u8> {
        match self {
            WorkloadKey::Ecdsa(k) => k.public_key_raw().to_vec(),
            WorkloadKey::Sm2(k) => {
                use weft_sm::sm2::elliptic_curve::sec1::ToEncodedPoint;
                k.public_key().to_encoded_point(false).as_bytes().to_vec()
            }
        }
    }

    /// Signs a renewal proof: ECDSA P-256 with SHA-256 (ASN.1), or SM2 with SM3 under the
    /// certificate ID `1234567812345678` (DER).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            WorkloadKey::Ecdsa(k) => k.sign(message).map_err(|e| e.to_string()),
            WorkloadKey::Sm2(k) => {
                weft_sm::sign::sign_with_id(k, weft_sm::sign::CERT_ID, message).map_err(|e| e.to_string())
            }
        }
    }

    /// PKCS#8 DER.
    pub fn serialize_der(&self) -> Vec<u8> {
        match self {
            WorkloadKey::Ecdsa(k) => k.serialize_der(),
            WorkloadKey::Sm2(k) => {
                use pkcs8::EncodePrivateKey;
                k.to_pkcs8_der().expect("an SM2 key encodes").as_bytes().to_vec()
            }
        }
    }

    /// PKCS#8 PEM.
    pub fn serialize_pem(&self) -> String {
        match self {
            WorkloadKey::Ecdsa(k) => k.serialize_pem(),
            WorkloadKey::Sm2(_) => weft_sm::cert::pem("PRIVATE KEY", &self.serialize_der()),
        }
    }
}

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
