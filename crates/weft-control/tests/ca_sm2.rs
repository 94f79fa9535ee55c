//! The mesh CA's SM2 side (`--ca-sm2`): an SM2 root persisted beside the ECDSA one, SM2 SVIDs for
//! SM2 CSRs (made here with weft-sm, and by Tongsuo's own `openssl req`), checked by webpki with the
//! SM provider and by Tongsuo's `openssl verify`; refusals name the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft_control::ca::{Ca, CaOptions, IssueError};
use weft_identity::SpiffeId;
use weft_sm::cert::pem;
use weft_test_support::fs::TempDir;

fn sm_options(dir: &Path) -> CaOptions {
    let mut o = CaOptions::new(dir.join("ca"));
    o.sm2 = true;
    o
}

fn id() -> SpiffeId {
    SpiffeId::new("cluster.local", "default", "sm-app").unwrap()
}

fn der_of(pem_text: &str) -> Vec<u8> {
    weft_identity::client::parse_pem_certs(&[pem_text.to_string()])
        .unwrap()
        .remove(0)
}

/// The leaf verifies against the SM2 root as a client certificate (webpki, SM provider).
fn verifies(chain: &[String], root_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(root_pem).into()).unwrap();
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(weft_sm::provider()))
        .build()
        .unwrap();
    v.verify_client_cert(&der_of(&chain[0]).into(), &[], rustls::pki_types::UnixTime::now())
        .map(|_| ())
}

#[test]
fn issues_sm2_svids_and_keeps_its_root_across_restarts() {
    let dir = TempDir::new("ca-sm2");
    let ca = Ca::load(&sm_options(dir.path())).unwrap();
    let sm = ca.sm.as_ref().unwrap();
    let root = sm.root_pem().to_string();
    let key = weft_sm::cert::new_key();
    let csr = pem(
        "CERTIFICATE REQUEST",
        &weft_sm::cert::csr(&key, &[id().to_string()]).unwrap(),
    );
    let issued = ca.issue(&csr, &id(), Some(Duration::from_secs(3600))).unwrap();
    assert_eq!(issued.cert_chain.len(), 2);
    assert_eq!(issued.cert_chain[1], root);
    verifies(&issued.cert_chain, &root).unwrap();
    let (_, leaf) = x509_parser_leaf(&issued.cert_chain[0]);
    assert_eq!(leaf, vec![id().to_string()]);
    assert!(issued.ttl <= Duration::from_secs(3600) && issued.ttl > Duration::from_secs(3500));

    // Another identity than the credential's: refused.
    let other = SpiffeId::new("cluster.local", "default", "other").unwrap();
    assert!(matches!(
        ca.issue(&csr, &other, None),
        Err(IssueError::WrongIdentity(_))
    ));
    // ECDSA CSRs still get ECDSA certificates from the ECDSA root.
    let ec_key = weft_identity::csr::new_key().unwrap();
    let ec_csr = weft_identity::csr::csr_pem(&ec_key, &id()).unwrap();
    let ec = ca.issue(&ec_csr, &id(), None).unwrap();
    assert_eq!(ec.cert_chain.last().unwrap(), &ca.root_pem());

    // Restart: the same SM2 root.
    drop(ca);
    let again = Ca::load(&sm_options(dir.path())).unwrap();
    assert_eq!(again.sm.as_ref().unwrap().root_pem(), root);
    verifies(&issued.cert_chain, again.sm.as_ref().unwrap().root_pem()).unwrap();
}

#[test]
fn refusals_name_the_reason_or_the_file() {
    let dir = TempDir::new("ca-sm2-refusals");
    // Without --ca-sm2 an SM2 CSR is refused, saying how to enable it.
    let plain = Ca::load(&CaOptions::new(dir.path().join("plain"))).unwrap();
    let key = weft_sm::cert::new_key();
    let csr = pem(
        "CERTIFICATE REQUEST",
        &weft_sm::cert::csr(&key, &[id().to_string()]).unwrap(),
    );
    match plain.issue(&csr, &id(), None) {
        Err(IssueError::BadCsr(m)) => assert!(m.contains("--ca-sm2"), "{m}"),
        other => panic!("{:?}", other.map(|i| i.cert_chain)),
    }
    // A tampered SM2 CSR: its signature does not verify.
    let ca = Ca::load(&sm_options(dir.path())).unwrap();
    let mut der = weft_sm::cert::csr(&key, &[id().to_string()]).unwrap();
    let n = der.len();
    der[n - 5] ^= 1;
    match ca.issue(&pem("CERTIFICATE REQUEST", &der), &id(), None) {
        Err(IssueError::BadCsr(m)) => assert!(m.contains("signature"), "{m}"),
        other => panic!("{:?}", other.map(|i| i.cert_chain)),
    }
    // A missing SM2 key stops the CA at start, naming the file.
    drop(ca);
    let key_file = dir.path().join("ca/sm-root-key.pem");
    std::fs::remove_file(&key_file).unwrap();
    let e = Ca::load(&sm_options(dir.path())).err().unwrap().to_string();
    assert!(
        e.starts_with(&key_file.display().to_string()) && e.contains("missing"),
        "{e}"
    );
    // A key that is not the certificate's.
    let other = weft_sm::cert::Sm2Cert::self_signed(&weft_sm::cert::Params::ca("x", Duration::from_secs(60))).unwrap();
    std::fs::write(&key_file, other.key_pem()).unwrap();
    let e = Ca::load(&sm_options(dir.path())).err().unwrap().to_string();
    assert!(e.contains("does not match"), "{e}");
}

