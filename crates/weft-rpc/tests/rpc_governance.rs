//! The governance of RPC routes on the wire (Dubbo2; Bolt shares the code path): fault injection
//! (abort with the protocol's service error, delay without holding up the caller's other calls),
//! local rate limits (shared and per attachment value), mirroring (a copy of each call to a
//! shadow cluster, its answer dropped; an unreachable shadow changes nothing), and retries on
//! another host: of any call
//! whose connection could not be made, and of an idempotent route's call whose connection closed
//! before the answer (a route that is not idempotent answers that call `SERVER_ERROR`).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use weft_rpc::codec::{Codec, Frame};
use weft_rpc::dubbo::{self, Dubbo};
use weft_rpc::hessian::{self, Reader};
use weft_test_support::*;

mod common;
use common::serve_conn;

const SVC: &str = "org.example.Gov";

/// A provider answering `echo(arg)` with "name:arg", `slow(arg)` after 400 ms, and `once()`
/// by closing its connection the first time it is called (then "name:once"); counts the calls it
/// received.
struct Provider {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
}

async fn provider(name: &'static str) -> Provider {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let died = Arc::new(AtomicBool::new(false));
    let c = calls.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (c, died) = (c.clone(), died.clone());
            tokio::spawn(serve_conn::<Dubbo>(s, move |f, tx| {
                c.fetch_add(1, Ordering::Relaxed);
                let info = Dubbo.request_info(&f).unwrap();
                let method = info.method.get(&f.data).unwrap().into_owned();
                let arg = Dubbo
                    .argument(&f, &info, 0)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let mut v = Vec::new();
                hessian::write_string(
                    &mut v,
                    &format!("{name}:{arg}{}", if method == "once" { "once" } else { "" }),
                );
                let r = dubbo::encode_response(f.id, &v);
                match method.as_str() {
                    "once" if !died.swap(true, Ordering::SeqCst) => return ControlFlow::Break(()),
                    "slow" => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(400)).await;
                            let _ = tx.send(r);
                        });
                    }
                    _ => {
                        let _ = tx.send(r);
                    }
                }
                ControlFlow::Continue(())
            }));
        }
    });
    Provider { addr, calls }
}

type Client = common::Client<Dubbo>;

fn request(id: u64, method: &str, arg: &str, att: &[(&str, &str)]) -> Vec<u8> {
    let mut args = Vec::new();
    let desc = if arg.is_empty() {
        ""
    } else {
        hessian::write_string(&mut args, arg);
        "Ljava/lang/String;"
    };
    dubbo::encode_request(id, true, SVC, "1.0.0", method, desc, &args, att).to_vec()
}

async fn call(c: &mut Client, id: u64, method: &str, arg: &str, att: &[(&str, &str)]) -> Frame {
    c.send(&request(id, method, arg, att)).await;
    let f = c.recv().await.expect("an answer");
    assert_eq!(f.id, id);
    f
}

/// The string answer of a successful response, or the status and error message.
fn answer(f: &Frame) -> Result<String, (u8, String)> {
    if f.status != 20 {
        return Err((f.status as u8, dubbo::error_message(f).unwrap_or_default()));
    }
    let mut r = Reader::at(&f.data, dubbo::HEADER_LEN);
    assert_eq!(r.read_int().unwrap(), 1, "RESPONSE_VALUE");
    Ok(r.read_opt_string().unwrap().unwrap().into_owned())
}

fn config(name: &str, routes: &str, clusters: &str) -> String {
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
      routes:
{routes}
clusters:
{clusters}"#
    )
}

