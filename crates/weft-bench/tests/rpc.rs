//! `dubbo://` and `bolt://` targets on real sockets: against the crate's echo provider
//! (`weft_bench::provider`, what the `rpc-echo` example runs) directly and through an in-process
//! `weft proxy` RPC listener; error statuses (the provider's own and the proxy's no-route replies)
//! and timeouts counted by kind; the open-loop request count.

mod common;

use std::net::SocketAddr;

use common::args;
use weft_bench::{Protocol, Report};
use weft_test_support::start_proxy;

async fn provider() -> SocketAddr {
    weft_bench::provider::spawn("127.0.0.1:0")
        .await
        .expect("provider binds")
        .0
}

async fn bench(line: &str) -> Report {
    weft_bench::run_bench(&args(line))
        .await
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn statuses(r: &Report) -> Vec<(u16, u64)> {
    r.rpc_statuses.iter().map(|(k, v)| (*k, *v)).collect()
}

#[track_caller]
fn all_ok(r: &Report, n: u64, ok_status: u16) {
    assert_eq!(r.requests, n, "{r:#?}");
    assert_eq!(r.responses, n, "{r:#?}");
    assert_eq!(r.successes, n, "{r:#?}");
    assert_eq!(r.errors_total, 0, "{r:#?}");
    assert_eq!(statuses(r), vec![(ok_status, n)]);
    assert_eq!(r.latency.count, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_direct_multiplexed() {
    let p = provider().await;
    let r = bench(&format!(
        "dubbo://{p}/org.example.Greeter/echo?version=1.0.0 -c 2 --streams 8 -n 800 --body-size 100 --timeout 5s"
    ))
    .await;
    assert_eq!(r.protocol, Protocol::Dubbo);
    assert_eq!((r.connections, r.streams), (2, 8));
    all_ok(&r, 800, 20);
    // Each answer echoes the 100-byte string argument: 16-byte header, RESPONSE_VALUE, string.
    assert!(r.bytes_received >= 800 * 118, "{}", r.bytes_received);
    // The JSON report carries the statuses and the new error kind.
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["protocol"], "dubbo");
    assert_eq!(j["rpc_statuses"]["20"], 800);
    assert_eq!(j["errors"]["rpc"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bolt_direct_v1_and_v2_with_crc() {
    let p = provider().await;
    for q in ["", "&bolt=v2", "&bolt=v2crc"] {
        let r = bench(&format!(
            "bolt://{p}/org.example.Greeter/echo?version=1.0{q} -c 2 --streams 4 -n 400 --body-size 1000 -H k:v"
        ))
        .await;
        assert_eq!(r.protocol, Protocol::Bolt);
        all_ok(&r, 400, 0);
        assert!(r.bytes_received >= 400 * 1000, "{q}: {}", r.bytes_received);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_and_timeouts_counted_by_kind() {
    let p = provider().await;
    // The provider answers fail() with SERVICE_ERROR (Dubbo 70) / SERVER_EXCEPTION (Bolt 2).
    for (scheme, status) in [("dubbo", 70), ("bolt", 2)] {
        let r = bench(&format!(
            "{scheme}://{p}/org.example.Greeter/fail -c 1 --streams 4 -n 100"
        ))
        .await;
        assert_eq!((r.requests, r.responses, r.successes), (100, 100, 0), "{r:#?}");
        assert_eq!(r.errors.rpc, 100);
        assert_eq!(r.errors_total, 100);
        assert_eq!(statuses(&r), vec![(status, 100)]);
    }
    // hang() is never answered: timeouts, not I/O errors, and no status.
    for scheme in ["dubbo", "bolt"] {
        let r = bench(&format!(
            "{scheme}://{p}/org.example.Greeter/hang -c 1 --streams 3 -n 6 --timeout 200ms"
        ))
        .await;
        assert_eq!((r.requests, r.responses), (6, 0), "{r:#?}");
        assert_eq!(r.errors.timeout, 6, "{r:#?}");
        assert_eq!(r.errors_total, 6);
        assert!(r.rpc_statuses.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_request_count() {
    let p = provider().await;
    for scheme in ["dubbo", "bolt"] {
        let r = bench(&format!(
            "{scheme}://{p}/org.example.Greeter/echo -c 2 --streams 2 --rate 400 -d 500ms --body-size 10"
        ))
        .await;
        assert_eq!(r.mode, "open-loop");
        assert_eq!(r.requests, 200, "{r:#?}");
        assert_eq!(r.unsent, 0);
        assert_eq!(r.successes, 200);
    }
}

fn proxy_yaml(protocol: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: rpc
    address: 127.0.0.1:0
    rpc:
      protocol: {protocol}
      timeout: 2s
      routes:
        - name: greeter
          match: {{ interface: org.example.Greeter }}
          cluster: echo
clusters:
  - name: echo
    connect_timeout: 1s
    endpoints: [{{ address: "{upstream}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_weft_proxy_with_no_route_counted() {
    let p = provider().await;
    for (scheme, ok, no_route) in [("dubbo", 20, 60), ("bolt", 0, 6)] {
        let proxy = start_proxy(&proxy_yaml(scheme, p));
        let addr = proxy.listener_addr("rpc").unwrap();
        let r = bench(&format!(
            "{scheme}://{addr}/org.example.Greeter/echo?version=1.0.0 -c 2 --streams 16 -n 1000 --body-size 256"
        ))
        .await;
        all_ok(&r, 1000, ok);
        // The proxy's own error replies: status counted, not a transport error.
        let r = bench(&format!(
            "{scheme}://{addr}/org.example.Nope/echo -c 1 --streams 2 -n 50"
        ))
        .await;
        assert_eq!((r.requests, r.responses, r.successes), (50, 50, 0), "{r:#?}");
        assert_eq!((r.errors.rpc, r.errors_total), (50, 50));
        assert_eq!(statuses(&r), vec![(no_route, 50)]);
        // An error answer from the provider passes through.
        let r = bench(&format!("{scheme}://{addr}/org.example.Greeter/fail -n 20")).await;
        assert_eq!((r.responses, r.errors.rpc), (20, 20), "{r:#?}");
    }
}

#[test]
fn rpc_targets_parse_and_refuse_http_flags() {
    let t = weft_bench::parse_target("dubbo://127.0.0.1/a.B/m?version=1.0&group=g", false, None).unwrap();
    assert_eq!((t.protocol, t.port), (Protocol::Dubbo, 20880));
    let rpc = t.rpc.unwrap();
    assert_eq!((rpc.interface.as_str(), rpc.method.as_str()), ("a.B", "m"));
    assert_eq!((rpc.version.as_deref(), rpc.group.as_deref()), (Some("1.0"), Some("g")));
    assert_eq!(rpc.unique_name(), "a.B:1.0:g");
    let t = weft_bench::parse_target("bolt://h:1/a.B/m?bolt=v2crc", false, None).unwrap();
    assert_eq!(t.rpc.unwrap().bolt, weft_bench::BoltVersion::V2Crc);
    for bad in [
        "dubbo://h:1/a.B",
        "dubbo://h:1/a.B/m/x",
        "dubbo://h:1//m",
        "dubbo://h:1/a.B/m?bolt=v2",
        "bolt://h:1/a.B/m?bolt=v3",
        "bolt://h:1/a.B/m?nope=1",
    ] {
        assert!(weft_bench::parse_target(bad, false, None).is_err(), "{bad}");
    }
    assert!(weft_bench::parse_target("dubbo://h:1/a.B/m", true, None).is_err());
    assert!(weft_bench::parse_target("dubbo://h:1/a.B/m", false, Some("/a.B/m")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_echoes_http1_bodies_too() {
    let p = provider().await;
    let r = bench(&format!("http://{p}/echo -m POST --body-size 300 -c 2 -n 100")).await;
    assert_eq!((r.successes, r.errors_total), (100, 0), "{r:#?}");
    assert_eq!(r.bytes_received, 100 * 300);
}

/// A Dubbo provider that answers `per_conn` calls on each connection and then, with `goaway`, sends
/// a go-away (READONLY) and keeps answering what is in flight, or without it closes the connection
/// with the next call unanswered. Returns its address and the connections it accepted.
async fn flaky_dubbo(per_conn: usize, goaway: bool) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_rpc::codec::{Codec, FrameKind};
    use weft_rpc::dubbo::{self, Dubbo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicU64::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut answered = 0;
                loop {
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    while let Some(f) = Dubbo.decode(&mut buf, 1 << 20).unwrap() {
                        if f.kind != FrameKind::Request {
                            continue;
                        }
                        if answered == per_conn && !goaway {
                            return; // closed with this call in flight
                        }
                        let mut out = dubbo::encode_response(f.id, b"N").to_vec();
                        answered += 1;
                        if answered == per_conn && goaway {
                            out.extend_from_slice(&Dubbo.goaway().unwrap());
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_moves_new_calls_and_a_closed_connection_fails_its_calls_as_io() {
    use std::sync::atomic::Ordering;
    // Go-away after 10 answers: every call still answered, on new connections.
    let (addr, conns) = flaky_dubbo(10, true).await;
    let r = bench(&format!("dubbo://{addr}/a.B/m -c 1 -n 50 --timeout 2s")).await;
    assert_eq!((r.responses, r.successes, r.errors_total), (50, 50, 0), "{r:#?}");
    // The probe, then a new connection every 10 calls (11 when a call races the go-away).
    assert!(conns.load(Ordering::Relaxed) >= 5, "{}", conns.load(Ordering::Relaxed));

    // Closed after 10 answers with the 11th call in flight: that call is an I/O error, not a
    // timeout, and the next calls reconnect.
    let (addr, _) = flaky_dubbo(10, false).await;
    let r = bench(&format!("dubbo://{addr}/a.B/m -c 1 -n 33 --timeout 5s")).await;
    assert_eq!(r.requests, 33, "{r:#?}");
    assert_eq!((r.successes, r.errors.io, r.errors.timeout), (30, 3, 0), "{r:#?}");
}
