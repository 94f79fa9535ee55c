//! Per-endpoint mesh mTLS under `weft control`, as Istio does it for services some of whose pods
//! have no sidecar: the registry marks one endpoint of `reviews` `sidecar: false`, so weft control
//! sends `reviews`' cluster with `transport_socket_matches` (`tlsMode-istio` → mTLS,
//! `tlsMode-disabled` → plaintext) and `tlsMode: istio` on the endpoint that has a sidecar.
//!
//! A real Envoy 1.40 sidecar (productpage, its identity from `weft sds-agent`) and a weft sidecar
//! (reviews, the mesh's default PERMISSIVE inbound: a service set `mtls: STRICT` explicitly gets
//! mTLS to every endpoint instead) both call `reviews` and reach both endpoints: the weft sidecar's
//! inbound over mTLS (its app sees the caller's SPIFFE ID in `x-forwarded-client-cert`), the
//! plaintext app directly (no client certificate, nothing forwarded).
//!
//! Envoy comes from `interop/install`; outside CI a missing Envoy skips the test, under `CI=true`
//! it fails.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::*;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";
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

fn get(addr: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
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

const ENVOY_NODE: &str = r#"  id: {{NODE_ID}}
  cluster: productpage
  locality: { region: local, zone: z1 }
  metadata:
    weft.role: sidecar
    weft.outbound: "{{OUTBOUND}}"
    weft.inbound: "{{INBOUND}}"
    weft.app: "{{APP}}""#;

const SDS_CLUSTER: &str = r#"  - name: sds-grpc
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

/// Sends `n` requests through `outbound` to reviews; every one must be a 200. Bodies by app.
fn spread(outbound: SocketAddr, n: usize) -> HashMap<String, Vec<String>> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        let (status, body) = curl(outbound, "reviews");
        assert_eq!(status, 200, "request {i} through {outbound}: {body}");
        let app = body.split(';').next().unwrap_or_default().to_string();
        seen.entry(app).or_default().push(body);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_weft_reach_a_sidecar_endpoint_with_mtls_and_a_plain_one_without() {
    let Some(envoy) = peers::envoy_binary() else { return };
    let dir = TempDir::new("endpoint-mtls-envoy");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let echo = |name: &'static str| {
        upstream(move |s| async move {
            let xfcc = s
                .headers
                .get("x-forwarded-client-cert")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            text(200, &format!("{name}; xfcc={xfcc}"))
        })
    };
    let (productpage_app, reviews_app, plain_app) =
        (echo("productpage").await, echo("sidecar").await, echo("plain").await);
    let (envoy_in, envoy_out, weft_in, weft_out) = (free_addr(), free_addr(), free_addr(), free_addr());
    std::fs::write(
        dir.join("reg/services.yaml"),
        format!(
            "services:\n  - name: productpage\n    identities: [{PRODUCTPAGE}]\n    endpoints: [{{address: \"{envoy_in}\"}}]\n  - name: reviews\n    identities: [{REVIEWS}]\n    endpoints:\n      - {{address: \"{weft_in}\"}}\n      - {{address: \"{}\", sidecar: false}}\n",
            plain_app.addr
        ),
    )
    .unwrap();

    let xds = free_addr();
    let control_admin = free_addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args(["--xds", &xds.to_string(), "--admin", &control_admin.to_string()]),
        &dir.join("control.log"),
    );
    eventually_blocking("weft control", WAIT, || TcpStream::connect(xds).ok());

    // Envoy (productpage).
    let sock = dir.join("sds.sock");
    let _agent = spawn(
        Command::new(WEFT)
            .args(["sds-agent", "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .args(["--ca-address", &xds.to_string(), "--token-file"])
            .arg(token(&dir, "default/productpage")),
        &dir.join("agent.log"),
    );
    eventually_blocking("the SDS agent's socket", WAIT, || sock.exists().then_some(()));
    let envoy_admin = free_addr();
    let cfg = peers::envoy_ads_bootstrap(ENVOY_NODE, envoy_admin.port(), xds.port(), SDS_CLUSTER)
        .replace("{{NODE_ID}}", &format!("envoy-ep-{}", std::process::id()))
        .replace("{{OUTBOUND}}", &envoy_out.to_string())
        .replace("{{INBOUND}}", &envoy_in.to_string())
        .replace("{{APP}}", &productpage_app.addr.to_string())
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

    // weft (reviews): the inbound sidecar, and a caller of reviews itself.
    let weft_admin = free_addr();
    std::fs::write(
        dir.join("weft.yaml"),
        format!(
            "node:\n  id: weft-ep\n  cluster: reviews\n  zone: z1\n  region: local\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{weft_out}\"\n    weft.inbound: \"{weft_in}\"\n    weft.app: \"{}\"\nadmin:\n  address: \"{weft_admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n",
            reviews_app.addr
        ),
    )
    .unwrap();
    let _weft = spawn(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("weft.yaml"))
            .args(["--ca-address", &xds.to_string(), "--identity-token-file"])
            .arg(token(&dir, "default/reviews")),
        &dir.join("weft.log"),
    );
    let logs = || {
        ["control.log", "agent.log", "envoy.log", "weft.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Both sidecars ready: a first 200 through each.
    for out in [envoy_out, weft_out] {
        let mut last = (0, String::new());
        let ok = wait_for(WAIT, || {
            last = curl(out, "reviews");
            last.0 == 200
        });
        assert!(ok, "{out} → reviews never answered 200: {last:?}\n{}", logs());
    }

    // Envoy → reviews: round robin over the sidecar endpoint (mTLS: weft verified Envoy's
    // certificate and tells its app productpage's SPIFFE ID) and the plaintext app.
    let seen = spread(envoy_out, 6);
    eprintln!("Envoy → reviews: {seen:?}");
    let sidecar = seen.get("sidecar").unwrap_or_else(|| panic!("{seen:?}\n{}", logs()));
    let plain = seen.get("plain").unwrap_or_else(|| panic!("{seen:?}\n{}", logs()));
    assert_eq!((sidecar.len(), plain.len()), (3, 3), "{seen:?}");
    assert!(
        sidecar
            .iter()
            .all(|b| b.contains(&format!("URI={PRODUCTPAGE}")) && b.contains(&format!("By={REVIEWS}"))),
        "{sidecar:?}"
    );
    assert!(plain.iter().all(|b| b == "plain; xfcc=none"), "{plain:?}");
    let envoy_stats = get(envoy_admin, "/stats?filter=^cluster.reviews.");
    eprintln!(
        "Envoy's reviews cluster counters (TLS):\n{}",
        envoy_stats
            .lines()
            .filter(|l| l.contains("ssl.handshake") || l.contains("tlsMode"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Envoy chose the tlsMode-istio socket for one host and the plaintext one for the other, and
    // the TLS one handshook.
    let count = |name: &str| {
        envoy_stats
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    assert!(
        count("cluster.reviews.tlsMode-istio.total_match_count") >= 1,
        "{envoy_stats}"
    );
    assert!(
        count("cluster.reviews.tlsMode-disabled.total_match_count") >= 1,
        "{envoy_stats}"
    );
    assert!(count("cluster.reviews.ssl.handshake") >= 1, "{envoy_stats}");

    // weft → reviews: the same two endpoints, mTLS to the sidecar (itself) only.
    let seen = spread(weft_out, 6);
    eprintln!("weft → reviews: {seen:?}");
    let sidecar = seen.get("sidecar").unwrap_or_else(|| panic!("{seen:?}\n{}", logs()));
    let plain = seen.get("plain").unwrap_or_else(|| panic!("{seen:?}\n{}", logs()));
    assert_eq!((sidecar.len(), plain.len()), (3, 3), "{seen:?}");
    assert!(
        sidecar.iter().all(|b| b.contains(&format!("URI={REVIEWS}"))),
        "{sidecar:?}"
    );
    assert!(plain.iter().all(|b| b == "plain; xfcc=none"), "{plain:?}");
    let dump = get(weft_admin, "/config_dump");
    assert!(dump.contains("tlsMode-istio"), "{dump}");
}
