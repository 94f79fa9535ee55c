//! TCP echo, h2c and gRPC modes against in-test servers; error accounting.

mod common;

use std::sync::atomic::Ordering;

use common::{args, grpc_server, status_server, tcp_echo_server, Proto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_mode() {
    let server = tcp_echo_server();
    let r = weft_bench::run_bench(&args(&format!(
        "tcp://{} -c 3 -n 300 --body-size 100 --timeout 2s",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, weft_bench::Protocol::Tcp);
    assert_eq!(r.requests, 300);
    assert_eq!(r.responses, 300);
    assert_eq!(r.successes, 300);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.bytes_received, 300 * 100);
    assert_eq!(r.latency.count, 300);
    // 3 connections (+1 reachability probe), reused for every request.
    assert_eq!(server.hits.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_open_loop() {
    let server = tcp_echo_server();
    let r = weft_bench::run_bench(&args(&format!(
        "tcp://{} -c 2 --rate 400 -d 500ms --timeout 2s",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.mode, "open-loop");
    assert_eq!(r.requests, 200);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.bytes_received, 200 * 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_mode() {
    let server = status_server(Proto::H2, 200);
    let r = weft_bench::run_bench(&args(&format!(
        "h2c://{}/hello -c 2 --streams 4 -n 400 -m POST --body-size 10 -H x-test:1",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, weft_bench::Protocol::Http2);
    assert_eq!((r.connections, r.streams), (2, 4));
    assert_eq!(r.requests, 400);
    assert_eq!(r.successes, 400);
    assert_eq!(r.status_classes.s2xx, 400);
    assert_eq!(r.bytes_received, 400 * 5);
    assert_eq!(server.hits.load(Ordering::Relaxed), 400);

    // --h2 with http:// is the same thing, open-loop this time.
    let r = weft_bench::run_bench(&args(&format!(
        "http://{}/ --h2 -c 1 --streams 2 --rate 200 -d 500ms",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, weft_bench::Protocol::Http2);
    assert_eq!(r.requests, 100);
    assert_eq!(r.errors_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mode_ok() {
    let server = grpc_server(0);
    let r = weft_bench::run_bench(&args(&format!(
        "http://{} --grpc-method /test.Echo/Say --grpc-payload 64 -c 2 --streams 2 -n 200",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, weft_bench::Protocol::Grpc);
    assert_eq!(r.requests, 200);
    assert_eq!(r.successes, 200, "{:?}", r.errors);
    assert_eq!(r.errors.grpc, 0);
    // Echoed message: 5-byte header + 64 bytes.
    assert_eq!(r.bytes_received, 200 * 69);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mode_unavailable_counts_errors() {
    let server = grpc_server(14);
    let r = weft_bench::run_bench(&args(&format!(
        "h2c://{} --grpc-method /test.Echo/Say --grpc-payload 8 -c 1 -n 50",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.requests, 50);
    assert_eq!(r.responses, 50);
    assert_eq!(r.successes, 0);
    assert_eq!(r.errors.grpc, 50);
    assert_eq!(r.errors_total, 50);
    assert_eq!(r.status_classes.s2xx, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_errors_are_classified() {
    let s404 = status_server(Proto::H1, 404);
    let r = weft_bench::run_bench(&args(&format!("http://{}/ -c 2 -n 40", s404.addr)))
        .await
        .unwrap();
    assert_eq!((r.errors.status_4xx, r.status_classes.s4xx), (40, 40));
    assert_eq!(r.successes, 0);
    let s503 = status_server(Proto::H1, 503);
    let r = weft_bench::run_bench(&args(&format!("http://{}/ -c 1 -n 10", s503.addr)))
        .await
        .unwrap();
    assert_eq!((r.errors.status_5xx, r.status_classes.s5xx), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_excluded_and_json_serializes() {
    let server = status_server(Proto::H1, 200);
    let r = weft_bench::run_bench(&args(&format!(
        "http://{}/ -c 2 --rate 200 --warmup 300ms -d 500ms --json",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.requests, 100);
    assert!(server.hits.load(Ordering::Relaxed) >= 160);
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["requests"], 100);
    assert!(v["latency"]["p999_us"].is_u64());
    assert!(v["service_time"]["p50_us"].is_u64());
    assert_eq!(v["status_classes"]["2xx"], 100);
    assert_eq!(v["errors"]["timeout"], 0);
}

#[tokio::test]
async fn bad_arguments_and_unreachable_target_fail_early() {
    let e = weft_bench::run_bench(&args("https://127.0.0.1:1/")).await.unwrap_err();
    assert!(e.contains("--cacert") && e.contains("--insecure"), "{e}");
    // A port nobody listens on.
    let port = weft_test_support::dead_addr().port();
    let e = weft_bench::run_bench(&args(&format!("http://127.0.0.1:{port}/ -n 1")))
        .await
        .unwrap_err();
    assert!(e.contains("cannot connect"), "{e}");
    assert!(weft_bench::run_bench(&args("http://127.0.0.1:1/ --streams 2"))
        .await
        .is_err());
}

#[test]
fn run_returns_zero_on_completed_run() {
    let server = status_server(Proto::H1, 200);
    let mut a = args(&format!("http://{}/ -c 1 -n 5 --threads 1", server.addr));
    a.json = true;
    assert_eq!(weft_bench::run(a), 0);
    let port = weft_test_support::dead_addr().port();
    assert_eq!(weft_bench::run(args(&format!("tcp://127.0.0.1:{port} -n 1"))), 2);
    assert_eq!(weft_bench::run(args("https://127.0.0.1:1/")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_server_closing_connections_is_not_an_error() {
    let server = status_server(Proto::H1Close, 200);
    let r = weft_bench::run_bench(&args(&format!("http://{}/ -c 2 -n 100", server.addr)))
        .await
        .unwrap();
    assert_eq!(r.requests, 100);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(r.status_classes.s2xx, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_counted() {
    // Every connection's first request stalls for 2 s; a timed-out HTTP/1.1
    // connection is dropped, so each of the 3 requests times out.
    let server = common::h1_stall_server(std::time::Duration::ZERO, std::time::Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    let r = weft_bench::run_bench(&args(&format!("http://{}/ -c 1 -n 3 --timeout 200ms", server.addr)))
        .await
        .unwrap();
    assert_eq!(r.requests, 3);
    assert_eq!(r.errors.timeout, 3, "{:?}", r.errors);
    assert_eq!(r.responses, 0);
    assert!(t0.elapsed() < std::time::Duration::from_millis(1500));
}
