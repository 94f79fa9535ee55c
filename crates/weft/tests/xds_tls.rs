//! The xDS channel over TLS: `weft control --xds-tls` serves ADS and the CA on one TLS port with a
//! certificate from its own CA; a `weft proxy` gets its workload certificate there with its
//! bootstrap token, then opens ADS with that certificate (`xds.tls: { mode: mesh }`) and routes
//! traffic with what it received. A proxy whose node claims another service than its certificate
//! is refused (PERMISSION_DENIED, named in both logs); a client without a certificate is refused
//! (curl sees grpc-status 16); plaintext xDS beyond loopback needs `--insecure-xds`.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use weft_test_support::*;

mod mesh_support;
use mesh_support::*;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have_curl() -> bool {
    if Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(!ci(), "curl is missing under CI=true (interop/install installs it)");
    eprintln!("skipping the curl part: no curl");
    false
}

/// A sidecar of `service` whose xDS goes over TLS to `secure`, where it also gets its certificate.
fn tls_sidecar(
    dir: &Path,
    name: &str,
    service: &str,
    secure: SocketAddr,
    identity: &str,
    outbound: SocketAddr,
) -> (Proc, SocketAddr, std::path::PathBuf) {
    let admin = addr();
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "node:\n  id: {name}\n  cluster: {service}\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\nadmin: {{ address: \"{admin}\" }}\nruntime: {{ concurrency: 1 }}\nxds:\n  address: \"{secure}\"\n  mode: ads_delta\n  tls: {{ mode: mesh }}\n"
        ),
    )
    .unwrap();
    let tok = token(dir, identity);
    let log = dir.join(format!("{name}.log"));
    let p = spawn(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(&cfg)
            .args(["--ca-address", &secure.to_string(), "--ca-root-file"])
            .arg(dir.join("ca/root-cert.pem"))
            .arg("--identity-token-file")
            .arg(&tok),
        &log,
    );
    (p, admin, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_get_their_configuration_over_tls_with_their_own_certificate_only() {
    let dir = TempDir::new("xds-tls");
    let app = upstream(|_| async move { text(200, "reviews says hi") }).await;
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    std::fs::write(
        dir.join("reg/services.yaml"),
        format!(
            "services:\n  - name: productpage\n    endpoints: []\n  - name: reviews\n    mtls: DISABLE\n    endpoints: [{{address: \"{}\"}}]\n  - name: details\n    endpoints: [{{address: \"127.0.0.1:9\", labels: {{security.weft.dev/identity: \"spiffe://cluster.local/ns/default/sa/bookinfo-details\"}}}}]\n",
            app.addr
        ),
    )
    .unwrap();
    let (xds, secure, control_admin) = (addr(), addr(), addr());
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args([
                "--xds",
                &xds.to_string(),
                "--xds-tls",
                &secure.to_string(),
                "--admin",
                &control_admin.to_string(),
            ]),
        &dir.join("control.log"),
    );
    wait_until("weft control's TLS port", Duration::from_secs(10), || {
        TcpStream::connect(secure).ok()
    });

    // productpage's sidecar: certificate, then ADS, both over TLS; then it routes to reviews.
    let out = addr();
    let (_pp, pp_admin, pp_log) = tls_sidecar(
        dir.path(),
        "productpage-1",
        "productpage",
        secure,
        "default/productpage",
        out,
    );
    wait_until("productpage's sidecar ready", Duration::from_secs(30), || {
        http_text(pp_admin, "GET", "/ready").filter(|r| status_of(r) == 200)
    });
    let r = wait_until("a route to reviews", Duration::from_secs(20), || {
        let mut c = TcpStream::connect(out).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        use std::io::{Read, Write};
        write!(c, "GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n").ok()?;
        let mut b = String::new();
        c.read_to_string(&mut b).ok()?;
        (status_of(&b) == 200).then_some(b)
    });
    assert!(r.contains("reviews says hi"), "{r}");
    let proxies = http_text(control_admin, "GET", "/debug/proxies").unwrap();
    assert!(
        proxies.contains("\"authenticated_identity\": \"spiffe://cluster.local/ns/default/sa/productpage\""),
        "the control plane knows who is connected: {proxies}"
    );

    // An impostor: productpage's certificate, but its node says it is reviews.
    let (_imp, _imp_admin, imp_log) =
        tls_sidecar(dir.path(), "impostor", "reviews", secure, "default/productpage", addr());
    let why = "is not the service of the certificate's identity spiffe://cluster.local/ns/default/sa/productpage";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&imp_log).unwrap_or_default();
        if log.contains(why) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the impostor was not refused:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let clog = std::fs::read_to_string(dir.join("control.log")).unwrap();
    assert!(clog.contains("ADS stream refused") && clog.contains(why), "{clog}");
    let metrics = http_text(control_admin, "GET", "/metrics").unwrap();
    assert!(
        metric_of(&metrics, "weft_control_streams_refused_total") >= 1.0,
        "{metrics}"
    );
    let proxies = http_text(control_admin, "GET", "/debug/proxies").unwrap();
    assert!(!proxies.contains("\"node_id\": \"impostor\""), "{proxies}");

    // A service account not named after its service (Kubernetes: `bookinfo-details` runs
    // `details`): accepted because the registry says details' endpoints have that identity.
    let (_det, det_admin, det_log) = tls_sidecar(
        dir.path(),
        "details-1",
        "details",
        secure,
        "default/bookinfo-details",
        addr(),
    );
    wait_until("details' sidecar ready", Duration::from_secs(30), || {
        http_text(det_admin, "GET", "/ready").filter(|r| status_of(r) == 200)
    });
    let log = std::fs::read_to_string(&det_log).unwrap_or_default();
    assert!(!log.contains("is not the service"), "{log}");

    // A client without a certificate: the TLS handshake succeeds (the CA takes tokens there), ADS
    // does not.
    if have_curl() {
        let o = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--http2", "--cacert"])
            .arg(dir.join("ca/root-cert.pem"))
            .args([
                "-X",
                "POST",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "--data-binary",
                "",
                &format!(
                    "https://{secure}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
                ),
            ])
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(head.contains("grpc-status: 16"), "{head}");
    }

    // The proxy's own log says it talks TLS to the control plane and got its identity there.
    let log = std::fs::read_to_string(&pp_log).unwrap();
    assert!(log.contains("mesh identity installed"), "{log}");
}

