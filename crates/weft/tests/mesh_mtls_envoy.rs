//! Mesh mTLS between a real Envoy 1.40 sidecar and a weft sidecar, both under one `weft control`
//! with its CA, nothing configured by hand but the bootstraps: weft control sends the clusters
//! (UpstreamTlsContext, SDS `default`/`ROOTCA`, secure naming) and inbound listeners
//! (DownstreamTlsContext) in Istio's shapes; Envoy's identity comes from `weft sds-agent`, weft's
//! from the CA directly.
//!
//! curl → Envoy (reviews) → mTLS → weft (ratings) → app, and curl → weft → mTLS → Envoy → app:
//! each app sees the caller's SPIFFE ID in `x-forwarded-client-cert`, set by the server-side
//! sidecar from the verified client certificate; both sidecars count the handshakes. A plaintext
//! client is refused by the STRICT inbound (weft's), served by the PERMISSIVE one (Envoy's),
//! and refused by Envoy too once the registry makes it STRICT.
//!
//! Envoy comes from `interop/install`; outside CI a missing Envoy skips the test, under `CI=true`
//! it fails.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::*;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";
const WAIT: Duration = Duration::from_secs(30);

fn spawn(cmd: &mut Command, log: &Path) -> ChildGuard {
    let f = std::fs::File::create(log).unwrap();
    ChildGuard(
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    )
}

