//! ShangMi (RFC 8998) beside the standard suites in weft-tls, over real sockets on 127.0.0.1: one
//! listener with an ECDSA and an SM2 certificate for the same name serves each client the one its
//! ClientHello prefers; clusters offer SM alone, SM first or standard first; SPIFFE secure naming
//! works on SM2 certificates.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_sm::cert::{Params, Sm2Cert};
use weft_tls::testcerts::Ca;
use weft_tls::*;

const SM: rustls::CipherSuite = rustls::CipherSuite::Unknown(weft_sm::TLS_SM4_GCM_SM3_ID);
const SPIFFE: &str = "spiffe://sm.test/ns/default/sa/server";

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("weft-tls-sm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn roots(pems: &[&str]) -> Arc<rustls::RootCertStore> {
    let certs: Vec<CertificateDer<'static>> = pems
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()).map(|c| c.unwrap()))
        .collect();
    Arc::new(pem::root_store(&certs).unwrap())
}

struct Setup {
    _dir: std::path::PathBuf,
    ecdsa_ca: Ca,
    sm_root: Sm2Cert,
    addr: std::net::SocketAddr,
}

/// A listener offering `suites` with an ECDSA and an SM2 certificate for `sm.test`; each connection
/// is answered with the negotiated suite's id.
async fn listener(suites: Vec<Suite>) -> Setup {
    let dir = tmpdir(&format!("{suites:?}").replace(['[', ']', ',', ' '], ""));
    let ecdsa_ca = Ca::new("ecdsa CA");
    let (ec, ek) = ecdsa_ca.leaf_dns(&["sm.test"]).write(&dir, "ecdsa");
    let sm_root = Sm2Cert::self_signed(&Params::ca("sm root", Duration::from_secs(86400))).unwrap();
    let mut p = Params::leaf("sm.test", Duration::from_secs(86400));
    p.dns_names = vec!["sm.test".into()];
    p.uris = vec![SPIFFE.into()];
    let leaf = sm_root.issue(&p).unwrap();
    std::fs::write(dir.join("sm.crt"), leaf.cert_pem()).unwrap();
    std::fs::write(dir.join("sm.key"), leaf.key_pem()).unwrap();
    let files = vec![
        CertFiles {
            field: "certificates[0].".into(),
            cert: PemSource::File(ec),
            key: PemSource::File(ek),
            server_names: vec!["sm.test".into()],
        },
        CertFiles {
            field: "certificates[1].".into(),
            cert: PemSource::File(dir.join("sm.crt")),
            key: PemSource::File(dir.join("sm.key")),
            server_names: vec!["sm.test".into()],
        },
    ];
    let resolver = SniResolver::from_files(&files).unwrap();
    assert!(resolver.has_sm());
    assert_eq!(resolver.sm_fields(), vec!["certificates[1].cert_file".to_string()]);
    let settings = ServerSettings {
        alpn: vec![],
        min_version: TlsVersion::V12,
        client_auth: ClientAuth::None,
        suites,
        cipher_suites: Vec::new(),
    };
    let cfg = server_config(resolver, &settings, "tls.").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acc = tokio_rustls::TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acc.accept(s).await {
                    let suite = u16::from(tls.get_ref().1.negotiated_cipher_suite().unwrap().suite());
                    let _ = tls.write_all(format!("{suite:#06x}").as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Setup {
        _dir: dir,
        ecdsa_ca,
        sm_root,
        addr,
    }
}

/// Connects offering `suites`; returns (negotiated suite, server's principal, what the server said).
async fn call(
    s: &Setup,
    suites: &[Suite],
    allowed: Vec<String>,
) -> Result<(rustls::CipherSuite, String, String), FailureReason> {
    let cfg = client_config_with_suites(
        Trust::Roots(roots(&[&s.ecdsa_ca.cert_pem, &s.sm_root.cert_pem()])),
        allowed,
        ClientCert::None,
        vec![],
        TlsVersion::V12,
        suites,
        "",
    )
    .unwrap();
    let conn = Connector::new(cfg, "sm.test", "").unwrap();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(10), conn.connect(tcp))
        .await
        .expect("handshake in time")
        .map_err(|e| FailureReason::of_io(&e))?;
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    let leaf = PeerIdentity::from_chain(tls.get_ref().1.peer_certificates()).unwrap();
    let mut said = String::new();
    tls.read_to_string(&mut said).await.unwrap();
    Ok((suite, leaf.principal().to_string(), said))
}

#[tokio::test]
async fn one_listener_serves_sm_and_standard_clients_by_their_client_hello() {
    let s = listener(vec![Suite::Standard, Suite::Sm]).await;
    // An SM-only client (as Tongsuo in strict mode): SM suite, the SM2 certificate.
    let (suite, principal, said) = call(&s, &[Suite::Sm], vec![]).await.unwrap();
    assert_eq!(suite, SM);
    assert_eq!(principal, SPIFFE);
    assert_eq!(said, "0x00c6");
    // A standard client: AES/ChaCha, the ECDSA certificate.
    let (suite, principal, _) = call(&s, &[Suite::Standard], vec![]).await.unwrap();
    assert_ne!(suite, SM);
    assert_eq!(principal, "sm.test");
    // Both offered: the client's order decides, and the certificate follows the suite.
    let (suite, principal, _) = call(&s, &[Suite::Sm, Suite::Standard], vec![]).await.unwrap();
    assert_eq!((suite, principal.as_str()), (SM, SPIFFE));
    let (suite, principal, _) = call(&s, &[Suite::Standard, Suite::Sm], vec![]).await.unwrap();
    assert_ne!(suite, SM);
    assert_eq!(principal, "sm.test");
}

#[tokio::test]
async fn secure_naming_checks_the_spiffe_id_of_an_sm2_certificate() {
    let s = listener(vec![Suite::Sm, Suite::Standard]).await;
    let (suite, _, _) = call(&s, &[Suite::Sm], vec![SPIFFE.into()]).await.unwrap();
    assert_eq!(suite, SM);
    let e = call(&s, &[Suite::Sm], vec!["spiffe://sm.test/ns/default/sa/other".into()])
        .await
        .unwrap_err();
    assert_eq!(e.as_str(), "wrong_identity");
}

#[tokio::test]
async fn a_standard_only_listener_refuses_an_sm_only_client() {
    let s = listener(vec![Suite::Standard]).await;
    assert!(call(&s, &[Suite::Sm], vec![]).await.is_err());
    // And the standard client is unaffected by the SM2 certificate it also holds.
    let (suite, principal, _) = call(&s, &[Suite::Standard], vec![]).await.unwrap();
    assert_ne!(suite, SM);
    assert_eq!(principal, "sm.test");
}
