//! Tracing and access logs set mesh-wide from `weft control`: a registry file's top-level
//! `tracing:` and `access_log:` put Envoy's `HttpConnectionManager.tracing`
//! (`envoy.tracers.opentelemetry`) and `access_log` (`envoy.access_loggers.http_grpc`) into every
//! sidecar listener. A `weft proxy` sidecar whose own file says nothing about tracing or logs then
//! exports its spans to an OTLP receiver built from the official `opentelemetry-proto` package
//! (interop/otel_trace.py) and its access-log entries to a grpcio AccessLogService
//! (interop/als_receiver.py). A bad value is refused with the field named. A real Envoy sidecar
//! under the same control plane takes the same tracing, and a request it sends to a weft sidecar is
//! one trace across both.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::{eventually_blocking, free_addr, TempDir};

mod blocking;
use blocking::{http, name_server, start_control};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn python(venv: &str) -> Option<PathBuf> {
    peers::interop_peer(venv).map(|v| v.join("bin/python"))
}

/// Starts a python peer and returns it with its first stdout line.
fn spawn(py: &PathBuf, args: &[&str]) -> (ChildGuard, String) {
    let mut child = Command::new(py)
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start python peer");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (guard, line.trim().to_string())
}

/// The OTLP receiver (interop/otel_trace.py) writing spans to `out`, and its gRPC port.
fn otlp_receiver(py: &PathBuf, out: &std::path::Path) -> (ChildGuard, u16) {
    let (guard, line) = spawn(
        py,
        &[
            peers::interop_dir().join("otel_trace.py").to_str().unwrap(),
            "receiver",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let port = line
        .strip_prefix("PORTS ")
        .and_then(|p| p.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {line:?}"));
    (guard, port)
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn mesh_wide_tracing_and_access_log_reach_a_sidecar_without_its_own() {
    let (Some(otel_py), Some(grpc_py)) = (python(".venv-otel"), python(".venv-grpc")) else {
        return;
    };
    let dir = TempDir::new("mesh-telemetry");
    let reg = TempDir::new("mesh-telemetry-reg");
    let spans = dir.join("spans.jsonl");
    let (_otlp, otlp_grpc) = otlp_receiver(&otel_py, &spans);
    let als_out = dir.join("als.jsonl");
    let (_als, line) = spawn(
        &grpc_py,
        &[
            peers::interop_dir().join("als_receiver.py").to_str().unwrap(),
            "--out",
            als_out.to_str().unwrap(),
        ],
    );
    let als_port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("ALS receiver said {line:?}"));

    let app = name_server("web-app");
    let web_in = free_addr();
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n  - name: otel\n    protocol: grpc\n    endpoints: [{{address: \"127.0.0.1:{otlp_grpc}\"}}]\n  - name: als\n    protocol: grpc\n    endpoints: [{{address: \"127.0.0.1:{als_port}\"}}]\n"
        ),
    );
    reg.write(
        "telemetry.yaml",
        "tracing: {service: otel, sampling_percent: 100}\naccess_log: {service: als, log_name: mesh}\n",
    );
    let (_control, xds, _control_admin) = start_control(&reg, &[]);

    // The sidecar's own file: node, admin, xDS. Nothing about tracing or access logs.
    let admin = free_addr();
    let cfg = format!(
        "node:\n  id: web-1\n  cluster: web\n  metadata:\n    weft.role: sidecar\n    weft.inbound: \"{web_in}\"\n    weft.app: \"{app}\"\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\n"
    );
    assert!(!cfg.contains("tracing") && !cfg.contains("access_log"));
    dir.write("web.yaml", &cfg);
    let _web = ChildGuard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("web.yaml"))
            .env("WEFT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft proxy"),
    );
    eventually_blocking("sidecar ready and serving", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200 && http(web_in, "web", "/hello")?.0 == 200).then_some(())
    });
    for i in 0..5 {
        let (code, body) = http(web_in, "web", &format!("/item/{i}")).unwrap();
        assert_eq!((code, body.as_str()), (200, "web-app"));
    }

    // Spans of the inbound listener, with the sidecar's service as service.name.
    let got = eventually_blocking("spans at the OTLP receiver", Duration::from_secs(20), || {
        let s: Vec<Value> = lines(&spans)
            .into_iter()
            // SERVER (2): the inbound listener's span of each request (its CLIENT span, to the
            // app, is there too).
            .filter(|s| s["kind"] == 2 && s.to_string().contains("/item/"))
            .collect();
        (s.len() >= 5).then_some(s)
    });
    eprintln!("first span: {}", got[0]);
    for span in &got {
        assert_eq!(span["service"], "web", "service.name: {span}");
        assert_eq!(span["attributes"]["http.response.status_code"], 200, "{span}");
    }
    // Access-log entries at the ALS receiver, under the configured log name.
    let entries = eventually_blocking("entries at the ALS receiver", Duration::from_secs(20), || {
        let msgs = lines(&als_out);
        let n: usize = msgs
            .iter()
            .filter_map(|m| m["http"].as_array())
            .flatten()
            .filter(|e| e.to_string().contains("/item/"))
            .count();
        (n >= 5).then_some(msgs)
    });
    let ident = entries
        .iter()
        .find(|m| !m["identifier"].is_null())
        .expect("an identifier");
    assert_eq!(ident["identifier"]["log_name"], "mesh", "{ident}");
    assert_eq!(ident["identifier"]["node"]["id"], "web-1", "{ident}");
}

