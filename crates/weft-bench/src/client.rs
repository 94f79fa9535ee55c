//! Connection handling and single-request execution for each protocol.

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::parse::Protocol;
use crate::rpc::{RpcClient, RpcShared, RpcTemplate};
use crate::stats::ErrorKind;
use crate::tls::{Negotiated, Stream, TlsClient};

type H1Sender = http1::SendRequest<Full<Bytes>>;
type H1Conn = Pin<Box<http1::Connection<TokioIo<Stream>, Full<Bytes>>>>;
type H2Sender = http2::SendRequest<Full<Bytes>>;

/// Everything needed to build requests; built once, cloned cheaply per request.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// TLS client for `https://` targets.
    pub tls: Option<Arc<TlsClient>>,
    /// The call of `dubbo://` and `bolt://` targets.
    pub rpc: Option<RpcTemplate>,
}

impl RequestTemplate {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.protocol != Protocol::Http1 {
            *req.version_mut() = Version::HTTP_2;
        }
        req
    }
}

/// Successful exchange: a response (or echo) was fully received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    pub status: Option<u16>,
    pub grpc_ok: Option<bool>,
    /// Dubbo / Bolt: the response status, and whether it means success.
    pub rpc: Option<(u16, bool)>,
    pub bytes: u64,
}

async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP connect, then the TLS handshake for TLS targets (timed and counted
/// by the [`TlsClient`]). Either failing is a connect error.
async fn connect(tpl: &RequestTemplate) -> Result<Stream, ErrorKind> {
    let tcp = connect_tcp(tpl.addr).await.map_err(|_| ErrorKind::Connect)?;
    match &tpl.tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => match tls.connect(tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(_) => Err(ErrorKind::Connect),
        },
    }
}

/// An HTTP/1.1 connection whose I/O is driven inside the worker's own task
/// (no separate connection task, so no cross-task wake-up per request).
pub(crate) struct H1 {
    sender: H1Sender,
    conn: Option<H1Conn>,
}

async fn connect_h1(tpl: &RequestTemplate) -> Result<H1, ErrorKind> {
    let stream = connect(tpl).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ErrorKind::Connect)?;
    Ok(H1 {
        sender,
        conn: Some(Box::pin(conn)),
    })
}

impl H1 {
    /// True when the connection can no longer be used. Polls the idle
    /// connection once so that a close by the peer while idle is noticed
    /// here (and answered by reconnecting) rather than failing a request.
    fn check_closed(&mut self) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            if conn.as_mut().now_or_never().is_some() {
                self.conn = None;
            }
        }
        self.conn.is_none() || self.sender.is_closed()
    }

    async fn exec(&mut self, tpl: &RequestTemplate) -> Result<Response, ErrorKind> {
        let sender = &mut self.sender;
        let fut = async move {
            sender.ready().await.map_err(|_| ErrorKind::Io)?;
            let resp = sender.send_request(tpl.build()).await.map_err(|_| ErrorKind::Io)?;
            read_response(resp, tpl.protocol).await
        };
        let mut fut = pin!(fut);
        let conn_done = match self.conn.as_mut() {
            Some(conn) => tokio::select! {
                biased;
                r = &mut fut => return r,
                _ = conn.as_mut() => true,
            },
            None => false,
        };
        if conn_done {
            // The connection ended (e.g. the peer closed after responding).
            // Dropping it closes hyper's channels, so the request future
            // finishes with whatever was delivered, or an error.
            self.conn = None;
        }
        fut.await
    }
}

