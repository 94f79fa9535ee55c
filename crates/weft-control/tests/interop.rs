//! Proxyless gRPC clients nobody here wrote, against weft control, with a rich routing policy
//! (regex and header matches, weighted subsets, retries, timeout, fault, hash, ring hash). The Python
//! grpcio client comes from `interop/install`; the Node client (`tests/interop/grpc_node.js`) is for
//! manual runs (crates/weft/tests/mesh.rs runs @grpc/grpc-js-xds in CI).

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_xds_client_calls_through_weft_control() {
    // grpcio comes from interop/install (run by scripts/test); under CI a missing peer is a failure.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../interop/.venv-grpc/bin/python");
    let python = if std::path::Path::new(venv).exists() {
        venv.to_string()
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{venv} is missing under CI=true: run interop/install");
    } else if std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "python3".to_string()
    } else {
        eprintln!("skipped: no grpcio (run interop/install)");
        return;
    };
    let backend = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new();
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
