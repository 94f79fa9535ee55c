//! Interop with Tongsuo (`interop/.tongsuo/bin/openssl`, built by interop/install-tongsuo from the
//! tongsuo-src crate), RFC 8998 in both directions, transferring data:
//! - Tongsuo `s_client` → weft-sm rustls server (mutual TLS: Tongsuo signs as a client too);
//! - weft-sm rustls client → Tongsuo `s_server` (mutual TLS);
//! - certificates and keys made by Tongsuo's own CLI, verified and loaded by weft-sm.
//!
//! Without Tongsuo the tests skip, except under CI=true where that is a failure.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_sm::cert::{Params, Sm2Cert};
use weft_test_support::fs::TempDir;
use weft_test_support::peers::{interop_peer, ChildGuard};

const DAY: Duration = Duration::from_secs(86400);
/// Tongsuo's flags for RFC 8998 only.
const SM_FLAGS: &[&str] = &[
    "-tls1_3",
    "-ciphersuites",
    "TLS_SM4_GCM_SM3",
    "-groups",
    "SM2",
    "-sigalgs",
    "sm2sig_sm3",
    "-enable_sm_tls13_strict",
];

fn tongsuo() -> Option<PathBuf> {
    interop_peer(".tongsuo/bin/openssl")
}

fn tongsuo_cmd(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    // No system openssl.cnf: Tongsuo's defaults only.
    c.env("OPENSSL_CONF", "/dev/null");
    c
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(weft_sm::provider())
}

fn roots(root_der: &[u8]) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(CertificateDer::from(root_der.to_vec())).unwrap();
    Arc::new(r)
}

fn key(c: &Sm2Cert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pkcs8_der()))
}

struct Pki {
    root: Sm2Cert,
    server: Sm2Cert,
    client: Sm2Cert,
}

fn pki(dir: &TempDir) -> Pki {
    let root = Sm2Cert::self_signed(&Params::ca("weft sm interop root", DAY)).unwrap();
    let mut p = Params::leaf("server", DAY);
    p.dns_names = vec!["sm.test".into()];
    let server = root.issue(&p).unwrap();
    let mut p = Params::leaf("client", DAY);
    p.uris = vec!["spiffe://sm.test/ns/default/sa/tongsuo".into()];
    let client = root.issue(&p).unwrap();
    dir.write("root.pem", &root.cert_pem());
    dir.write("server.pem", &server.cert_pem());
    dir.write("server.key", &server.key_pem());
    dir.write("client.pem", &client.cert_pem());
    dir.write("client.key", &client.key_pem());
    Pki { root, server, client }
}

/// Runs `cmd` with `stdin`, output to the file `out`, killed after `limit`; returns stdout + stderr.
fn run_bounded(mut cmd: Command, stdin: &[u8], out: PathBuf, limit: Duration) -> (bool, String) {
    let tag = out.display().to_string();
    let f = std::fs::File::create(&out).unwrap();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tag}: {e}"));
    {
        use std::io::Write;
        let mut s = child.stdin.take().unwrap();
        s.write_all(stdin).unwrap();
    }
    let deadline = Instant::now() + limit;
    let ok = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (ok, std::fs::read_to_string(&out).unwrap_or_default())
}

