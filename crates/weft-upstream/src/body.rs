//! Body types: what goes upstream ([`UpBody`]) and what goes back downstream ([`DownBody`]).
//! Bodies stream frame by frame (data and trailers); nothing is buffered whole except small request
//! bodies kept for retries.

use crate::cluster::{ActiveRequest, PooledH1};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
pub enum UpBody {
    Empty,
    /// A buffered body (replayable for retries: clone the `Bytes`).
    Full(Option<Bytes>),
    /// The downstream body, streamed through; its fate is recorded in the [`Upload`] so a failed
    /// try can be blamed on the right party.
    Stream(RequestBody, Arc<Upload>),
}

/// A request body as the downstream side hands it over: read by hyper's server (the HTTP/1
/// connections hyper serves after a protocol switch), fed by weft's own HTTP/1 server through a
/// [`feed`], or received on a stream of weft's own HTTP/2 server.
pub enum RequestBody {
    Hyper(Incoming),
    Fed(FedBody),
    H2(crate::h2_client::RecvBody),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Fed(FedBody {
            feed: None,
            hint: SizeHint::with_exact(0),
            done: true,
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Fed(b) => Pin::new(b).poll_frame(cx),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Fed(b) => b.done,
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Fed(b) => b.hint,
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

/// Why a body fed by the downstream server ended early: the [`UploadState`] it leaves.
#[derive(Debug, Clone, Copy)]
pub struct BodyFault(pub UploadState);

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            UploadState::Malformed => "the client sent a malformed request body",
            _ => "the client went away before the request body ended",
        })
    }
}

impl std::error::Error for BodyFault {}

/// A request body handed from the task that reads the client's connection to whoever consumes it,
/// one piece at a time: the reader reads the socket only when the consumer asks for more (so a
/// slow upstream slows the client down, and `Expect: 100-continue` is answered only when the body
/// is wanted). Both ends usually live in the same task, so a hand-off costs an uncontended lock.
pub fn feed(hint: SizeHint) -> (Feeder, FedBody) {
    let shared = Arc::new(parking_lot::Mutex::new(FeedState::default()));
    (
        Feeder { shared: shared.clone() },
        FedBody {
            feed: Some(shared),
            hint,
            done: false,
        },
    )
}

#[derive(Default)]
struct FeedState {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    /// How the body ended: `Ok`: complete; `Err`: how it failed.
    end: Option<Result<(), UploadState>>,
    /// The consumer is waiting for the next piece.
    wanted: bool,
    consumer: Option<std::task::Waker>,
    producer: Option<std::task::Waker>,
    /// The consumer dropped the body.
    gone: bool,
}

/// The consuming end of a [`feed`].
pub struct FedBody {
    feed: Option<Arc<parking_lot::Mutex<FeedState>>>,
    hint: SizeHint,
    done: bool,
}