async fn connect_h2(tpl: &RequestTemplate) -> Result<H2Sender, ErrorKind> {
    let stream = connect(tpl).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ErrorKind::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Connect once, to check the target is reachable before a run. For a TLS
/// target this is a full handshake (not counted in the statistics), whose
/// outcome — ALPN protocol and TLS version — is returned.
pub(crate) async fn probe(
    addr: SocketAddr,
    protocol: Protocol,
    tls: Option<&TlsClient>,
) -> Result<Option<Negotiated>, String> {
    let tcp = connect_tcp(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if let Some(tls) = tls {
        let (_stream, negotiated) = tls.probe(addr, tcp).await?;
        return Ok(Some(negotiated));
    }
    if let Protocol::Http2 | Protocol::Grpc = protocol {
        let (_sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr} failed: {e}"))?;
        drop(conn);
    }
    Ok(None)
}

/// An HTTP/2 connection shared by several stream workers.
pub(crate) struct H2Shared {
    slot: tokio::sync::Mutex<Option<H2Sender>>,
}

impl H2Shared {
    /// Open the connection (within `timeout`); on failure the first request
    /// reconnects and counts the error.
    pub async fn connect(tpl: &RequestTemplate, timeout: Duration) -> H2Shared {
        let sender = tokio::time::timeout(timeout, connect_h2(tpl)).await;
        H2Shared {
            slot: tokio::sync::Mutex::new(sender.ok().and_then(Result::ok)),
        }
    }

    async fn sender(&self, tpl: &RequestTemplate) -> Result<H2Sender, ErrorKind> {
        let mut slot = self.slot.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        *slot = None;
        let s = connect_h2(tpl).await?;
        *slot = Some(s.clone());
        Ok(s)
    }
}

/// Per-worker client state.
pub(crate) enum Client<'a> {
    H1(Option<H1>),
    H2 {
        shared: &'a H2Shared,
        sender: Option<H2Sender>,
    },
    Tcp {
        stream: Option<TcpStream>,
        buf: Vec<u8>,
    },
    Rpc(RpcClient<'a>),
}

impl<'a> Client<'a> {
    /// Open an HTTP/1.1 connection (within `timeout`); on failure the first
    /// request reconnects and counts the error.
    pub async fn new_h1(tpl: &RequestTemplate, timeout: Duration) -> Client<'a> {
        let conn = tokio::time::timeout(timeout, connect_h1(tpl)).await;
        Client::H1(conn.ok().and_then(Result::ok))
    }

    pub fn new_h2(shared: &'a H2Shared) -> Client<'a> {
        Client::H2 { shared, sender: None }
    }

    pub fn new_rpc(shared: &'a RpcShared) -> Client<'a> {
        Client::Rpc(RpcClient::new(shared))
    }

    pub async fn new_tcp(addr: SocketAddr, len: usize) -> Client<'a> {
        Client::Tcp {
            stream: connect_tcp(addr).await.ok(),
            buf: vec![0; len],
        }
    }

    /// Called when a request timed out: the connection state is unknown.
    pub fn on_timeout(&mut self) {
        match self {
            Client::H1(s) => *s = None,
            Client::Tcp { stream, .. } => *stream = None,
            // The stream was reset by dropping it; the connection is fine.
            Client::H2 { .. } => {}
            // The call is forgotten; the connection is fine.
            Client::Rpc(c) => c.on_timeout(),
        }
    }

    /// Perform one request.
    pub async fn exec(&mut self, tpl: &RequestTemplate) -> Result<Response, ErrorKind> {
        match self {
            Client::H1(slot) => {
                // A kept-alive connection may have been closed by the peer
                // meanwhile; that is not this request's fault, so reconnect.
                if slot.as_mut().is_none_or(|c| c.check_closed()) {
                    *slot = None;
                    *slot = Some(connect_h1(tpl).await?);
                }
                let conn = slot.as_mut().expect("connected");
                let result = conn.exec(tpl).await;
                if result.is_err() || conn.conn.is_none() {
                    *slot = None;
                }
                result
            }
            Client::H2 { shared, sender } => {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    *sender = None;
                    *sender = Some(shared.sender(tpl).await?);
                }
                let s = sender.as_mut().expect("connected");
                if s.ready().await.is_err() {
                    *sender = None;
                    return Err(ErrorKind::Io);
                }
                match s.send_request(tpl.build()).await {
                    Ok(resp) => read_response(resp, tpl.protocol).await,
                    Err(_) => {
                        if s.is_closed() {
                            *sender = None;
                        }
                        Err(ErrorKind::Io)
                    }
                }
            }
            Client::Tcp { stream, buf } => {
                if stream.is_none() {
                    *stream = Some(connect_tcp(tpl.addr).await.map_err(|_| ErrorKind::Connect)?);
                }
                let s = stream.as_mut().expect("connected");
                let io = async {
                    s.write_all(&tpl.body).await?;
                    s.read_exact(buf).await?;
                    Ok::<_, std::io::Error>(())
                };
                match io.await {
                    Ok(()) => Ok(Response {
                        status: None,
                        grpc_ok: None,
                        rpc: None,
                        bytes: buf.len() as u64,
                    }),
                    Err(_) => {
                        *stream = None;
                        Err(ErrorKind::Io)
                    }
                }
            }
            Client::Rpc(c) => {
                let a = c.call(tpl.addr, tpl.rpc.as_ref().expect("an RPC template")).await?;
                Ok(Response {
                    status: None,
                    grpc_ok: None,
                    rpc: Some((a.status, a.ok)),
                    bytes: a.bytes,
                })
            }
        }
    }
}

fn grpc_status_ok(headers: &HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|v| v.as_bytes().trim_ascii() == b"0")
}

async fn read_response(resp: hyper::Response<Incoming>, protocol: Protocol) -> Result<Response, ErrorKind> {
    let status = resp.status().as_u16();
    let grpc = protocol == Protocol::Grpc;
    // A "trailers-only" gRPC response carries grpc-status in the headers.
    let mut grpc_ok = if grpc { grpc_status_ok(resp.headers()) } else { None };
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    let mut grpc_buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ErrorKind::Io)?;
        match frame.into_data() {
            Ok(data) => {
                bytes += data.len() as u64;
                if grpc {
                    grpc_buf.extend_from_slice(&data);
                }
            }
            Err(frame) => {
                if let (true, Ok(trailers)) = (grpc, frame.into_trailers()) {
                    if let Some(ok) = grpc_status_ok(&trailers) {
                        grpc_ok = Some(ok);
                    }
                }
            }
        }
    }
    if grpc {
        let framed_ok = crate::grpc::decode_frames(&grpc_buf).is_ok();
        // A missing grpc-status is a failed call.
        grpc_ok = Some(grpc_ok.unwrap_or(false) && framed_ok);
    }
    Ok(Response {
        status: Some(status),
        grpc_ok,
        rpc: None,
        bytes,
    })
}