fn cluster(name: &str, eps: &[SocketAddr]) -> String {
    let eps: Vec<String> = eps.iter().map(|e| format!("{{ address: \"{e}\" }}")).collect();
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    lb_policy: round_robin\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

#[tokio::test]
async fn fault_abort_and_delay() {
    let p = provider("p").await;
    let routes = "        - match: { interface: org.example.Gov, method: broken }\n          cluster: c\n          fault: { abort: { percent: 100 } }\n        - match: { interface: org.example.Gov, method: slow }\n          cluster: c\n          fault: { delay: { fixed: 300ms, percent: 100 } }\n        - match: { interface: org.example.Gov }\n          cluster: c\n";
    let proxy = start_proxy(&config("fault", routes, &cluster("c", &[p.addr])));
    let addr = proxy.listener_addr("fault").unwrap();
    let mut c = Client::connect(addr).await;

    // Aborted: the protocol's service error, never sent to the provider.
    let before = p.calls.load(Ordering::Relaxed);
    let f = call(&mut c, 1, "broken", "x", &[]).await;
    let (status, msg) = answer(&f).unwrap_err();
    assert_eq!(status, 70, "SERVICE_ERROR: {msg}");
    assert!(msg.contains("fault injected"), "{msg}");
    assert_eq!(
        p.calls.load(Ordering::Relaxed),
        before,
        "an aborted call reached the provider"
    );

    // Delayed 300 ms (then 400 ms at the provider): the call made after it on the same connection
    // is answered first, at once.
    let t = Instant::now();
    let mut both = request(2, "slow", "late", &[]);
    both.extend_from_slice(&request(3, "echo", "now", &[]));
    c.send(&both).await;
    let first = c.recv().await.unwrap();
    assert_eq!((first.id, answer(&first).unwrap()), (3, "p:now".to_string()));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "held up by the delayed call: {:?}",
        t.elapsed()
    );
    let second = c.recv().await.unwrap();
    assert_eq!((second.id, answer(&second).unwrap()), (2, "p:late".to_string()));
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "not delayed: {:?}",
        t.elapsed()
    );

    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="fault",reason="FI"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn rate_limits_shared_and_per_attachment() {
    let p = provider("p").await;
    let routes = "        - match: { interface: org.example.Gov, method: echo }\n          cluster: c\n          rate_limit: { max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s, descriptor_attachment: user }\n        - match: { interface: org.example.Gov }\n          cluster: c\n          rate_limit: { max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s }\n";
    let proxy = start_proxy(&config("limit", routes, &cluster("c", &[p.addr])));
    let addr = proxy.listener_addr("limit").unwrap();
    let mut c = Client::connect(addr).await;
    let mut id = 0;
    let outcome = |f: Frame| match answer(&f) {
        Ok(_) => "ok".to_string(),
        Err((s, m)) => {
            assert!(m.contains("rate limited"), "{m}");
            format!("{s}")
        }
    };
    // Per user: two each, then THREADPOOL_EXHAUSTED (100).
    let mut got = Vec::new();
    for user in ["ann", "ann", "ann", "bob", "bob", "bob"] {
        id += 1;
        got.push(outcome(call(&mut c, id, "echo", "x", &[("user", user)]).await));
    }
    assert_eq!(got, ["ok", "ok", "100", "ok", "ok", "100"]);
    // The route without a descriptor: one bucket of three for everyone.
    let mut got = Vec::new();
    for _ in 0..4 {
        id += 1;
        got.push(outcome(call(&mut c, id, "whoami", "", &[]).await));
    }
    assert_eq!(got, ["ok", "ok", "ok", "100"]);
    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="limit",reason="RL"} 3"#),
        "{m}"
    );
}