fn token(dir: &TempDir, identity: &str) -> std::path::PathBuf {
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--identity", identity, "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = dir.join(&format!("{}.token", identity.replace('/', "_")));
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn registry(envoy_in: SocketAddr, weft_in: SocketAddr, reviews_mode: &str) -> String {
    format!(
        "services:\n  - name: reviews\n    mtls: {reviews_mode}\n    identities: [{REVIEWS}]\n    endpoints: [{{address: \"{envoy_in}\"}}]\n  - name: ratings\n    mtls: STRICT\n    identities: [{RATINGS}]\n    endpoints: [{{address: \"{weft_in}\"}}]\n"
    )
}

/// `curl` through a sidecar's outbound listener to `host`: (status, body).
fn curl(outbound: SocketAddr, host: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-H",
            &format!("host: {host}"),
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("http://{outbound}/hello"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A plaintext request straight to an inbound listener: its status, 0 when refused.
fn plaintext(inbound: SocketAddr) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "3", "-w", "\n%{http_code}"])
        .arg(format!("http://{inbound}/direct"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The node and the SDS cluster of the Envoy sidecar (the rest: [`peers::envoy_ads_bootstrap`]).
const ENVOY_NODE: &str = r#"  id: {{NODE_ID}}
  cluster: reviews
  locality: { region: local, zone: z1 }
  metadata:
    weft.role: sidecar
    weft.outbound: "{{OUTBOUND}}"
    weft.inbound: "{{INBOUND}}"
    weft.app: "{{APP}}""#;

const SDS_CLUSTER: &str = r#"  # Istio's name for the SDS server next to Envoy: here `weft sds-agent`.
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: "{{SDS_SOCK}}" } } } }] }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_weft_sidecars_talk_mtls_both_ways_under_weft_control() {
    let Some(envoy) = peers::envoy_binary() else { return };
    let dir = TempDir::new("mtls-envoy");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let echo = |name: &'static str| {
        upstream(move |s| async move {
            let xfcc = s
                .headers
                .get("x-forwarded-client-cert")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            text(200, &format!("{name} app; xfcc={xfcc}"))
        })
    };
    let (reviews_app, ratings_app) = (echo("reviews").await, echo("ratings").await);
    let (envoy_in, envoy_out, weft_in, weft_out) = (free_addr(), free_addr(), free_addr(), free_addr());
    write_file(
        &dir.join("reg/services.yaml"),
        &registry(envoy_in, weft_in, "PERMISSIVE"),
    );

    // weft control with its CA: mTLS on (PERMISSIVE unless a service says otherwise).
    let xds = free_addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args(["--xds", &xds.to_string(), "--admin", &free_addr().to_string()]),
        &dir.join("control.log"),
    );
    eventually_blocking("weft control", WAIT, || TcpStream::connect(xds).ok());

    // Envoy (reviews): its identity over SDS from `weft sds-agent`.
    let sock = dir.join("sds.sock");
    let _agent = spawn(
        Command::new(WEFT)
            .args(["sds-agent", "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .args(["--ca-address", &xds.to_string(), "--token-file"])
            .arg(token(&dir, "default/reviews")),
        &dir.join("agent.log"),
    );
    eventually_blocking("the SDS agent's socket", WAIT, || sock.exists().then_some(()));
    let envoy_admin = free_addr();
    let cfg = peers::envoy_ads_bootstrap(ENVOY_NODE, envoy_admin.port(), xds.port(), SDS_CLUSTER)
        .replace("{{NODE_ID}}", &format!("envoy-mtls-{}", std::process::id()))
        .replace("{{OUTBOUND}}", &envoy_out.to_string())
        .replace("{{INBOUND}}", &envoy_in.to_string())
        .replace("{{APP}}", &reviews_app.addr.to_string())
        .replace("{{SDS_SOCK}}", &sock.display().to_string());
    std::fs::write(dir.join("envoy.yaml"), cfg).unwrap();
    let _envoy = spawn(
        Command::new(&envoy).arg("-c").arg(dir.join("envoy.yaml")).args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warn",
        ]),
        &dir.join("envoy.log"),
    );

    // weft (ratings): its identity from the CA, its configuration over xDS.
    let weft_admin = free_addr();
    std::fs::write(
        dir.join("weft.yaml"),
        format!(
            "node:\n  id: weft-mtls\n  cluster: ratings\n  zone: z1\n  region: local\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{weft_out}\"\n    weft.inbound: \"{weft_in}\"\n    weft.app: \"{}\"\nadmin:\n  address: \"{weft_admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n",
            ratings_app.addr
        ),
    )
    .unwrap();
    let _weft = spawn(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("weft.yaml"))
            .args(["--ca-address", &xds.to_string(), "--identity-token-file"])
            .arg(token(&dir, "default/ratings")),
        &dir.join("weft.log"),
    );
    let logs = || {
        ["control.log", "agent.log", "envoy.log", "weft.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // curl → Envoy → mTLS → weft → ratings app: the app sees reviews' SPIFFE ID, set by weft
    // from Envoy's verified client certificate.
    let mut last = (0, String::new());
    let ok = wait_for(WAIT, || {
        last = curl(envoy_out, "ratings");
        last.0 == 200
    });
    assert!(ok, "Envoy → weft never answered 200: {last:?}\n{}", logs());
    let (_, body) = &last;
    eprintln!("curl → Envoy → weft → app: {body}");
    assert!(body.starts_with("ratings app;"), "{body}");
    assert!(
        body.contains(&format!("By={RATINGS}")) && body.contains(&format!("URI={REVIEWS}")),
        "{body}"
    );

    // curl → weft → mTLS → Envoy → reviews app: Envoy sets ratings' SPIFFE ID.
    let ok = wait_for(WAIT, || {
        last = curl(weft_out, "reviews");
        last.0 == 200
    });
    assert!(ok, "weft → Envoy never answered 200: {last:?}\n{}", logs());
    let (_, body) = &last;
    eprintln!("curl → weft → Envoy → app: {body}");
    assert!(body.starts_with("reviews app;"), "{body}");
    assert!(body.contains(&format!("URI={RATINGS}")), "{body}");
    assert!(body.contains(&format!("By={REVIEWS}")), "{body}");

    // openssl, with a mesh client certificate, verifies weft's inbound chain against the mesh
    // root and sees ratings' SPIFFE ID.
    if peers::runs("openssl", "version") {
        let out = Command::new(WEFT)
            .args(["identity", "fetch", "--ca-address", &xds.to_string(), "--token-file"])
            .arg(token(&dir, "default/productpage"))
            .arg("--out-dir")
            .arg(dir.join("client"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut s_client = Command::new("timeout")
            .args([
                "10",
                "openssl",
                "s_client",
                "-connect",
                &weft_in.to_string(),
                "-verify_return_error",
                "-ign_eof",
                "-CAfile",
            ])
            .arg(dir.join("ca/root-cert.pem"))
            .arg("-cert")
            .arg(dir.join("client/cert-chain.pem"))
            .arg("-key")
            .arg(dir.join("client/key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = s_client.stdin.take().unwrap();
            let _ = stdin.write_all(b"GET /openssl HTTP/1.1\r\nHost: ratings\r\nConnection: close\r\n\r\n");
        }
        let out = s_client.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        assert!(
            text.contains("ratings app; xfcc=")
                && text.contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
            "{text}"
        );
        let pem = dir.join("served.pem");
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("the server's certificate");
        let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
        std::fs::write(&pem, format!("{}\n", &text[start..end])).unwrap();
        let x = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let sans = String::from_utf8_lossy(&x.stdout);
        assert!(sans.contains(&format!("URI:{RATINGS}")), "{sans}");
    }

    // weft's admin page names its identity.
    let page = get(weft_admin, "/");
    assert!(
        page.contains(&format!("identity {RATINGS} (certificate expires in")),
        "{page}"
    );

    // The hop was TLS on both sidecars' counters.
    let stats = get(weft_admin, "/stats/prometheus");
    let hs = |side: &str, name: &str| {
        metric(
            &stats,
            &format!("weft_tls_handshakes_total{{side=\"{side}\",name=\"{name}\"}}"),
        )
    };
    assert!(hs("downstream", "inbound|ratings") >= 1.0, "{stats}");
    assert!(hs("upstream", "reviews") >= 1.0, "{stats}");
    let envoy_stats = get(envoy_admin, "/stats?filter=ssl.handshake$");
    let total: u64 = envoy_stats
        .lines()
        .filter_map(|l| l.rsplit_once(": ").and_then(|(_, v)| v.trim().parse::<u64>().ok()))
        .sum();
    eprintln!("Envoy's ssl.handshake counters:\n{envoy_stats}");
    assert!(total >= 2, "Envoy's ssl.handshake counters: {envoy_stats}");
    assert!(envoy_stats.contains("cluster.ratings.ssl.handshake"), "{envoy_stats}");

    // Plaintext to weft's STRICT inbound: refused, counted. To Envoy's PERMISSIVE inbound:
    // served, with no identity for the app.
    let (status, body) = plaintext(weft_in);
    assert_ne!(status, 200, "weft's STRICT inbound served plaintext: {body}");
    let stats = get(weft_admin, "/stats/prometheus");
    assert!(
        metric(
            &stats,
            "weft_tls_handshake_failures_total{side=\"downstream\",name=\"inbound|ratings\",reason=\"protocol\"}"
        ) >= 1.0,
        "{stats}"
    );
    let (status, body) = plaintext(envoy_in);
    assert_eq!((status, body.as_str()), (200, "reviews app; xfcc=none"));

    // The registry makes reviews STRICT: Envoy refuses plaintext, mTLS keeps working.
    write_file(&dir.join("reg/services.yaml"), &registry(envoy_in, weft_in, "STRICT"));
    let ok = wait_for(WAIT, || plaintext(envoy_in).0 != 200);
    assert!(ok, "Envoy kept serving plaintext after STRICT\n{}", logs());
    let (status, body) = curl(weft_out, "reviews");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("URI={RATINGS}")), "{body}");
    let (status, body) = curl(envoy_out, "ratings");
    assert_eq!(status, 200, "{body}");

    // Secure naming: the registry says another identity serves each service. Both sidecars
    // then refuse the (valid, same-mesh) server certificate they are shown: 503, no app reached.
    let hits = (reviews_app.hits(), ratings_app.hits());
    write_file(
        &dir.join("reg/services.yaml"),
        &registry(envoy_in, weft_in, "STRICT")
            .replace(
                &format!("[{REVIEWS}]"),
                "[spiffe://cluster.local/ns/default/sa/impostor]",
            )
            .replace(
                &format!("[{RATINGS}]"),
                "[spiffe://cluster.local/ns/default/sa/impostor]",
            ),
    );
    let ok = wait_for(WAIT, || {
        curl(weft_out, "reviews").0 == 503 && curl(envoy_out, "ratings").0 == 503
    });
    assert!(ok, "a server with the wrong identity was accepted\n{}", logs());
    let stats = get(weft_admin, "/stats/prometheus");
    assert!(
        metric(
            &stats,
            "weft_tls_handshake_failures_total{side=\"upstream\",name=\"reviews\",reason=\"wrong_identity\"}"
        ) >= 1.0,
        "{stats}"
    );
    // Pooled connections from before the change may have carried a request or two meanwhile;
    // new ones reach nothing.
    let before = (reviews_app.hits(), ratings_app.hits());
    assert!(before.0 >= hits.0 && before.1 >= hits.1);
    for _ in 0..3 {
        assert_eq!(curl(weft_out, "reviews").0, 503);
        assert_eq!(curl(envoy_out, "ratings").0, 503);
    }
    assert_eq!((reviews_app.hits(), ratings_app.hits()), before);
}

/// Polls `f` every 200 ms until it is true or `timeout` passes.
/// Envoy's ADS cluster over weft control's TLS port: its client certificate is the `default`
/// secret from the SDS agent, the server is verified against `ROOTCA` and must be weft control's
/// SPIFFE ID.
const TLS_ADS: &str = r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
            - name: default
              sds_config: { api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] }, resource_api_version: V3 }
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
                - san_type: URI
                  matcher: { exact: "spiffe://cluster.local/ns/weft-system/sa/weft-control" }
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: { api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] }, resource_api_version: V3 }
"#;

