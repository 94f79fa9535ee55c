//! JWT verification (`weft_jwt::verify`, `peek_payload`) and JWKS decoding (`Keys::parse`).
//!
//! Checks: nothing panics on any token or JWKS text. When the input is a JSON object, it is also
//! signed as a token's claims with the target's own key (generated once at start, never
//! committed): a token that verifies yields exactly those claims (as serialized, then read back),
//! and peeks to them too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;
use weft_jwt::testing::{jwks, TestKey};
use weft_jwt::{peek_payload, verify, Checks, Keys};

fn setup() -> &'static (TestKey, Keys) {
    static S: OnceLock<(TestKey, Keys)> = OnceLock::new();
    S.get_or_init(|| {
        let k = TestKey::es256("fuzz");
        let keys = Keys::parse(jwks(&[&k]).as_bytes()).expect("the target's JWKS");
        (k, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, keys) = setup();
    let text = String::from_utf8_lossy(data);
    let strict = Checks {
        issuer: Some("https://idp.fuzz/".into()),
        audiences: vec!["api".into()],
        clock_skew_seconds: 60,
    };
    let _ = peek_payload(&text);
    let _ = verify(&text, keys, &strict);
    let _ = Keys::parse(data);
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
        let token = key.sign(&v);
        // What the token carries, read back (serde_json's float parsing is not an exact round
        // trip, so compare with the signed text re-read, not with `v` itself).
        let v: Value = serde_json::from_slice(&serde_json::to_vec(&v).expect("a Value serializes")).expect("re-read");
        let open = Checks {
            issuer: None,
            audiences: Vec::new(),
            clock_skew_seconds: 60,
        };
        if let Ok(c) = verify(&token, keys, &open) {
            assert_eq!(Value::Object(c), v, "verified claims are the signed ones");
        }
        assert_eq!(peek_payload(&token).map(Value::Object), Ok(v));
        let _ = verify(&token, keys, &strict);
    }
});
