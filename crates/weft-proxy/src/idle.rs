//! Idle HTTP/1 connections without hyper's per-connection state.
//!
//! HTTP/1 is served by weft's own server (`crate::h1_server`), which releases its buffers
//! between requests by itself, and HTTP/2 by weft's HTTP/2 server (`crate::h2_server`); what
//! follows applies to the connections hyper's server takes over from the HTTP/1 server (a request
//! that switches protocols).
//!
//! hyper's HTTP/1 connection allocates an 8 KiB read buffer and an 8 KiB header write buffer up
//! front and keeps both (and its dispatcher state) for the connection's whole life; it has no
//! option to release them between requests. With thousands of idle keep-alive clients that is
//! most of the proxy's memory. So [`Parking`] drives the hyper connection and *parks* it once it
//! has been at rest for [`PARK_AFTER`]: the last response was written and flushed, no request is
//! in progress, the framing tracker has seen only complete messages, and hyper asked the socket
//! for more bytes and got none. Parking drops the hyper connection (freeing its buffers) but keeps the socket (the
//! I/O object hands it back when hyper drops it); when the client sends again, a new hyper
//! connection is built on the same socket with the same builder and service. The parked state is
//! the socket and a few pointers.
//!
//! An upgraded connection is never parked, nor anything the framing tracker stopped following
//! (see `h1_framing`): those run exactly as before. (HTTP/2 connections are not parked either:
//! their state — HPACK tables, stream ids, settings, windows — cannot be rebuilt; the patched h2
//! frees an idle connection's buffers itself.)

use crate::h1_framing::{Activity, FramingTracker, Sniffed};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::{Builder, HttpServerConnExec, UpgradeableConnection};
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A downstream connection's byte stream: a TCP socket, or TLS over one (`crate::tls`).
pub trait ConnIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits for bytes from the client without consuming them (they stay for the next read).
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>>;
    /// The connection's local address (the access log's `%DOWNSTREAM_LOCAL_ADDRESS%`).
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// The plain TCP socket underneath, which a response body can be spliced into
    /// (`weft_upstream::splice`); `None` for TLS.
    fn splice_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl ConnIo for TcpStream {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        TcpStream::poll_peek(self, cx, buf)
    }
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
    fn splice_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<T: ConnIo> ConnIo for Sniffed<T> {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        self.get_mut().poll_peek(cx, buf)
    }
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.get_ref().local_addr()
    }
    fn splice_socket(&self) -> Option<&TcpStream> {
        self.get_ref().splice_socket()
    }
}

/// A downstream connection's byte stream with bytes put back in front: what weft's own HTTP/1
/// server had read when it handed the connection to hyper's (an HTTP/2 preface, a request that
/// switches protocols). Empty otherwise: then reads go straight through.
pub struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T) -> Rewind<T> {
        Rewind {
            pre: Bytes::new(),
            inner,
        }
    }

    /// Puts `bytes` back: the next reads return them first.
    pub fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.pre.is_empty());
        self.pre = bytes;
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ConnIo> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            bytes::Buf::advance(&mut self.pre, n);
            if self.pre.is_empty() {
                // Not an empty view into the buffer it came from: that would keep it allocated.
                self.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: ConnIo> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: ConnIo> ConnIo for Rewind<T> {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            return Poll::Ready(Ok(n));
        }
        self.inner.poll_peek(cx, buf)
    }
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_addr()
    }
    fn splice_socket(&self) -> Option<&TcpStream> {
        self.inner.splice_socket()
    }
}

/// The stream hyper's server gets: the sniffed socket, with what weft's own server read put back.
pub type HyperIo<IO> = Rewind<Sniffed<IO>>;

/// How long an HTTP/1 connection must have been at rest before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Connections parked now, in this process: hyper's, and those weft's own HTTP/1 server holds
/// idle without buffers.
pub fn parked_connections() -> usize {
    PARKED.load(Ordering::Relaxed) + crate::h1_server::idle_connections()
}

/// State shared by a [`Parking`] connection, its I/O object (inside hyper) and its requests.
pub struct ParkShared<IO> {
    tracker: Arc<Mutex<FramingTracker>>,
    /// Requests whose response body hyper has not dropped yet (the connection's
    /// `watchdog::Exchanges::in_flight`, kept by `body::InFlight`).
    in_flight: Arc<AtomicU32>,
    /// The socket's I/O counters: a connection whose client has sent bytes is past its
    /// protocol choice.
    activity: Arc<Activity>,
    /// The last read returned `Pending` (hyper wanted bytes, the client had sent none).
    read_pending: AtomicBool,
    /// Bytes were written since the last successful flush.
    dirty: AtomicBool,
    /// Set while a parked hyper connection is dropped: its I/O object returns the socket to
    /// `slot` instead of closing it.
    keep: AtomicBool,
    slot: Mutex<Option<HyperIo<IO>>>,
}

