//! A root rollover of weft control's CA under traffic between two `weft proxy` sidecars
//! (A → mTLS → B, 10 s SVIDs renewed every ~5 s): `weft control ca rollover prepare`, `activate`
//! and `retire` on the CA directory while everything runs, with keep-alive and new-connection
//! requests crossing the mTLS hop throughout; none may fail. The unsafe steps are refused with
//! their reasons until the timing rule allows them; after `activate` new SVIDs chain to the new
//! root (openssl verify); after `retire` the bundle holds only the new root and B refuses a
//! client certificate from the old one (`untrusted`). `weft sds-agent` (Envoy's SDS) serves both
//! roots in `ROOTCA` during the rollover, and only the new one after.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_test_support::*;

mod mesh_support;
use mesh_support::*;

/// The roots (DER) in the `ROOTCA` secret `weft sds-agent` serves at `sds`: what Envoy trusts.
async fn rootca(sds: SocketAddr) -> Option<Vec<Vec<u8>>> {
    use weft_xds_api::pb::envoy::config::core::v3::data_source::Specifier;
    use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    use weft_xds_api::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use weft_xds_api::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use weft_xds_api::prost::Message;
    let mut client = SecretDiscoveryServiceClient::connect(format!("http://{sds}"))
        .await
        .ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DiscoveryRequest {
        resource_names: vec!["ROOTCA".into()],
        type_url: weft_xds_api::type_url::SECRET.into(),
        ..Default::default()
    })
    .await
    .ok()?;
    let mut answers = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .ok()?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .ok()?
        .ok()??;
    drop(tx);
    let secret = Secret::decode(answer.resources.first()?.value.as_slice()).ok()?;
    let Some(secret::Type::ValidationContext(vc)) = secret.r#type else {
        return None;
    };
    let Some(Specifier::InlineBytes(pem)) = vc.trusted_ca?.specifier else {
        return None;
    };
    weft_identity::client::parse_pem_certs(&[String::from_utf8(pem).ok()?]).ok()
}

fn der(pem_file: &Path) -> Vec<u8> {
    weft_identity::client::parse_pem_certs(&[std::fs::read_to_string(pem_file).unwrap()])
        .unwrap()
        .remove(0)
}

