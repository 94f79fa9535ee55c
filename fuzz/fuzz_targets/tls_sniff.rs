//! The permissive listener's TLS sniffing, and the PEM/identity parsing of weft-tls: any bytes
//! must give a verdict or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tls::sniff::{sniff, Sniff};

fuzz_target!(|data: &[u8]| {
    let v = sniff(data);
    // A verdict on a prefix never changes when more bytes arrive.
    if v != Sniff::NeedMore {
        for n in 0..data.len() {
            let p = sniff(&data[..n]);
            assert!(p == Sniff::NeedMore || p == v);
        }
    }
    let _ = weft_tls::pem::certs_from_pem(data);
    let _ = weft_tls::pem::key_from_pem(data);
    let _ = weft_tls::PeerIdentity::from_der(data);
});
