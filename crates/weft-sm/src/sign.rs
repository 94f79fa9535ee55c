//! SM2 signatures: the `sm2sig_sm3` handshake signer, SM2 private keys, and the two webpki signature
//! verification algorithms.
//!
//! SM2 signs SM3(Z || message), where Z hashes a distinguishing identifier (ID) with the public key, so
//! the same key gives different signatures for different IDs. RFC 8998 §3.3 fixes the TLS 1.3
//! CertificateVerify ID to `TLSv1.3+GM+Cipher+Suite`, while certificates are signed with the GB/T 35276
//! default ID `1234567812345678`. Hence two verification algorithms over one key type:
//! [`SM2_SM3_CERT`] for certificate chains and [`SM2_SM3_TLS13`] for handshake signatures.
//!
//! Hand-written because rustls and webpki know no SM2: these adapt RustCrypto's `sm2` to rustls'
//! `SigningKey`/`KeyProvider` and pki-types' `SignatureVerificationAlgorithm`, plus the DER
//! (r, s) signature encoding TLS and X.509 use, which `sm2` 0.13 does not provide.

use der::asn1::{BitString, ObjectIdentifier, UintRef};
use der::{Decode, Encode};
use elliptic_curve::sec1::ToEncodedPoint;
use pkcs8::DecodePrivateKey;
use rustls::crypto::KeyProvider;
use rustls::sign::{Signer, SigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{
    AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm, SubjectPublicKeyInfoDer,
};
use signature::{Signer as _, Verifier as _};
use sm2::dsa;
use std::sync::Arc;

/// `sm2sig_sm3` (RFC 8998 §2: 0x0708).
pub const SM2SIG_SM3_ID: u16 = 0x0708;

/// The SignatureScheme rustls knows `sm2sig_sm3` as.
pub fn sm2sig_sm3() -> SignatureScheme {
    SignatureScheme::from(SM2SIG_SM3_ID)
}

/// The ID certificate signatures use (GB/T 35276 default).
pub const CERT_ID: &str = "1234567812345678";
/// The ID TLS 1.3 CertificateVerify signatures use (RFC 8998 §3.3).
pub const TLS13_ID: &str = "TLSv1.3+GM+Cipher+Suite";

/// id-ecPublicKey (RFC 5480).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// The SM2 curve (GM/T 0006).
pub const SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// SM2 signature with SM3 (GM/T 0006).
pub const SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");

/// AlgorithmIdentifier contents (without the outer SEQUENCE), as webpki compares them.
/// id-ecPublicKey, namedCurve SM2.
const SPKI_SM2: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d,
];
/// SM2-with-SM3, parameters absent (how Tongsuo and this crate sign).
const SIG_SM2_SM3: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75];
/// SM2-with-SM3 with NULL parameters (some CAs encode it so).
const SIG_SM2_SM3_NULL: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75, 0x05, 0x00];

/// Verifies SM2-with-SM3 signatures with one ID.
#[derive(Debug)]
pub struct Sm2Verify {
    id: &'static str,
    sig_alg: &'static [u8],
}

/// Certificate signatures (ID `1234567812345678`), for `WebPkiSupportedAlgorithms::all`.
pub static SM2_SM3_CERT: Sm2Verify = Sm2Verify {
    id: CERT_ID,
    sig_alg: SIG_SM2_SM3,
};
/// The same, for certificates whose AlgorithmIdentifier carries NULL parameters.
pub static SM2_SM3_CERT_NULL_PARAMS: Sm2Verify = Sm2Verify {
    id: CERT_ID,
    sig_alg: SIG_SM2_SM3_NULL,
};
/// TLS 1.3 CertificateVerify (ID `TLSv1.3+GM+Cipher+Suite`), for `WebPkiSupportedAlgorithms::mapping`
/// under `sm2sig_sm3`. Never put it in `all`: a certificate signed with the TLS ID is not valid.
pub static SM2_SM3_TLS13: Sm2Verify = Sm2Verify {
    id: TLS13_ID,
    sig_alg: SIG_SM2_SM3,
};

impl SignatureVerificationAlgorithm for Sm2Verify {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        let key = dsa::VerifyingKey::from_sec1_bytes(self.id, public_key).map_err(|_| InvalidSignature)?;
        let sig = decode_signature(signature).ok_or(InvalidSignature)?;
        key.verify(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        AlgorithmIdentifier::from_slice(SPKI_SM2)
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        AlgorithmIdentifier::from_slice(self.sig_alg)
    }
}

#[derive(der::Sequence)]
struct DerSignature<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// (r, s) as DER `SEQUENCE { INTEGER, INTEGER }`, the encoding of TLS and X.509 (RFC 8998 §3.3).
pub fn encode_signature(sig: &dsa::Signature) -> Vec<u8> {
    let (r, s) = (sig.r_bytes(), sig.s_bytes());
    DerSignature {
        r: UintRef::new(&r).expect("32 bytes"),
        s: UintRef::new(&s).expect("32 bytes"),
    }
    .to_der()
    .expect("two small integers encode")
}

/// The inverse of [`encode_signature`]; `None` for anything but a DER pair of integers in range.
pub fn decode_signature(der_bytes: &[u8]) -> Option<dsa::Signature> {
    let d = DerSignature::from_der(der_bytes).ok()?;
    let field = |u: UintRef<'_>| -> Option<[u8; 32]> {
        let b = u.as_bytes();
        let mut out = [0u8; 32];
        out.get_mut(32usize.checked_sub(b.len())?..)?.copy_from_slice(b);
        Some(out)
    };
    dsa::Signature::from_scalars(field(d.r)?, field(d.s)?).ok()
}

