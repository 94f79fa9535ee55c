//! ShangMi (RFC 8998) through weft with Tongsuo (`interop/.tongsuo/bin/openssl`, built by
//! interop/install-tongsuo), over real sockets on 127.0.0.1:
//! - Tongsuo `s_client` (TLS_SM4_GCM_SM3 only) → a weft listener offering SM and standard suites
//!   side by side → a plaintext upstream; curl (standard suites) on the same listener gets the ECDSA
//!   certificate;
//! - curl → weft → a cluster originating SM-only TLS to Tongsuo `s_server`;
//! - `sm` without an SM2 certificate (and the reverse) is refused, naming the field.
//!
//! Without Tongsuo the interop tests skip, except under CI=true where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use weft_sm::cert::{Params, Sm2Cert};
use weft_test_support::*;
use weft_tls::testcerts::Ca;

const DAY: Duration = Duration::from_secs(86400);
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

struct Certs {
    dir: TempDir,
}

fn certs() -> Certs {
    let dir = TempDir::new("shangmi");
    let ca = Ca::new("weft test ECDSA CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["a.example.com"]).write(dir.path(), "ecdsa");
    let sm_root = Sm2Cert::self_signed(&Params::ca("weft test SM2 root", DAY)).unwrap();
    let mut p = Params::leaf("a.example.com", DAY);
    p.dns_names = vec!["a.example.com".into(), "sm.example.com".into()];
    let leaf = sm_root.issue(&p).unwrap();
    dir.write("sm-root.crt", &sm_root.cert_pem());
    dir.write("sm-root.key", &sm_root.key_pem());
    dir.write("sm.crt", &leaf.cert_pem());
    dir.write("sm.key", &leaf.key_pem());
    Certs { dir }
}

fn listener_yaml(c: &Certs, upstream: std::net::SocketAddr, certificates: &str, suites: &str) -> String {
    let d = c.dir.path().display();
    let certificates = certificates.replace("{d}", &d.to_string());
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    tls:
      certificates: {certificates}
      suites: {suites}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{upstream}" }}]
"#
    )
}

const BOTH_CERTS: &str =
    "[{ cert_file: {d}/ecdsa.crt, key_file: {d}/ecdsa.key }, { cert_file: {d}/sm.crt, key_file: {d}/sm.key }]";

fn tongsuo() -> Option<PathBuf> {
    peers::interop_peer(".tongsuo/bin/openssl")
}

/// Runs Tongsuo `args` with `stdin`, bounded; stdout + stderr.
async fn run_tongsuo(bin: &Path, args: &[String], stdin: &[u8]) -> (bool, String) {
    let mut child = tokio::process::Command::new(bin)
        .env("OPENSSL_CONF", "/dev/null")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("Tongsuo finished in time")
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn tongsuo_client_through_a_weft_sm_listener_to_a_plain_upstream() {
    let Some(bin) = tongsuo() else { return };
    let c = certs();
    let up = upstream(|_| async { text(200, "hello from the app") }).await;
    let proxy = start_proxy(&listener_yaml(&c, up.addr, BOTH_CERTS, "[standard, sm]"));
    let port = proxy.listener_addr("web").unwrap().port();

    let args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "a.example.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(SM_FLAGS.iter().map(|s| s.to_string()))
    .chain([
        "-alpn".into(),
        "http/1.1".into(),
        "-CAfile".into(),
        c.dir.join("sm-root.crt").display().to_string(),
        "-verify_return_error".into(),
        "-ign_eof".into(),
    ])
    .collect();
    let (ok, out) = run_tongsuo(
        &bin,
        &args,
        b"GET /hello HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("Cipher is TLS_SM4_GCM_SM3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("hello from the app"), "{out}");

    // A standard client on the same listener and name gets the ECDSA certificate.
    if peers::tool("curl").is_some() {
        let o = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(c.dir.join("ca.crt"))
            .arg("--resolve")
            .arg(format!("a.example.com:{port}:127.0.0.1"))
            .arg(format!("https://a.example.com:{port}/hello"))
            .output()
            .await
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from the app");
    }
    let hs = stat(&proxy, "weft_tls_handshakes_total{side=\"downstream\",name=\"web\"}").await;
    assert!(hs.unwrap_or(0.0) >= 1.0, "{hs:?}");
}

#[tokio::test]
async fn a_weft_cluster_originates_sm_to_tongsuo_s_server() {
    let Some(bin) = tongsuo() else { return };
    let c = certs();
    let port = net::free_port();
    let log = c.dir.join("s_server.out");
    let f = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(&bin)
        .env("OPENSSL_CONF", "/dev/null")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-www"])
        .args(SM_FLAGS)
        .arg("-cert")
        .arg(c.dir.join("sm.crt"))
        .arg("-key")
        .arg(c.dir.join("sm.key"))
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let _server = peers::ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("ACCEPT") {
        assert!(Instant::now() < deadline, "s_server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = c.dir.path().display();
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: tongsuo }}
clusters:
  - name: tongsuo
    endpoints: [{{ address: "127.0.0.1:{port}" }}]
    tls: {{ sni: sm.example.com, trusted_ca_file: {d}/sm-root.crt, suites: [sm] }}
"#
    );
    let proxy = start_proxy(&yaml);
    let got = get(proxy.listener_addr("web").unwrap(), "/").await;
    let body = got.text();
    assert_eq!(got.status, 200, "{body}");
    assert!(body.contains("TLS_SM4_GCM_SM3"), "{body}");
    let hs = stat(&proxy, "weft_tls_handshakes_total{side=\"upstream\",name=\"tongsuo\"}").await;
    assert_eq!(hs, Some(1.0));

    // Trusting another SM2 root: refused at the handshake, counted as untrusted, 503.
    let other = Sm2Cert::self_signed(&Params::ca("another SM2 root", DAY)).unwrap();
    c.dir.write("other-root.crt", &other.cert_pem());
    let proxy = start_proxy(&yaml.replace("sm-root.crt", "other-root.crt"));
    let got = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!(got.status, 503, "{}", got.text());
    let n = stat(
        &proxy,
        "weft_tls_handshake_failures_total{side=\"upstream\",name=\"tongsuo\",reason=\"untrusted\"}",
    )
    .await;
    assert!(n.unwrap_or(0.0) >= 1.0, "{n:?}");
}