#[test]
fn plaintext_xds_beyond_loopback_needs_insecure_xds() {
    let dir = TempDir::new("xds-insecure");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let out = Command::new(WEFT)
        .args(["control", "--registry"])
        .arg(dir.join("reg"))
        .args(["--xds", "0.0.0.0:0", "--admin", &addr().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--xds 0.0.0.0:0") && err.contains("--insecure-xds"),
        "{err}"
    );
}

/// The injector's answer, taken apart: the pod's new annotations and the sidecar container.
fn injected(resp: &serde_json::Value) -> (serde_json::Map<String, serde_json::Value>, serde_json::Value) {
    let b64 = resp["response"]["patch"].as_str().expect("a patch");
    let ops: Vec<serde_json::Value> = serde_json::from_slice(&base64_decode(b64)).unwrap();
    let (mut ann, mut proxy) = (serde_json::Map::new(), serde_json::Value::Null);
    for op in ops {
        let path = op["path"].as_str().unwrap();
        if path == "/metadata/annotations" {
            ann.extend(op["value"].as_object().unwrap().clone());
        } else if let Some(key) = path.strip_prefix("/metadata/annotations/") {
            ann.insert(key.replace("~1", "/").replace("~0", "~"), op["value"].clone());
        } else if path.starts_with("/spec/containers") && op["value"]["name"] == "weft-proxy" {
            proxy = op["value"].clone();
        }
    }
    (ann, proxy)
}

/// A pod injected for the secure port (`--injector-xds-tls-address`) runs as injected: its sidecar
/// gets its certificate with the injected token, verifies weft control with the injected root and
/// gets its configuration over TLS, although its service account (`bookinfo-reviews`) is not
/// named after its service (`reviews.bookinfo`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_sidecar_uses_the_tls_port_with_what_the_injector_gave_it() {
    let dir = TempDir::new("xds-tls-injected");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    std::fs::write(
        dir.join("reg/services.yaml"),
        "services:\n  - name: reviews.bookinfo\n    endpoints: [{address: \"127.0.0.1:9\", labels: {security.weft.dev/identity: \"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\"}}]\n",
    )
    .unwrap();
    let (secure, control_admin) = (addr(), addr());
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args([
                "--xds",
                &addr().to_string(),
                "--xds-tls",
                &secure.to_string(),
                "--admin",
                &control_admin.to_string(),
            ]),
        &dir.join("control.log"),
    );
    wait_until("weft control's TLS port", Duration::from_secs(10), || {
        TcpStream::connect(secure).ok()
    });

    // The injector as weft control runs it with --injector-xds-tls-address (its token key and
    // root are the CA's), answering the recorded review of a bookinfo reviews-v1 pod.
    // Ports outside the ephemeral range (`free_port`): a port from binding `127.0.0.1:0` and
    // closing can be handed to an outgoing connection of a test running meanwhile.
    let (admin_port, outbound, inbound) = (free_port(), free_port(), free_port());
    let cfg = weft_control::injector::InjectorConfig {
        tokens: Some((
            std::sync::Arc::new(weft_control::ca::TokenKey::load_or_create(&dir.join("ca"), None).unwrap()),
            Duration::from_secs(600),
        )),
        secure_xds: Some(weft_control::injector::SecureXds {
            address: secure.to_string(),
            root_pem: std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap(),
            ca: None,
        }),
        admin_port,
        outbound_port: outbound,
        inbound_port: inbound,
        ..Default::default()
    };
    let review = kube_api::fixture_text("admissionreview-create-pod.json");
    let resp = weft_control::injector::review(review.as_bytes(), &cfg).unwrap();
    let (ann, proxy) = injected(&resp);
    let bootstrap = ann["sidecar.weft.dev/bootstrap"].as_str().unwrap();
    assert!(
        bootstrap.contains(&format!("address: \"{secure}\"")) && bootstrap.contains("tls: { mode: mesh }"),
        "{bootstrap}"
    );
    // The pod's files, as its downward-API volume would hold them (listening on loopback here).
    let etc = dir.join("etc-weft");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("bootstrap.yaml"), bootstrap.replace("0.0.0.0:", "127.0.0.1:")).unwrap();
    for (file, key) in [
        ("identity-token", "sidecar.weft.dev/identity-token"),
        ("ca-root.pem", "sidecar.weft.dev/ca-root"),
    ] {
        std::fs::write(etc.join(file), ann[key].as_str().unwrap()).unwrap();
    }
    let args: Vec<String> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/weft/", &format!("{}/", etc.display()))
        })
        .collect();
    assert!(args.contains(&"--ca-root-file".to_string()), "{args:?}");
    let _sidecar = spawn(Command::new(WEFT).args(&args), &dir.join("sidecar.log"));
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_text(admin, "GET", "/ready")
        .filter(|r| status_of(r) == 200)
        .is_none()
    {
        let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "the injected sidecar never became ready:\n--- sidecar.log\n{}\n--- control.log\n{}",
            log("sidecar.log"),
            log("control.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let proxies = http_text(control_admin, "GET", "/debug/proxies").unwrap();
    assert!(
        proxies.contains("\"authenticated_identity\": \"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\""),
        "{proxies}"
    );
}