/// The DER SubjectPublicKeyInfo of an SM2 public key (id-ecPublicKey, namedCurve SM2, uncompressed).
pub fn spki_der(key: &sm2::PublicKey) -> Vec<u8> {
    spki(key).to_der().expect("an SPKI encodes")
}

/// [`spki_der`] as a structure, for certificate building.
pub fn spki(key: &sm2::PublicKey) -> spki::SubjectPublicKeyInfoOwned {
    spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(der::Any::encode_from(&SM2_CURVE).expect("an OID encodes")),
        },
        subject_public_key: BitString::from_bytes(key.to_encoded_point(false).as_bytes()).expect("a point encodes"),
    }
}

/// Whether `key` (a loaded rustls signing key) is an SM2 key: its SubjectPublicKeyInfo is
/// id-ecPublicKey on the SM2 curve.
pub fn is_sm2(key: &dyn SigningKey) -> bool {
    key.public_key().is_some_and(|spki| is_sm2_spki(spki.as_ref()))
}

/// Whether a DER SubjectPublicKeyInfo is an SM2 public key.
pub fn is_sm2_spki(spki_der: &[u8]) -> bool {
    spki::SubjectPublicKeyInfoRef::from_der(spki_der).is_ok_and(|s| {
        s.algorithm.oid == ID_EC_PUBLIC_KEY
            && s.algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .is_some_and(|o| o == SM2_CURVE)
    })
}

/// Signs `message` with SM2-with-SM3 under `id`, DER-encoded.
pub fn sign_with_id(key: &sm2::SecretKey, id: &str, message: &[u8]) -> Result<Vec<u8>, Error> {
    let signer = dsa::SigningKey::new(id, key).map_err(|e| Error::General(format!("SM2 signing key: {e}")))?;
    let sig: dsa::Signature = signer
        .try_sign(message)
        .map_err(|e| Error::General(format!("SM2 signature: {e}")))?;
    Ok(encode_signature(&sig))
}

/// An SM2 private key for TLS 1.3 handshakes (`sm2sig_sm3` only).
#[derive(Debug)]
pub struct Sm2SigningKey {
    key: Arc<sm2::SecretKey>,
}

impl Sm2SigningKey {
    pub fn new(key: sm2::SecretKey) -> Sm2SigningKey {
        Sm2SigningKey { key: Arc::new(key) }
    }

    /// From PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) DER; `None` when it is not an SM2 key.
    pub fn from_der(der_key: &PrivateKeyDer<'_>) -> Option<Sm2SigningKey> {
        let key = match der_key {
            PrivateKeyDer::Pkcs8(k) => sm2::SecretKey::from_pkcs8_der(k.secret_pkcs8_der()).ok()?,
            PrivateKeyDer::Sec1(k) => sm2::SecretKey::from_sec1_der(k.secret_sec1_der()).ok()?,
            _ => return None,
        };
        Some(Sm2SigningKey::new(key))
    }
}

impl SigningKey for Sm2SigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&sm2sig_sm3())
            .then(|| Box::new(Sm2Signer { key: self.key.clone() }) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(spki_der(&self.key.public_key())))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Unknown((SM2SIG_SM3_ID & 0xff) as u8)
    }
}

#[derive(Debug)]
struct Sm2Signer {
    key: Arc<sm2::SecretKey>,
}

impl Signer for Sm2Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        sign_with_id(&self.key, TLS13_ID, message)
    }

    fn scheme(&self) -> SignatureScheme {
        sm2sig_sm3()
    }
}

/// Loads SM2 private keys; with a fallback, every other key goes to it (a provider with both suite
/// families).
#[derive(Debug)]
pub struct Sm2KeyProvider {
    pub fallback: Option<&'static dyn KeyProvider>,
}

impl KeyProvider for Sm2KeyProvider {
    fn load_private_key(&self, key_der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        if let Some(k) = Sm2SigningKey::from_der(&key_der) {
            return Ok(Arc::new(k));
        }
        match self.fallback {
            Some(f) => f.load_private_key(key_der),
            None => Err(Error::General(
                "not an SM2 private key (PKCS#8 or SEC1 on the SM2 curve)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_certificate_ids_are_not_interchangeable() {
        let key = sm2::SecretKey::random(&mut rand_core::OsRng);
        let point = key.public_key().to_encoded_point(false);
        let msg = b"certificate verify content";
        let tls = sign_with_id(&key, TLS13_ID, msg).unwrap();
        SM2_SM3_TLS13.verify_signature(point.as_bytes(), msg, &tls).unwrap();
        assert!(SM2_SM3_CERT.verify_signature(point.as_bytes(), msg, &tls).is_err());
        let cert = sign_with_id(&key, CERT_ID, msg).unwrap();
        SM2_SM3_CERT.verify_signature(point.as_bytes(), msg, &cert).unwrap();
        assert!(SM2_SM3_TLS13.verify_signature(point.as_bytes(), msg, &cert).is_err());
        assert!(SM2_SM3_CERT
            .verify_signature(point.as_bytes(), b"other", &cert)
            .is_err());
    }

    #[test]
    fn der_signatures_round_trip_and_garbage_is_refused() {
        let key = sm2::SecretKey::random(&mut rand_core::OsRng);
        let der_sig = sign_with_id(&key, CERT_ID, b"m").unwrap();
        let sig = decode_signature(&der_sig).unwrap();
        assert_eq!(encode_signature(&sig), der_sig);
        assert!(decode_signature(&[]).is_none());
        assert!(decode_signature(&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01]).is_none()); // r = 0
        let mut long = vec![0x30, 0x46, 0x02, 0x21, 0x01];
        long.extend([0xff; 32]);
        long.extend([0x02, 0x21, 0x00]);
        long.extend([0x01; 32]);
        assert!(decode_signature(&long).is_none()); // r > 32 bytes
    }
}
