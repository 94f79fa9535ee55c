//! Global rate limiting through a real gRPC rate limit service speaking Envoy's RLS protocol
//! (`envoy.service.ratelimit.v3.RateLimitService`, served here by tonic with the Envoy API types):
//! descriptors on the wire, 429 with `x-envoy-ratelimited`, fail-open and fail-closed, and the timeout.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_test_support::*;
use weft_xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use weft_xds_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use weft_xds_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// (domain, descriptors as key/value lists) of one call.
type Call = (String, Vec<Vec<(String, String)>>);

/// Allows `limit` hits per distinct descriptor set, then says OVER_LIMIT; records every request.
#[derive(Clone, Default)]
struct Rls {
    limit: u32,
    delay: Duration,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    seen: Arc<Mutex<Vec<Call>>>,
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        let r = request.into_inner();
        let descriptors: Vec<Vec<(String, String)>> = r
            .descriptors
            .iter()
            .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
            .collect();
        let mut over = false;
        {
            let mut hits = self.hits.lock();
            for d in &descriptors {
                let n = hits.entry(format!("{d:?}")).or_insert(0);
                *n += r.hits_addend.max(1);
                over |= *n > self.limit;
            }
        }
        self.seen.lock().push((r.domain, descriptors));
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            ..Default::default()
        }))
    }
}

async fn start_rls(rls: Rls) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let svc = RateLimitServiceServer::new(rls);
    tokio::spawn(async move {
        // Connections live in this set: stopping the service drops them all, like a crash.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut rx => return,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                    conns.spawn(async move {
                        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        }
    });
    (addr, tx)
}

fn config(app: SocketAddr, rls: SocketAddr, deny: bool, timeout: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 2 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      rate_limit_service: {{ cluster: rls, domain: edge, timeout: {timeout}, failure_mode_deny: {deny} }}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /limited }}
                route:
                  cluster: app
                  rate_limits:
                    - actions: [{{ request_headers: {{ header_name: x-user, descriptor_key: user }} }}]
                    - actions: [{{ remote_address: {{}} }}, {{ generic_key: {{ descriptor_value: api }} }}]
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: rls
    protocol: http2
    endpoints: [{{ address: "{rls}" }}]
"#
    )
}