#[tokio::test]
async fn sm_and_sm2_certificates_go_together() {
    let c = certs();
    let up = upstream(|_| async { text(200, "hello") }).await;
    let proxy = start_proxy(&listener_yaml(&c, up.addr, BOTH_CERTS, "[standard, sm]"));
    let only_ecdsa = "[{ cert_file: {d}/ecdsa.crt, key_file: {d}/ecdsa.key }]";
    let e = proxy
        .apply(weft_config::from_yaml(&listener_yaml(&c, up.addr, only_ecdsa, "[sm, standard]")).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("listeners[0].tls.suites:") && e.contains("no certificate is an SM2 one"),
        "{e}"
    );
    let e = proxy
        .apply(weft_config::from_yaml(&listener_yaml(&c, up.addr, BOTH_CERTS, "[standard]")).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("listeners[0].tls.certificates[1].cert_file:") && e.contains("needs `sm`"),
        "{e}"
    );
}

/// Mutual TLS on an SM-only listener: Tongsuo with a client certificate from the listener's SM2
/// root gets through (the app sees its SPIFFE ID in x-forwarded-client-cert); one from another
/// SM2 root is refused at the handshake and counted as `untrusted`.
#[tokio::test]
async fn sm_mutual_tls_with_tongsuo_clients() {
    let Some(bin) = tongsuo() else { return };
    let c = certs();
    let root_pem = std::fs::read_to_string(c.dir.join("sm-root.crt")).unwrap();
    let root_key = std::fs::read_to_string(c.dir.join("sm-root.key")).unwrap();
    let root = Sm2Cert::from_parts(
        weft_tls::pem::certs_from_pem(root_pem.as_bytes()).unwrap()[0].to_vec(),
        weft_sm::cert::secret_key_from_pem(&root_key).unwrap(),
    )
    .unwrap();
    let mut p = Params::leaf("", DAY);
    p.uris = vec!["spiffe://sm.test/ns/default/sa/tongsuo".into()];
    let good = root.issue(&p).unwrap();
    c.dir.write("good.crt", &good.cert_pem());
    c.dir.write("good.key", &good.key_pem());
    let stranger_root = Sm2Cert::self_signed(&Params::ca("stranger SM2 root", DAY)).unwrap();
    let bad = stranger_root.issue(&p).unwrap();
    c.dir.write("bad.crt", &bad.cert_pem());
    c.dir.write("bad.key", &bad.key_pem());

    let up = upstream(|s| async move {
        let xfcc = s
            .headers
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        text(200, &format!("xfcc={xfcc}"))
    })
    .await;
    let yaml = listener_yaml(&c, up.addr, "[{ cert_file: {d}/sm.crt, key_file: {d}/sm.key }]", "[sm]").replace(
        "      suites: [sm]\n",
        &format!(
            "      suites: [sm]\n      require_client_certificate: true\n      trusted_ca_file: {}\n      forward_client_cert: sanitize_set\n",
            c.dir.join("sm-root.crt").display()
        ),
    );
    let proxy = start_proxy(&yaml);
    let port = proxy.listener_addr("web").unwrap().port();
    let client = |cert: &str, key: &str| -> Vec<String> {
        [
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "a.example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(SM_FLAGS.iter().map(|s| s.to_string()))
        .chain([
            "-CAfile".into(),
            c.dir.join("sm-root.crt").display().to_string(),
            "-cert".into(),
            c.dir.join(cert).display().to_string(),
            "-key".into(),
            c.dir.join(key).display().to_string(),
            "-ign_eof".into(),
        ])
        .collect()
    };
    let req = b"GET /who HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    let (_, out) = run_tongsuo(&bin, &client("good.crt", "good.key"), req).await;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("URI=spiffe://sm.test/ns/default/sa/tongsuo"), "{out}");

    let (_, out) = run_tongsuo(&bin, &client("bad.crt", "bad.key"), req).await;
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    let mut n = None;
    for _ in 0..50 {
        n = stat(
            &proxy,
            "weft_tls_handshake_failures_total{side=\"downstream\",name=\"web\",reason=\"untrusted\"}",
        )
        .await;
        if n.unwrap_or(0.0) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n.unwrap_or(0.0) >= 1.0, "{n:?}");
}