impl Body for FedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(feed) = this.feed.as_ref().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        let mut s = feed.lock();
        if let Some(d) = s.data.take() {
            if let Some(n) = this.hint.exact() {
                let n = n.saturating_sub(d.len() as u64);
                this.hint = SizeHint::with_exact(n);
            }
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match s.end {
            Some(Ok(())) => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(state)) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(BodyFault(state)))))
            }
            None => {
                s.wanted = true;
                match &s.consumer {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.consumer = Some(cx.waker().clone()),
                }
                if let Some(p) = s.producer.take() {
                    p.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.hint.exact() == Some(0) && self.feed.as_ref().is_some_and(|f| f.lock().end == Some(Ok(())))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for FedBody {
    fn drop(&mut self) {
        if let Some(f) = &self.feed {
            let mut s = f.lock();
            s.gone = true;
            if let Some(p) = s.producer.take() {
                p.wake();
            }
        }
    }
}

/// The producing end of a [`feed`].
pub struct Feeder {
    shared: Arc<parking_lot::Mutex<FeedState>>,
}

impl Drop for Feeder {
    /// A body whose producer goes away before its end (the client's connection was dropped)
    /// ends as aborted: its consumer is never left waiting.
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        if s.end.is_none() {
            s.end = Some(Err(UploadState::Aborted));
            if let Some(c) = s.consumer.take() {
                c.wake();
            }
        }
    }
}

impl Feeder {
    /// `Ready(true)`: the consumer waits for a piece (and none is pending); `Ready(false)`: it
    /// dropped the body. `Pending`: wakes the task when either happens.
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.shared.lock();
        if s.gone {
            return Poll::Ready(false);
        }
        if s.wanted && s.data.is_none() && s.trailers.is_none() && s.end.is_none() {
            return Poll::Ready(true);
        }
        match &s.producer {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.producer = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether the consumer dropped the body.
    pub fn is_gone(&self) -> bool {
        self.shared.lock().gone
    }

    fn hand(&self, f: impl FnOnce(&mut FeedState)) {
        let mut s = self.shared.lock();
        f(&mut s);
        s.wanted = false;
        if let Some(c) = s.consumer.take() {
            c.wake();
        }
    }

    pub fn data(&self, d: Bytes) {
        self.hand(|s| s.data = Some(d));
    }

    /// The last piece of the body: the body ends after it.
    pub fn data_end(&self, d: Bytes) {
        self.hand(|s| {
            s.data = Some(d);
            s.end = Some(Ok(()));
        });
    }

    /// The body ended (after its trailers, if it had any).
    pub fn end(&self, trailers: Option<http::HeaderMap>) {
        self.hand(|s| {
            s.trailers = trailers;
            s.end = Some(Ok(()));
        });
    }

    pub fn fail(&self, state: UploadState) {
        self.hand(|s| s.end = Some(Err(state)));
    }
}

/// What happened to a request body streamed from the client. A try that fails because the
/// *client's* body broke (malformed chunked framing, an aborted upload) is the client's fault:
/// it is answered as such and never counts against the upstream host.
#[derive(Default)]
pub struct Upload {
    state: AtomicU8,
}

/// How a streamed upload ended, as far as the proxy has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UploadState {
    /// Still streaming (or never polled).
    InProgress = 0,
    /// The client sent the whole body.
    Complete = 1,
    /// The client sent bytes that are not a valid body (bad chunk size, bad framing).
    Malformed = 2,
    /// The client went away or reset the stream before the body ended.
    Aborted = 3,
}

impl Upload {
    pub fn state(&self) -> UploadState {
        match self.state.load(Ordering::Acquire) {
            1 => UploadState::Complete,
            2 => UploadState::Malformed,
            3 => UploadState::Aborted,
            _ => UploadState::InProgress,
        }
    }

    fn set(&self, s: UploadState) {
        self.state.store(s as u8, Ordering::Release);
    }

    fn record_error(&self, e: &BoxError) {
        if let Some(f) = e.downcast_ref::<BodyFault>() {
            return self.set(f.0);
        }
        // hyper's body decoder reports bad framing as InvalidData/InvalidInput; anything else (an
        // early EOF, a closed connection, an HTTP/2 reset) is the client going away.
        let malformed = e
            .downcast_ref::<hyper::Error>()
            .and_then(std::error::Error::source)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            });
        self.set(if malformed {
            UploadState::Malformed
        } else {
            UploadState::Aborted
        });
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(s, up) => {
                let r = Pin::new(&mut *s).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Err(e))) => up.record_error(e),
                    Poll::Ready(None) => up.set(UploadState::Complete),
                    Poll::Ready(Some(Ok(_))) if s.is_end_stream() => up.set(UploadState::Complete),
                    _ => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s, _) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s, _) => s.size_hint(),
        }
    }
}

