//! Parses arbitrary bytes as a DNS query, as the sidecar's DNS proxy does with what the app sends.
//!
//! Checks: `dns::parse_query` never panics; for an accepted query, `dns::answer` never panics,
//! keeps the id and the question, and its answer count matches the records it appended.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use weft_proxy::dns::{answer, parse_query};

fuzz_target!(|data: &[u8]| {
    let Ok(q) = parse_query(data) else {
        return;
    };
    assert!(q.end <= data.len() && q.name.len() <= 255 + 63);
    let ips: [IpAddr; 2] = [IpAddr::from([10, 0, 0, 7]), IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 7])];
    let a = answer(data, &q, &ips, 30);
    assert_eq!(&a[..2], &data[..2]);
    assert_eq!(&a[12..q.end], &data[12..q.end]);
    let count = u16::from_be_bytes([a[6], a[7]]) as usize;
    let rest = a.len() - q.end;
    assert!(rest == count * 16 || rest == count * 28, "{count} records in {rest} bytes");
});
