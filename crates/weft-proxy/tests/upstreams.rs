//! Upstream discovery and hashing: DNS clusters, original destination, cookie / source-IP hashing,
//! retry budgets.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_test_support::*;

#[tokio::test]
async fn strict_dns_cluster_resolves_names() {
    let up = named_upstream("dns").await;
    let yaml = one_route_yaml(
        "{ cluster: app, auto_host_rewrite: true }",
        &format!(
            "  - {{ name: app, type: strict_dns, dns_refresh_rate: 200ms, endpoints: [{{ address: \"localhost:{}\" }}] }}",
            up.addr.port()
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    // The first resolution happens in the background: allow it a moment.
    let mut got = None;
    for _ in 0..50 {
        let g = get(addr, "/").await;
        if g.status == 200 {
            got = Some(g);
            break;
        }
        assert_eq!(
            g.header("x-weft-reason"),
            Some("UH"),
            "before resolution the cluster has no host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = got.expect("DNS cluster resolved localhost within 2.5 s");
    assert_eq!(got.text(), "hello from dns");
    assert_eq!(
        up.last().headers["host"],
        format!("localhost:{}", up.addr.port()),
        "auto_host_rewrite uses the DNS name"
    );
    let clusters: serde_json::Value = serde_json::from_slice(&admin(&proxy, "/clusters").await.body).unwrap();
    let hosts = clusters["clusters"][0]["hosts"].as_array().unwrap();
    assert!(hosts.iter().any(|h| h["address"] == up.addr.to_string()), "{hosts:?}");
}

#[tokio::test]
async fn original_dst_cluster_follows_the_header() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let yaml = one_route_yaml(
        "{ cluster: passthrough }",
        "  - { name: passthrough, type: original_dst }",
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    for (up, name) in [(&a, "a"), (&b, "b"), (&a, "a")] {
        let got = c
            .send(req(
                "GET",
                "/",
                "x",
                &[("x-weft-original-dst-host", &up.addr.to_string())],
                "",
            ))
            .await;
        assert_eq!(got.text(), format!("hello from {name}"));
        assert!(
            !up.last().headers.contains_key("x-weft-original-dst-host"),
            "internal header stripped"
        );
    }
    // Without a header or a redirected connection there is no destination.
    let got = c.get("/").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-weft-reason"), Some("UH"));
}

/// A cookie hash policy with a ttl: a request without the cookie gets one generated (Envoy's
/// format), is sent where that cookie hashes, and the cookie keeps later requests there.
#[tokio::test]
async fn generated_hash_cookies_are_set_and_sticky() {
    for lb in ["ring_hash", "maglev"] {
        generated_hash_cookie(lb).await;
    }
}

async fn generated_hash_cookie(lb: &str) {
    let ups = [
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    ];
    let eps: Vec<String> = ups.iter().map(|u| format!("{{ address: \"{}\" }}", u.addr)).collect();
    // A port nothing listens on: the route to it ends in a local reply.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let generating =
        "{ name: sticky, ttl: 1h, path: /, attributes: [{ name: SameSite, value: Lax }, { name: Secure }] }";
    let yaml = one_route_yaml(
        &format!("{{ cluster: app, hash_policy: [{{ cookie: {generating} }}] }}"),
        &format!(
            "  - {{ name: app, lb_policy: {lb}, endpoints: [{eps}] }}\n  - {{ name: rr, endpoints: [{eps}] }}\n  - {{ name: down, lb_policy: {lb}, endpoints: [{{ address: \"{closed}\" }}] }}",
            eps = eps.join(", ")
        ),
    )
    .replace(
        "              - match: { prefix: / }\n",
        &format!(
            "              - match: {{ prefix: /rr }}\n                route: {{ cluster: rr, hash_policy: [{{ cookie: {generating} }}] }}\n              - match: {{ prefix: /plain }}\n                route: {{ cluster: app, hash_policy: [{{ cookie: {{ name: sticky }} }}] }}\n              - match: {{ prefix: /down }}\n                route: {{ cluster: down, hash_policy: [{{ cookie: {generating} }}] }}\n              - match: {{ prefix: /stripped }}\n                route: {{ cluster: app, hash_policy: [{{ cookie: {generating} }}] }}\n                response_headers_to_remove: [set-cookie]\n              - match: {{ prefix: / }}\n"
        ),
    )
    ;
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();

    let mut used = HashSet::new();
    let mut values = HashSet::new();
    for conn in 0..12 {
        let mut c = H1Client::connect(addr).await;
        let first = c.get("/").await;
        assert_eq!(first.status, 200);
        let picked = first.header("x-upstream").unwrap().to_string();
        let set: Vec<_> = first.headers.get_all("set-cookie").iter().collect();
        assert_eq!(set.len(), 1, "{lb}: one generated cookie: {set:?}");
        let set = set[0].to_str().unwrap();
        let value = set
            .strip_prefix("sticky=\"")
            .and_then(|r| r.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap_or_else(|| panic!("{lb}: {set}"));
        assert_eq!(value.len(), 16, "{set}");
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()), "{set}");
        assert_eq!(
            set,
            format!("sticky=\"{value}\"; Max-Age=3600; Path=/; SameSite=Lax; Secure; HttpOnly")
        );
        // The same connection gets the same cookie (its value comes from the connection's addresses).
        let again = c.get("/").await;
        assert_eq!(again.header("set-cookie"), Some(set));
        assert_eq!(again.header("x-upstream"), Some(picked.as_str()));
        // The cookie sent back as a browser would (quoted), on new connections: same endpoint, no
        // new cookie.
        let cookie = format!("theme=dark; sticky=\"{value}\"");
        for i in 0..20 {
            let mut c = H1Client::connect(addr).await;
            let got = c.send(req("GET", "/", "x", &[("cookie", &cookie)], "")).await;
            assert_eq!(
                got.header("x-upstream"),
                Some(picked.as_str()),
                "{lb}: conn {conn} request {i}"
            );
            assert!(got.headers.get("set-cookie").is_none(), "{lb}: the cookie was sent");
        }
        used.insert(picked);
        values.insert(value);
    }
    assert_eq!(values.len(), 12, "{lb}: one cookie per connection");
    // Added before the response header mutations (as Envoy): a route removing Set-Cookie removes it.
    let stripped = H1Client::connect(addr).await.get("/stripped").await;
    assert_eq!(stripped.status, 200);
    assert!(
        stripped.headers.get("set-cookie").is_none(),
        "{lb}: {:?}",
        stripped.headers
    );

    // Concurrent HTTP/2 streams of one connection all get the same cookie and the same endpoint.
    let h2 = h2_connect::<http_body_util::Full<bytes::Bytes>>(addr).await;
    let streams: Vec<_> = (0..8)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let mut r = req("GET", "http://x/", "x", &[], "");
                *r.version_mut() = http::Version::HTTP_2;
                let resp = h2.send_request(r).await.expect("HTTP/2 response");
                let h = resp.headers();
                (
                    h.get("set-cookie").map(|v| v.to_str().unwrap().to_string()),
                    h.get("x-upstream").map(|v| v.to_str().unwrap().to_string()),
                )
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for s in streams {
        let (cookie, upstream) = s.await.unwrap();
        assert!(
            cookie.as_deref().is_some_and(|c| c.starts_with("sticky=\"")),
            "{lb}: {cookie:?}"
        );
        seen.insert((cookie, upstream));
    }
    assert_eq!(
        seen.len(),
        1,
        "{lb}: one cookie and one endpoint per connection: {seen:?}"
    );
    assert!(
        used.len() >= 2,
        "{lb}: generated cookies spread over the hosts: {used:?}"
    );

    // Without a ttl nothing is generated (and requests without the cookie are not hashed).
    let mut c = H1Client::connect(addr).await;
    for _ in 0..5 {
        let got = c.get("/plain").await;
        assert_eq!(got.status, 200);
        assert!(got.headers.get("set-cookie").is_none(), "{lb}: no ttl, no cookie");
    }
    // A cluster that does not hash (round robin) gets no cookie either, as in Envoy, where only
    // the consistent-hash balancers ask for the hash.
    let got = c.get("/rr").await;
    assert_eq!(got.status, 200);
    assert!(got.headers.get("set-cookie").is_none(), "{lb}: round robin, no cookie");
    // A local reply (here: the only host refuses connections) carries no cookie, as Envoy's.
    let got = c.get("/down").await;
    assert_eq!(got.status, 503);
    assert!(
        got.headers.get("set-cookie").is_none(),
        "{lb}: local reply without a cookie"
    );
}

#[tokio::test]
async fn cookie_and_query_hashing_are_sticky() {
    let ups = [
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    ];
    let eps: Vec<String> = ups.iter().map(|u| format!("{{ address: \"{}\" }}", u.addr)).collect();
    let yaml = one_route_yaml(
        "{ cluster: app, hash_policy: [{ cookie: session }, { query_parameter: user, terminal: true }] }",
        &format!(
            "  - {{ name: app, lb_policy: ring_hash, endpoints: [{}] }}",
            eps.join(", ")
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let mut used = HashSet::new();
    for s in 0..60 {
        let cookie = format!("theme=dark; session=s{s}");
        let first = c.send(req("GET", "/", "x", &[("cookie", &cookie)], "")).await;
        let host = first.header("x-upstream").unwrap().to_string();
        used.insert(host.clone());
        for _ in 0..3 {
            let again = c.send(req("GET", "/", "x", &[("cookie", &cookie)], "")).await;
            assert_eq!(again.header("x-upstream"), Some(host.as_str()), "session s{s} moved");
        }
        let path = format!("/?user=u{s}");
        let by_query = c
            .send(req("GET", &path, "x", &[], ""))
            .await
            .header("x-upstream")
            .unwrap()
            .to_string();
        for _ in 0..3 {
            assert_eq!(
                c.send(req("GET", &path, "x", &[], ""))
                    .await
                    .header("x-upstream")
                    .unwrap(),
                by_query
            );
        }
    }
    assert_eq!(used.len(), 3, "sessions spread over all hosts");
}

#[tokio::test]
async fn source_ip_hashing_pins_a_client() {
    let ups = [
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    ];
    let eps: Vec<String> = ups.iter().map(|u| format!("{{ address: \"{}\" }}", u.addr)).collect();
    let yaml = one_route_yaml(
        "{ cluster: app, hash_policy: [{ source_ip: true }] }",
        &format!(
            "  - {{ name: app, lb_policy: maglev, endpoints: [{}] }}",
            eps.join(", ")
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        // New connection each time: same source IP, different source ports.
        seen.insert(get(addr, "/").await.header("x-upstream").unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "one client IP, one host: {seen:?}");
}

#[tokio::test]
async fn retry_budget_limits_concurrent_retries() {
    // Always 503, slowly, so many retries would be in flight at once.
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let up = upstream(move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            text(503, "busy")
        }
    })
    .await;
    let yaml = one_route_yaml(
        "{ cluster: app, retry_policy: { retry_on: [5xx], num_retries: 5, retry_back_off: { base_interval: 1ms, max_interval: 2ms } } }",
        &format!(
            "  - {{ name: app, retry_budget: {{ budget_percent: 0, min_retry_concurrency: 2 }}, endpoints: [{{ address: \"{}\" }}] }}",
            up.addr
        ),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(async move {
            H1Client::connect(addr).await.get("/").await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    let stats = admin(&proxy, "/stats/prometheus").await.text();
    let overflow = metric(&stats, "weft_upstream_rq_retry_overflow_total{cluster=\"app\"}").unwrap();
    let retries = metric(&stats, "weft_upstream_rq_retry_total{cluster=\"app\"}").unwrap();
    assert!(overflow >= 1.0, "the budget refused retries: {stats}");
    // Without a budget 10 requests x 5 retries = 50 retries; the budget keeps it far lower.
    assert!(retries < 50.0, "retries {retries}");
    assert_eq!(calls.load(Ordering::SeqCst) as f64, 10.0 + retries);
}

/// An upstream that answers every request in HTTP/1.0 and closes the connection after it, the way
/// Python's `http.server` does by default: with a content-length (`sized`) or delimited by the close.
async fn http10_upstream(sized: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = if sized {
                    "HTTP/1.0 200 OK\r\nserver: old\r\ncontent-length: 5\r\n\r\nhello"
                } else {
                    "HTTP/1.0 200 OK\r\nserver: old\r\n\r\nhello"
                };
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Reads one HTTP/1.1 response (head plus a content-length or chunked body) from `s`.
async fn read_one_response(s: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let lower = head.to_ascii_lowercase();
            let rest = &pending[end + 4..];
            let body_end = if let Some(cl) = lower.lines().find_map(|l| l.strip_prefix("content-length: ")) {
                let n: usize = cl.trim().parse().unwrap();
                (rest.len() >= n).then_some((n, rest[..n].to_vec()))
            } else if lower.contains("transfer-encoding: chunked") {
                rest.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| {
                    // Body bytes without the chunk framing.
                    let mut body = Vec::new();
                    let mut i = 0;
                    while i < p {
                        let line_end = i + rest[i..].windows(2).position(|w| w == b"\r\n").unwrap();
                        let n = usize::from_str_radix(std::str::from_utf8(&rest[i..line_end]).unwrap(), 16).unwrap();
                        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + n]);
                        i = line_end + 2 + n + 2;
                    }
                    (p + 5, body)
                })
            } else {
                panic!("no framing the next request could follow: {head}")
            };
            if let Some((used, body)) = body_end {
                pending.drain(..end + 4 + used);
                return (head, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "the proxy closed the connection: {}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_http10_upstream_does_not_close_the_clients_keep_alive_connection() {
    use tokio::io::AsyncWriteExt;
    for sized in [true, false] {
        let up = http10_upstream(sized).await;
        let proxy = start_proxy(&one_route_yaml(
            "{ cluster: app }",
            &format!("  - {{ name: app, endpoints: [{{ address: \"{up}\" }}] }}"),
        ));
        let addr = proxy.listener_addr("web").unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..3 {
            s.write_all(format!("GET /{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let (head, body) = read_one_response(&mut s, &mut pending).await;
            assert!(head.starts_with("HTTP/1.1 200"), "sized={sized} request {i}: {head}");
            assert!(
                !head.to_ascii_lowercase().contains("connection: close"),
                "sized={sized} request {i}: {head}"
            );
            assert_eq!(body, b"hello", "sized={sized} request {i}");
        }
        // An HTTP/1.0 client is still answered in HTTP/1.0.
        let old = raw(addr, b"GET / HTTP/1.0\r\nhost: x\r\n\r\n", Duration::from_secs(3)).await;
        let old = String::from_utf8_lossy(&old);
        assert!(old.starts_with("HTTP/1.0 200"), "sized={sized}: {old}");
        assert!(old.ends_with("hello"), "sized={sized}: {old}");
    }
}

/// An HTTP/1.1 keep-alive upstream that answers every request with `ok` and counts the
/// connections it has open.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicU64::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let open = count.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            open.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Envoy drains the connection pools of a host that leaves its cluster; so does weft: an endpoint
/// removed from the configuration (an EDS update, a drained instance) keeps no idle pooled
/// connection open, so the instance sees its inbound connections fall to zero.
#[tokio::test]
async fn idle_connections_to_a_removed_endpoint_are_closed() {
    let (a, a_open) = counting_upstream().await;
    let (b, b_open) = counting_upstream().await;
    let yaml = |eps: &str| {
        one_route_yaml(
            "{ cluster: app }",
            &format!("  - {{ name: app, lb_policy: round_robin, endpoints: [{eps}] }}"),
        )
    };
    let proxy = start_proxy(&yaml(&format!("{{ address: \"{a}\" }}, {{ address: \"{b}\" }}")));
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..6 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    assert!(a_open.load(Ordering::SeqCst) >= 1, "a pooled connection to a");
    assert!(b_open.load(Ordering::SeqCst) >= 1, "a pooled connection to b");
    let cfg = weft_config::from_yaml(&yaml(&format!("{{ address: \"{b}\" }}"))).unwrap();
    proxy.apply(cfg).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while a_open.load(Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} idle connections to the removed endpoint still open",
            a_open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The endpoint that stays keeps its warm pool and serves.
    assert!(b_open.load(Ordering::SeqCst) >= 1);
    for _ in 0..3 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
}

/// A raw TCP upstream on 127.0.0.1: each accepted connection runs `serve` with the test's counter
/// (its observable signal).
async fn raw_upstream<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicU64>)
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicU64>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, c.clone()));
        }
    });
    (addr, counter)
}

/// Reads one request head and its `content-length` body from `s` (`buf` keeps what follows):
/// the head (lower-cased), and how many body bytes arrived, up to `limit` of them (the rest stay
/// unread), before the connection ended or the body was complete.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, limit: usize) -> Option<(String, usize)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let want = len.min(limit);
    let mut got = buf.len().min(want);
    buf.drain(..got);
    while got < want {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    Some((head, got))
}

/// An upstream that closes a keep-alive connection soon after answering (its own idle timeout)
/// gets the proxy's side closed too without waiting for another request: weft's own HTTP/1.1
/// client has no connection task to notice the close, so the pool sweep does. The upstream
/// half-closes (sends FIN, keeps reading) and counts the connections the proxy then closes.
#[tokio::test]
async fn an_idle_connection_the_upstream_closes_is_closed_by_the_pool_sweep() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, closed_by_proxy) = raw_upstream(|mut s, closed| async move {
        if read_request(&mut s, &mut Vec::new(), 0).await.is_none() {
            return;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.shutdown().await.unwrap();
        // Bounded: the proxy has 10 s to close its side.
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut [0u8; 64])).await;
        if matches!(r, Ok(Ok(0))) {
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!("  - {{ name: app, pool: {{ idle_timeout: 2s }}, endpoints: [{{ address: \"{up}\" }}] }}"),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.status, 200);
    // The sweep runs every second here (half the idle timeout); no request arrives meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed_by_proxy.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy kept its side of a connection the upstream closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next request opens a fresh connection and succeeds.
    assert_eq!(get(addr, "/").await.status, 200);
}

/// An upstream may answer before the request body has arrived (a full-duplex service, or an early
/// `200` to an upload): like hyper's client, weft keeps sending the body after the response has
/// ended, and the upstream receives all of it.
#[tokio::test]
async fn a_request_body_is_still_sent_after_an_early_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LEN: usize = 200_000;
    let (up, received) = raw_upstream(|mut s, received| async move {
        let mut buf = Vec::new();
        // The head only: the answer goes out before the body is read.
        if read_request(&mut s, &mut buf, 0).await.is_none() {
            return;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let mut got = buf.len();
        let mut chunk = [0u8; 16384];
        while got < LEN {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        received.store(got as u64, Ordering::SeqCst);
    })
    .await;
    let proxy = start_proxy(&app_yaml(up, ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {LEN}\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&vec![b'a'; LEN / 2]).await.unwrap();
    // The response arrives while half the body is still to come.
    let mut resp = Vec::new();
    let mut chunk = [0u8; 4096];
    while !resp.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .expect("the early response in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&resp));
        resp.extend_from_slice(&chunk[..n]);
    }
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    c.write_all(&vec![b'b'; LEN - LEN / 2]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::SeqCst) < LEN as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream got {} of {LEN} body bytes",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reused connection that the upstream closes after reading a whole streamed request, without
/// answering, must not make weft send the request again: its body is gone (it streamed from the
/// client), and a resend would go out empty. The client gets an error; the upstream sees the
/// request once.
#[tokio::test]
async fn a_streamed_request_is_not_resent_after_its_body_was_taken() {
    use tokio::io::AsyncWriteExt;
    let (up, heads) = raw_upstream(|mut s, heads| async move {
        let mut buf = Vec::new();
        while let Some((head, _)) = read_request(&mut s, &mut buf, usize::MAX).await {
            heads.fetch_add(1, Ordering::SeqCst);
            if head.starts_with("put") {
                // Read it all, answer nothing, close.
                return;
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        }
    })
    .await;
    let proxy = start_proxy(&app_yaml(up, ""));
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.status, 200);
    // The PUT goes on the pooled connection.
    let put = b"PUT /doc HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    let resp = raw(addr, put, Duration::from_secs(10)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 50"), "{resp}");
    assert_eq!(heads.load(Ordering::SeqCst), 2, "the PUT was sent again: {resp}");
}

/// An h2c upstream that, on each connection, starts a graceful shutdown (GOAWAY, as a server does
/// when it restarts) as soon as a request for `/` arrives, and answers that request 50 ms later
/// (so the GOAWAY is on the wire before the answer). `/slow` is answered after 1 s, keeping its
/// connection open that long. Counts its connections and the requests it has seen.
async fn going_away_h2_upstream() -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (count, seen_by_server) = (conns.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen_by_server.clone();
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let slow = req.uri().path() == "/slow";
                    if !slow {
                        let _ = tx.send(());
                    }
                    async move {
                        let wait = if slow { 1000 } else { 50 };
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("ok"))))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let mut rx = rx;
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = rx.recv() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, conns, seen)
}