/// Counts one exchange as in progress while it lives: on a downstream connection from the
/// request's arrival until hyper drops its response body (the connection's timeouts and idle
/// parking read the count); on an upstream HTTP/2 connection while its stream is in use (the
/// keep-alive pings read it).
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    pub fn start(count: &Arc<AtomicU32>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs when a response stream ends or is abandoned: finishes stats and writes the access log.
pub trait StreamEnd: Send + Sync {
    fn finish(&mut self, bytes_sent: u64, completed: bool);
    /// The response's trailers, as they go downstream (before `finish`). gRPC's status is there.
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// An upstream response's body as a try returns it: read by hyper's client (upgrades), by weft's
/// own HTTP/1.1 client ([`crate::h1`]), or by its HTTP/2 client ([`crate::h2_client`]).
pub enum RespBody {
    Hyper(Incoming),
    Raw(crate::h1::RawBody),
    H2(crate::h2_client::RecvBody),
}

/// A response on its way downstream, from the pipeline to the server that writes it: in a block
/// the worker thread keeps, so that each layer moves a pointer, not the whole response.
pub type KeptResponse = crate::kept::blocks::KeptBox<http::Response<DownBody>>;

/// A response body on its way downstream.
pub struct DownBody {
    kind: DownKind,
    end: Option<Box<dyn StreamEnd>>,
    /// The upstream request stays counted (least-request, circuit breakers) until the body ends.
    active: Option<ActiveRequest>,
    in_flight: Option<InFlight>,
    bytes: u64,
}

enum DownKind {
    Full(Option<Bytes>),
    Upstream { inner: Incoming, release: Option<PooledH1> },
    Raw(crate::h1::RawBody),
    H2(crate::h2_client::RecvBody),
}

impl DownBody {
    pub fn full(b: impl Into<Bytes>) -> DownBody {
        let b = b.into();
        DownBody {
            kind: DownKind::Full(if b.is_empty() { None } else { Some(b) }),
            end: None,
            active: None,
            in_flight: None,
            bytes: 0,
        }
    }

    pub fn empty() -> DownBody {
        DownBody {
            kind: DownKind::Full(None),
            end: None,
            active: None,
            in_flight: None,
            bytes: 0,
        }
    }

    pub fn upstream(body: RespBody, release: Option<PooledH1>) -> DownBody {
        let kind = match body {
            RespBody::Hyper(inner) => DownKind::Upstream { inner, release },
            RespBody::Raw(raw) => DownKind::Raw(raw),
            RespBody::H2(h2) => DownKind::H2(h2),
        };
        let mut b = DownBody {
            kind,
            end: None,
            active: None,
            in_flight: None,
            bytes: 0,
        };
        b.release_if_done();
        b
    }

    /// Attaches what must happen when the body ends: releasing the active-request slot and,
    /// when access logging is on, writing the log line. (In place, as [`DownBody::hold`]: the
    /// body sits in its response, and taking it out and putting it back copies both.)
    pub fn on_end(&mut self, active: Option<ActiveRequest>, end: Option<Box<dyn StreamEnd>>) {
        self.active = active;
        self.end = end;
        if self.is_end_stream() {
            self.finish(true);
        }
    }

    /// Keeps the exchange counted as in progress until the server drops this body (after
    /// writing its end, or on a reset).
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// Whether the rest of the body can be spliced to the client ([`crate::splice`]): an HTTP/1.1
    /// upstream's content-length body (see [`crate::h1::RawBody::can_splice`]).
    pub fn can_splice(&self) -> bool {
        matches!(&self.kind, DownKind::Raw(raw) if raw.can_splice())
    }

    /// Moves the rest of the body to `to` through `pipe` (after [`DownBody::can_splice`]),
    /// adding to `moved` the bytes handed to `to`; they count as the body's bytes, and its end
    /// (the access log line) comes when the last one has gone out or the move failed.
    pub fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &mut crate::splice::Pipe,
        to: &tokio::net::TcpStream,
        moved: &mut u64,
    ) -> Poll<std::io::Result<()>> {
        let DownKind::Raw(raw) = &mut self.kind else {
            return Poll::Ready(Err(std::io::Error::other("not an HTTP/1.1 upstream body")));
        };
        let before = *moved;
        let r = raw.poll_splice(cx, pipe, to, moved);
        self.bytes += *moved - before;
        if raw.is_end_stream() {
            // All of it is in the pipe: the upstream request is over (least request, circuit
            // breakers), as when the frame path reads the last byte. The end (the access log
            // line) waits for the last byte to go out.
            self.active = None;
        }
        match &r {
            Poll::Ready(Ok(())) => self.finish(true),
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Poll::Ready(Err(_)) => self.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn release_if_done(&mut self) {
        if let DownKind::Upstream { inner, release } = &mut self.kind {
            if inner.is_end_stream() {
                if let Some(p) = release.take() {
                    p.release();
                }
            }
        }
    }

    fn finish(&mut self, completed: bool) {
        self.active = None;
        if let Some(mut e) = self.end.take() {
            e.finish(self.bytes, completed);
        }
    }
}

impl Drop for DownBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            DownKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            DownKind::Upstream { inner, release } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if let Some(p) = release.take() {
                        p.release();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(f))) => {
                    if inner.is_end_stream() {
                        if let Some(p) = release.take() {
                            p.release();
                        }
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // The upstream connection is unusable: never return it to the pool.
                    release.take();
                    Poll::Ready(Some(Err(e.into())))
                }
            },
            DownKind::Raw(raw) => match Pin::new(&mut *raw).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                r => r,
            },
            DownKind::H2(h2) => match Pin::new(&mut *h2).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                r => r,
            },
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let (Some(t), Some(e)) = (f.trailers_ref(), &mut this.end) {
                    e.trailers(t);
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            DownKind::Full(b) => b.is_none(),
            DownKind::Upstream { inner, .. } => inner.is_end_stream(),
            DownKind::Raw(raw) => raw.is_end_stream(),
            DownKind::H2(h2) => h2.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            DownKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownKind::Upstream { inner, .. } => inner.size_hint(),
            DownKind::Raw(raw) => raw.size_hint(),
            DownKind::H2(h2) => h2.size_hint(),
        }
    }
}
