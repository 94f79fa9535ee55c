//! The Dubbo2 proxy on the wire: real sockets, Dubbo providers built on the crate's codec that
//! answer with their own name, and a raw Dubbo client. Checks routing by method and by argument
//! value, no-route replies, heartbeats, attachments, one-way calls, pipelined multiplexed calls,
//! timeouts, an upstream dying mid-request, oversized and malformed frames, and drain (READONLY).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_rpc::dubbo::{self, Dubbo};
use weft_rpc::hessian::{self, Reader};
use weft_test_support::*;

mod common;
use common::{assert_refused, clusters_yaml, serve_conn};

const SVC: &str = "org.example.Greeter";

struct Provider {
    addr: SocketAddr,
    oneway: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
}

/// A Dubbo provider answering `echo(arg)` with "name:arg:attachment k", `delay(arg, ms)` after
/// `ms`, `slow()` after 3s, `die()` by closing the connection, `note()` (one-way) by counting, and
/// `count()` with that count.
async fn provider(name: &'static str) -> Provider {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let oneway = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let (ow, cs) = (oneway.clone(), conns.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            cs.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(provider_conn(name, s, ow.clone()));
        }
    });
    Provider { addr, oneway, conns }
}

async fn provider_conn(name: &'static str, s: TcpStream, oneway: Arc<AtomicU64>) {
    serve_conn::<Dubbo>(s, |f, tx| {
        if !matches!(f.kind, FrameKind::Request | FrameKind::OneWay) {
            return ControlFlow::Continue(());
        }
        let info = Dubbo.request_info(&f).unwrap();
        let method = info.method.get(&f.data).unwrap().into_owned();
        let arg0 = Dubbo
            .argument(&f, &info, 0)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let att = Dubbo
            .attachment(&f, &info, "k")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let id = f.id;
        let reply = |text: String| {
            let mut v = Vec::new();
            hessian::write_string(&mut v, &text);
            dubbo::encode_response(id, &v)
        };
        match method.as_str() {
            "echo" => {
                let _ = tx.send(reply(format!("{name}:{arg0}:{att}")));
            }
            "delay" => {
                let ms = match Dubbo.argument(&f, &info, 1) {
                    Some(hessian::Value::Int(n)) => n as u64,
                    _ => 0,
                };
                let tx = tx.clone();
                let r = reply(format!("{name}:{arg0}:{att}"));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = tx.send(r);
                });
            }
            "slow" => {
                let tx = tx.clone();
                let r = reply(format!("{name}:slow"));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let _ = tx.send(r);
                });
            }
            "die" => return ControlFlow::Break(()),
            "note" => {
                oneway.fetch_add(1, Ordering::Relaxed);
            }
            "count" => {
                let _ = tx.send(reply(format!("{}", oneway.load(Ordering::Relaxed))));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })
    .await
}

type Client = common::Client<Dubbo>;

impl Client {
    async fn call(&mut self, id: u64, method: &str, args: &[u8], att: &[(&str, &str)]) -> Frame {
        let desc = if args.is_empty() { "" } else { "Ljava/lang/String;" };
        self.send(&dubbo::encode_request(id, true, SVC, "1.0.0", method, desc, args, att))
            .await;
        self.recv().await.expect("a response")
    }
}

fn s(v: &str) -> Vec<u8> {
    let mut b = Vec::new();
    hessian::write_string(&mut b, v);
    b
}

/// The string value of a successful response.
fn value(f: &Frame) -> String {
    assert_eq!(f.status, 20, "status of {f:?}: {:?}", dubbo::error_message(f));
    let mut r = Reader::at(&f.data, dubbo::HEADER_LEN);
    assert_eq!(r.read_int().unwrap(), 1, "RESPONSE_VALUE");
    r.read_opt_string().unwrap().unwrap().into_owned()
}

fn yaml(name: &str, gold: SocketAddr, silver: SocketAddr, extra: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: {name}
    address: 127.0.0.1:0
    rpc:
      protocol: dubbo
      timeout: 2s
      max_frame_size: 65536
{extra}      routes:
        - name: vip
          match: {{ interface: {SVC}, arguments: [{{ index: 0, equals: vip }}] }}
          cluster: gold
        - name: slow
          match: {{ interface: {SVC}, method: slow }}
          cluster: silver
          timeout: 300ms
        - name: grouped
          match: {{ interface: {SVC}, group: g1 }}
          cluster: gold
        - name: greeter
          match: {{ interface: {SVC}, version: 1.0.0 }}
          cluster: silver
{clusters}"#,
        clusters = clusters_yaml(&[("gold", gold), ("silver", silver)])
    )
}

