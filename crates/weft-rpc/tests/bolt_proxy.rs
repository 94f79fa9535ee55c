//! The Bolt proxy on the wire: real sockets, Bolt providers built on the crate's codec that answer
//! with their own name (in the protocol version, and with the CRC switch, of the request), and a raw
//! Bolt client. Checks routing by method header, no-route and timeout replies with Bolt's own
//! status codes, heartbeats, v2 frames with CRC32 through id rewriting, pipelined multiplexed calls,
//! drain (no go-away in Bolt: in-flight answers delivered, then the connection closed), and that a
//! CRC mismatch, an oversized frame and garbage close the connection (after an error
//! reply where the header got that far), counted by reason, without touching other connections.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use weft_rpc::bolt::{self, status, Bolt, SWITCH_CRC};
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_rpc::hessian::{self, Reader};
use weft_test_support::*;

mod common;
use common::{assert_refused, clusters_yaml, serve_conn};

const SVC: &str = "org.example.Greeter:1.0.0";

/// A Bolt provider: `echo` answers "name:<k header>", `slow` after 3s.
async fn provider(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(provider_conn(name, s));
        }
    });
    addr
}

async fn provider_conn(name: &'static str, s: TcpStream) {
    serve_conn::<Bolt>(s, |f, tx| {
        if f.kind == FrameKind::Request {
            let info = Bolt.request_info(&f).unwrap();
            let method = info.method.get(&f.data).unwrap().into_owned();
            let k = Bolt
                .attachment(&f, &info, "k")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "-".into());
            let v2 = (f.data[0] == 2).then(|| (f.data[1], f.data[11]));
            let mut body = Vec::new();
            hessian::write_string(&mut body, &format!("{name}:{k}"));
            let resp = bolt::encode_response(v2, f.id as u32, status::SUCCESS, &body);
            let delay = match method.as_str() {
                "slow" => 3000,
                "wait300" => 300,
                _ => (f.id % 7) * 3,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = tx.send(resp);
            });
        }
        ControlFlow::Continue(())
    })
    .await
}

type Client = common::Client<Bolt>;

fn request(v2: Option<(u8, u8)>, id: u32, method: &str, k: Option<&str>) -> bytes::Bytes {
    let mut h = vec![("sofa_head_target_service", SVC), ("sofa_head_method_name", method)];
    if let Some(k) = k {
        h.push(("k", k));
    }
    bolt::encode_request(v2, id, true, 3000, &h, b"opaque content, never parsed")
}

fn value(f: &Frame) -> String {
    assert_eq!(f.status, status::SUCCESS, "{f:?}: {:?}", bolt::error_message(f));
    let c = bolt::content(f).unwrap();
    Reader::new(c).read_opt_string().unwrap().unwrap().into_owned()
}

fn yaml(name: &str, gold: SocketAddr, silver: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: {name}
    address: 127.0.0.1:0
    rpc:
      protocol: bolt
      timeout: 2s
      max_frame_size: 4096
      routes:
        - name: slow
          match: {{ interface: org.example.Greeter, method: slow }}
          cluster: silver
          timeout: 300ms
        - name: vip
          match: {{ interface: org.example.Greeter, attachments: {{ k: vip }} }}
          cluster: gold
        - name: greeter
          match: {{ interface: org.example.Greeter, version: 1.0.0 }}
          cluster: silver
{clusters}"#,
        clusters = clusters_yaml(&[("gold", gold), ("silver", silver)])
    )
}

async fn setup(name: &str) -> (std::sync::Arc<weft_proxy::Server>, SocketAddr) {
    let gold = provider("gold").await;
    let silver = provider("silver").await;
    let proxy = start_proxy(&yaml(name, gold, silver));
    let addr = proxy.listener_addr(name).unwrap();
    (proxy, addr)
}