fn rollover(ca_dir: &Path, step: &str) -> (bool, String) {
    let out = Command::new(WEFT)
        .args(["control", "ca", "rollover", step, "--ca-dir"])
        .arg(ca_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Takes `step` as soon as the CLI allows it (its first answer must be the refusal `refusal`).
/// Returns the seconds waited.
fn step_when_allowed(ca_dir: &Path, step: &str, refusal: &str) -> f64 {
    let start = Instant::now();
    let (ok, first) = rollover(ca_dir, step);
    assert!(!ok && first.contains(refusal), "{step}: expected a refusal: {first}");
    println!("{step} at once: {}", first.trim());
    wait_until(&format!("`{step}` to be allowed"), Duration::from_secs(30), || {
        let (ok, out) = rollover(ca_dir, step);
        if !ok {
            assert!(out.contains(refusal), "{step}: {out}");
            std::thread::sleep(Duration::from_millis(400));
        }
        ok.then_some(())
    });
    start.elapsed().as_secs_f64()
}

fn phase_is(admin: SocketAddr, phase: &str) -> bool {
    http_text(admin, "GET", "/debug/ca")
        .is_some_and(|t| t.replace([' ', '\n'], "").contains(&format!("\"phase\":\"{phase}\"")))
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The leaf certificate B serves (PEM), fetched with openssl s_client and a client SVID in `id/`.
fn served_leaf(dir: &Path, b: SocketAddr) -> Option<String> {
    let (_, text) = openssl(
        dir,
        &[
            "s_client",
            "-connect",
            &b.to_string(),
            "-cert",
            "id/cert-chain.pem",
            "-key",
            "id/key.pem",
        ],
    );
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(format!("{}\n", &text[start..end]))
}

fn fetch_identity(dir: &Path, xds: SocketAddr, identity: &str) {
    let tok = token(dir, identity);
    let _ = std::fs::remove_dir_all(dir.join("id"));
    let out = Command::new(WEFT)
        .args(["identity", "fetch", "--ca-address", &xds.to_string(), "--token-file"])
        .arg(&tok)
        .arg("--out-dir")
        .arg(dir.join("id"))
        .args(["--ttl", "10s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rollover_under_traffic_loses_no_request_and_ends_with_only_the_new_root() {
    if peers::tool("openssl").is_none() {
        return;
    }
    let dir = TempDir::new("mesh-rollover");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let ca_dir = dir.join("ca");
    let (xds, control_admin) = (addr(), addr());
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args([
                "--xds",
                &xds.to_string(),
                "--admin",
                &control_admin.to_string(),
                "--svid-ttl",
                "10s",
                "--svid-max-ttl",
                "10s",
            ]),
        &dir.join("control.log"),
    );
    wait_until("weft control", Duration::from_secs(10), || TcpStream::connect(xds).ok());
    wait_until("the CA", Duration::from_secs(10), || {
        phase_is(control_admin, "idle").then_some(())
    });
    std::fs::copy(ca_dir.join("root-cert.pem"), dir.join("root1.pem")).unwrap();

    let app = upstream(|_| async move { text(200, "app") }).await;
    let (b_in, a_out) = (addr(), addr());
    let b = sidecar(
        dir.path(),
        "b",
        &format!(
            r#"listeners:
  - name: inbound
    address: {b_in}
    tls: {{ mode: STRICT }}
    http:
      route_config:
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{}" }}] }}
"#,
            app.addr
        ),
        xds,
        "default/reviews",
    );
    let a = sidecar(
        dir.path(),
        "a",
        &format!(
            r#"listeners:
  - name: outbound
    address: {a_out}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: /new }}, route: {{ cluster: reviews-new }} }}
              - {{ match: {{ prefix: / }}, route: {{ cluster: reviews }} }}
clusters:
  - name: reviews
    endpoints: [{{ address: "{b_in}" }}]
    tls: {{ mode: mesh, subject_alt_names: ["{REVIEWS}"] }}
  - name: reviews-new
    endpoints: [{{ address: "{b_in}" }}]
    pool: {{ max_idle_per_endpoint: 0 }}
    tls: {{ mode: mesh, subject_alt_names: ["{REVIEWS}"] }}
"#
        ),
        xds,
        "default/productpage",
    );
    assert_eq!(get(a_out, "/keep").await.status, 200);
    assert_eq!(get(a_out, "/new").await.status, 200);
    // An SDS agent (for an Envoy sidecar), renewing its 10 s certificate like the sidecars.
    let sds = addr();
    let _sds_agent = spawn(
        Command::new(WEFT)
            .args([
                "sds-agent",
                "--listen",
                &sds.to_string(),
                "--ca-address",
                &xds.to_string(),
                "--token-file",
            ])
            .arg(token(dir.path(), "default/details")),
        &dir.join("sds-agent.log"),
    );
    let root1 = der(&dir.join("root1.pem"));
    let mut seen = None;
    for _ in 0..100 {
        seen = rootca(sds).await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(vec![root1.clone()]), "ROOTCA before the rollover");

    // Traffic for the whole rollover: keep-alive requests on one connection to A (its pooled
    // mTLS connections to B), and every 10th a new connection to A on /new, whose cluster keeps
    // no idle connection: a new mTLS handshake A → B with whatever certificates both hold then.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handshakes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let traffic = {
        let (stop, ok, failed, handshakes) = (stop.clone(), ok.clone(), failed.clone(), handshakes.clone());
        tokio::spawn(async move {
            let mut keep = H1Client::connect(a_out).await;
            let mut n = 0u64;
            // Bounded in time and count.
            let deadline = Instant::now() + Duration::from_secs(150);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 2_000_000 {
                n += 1;
                let r = if n.is_multiple_of(10) {
                    handshakes.fetch_add(1, Ordering::Relaxed);
                    send_once(a_out, req("GET", "/new", "x", &[], "")).await
                } else {
                    keep.try_send(req("GET", "/keep", "x", &[], ""))
                        .await
                        .map_err(|e| e.to_string())
                };
                match r {
                    Ok(g) if g.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(g) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {} {}", g.status, g.text());
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {e}");
                        keep = H1Client::connect(a_out).await;
                    }
                }
            }
        })
    };
    let started = Instant::now();

    // Nothing to activate yet; a CA in a store cannot be rolled over (yet).
    let out = Command::new(WEFT)
        .args([
            "control",
            "ca",
            "rollover",
            "prepare",
            "--ca-store",
            "etcd://127.0.0.1:1/weft-ca/",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("root rollover of a CA kept in a store is not supported yet"),
        "{err}"
    );
    let (done, out) = rollover(&ca_dir, "activate");
    assert!(
        !done && out.contains("activate refused: no rollover is prepared"),
        "{out}"
    );

    // prepare: weft control applies it without a restart.
    let (done, out) = rollover(&ca_dir, "prepare");
    assert!(done, "{out}");
    wait_until("phase prepared", Duration::from_secs(10), || {
        phase_is(control_admin, "prepared").then_some(())
    });
    // The SDS agent's next renewal (~5 s) brings both roots to ROOTCA.
    let root2 = der(&ca_dir.join("ca-2-cert.pem"));
    let mut both = None;
    for _ in 0..150 {
        both = rootca(sds).await.filter(|r| r.len() == 2);
        if both.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(both, Some(vec![root1.clone(), root2.clone()]), "ROOTCA while prepared");
    let waited = step_when_allowed(
        &ca_dir,
        "activate",
        "activate refused: certificates issued before `prepare`",
    );
    println!("activate allowed after {waited:.1}s");
    wait_until("phase active", Duration::from_secs(10), || {
        phase_is(control_admin, "active").then_some(())
    });

    // New SVIDs chain to the new root: a fresh one, and B's once it renewed (~5 s).
    fetch_identity(dir.path(), xds, "default/details");
    let (verified, out) = openssl(
        dir.path(),
        &["verify", "-CAfile", "ca/ca-2-cert.pem", "id/cert-chain.pem"],
    );
    assert!(verified, "a new SVID chains to the new root: {out}");
    let (verified, _) = openssl(dir.path(), &["verify", "-CAfile", "root1.pem", "id/cert-chain.pem"]);
    assert!(!verified, "a new SVID does not chain to the old root");
    let bundle = std::fs::read_to_string(dir.join("id/root-cert.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    wait_until("B to serve a new-root certificate", Duration::from_secs(20), || {
        let leaf = served_leaf(dir.path(), b_in)?;
        std::fs::write(dir.join("b-leaf.pem"), leaf).ok()?;
        openssl(dir.path(), &["verify", "-CAfile", "ca/ca-2-cert.pem", "b-leaf.pem"])
            .0
            .then_some(())
    });

    let waited = step_when_allowed(
        &ca_dir,
        "retire",
        "retire refused: certificates signed by the previous root",
    );
    println!("retire allowed after {waited:.1}s");
    wait_until("phase idle", Duration::from_secs(10), || {
        phase_is(control_admin, "idle").then_some(())
    });
    // The bundle weft control hands out holds the new root only (written before the phase is
    // seen to change).
    let bundle = std::fs::read_to_string(ca_dir.join("trust-bundle.pem")).unwrap();
    assert_eq!(
        bundle.trim(),
        std::fs::read_to_string(ca_dir.join("ca-2-cert.pem")).unwrap().trim()
    );
    fetch_identity(dir.path(), xds, "default/details");
    let bundle = std::fs::read_to_string(dir.join("id/root-cert.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "{bundle}");
    let mut only_new = None;
    for _ in 0..150 {
        only_new = rootca(sds).await.filter(|r| r.len() == 1);
        if only_new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(only_new, Some(vec![root2.clone()]), "ROOTCA after retire");

    // A client certificate from the old root (signed with its retired key, valid in time): B
    // refuses it as untrusted once its own bundle lost the old root (at its next renewal).
    let retired = |suffix: &str| {
        std::fs::read_dir(&ca_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("retired-") && n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no retired-*{suffix}"))
    };
    let (old_cert, old_key) = (
        format!("ca/{}", retired("root-cert.pem")),
        format!("ca/{}", retired("root-key.pem")),
    );
    std::fs::write(
        dir.join("old.ext"),
        format!("subjectAltName=URI:{PRODUCTPAGE}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n"),
    )
    .unwrap();
    for args in [
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "old.key",
            "-subj",
            "/O=old",
            "-out",
            "old.csr",
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            "old.csr",
            "-CA",
            &old_cert,
            "-CAkey",
            &old_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "old.ext",
            "-out",
            "old.pem",
        ][..],
    ] {
        let (done, out) = openssl(dir.path(), args);
        assert!(done, "{out}");
    }
    let untrusted = "weft_tls_handshake_failures_total{side=\"downstream\",name=\"inbound\",reason=\"untrusted\"}";
    wait_until(
        "B to refuse an old-root client certificate",
        Duration::from_secs(20),
        || {
            let _ = openssl(
                dir.path(),
                &[
                    "s_client",
                    "-connect",
                    &b_in.to_string(),
                    "-cert",
                    "old.pem",
                    "-key",
                    "old.key",
                ],
            );
            let stats = http_text(b.admin, "GET", "/stats/prometheus")?;
            (metric_of(&stats, untrusted) >= 1.0).then_some(())
        },
    );

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let (ok, failed, handshakes) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        handshakes.load(Ordering::Relaxed),
    );
    let stats = http_text(a.admin, "GET", "/stats/prometheus").unwrap_or_default();
    let a_failures: f64 = stats
        .lines()
        .filter(|l| l.starts_with("weft_tls_handshake_failures_total{side=\"upstream\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "rollover under traffic: {:.1}s, {ok} ok, {failed} failed, {handshakes} new-connection requests, A's upstream handshake failures {a_failures}",
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(failed, 0, "{ok} ok");
    assert_eq!(a_failures, 0.0, "{stats}");
    assert!(ok > 1000 && handshakes > 100, "{ok} ok, {handshakes} new connections");
}
