//! Mesh mTLS with SM2 workload identities (ShangMi, RFC 8998): `weft control --ca-sm2` issues SM2
//! SVIDs to `weft proxy --identity-key-type sm2` sidecars, which talk TLS_SM4_GCM_SM3 to each other
//! over real sockets. Also: secure naming refuses an SM2 peer with the wrong identity; SM2 SVIDs
//! renew (with the SM2 renewal proof) at a short TTL with no failed request; a `both` sidecar serves
//! an ECDSA-only and an SM-only caller on the same mesh listener; an ECDSA-only proxy refuses a mesh
//! cluster with `suites: [sm]` naming the field and the flag; Tongsuo `s_client` with an SM2 SVID
//! from the CA reaches the SM mesh listener. And over xDS: `weft control --mtls-suites sm` makes
//! the mesh TLS contexts it sends SM-only, and two SM2 sidecars configured by it alone talk
//! TLS_SM4_GCM_SM3.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::*;

mod mesh_support;
use mesh_support::*;

const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";
const DETAILS: &str = "spiffe://cluster.local/ns/default/sa/details";
const SM2_KEY_OID: &str = "1.2.156.10197.1.301";

fn route(cluster: &str) -> String {
    format!(
        "    http:\n      route_config:\n        virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n              - match: {{ prefix: / }}\n                route: {{ cluster: {cluster} }}\n"
    )
}

/// One STRICT mesh listener offering `suites`, to the app.
fn inbound_yaml(listen: SocketAddr, suites: &str, app: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: inbound\n    address: {listen}\n    tls: {{ mode: STRICT, suites: {suites}, forward_client_cert: sanitize_set }}\n{}clusters:\n  - name: app\n    endpoints: [{{ address: \"{app}\" }}]\n",
        route("app")
    )
}

fn admin_status(admin: SocketAddr) -> String {
    http_text(admin, "GET", "/config_dump").unwrap_or_default()
}

/// The SM2 SVID's `not_after` in the admin status (changes at each renewal).
fn sm2_not_after(admin: SocketAddr) -> String {
    let d = admin_status(admin);
    let i = d.find("\"sm2\"").unwrap_or(0);
    let j = d[i..].find("\"not_after\"").map_or(i, |j| i + j);
    d[j..].chars().take(30).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm2_sidecars_talk_sm_mtls_renew_and_serve_both_families() {
    let dir = TempDir::new("mesh-sm2");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let xds = addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--ca-sm2", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args([
                "--xds",
                &xds.to_string(),
                "--admin",
                &addr().to_string(),
                "--svid-ttl",
                "10s",
            ]),
        &dir.join("control.log"),
    );
    wait_until("weft control", Duration::from_secs(10), || TcpStream::connect(xds).ok());

    let app = upstream(|s| async move {
        let xfcc = s
            .headers
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string());
        text(200, &format!("app xfcc={}", xfcc.unwrap_or_default()))
    })
    .await;
    let sm2 = ["--identity-key-type", "sm2"];
    let (b_in, c_in, d_in, a_out, e_out) = (addr(), addr(), addr(), addr(), addr());
    // B: reviews, SM2 only, serving [sm]. C: ratings (the impostor), SM2. D: details, both
    // identities, serving [sm, standard].
    let b = sidecar_with(
        dir.path(),
        "b",
        &inbound_yaml(b_in, "[sm]", app.addr),
        xds,
        "default/reviews",
        &sm2,
    );
    let _c = sidecar_with(
        dir.path(),
        "c",
        &inbound_yaml(c_in, "[sm]", app.addr),
        xds,
        "default/ratings",
        &sm2,
    );
    let d = sidecar_with(
        dir.path(),
        "d",
        &inbound_yaml(d_in, "[sm, standard]", app.addr),
        xds,
        "default/details",
        &["--identity-key-type", "both"],
    );
    // A: productpage, SM2 only; its clusters offer sm alone.
    let a_yaml = format!(
        r#"listeners:
  - name: outbound
    address: {a_out}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /wrong }}
                route: {{ cluster: ratings-impostor }}
              - match: {{ prefix: /details }}
                route: {{ cluster: details }}
              - match: {{ prefix: / }}
                route: {{ cluster: reviews }}
clusters:
  - name: reviews
    endpoints: [{{ address: "{b_in}" }}]
    tls: {{ mode: mesh, suites: [sm], subject_alt_names: ["{REVIEWS}"] }}
  - name: ratings-impostor
    endpoints: [{{ address: "{c_in}" }}]
    tls: {{ mode: mesh, cipher_suites: [TLS_SM4_GCM_SM3], subject_alt_names: ["{REVIEWS}"] }}
  - name: details
    endpoints: [{{ address: "{d_in}" }}]
    tls: {{ mode: mesh, suites: [sm], subject_alt_names: ["{DETAILS}"] }}
