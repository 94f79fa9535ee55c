//! rustls ↔ rustls over real sockets on 127.0.0.1 with only ShangMi: TLS_SM4_GCM_SM3, curveSM2,
//! sm2sig_sm3, SM2 certificates; and the refusals (wrong root, expired, wrong name).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_sm::cert::{Params, Sm2Cert};

const DAY: Duration = Duration::from_secs(86400);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(weft_sm::provider())
}

struct Pki {
    root: Sm2Cert,
    server: Sm2Cert,
    client: Sm2Cert,
}

fn pki() -> Pki {
    let root = Sm2Cert::self_signed(&Params::ca("weft sm test root", DAY)).unwrap();
    let mut p = Params::leaf("server", DAY);
    p.dns_names = vec!["sm.test".into()];
    let server = root.issue(&p).unwrap();
    let mut p = Params::leaf("client", DAY);
    p.uris = vec!["spiffe://sm.test/ns/default/sa/client".into()];
    let client = root.issue(&p).unwrap();
    Pki { root, server, client }
}

fn key(c: &Sm2Cert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pkcs8_der()))
}

fn roots(root: &Sm2Cert) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(CertificateDer::from(root.der.clone())).unwrap();
    Arc::new(r)
}

fn server_config(cert: &Sm2Cert, client_roots: Option<&Sm2Cert>) -> ServerConfig {
    let b = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let b = match client_roots {
        Some(r) => b.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(r), provider())
                .build()
                .unwrap(),
        ),
        None => b.with_no_client_auth(),
    };
    b.with_single_cert(vec![CertificateDer::from(cert.der.clone())], key(cert))
        .unwrap()
}

fn client_config(root: &Sm2Cert, client: Option<&Sm2Cert>) -> ClientConfig {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(root));
    match client {
        Some(c) => b
            .with_client_auth_cert(vec![CertificateDer::from(c.der.clone())], key(c))
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// Handshakes, sends "ping", expects "pong" back; returns the client's error, if any, and the
/// server's.
async fn run(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> (Result<(), rustls::Error>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::Unknown(weft_sm::TLS_SM4_GCM_SM3_ID)
        );
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_string()).unwrap();
    let cli = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(|e| {
            e.into_inner()
                .and_then(|i| i.downcast::<rustls::Error>().ok())
                .map(|b| *b)
                .unwrap_or(rustls::Error::General("handshake i/o".into()))
        })?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.negotiated_key_exchange_group().unwrap().name(),
            rustls::NamedGroup::from(weft_sm::CURVE_SM2_ID)
        );
        let io = |e: std::io::Error| rustls::Error::General(e.to_string());
        tls.write_all(b"ping").await.map_err(io)?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(io)?;
        assert_eq!(buf, b"pong");
        Ok(())
    };
    let c = tokio::time::timeout(Duration::from_secs(10), cli)
        .await
        .expect("client in time");
    let s = tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .expect("server in time")
        .unwrap();
    (c, s)
}

#[tokio::test]
async fn sm_handshake_transfers_data() {
    let pki = pki();
    let (c, s) = run(
        server_config(&pki.server, None),
        client_config(&pki.root, None),
        "sm.test",
    )
    .await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn sm_mutual_tls() {
    let pki = pki();
    let (c, s) = run(
        server_config(&pki.server, Some(&pki.root)),
        client_config(&pki.root, Some(&pki.client)),
        "sm.test",
    )
    .await;
    c.unwrap();
    s.unwrap();
}

fn expect_cert_error(r: Result<(), rustls::Error>) -> CertificateError {
    match r {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_root_is_refused_as_unknown_issuer() {
    let pki = pki();
    let other = Sm2Cert::self_signed(&Params::ca("another root", DAY)).unwrap();
    let (c, s) = run(server_config(&pki.server, None), client_config(&other, None), "sm.test").await;
    assert_eq!(expect_cert_error(c), CertificateError::UnknownIssuer);
    assert!(s.is_err());
}

/// A root with the issuer's name but another key: the chain's signature does not verify.
#[tokio::test]
async fn an_impostor_root_is_refused_as_bad_signature() {
    let pki = pki();
    let impostor = Sm2Cert::self_signed(&Params::ca("weft sm test root", DAY)).unwrap();
    let (c, _) = run(
        server_config(&pki.server, None),
        client_config(&impostor, None),
        "sm.test",
    )
    .await;
    assert_eq!(expect_cert_error(c), CertificateError::BadSignature);
}

#[tokio::test]
async fn an_expired_certificate_is_refused_as_expired() {
    let pki = pki();
    let mut p = Params::leaf("server", DAY);
    p.dns_names = vec!["sm.test".into()];
    p.not_before = SystemTime::now() - 2 * DAY;
    p.not_after = SystemTime::now() - DAY;
    let expired = pki.root.issue(&p).unwrap();
    let (c, _) = run(server_config(&expired, None), client_config(&pki.root, None), "sm.test").await;
    assert!(
        matches!(
            expect_cert_error(c),
            CertificateError::ExpiredContext { .. } | CertificateError::Expired
        ),
        "expired"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = pki();
    let (c, _) = run(
        server_config(&pki.server, None),
        client_config(&pki.root, None),
        "other.test",
    )
    .await;
    assert!(matches!(
        expect_cert_error(c),
        CertificateError::NotValidForNameContext { .. } | CertificateError::NotValidForName
    ));
}

#[tokio::test]
async fn a_client_certificate_from_another_root_is_refused() {
    let pki = pki();
    let other = Sm2Cert::self_signed(&Params::ca("other root", DAY)).unwrap();
    let stranger = other.issue(&Params::leaf("stranger", DAY)).unwrap();
    let (_, s) = run(
        server_config(&pki.server, Some(&pki.root)),
        client_config(&pki.root, Some(&stranger)),
        "sm.test",
    )
    .await;
    let e = s.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

/// The combined provider (ring + SM): an SM-only client still gets SM, a standard client never sees it.
#[tokio::test]
async fn the_combined_provider_negotiates_sm_with_an_sm_only_peer() {
    let pki = pki();
    let both = Arc::new(weft_sm::with_sm(rustls::crypto::ring::default_provider()));
    let server = ServerConfig::builder_with_provider(both)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(pki.server.der.clone())], key(&pki.server))
        .unwrap();
    let (c, s) = run(server, client_config(&pki.root, None), "sm.test").await;
    c.unwrap();
    s.unwrap();
}