fn tongsuo() -> Option<PathBuf> {
    weft_test_support::peers::interop_peer(".tongsuo/bin/openssl")
}

fn run(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new(bin)
        .env("OPENSSL_CONF", "/dev/null")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "openssl {args:?}: {text}");
    text
}

/// Tongsuo makes the key and the CSR; the CA issues; Tongsuo verifies the chain.
#[test]
fn tongsuo_csr_in_tongsuo_verified_certificate_out() {
    let Some(bin) = tongsuo() else { return };
    let dir = TempDir::new("ca-sm2-tongsuo");
    let ca = Ca::load(&sm_options(dir.path())).unwrap();
    let d = dir.path();
    run(
        &bin,
        d,
        &["ecparam", "-genkey", "-name", "SM2", "-noout", "-out", "w.key"],
    );
    let san = format!("subjectAltName=URI:{}", id());
    run(
        &bin,
        d,
        &[
            "req",
            "-new",
            "-key",
            "w.key",
            "-sm3",
            "-subj",
            "/CN=sm-app",
            "-addext",
            &san,
            "-out",
            "w.csr",
        ],
    );
    let csr = std::fs::read_to_string(d.join("w.csr")).unwrap();
    let issued = ca.issue(&csr, &id(), None).unwrap();
    std::fs::write(d.join("w.crt"), &issued.cert_chain[0]).unwrap();
    std::fs::write(d.join("root.crt"), ca.sm.as_ref().unwrap().root_pem()).unwrap();
    let out = run(&bin, d, &["verify", "-CAfile", "root.crt", "w.crt"]);
    assert!(out.contains("w.crt: OK"), "{out}");
    let text = run(&bin, d, &["x509", "-in", "w.crt", "-noout", "-text"]);
    assert!(
        text.contains("SM2-with-SM3") && text.contains(&id().to_string()),
        "{text}"
    );
}

fn x509_parser_leaf(pem_text: &str) -> ((), Vec<String>) {
    let der = der_of(pem_text);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    ((), weft_identity::client::uri_sans(&c))
}

/// Renewal with the current SM2 SVID: the CA recognises an SM2 leaf of its SM2 root (and says it
/// is SM2, so the proof is checked as SM2-with-SM3), and refuses one of another SM2 root, or any SM2
/// leaf when it runs no SM2 root.
#[test]
fn sm2_svids_authenticate_renewals() {
    let dir = TempDir::new("ca-sm2-renewal");
    let ca = Ca::load(&sm_options(dir.path())).unwrap();
    let key = weft_sm::cert::new_key();
    let csr = pem(
        "CERTIFICATE REQUEST",
        &weft_sm::cert::csr(&key, &[id().to_string()]).unwrap(),
    );
    let issued = ca.issue(&csr, &id(), Some(Duration::from_secs(600))).unwrap();
    let leaf = der_of(&issued.cert_chain[0]);
    let (who, public, sm2) = ca.check_svid_key(&leaf).unwrap();
    assert_eq!(who, id());
    assert!(sm2);
    // The proof the identity client signs with the SM2 key verifies with the key the CA extracted.
    use rustls::pki_types::SignatureVerificationAlgorithm;
    let msg = weft_identity::proto::renewal_message(1, &csr);
    let proof = weft_identity::WorkloadKey::Sm2(key).sign(&msg).unwrap();
    weft_sm::SM2_SM3_CERT.verify_signature(&public, &msg, &proof).unwrap();
    assert!(weft_sm::SM2_SM3_CERT
        .verify_signature(&public, b"another message", &proof)
        .is_err());

    // An SM2 leaf with the same SPIFFE ID from another SM2 root.
    let rogue =
        weft_sm::cert::Sm2Cert::self_signed(&weft_sm::cert::Params::ca("rogue", Duration::from_secs(600))).unwrap();
    let mut p = weft_sm::cert::Params::leaf("", Duration::from_secs(600));
    p.uris = vec![id().to_string()];
    let forged = rogue.issue(&p).unwrap();
    let e = ca.check_svid_key(&forged.der).unwrap_err();
    assert!(e.contains("not issued by this CA"), "{e}");

    // A CA without --ca-sm2 knows no SM2 SVID.
    let plain = Ca::load(&CaOptions::new(dir.path().join("plain"))).unwrap();
    let e = plain.check_svid_key(&leaf).unwrap_err();
    assert!(e.contains("not issued by this CA"), "{e}");
}
