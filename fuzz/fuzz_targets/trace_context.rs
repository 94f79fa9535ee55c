//! Parses arbitrary bytes as trace-context headers (W3C traceparent, B3 single and multi, sw8)
//! and as Base64.
//!
//! Checks: no parser panics; an accepted context re-injected by a tracer parses back to the same
//! trace id; the header-map and key/value extractors agree; a deny-only decision comes from `0`
//! alone; Base64 decode of an encoding gives the input back.
#![no_main]

use http::header::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft_core::trace::*;

fuzz_target!(|data: &[u8]| {
    let _ = parse_traceparent(data);
    let _ = parse_b3_single(data);
    let _ = parse_sw8(data);
    if let Some(d) = base64_decode(data) {
        let mut e = Vec::new();
        base64_encode(&d, &mut e);
        assert_eq!(base64_decode(&e).as_deref(), Some(d.as_slice()));
    }
    let mut e = Vec::new();
    base64_encode(data, &mut e);
    assert_eq!(base64_decode(&e).as_deref(), Some(data));
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        for name in [TRACEPARENT, B3, SW8, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED] {
            h.insert(name, v.clone());
        }
        let all = [
            weft_config::Propagator::W3c,
            weft_config::Propagator::B3,
            weft_config::Propagator::B3multi,
            weft_config::Propagator::Sw8,
        ];
        let got = extract_decision(&h, &all);
        // A context wins over a decision; "not sampled" only without one, and only from `0`.
        if let Err(true) = got {
            assert_eq!(data, b"0");
        }
        let by = extract_decision_by(|k| h.get(k).and_then(|v| v.to_str().ok()), &all);
        if v.to_str().is_ok() {
            assert_eq!(got, by);
        }
    }
});
