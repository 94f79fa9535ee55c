//! Keys and tokens for tests, generated at run time (no private key is ever committed).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An ES256 (P-256) signing key and its JWK.
pub struct TestKey {
    pub kid: String,
    encoding: EncodingKey,
    x: String,
    y: String,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let raw = kp.public_key_raw();
        // Uncompressed point: 0x04 || x || y.
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        TestKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            x: b64(&raw[1..33]),
            y: b64(&raw[33..65]),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid, "x": self.x, "y": self.y})
    }

    /// A token over `claims`, with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("signing")
    }
}

/// A JWKS document with these keys' public halves.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
