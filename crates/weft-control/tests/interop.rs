//! Proxyless gRPC clients nobody here wrote, against weft control, with a rich routing policy
//! (regex and header matches, weighted subsets, retries, timeout, fault, hash, ring hash). The Python
//! grpcio client comes from `interop/install`; the Node client (`tests/interop/grpc_node.js`) is for
//! manual runs (crates/weft/tests/mesh.rs runs @grpc/grpc-js-xds in CI).

mod common;

use weft_test_support::{free_port, peers};

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_xds_client_calls_through_weft_control() {
    // grpcio comes from interop/install (run by scripts/test); under CI a missing peer is a failure.
    let Some(python) = grpcio_python() else {
        return;
    };
    let backend = free_port();
    let dir = TempDir::new("control");
    dir.write(
        "echo.yaml",
        &format!(
            r#"
services:
  - name: echo
    port: 50051
    protocol: grpc
    endpoints:
      - {{address: "127.0.0.1:{backend}", labels: {{version: v1}}, locality: {{region: r, zone: z}}}}
routes:
  - service: echo
    http:
      - match: [{{regex: "^/test\\.Echo/.*", headers: {{x-never: {{present: true}}}}}}]
        route: [{{destination: echo, subset: v1}}]
      - match: [{{prefix: /test.Echo/}}]
        route: [{{destination: echo, subset: v1, weight: 50}}, {{destination: echo, weight: 50}}]
        retries: {{attempts: 2, retry_on: [unavailable]}}
        timeout: 3s
        fault: {{delay: {{fixed: 1ms, percent: 50}}}}
        hash: {{header: x-user}}
destinations:
  - service: echo
    lb: ring_hash
    subsets: [{{name: v1, labels: {{version: v1}}}}]
"#
        ),
    );
    let cp = start(&dir).await;
    wait_ready(&cp).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_python.py");
    let bootstrap = dir.path().join("bootstrap.json");
    for target in ["xds:///echo", "xds:///echo:50051"] {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.args([
            script,
            &cp.xds_addr().to_string(),
            &backend.to_string(),
            target,
            &bootstrap.display().to_string(),
        ])
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("python client timed out")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("OK"),
            "{target}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, metrics) = http_get(cp.admin_addr().unwrap(), "/metrics").await;
    assert!(!metrics.contains("weft_control_nacks_total"), "a NACK: {metrics}");
    assert!(metrics.contains("weft_control_acks_total{type=\"lds\"}"), "{metrics}");
    cp.stop().await;
}

/// interop/.venv-grpc's Python, else (outside CI only) a `python3` that has grpcio; None after a
/// skip note when there is neither.
fn grpcio_python() -> Option<String> {
    let venv = peers::interop_dir().join(".venv-grpc/bin/python");
    if venv.exists() {
        return Some(venv.display().to_string());
    }
    if peers::ci() {
        peers::missing(&venv.display().to_string(), "run interop/install");
    }
    let system = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !system {
        peers::missing("grpcio", "run interop/install");
    }
    system.then(|| "python3".to_string())
}

/// A destination with `lb: <lb>` for service `echo` (gRPC) at `backend`.
fn lb_registry(backend: u16, lb: &str) -> TempDir {
    let dir = TempDir::new("control");
    dir.write(
        "echo.yaml",
        &format!(
            r#"
services:
  - name: echo
    port: 50051
    protocol: grpc
    endpoints:
      - {{address: "127.0.0.1:{backend}", labels: {{version: v1}}, locality: {{region: r, zone: z}}}}
routes:
  - service: echo
    http:
      - match: [{{prefix: /test.Echo/}}]
        route: [{{destination: echo, subset: v1, weight: 50}}, {{destination: echo, weight: 50}}]
        hash: {{header: x-user}}
destinations:
  - service: echo
    lb: {lb}
    subsets: [{{name: v1, labels: {{version: v1}}}}]
"#
        ),
    );
    dir
}

async fn run_client(mut cmd: tokio::process::Command, what: &str) {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK"),
        "{what}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lb: least_request`, `random` and `maglev` are policies no proxyless gRPC client implemented
/// here has (grpcio 1.85: round_robin, ring_hash, wrr_locality, pick_first, weighted round robin;
/// grpc-js-xds 1.14 the same minus ring_hash's Maglev cousin). Their clusters used to be NACKed and
/// every call failed; now gRPC clients get a `load_balancing_policy` list whose first entry they
/// support is used. A fresh client's calls succeed and nothing is NACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_a_least_request_random_or_maglev_destination() {
    let Some(python) = grpcio_python() else {
        return;
    };
    for lb in ["least_request", "random", "maglev"] {
        let backend = free_port();
        let dir = lb_registry(backend, lb);
        let cp = start(&dir).await;
        wait_ready(&cp).await;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_python.py");
        let bootstrap = dir.path().join("bootstrap.json");
        let mut cmd = tokio::process::Command::new(&python);
        cmd.env("PYTHONDONTWRITEBYTECODE", "1").args([
            script,
            &cp.xds_addr().to_string(),
            &backend.to_string(),
            "xds:///echo",
            &bootstrap.display().to_string(),
        ]);
        run_client(cmd, &format!("grpcio, lb {lb}")).await;
        let (_, metrics) = http_get(cp.admin_addr().unwrap(), "/metrics").await;
        assert!(
            !metrics.contains("weft_control_nacks_total"),
            "lb {lb}: a NACK: {metrics}"
        );
        cp.stop().await;
    }
}

/// The same with Node's @grpc/grpc-js-xds (from interop/install).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_grpc_js_xds_calls_a_least_request_random_or_maglev_destination() {
    let Some(modules) = peers::interop_peer("node/node_modules/@grpc/grpc-js-xds") else {
        return;
    };
    let modules = modules
        .parent()
        .and_then(|p| p.parent())
        .expect("node_modules")
        .to_path_buf();
    for lb in ["least_request", "random", "maglev"] {
        let backend = free_port();
        let dir = lb_registry(backend, lb);
        let cp = start(&dir).await;
        wait_ready(&cp).await;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_node.js");
        let bootstrap = dir.path().join("bootstrap.json");
        let mut cmd = tokio::process::Command::new("node");
        cmd.env("NODE_PATH", &modules).args([
            script,
            &cp.xds_addr().to_string(),
            &backend.to_string(),
            "xds:///echo",
            &bootstrap.display().to_string(),
        ]);
        run_client(cmd, &format!("grpc-js-xds, lb {lb}")).await;
        let (_, metrics) = http_get(cp.admin_addr().unwrap(), "/metrics").await;
        assert!(
            !metrics.contains("weft_control_nacks_total"),
            "lb {lb}: a NACK: {metrics}"
        );
        cp.stop().await;
    }
}
