//! Counter totals carried over a hot restart: any exposition text (what the old process scraped
//! from itself) and any `counters` field of a hand-over frame must parse into checked totals or a
//! clear error, and adding totals to any exposition must never panic; what it prints parses again
//! to at least the carried series.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::carry::Totals;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = Totals::from_exposition(text);
    assert!(t.series() <= weft_proxy::carry::MAX_SERIES);
    let out = t.apply(text);
    // The carried series all appear in the output (added to a sample or printed anew).
    let back = Totals::from_exposition(&out);
    for (family, f) in &t.families {
        for series in f.samples.keys() {
            assert!(out.contains(series.as_str()), "{family}: {series} lost");
        }
    }
    let _ = back;
    // Through the protocol field and back: the same totals.
    let again = Totals::from_json(&t.to_json()).expect("our own counters field reads back");
    assert_eq!(again.series(), t.series());
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(t) = Totals::from_json(&v) {
            let _ = t.apply("# TYPE a counter\na_total 1\n# EOF\n");
        }
    }
});
