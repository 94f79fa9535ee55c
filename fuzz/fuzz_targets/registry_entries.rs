//! Registry entries as they come out of etcd and ZooKeeper (weft control's registries).
//!
//! Input: byte 0 % 4 picks the parser, the rest is split at the first NUL into (name, data):
//! 0 a Dubbo provider node name under `/dubbo/<name>/providers/` (`dubbo::provider`),
//! 1 a Dubbo 3 application-level instance `/services/<name>/...` with `data` as its JSON
//!   (`dubbo::app_instance`), 2 an etcd key (without the prefix) and its value, built as the
//!   registry builds a service (`etcd::classify`, `etcd::build_service`), 3 an `etcd://` registry
//!   spec (`EtcdRegistry::parse`).
//!
//! Checks: nothing panics; a provider node that parses parses the same after its decoded URL is
//! encoded again the way Dubbo encodes node names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use weft_control::registry::{dubbo, etcd};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (name, value) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let name = String::from_utf8_lossy(name);
    match sel % 4 {
        0 => {
            let node = String::from_utf8_lossy(value);
            if let Ok(first) = dubbo::provider(&name, &node) {
                let decoded = dubbo::percent_decode(&node).expect("decoded once already");
                let again = dubbo::provider(&name, &dubbo::percent_encode(&decoded));
                assert_eq!(again.as_ref().ok(), Some(&first), "{node:?} re-encoded");
            }
        }
        1 => {
            let _ = dubbo::app_instance(&name, value);
        }
        2 => {
            let mut kvs = BTreeMap::new();
            kvs.insert(name.to_string(), String::from_utf8_lossy(value).into_owned());
            let svc = match etcd::classify(&name) {
                etcd::KeyKind::Service(n) | etcd::KeyKind::Instance(n, _) => n.to_string(),
                etcd::KeyKind::Unknown => return,
            };
            let _ = etcd::build_service("/weft/", &kvs, &svc);
        }
        _ => {
            let _ = etcd::EtcdRegistry::parse(&name);
        }
    }
});