async fn call(addr: SocketAddr, path: &str, user: Option<&str>) -> Got {
    let mut c = H1Client::connect(addr).await;
    let headers: Vec<(&str, &str)> = user.map(|u| vec![("x-user", u)]).unwrap_or_default();
    c.send(req("GET", path, "example", &headers, "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_answers_429_with_envoy_header_and_descriptors_cross_the_wire() {
    let app = named_upstream("app").await;
    let rls = Rls {
        limit: 3,
        ..Default::default()
    };
    let (rls_addr, _stop) = start_rls(rls.clone()).await;
    let server = start_proxy(&config(app.addr, rls_addr, false, "1s"));
    let addr = server.listener_addr("web").unwrap();

    let mut codes = Vec::new();
    for _ in 0..5 {
        let got = call(addr, "/limited", Some("alice")).await;
        if got.status == 429 {
            assert_eq!(got.header("x-envoy-ratelimited"), Some("true"));
            assert_eq!(got.header("x-weft-reason"), Some("RL"));
        }
        codes.push(got.status);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    // Another user has its own descriptor; but the shared remote-address descriptor is now over
    // too (5 hits > 3), so bob is limited by it — exactly Envoy's any-descriptor-over semantics.
    let bob = call(addr, "/limited", Some("bob")).await;
    assert_eq!(bob.status, 429);
    // Routes without rate_limits never ask the service.
    let before = rls.seen.lock().len();
    assert_eq!(call(addr, "/other", Some("alice")).await.status, 200);
    assert_eq!(rls.seen.lock().len(), before);

    let seen = rls.seen.lock().clone();
    let (domain, descriptors) = &seen[0];
    assert_eq!(domain, "edge");
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        descriptors,
        &vec![
            pairs(&[("user", "alice")]),
            pairs(&[("remote_address", "127.0.0.1"), ("generic_key", "api")])
        ]
    );
    // A request without x-user sends only the second descriptor.
    let _ = call(addr, "/limited", None).await;
    let last = rls.seen.lock().last().cloned().unwrap();
    assert_eq!(last.1.len(), 1);
    let stats = admin(&server, "/stats/prometheus").await.text();
    assert!(
        metric(
            &stats,
            "weft_http_rate_limit_service_over_limit_total{listener=\"web\"}"
        )
        .unwrap()
            >= 3.0,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_service_fails_open_by_default_and_closed_with_failure_mode_deny() {
    let app = named_upstream("app").await;
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let open = start_proxy(&config(app.addr, dead, false, "200ms"));
    let got = call(open.listener_addr("web").unwrap(), "/limited", Some("alice")).await;
    assert_eq!(got.status, 200, "fail open");
    let stats = admin(&open, "/stats/prometheus").await.text();
    assert!(metric(&stats, "weft_http_rate_limit_service_errors_total{listener=\"web\"}").unwrap() >= 1.0);

    let closed = start_proxy(&config(app.addr, dead, true, "200ms"));
    let got = call(closed.listener_addr("web").unwrap(), "/limited", Some("alice")).await;
    assert_eq!(got.status, 500, "fail closed");
    assert_eq!(got.header("x-weft-reason"), Some("RLSE"));

    // A service that stops mid-life: the proxy notices and fails open.
    let rls = Rls {
        limit: 100,
        ..Default::default()
    };
    let (rls_addr, stop) = start_rls(rls.clone()).await;
    let server = start_proxy(&config(app.addr, rls_addr, false, "200ms"));
    let addr = server.listener_addr("web").unwrap();
    assert_eq!(call(addr, "/limited", Some("alice")).await.status, 200);
    assert_eq!(rls.seen.lock().len(), 1);
    let _ = stop.send(());
    // Stopped once its port refuses connections (its open connections close at the same moment).
    eventually("the rate limit service to stop", WAIT, || async {
        connection_refused(rls_addr, Duration::from_secs(1)).await.then_some(())
    })
    .await;
    assert_eq!(call(addr, "/limited", Some("alice")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_costs_at_most_the_timeout() {
    let app = named_upstream("app").await;
    let rls = Rls {
        limit: 0,
        delay: Duration::from_secs(2),
        ..Default::default()
    };
    let (rls_addr, _stop) = start_rls(rls).await;
    let server = start_proxy(&config(app.addr, rls_addr, false, "100ms"));
    let start = Instant::now();
    let got = call(server.listener_addr("web").unwrap(), "/limited", Some("alice")).await;
    assert_eq!(
        got.status, 200,
        "fails open after the timeout although the service would say over limit"
    );
    assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
}

#[test]
fn rate_limits_need_a_service_and_valid_actions() {
    let yaml = r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                route:
                  cluster: app
                  rate_limits:
                    - actions: [{ request_headers: { header_name: x-user } }, {}]
clusters:
  - name: app
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
    let err = weft_config::from_yaml(yaml).unwrap_err().to_string();
    for needle in [
        "routes[0].route.rate_limits: needs the connection manager's rate_limit_service",
        "rate_limits[0].actions[0].request_headers.descriptor_key",
        "rate_limits[0].actions[1]: set exactly one of",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// A Dubbo provider answering every call with "ok" (weft's codec; one connection task each).
async fn dubbo_provider() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_rpc::codec::{Codec, FrameKind};
    use weft_rpc::dubbo::{self, Dubbo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                loop {
                    while let Ok(Some(f)) = Dubbo.decode(&mut buf, 1 << 20) {
                        if f.kind == FrameKind::Request {
                            let mut v = Vec::new();
                            weft_rpc::hessian::write_string(&mut v, "ok");
                            if s.write_all(&dubbo::encode_response(f.id, &v)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if !matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One Dubbo call's frame (interface org.example.Rl, `method`, attachment `tenant` if given).
fn dubbo_call(id: u64, method: &str, tenant: Option<&str>) -> bytes::Bytes {
    let att: Vec<(&str, &str)> = tenant.map(|t| vec![("tenant", t)]).unwrap_or_default();
    weft_rpc::dubbo::encode_request(id, true, "org.example.Rl", "1.0.0", method, "", &[], &att)
}

/// RPC routes' `rate_limits`: the calls' descriptors (an attachment's value) go to the rate limit
/// service, an over-limit answer becomes the protocol's overload status, a call without the
/// attachment sends no descriptor, and while the service thinks the connection's other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_routes_ask_the_rate_limit_service_without_holding_up_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_rpc::codec::Codec;
    use weft_rpc::dubbo::Dubbo;
    let rls = Rls {
        limit: 2,
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let (rls_addr, _stop) = start_rls(rls.clone()).await;
    let app = dubbo_provider().await;
    let cfg = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: rpc
    address: 127.0.0.1:0
    rpc:
      protocol: dubbo
      rate_limit_service: {{ cluster: rls, domain: rpc, timeout: 2s }}
      routes:
        - match: {{ interface: org.example.Rl, method: limited }}
          cluster: app
          rate_limits:
            - actions: [{{ attachment: {{ name: tenant, descriptor_key: tenant }} }}]
        - match: {{ interface: org.example.Rl }}
          cluster: app
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: rls
    protocol: http2
    endpoints: [{{ address: "{rls_addr}" }}]
"#
    );
    let proxy = start_proxy(&cfg);
    let addr = proxy.listener_addr("rpc").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut next = async |s: &mut tokio::net::TcpStream| loop {
        if let Some(f) = Dubbo.decode(&mut buf, 1 << 20).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("an answer within 5s")
            .unwrap();
        assert!(n > 0, "closed");
    };
    // A limited call (the service takes 300 ms) and an unlimited one: the second is answered first.
    let mut both = dubbo_call(1, "limited", Some("a")).to_vec();
    both.extend_from_slice(&dubbo_call(2, "free", None));
    let t = Instant::now();
    s.write_all(&both).await.unwrap();
    let first = next(&mut s).await;
    assert_eq!((first.id, first.status), (2, 20), "the unlimited call waited");
    assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
    let second = next(&mut s).await;
    assert_eq!((second.id, second.status), (1, 20));
    // Tenant a: its second call passes, the third is over the limit; tenant b and a call without
    // the attachment pass.
    let mut got = Vec::new();
    for (id, tenant) in [(3, Some("a")), (4, Some("a")), (5, Some("b")), (6, None)] {
        s.write_all(&dubbo_call(id, "limited", tenant)).await.unwrap();
        let f = next(&mut s).await;
        assert_eq!(f.id, id);
        got.push(f.status);
        if f.status != 20 {
            let msg = weft_rpc::dubbo::error_message(&f).unwrap_or_default();
            assert!(msg.contains("rate limit service"), "{msg}");
        }
    }
    assert_eq!(
        got,
        [20, 100, 20, 20],
        "SERVER_THREADPOOL_EXHAUSTED_ERROR for the third call of tenant a"
    );
    let seen = rls.seen.lock().clone();
    assert_eq!(seen.len(), 4, "one service call per call with the attachment: {seen:?}");
    assert!(seen.iter().all(|(d, _)| d == "rpc"), "{seen:?}");
    assert_eq!(seen[3].1, vec![vec![("tenant".to_string(), "b".to_string())]]);
    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_ratelimit_service_over_limit_total{listener="rpc"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"weft_rpc_ratelimit_service_errors_total{listener="rpc"} 0"#),
        "{m}"
    );
}