async fn setup(name: &str, extra: &str) -> (std::sync::Arc<weft_proxy::Server>, SocketAddr, Provider, Provider) {
    let gold = provider("gold").await;
    let silver = provider("silver").await;
    let proxy = start_proxy(&yaml(name, gold.addr, silver.addr, extra));
    let addr = proxy.listener_addr(name).unwrap();
    (proxy, addr, gold, silver)
}

#[tokio::test]
async fn routes_by_argument_method_group_and_answers_locally() {
    let (proxy, addr, _g, _s) = setup("route", "").await;
    let mut c = Client::connect(addr).await;
    assert_eq!(value(&c.call(1, "echo", &s("vip"), &[]).await), "gold:vip:-");
    assert_eq!(
        value(&c.call(2, "echo", &s("plain"), &[("k", "v1")]).await),
        "silver:plain:v1"
    );
    assert_eq!(
        value(&c.call(3, "echo", &s("plain"), &[("group", "g1")]).await),
        "gold:plain:-"
    );

    // Heartbeat: answered by the proxy, same id.
    c.send(&Dubbo.heartbeat(77)).await;
    let hb = c.recv().await.unwrap();
    assert_eq!((hb.kind, hb.id, hb.status), (FrameKind::HeartbeatResponse, 77, 20));

    // No route: SERVICE_NOT_FOUND with a message, and the connection stays usable.
    c.send(&dubbo::encode_request(
        4,
        true,
        "org.example.Nope",
        "",
        "x",
        "",
        &[],
        &[],
    ))
    .await;
    let nr = c.recv().await.unwrap();
    assert_eq!((nr.id, nr.status), (4, 60));
    assert!(dubbo::error_message(&nr).unwrap().contains("no route"), "{nr:?}");
    assert_eq!(value(&c.call(5, "echo", &s("again"), &[]).await), "silver:again:-");

    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_requests_total{listener="route",method="echo",outcome="ok"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="route",reason="NR"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"weft_rpc_heartbeats_total{listener="route"} 1"#), "{m}");
}

/// A connection at rest (nothing in flight, nothing read for 1 s) gives up its writer task and
/// response channel (`weft_rpc_connection_parks_total`) and serves its next calls as before. A
/// call in flight for longer than that is answered (a busy connection is not parked); after a
/// rest, a heartbeat, a pipelined burst and a call are answered on the same connection.
#[tokio::test]
async fn a_connection_at_rest_is_parked_and_serves_again() {
    let (proxy, addr, _g, _s) = setup("park", "").await;
    let parks = |p: std::sync::Arc<weft_proxy::Server>| async move {
        stat(&p, r#"weft_rpc_connection_parks_total{listener="park"}"#)
            .await
            .unwrap_or(0.0)
    };
    let mut c = Client::connect(addr).await;
    assert_eq!(value(&c.call(1, "echo", &s("a"), &[]).await), "silver:a:-");
    // In flight for 1.5 s (the route's timeout is 2 s).
    let mut args = s("late");
    hessian::write_int(&mut args, 1500);
    c.send(&dubbo::encode_request(
        2,
        true,
        SVC,
        "1.0.0",
        "delay",
        "Ljava/lang/String;I",
        &args,
        &[],
    ))
    .await;
    let f = c.recv().await.expect("the delayed response");
    assert_eq!((f.id, value(&f).as_str()), (2, "silver:late:-"));
    assert_eq!(parks(proxy.clone()).await, 0.0, "parked while a call was in flight");

    eventually("the connection parked", Duration::from_secs(5), || {
        let p = proxy.clone();
        async move { (parks(p).await >= 1.0).then_some(()) }
    })
    .await;
    c.send(&Dubbo.heartbeat(77)).await;
    let hb = c.recv().await.unwrap();
    assert_eq!((hb.kind, hb.id, hb.status), (FrameKind::HeartbeatResponse, 77, 20));
    let mut burst = Vec::new();
    for i in 0..8u64 {
        burst.extend_from_slice(&dubbo::encode_request(
            10 + i,
            true,
            SVC,
            "1.0.0",
            "echo",
            "Ljava/lang/String;",
            &s(&format!("b{i}")),
            &[],
        ));
    }
    c.send(&burst).await;
    let mut got = Vec::new();
    for _ in 0..8 {
        let f = c.recv().await.expect("a response of the burst");
        got.push((f.id, value(&f)));
    }
    got.sort();
    let want: Vec<(u64, String)> = (0..8u64).map(|i| (10 + i, format!("silver:b{i}:-"))).collect();
    assert_eq!(got, want);

    eventually("parked again", Duration::from_secs(5), || {
        let p = proxy.clone();
        async move { (parks(p).await >= 2.0).then_some(()) }
    })
    .await;
    assert_eq!(value(&c.call(30, "echo", &s("z"), &[]).await), "silver:z:-");
}

#[tokio::test]
async fn one_way_calls_and_pipelined_multiplexing() {
    let (_proxy, addr, _g, silver) = setup("mux", "").await;
    let mut c = Client::connect(addr).await;
    for i in 0..5 {
        c.send(&dubbo::encode_request(
            100 + i,
            false,
            SVC,
            "1.0.0",
            "note",
            "",
            &[],
            &[],
        ))
        .await;
    }
    // One-way calls get no answer; the count call after them sees all five.
    assert_eq!(value(&c.call(1, "count", &[], &[]).await), "5");
    assert_eq!(silver.oneway.load(Ordering::Relaxed), 5);

    // 200 calls pipelined on one connection, answered out of order by the provider, from several
    // client connections sharing one upstream connection: every answer matches its request.
    let mut tasks = Vec::new();
    for k in 0..4u64 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut out = Vec::new();
            for i in 0..50u64 {
                let mut args = s(&format!("c{k}r{i}"));
                hessian::write_int(&mut args, ((i * 7919) % 40) as i32);
                out.extend_from_slice(&dubbo::encode_request(
                    1000 + i,
                    true,
                    SVC,
                    "1.0.0",
                    "delay",
                    "Ljava/lang/String;I",
                    &args,
                    &[],
                ));
            }
            c.send(&out).await;
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let f = c.recv().await.unwrap();
                let i = f.id - 1000;
                assert_eq!(value(&f), format!("silver:c{k}r{i}:-"));
                assert!(seen.insert(i));
            }
            seen.len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 50);
    }
    assert_eq!(
        silver.conns.load(Ordering::Relaxed),
        1,
        "one multiplexed upstream connection"
    );
}

