//! weft-sm's parsing paths on untrusted bytes: DER SM2 signatures, curveSM2 key shares, SM2 private
//! keys, SubjectPublicKeyInfo checks, SM2 signature verification, PKCS#10 requests, TLS 1.3
//! SM4-GCM records, and webpki chain verification with the SM2 algorithms.
//!
//! Input: byte 0 % 7 picks the path; the rest is its input. Properties: never panics; an accepted
//! signature re-encodes to bytes that decode to the same signature; an SM4-GCM record the fuzzer
//! writes as plaintext comes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::cipher::{
    InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer, ServerName, SignatureVerificationAlgorithm,
    UnixTime,
};
use rustls::{ContentType, ProtocolVersion};
use std::sync::{Arc, OnceLock};
use weft_sm::sign;

fn verifier() -> &'static Arc<rustls::client::WebPkiServerVerifier> {
    static V: OnceLock<Arc<rustls::client::WebPkiServerVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        let root = weft_sm::cert::Sm2Cert::self_signed(&weft_sm::cert::Params::ca(
            "fuzz root",
            std::time::Duration::from_secs(3600),
        ))
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(root.der.clone())).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(weft_sm::provider()),
        )
        .build()
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 7 {
        0 => {
            if let Some(sig) = sign::decode_signature(rest) {
                let again = sign::encode_signature(&sig);
                assert_eq!(sign::decode_signature(&again), Some(sig));
            }
        }
        1 => {
            let _ = weft_sm::kx::parse_key_share(rest);
        }
        2 => {
            let key = if rest.first().is_some_and(|b| b & 1 == 0) {
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(rest.to_vec()))
            } else {
                PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(rest.to_vec()))
            };
            let _ = weft_sm::Sm2SigningKey::from_der(&key);
        }
        3 => {
            let _ = sign::is_sm2_spki(rest);
            if rest.len() > 65 {
                let (key, more) = rest.split_at(65);
                let cut = more.first().map_or(0, |b| *b as usize).min(more.len());
                let (sig, msg) = more.split_at(cut);
                let _ = sign::SM2_SM3_CERT.verify_signature(key, msg, sig);
                let _ = sign::SM2_SM3_TLS13.verify_signature(key, msg, sig);
            }
        }
        4 => {
            let _ = weft_sm::cert::parse_csr(rest);
        }
        5 => {
            let alg = weft_sm::suite::Sm4GcmAead;
            let key = || rustls::crypto::cipher::AeadKey::from([9u8; 32]);
            let iv = || Iv::new([3u8; 12]);
            // As ciphertext: refused or opened, never a panic.
            let mut buf = rest.to_vec();
            let _ = alg
                .decrypter(key(), iv())
                .decrypt(InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, &mut buf), 7);
            // As plaintext (at most one record's worth): sealed and opened back.
            if rest.len() > 16384 {
                return;
            }
            let chunks = [rest];
            let sealed = alg
                .encrypter(key(), iv())
                .encrypt(
                    OutboundPlainMessage {
                        typ: ContentType::ApplicationData,
                        version: ProtocolVersion::TLSv1_2,
                        payload: OutboundChunks::new(&chunks),
                    },
                    7,
                )
                .unwrap();
            let mut wire = sealed.encode();
            let body = &mut wire[5..];
            let opened = alg
                .decrypter(key(), iv())
                .decrypt(InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body), 7)
                .unwrap();
            // The content type byte after the payload keeps its trailing zeros from being padding.
            assert_eq!(opened.typ, ContentType::ApplicationData);
            assert_eq!(opened.payload, rest);
        }
        _ => {
            let cert = CertificateDer::from(rest.to_vec());
            let _ = verifier().verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from("sm.test").unwrap(),
                &[],
                UnixTime::now(),
            );
        }
    }
});
