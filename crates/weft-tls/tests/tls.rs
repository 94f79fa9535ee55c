//! weft-tls end to end over real sockets on 127.0.0.1: SNI selection, reload from files (a bad file
//! keeps the old certificate), mesh mTLS with secure naming, and failure reasons.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tls::testcerts::Ca;
use weft_tls::*;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("weft-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn roots(pem: &str) -> Arc<rustls::RootCertStore> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    Arc::new(pem::root_store(&certs).unwrap())
}

/// Serves one echo-style exchange per connection: replies with the peer's principal (or "-").
async fn serve(cfg: Arc<rustls::ServerConfig>) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acc = tokio_rustls::TlsAcceptor::from(cfg.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match acc.accept(s).await {
                    Ok(mut tls) => {
                        let peer = PeerIdentity::from_chain(tls.get_ref().1.peer_certificates());
                        let name = peer.map_or("-".to_string(), |p| p.principal().to_string());
                        let _ = tls.write_all(name.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(FailureReason::of_io(&e).as_str().to_string());
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn call(conn: &Connector, addr: std::net::SocketAddr) -> Result<(String, String), FailureReason> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = conn.connect(tcp).await.map_err(|e| FailureReason::of_io(&e))?;
    let leaf = PeerIdentity::from_chain(tls.get_ref().1.peer_certificates()).unwrap();
    let mut s = String::new();
    tls.read_to_string(&mut s).await.map_err(|e| FailureReason::of_io(&e))?;
    Ok((leaf.principal().to_string(), s))
}

fn plain_client(ca_pem: &str, sni: &str) -> Connector {
    let cfg = client_config(
        Trust::Roots(roots(ca_pem)),
        vec![],
        ClientCert::None,
        vec![],
        TlsVersion::V12,
        "",
    )
    .unwrap();
    Connector::new(cfg, sni, "").unwrap()
}

#[tokio::test]
async fn sni_selects_and_files_reload_in_place() {
    let dir = tmpdir("sni");
    let ca = Ca::new("edge CA");
    let (ac, ak) = ca.leaf_dns(&["a.example.com"]).write(&dir, "a");
    let (bc, bk) = ca.leaf_dns(&["*.b.example.com"]).write(&dir, "b");
    let files = vec![
        CertFiles {
            field: "certificates[0].".into(),
            cert: PemSource::File(ac.clone()),
            key: PemSource::File(ak.clone()),
            server_names: vec!["a.example.com".into()],
        },
        CertFiles {
            field: "certificates[1].".into(),
            cert: PemSource::File(bc),
            key: PemSource::File(bk),
            server_names: vec!["*.b.example.com".into()],
        },
    ];
    let resolver = SniResolver::from_files(&files).unwrap();
    let settings = ServerSettings {
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        min_version: TlsVersion::V12,
        client_auth: ClientAuth::None,
        suites: vec![weft_tls::Suite::Standard],
        cipher_suites: Vec::new(),
    };
    let cfg = server_config(resolver.clone(), &settings, "tls.").unwrap();
    let (addr, _rx) = serve(cfg).await;

    let (leaf, _) = call(&plain_client(&ca.cert_pem, "a.example.com"), addr).await.unwrap();
    assert_eq!(leaf, "a.example.com");
    let (leaf, _) = call(&plain_client(&ca.cert_pem, "x.b.example.com"), addr)
        .await
        .unwrap();
    assert_eq!(leaf, "*.b.example.com");
    // An unknown name gets the first certificate, which is not valid for it.
    assert_eq!(
        call(&plain_client(&ca.cert_pem, "other.example.com"), addr)
            .await
            .unwrap_err(),
        FailureReason::WrongIdentity
    );

    // A bad new file is refused and the old certificate keeps serving.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&ac, "not a certificate").unwrap();
    assert_eq!(resolver.reload_changed(), 0);
    let (leaf, _) = call(&plain_client(&ca.cert_pem, "a.example.com"), addr).await.unwrap();
    assert_eq!(leaf, "a.example.com");
    // A good one replaces it for new handshakes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    ca.leaf_dns(&["a.example.com", "a2.example.com"]).write(&dir, "a");
    assert_eq!(resolver.reload_changed(), 1);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = plain_client(&ca.cert_pem, "a.example.com").connect(tcp).await.unwrap();
    let id = PeerIdentity::from_chain(tls.get_ref().1.peer_certificates()).unwrap();
    assert_eq!(id.dns, vec!["a.example.com".to_string(), "a2.example.com".to_string()]);
}

#[test]
fn bad_files_name_the_field() {
    let dir = tmpdir("bad");
    let ca = Ca::new("CA");
    let (c, k) = ca.leaf_dns(&["x"]).write(&dir, "x");
    let (_, other_key) = ca.leaf_dns(&["y"]).write(&dir, "y");
    let f = |cert: &std::path::Path, key: &std::path::Path| {
        SniResolver::from_files(&[CertFiles {
            field: "certificates[0].".into(),
            cert: PemSource::File(cert.to_path_buf()),
            key: PemSource::File(key.to_path_buf()),
            server_names: vec![],
        }])
        .unwrap_err()
        .to_string()
    };
    let missing = dir.join("missing.crt");
    assert!(
        f(&missing, &k).starts_with("certificates[0].cert_file: cannot read"),
        "{}",
        f(&missing, &k)
    );
    let e = f(&k, &k);
    assert!(
        e.starts_with("certificates[0].cert_file:") && e.contains("no CERTIFICATE block"),
        "{e}"
    );
    let e = f(&c, &c);
    assert!(
        e.starts_with("certificates[0].key_file:") && e.contains("no PRIVATE KEY block"),
        "{e}"
    );
    let e = f(&c, &other_key);
    assert!(
        e.starts_with("certificates[0].key_file:") && e.contains("does not match"),
        "{e}"
    );
}

#[test]
fn inline_pem_serves_and_its_errors_name_the_pem_fields() {
    let ca = Ca::new("CA");
    let a = ca.leaf_dns(&["a.example.com"]);
    let inline = |s: &str| PemSource::Inline(Arc::from(s));
    let r = SniResolver::from_files(&[CertFiles {
        field: "certificates[0].".into(),
        cert: inline(&a.cert_pem),
        key: inline(&a.key_pem),
        server_names: vec![],
    }])
    .unwrap();
    let picked = r.select(Some("a.example.com")).unwrap();
    let leaf = CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).unwrap();
    assert_eq!(picked.cert[0], leaf);
    // Nothing to poll: inline PEM never reloads.
    assert_eq!(r.reload_changed(), 0);
    let err = |cert: &str, key: &str| {
        SniResolver::from_files(&[CertFiles {
            field: "certificates[0].".into(),
            cert: inline(cert),
            key: inline(key),
            server_names: vec![],
        }])
        .unwrap_err()
        .to_string()
    };
    let e = err(&a.key_pem, &a.key_pem);
    assert_eq!(e, "certificates[0].cert_pem: (inline PEM): no CERTIFICATE block");
    let other = ca.leaf_dns(&["b.example.com"]);
    let e = err(&a.cert_pem, &other.key_pem);
    assert!(
        e.starts_with("certificates[0].key_pem: (inline PEM):") && e.contains("does not match"),
        "{e}"
    );
    // The key never appears in a Debug rendering.
    let dbg = format!("{:?}", inline(&a.key_pem));
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    let roots = weft_tls::pem::roots("trusted_ca_pem", &inline(&ca.cert_pem)).unwrap();
    assert_eq!(roots.len(), 1);
}

fn mesh(ca: &Ca, id: &str) -> Arc<MeshIdentity> {
    let m = MeshIdentity::new();
    let leaf = ca.leaf_uri(id);
    m.set_pem(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem).unwrap();
    m
}

fn mesh_server(m: &Arc<MeshIdentity>) -> Arc<rustls::ServerConfig> {
    let settings = ServerSettings {
        alpn: vec![],
        min_version: TlsVersion::V13,
        client_auth: ClientAuth::Mesh(m.clone()),
        suites: vec![weft_tls::Suite::Standard],
        cipher_suites: Vec::new(),
    };
    server_config(Arc::new(mesh::MeshServerResolver(m.clone())), &settings, "").unwrap()
}

fn mesh_client(m: &Arc<MeshIdentity>, allowed: &[&str]) -> Connector {
    let cfg = client_config(
        Trust::Mesh(m.clone()),
        allowed.iter().map(|s| s.to_string()).collect(),
        ClientCert::Mesh(m.clone()),
        vec![],
        TlsVersion::V13,
        "",
    )
    .unwrap();
    Connector::new(cfg, "outbound.mesh", "").unwrap()
}

#[tokio::test]
async fn mesh_mtls_secure_naming_and_rotation() {
    let ca = Ca::new("mesh root");
    let server_id = "spiffe://cluster.local/ns/default/sa/reviews";
    let client_id = "spiffe://cluster.local/ns/default/sa/productpage";
    let sm = mesh(&ca, server_id);
    let cm = mesh(&ca, client_id);
    let (addr, mut failures) = serve(mesh_server(&sm)).await;

    // Both sides see each other's SPIFFE ID.
    let (leaf, seen_by_server) = call(&mesh_client(&cm, &[server_id]), addr).await.unwrap();
    assert_eq!(leaf, server_id);
    assert_eq!(seen_by_server, client_id);

    // Secure naming: the server is not one the client may talk to.
    let err = call(
        &mesh_client(&cm, &["spiffe://cluster.local/ns/default/sa/ratings"]),
        addr,
    )
    .await
    .unwrap_err();
    assert_eq!(err, FailureReason::WrongIdentity);
    assert_eq!(failures.recv().await.unwrap(), "peer_rejected");

    // A client from another CA is untrusted by the server.
    let other = Ca::new("other root");
    let stranger = MeshIdentity::new();
    let leaf = other.leaf_uri(client_id);
    stranger.set_pem(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem).unwrap();
    let _ = call(&mesh_client(&stranger, &[server_id]), addr).await;
    assert_eq!(failures.recv().await.unwrap(), "untrusted");

    // Rotation: a new certificate (new key) on the server applies to the next handshake.
    let before = sm.current().unwrap().key.cert[0].clone();
    let leaf = ca.leaf_uri(server_id);
    sm.set_pem(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = mesh_client(&cm, &[server_id]).connect(tcp).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(presented, before);
    assert_eq!(presented.as_ref(), leaf_der(&leaf.cert_pem).as_ref());

    // Root rollover: the client trusts old and new roots; the server moves to the new root.
    let new_ca = Ca::new("mesh root 2");
    let bundle = format!("{}{}", ca.cert_pem, new_ca.cert_pem);
    let c2 = new_ca.leaf_uri(client_id);
    cm.set_pem(&c2.cert_pem, &c2.key_pem, &bundle).unwrap();
    let s2 = new_ca.leaf_uri(server_id);
    sm.set_pem(&s2.cert_pem, &s2.key_pem, &bundle).unwrap();
    let (leaf, seen) = call(&mesh_client(&cm, &[server_id]), addr).await.unwrap();
    assert_eq!((leaf.as_str(), seen.as_str()), (server_id, client_id));
}

fn leaf_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn expired_server_certificate_is_classified() {
    let dir = tmpdir("expired");
    let ca = Ca::new("CA");
    let (c, k) = ca.leaf_expired("old.example.com").write(&dir, "old");
    let resolver = SniResolver::from_files(&[CertFiles {
        field: String::new(),
        cert: PemSource::File(c),
        key: PemSource::File(k),
        server_names: vec![],
    }])
    .unwrap();
    let settings = ServerSettings {
        alpn: vec![],
        min_version: TlsVersion::V12,
        client_auth: ClientAuth::None,
        suites: vec![weft_tls::Suite::Standard],
        cipher_suites: Vec::new(),
    };
    let (addr, _rx) = serve(server_config(resolver, &settings, "").unwrap()).await;
    let err = call(&plain_client(&ca.cert_pem, "old.example.com"), addr)
        .await
        .unwrap_err();
    assert_eq!(err, FailureReason::Expired);
}

#[test]
fn identity_without_spiffe_id_is_refused() {
    let ca = Ca::new("CA");
    let leaf = ca.leaf_dns(&["x.example.com"]);
    let m = MeshIdentity::new();
    let e = m.set_pem(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem).unwrap_err();
    assert!(e.to_string().contains("no spiffe:// URI SAN"), "{e}");
}