impl<IO> ParkShared<IO> {
    fn at_rest(&self) -> bool {
        self.read_pending.load(Ordering::Acquire)
            && !self.dirty.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.tracker.lock().at_rest()
    }
}

/// The I/O object hyper gets: the sniffed socket, handed back on drop while parking.
pub struct ParkIo<IO> {
    inner: Option<HyperIo<IO>>,
    shared: Arc<ParkShared<IO>>,
}

impl<IO: ConnIo> ParkIo<IO> {
    fn io(&mut self) -> Pin<&mut HyperIo<IO>> {
        Pin::new(self.inner.as_mut().expect("the socket is only taken on drop"))
    }
}

impl<IO> Drop for ParkIo<IO> {
    fn drop(&mut self) {
        if self.shared.keep.load(Ordering::Acquire) {
            if let Some(io) = self.inner.take() {
                *self.shared.slot.lock() = Some(io);
            }
        }
    }
}

impl<IO: ConnIo> AsyncRead for ParkIo<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = self.io().poll_read(cx, buf);
        self.shared.read_pending.store(r.is_pending(), Ordering::Release);
        r
    }
}

impl<IO: ConnIo> AsyncWrite for ParkIo<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.shared.dirty.store(true, Ordering::Release);
        self.io().poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.dirty.store(true, Ordering::Release);
        self.io().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.io().poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            self.shared.dirty.store(false, Ordering::Release);
        }
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.dirty.store(true, Ordering::Release);
        self.io().poll_shutdown(cx)
    }
}

/// The hyper connection being driven, behind a trait object so that the struct needs no bounds.
trait ConnFuture: Future<Output = Result<(), BoxError>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<S, B, E, IO: ConnIo> ConnFuture for UpgradeableConnection<'_, TokioIo<ParkIo<IO>>, S, E>
where
    E: HttpServerConnExec<S::Future, B> + Send + Sync,
    S: Service<Request<Incoming>, Response = Response<B>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        UpgradeableConnection::graceful_shutdown(self)
    }
}

/// A downstream connection served by `builder`, parked while idle (see the module docs). Behaves
/// like the connection future it replaces: poll it to completion; `graceful_shutdown` closes a
/// parked connection at once.
pub struct Parking<'a, S, E, IO = TcpStream> {
    builder: &'a Builder<E>,
    /// The listener's codec. hyper-util's upgradeable connection ignores `http1_only` and
    /// `http2_only`, so the protocol is checked here, on the first bytes of the connection.
    codec: weft_config::Codec,
    svc: S,
    shared: Arc<ParkShared<IO>>,
    conn: Option<Pin<Box<dyn ConnFuture + 'a>>>,
    parked: Option<HyperIo<IO>>,
    /// The client's reads before this connection was handed over (`None`: it has spoken HTTP/1
    /// with weft's own server): a client that spoke may not switch to HTTP/2.
    fresh_reads: Option<u64>,
    /// Set by the connection's owner for a graceful shutdown (checked at every poll).
    shutdown: &'a AtomicBool,
    /// Since when the active connection has been at rest.
    rest_since: Option<Instant>,
    /// While active: when to park. (The connection's timeouts, parked or not, are the
    /// watchdog's: `crate::watchdog`.)
    timer: Option<Pin<Box<Sleep>>>,
    closing: bool,
}

impl<'a, S, B, E, IO: ConnIo> Parking<'a, S, E, IO>
where
    E: HttpServerConnExec<S::Future, B> + Clone + Send + Sync + 'a,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// A new connection starts parked: no hyper state until the client's first bytes arrive
    /// (and show a protocol the listener's `codec` accepts). `in_flight` counts the requests whose
    /// response body is still alive (the service holds a `body::InFlight` for each). `fresh`:
    /// no request was served on the connection before (by weft's own HTTP/1 server).
    pub fn new(
        builder: &'a Builder<E>,
        codec: weft_config::Codec,
        io: HyperIo<IO>,
        svc: S,
        in_flight: Arc<AtomicU32>,
        fresh: bool,
        shutdown: &'a AtomicBool,
    ) -> Self {
        let fresh_reads = fresh.then(|| io.get_ref().activity().reads());
        let shared = Arc::new(ParkShared {
            tracker: io.get_ref().tracker(),
            in_flight,
            activity: io.get_ref().activity(),
            read_pending: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            keep: AtomicBool::new(false),
            slot: Mutex::new(None),
        });
        PARKED.fetch_add(1, Ordering::Relaxed);
        Parking {
            builder,
            codec,
            svc,
            shared,
            conn: None,
            parked: Some(io),
            fresh_reads,
            shutdown,
            rest_since: None,
            timer: None,
            closing: false,
        }
    }

    fn resume(&mut self, io: HyperIo<IO>) {
        self.rest_since = None;
        self.shared.read_pending.store(false, Ordering::Release);
        self.shared.dirty.store(false, Ordering::Release);
        let io = ParkIo {
            inner: Some(io),
            shared: self.shared.clone(),
        };
        self.conn = Some(Box::pin(
            self.builder
                .serve_connection_with_upgrades(TokioIo::new(io), self.svc.clone()),
        ));
    }

    /// Starts a graceful shutdown: hyper's for an active connection; a parked one just closes.
    fn graceful_shutdown(&mut self) {
        self.closing = true;
        if let Some(c) = self.conn.as_mut() {
            c.as_mut().graceful_shutdown();
        }
    }
}

