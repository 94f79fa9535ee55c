//! Parses arbitrary strings as the query of weft control's `POST /endpoints/drain`.
//!
//! Checks: `drain::parse_query` never panics; an accepted query, re-encoded (every byte of the
//! service name percent-encoded), parses to the same service, address and epoch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_control::drain::parse_query;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok((service, address, epoch)) = parse_query(&text) else {
        return;
    };
    let enc: String = service.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut again = format!("service={enc}&address={address}");
    if let Some(e) = epoch {
        again.push_str(&format!("&epoch={e}"));
    }
    match parse_query(&again) {
        Ok(back) => assert_eq!(back, (service, address, epoch), "{text:?} re-encoded as {again:?}"),
        Err(e) => panic!("{text:?} parsed, its re-encoding {again:?} does not: {e}"),
    }
});
