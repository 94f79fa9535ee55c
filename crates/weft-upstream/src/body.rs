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
    Stream(Incoming, Arc<Upload>),
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

    fn record_error(&self, e: &hyper::Error) {
        // The body decoder reports bad framing as InvalidData/InvalidInput; anything else (an
        // early EOF, a closed connection, an HTTP/2 reset) is the client going away.
        let malformed = std::error::Error::source(e)
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
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// Counts one exchange on a connection as in progress, from the request's arrival until hyper
/// drops its response body; the connection's timeouts and idle parking read the count.
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

/// An upstream response's body as a try returns it: read by hyper's client, or by weft's own
/// HTTP/1.1 client ([`crate::h1`]).
pub enum RespBody {
    Hyper(Incoming),
    Raw(crate::h1::RawBody),
}

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
    /// when access logging is on, writing the log line.
    pub fn on_end(mut self, active: Option<ActiveRequest>, end: Option<Box<dyn StreamEnd>>) -> DownBody {
        self.active = active;
        self.end = end;
        if self.is_end_stream() {
            self.finish(true);
        }
        self
    }

    /// Keeps the exchange counted as in progress until hyper drops this body (after writing
    /// its end, or on a reset).
    pub fn hold(mut self, in_flight: InFlight) -> DownBody {
        self.in_flight = Some(in_flight);
        self
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            DownKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownKind::Upstream { inner, .. } => inner.size_hint(),
            DownKind::Raw(raw) => raw.size_hint(),
        }
    }
}