#[tokio::test]
async fn retries_on_another_host() {
    // Connect failures: one live provider and one address where nothing listens, round robin.
    let live = provider("live").await;
    let dead = dead_addr();
    let routes = "        - match: { interface: org.example.Gov, method: echo }\n          cluster: mixed\n          retries: { attempts: 2 }\n        - match: { interface: org.example.Gov, method: once, attachments: { idem: yes } }\n          cluster: flaky\n          retries: { attempts: 1, idempotent: true }\n        - match: { interface: org.example.Gov }\n          cluster: flaky2\n";
    let once = provider("once").await;
    let once2 = provider("once2").await;
    let clusters =
        cluster("mixed", &[dead, live.addr]) + &cluster("flaky", &[once.addr]) + &cluster("flaky2", &[once2.addr]);
    let proxy = start_proxy(&config("retry", routes, &clusters));
    let addr = proxy.listener_addr("retry").unwrap();
    let mut c = Client::connect(addr).await;
    for i in 0..8 {
        let f = call(&mut c, i + 1, "echo", &format!("m{i}"), &[]).await;
        assert_eq!(answer(&f), Ok(format!("live:m{i}")), "call {i}");
    }
    // An idempotent route's call whose connection closed before the answer: sent again.
    let f = call(&mut c, 20, "once", "", &[("idem", "yes")]).await;
    assert_eq!(answer(&f), Ok("once:once".to_string()));
    assert_eq!(once.calls.load(Ordering::Relaxed), 2, "sent twice");
    // The same on a route that is not idempotent: SERVER_ERROR (80), sent once.
    let f = call(&mut c, 21, "once", "", &[]).await;
    let (status, msg) = answer(&f).unwrap_err();
    assert_eq!(status, 80, "{msg}");
    assert_eq!(once2.calls.load(Ordering::Relaxed), 1);
    let m = stats(&proxy).await;
    let retries =
        |cluster: &str| metric(&m, &format!(r#"weft_upstream_rq_retry_total{{cluster="{cluster}"}}"#)).unwrap_or(0.0);
    assert!(retries("mixed") >= 1.0, "{m}");
    assert_eq!(retries("flaky"), 1.0, "{m}");
}

#[tokio::test]
async fn mirror_copies_calls_and_drops_the_answers() {
    let main = provider("main").await;
    let shadow = provider("shadow").await;
    let dead = dead_addr();
    let routes = "        - match: { interface: org.example.Gov, method: echo }\n          cluster: c\n          mirror: { cluster: m }\n        - match: { interface: org.example.Gov }\n          cluster: c\n          mirror: { cluster: gone, percent: 100 }\n";
    let clusters = cluster("c", &[main.addr]) + &cluster("m", &[shadow.addr]) + &cluster("gone", &[dead]);
    let proxy = start_proxy(&config("mirror", routes, &clusters));
    let addr = proxy.listener_addr("mirror").unwrap();
    let mut c = Client::connect(addr).await;
    for i in 0..10 {
        let f = call(&mut c, i + 1, "echo", &format!("m{i}"), &[]).await;
        assert_eq!(
            answer(&f),
            Ok(format!("main:m{i}")),
            "answered by the main cluster only"
        );
    }
    eventually("the shadow got every call", Duration::from_secs(5), || async {
        (shadow.calls.load(Ordering::Relaxed) == 10).then_some(())
    })
    .await;
    // A mirror that cannot be reached changes nothing for the calls.
    for i in 0..5 {
        let f = call(&mut c, 100 + i, "whoami", "", &[]).await;
        assert_eq!(answer(&f), Ok("main:".to_string()));
    }
    assert_eq!(main.calls.load(Ordering::Relaxed), 15);
}

#[test]
fn governance_config_errors_name_the_field() {
    let bad = "        - match: { interface: org.example.Gov }\n          cluster: c\n          retries: { attempts: 9 }\n          fault: {}\n          rate_limit: { max_tokens: 0, fill_interval: 10ms }\n          mirror: { cluster: nope, percent: 120 }\n          rate_limits: [{ actions: [{ attachment: { name: tenant } }, {}] }]\n";
    common::assert_refused(
        &config("bad", bad, &cluster("c", &["127.0.0.1:1".parse().unwrap()])),
        &[
            "routes[0].retries.attempts: 9 is out of range [1, 5]",
            "routes[0].fault: give delay, abort or both",
            "routes[0].rate_limit.max_tokens",
            "routes[0].rate_limit.fill_interval: 10ms is out of range",
            "routes[0].mirror.cluster: unknown cluster \"nope\"",
            "routes[0].mirror.percent: 120 is out of range [0, 100]",
            "routes[0].rate_limits[0].actions[0].attachment.descriptor_key: is required",
            "routes[0].rate_limits[0].actions[1]: set exactly one of attachment, remote_address, generic_key",
            "routes[0].rate_limits: needs listeners[0].rpc.rate_limit_service",
        ],
    );
}

/// `no_route` ends one interface's routes before a catch-all: its calls are answered Dubbo
/// `SERVICE_NOT_FOUND` and never reach a provider, counted as no-route local replies; the other
/// interfaces still reach the catch-all.
#[tokio::test]
async fn no_route_keeps_an_interface_from_the_catch_all() {
    let p = provider("p").await;
    let routes = "        - match: { interface: org.example.Gov, method: echo }\n          cluster: c\n        - name: gov-closed\n          match: { interface: org.example.Gov }\n          no_route: true\n        - cluster: c\n";
    let proxy = start_proxy(&config("closed", routes, &cluster("c", &[p.addr])));
    let addr = proxy.listener_addr("closed").unwrap();
    let mut c = Client::connect(addr).await;
    assert_eq!(answer(&call(&mut c, 1, "echo", "x", &[]).await), Ok("p:x".to_string()));
    let before = p.calls.load(Ordering::Relaxed);
    let (status, msg) = answer(&call(&mut c, 2, "whoami", "", &[]).await).unwrap_err();
    assert_eq!(status, 60, "SERVICE_NOT_FOUND: {msg}");
    assert!(msg.contains("no route for org.example.Gov.whoami"), "{msg}");
    assert_eq!(
        p.calls.load(Ordering::Relaxed),
        before,
        "the closed call reached the provider"
    );
    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_local_replies_total{listener="closed",reason="NR"} 1"#),
        "{m}"
    );
    // Another interface takes the catch-all.
    let mut args = Vec::new();
    hessian::write_string(&mut args, "y");
    let req = dubbo::encode_request(
        3,
        true,
        "org.example.Else",
        "",
        "echo",
        "Ljava/lang/String;",
        &args,
        &[],
    );
    c.send(&req).await;
    assert_eq!(answer(&c.recv().await.unwrap()), Ok("p:y".to_string()));

    let bad = "        - match: { interface: org.example.Gov }\n          no_route: true\n          cluster: c\n          timeout: 1s\n";
    common::assert_refused(
        &config("bad", bad, &cluster("c", &[p.addr])),
        &[
            "routes[0].cluster: cannot be given with no_route",
            "routes[0].timeout: cannot be given with no_route",
        ],
    );
}
