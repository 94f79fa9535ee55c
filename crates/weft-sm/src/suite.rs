//! The record layer and key schedule of `TLS_SM4_GCM_SM3`: SM3 as the transcript hash, HMAC-SM3 (and
//! through rustls' `HkdfUsingHmac`, HKDF-SM3), SM4-GCM as the AEAD.
//!
//! Hand-written only because rustls has no SM primitives: each type here is a thin adapter from a
//! RustCrypto crate (`sm3`, `hmac`, `sm4` + `aes-gcm`'s generic GCM) to the rustls trait it fills.
//! The record framing (nonce = IV xor sequence number, TLS 1.3 AAD, inner content type) is rustls'
//! own helpers, the same as its *ring* provider does it.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::AesGcm;
use hmac::{Mac, SimpleHmac};
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter, Nonce,
    OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{hash, hmac as rhmac, CipherSuiteCommon};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion, SupportedCipherSuite, Tls13CipherSuite,
};
use sm3::{Digest, Sm3};

/// `TLS_SM4_GCM_SM3` (RFC 8998 §2: 0x00,0xC6).
pub const TLS_SM4_GCM_SM3_ID: u16 = 0x00c6;

/// The SM3 hash rustls' transcript and key schedule use.
pub struct Sm3Hash;

/// RFC 8998 has no code point for SM3 in the TLS 1.2 HashAlgorithm registry; rustls only uses this for
/// logging and TLS 1.2, which this suite is not.
const SM3_HASH_ALGORITHM: u8 = 0x07;

impl hash::Hash for Sm3Hash {
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Sm3Context(Sm3::new()))
    }

    fn hash(&self, data: &[u8]) -> hash::Output {
        hash::Output::new(&Sm3::digest(data))
    }

    fn output_len(&self) -> usize {
        32
    }

    fn algorithm(&self) -> hash::HashAlgorithm {
        hash::HashAlgorithm::from(SM3_HASH_ALGORITHM)
    }
}

struct Sm3Context(Sm3);

impl hash::Context for Sm3Context {
    fn fork_finish(&self) -> hash::Output {
        hash::Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Sm3Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> hash::Output {
        hash::Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// HMAC-SM3; rustls builds HKDF-SM3 on it.
pub struct HmacSm3;

impl rhmac::Hmac for HmacSm3 {
    fn with_key(&self, key: &[u8]) -> Box<dyn rhmac::Key> {
        // SimpleHmac accepts a key of any length (hashing long ones), as HMAC requires.
        Box::new(HmacSm3Key(
            <SimpleHmac<Sm3> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length"),
        ))
    }

    fn hash_output_len(&self) -> usize {
        32
    }
}

struct HmacSm3Key(SimpleHmac<Sm3>);

impl rhmac::Key for HmacSm3Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rhmac::Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for m in middle {
            mac.update(m);
        }
        mac.update(last);
        rhmac::Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        32
    }
}

type Sm4Gcm = AesGcm<sm4::Sm4, U12>;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 16;

/// rustls hands over `key_len()` bytes; an `AeadKey` made directly (tests) holds 32, of which the first
/// 16 are the key.
fn sm4_gcm(key: &AeadKey) -> Sm4Gcm {
    Sm4Gcm::new_from_slice(&key.as_ref()[..KEY_LEN]).expect("an SM4 key is 16 bytes")
}

/// SM4-GCM (RFC 8998 §3.1: 128-bit key, 12-byte nonce, 16-byte tag) for TLS 1.3 records.
pub struct Sm4GcmAead;

impl Tls13AeadAlgorithm for Sm4GcmAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Sm4GcmCrypter {
            cipher: sm4_gcm(&key),
            iv,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Sm4GcmCrypter {
            cipher: sm4_gcm(&key),
            iv,
        })
    }

    fn key_len(&self) -> usize {
        KEY_LEN
    }

    /// kTLS and QUIC have no SM4-GCM: nothing to hand the secrets to.
    fn extract_keys(&self, _key: AeadKey, _iv: Iv) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

struct Sm4GcmCrypter {
    cipher: Sm4Gcm,
    iv: Iv,
}

impl MessageEncrypter for Sm4GcmCrypter {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls13_aad(total_len);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce.into(), &aad, payload.as_mut())
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for Sm4GcmCrypter {
    fn decrypt<'a>(&mut self, mut msg: InboundOpaqueMessage<'a>, seq: u64) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        let Some(ct_len) = payload.len().checked_sub(TAG_LEN) else {
            return Err(Error::DecryptError);
        };
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls13_aad(payload.len());
        let (ct, tag) = payload.split_at_mut(ct_len);
        let tag = aes_gcm::Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(&nonce.into(), &aad, ct, &tag)
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(ct_len);
        msg.into_tls13_unpadded_message()
    }
}

/// The suite's rustls description.
pub static TLS13_SM4_GCM_SM3_INTERNAL: &Tls13CipherSuite = &Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: CipherSuite::Unknown(TLS_SM4_GCM_SM3_ID),
        hash_provider: &Sm3Hash,
        // GCM with a 128-bit block cipher: the same limit rustls applies to AES-128-GCM.
        confidentiality_limit: 1 << 24,
    },
    hkdf_provider: &HkdfUsingHmac(&HmacSm3),
    aead_alg: &Sm4GcmAead,
    quic: None,
};

/// `TLS_SM4_GCM_SM3` for a rustls `CryptoProvider`'s `cipher_suites`.
pub static TLS13_SM4_GCM_SM3: SupportedCipherSuite = SupportedCipherSuite::Tls13(TLS13_SM4_GCM_SM3_INTERNAL);

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::hash::Hash;

    #[test]
    fn sm3_matches_the_standard_test_vector() {
        // GB/T 32905-2016 appendix A.1: SM3("abc").
        let out = Sm3Hash.hash(b"abc");
        assert_eq!(
            out.as_ref(),
            [
                0x66, 0xc7, 0xf0, 0xf4, 0x62, 0xee, 0xed, 0xd9, 0xd1, 0xf2, 0xd4, 0x6b, 0xdc, 0x10, 0xe4, 0xe2, 0x41,
                0x67, 0xc4, 0x87, 0x5c, 0xf2, 0xf7, 0xa2, 0x29, 0x7d, 0xa0, 0x2b, 0x8f, 0x4b, 0xa8, 0xe0
            ]
        );
    }

    #[test]
    fn sm4_gcm_round_trips_and_refuses_a_flipped_bit() {
        let mk = || AeadKey::from([7u8; 32]);
        let iv = || Iv::new([1u8; 12]);
        let mut enc = Sm4GcmAead.encrypter(mk(), iv());
        let mut dec = Sm4GcmAead.decrypter(mk(), iv());
        let chunks = [&b"hello sm4"[..]];
        let plain = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: rustls::crypto::cipher::OutboundChunks::new(&chunks),
        };
        let mut wire = enc.encrypt(plain, 3).unwrap().encode();
        let body = &mut wire[5..];
        let mut copy = body.to_vec();
        let opened = dec
            .decrypt(
                InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body),
                3,
            )
            .unwrap();
        assert_eq!(opened.payload, b"hello sm4");
        copy[0] ^= 1;
        assert!(dec
            .decrypt(
                InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, &mut copy),
                3
            )
            .is_err());
    }
}