"#
    );
    let a = sidecar_with(dir.path(), "a", &a_yaml, xds, "default/productpage", &sm2);
    // E: an ECDSA-only caller (the default key type) of D.
    let e_yaml = format!(
        "listeners:\n  - name: outbound\n    address: {e_out}\n{}clusters:\n  - name: details\n    endpoints: [{{ address: \"{d_in}\" }}]\n    tls: {{ mode: mesh, subject_alt_names: [\"{DETAILS}\"] }}\n",
        route("details")
    );
    let e = sidecar(dir.path(), "e", &e_yaml, xds, "default/ratings");

    // Both SM2 sidecars hold only an SM2 SVID, with their SPIFFE IDs.
    for (s, id) in [(&a, PRODUCTPAGE), (&b, REVIEWS)] {
        let st = admin_status(s.admin);
        assert!(st.contains("\"sm2\"") && st.contains(id), "{st}");
    }

    // client → A → (SM mTLS) → B → app; B names A in x-forwarded-client-cert.
    let got = get(a_out, "/hello").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let body = got.text();
    assert!(body.contains(&format!("By={REVIEWS};")), "{body}");
    assert!(body.contains(&format!(";URI={PRODUCTPAGE}")), "{body}");
    let a_stats = http_text(a.admin, "GET", "/stats/prometheus").unwrap();
    let b_stats = http_text(b.admin, "GET", "/stats/prometheus").unwrap();
    assert!(
        metric_of(
            &a_stats,
            "weft_tls_sm_handshakes_total{side=\"upstream\",name=\"reviews\"}"
        ) >= 1.0,
        "{a_stats}"
    );
    assert_eq!(
        metric_of(
            &b_stats,
            "weft_tls_sm_handshakes_total{side=\"downstream\",name=\"inbound\"}"
        ),
        metric_of(
            &b_stats,
            "weft_tls_handshakes_total{side=\"downstream\",name=\"inbound\"}"
        ),
        "every handshake on B's [sm] listener is TLS_SM4_GCM_SM3:\n{b_stats}"
    );

    // Secure naming on SM2 peers: C is a valid SM2 mesh workload, but not reviews.
    let got = get(a_out, "/wrong").await;
    assert_eq!(got.status, 503, "{}", got.text());
    let stats = http_text(a.admin, "GET", "/stats/prometheus").unwrap();
    let wrong = metric_of(
        &stats,
        "weft_tls_handshake_failures_total{side=\"upstream\",name=\"ratings-impostor\",reason=\"wrong_identity\"}",
    );
    assert!(wrong >= 1.0, "{stats}");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains(RATINGS), "the refusal names the peer:\n{log}");

    // `both`: the SM-only caller A and the ECDSA-only caller E reach D's one mesh listener.
    let got = get(a_out, "/details").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.text().contains(&format!(";URI={PRODUCTPAGE}")), "{}", got.text());
    let got = get(e_out, "/details").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.text().contains(&format!(";URI={RATINGS}")), "{}", got.text());
    let d_stats = http_text(d.admin, "GET", "/stats/prometheus").unwrap();
    let d_all = metric_of(
        &d_stats,
        "weft_tls_handshakes_total{side=\"downstream\",name=\"inbound\"}",
    );
    let d_sm = metric_of(
        &d_stats,
        "weft_tls_sm_handshakes_total{side=\"downstream\",name=\"inbound\"}",
    );
    assert!(
        d_sm >= 1.0 && d_all > d_sm,
        "one SM and one standard handshake:\n{d_stats}"
    );
    let e_stats = http_text(e.admin, "GET", "/stats/prometheus").unwrap();
    assert_eq!(
        metric_of(
            &e_stats,
            "weft_tls_sm_handshakes_total{side=\"upstream\",name=\"details\"}"
        ),
        0.0,
        "{e_stats}"
    );

    // An ECDSA-only proxy refuses a mesh cluster offering only sm, naming the field and the flag.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "admin: {{ address: \"{}\" }}\nlisteners:\n  - name: outbound\n    address: {}\n{}clusters:\n  - name: details\n    endpoints: [{{ address: \"{d_in}\" }}]\n    tls: {{ mode: mesh, suites: [sm] }}\n",
            addr(),
            addr(),
            route("details")
        ),
    )
    .unwrap();
    let tok = token(dir.path(), "default/ratings");
    let out = Command::new(WEFT)
        .args(["proxy", "-c"])
        .arg(&bad)
        .args(["--ca-address", &xds.to_string(), "--identity-token-file"])
        .arg(&tok)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("clusters[0].tls.suites") && err.contains("--identity-key-type sm2"),
        "{err}"
    );

    // The SVIDs are SM2 (key OID 1.2.156.10197.1.301) with the right SPIFFE IDs, and Tongsuo with
    // an SM2 SVID from the CA reaches B's SM mesh listener.
    if let Some(bin) = peers::interop_peer(".tongsuo/bin/openssl") {
        let tok = token(dir.path(), "default/details");
        let out = Command::new(WEFT)
            .args([
                "identity",
                "fetch",
                "--key-type",
                "sm2",
                "--ca-address",
                &xds.to_string(),
                "--token-file",
            ])
            .arg(&tok)
            .arg("--out-dir")
            .arg(dir.join("client"))
            .args(["--ttl", "10m"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cd = dir.join("client");
        let mut s_client = tokio::process::Command::new(&bin)
            .env("OPENSSL_CONF", "/dev/null")
            .args(["s_client", "-connect", &b_in.to_string()])
            .args([
                "-tls1_3",
                "-ciphersuites",
                "TLS_SM4_GCM_SM3",
                "-groups",
                "SM2",
                "-sigalgs",
                "sm2sig_sm3",
                "-enable_sm_tls13_strict",
                "-verify_return_error",
                "-ign_eof",
                "-CAfile",
            ])
            .arg(cd.join("root-cert.pem"))
            .arg("-cert")
            .arg(cd.join("cert-chain.pem"))
            .arg("-key")
            .arg(cd.join("key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let mut input = s_client.stdin.take().unwrap();
            input
                .write_all(b"GET /tongsuo HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(20), s_client.wait_with_output())
            .await
            .expect("Tongsuo finished in time")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("Cipher is TLS_SM4_GCM_SM3"), "{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        assert!(text.contains("HTTP/1.1 200"), "{text}");
        assert!(text.contains(&format!(";URI={DETAILS}")), "{text}");
        // B's leaf as s_client printed it, and the client's own SVID: SM2 keys, SPIFFE IDs.
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("s_client prints the leaf");
        let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
        std::fs::write(dir.join("b-leaf.pem"), &text[start..end]).unwrap();
        for (pem, id) in [(dir.join("b-leaf.pem"), REVIEWS), (cd.join("cert-chain.pem"), DETAILS)] {
            let out = Command::new(&bin)
                .env("OPENSSL_CONF", "/dev/null")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(&pem)
                .output()
                .unwrap();
            let t = String::from_utf8_lossy(&out.stdout);
            assert!(t.contains(&format!("URI:{id}")), "{t}");
            let out = Command::new(&bin)
                .env("OPENSSL_CONF", "/dev/null")
                .args(["x509", "-noout", "-pubkey", "-in"])
                .arg(&pem)
                .output()
                .unwrap();
            let pubkey = dir.join("pub.pem");
            std::fs::write(&pubkey, &out.stdout).unwrap();
            let out = Command::new(&bin)
                .env("OPENSSL_CONF", "/dev/null")
                .args(["asn1parse", "-in"])
                .arg(&pubkey)
                .output()
                .unwrap();
            let asn = String::from_utf8_lossy(&out.stdout);
            // Tongsuo names 1.2.156.10197.1.301 "sm2" (its short name SM2).
            assert!(
                asn.contains("OBJECT            :sm2") || asn.contains(SM2_KEY_OID),
                "{} is not an SM2 key:\n{asn}",
                pem.display()
            );
        }
    }

    // Renewal under traffic: 10 s SM2 SVIDs renew every ~5 s with the SM2 renewal proof.
    // Keep-alive and new-connection requests for 22 s; every one must succeed.
    let mut b_seen = vec![sm2_not_after(b.admin)];
    let mut a_seen = vec![sm2_not_after(a.admin)];
    let deadline = Instant::now() + Duration::from_secs(22);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut keep = H1Client::connect(a_out).await;
    let mut n = 0u64;
    while Instant::now() < deadline && n < 200_000 {
        n += 1;
        let r = if n.is_multiple_of(10) {
            send_once(a_out, req("GET", "/new", "x", &[], ""))
                .await
                .map_err(|e| e.to_string())
        } else {
            keep.try_send(req("GET", "/keep", "x", &[], ""))
                .await
                .map_err(|e| e.to_string())
        };
        match r {
            Ok(g) if g.status == 200 => ok += 1,
            Ok(g) => {
                failed += 1;
                eprintln!("failed: {} {}", g.status, g.text());
            }
            Err(e) => {
                failed += 1;
                eprintln!("failed: {e}");
                keep = H1Client::connect(a_out).await;
            }
        }
        if n.is_multiple_of(200) {
            for (admin, seen) in [(b.admin, &mut b_seen), (a.admin, &mut a_seen)] {
                let id = sm2_not_after(admin);
                if seen.last() != Some(&id) {
                    seen.push(id);
                }
            }
        }
    }
    let control_log = std::fs::read_to_string(dir.join("control.log")).unwrap_or_default();
    let renewed = control_log.matches("auth=\"svid\"").count() + control_log.matches("auth=svid").count();
    println!(
        "SM2 renewal run: {ok} ok, {failed} failed, B certificates seen {}, A certificates seen {}, renewals at the CA {renewed}",
        b_seen.len(),
        a_seen.len()
    );
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 100, "{ok}");
    assert!(
        b_seen.len() >= 3 && a_seen.len() >= 3,
        "renewals: B {b_seen:?} A {a_seen:?}"
    );
    assert!(renewed >= 2, "renewals with the current SM2 SVID:\n{control_log}");
}

/// One HTTP/1.1 request with a Host header on a fresh connection: the whole response text.
fn http_host(a: SocketAddr, host: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(a).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_suites_sm_over_xds_makes_sm2_sidecars_talk_sm() {
    sidecars_configured_over_xds_talk_sm("sm", "sm2").await;
}

/// `--mtls-suites both` with `both` sidecars: SM first in every context, so SM is negotiated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_suites_both_over_xds_makes_both_sidecars_talk_sm() {
    sidecars_configured_over_xds_talk_sm("both", "both").await;
}

async fn sidecars_configured_over_xds_talk_sm(mtls_suites: &str, key_type: &str) {
    let dir = TempDir::new("mesh-sm2-xds");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let app = upstream(|s| async move {
        let xfcc = s
            .headers
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string());
        text(200, &format!("app xfcc={}", xfcc.unwrap_or_default()))
    })
    .await;
    let (b_in, a_out) = (addr(), addr());
    std::fs::write(
        dir.join("reg/services.yaml"),
        format!(
            "services:\n  - name: reviews\n    mtls: STRICT\n    identities: [{REVIEWS}]\n    endpoints: [{{address: \"{b_in}\"}}]\n  - name: productpage\n    endpoints: []\n"
        ),
    )
    .unwrap();
    let xds = addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--ca-sm2", "--mtls-suites", mtls_suites, "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args(["--xds", &xds.to_string(), "--admin", &addr().to_string()]),
        &dir.join("control.log"),
    );
    wait_until("weft control", Duration::from_secs(10), || TcpStream::connect(xds).ok());
    let sm2 = ["--identity-key-type", key_type];
    let node = |id: &str, cluster: &str, meta: &str| {
        format!("node:\n  id: {id}\n  cluster: {cluster}\n  metadata:\n    weft.role: sidecar\n{meta}xds:\n  address: \"{xds}\"\n")
    };
    let b = sidecar_with(
        dir.path(),
        "b",
        &node(
            "reviews-1",
            "reviews",
            &format!("    weft.inbound: \"{b_in}\"\n    weft.app: \"{}\"\n", app.addr),
        ),
        xds,
        "default/reviews",
        &sm2,
    );
    let _a = sidecar_with(
        dir.path(),
        "a",
        &node(
            "productpage-1",
            "productpage",
            &format!("    weft.outbound: \"{a_out}\"\n"),
        ),
        xds,
        "default/productpage",
        &sm2,
    );
    let r = wait_until("A → SM mTLS → B → app", Duration::from_secs(20), || {
        http_host(a_out, "reviews", "/hello").filter(|r| status_of(r) == 200)
    });
    assert!(r.contains(&format!(";URI={PRODUCTPAGE}")), "{r}");
    let stats = http_text(b.admin, "GET", "/stats/prometheus").unwrap();
    let all = metric_of(
        &stats,
        "weft_tls_handshakes_total{side=\"downstream\",name=\"inbound|reviews\"}",
    );
    let sm = metric_of(
        &stats,
        "weft_tls_sm_handshakes_total{side=\"downstream\",name=\"inbound|reviews\"}",
    );
    assert!(
        all >= 1.0 && sm == all,
        "every handshake on B's inbound is TLS_SM4_GCM_SM3:\n{stats}"
    );
    if mtls_suites == "sm" {
        // An ECDSA-only sidecar refuses (NACKs) the SM-only inbound listener, naming the flag.
        let c = sidecar_with(
            dir.path(),
            "c",
            &node(
                "reviews-2",
                "reviews",
                &format!("    weft.inbound: \"{}\"\n    weft.app: \"{}\"\n", addr(), app.addr),
            ),
            xds,
            "default/reviews",
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let log = std::fs::read_to_string(&c.log).unwrap_or_default();
            if let Some(l) = log
                .lines()
                .find(|l| l.contains("NACK") && l.contains("listeners[0].tls.cipher_suites"))
            {
                break l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "C did not refuse the SM-only listener:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(line.contains("--identity-key-type sm2"), "{line}");
    }
}