#[tokio::test]
async fn timeouts_and_upstream_death_answer_every_request() {
    let (proxy, addr, _g, _s) = setup("death", "").await;
    let mut c = Client::connect(addr).await;
    let t = Instant::now();
    let f = c.call(1, "slow", &[], &[]).await;
    assert_eq!((f.id, f.status), (1, 31), "SERVER_TIMEOUT");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());

    // Three requests in flight (slow ones) when a fourth kills the upstream connection: all
    // four get SERVER_ERROR at once, not at their timeout.
    let mut out = Vec::new();
    for i in 0..3 {
        let mut args = s("x");
        hessian::write_int(&mut args, 1500);
        out.extend_from_slice(&dubbo::encode_request(
            10 + i,
            true,
            SVC,
            "1.0.0",
            "delay",
            "Ljava/lang/String;I",
            &args,
            &[],
        ));
    }
    out.extend_from_slice(&dubbo::encode_request(13, true, SVC, "1.0.0", "die", "", &[], &[]));
    let t = Instant::now();
    c.send(&out).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let f = c.recv().await.unwrap();
        assert_eq!(f.status, 80, "{:?}", dubbo::error_message(&f));
        ids.push(f.id);
    }
    ids.sort();
    assert_eq!(ids, vec![10, 11, 12, 13]);
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    // A new upstream connection serves the next call.
    assert_eq!(value(&c.call(20, "echo", &s("after"), &[]).await), "silver:after:-");
    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="death",reason="UT"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="death",reason="UF"} 4"#),
        "{m}"
    );
}

#[tokio::test]
async fn bad_frames_get_an_error_then_close() {
    let (proxy, addr, _g, _s) = setup("bad", "").await;
    // Oversized (limit 64 KiB): BAD_REQUEST naming the request, then close.
    let mut c = Client::connect(addr).await;
    let big = dubbo::encode_request(
        9,
        true,
        SVC,
        "1.0.0",
        "echo",
        "Ljava/lang/String;",
        &s(&"x".repeat(70_000)),
        &[],
    );
    c.send(&big[..16]).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.id, f.status), (9, 40));
    assert!(c.recv().await.is_none(), "closed after the error");

    // Garbage in the body: BAD_REQUEST, close.
    let mut c = Client::connect(addr).await;
    let mut bad = dubbo::encode_request(5, true, SVC, "1.0.0", "echo", "", &[], &[]).to_vec();
    bad[16] = 0x40; // a reserved hessian code where the dubbo version string starts
    c.send(&bad).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.id, f.status), (5, 40));
    assert!(c.recv().await.is_none());

    // Not Dubbo at all: closed without a reply.
    let mut c = Client::connect(addr).await;
    c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(c.recv().await.is_none());

    // Other connections are untouched.
    let mut c = Client::connect(addr).await;
    assert_eq!(value(&c.call(1, "echo", &s("ok"), &[]).await), "silver:ok:-");
    let m = stats(&proxy).await;
    for reason in ["frame_too_large", "malformed", "bad_magic"] {
        assert!(
            m.contains(&format!(
                r#"weft_rpc_decode_errors_total{{listener="bad",reason="{reason}"}} 1"#
            )),
            "{reason}: {m}"
        );
    }
}

