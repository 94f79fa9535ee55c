//! The hot-restart hand-over frames a new process reads from the old one: any JSON (or not) must
//! parse into a checked listener list or a clear error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(specs) = weft_proxy::hot_restart::parse_listeners(&v) {
            let total: usize = specs.iter().map(|s| s.sockets).sum();
            assert!(total <= weft_proxy::hot_restart::MAX_SOCKETS);
        }
    }
});