/// Envoy 1.40 as the caller's sidecar and weft as the callee's, both under `weft control` with
/// mesh-wide tracing at 100 %: Envoy accepts the `envoy.tracers.opentelemetry` tracing weft control
/// puts in its listeners and exports to the same OTLP receiver, and each request is one trace:
/// weft's server span continues Envoy's context (W3C `traceparent`), as the child of Envoy's span.
#[test]
fn envoy_and_weft_sidecars_share_one_trace() {
    let (Some(envoy_bin), Some(otel_py)) = (peers::envoy_binary(), python(".venv-otel")) else {
        return;
    };
    let dir = TempDir::new("mesh-telemetry-envoy");
    let reg = TempDir::new("mesh-telemetry-envoy-reg");
    let spans = dir.join("spans.jsonl");
    let (_otlp, otlp_grpc) = otlp_receiver(&otel_py, &spans);
    let app = name_server("web-app");
    let web_in = free_addr();
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n  - name: front\n    endpoints: []\n  - name: otel\n    protocol: grpc\n    endpoints: [{{address: \"127.0.0.1:{otlp_grpc}\"}}]\n"
        ),
    );
    reg.write("telemetry.yaml", "tracing: {service: otel, sampling_percent: 100}\n");
    let (_control, xds, _control_admin) = start_control(&reg, &[]);

    // The callee: a weft sidecar whose own file says nothing about tracing.
    let admin = free_addr();
    dir.write(
        "web.yaml",
        &format!(
            "node:\n  id: web-1\n  cluster: web\n  metadata:\n    weft.role: sidecar\n    weft.inbound: \"{web_in}\"\n    weft.app: \"{app}\"\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\n"
        ),
    );
    let _web = ChildGuard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("web.yaml"))
            .env("WEFT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft proxy"),
    );
    // The caller: Envoy, node cluster `front`, its outbound listener routing by host.
    let outbound = free_addr();
    let cfg = std::fs::read_to_string(peers::interop_dir().join("envoy-ads.yaml"))
        .unwrap()
        .replace("{{NODE_ID}}", &format!("envoy-front-{}", std::process::id()))
        .replace("{{NODE_CLUSTER}}", "front")
        .replace("{{API_TYPE}}", "GRPC")
        .replace("{{OUTBOUND}}", &outbound.to_string())
        .replace("{{INBOUND}}", &free_addr().to_string())
        .replace("{{APP}}", &free_addr().to_string())
        .replace("{{XDS_PORT}}", &xds.port().to_string());
    dir.write("envoy.yaml", &cfg);
    let _envoy = ChildGuard(
        Command::new(&envoy_bin)
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
            .spawn()
            .expect("start envoy"),
    );
    eventually_blocking("Envoy → weft → app", Duration::from_secs(30), || {
        (http(outbound, "web", "/warm")? == (200, "web-app".to_string())).then_some(())
    });
    for i in 0..5 {
        let (code, body) = http(outbound, "web", &format!("/chain/{i}")).unwrap();
        assert_eq!((code, body.as_str()), (200, "web-app"));
    }

    // For every request: Envoy's span (service `front`) and weft's server span (service `web`),
    // one trace, weft's the child of Envoy's.
    let got = eventually_blocking("both sidecars' spans", Duration::from_secs(20), || {
        let all = lines(&spans);
        let linked: Vec<(Value, Value)> = all
            .iter()
            .filter(|s| s["service"] == "web" && s["kind"] == 2 && s.to_string().contains("/chain/"))
            .filter_map(|w| {
                let e = all.iter().find(|e| {
                    e["service"] == "front" && e["trace_id"] == w["trace_id"] && e["span_id"] == w["parent_span_id"]
                })?;
                Some((e.clone(), w.clone()))
            })
            .collect();
        (linked.len() >= 5).then_some(linked)
    });
    eprintln!("envoy span: {}\nweft span: {}", got[0].0, got[0].1);
    let mut traces: Vec<&Value> = got.iter().map(|(_, w)| &w["trace_id"]).collect();
    traces.dedup();
    assert_eq!(traces.len(), got.len(), "one trace per request");
    for (_, w) in &got {
        assert_eq!(w["attributes"]["http.response.status_code"], 200, "{w}");
    }
}

#[test]
fn bad_mesh_telemetry_is_refused_with_the_field_named() {
    let reg = TempDir::new("mesh-telemetry-bad");
    reg.write(
        "services.yaml",
        "services:\n  - name: otel\n    protocol: grpc\n    endpoints: [{address: \"127.0.0.1:4317\"}]\n  - name: web\n    endpoints: [{address: \"127.0.0.1:9\"}]\n",
    );
    for (text, field) in [
        (
            "tracing: {service: otel, sampling_percent: 150}\n",
            "tracing.sampling_percent",
        ),
        ("tracing: {service: nope}\n", "tracing.service"),
        ("access_log: {service: web}\n", "access_log.service"),
        ("access_log: {service: otel, log_name: \"\"}\n", "access_log.log_name"),
        ("tracing: {service: otel, sample: 3}\n", "sample"),
    ] {
        reg.write("telemetry.yaml", text);
        let out = Command::new(WEFT)
            .args(["control", "--check", "--registry"])
            .arg(reg.path())
            .output()
            .expect("weft control --check");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text:?}: {all}");
        assert!(!out.status.success(), "{text:?} accepted: {all}");
        assert!(all.contains(field), "{text:?}: the error names {field}: {all}");
    }
}
