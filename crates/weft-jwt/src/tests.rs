use super::testing::{jwks, now, TestKey};
use super::*;
use serde_json::json;

fn checks(aud: &[&str]) -> Checks {
    Checks {
        issuer: Some("https://idp.test/".into()),
        audiences: aud.iter().map(|s| s.to_string()).collect(),
        clock_skew_seconds: 60,
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://idp.test/", "sub": "alice", "aud": ["api"], "exp": now() + 300});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn verifies_rs256_and_refuses_another_rsa_key() {
    let good = TestKey::rs256("r1");
    let other = TestKey::rs256("r1");
    let es = TestKey::es256("e1");
    let keys = Keys::parse(jwks(&[&good, &es]).as_bytes()).unwrap();
    let c = checks(&["api"]);
    let ok = verify(&good.sign(&claims(json!({}))), &keys, &c).unwrap();
    assert_eq!(ok["sub"], "alice");
    assert_eq!(
        verify(&other.sign(&claims(json!({}))), &keys, &c),
        Err(Status::VerificationFail)
    );
    // ES256 next to it still verifies; an expired RS256 token does not.
    assert!(verify(&es.sign(&claims(json!({}))), &keys, &c).is_ok());
    let expired = good.sign(&claims(json!({"exp": now() - 120})));
    assert_eq!(verify(&expired, &keys, &c), Err(Status::Expired));
}

#[test]
fn verifies_and_refuses() {
    let good = TestKey::es256("k1");
    let other = TestKey::es256("k1");
    let keys = Keys::parse(jwks(&[&good]).as_bytes()).unwrap();
    let c = checks(&["api"]);
    let ok = verify(&good.sign(&claims(json!({}))), &keys, &c).unwrap();
    assert_eq!(ok["sub"], "alice");
    // Same kid, another key: the signature does not verify.
    assert_eq!(
        verify(&other.sign(&claims(json!({}))), &keys, &c),
        Err(Status::VerificationFail)
    );
    // Unknown kid.
    let k2 = TestKey::es256("k2");
    assert_eq!(
        verify(&k2.sign(&claims(json!({}))), &keys, &c),
        Err(Status::KidAlgMismatch)
    );
    let expired = good.sign(&claims(json!({"exp": now() - 120})));
    assert_eq!(verify(&expired, &keys, &c), Err(Status::Expired));
    // Within the clock skew.
    assert!(verify(&good.sign(&claims(json!({"exp": now() - 30}))), &keys, &c).is_ok());
    let early = good.sign(&claims(json!({"nbf": now() + 600})));
    assert_eq!(verify(&early, &keys, &c), Err(Status::NotYetValid));
    let aud = good.sign(&claims(json!({"aud": "other"})));
    assert_eq!(verify(&aud, &keys, &c), Err(Status::AudienceNotAllowed));
    assert!(
        verify(&aud, &keys, &checks(&[])).is_ok(),
        "no audiences configured: any"
    );
    let iss = good.sign(&claims(json!({"iss": "https://evil.test/"})));
    assert_eq!(verify(&iss, &keys, &c), Err(Status::UnknownIssuer));
    // No exp at all is accepted (Envoy does not require it).
    let mut c2 = claims(json!({}));
    c2.as_object_mut().unwrap().remove("exp");
    assert!(verify(&good.sign(&c2), &keys, &c).is_ok());
}

#[test]
fn malformed_tokens_never_panic() {
    let good = TestKey::es256("k1");
    let keys = Keys::parse(jwks(&[&good]).as_bytes()).unwrap();
    let c = checks(&[]);
    let t = good.sign(&claims(json!({})));
    let parts: Vec<&str> = t.split('.').collect();
    let cases = [
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}.x", parts[0], parts[1], parts[2]),
        format!("eyJhbGciOiJIUzI1NiJ9.{}.{}", parts[1], parts[2]),
        format!("eyJhbGciOiJub25lIn0.{}.", parts[1]),
        format!("{}.{}.AAAA", parts[0], parts[1]),
    ];
    for t in cases {
        assert!(verify(&t, &keys, &c).is_err(), "{t}");
    }
}

#[test]
fn jwks_parsing_skips_unusable_keys() {
    let good = TestKey::es256("k1");
    let mut enc = good.jwk();
    enc["use"] = json!("enc");
    enc["alg"] = json!(null);
    let mut rsa1_5 = good.jwk();
    rsa1_5["alg"] = json!("RSA1_5");
    let doc = json!({"keys": [{"kty": "EC", "crv": "P-256"}, {"kty": "weird"}, enc, rsa1_5, good.jwk()]}).to_string();
    assert_eq!(Keys::parse(doc.as_bytes()).unwrap().len(), 1);
    assert!(Keys::parse(br#"{"keys": [{"kty": "weird"}]}"#).is_err());
    assert!(Keys::parse(b"[]").is_err());
}

#[test]
fn query_params_are_stripped() {
    let u: Uri = "/a?x=1&access_token=abc&y=2".parse().unwrap();
    assert_eq!(strip_query(&u, &["access_token".into()]).unwrap(), "/a?x=1&y=2");
    let u: Uri = "/a?access_token=abc".parse().unwrap();
    assert_eq!(strip_query(&u, &["access_token".into()]).unwrap(), "/a");
}
