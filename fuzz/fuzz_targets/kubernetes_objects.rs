//! The Kubernetes registry's object mapping and the sidecar injector: arbitrary bytes as (first
//! byte even) a JSON array of API objects turned into fragments and skip reasons, or (odd) an
//! AdmissionReview body answered by the injector. Neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(serde_json::Value::Array(objects)) = serde_json::from_slice::<serde_json::Value>(rest) {
            let _ = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
        }
    } else {
        let _ = weft_control::injector::review(rest, &weft_control::injector::InjectorConfig::default());
    }
});
