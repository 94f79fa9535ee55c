//! The mesh CA's handling of what clients send (`weft_control::ca::Ca::issue` on a CSR, and
//! `Ca::check_svid` on a certificate presented for renewal), and the client's parsing of the CA's
//! answer (`weft_identity::client::parse_pem_certs`).
//!
//! Input: byte 0 picks the mode: 0 the rest is the CSR text; 1 the rest is DER, wrapped in a
//! CERTIFICATE REQUEST PEM block (so the fuzzer reaches the DER parser without learning base64);
//! 2 the rest is a DER certificate for `check_svid`; 3 the rest is a CA answer (PEM text).
//! Checks: nothing panics; an issued chain's leaf carries exactly the requested SPIFFE ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weft_control::ca::{Ca, CaOptions};
use weft_identity::SpiffeId;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weft-fuzz-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Ca::load(&CaOptions::new(dir)).expect("CA")
    })
}

fn wrap(label: &str, der: &[u8]) -> String {
    let body = weft_identity::client::pem_block(der);
    body.replace("CERTIFICATE-----", &format!("{label}-----"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let id = SpiffeId::new("cluster.local", "default", "fuzz").unwrap();
    let csr = match mode % 4 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => wrap("CERTIFICATE REQUEST", rest),
        2 => {
            let _ = ca().check_svid(rest);
            return;
        }
        _ => {
            let _ = weft_identity::client::parse_pem_certs(&[String::from_utf8_lossy(rest).into_owned()]);
            return;
        }
    };
    if let Ok(issued) = ca().issue(&csr, &id, None) {
        let ders = weft_identity::client::parse_pem_certs(&issued.cert_chain).expect("our own PEM");
        let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).expect("our own certificate");
        assert_eq!(weft_identity::client::uri_sans(&leaf), vec![id.to_string()]);
    }
});
