//! Parses arbitrary strings as durations.
//!
//! Checks: `duration::parse` never panics; an accepted duration that is a whole number of
//! microseconds survives `format` -> `parse` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::duration::{format, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(d) = parse(&text) else {
        return;
    };
    if d.as_nanos() % 1_000 != 0 {
        return;
    }
    let shown = format(d);
    match parse(&shown) {
        Ok(back) => assert_eq!(back, d, "{text:?} parsed to {d:?}, formatted as {shown:?}, re-parsed to {back:?}"),
        Err(e) => panic!("{text:?} parsed to {d:?}, formatted as {shown:?}, which does not parse: {e}"),
    }
});
