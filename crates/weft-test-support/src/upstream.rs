//! Real upstream servers on 127.0.0.1 (hyper, HTTP/1.1 and h2c on the same port), run as tasks on
//! the test's runtime. For servers on their own thread and runtime see [`crate::threaded`].

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream: its address and what it saw. Stopped (listener and connections closed) on
/// drop or by [`Upstream::stop`].
pub struct Upstream {
    pub addr: SocketAddr,
    /// Every request, in arrival order (not recorded by [`streaming_upstream`]).
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests received.
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The last request seen; panics if none arrived.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
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

/// A complete response.
pub type Reply = Response<Full<Bytes>>;

/// A response with the given status, `content-type: text/plain` and `body`.
pub fn text(status: u16, body: &str) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

/// Starts an upstream whose answers come from `f(seen) -> Reply` (may be async).
pub async fn upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    upstream_on("127.0.0.1:0".parse().expect("address"), f).await
}

/// [`upstream()`] on a given address (to bring a stopped upstream back on the same port).
pub async fn upstream_on<F, Fut>(addr: SocketAddr, f: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind upstream on {addr}: {e}"));
    let addr = listener.local_addr().expect("local address");
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
                        seen.lock().push(s.clone());
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
        r.headers_mut()
            .insert("x-upstream", name.parse().expect("header value"));
        r
    })
    .await
}

/// An upstream answering every request with 200 and exactly `body`.
pub async fn fixed_upstream(body: &'static str) -> Upstream {
    upstream(move |_| async move { text(200, body) }).await
}

/// A slow backend: waits `delay` before answering `status` with `body`.
pub async fn slow_upstream(delay: std::time::Duration, status: u16, body: &'static str) -> Upstream {
    upstream(move |_| async move {
        tokio::time::sleep(delay).await;
        text(status, body)
    })
    .await
}

/// An upstream that accepts connections and reads requests but never answers (a hung backend).
pub async fn hanging_upstream() -> Upstream {
    upstream(|_| std::future::pending()).await
}

/// A response body for [`streaming_upstream`] (any body: full, streamed, with trailers).
pub type AnyBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Starts an upstream (HTTP/1.1 and h2c) that hands each request to `f` unread, so the handler can
/// stream the request body and answer with a streamed body. Counts `hits` and `connections`; does
/// not record `seen`. Stopping it closes the listener only (open connections finish).
pub async fn streaming_upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<AnyBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
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
    b.map_err(Into::into).boxed()
}

/// A raw TCP server on 127.0.0.1:0 running `f` for every accepted connection; it runs for the
/// rest of the test.
pub async fn tcp_server<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(f(s));
        }
    });
    addr
}

/// A [`tcp_server`] handler: echoes everything until EOF.
pub async fn tcp_echo(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
