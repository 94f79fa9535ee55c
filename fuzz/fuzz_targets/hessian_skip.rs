//! The hessian2 skipper and scalar decoder on arbitrary bytes: skip, read_value and walk_map must
//! return an error or advance, never panic or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_rpc::hessian::Reader;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    while !r.at_end() {
        let before = r.pos();
        if r.skip().is_err() {
            break;
        }
        assert!(r.pos() > before);
    }
    let mut r = Reader::new(data);
    while !r.at_end() {
        let before = r.pos();
        match r.read_value() {
            Ok(v) => {
                let _ = v.matches_text("vip");
                assert!(r.pos() > before);
            }
            Err(_) => break,
        }
    }
    let _ = Reader::new(data).walk_map(|k, _| k == "group");
    let _ = Reader::new(data).read_string_span();
});
