//! Servers on their own thread and current-thread runtime, for tests whose code under test blocks
//! or runs its own runtime (`weft bench`). Stopped, and their thread joined, on drop.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server running on its own thread and runtime; stopped on drop.
pub struct ThreadServer {
    pub addr: SocketAddr,
    /// Requests answered (HTTP) or connections accepted (TCP echo).
    pub hits: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The response body of a [`Handler`].
pub type Body = BoxBody<Bytes, Infallible>;

/// Answers one request; gets the connection's [`ConnCtx`].
pub type Handler =
    Arc<dyn Fn(Request<Incoming>, ConnCtx) -> futures_util::future::BoxFuture<'static, Response<Body>> + Send + Sync>;

/// Per-connection context handed to handlers.
#[derive(Clone)]
pub struct ConnCtx {
    /// When the server started listening.
    pub server_start: Instant,
    /// Per-connection flag a handler may use (e.g. "already stalled once").
    pub stalled: Arc<AtomicBool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    H1,
    /// HTTP/1.1 with keep-alive off: the server closes after each response.
    H1Close,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// Runs `serve(listener, stop)` on a new thread with its own current-thread runtime.
fn spawn<F, Fut>(serve: F) -> ThreadServer
where
    F: FnOnce(TcpListener, tokio::sync::oneshot::Receiver<()>, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let hits = Arc::new(AtomicU64::new(0));
    let hits2 = hits.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
            addr_tx
                .send(listener.local_addr().expect("local address"))
                .expect("send address");
            serve(listener, rx, hits2).await;
        });
    });
    let addr = addr_rx.recv().expect("server thread started");
    ThreadServer {
        addr,
        hits,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

/// An HTTP server speaking `proto`, answering with `handler`.
pub fn http_server(proto: Proto, handler: Handler) -> ThreadServer {
    spawn(move |listener, mut rx, hits| async move {
        let server_start = Instant::now();
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = &mut rx => break,
            };
            let _ = stream.set_nodelay(true);
            let ctx = ConnCtx {
                server_start,
                stalled: Arc::new(AtomicBool::new(false)),
            };
            let handler = handler.clone();
            let hits = hits.clone();
            let svc = service_fn(move |req| {
                hits.fetch_add(1, Ordering::Relaxed);
                let fut = handler(req, ctx.clone());
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let io = TokioIo::new(stream);
            match proto {
                Proto::H1 | Proto::H1Close => {
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(proto == Proto::H1)
                            .serve_connection(io, svc)
                            .await;
                    });
                }
                Proto::H2 => {
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            }
        }
    })
}

/// A complete body from a static string.
pub fn full(b: &'static str) -> Body {
    Full::new(Bytes::from_static(b.as_bytes())).boxed()
}

/// Reads the whole request body (empty on error).
pub async fn drain(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// Server answering every request with `status` and "hello".
pub fn status_server(proto: Proto, status: u16) -> ThreadServer {
    http_server(
        proto,
        Arc::new(move |req, _| {
            Box::pin(async move {
                drain(req).await;
                let mut r = Response::new(full("hello"));
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status code");
                r
            })
        }),
    )
}

/// HTTP/1.1 server answering "hello" at once, except that each connection's first request
/// arriving `stall_after` or later into the server's life sleeps `stall_for` (requests behind it
/// on that connection wait): a slow server, by design.
pub fn h1_stall_server(stall_after: Duration, stall_for: Duration) -> ThreadServer {
    http_server(
        Proto::H1,
        Arc::new(move |req, ctx| {
            Box::pin(async move {
                drain(req).await;
                if ctx.server_start.elapsed() >= stall_after && !ctx.stalled.swap(true, Ordering::Relaxed) {
                    tokio::time::sleep(stall_for).await;
                }
                Response::new(full("hello"))
            })
        }),
    )
}

/// TCP echo server; counts accepted connections in `hits`.
pub fn tcp_echo_server() -> ThreadServer {
    spawn(|listener, mut rx, hits| async move {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = &mut rx => break,
            };
            hits.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}
