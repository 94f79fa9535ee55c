//! `weft control` turns a mesh authorization policy (Istio AuthorizationPolicy shape, in the
//! registry) into Envoy RBAC filters on the selected service's inbound listener. A real Envoy 1.40
//! and a `weft proxy` sidecar, both under the same control plane, give the same answer to the same
//! requests: allowed ones reach the app, denied ones get 403 `RBAC: access denied`; lifting the
//! policy lets everything through on both.
//!
//! Envoy comes from `interop/install`; outside CI a missing Envoy skips the test, under `CI=true`
//! it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::*;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: ratings\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const SERVICE: &str = "services:\n  - name: ratings\n    protocol: http\n    endpoints: []\n";

const POLICY: &str = r#"authorization:
  - name: no-admin
    service: ratings
    action: DENY
    rules: [{to: [{paths: ["/admin*"]}]}]
  - name: readers
    service: ratings
    action: ALLOW
    rules:
      - to: [{methods: [GET]}]
        when: [{key: "request.headers[x-user]", values: [alice, "b*"]}]
      - from: [{ipBlocks: ["127.0.0.0/8"]}]
        to: [{methods: [POST], paths: ["/ratings/*"], ports: ["{INBOUND_PORT}"]}]
  - name: watch-deletes
    service: ratings
    action: DENY
    dryRun: true
    rules: [{to: [{methods: [DELETE]}]}]
  - name: other-service
    service: reviews
    action: DENY
    rules: [{to: [{paths: ["/ratings*"]}]}]
"#;

/// One request and its status under the policy: (method, path, headers, status).
type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)], u16);

const CASES: &[Case] = &[
    ("GET", "/ratings/1", &[("x-user", "alice")], 200),
    ("GET", "/ratings/1", &[("x-user", "bob")], 200),
    ("GET", "/ratings/1", &[("x-user", "eve")], 403),
    ("GET", "/ratings/1", &[], 403),
    ("GET", "/admin/x", &[("x-user", "alice")], 403),
    ("POST", "/ratings/2", &[], 200),
    ("POST", "/other", &[], 403),
    ("DELETE", "/ratings/1", &[("x-user", "alice")], 403),
];

struct Side {
    _proc: ChildGuard,
    inbound: SocketAddr,
}

fn start_envoy(bin: &Path, dir: &TempDir, xds: SocketAddr, inbound: SocketAddr, app: SocketAddr) -> Side {
    let template = std::fs::read_to_string(peers::interop_dir().join("envoy-ads.yaml")).unwrap();
    let cfg = template
        .replace("{{NODE_ID}}", &format!("envoy-authz-{}", std::process::id()))
        .replace("{{NODE_CLUSTER}}", "ratings")
        .replace("{{API_TYPE}}", "GRPC")
        .replace("{{OUTBOUND}}", &free_addr().to_string())
        .replace("{{INBOUND}}", &inbound.to_string())
        .replace("{{APP}}", &app.to_string())
        .replace("{{XDS_PORT}}", &xds.port().to_string());
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
        .spawn()
        .expect("start envoy");
    Side {
        _proc: ChildGuard(child),
        inbound,
    }
}

fn start_weft(dir: &TempDir, xds: SocketAddr, inbound: SocketAddr, app: SocketAddr) -> Side {
    let cfg = format!(
        "node:\n  id: weft-authz\n  cluster: ratings\n  zone: z1\n  region: local\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{}\"\n    weft.inbound: \"{inbound}\"\n    weft.app: \"{app}\"\nadmin:\n  address: \"{}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n",
        free_addr(),
        free_addr()
    );
    let path = dir.join("weft.yaml");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(WEFT)
        .args(["proxy", "-c"])
        .arg(&path)
        .env("WEFT_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("weft.log")).unwrap())
        .spawn()
        .expect("start weft proxy");
    Side {
        _proc: ChildGuard(child),
        inbound,
    }
}

/// The statuses of every case through `side`, once the answers are all 200 or 403 (listeners
/// and routes warmed).
fn answers(side: &Side) -> Vec<(u16, String)> {
    CASES
        .iter()
        .map(|(m, p, h, _)| http(side.inbound, m, p, h).unwrap_or((0, String::new())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_weft_enforce_the_same_mesh_policy() {
    let Some(bin) = peers::envoy_binary() else { return };
    let dir = TempDir::new("authz-envoy");
    let reg = TempDir::new("reg");
    let app = upstream(|_| async { text(200, "app") }).await;
    let (envoy_in, weft_in) = (free_addr(), free_addr());
    write_file(&reg.join("ratings.yaml"), SERVICE);
    // One policy for both sidecars: the port rule names each side's inbound port, so the policy
    // file is written per side's port list.
    let policy = POLICY.replace(
        "ports: [\"{INBOUND_PORT}\"]",
        &format!("ports: [\"{}\", \"{}\"]", envoy_in.port(), weft_in.port()),
    );
    write_file(&reg.join("policy.yaml"), &policy);
    let xds = free_addr();
    let control_admin = free_addr();
    let _control = ChildGuard(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(&reg.0)
            .args(["--xds", &xds.to_string(), "--admin", &control_admin.to_string()])
            .env("WEFT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft control"),
    );
    eventually_blocking("weft control", Duration::from_secs(20), || TcpStream::connect(xds).ok());
    let envoy = start_envoy(&bin, &dir, xds, envoy_in, app.addr);
    let weft = start_weft(&dir, xds, weft_in, app.addr);
    let want: Vec<u16> = CASES.iter().map(|c| c.3).collect();
    for (name, side) in [("envoy", &envoy), ("weft", &weft)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            let a = answers(side);
            let statuses: Vec<u16> = a.iter().map(|x| x.0).collect();
            if statuses == want {
                break a;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join(&format!("{name}.log"))).unwrap_or_default();
                panic!("{name} never enforced the policy: got {a:?}, want {want:?}\n{name}.log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for ((_, body), (m, p, h, status)) in got.iter().zip(CASES) {
            let expected = if *status == 403 { "RBAC: access denied" } else { "app" };
            assert_eq!(body, expected, "{name}: {m} {p} {h:?}");
        }
    }
    // Lifting the policy (the file removed): both let everything through.
    std::fs::remove_file(reg.join("policy.yaml")).unwrap();
    for (name, side) in [("envoy", &envoy), ("weft", &weft)] {
        eventually_blocking(&format!("{name} to lift the policy"), Duration::from_secs(30), || {
            answers(side).iter().all(|a| a.0 == 200).then_some(())
        });
    }
}