#[tokio::test]
async fn routes_answers_locally_and_multiplexes() {
    let (proxy, addr) = setup("bolt_route").await;
    let mut c = Client::connect(addr).await;
    c.send(&request(None, 1, "echo", Some("vip"))).await;
    let r = c.recv().await.unwrap();
    assert_eq!((r.kind, r.id), (FrameKind::Response, 1));
    assert_eq!(value(&r), "gold:vip");
    c.send(&request(None, 2, "echo", Some("x"))).await;
    assert_eq!(value(&c.recv().await.unwrap()), "silver:x");

    // v2 with CRC32: the proxy rewrites the id upstream and back, the CRC stays valid (the
    // client's decoder checks it).
    c.send(&request(Some((2, SWITCH_CRC)), 3, "echo", None)).await;
    let r = c.recv().await.unwrap();
    assert_eq!((r.id, r.data[0], r.data[11]), (3, 2, SWITCH_CRC));
    assert_eq!(value(&r), "silver:-");

    // Heartbeat: answered by the proxy with the same id.
    c.send(&Bolt.heartbeat(77)).await;
    let hb = c.recv().await.unwrap();
    assert_eq!((hb.kind, hb.id, hb.status), (FrameKind::HeartbeatResponse, 77, 0));

    // No route: NO_PROCESSOR with a message; the connection stays usable.
    let nr = bolt::encode_request(None, 4, true, 3000, &[("service", "org.example.Nope:1.0")], b"");
    c.send(&nr).await;
    let nr = c.recv().await.unwrap();
    assert_eq!((nr.id, nr.status), (4, status::NO_PROCESSOR));
    assert!(bolt::error_message(&nr).unwrap().contains("no route"), "{nr:?}");

    // Timeout: the route's 300ms, answered with TIMEOUT.
    let t0 = std::time::Instant::now();
    c.send(&request(None, 5, "slow", None)).await;
    let t = c.recv().await.unwrap();
    assert_eq!((t.id, t.status), (5, status::TIMEOUT));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // The caller's own timeout field (100ms), shorter than the route's 2s, bounds weft's deadline.
    let h = [("sofa_head_target_service", SVC), ("sofa_head_method_name", "wait300")];
    c.send(&bolt::encode_request(None, 6, true, 100, &h, b"")).await;
    let t0 = std::time::Instant::now();
    let t = c.recv().await.unwrap();
    assert_eq!((t.id, t.status), (6, status::TIMEOUT));
    assert!(t0.elapsed() < Duration::from_millis(290), "{:?}", t0.elapsed());

    // 200 calls pipelined from 4 connections (ids overlapping across connections), answered out
    // of order by the provider over one upstream connection: every answer matches its request.
    let mut tasks = Vec::new();
    for k in 0..4u32 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut all = Vec::new();
            for i in 0..50u32 {
                let v2 = (i % 2 == 0).then_some((2, SWITCH_CRC));
                all.extend_from_slice(&request(v2, 1000 + i, "echo", Some(&format!("{k}-{i}"))));
            }
            c.send(&all).await;
            let mut seen = std::collections::HashMap::new();
            for _ in 0..50 {
                let f = c.recv().await.unwrap();
                seen.insert(f.id as u32, value(&f));
            }
            for i in 0..50u32 {
                assert_eq!(seen[&(1000 + i)], format!("silver:{k}-{i}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let m = stats(&proxy).await;
    for want in [
        r#"weft_rpc_requests_total{listener="bolt_route",method="echo",outcome="ok"} 203"#,
        r#"weft_rpc_local_replies_total{listener="bolt_route",reason="NR"} 1"#,
        r#"weft_rpc_local_replies_total{listener="bolt_route",reason="UT"} 2"#,
        r#"weft_rpc_heartbeats_total{listener="bolt_route"} 1"#,
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let (proxy, addr) = setup("bolt_bad").await;
    let mut good = Client::connect(addr).await;
    good.send(&request(None, 1, "echo", None)).await;
    assert_eq!(value(&good.recv().await.unwrap()), "silver:-");

    // CRC mismatch: CODEC_EXCEPTION for that id, then the connection closes.
    let mut c = Client::connect(addr).await;
    let mut f = request(Some((2, SWITCH_CRC)), 9, "echo", None).to_vec();
    let n = f.len() - 5;
    f[n] ^= 0x40;
    c.send(&f).await;
    let r = c.recv().await.unwrap();
    assert_eq!((r.id, r.status), (9, status::CODEC_EXCEPTION));
    assert!(bolt::error_message(&r).unwrap().contains("CRC32"), "{r:?}");
    assert!(c.recv().await.is_none(), "closed after a CRC mismatch");

    // Oversized (limit 4096): answered from the header alone, then closed.
    let mut c = Client::connect(addr).await;
    let big = bolt::encode_request(None, 10, true, 3000, &[("service", SVC)], &vec![7u8; 8192]);
    c.send(&big[..100]).await;
    let r = c.recv().await.unwrap();
    assert_eq!((r.id, r.status), (10, status::CODEC_EXCEPTION));
    assert!(c.recv().await.is_none(), "closed after an oversized frame");

    // Garbage: closed without a reply.
    let mut c = Client::connect(addr).await;
    c.send(b"\x07garbage that is no bolt frame at all").await;
    assert!(c.recv().await.is_none());

    // The first connection is untouched.
    good.send(&request(None, 2, "echo", Some("still"))).await;
    assert_eq!(value(&good.recv().await.unwrap()), "silver:still");

    let m = stats(&proxy).await;
    for want in [
        r#"weft_rpc_decode_errors_total{listener="bolt_bad",reason="crc_mismatch"} 1"#,
        r#"weft_rpc_decode_errors_total{listener="bolt_bad",reason="frame_too_large"} 1"#,
        r#"weft_rpc_decode_errors_total{listener="bolt_bad",reason="bad_magic"} 1"#,
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
}

#[tokio::test]
async fn drain_answers_in_flight_then_closes() {
    let (proxy, addr) = setup("bolt_drain").await;
    let mut busy = Client::connect(addr).await;
    let mut idle = Client::connect(addr).await;
    idle.send(&request(None, 1, "echo", None)).await;
    assert_eq!(value(&idle.recv().await.unwrap()), "silver:-");
    busy.send(&request(None, 2, "wait300", None)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = std::time::Instant::now();
    proxy.start_drain();
    // The idle connection is closed at once (Bolt has no go-away message to send first).
    assert!(idle.recv().await.is_none(), "idle connection closed on drain");
    assert!(t0.elapsed() < Duration::from_millis(250), "{:?}", t0.elapsed());
    // The busy one gets its answer, then is closed.
    let f = busy.recv().await.unwrap();
    assert_eq!((f.kind, f.id), (FrameKind::Response, 2));
    assert_eq!(value(&f), "silver:-");
    assert!(busy.recv().await.is_none(), "closed once nothing is in flight");
}

#[test]
fn config_errors_name_the_field() {
    let bad = r#"
listeners:
  - name: b
    address: 127.0.0.1:0
    rpc:
      protocol: bolt
      sniff_timeout: 50ms
      routes:
        - match: { protocol: thrift }
          cluster: c
  - name: a
    address: 127.0.0.1:0
    rpc:
      protocol: auto
      sniff_timeout: 30s
      routes: [{ cluster: c }]
    tcp_proxy: { cluster: nope }
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
    assert_refused(
        bad,
        &[
            "listeners[0].rpc.sniff_timeout: only applies to protocol: auto",
            "listeners[0].rpc.routes[0].match.protocol: unknown value \"thrift\"",
            "listeners[1].rpc.sniff_timeout: must be at most 10s",
            "listeners[1].tcp_proxy.cluster",
        ],
    );
    // A valid auto listener: rpc with http and tcp_proxy next to it.
    let ok = r#"
listeners:
  - name: a
    address: 127.0.0.1:0
    rpc: { protocol: auto, routes: [{ cluster: c }] }
    tcp_proxy: { cluster: c }
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
    weft_config::from_yaml(ok).unwrap();
}
