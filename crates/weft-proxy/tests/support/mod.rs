//! Shared helpers for integration tests: real upstream servers and real clients on 127.0.0.1 with
//! ephemeral ports, and a proxy started from YAML.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_proxy::{Server, ServerOptions};

/// Starts a proxy from YAML (listeners should use port 0).
pub fn start_proxy(yaml: &str) -> Arc<Server> {
    let config = weft_config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"));
    Server::start(config, ServerOptions { config_path: None }).expect("proxy starts")
}

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real hyper upstream (HTTP/1.1 and h2c) that records every request and answers via `f`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    /// Stops like a killed process: closes the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

pub type Reply = Response<Full<Bytes>>;

pub fn text(status: u16, body: &str) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Starts an upstream whose answers come from `f(seen) -> Reply` (may be async).
pub async fn upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    upstream_on("127.0.0.1:0".parse().unwrap(), f).await
}

pub async fn upstream_on<F, Fut>(addr: SocketAddr, f: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (s2, h2, c2) = (seen.clone(), hits.clone(), connections.clone());
    tokio::spawn(async move {
        // Connection tasks live in this set: stopping the upstream aborts them, closing every
        // connection, as a killed process would.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = &mut rx => return,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let (seen, hits, f) = (s2.clone(), h2.clone(), f.clone());
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, hits, f) = (seen.clone(), hits.clone(), f.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        seen.lock().unwrap().push(s.clone());
                        hits.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(f(s).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        hits,
        connections,
        stop: Some(tx),
    }
}

/// An upstream answering 200 with its name in `x-upstream` and the body "hello from NAME".
pub async fn named_upstream(name: &'static str) -> Upstream {
    upstream(move |_| async move {
        let mut r = text(200, &format!("hello from {name}"));
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        r
    })
    .await
}

/// A response as the test client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct H1Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1Client { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        self.try_send(req).await.expect("request succeeds")
    }

    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Got, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.send(req("GET", path, "test.local", &[], "")).await
    }
}

/// Builds a request with a Host header.
pub fn req(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// A one-shot GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Got {
    H1Client::connect(addr).await.get(path).await
}

/// Sends raw bytes and returns everything the server sent until it closed or `wait` passed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    out
}

/// Fetches an admin endpoint as text.
pub async fn admin(server: &Server, path: &str) -> Got {
    get(server.admin_addr().expect("admin configured"), path).await
}

/// The value of a Prometheus sample line starting with `prefix` (e.g. `weft_upstream_rq_retry_total{cluster="c"}`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A response body for [`streaming_upstream`] (any body: full, streamed, with trailers).
pub type AnyBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Starts an upstream (HTTP/1.1 and h2c) that hands each request to `f` unread, so the handler can
/// stream the request body and answer with a streamed body. Counts `hits` and `connections`; does
/// not record `seen`.
pub async fn streaming_upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<AnyBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (h2, c2) = (hits.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = &mut rx => return,
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let (hits, f) = (h2.clone(), f.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hits, f) = (hits.clone(), f.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(f(req).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen: Arc::new(Mutex::new(Vec::new())),
        hits,
        connections,
        stop: Some(tx),
    }
}

/// Makes an [`AnyBody`] from anything that is a body of `Bytes`.
pub fn any_body<B>(b: B) -> AnyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    b.map_err(Into::into).boxed()
}

/// A 127.0.0.1 port that was free a moment ago (bind to port 0, then close).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The byte at `offset` of the test pattern used for large bodies (period 251, a prime, so chunk
/// boundaries never line up with it).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// `len` bytes of the test pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    let period: Vec<u8> = (0..251u64).map(pattern_byte).collect();
    let mut v = Vec::with_capacity(len + 251);
    v.extend_from_slice(&period[(offset % 251) as usize..]);
    while v.len() < len {
        v.extend_from_slice(&period);
    }
    v.truncate(len);
    v.into()
}

/// Whether `data` is exactly the test pattern starting at `offset`.
pub fn is_pattern(offset: u64, data: &[u8]) -> bool {
    data == &pattern(offset, data.len())[..]
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a JSON-lines file, waiting (polling every 50 ms, at most `wait`) until it holds at least
/// `n` complete lines. Returns every complete line parsed, however many there are then.
pub async fn json_lines(path: &std::path::Path, n: usize, wait: Duration) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let lines: Vec<serde_json::Value> = complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n || std::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the admin metrics (every 50 ms, at most `wait`) until the sample `prefix` satisfies `ok`;
/// returns the last value seen (None if the sample never appeared).
pub async fn metric_eventually(server: &Server, prefix: &str, wait: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let v = metric(&admin(server, "/stats/prometheus").await.text(), prefix);
        if v.is_some_and(&ok) || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs (empty body) to an admin endpoint.
pub async fn admin_post(server: &Server, path: &str) -> Got {
    let addr = server.admin_addr().expect("admin configured");
    H1Client::connect(addr)
        .await
        .send(req("POST", path, &addr.to_string(), &[], ""))
        .await
}

/// A proxy config with an admin port, one worker, one listener `web` on port 0 whose single route
/// (`/`) has the given `route:` action, and the given `clusters:` list (YAML, indented two spaces).
pub fn one_route_yaml(route: &str, clusters: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {route}
clusters:
{clusters}
"#
    )
}

/// [`one_route_yaml`] routing everything to one cluster `app` with a single endpoint `upstream`;
/// `http_extra` (e.g. `"stream_idle_timeout: 1s"`) goes into the listener's `http` section.
pub fn app_yaml(upstream: SocketAddr, http_extra: &str) -> String {
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!("  - name: app\n    endpoints: [{{ address: \"{upstream}\" }}]"),
    );
    if http_extra.is_empty() {
        yaml
    } else {
        yaml.replace("    http:\n", &format!("    http:\n      {http_extra}\n"))
    }
}