#[tokio::test]
async fn drain_sends_readonly_and_closes_when_idle() {
    let (proxy, addr, _g, _s) = setup("drain", "").await;
    let mut c = Client::connect(addr).await;
    // A call in flight during the drain still gets its answer.
    let mut args = s("inflight");
    hessian::write_int(&mut args, 300);
    c.send(&dubbo::encode_request(
        1,
        true,
        SVC,
        "1.0.0",
        "delay",
        "Ljava/lang/String;I",
        &args,
        &[],
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.start_drain();
    let ro = c.recv().await.unwrap();
    assert_eq!(ro.kind, FrameKind::GoAway, "READONLY event first");
    let f = c.recv().await.unwrap();
    assert_eq!(value(&f), "silver:inflight:-");
    assert!(c.recv().await.is_none(), "closed once idle");
}

/// One Dubbo call over any stream (TLS here): the request's bytes, then the first whole frame
/// back; panics after 5s.
async fn call_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, req: &[u8]) -> Frame {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(f) = Dubbo.decode(&mut buf, 1 << 20).unwrap() {
                return f;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0, "closed before a response");
        }
    })
    .await
    .expect("a response within 5s")
}

/// A Dubbo listener with `tls` (PERMISSIVE: TLS and plaintext on one port) terminates TLS: a
/// TLS caller (chain verified against the test CA) is routed and answered over TLS, heartbeats
/// included, and a plaintext caller on the same port too. (Before, the block was ignored: the
/// TLS ClientHello was read as a Dubbo frame and the connection closed.)
#[tokio::test]
async fn tls_listener_serves_dubbo_over_tls() {
    let dir = TempDir::new("dubbo-proxy-tls");
    let ca = weft_tls::testcerts::Ca::new("weft test dubbo_proxy CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["dubbo.example.com"]).write(dir.path(), "leaf");
    let d = dir.path().display();
    let gold = provider("gold").await;
    let silver = provider("silver").await;
    let tls = format!(
        "    tls: {{ mode: PERMISSIVE, certificates: [{{ cert_file: {d}/leaf.crt, key_file: {d}/leaf.key }}] }}\n    rpc:"
    );
    let proxy = start_proxy(&yaml("tls", gold.addr, silver.addr, "").replacen("    rpc:", &tls, 1));
    let addr = proxy.listener_addr("tls").unwrap();

    let mut roots = weft_tls::rustls::RootCertStore::empty();
    for c in weft_tls::pem::read_certs("ca", &dir.join("ca.crt")).unwrap() {
        roots.add(c).unwrap();
    }
    let config = weft_tls::client_config(
        weft_tls::Trust::Roots(Arc::new(roots)),
        vec![],
        weft_tls::ClientCert::None,
        vec![],
        weft_tls::TlsVersion::V12,
        "test.",
    )
    .unwrap();
    let connector = weft_tls::Connector::new(config, "dubbo.example.com", "test.").unwrap();
    let mut t = connector
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let f = call_over(
        &mut t,
        &dubbo::encode_request(1, true, SVC, "1.0.0", "echo", "Ljava/lang/String;", &s("vip"), &[]),
    )
    .await;
    assert_eq!(value(&f), "gold:vip:-");
    let f = call_over(
        &mut t,
        &dubbo::encode_request(
            2,
            true,
            SVC,
            "1.0.0",
            "echo",
            "Ljava/lang/String;",
            &s("x"),
            &[("k", "v")],
        ),
    )
    .await;
    assert_eq!(value(&f), "silver:x:v");
    let f = call_over(&mut t, &Dubbo.heartbeat(9)).await;
    assert_eq!((f.kind, f.id), (FrameKind::HeartbeatResponse, 9));
    let f = call_over(
        &mut t,
        &dubbo::encode_request(3, true, "org.example.Nope", "1.0.0", "echo", "", &[], &[]),
    )
    .await;
    assert_eq!(f.status, 60, "{:?}", dubbo::error_message(&f));

    // Plaintext on the same port (PERMISSIVE).
    let mut c = Client::connect(addr).await;
    assert_eq!(value(&c.call(4, "echo", &s("vip"), &[]).await), "gold:vip:-");
}

#[test]
fn config_errors_name_the_field() {
    let bad = r#"
listeners:
  - name: d
    address: 127.0.0.1:0
    rpc:
      protocol: thrift
      max_frame_size: 1
      routes:
        - match: { arguments: [{ equals: x }] }
          cluster: nope
        - {}
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
    assert_refused(
        bad,
        &[
            "listeners[0].rpc.protocol",
            "listeners[0].rpc.max_frame_size",
            "listeners[0].rpc.routes[0].cluster: unknown cluster",
            "listeners[0].rpc.routes[0].match.arguments[0].index",
            "listeners[0].rpc.routes[1].cluster",
        ],
    );
}