/// An Envoy sidecar under weft control with nothing in plaintext: `weft sds-agent` gets the
/// workload certificate from the CA on the TLS port (verifying it with the mesh root), and Envoy
/// opens ADS on that same port with it (weft control verifies Envoy's certificate and gives it
/// its service's configuration only). Envoy then routes through what it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gets_its_configuration_over_the_tls_xds_port() {
    let Some(envoy) = peers::envoy_binary() else { return };
    let dir = TempDir::new("mtls-envoy-ads-tls");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let ratings_app = upstream(|_| async move { text(200, "ratings app") }).await;
    let (envoy_in, envoy_out) = (free_addr(), free_addr());
    write_file(
        &dir.join("reg/services.yaml"),
        &format!(
            "services:\n  - name: reviews\n    identities: [{REVIEWS}]\n    endpoints: [{{address: \"{envoy_in}\"}}]\n  - name: ratings\n    mtls: DISABLE\n    endpoints: [{{address: \"{}\"}}]\n",
            ratings_app.addr
        ),
    );
    let (xds, secure) = (free_addr(), free_addr());
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
                &free_addr().to_string(),
            ]),
        &dir.join("control.log"),
    );
    eventually_blocking("weft control's TLS port", WAIT, || TcpStream::connect(secure).ok());
    let sock = dir.join("sds.sock");
    let _agent = spawn(
        Command::new(WEFT)
            .args(["sds-agent", "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .args(["--ca-address", &secure.to_string(), "--ca-root"])
            .arg(dir.join("ca/root-cert.pem"))
            .arg("--token-file")
            .arg(token(&dir, "default/reviews")),
        &dir.join("agent.log"),
    );
    eventually_blocking("the SDS agent's socket", WAIT, || sock.exists().then_some(()));
    let envoy_admin = free_addr();
    let cfg = peers::envoy_ads_bootstrap(ENVOY_NODE, envoy_admin.port(), secure.port(), SDS_CLUSTER)
        .replace(
            "      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: PORT } } } }] }]\n"
                .replace("PORT", &secure.port().to_string())
                .as_str(),
            &format!(
                "      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]\n{TLS_ADS}",
                secure.port()
            ),
        )
        .replace("{{NODE_ID}}", &format!("envoy-ads-tls-{}", std::process::id()))
        .replace("{{OUTBOUND}}", &envoy_out.to_string())
        .replace("{{INBOUND}}", &envoy_in.to_string())
        .replace("{{APP}}", &free_addr().to_string())
        .replace("{{SDS_SOCK}}", &sock.display().to_string());
    assert!(cfg.contains("UpstreamTlsContext"), "the ADS cluster has TLS:\n{cfg}");
    std::fs::write(dir.join("envoy.yaml"), cfg).unwrap();
    let _envoy = spawn(
        Command::new(&envoy).arg("-c").arg(dir.join("envoy.yaml")).args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warn",
        ]),
        &dir.join("envoy.log"),
    );
    let logs = || {
        ["control.log", "agent.log", "envoy.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut last = (0, String::new());
    let ok = wait_for(WAIT, || {
        last = curl(envoy_out, "ratings");
        last.0 == 200
    });
    assert!(
        ok,
        "Envoy never routed with a configuration from the TLS port: {last:?}\n{}",
        logs()
    );
    assert_eq!(last.1, "ratings app");
    // weft control saw Envoy's certificate: the stream is authenticated as reviews.
    let clog = std::fs::read_to_string(dir.join("control.log")).unwrap_or_default();
    assert!(!clog.contains("ADS stream refused"), "{clog}");
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
