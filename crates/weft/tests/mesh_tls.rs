//! Mesh mTLS between two `weft proxy` sidecars whose SPIFFE identities come from a real
//! `weft control` CA: app client → sidecar A → (mTLS) → sidecar B → app. Also: secure naming refuses
//! a server with the wrong identity; STRICT refuses plaintext and PERMISSIVE accepts it on the same
//! port; `openssl s_client` with an SVID verifies B's chain and SPIFFE URI SAN; and the SVIDs
//! rotate at a short TTL under keep-alive and new-connection traffic with no failed request.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::*;

mod mesh_support;
use mesh_support::*;

fn inbound_yaml(strict: SocketAddr, permissive: SocketAddr, app: SocketAddr) -> String {
    let route = r#"    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                route: { cluster: app }
"#;
    format!(
        "listeners:\n  - name: inbound\n    address: {strict}\n    tls: {{ mode: STRICT, forward_client_cert: sanitize_set }}\n{route}  - name: inbound-permissive\n    address: {permissive}\n    tls: {{ mode: PERMISSIVE, forward_client_cert: sanitize_set }}\n{route}clusters:\n  - name: app\n    endpoints: [{{ address: \"{app}\" }}]\n"
    )
}

fn outbound_yaml(listen: SocketAddr, b: SocketAddr, c: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: outbound
    address: {listen}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /wrong }}
                route: {{ cluster: ratings-impostor }}
              - match: {{ prefix: / }}
                route: {{ cluster: reviews }}
clusters:
  - name: reviews
    endpoints: [{{ address: "{b}" }}]
    tls: {{ mode: mesh, subject_alt_names: ["{REVIEWS}"] }}
  - name: ratings-impostor
    endpoints: [{{ address: "{c}" }}]
    tls: {{ mode: mesh, subject_alt_names: ["{REVIEWS}"] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mtls_with_spiffe_identities_and_rotate_without_failures() {
    let dir = TempDir::new("mesh-tls");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let xds = addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
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
    let (b_strict, b_perm, c_addr, a_out) = (addr(), addr(), addr(), addr());
    let b = sidecar(
        dir.path(),
        "b",
        &inbound_yaml(b_strict, b_perm, app.addr),
        xds,
        "default/reviews",
    );
    let _c = sidecar(
        dir.path(),
        "c",
        &inbound_yaml(c_addr, addr(), app.addr),
        xds,
        "default/ratings",
    );
    let a = sidecar(
        dir.path(),
        "a",
        &outbound_yaml(a_out, b_strict, c_addr),
        xds,
        "default/productpage",
    );

    // client → A → (mTLS) → B → app; B tells the app who called (x-forwarded-client-cert).
    let got = get(a_out, "/hello").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let body = got.text();
    assert!(body.contains(&format!("By={REVIEWS};")), "{body}");
    assert!(body.contains(&format!(";URI={PRODUCTPAGE}")), "{body}");

    // Secure naming: C is a valid mesh workload, but not reviews.
    let got = get(a_out, "/wrong").await;
    assert_eq!(got.status, 503, "{}", got.text());
    let stats = http_text(a.admin, "GET", "/stats/prometheus").unwrap();
    let wrong = metric_of(
        &stats,
        "weft_tls_handshake_failures_total{side=\"upstream\",name=\"ratings-impostor\",reason=\"wrong_identity\"}",
    );
    assert!(wrong >= 1.0, "{stats}");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("spiffe://cluster.local/ns/default/sa/ratings"),
        "the refusal names the peer:\n{log}"
    );

    // STRICT refuses a plaintext client; PERMISSIVE serves it on the same port as mTLS.
    assert_eq!(
        http_text(b_strict, "GET", "/plain").map(|r| status_of(&r)).unwrap_or(0),
        0
    );
    let r = http_text(b_perm, "GET", "/plain").unwrap();
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("app xfcc=") && !r.contains("By="), "{r}");
    let stats = http_text(b.admin, "GET", "/stats/prometheus").unwrap();
    assert!(
        metric_of(
            &stats,
            "weft_tls_plaintext_connections_total{side=\"downstream\",name=\"inbound-permissive\"}"
        ) >= 1.0
    );
    assert!(
        metric_of(
            &stats,
            "weft_tls_handshake_failures_total{side=\"downstream\",name=\"inbound\",reason=\"protocol\"}"
        ) >= 1.0,
        "{stats}"
    );

    // openssl s_client with a client SVID: B's chain verifies against the mesh root and its
    // certificate carries the SPIFFE URI SAN.
    if peers::tool("openssl").is_some() {
        let tok = token(dir.path(), "default/details");
        let out = Command::new(WEFT)
            .args(["identity", "fetch", "--ca-address", &xds.to_string(), "--token-file"])
            .arg(&tok)
            .arg("--out-dir")
            .arg(dir.join("client"))
            .args(["--ttl", "10m"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let d = dir.join("client");
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &b_strict.to_string(),
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(d.join("root-cert.pem"))
            .arg("-cert")
            .arg(d.join("cert-chain.pem"))
            .arg("-key")
            .arg(d.join("key.pem"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        let pem_start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("s_client prints the leaf");
        let pem_end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
        let leaf = dir.join("b-leaf.pem");
        std::fs::write(&leaf, &text[pem_start..pem_end]).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&leaf)
            .output()
            .unwrap();
        let san = String::from_utf8_lossy(&out.stdout);
        assert!(san.contains(&format!("URI:{REVIEWS}")), "{san}");
    }

    // Rotation under traffic: 10 s SVIDs renew every ~5 s. Keep-alive and new-connection
    // requests for 25 s (bounded in time and count); every one must succeed.
    let identity_of = |admin: SocketAddr| -> String {
        let d = http_text(admin, "GET", "/config_dump").unwrap_or_default();
        let i = d.find("\"not_after\"").unwrap_or(0);
        d[i..].chars().take(30).collect()
    };
    let mut b_seen = vec![identity_of(b.admin)];
    let mut a_seen = vec![identity_of(a.admin)];
    let deadline = Instant::now() + Duration::from_secs(25);
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
                let id = identity_of(admin);
                if seen.last() != Some(&id) {
                    seen.push(id);
                }
            }
        }
    }
    println!(
        "rotation run: {ok} ok, {failed} failed, B certificates seen {}, A certificates seen {}",
        b_seen.len(),
        a_seen.len()
    );
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 100, "{ok}");
    assert!(
        b_seen.len() >= 3 && a_seen.len() >= 3,
        "rotations: B {b_seen:?} A {a_seen:?}"
    );
}
