//! The mesh CA over real sockets: issuance, refusals, persistence, a user-provided intermediate,
//! renewal at half-life, and certificates checked by the `openssl` CLI.

mod common;

use common::TempDir;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weft_control::ca::{Ca, CaOptions};
use weft_control::{ControlOptions, ControlPlane};
use weft_identity::client::{fetch, Auth, FetchError};
use weft_identity::proto::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE};
use weft_identity::{AgentConfig, IdentityAgent, SpiffeId};

fn openssl() -> Option<&'static str> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("openssl");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("openssl is missing under CI=true: run scripts/install-peers");
    }
    eprintln!("skipped: no openssl CLI (run scripts/install-peers)");
    None
}

fn run_openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

async fn start_cp(reg: &TempDir, ca: Arc<Ca>, xds: Option<std::net::SocketAddr>) -> ControlPlane {
    let mut o = ControlOptions::new(reg.path());
    o.ca = Some(ca);
    o.admin = None;
    if let Some(a) = xds {
        o.xds = a;
    }
    ControlPlane::start(o).await.unwrap()
}

fn status(r: Result<weft_identity::Svid, FetchError>) -> (tonic::Code, String) {
    match r {
        Err(FetchError::Status { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A CreateCertificate call with any CSR and metadata, for requests the client would never make.
async fn raw(
    addr: std::net::SocketAddr,
    csr: String,
    bearer: Option<&str>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: Vec::new(),
    });
    if let Some(t) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    g.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|r| r.into_inner())
}

fn metric(cp: &ControlPlane, line_prefix: &str) -> u64 {
    let text = cp.shared.metrics.encode();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificate_verifies_with_openssl_and_carries_the_spiffe_id_and_ttl() {
    let Some(_) = openssl() else { return };
    let dir = TempDir::new("ca");
    let reg = TempDir::new("ca");
    let ca = Arc::new(Ca::load(&CaOptions::new(dir.path().join("ca"))).unwrap());
    let token = ca.tokens.mint("default/reviews", Duration::from_secs(600)).unwrap();
    let cp = start_cp(&reg, ca.clone(), None).await;
    let addr = cp.xds_addr().to_string();
    let svid = fetch(
        &addr,
        &id("default", "reviews"),
        Auth::Token(&token),
        Some(Duration::from_secs(300)),
    )
    .await
    .unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &svid.chain_pem).unwrap();
    let (ok, out) = run_openssl(&["verify", "-CAfile", "ca/root-cert.pem", "leaf.pem"], dir.path());
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");
    let (_, text) = run_openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], dir.path());
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{text}"
    );
    assert!(
        text.contains("NIST CURVE: P-256") && text.contains("CA:FALSE"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    // The requested 300 s: still valid in 290 s, expired in 310 s.
    assert!(run_openssl(&["x509", "-in", "leaf.pem", "-noout", "-checkend", "290"], dir.path()).0);
    assert!(!run_openssl(&["x509", "-in", "leaf.pem", "-noout", "-checkend", "310"], dir.path()).0);
    assert_eq!(
        svid.not_after - svid.not_before,
        300 + 60,
        "300 s plus the 60 s backdating"
    );
    // No TTL asked: the CA's default (24 h); more than --svid-max-ttl: capped at 7 days.
    let d = fetch(&addr, &id("default", "reviews"), Auth::Token(&token), None)
        .await
        .unwrap();
    assert!((d.not_after - d.received).abs_diff(24 * 3600) <= 5, "{d:?}");
    let m = fetch(
        &addr,
        &id("default", "reviews"),
        Auth::Token(&token),
        Some(Duration::from_secs(30 * 86400)),
    )
    .await
    .unwrap();
    assert!((m.not_after - m.received).abs_diff(7 * 86400) <= 5, "{m:?}");
    assert_eq!(
        metric(&cp, "weft_control_ca_certificates_issued_total{auth=\"token\"} "),
        3
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_gets_its_own_identity_and_bad_requests_are_refused() {
    let dir = TempDir::new("ca");
    let reg = TempDir::new("ca");
    let ca = Arc::new(Ca::load(&CaOptions::new(dir.path().join("ca"))).unwrap());
    let token_a = ca.tokens.mint("default/a", Duration::from_secs(600)).unwrap();
    let cp = start_cp(&reg, ca.clone(), None).await;
    let addr = cp.xds_addr();
    let a_str = addr.to_string();

    // Token for A, CSR for B.
    let (code, msg) = status(fetch(&a_str, &id("default", "b"), Auth::Token(&token_a), None).await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/b")
            && msg.contains("may only obtain [\"spiffe://cluster.local/ns/default/sa/a\"]"),
        "{msg}"
    );
    // Same namespace and account in another trust domain is another identity.
    let other_td = SpiffeId::new("evil.example", "default", "a").unwrap();
    assert_eq!(
        status(fetch(&a_str, &other_td, Auth::Token(&token_a), None).await).0,
        tonic::Code::PermissionDenied
    );

    // An expired token.
    let short = ca.tokens.mint("default/a", Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, msg) = status(fetch(&a_str, &id("default", "a"), Auth::Token(&short), None).await);
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.contains("token expired"), "{msg}");

    // A token from another CA (another HMAC key), for the right identity.
    let other = TempDir::new("ca");
    let foreign = weft_control::ca::TokenKey::load_or_create(other.path(), None)
        .unwrap()
        .mint("default/a", Duration::from_secs(600))
        .unwrap();
    let (code, msg) = status(fetch(&a_str, &id("default", "a"), Auth::Token(&foreign), None).await);
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.contains("signature does not verify"), "{msg}");

    // No credential at all.
    let good_csr = weft_identity::csr::csr_pem(&weft_identity::csr::new_key().unwrap(), &id("default", "a")).unwrap();
    let e = raw(addr, good_csr.clone(), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no credential"), "{e:?}");

    // A P-384 key, right SAN.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let e = raw(
        addr,
        weft_identity::csr::csr_pem(&p384, &id("default", "a")).unwrap(),
        Some(&token_a),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("must be ECDSA P-256"), "{e:?}");

    // An extra DNS SAN next to the right URI.
    let key = weft_identity::csr::new_key().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["reviews.example".to_string()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/sa/a".try_into().unwrap(),
    ));
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let e = raw(addr, csr, Some(&token_a)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Not a CSR; a CSR whose signature is broken.
    let e = raw(addr, "hello".into(), Some(&token_a)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut der = x509_parser::pem::parse_x509_pem(good_csr.as_bytes())
        .unwrap()
        .1
        .contents;
    let n = der.len();
    der[n - 5] ^= 0x55;
    let broken = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        weft_identity::client::pem_block(&der)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let e = raw(addr, broken, Some(&token_a)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Renewal with A's SVID cannot obtain B either.
    let svid_a = fetch(&a_str, &id("default", "a"), Auth::Token(&token_a), None)
        .await
        .unwrap();
    let (code, _) = status(fetch(&a_str, &id("default", "b"), Auth::Svid(&svid_a), None).await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    let renewed = fetch(&a_str, &id("default", "a"), Auth::Svid(&svid_a), None)
        .await
        .unwrap();
    assert_ne!(renewed.serial, svid_a.serial);

    for (reason, n) in [
        ("wrong_identity", 4),
        ("expired_token", 1),
        ("bad_token", 1),
        ("no_credential", 1),
        ("bad_csr", 3),
    ] {
        assert_eq!(
            metric(&cp, &format!("weft_control_ca_denied_total{{reason=\"{reason}\"}} ")),
            n,
            "{reason}: {}",
            cp.shared.metrics.encode()
        );
    }
    assert_eq!(
        metric(&cp, "weft_control_ca_certificates_issued_total{auth=\"svid\"} "),
        1
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_survives_restarts_and_old_certificates_stay_valid_and_renewable() {
    let Some(_) = openssl() else { return };
    let dir = TempDir::new("ca");
    let reg = TempDir::new("ca");
    let opts = CaOptions::new(dir.path().join("ca"));
    let ca1 = Arc::new(Ca::load(&opts).unwrap());
    let root1 = ca1.root_pem().to_string();
    let token = ca1.tokens.mint("shop/cart", Duration::from_secs(600)).unwrap();
    let cp = start_cp(&reg, ca1, None).await;
    let xds = cp.xds_addr();
    let who = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
    let svid = fetch(&xds.to_string(), &who, Auth::Token(&token), None).await.unwrap();
    cp.stop().await;

    // Key file mode, and a second start: same root, same trust domain, the old token still works.
    use std::os::unix::fs::PermissionsExt;
    for f in ["root-key.pem", "token-hmac.key"] {
        let mode = std::fs::metadata(dir.path().join("ca").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let ca2 = Arc::new(Ca::load(&opts).unwrap());
    assert_eq!(ca2.root_pem(), root1);
    assert_eq!(ca2.trust_domain(), "cluster.local");
    let cp = start_cp(&reg, ca2, None).await;
    let renewed = fetch(&cp.xds_addr().to_string(), &who, Auth::Svid(&svid), None)
        .await
        .unwrap();
    assert_ne!(renewed.serial, svid.serial);
    fetch(&cp.xds_addr().to_string(), &who, Auth::Token(&token), None)
        .await
        .unwrap();
    std::fs::write(dir.path().join("old.pem"), &svid.chain_pem).unwrap();
    std::fs::write(dir.path().join("new.pem"), &renewed.chain_pem).unwrap();
    for f in ["old.pem", "new.pem"] {
        let (ok, out) = run_openssl(&["verify", "-CAfile", "ca/root-cert.pem", f], dir.path());
        assert!(ok, "{f}: {out}");
    }
    cp.stop().await;
    // Changing the trust domain of an existing CA directory is refused, naming the file.
    let mut o = opts.clone();
    o.trust_domain = Some("other.example".into());
    let e = Ca::load(&o).err().unwrap().to_string();
    assert!(e.contains("ca/trust-domain") && e.contains("\"cluster.local\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_provided_intermediate_signs_and_openssl_verifies_up_to_the_users_root() {
    let Some(_) = openssl() else { return };
    let dir = TempDir::new("ca");
    let d = dir.path();
    std::fs::write(
        d.join("ext.cnf"),
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    for args in [
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "root.key",
        ][..],
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=user root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "int.key",
        ],
        &[
            "req",
            "-new",
            "-key",
            "int.key",
            "-subj",
            "/CN=user intermediate",
            "-out",
            "int.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "ca",
            "-out",
            "int.pem",
        ],
    ] {
        let (ok, out) = run_openssl(args, d);
        assert!(ok, "openssl {args:?}: {out}");
    }
    let mut o = CaOptions::new(d.join("ca"));
    o.cert = Some(d.join("int.pem"));
    o.key = Some(d.join("int.key"));
    o.trust_domain = Some("corp.example".into());
    // Without the chain up to the root: refused, naming the certificate file.
    let e = Ca::load(&o).err().unwrap().to_string();
    assert!(e.contains("int.pem") && e.contains("--ca-chain"), "{e}");
    o.chain = Some(d.join("root.pem"));
    let ca = Arc::new(Ca::load(&o).unwrap());
    assert_eq!(
        ca.root_pem().trim(),
        std::fs::read_to_string(d.join("root.pem")).unwrap().trim()
    );
    let token = ca.tokens.mint("pay/ledger", Duration::from_secs(60)).unwrap();
    let reg = TempDir::new("ca");
    let cp = start_cp(&reg, ca, None).await;
    let who = SpiffeId::new("corp.example", "pay", "ledger").unwrap();
    let svid = fetch(&cp.xds_addr().to_string(), &who, Auth::Token(&token), None)
        .await
        .unwrap();
    // The chain Envoy/weft present: the leaf then the intermediate.
    assert_eq!(svid.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    std::fs::write(d.join("chain.pem"), &svid.chain_pem).unwrap();
    std::fs::write(
        d.join("leaf.pem"),
        svid.chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    let (ok, out) = run_openssl(
        &["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"],
        d,
    );
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");
    let (_, text) = run_openssl(
        &["x509", "-in", "leaf.pem", "-noout", "-issuer", "-ext", "subjectAltName"],
        d,
    );
    assert!(
        text.contains("CN = user intermediate") && text.contains("URI:spiffe://corp.example/ns/pay/sa/ledger"),
        "{text}"
    );
    cp.stop().await;
}

#[test]
fn bad_ca_files_stop_the_ca_with_the_file_named() {
    let dir = TempDir::new("ca");
    let d = dir.path();
    let ca_dir = d.join("ca");
    let opts = CaOptions::new(&ca_dir);
    Ca::load(&opts).unwrap();
    let key = ca_dir.join("root-key.pem");
    let good_key = std::fs::read_to_string(&key).unwrap();
    let expect = |what: &str, needle: &str| {
        let e = Ca::load(&opts)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        assert!(e.contains("root-key.pem") && e.contains(needle), "{what}: {e}");
    };
    std::fs::remove_file(&key).unwrap();
    expect("missing key", "missing");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    expect("garbage key", "not a usable private key");
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    expect("unreadable key", "");
    std::fs::remove_dir(&key).unwrap();
    std::fs::write(&key, weft_identity::csr::new_key().unwrap().serialize_pem()).unwrap();
    expect("another key", "does not match");
    std::fs::write(&key, &good_key).unwrap();
    Ca::load(&opts).unwrap();

    // A certificate that is not a CA, a cert file that is not PEM, a bad token key.
    let leaf_key = weft_identity::csr::new_key().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&leaf_key)
        .unwrap();
    std::fs::write(d.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(d.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    let mut o = CaOptions::new(&ca_dir);
    o.cert = Some(d.join("leaf.pem"));
    o.key = Some(d.join("leaf.key"));
    let e = Ca::load(&o).err().unwrap().to_string();
    assert!(e.contains("leaf.pem") && e.contains("not a CA certificate"), "{e}");
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    o.cert = Some(d.join("junk.pem"));
    let e = Ca::load(&o).err().unwrap().to_string();
    assert!(e.contains("junk.pem"), "{e}");
    std::fs::write(ca_dir.join("token-hmac.key"), "short").unwrap();
    let e = Ca::load(&opts).err().unwrap().to_string();
    assert!(e.contains("token-hmac.key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_at_half_life_and_keeps_its_certificate_while_the_ca_is_down() {
    let dir = TempDir::new("ca");
    let reg = TempDir::new("ca");
    let mut opts = CaOptions::new(dir.path().join("ca"));
    opts.svid_ttl = Duration::from_secs(10);
    let ca = Arc::new(Ca::load(&opts).unwrap());
    std::fs::write(
        dir.path().join("token"),
        ca.tokens.mint("default/agent", Duration::from_secs(600)).unwrap(),
    )
    .unwrap();
    let cp = start_cp(&reg, ca.clone(), None).await;
    let xds = cp.xds_addr();
    let agent = IdentityAgent::start(AgentConfig::new(xds.to_string(), dir.path().join("token"))).unwrap();
    let mut rx = agent.subscribe();
    let first = agent.ready(Duration::from_secs(10)).await.expect("first certificate");
    assert_eq!(first.id.to_string(), "spiffe://cluster.local/ns/default/sa/agent");
    // Renewed at half-life (5 s of 10 s), through the watch channel and the ArcSwap alike.
    let t0 = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(9),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.serial != first.serial)),
    )
    .await
    .expect("renewal within 9 s")
    .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "renewed after {took:?}, before half-life"
    );
    let second = agent.current().unwrap();
    assert_ne!(second.serial, first.serial);
    assert_eq!(
        metric(&cp, "weft_control_ca_certificates_issued_total{auth=\"svid\"} "),
        1
    );

    // The CA goes away: failures are counted, the current certificate stays.
    cp.stop().await;
    tokio::time::timeout(Duration::from_secs(12), async {
        while agent.metrics.consecutive_failures.get() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("two failed renewals");
    assert!(agent.metrics.failures.get() >= 2);
    assert_eq!(
        agent.current().unwrap().serial,
        second.serial,
        "kept the current certificate"
    );

    // The CA comes back on the same port: the agent recovers (by SVID if still valid, else token).
    let cp = start_cp(&reg, ca, Some(xds)).await;
    tokio::time::timeout(
        Duration::from_secs(40),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.serial != second.serial)),
    )
    .await
    .expect("recovered after the CA came back")
    .unwrap();
    assert_eq!(agent.metrics.consecutive_failures.get(), 0);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_over_tls_is_verified_against_the_mesh_root() {
    let Some(_) = openssl() else { return };
    let dir = TempDir::new("ca");
    let reg = TempDir::new("ca");
    let ca = Arc::new(Ca::load(&CaOptions::new(dir.path().join("ca"))).unwrap());
    let token = ca.tokens.mint("default/tls", Duration::from_secs(600)).unwrap();
    let mut o = ControlOptions::new(reg.path());
    o.ca = Some(ca.clone());
    o.admin = None;
    o.ca_tls = Some("127.0.0.1:0".parse().unwrap());
    let cp = ControlPlane::start(o).await.unwrap();
    let tls = cp.ca_tls_addr().unwrap().to_string();
    let who = id("default", "tls");
    let root = ca.root_pem().to_string();

    // Issuance and renewal over TLS, the server verified against the mesh root.
    let svid = weft_identity::client::fetch_tls(&tls, &root, &who, Auth::Token(&token), None)
        .await
        .unwrap();
    let renewed = weft_identity::client::fetch_tls(&tls, &root, &who, Auth::Svid(&svid), None)
        .await
        .unwrap();
    assert_ne!(renewed.serial, svid.serial);
    // A client trusting another root refuses the CA; a plaintext client gets nothing.
    let other = Ca::load(&CaOptions::new(TempDir::new("ca").path().join("other"))).unwrap();
    match weft_identity::client::fetch_tls(&tls, &other.root_pem(), &who, Auth::Token(&token), None).await {
        Err(FetchError::Connect(m)) => assert!(m.contains("UnknownIssuer") || m.contains("certificate"), "{m}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(fetch(&tls, &who, Auth::Token(&token), None).await.is_err());
    // openssl agrees: the chain verifies to the root, and the certificate names weft control.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &tls,
            "-verify_return_error",
            "-CAfile",
            "ca/root-cert.pem",
            "-alpn",
            "h2",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let leaf = &text[text.find("-----BEGIN CERTIFICATE-----").unwrap()..];
    let leaf = &leaf[..leaf.find("-----END CERTIFICATE-----").unwrap() + 25];
    std::fs::write(dir.path().join("server.pem"), leaf).unwrap();
    let (_, facts) = run_openssl(
        &["x509", "-in", "server.pem", "-noout", "-ext", "subjectAltName"],
        dir.path(),
    );
    assert!(
        facts.contains("URI:spiffe://cluster.local/ns/weft-system/sa/weft-control")
            && facts.contains("IP Address:127.0.0.1"),
        "{facts}"
    );
    // The identity agent over TLS.
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let mut cfg = AgentConfig::new(tls.clone(), dir.path().join("token"));
    cfg.ca_roots_pem = Some(root);
    let agent = IdentityAgent::start(cfg).unwrap();
    assert!(agent.ready(Duration::from_secs(10)).await.is_some());
    cp.stop().await;
}