/// Waits (bounded) for `s_server` to print ACCEPT.
fn wait_accepting(out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::fs::read_to_string(out).unwrap_or_default().contains("ACCEPT") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "Tongsuo s_server did not start: {}",
        std::fs::read_to_string(out).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tongsuo_client_to_weft_sm_server_mutual_tls() {
    let Some(bin) = tongsuo() else { return };
    let dir = TempDir::new("sm-tongsuo-client");
    let pki = pki(&dir);
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(&pki.root.der), provider())
                .build()
                .unwrap(),
        )
        .with_single_cert(vec![CertificateDer::from(pki.server.der.clone())], key(&pki.server))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.expect("handshake with Tongsuo");
        let (_, conn) = tls.get_ref();
        let suite = conn.negotiated_cipher_suite().unwrap().suite();
        let peer = conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
        let mut tls = BufReader::new(tls);
        let mut line = String::new();
        tls.read_line(&mut line).await.unwrap();
        tls.get_mut().write_all(b"pong from weft-sm\n").await.unwrap();
        tls.get_mut().shutdown().await.unwrap();
        (suite, peer, line)
    });
    let mut cmd = tongsuo_cmd(&bin);
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "sm.test",
    ])
    .args(SM_FLAGS)
    .arg("-CAfile")
    .arg(dir.join("root.pem"))
    .arg("-cert")
    .arg(dir.join("client.pem"))
    .arg("-key")
    .arg(dir.join("client.key"))
    .args(["-verify_return_error", "-ign_eof"]);
    let out_file = dir.join("s_client.out");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run_bounded(cmd, b"ping from tongsuo\n", out_file, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let (suite, peer_certs, line) = tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .expect("server done")
        .unwrap();
    assert!(ok, "s_client failed:\n{out}");
    assert!(out.contains("TLS_SM4_GCM_SM3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("sm2sig_sm3"), "{out}");
    assert!(out.contains("pong from weft-sm"), "{out}");
    assert_eq!(suite, rustls::CipherSuite::Unknown(weft_sm::TLS_SM4_GCM_SM3_ID));
    assert!(peer_certs >= 1, "Tongsuo presented its client certificate");
    assert_eq!(line, "ping from tongsuo\n");
}

/// Starts `s_server -rev` (echoes lines reversed) with `cert`/`key`, requiring a client certificate
/// from `client_ca` when given.
fn start_s_server(bin: &Path, dir: &TempDir, cert: &Path, key: &Path, client_ca: Option<&Path>) -> (ChildGuard, u16) {
    let port = weft_test_support::net::free_port();
    let out = dir.join("s_server.out");
    let f = std::fs::File::create(&out).unwrap();
    let mut cmd = tongsuo_cmd(bin);
    cmd.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-naccept",
        "1",
        "-rev",
    ])
    .args(SM_FLAGS)
    .arg("-cert")
    .arg(cert)
    .arg("-key")
    .arg(key);
    if let Some(ca) = client_ca {
        cmd.args(["-Verify", "1", "-verify_return_error"])
            .arg("-CAfile")
            .arg(ca);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    wait_accepting(&out);
    (guard, port)
}

async fn talk_to_s_server(client: ClientConfig, port: u16) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = TlsConnector::from(Arc::new(client));
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("sm.test").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake with Tongsuo s_server");
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::Unknown(weft_sm::TLS_SM4_GCM_SM3_ID)
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().unwrap().name(),
        rustls::NamedGroup::from(weft_sm::CURVE_SM2_ID)
    );
    tls.write_all(b"ping from weft-sm\n").await.unwrap();
    let mut got = vec![0u8; 0];
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\n") && Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn weft_sm_client_to_tongsuo_server_mutual_tls() {
    let Some(bin) = tongsuo() else { return };
    let dir = TempDir::new("sm-tongsuo-server");
    let pki = pki(&dir);
    let (_server, port) = start_s_server(
        &bin,
        &dir,
        &dir.join("server.pem"),
        &dir.join("server.key"),
        Some(&dir.join("root.pem")),
    );
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&pki.root.der))
        .with_client_auth_cert(vec![CertificateDer::from(pki.client.der.clone())], key(&pki.client))
        .unwrap();
    let reply = talk_to_s_server(client, port).await;
    assert_eq!(reply, "ms-tfew morf gnip\n");
}

/// Tongsuo's CLI makes the CA, the server certificate and the keys;
/// weft-sm verifies the chain and loads the key.
#[tokio::test]
async fn certificates_and_keys_made_by_tongsuo_work_in_weft_sm() {
    let Some(bin) = tongsuo() else { return };
    let dir = TempDir::new("sm-tongsuo-pki");
    let run = |args: &[&str]| {
        let o = tongsuo_cmd(&bin).current_dir(dir.path()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["ecparam", "-genkey", "-name", "SM2", "-noout", "-out", "ca.key"]);
    run(&[
        "req",
        "-new",
        "-x509",
        "-key",
        "ca.key",
        "-sm3",
        "-subj",
        "/CN=tongsuo root",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "ca.pem",
    ]);
    run(&["ecparam", "-genkey", "-name", "SM2", "-noout", "-out", "s.key"]);
    run(&[
        "req",
        "-new",
        "-key",
        "s.key",
        "-sm3",
        "-subj",
        "/CN=server",
        "-out",
        "s.csr",
    ]);
    dir.write(
        "ext",
        "subjectAltName=DNS:sm.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    run(&[
        "x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-sm3", "-days", "1", "-extfile", "ext",
        "-out", "s.pem",
    ]);
    // The key as Tongsuo writes it loads as an SM2 signing key.
    let k = PrivateKeyDer::from_pem_file(dir.join("s.key")).unwrap();
    assert!(weft_sm::Sm2SigningKey::from_der(&k).is_some());

    let (_server, port) = start_s_server(&bin, &dir, &dir.join("s.pem"), &dir.join("s.key"), None);
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_no_client_auth();
    let reply = talk_to_s_server(client, port).await;
    assert_eq!(reply, "ms-tfew morf gnip\n");
}