impl<S, E, IO> Parking<'_, S, E, IO> {
    /// Whether the connection may go on with a client whose next bytes start with `first`.
    fn accepts(&self, first: &[u8]) -> bool {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        let n = first.len().min(PREFACE.len());
        // Too few bytes to tell apart ("P" of "POST"): left to hyper-util's version sniffing.
        let maybe_h2 = first[..n] == PREFACE[..n];
        let h2 = maybe_h2 && n >= 4;
        let h1 = !maybe_h2;
        let spoke = self.fresh_reads.is_none_or(|r| self.shared.activity.reads() > r);
        match self.codec {
            _ if spoke => !h2,
            weft_config::Codec::Auto => true,
            weft_config::Codec::Http1 => !h2,
            weft_config::Codec::Http2 => !h1,
        }
    }

    fn close_parked(&mut self) {
        if self.parked.take().is_some() {
            PARKED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S, E, IO> Drop for Parking<'_, S, E, IO> {
    fn drop(&mut self) {
        self.close_parked();
    }
}

impl<'a, S, B, E, IO: ConnIo> Future for Parking<'a, S, E, IO>
where
    E: HttpServerConnExec<S::Future, B> + Clone + Send + Sync + 'a,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.closing && this.shutdown.load(Ordering::Relaxed) {
            this.graceful_shutdown();
        }
        loop {
            if let Some(conn) = this.conn.as_mut() {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    this.conn = None;
                    return Poll::Ready(r);
                }
                if this.closing {
                    return Poll::Pending;
                }
                if !this.shared.at_rest() {
                    this.rest_since = None;
                    return Poll::Pending;
                }
                // At rest: park once it has lasted PARK_AFTER. A busy keep-alive connection is
                // at rest between every two requests; parking each time would cost a new hyper
                // connection per request.
                let now = Instant::now();
                let since = *this.rest_since.get_or_insert(now);
                let due = since + PARK_AFTER;
                if now < due {
                    match this.timer.as_mut() {
                        // An earlier wake-up is already set: re-checked then.
                        Some(t) if !t.is_elapsed() && t.deadline() <= due => {}
                        Some(t) => t.as_mut().reset(due),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(due))),
                    }
                    if let Some(t) = this.timer.as_mut() {
                        if t.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
                // Park: drop hyper's connection; its I/O object hands the socket back.
                this.shared.keep.store(true, Ordering::Release);
                this.conn = None;
                this.shared.keep.store(false, Ordering::Release);
                this.parked = this.shared.slot.lock().take();
                if this.parked.is_none() {
                    // hyper no longer held the socket (cannot happen at rest): nothing to serve.
                    return Poll::Ready(Ok(()));
                }
                PARKED.fetch_add(1, Ordering::Relaxed);
                this.timer = None;
            }
            let Some(io) = this.parked.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if this.closing {
                this.close_parked();
                return Poll::Ready(Ok(()));
            }
            // Wait for the client without reading: a peek leaves the bytes for hyper.
            let mut peek = [0u8; 4];
            let mut buf = ReadBuf::new(&mut peek);
            match io.poll_peek(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.close_parked();
                    return Poll::Ready(Err(e.into()));
                }
                // The client closed.
                Poll::Ready(Ok(0)) => {
                    this.close_parked();
                    return Poll::Ready(Ok(()));
                }
                // A protocol this connection may not speak: an HTTP/2 preface after HTTP/1
                // requests (an HTTP/1 server answers it with an error and a close, but
                // hyper-util's version sniffing would switch protocol), or a protocol the
                // listener's `codec` excludes.
                Poll::Ready(Ok(_)) if !this.accepts(buf.filled()) => {
                    this.close_parked();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
            }
            let io = this.parked.take().expect("checked above");
            PARKED.fetch_sub(1, Ordering::Relaxed);
            this.resume(io);
        }
    }
}
