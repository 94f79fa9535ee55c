//! Parses and validates arbitrary text as a weft YAML config.
//!
//! Checks: `from_yaml` never panics, and every config it accepts serializes with `serde_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = weft_config::from_yaml(&text) {
        if let Err(e) = serde_json::to_string(&cfg) {
            panic!("accepted config does not serialize: {e}");
        }
    }
});
