//! Keys and tokens for tests, generated at run time (no private key is ever committed).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key (ES256 or RS256) and its public JWK.
pub struct TestKey {
    pub kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let raw = kp.public_key_raw();
        // Uncompressed point: 0x04 || x || y.
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    /// An RSA-2048 key made by the `openssl` CLI (ring, the crypto here, cannot generate RSA
    /// keys); panics with the reason when openssl is missing (scripts/install-peers installs it).
    pub fn rs256(kid: &str) -> TestKey {
        use std::process::Command;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-jwt-rsa-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("RS256 test keys need the openssl CLI (scripts/install-peers): {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let p = path.to_str().expect("a UTF-8 temp path");
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]);
        // PKCS#1 DER, what jsonwebtoken's ring backend signs with.
        let der = run(&["rsa", "-in", p, "-outform", "DER", "-traditional"]);
        let modulus = String::from_utf8(run(&["pkey", "-in", p, "-noout", "-text"])).expect("text");
        let _ = std::fs::remove_file(&path);
        // "modulus:\n    00:c3:...\npublicExponent: 65537 (0x10001)"
        let hex: String = modulus
            .split("modulus:")
            .nth(1)
            .and_then(|r| r.split("publicExponent").next())
            .expect("openssl's key text has the modulus")
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        let mut n: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        while n.first() == Some(&0) {
            n.remove(0);
        }
        assert!(modulus.contains("publicExponent: 65537"), "{modulus}");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk: json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(&n), "e": b64(&[1, 0, 1])}),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token over `claims`, with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
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
