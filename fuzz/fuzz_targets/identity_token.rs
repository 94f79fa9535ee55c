//! Bootstrap tokens and SPIFFE IDs (`weft_identity::token`, `weft_identity::SpiffeId`).
//!
//! Checks: nothing panics; a verified token peeks to the same claims; re-minting peeked claims
//! with the key verifies; an accepted SPIFFE ID prints back to the same text and re-parses equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_identity::{token, SpiffeId};

const KEY: &[u8] = b"fuzz-key-fuzz-key-fuzz-key-fuzz!";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = SpiffeId::parse(&text) {
        assert_eq!(id.to_string(), text, "parse/print round trip");
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
    }
    let peeked = token::peek(&text);
    if let Ok(c) = token::verify(KEY, &text, 1) {
        assert_eq!(peeked.as_ref(), Ok(&c));
    }
    if let Ok(c) = peeked {
        let t = token::mint(KEY, &c.id, c.expires);
        if c.expires > 1 {
            assert_eq!(token::verify(KEY, &t, 1), Ok(c));
        }
    }
});