/// An HTTP/2 upstream connection that was told to go away takes no new request: the next one goes
/// on a new connection and succeeds, without a retry policy (nothing was sent on the old one),
/// while the old connection finishes what it had.
#[tokio::test]
async fn requests_after_an_upstream_goaway_go_on_a_new_connection() {
    let (up, conns, seen) = going_away_h2_upstream().await;
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!("  - name: app\n    protocol: http2\n    endpoints: [{{ address: \"{up}\" }}]"),
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    // A slow request keeps the first connection open through its graceful shutdown.
    let slow = tokio::spawn(get(addr, "/slow"));
    assert!(
        within(Duration::from_secs(5), || async { seen.load(Ordering::SeqCst) == 1 }).await,
        "the slow request reached the upstream"
    );
    for n in 1..=3 {
        let r = tokio::time::timeout(Duration::from_secs(10), get(addr, "/"))
            .await
            .expect("answered within 10 s");
        assert_eq!(r.status, 200, "request {n}: {:?}", r.header("x-weft-reason"));
        assert_eq!(r.text(), "ok");
        // The first shares the slow request's connection; each later one needs a new one.
        assert_eq!(conns.load(Ordering::SeqCst), n, "request {n}");
    }
    let slow = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slow.status, 200, "the going-away connection finished its request");
}
