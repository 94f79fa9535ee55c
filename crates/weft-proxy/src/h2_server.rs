//! weft's own HTTP/2 server for downstream connections: the `h2` crate's server connection
//! driven in the connection's task, with the connection's streams polled in that same task.
//!
//! Why not hyper's HTTP/2 server (which weft used before): hyper spawns a task per stream, which
//! runs the request and then pipes the response body, wraps every request body in its own type,
//! and a response goes from the stream's task to the connection's task, which writes it: two
//! tasks woken, and a task created and freed, per request. Here a stream is a future in the
//! connection's set ([`FuturesUnordered`], which polls only the streams that were woken): a
//! response ready on a stream is queued and written by the same poll of the same task. Each
//! worker is a current-thread runtime, so another task would have run on the same thread anyway.
//!
//! Kept from hyper's server: h2's settings (windows of 1 MiB per stream and 16 MiB per
//! connection, 1,024 concurrent streams, the header list and send buffer limits), a `date` field
//! on responses that have none, connection-specific fields removed from responses, a body's known
//! length announced as `content-length`, a client's RST_STREAM cancelling its request, a body
//! error resetting the stream (with the upstream's reason when it was an HTTP/2 reset), a
//! keep-alive PING after [`KEEP_ALIVE`] without a read (no PONG within [`KEEP_ALIVE_TIMEOUT`]:
//! the connection is closed), the stream idle timer and graceful GOAWAY. Like hyper's server as
//! weft configured it, it offers no tunnel for HTTP/2 `CONNECT` (nor the extended CONNECT of
//! RFC 8441): such a request goes through the routes with an empty body.

use crate::h1_framing::Activity;
use crate::idle::{ConnIo, HyperIo};
use crate::watchdog::IdleTimed;
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::time::{Instant, Sleep};
use weft_core::shard::Counter;
use weft_upstream::body::{BoxError, DownBody, KeptResponse, RequestBody};
use weft_upstream::h2_client::{strip_connection_fields, Message, Pump, PumpError, RecvBody};

/// A PING goes to a client from which nothing was read for one to two of these (checked once
/// per interval).
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// No PONG within this time after a PING: the connection is closed.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// SETTINGS_MAX_CONCURRENT_STREAMS.
const MAX_STREAMS: u32 = 1024;

/// What the server needs from its connection manager.
pub struct Options<'a> {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest request header block accepted.
    pub max_header_list: u32,
    /// What the connection may buffer of response bodies the client does not take yet.
    pub max_send_buffer: usize,
    /// A stream not woken (no bytes either way, no upstream progress) for this long is reset
    /// (RST_STREAM CANCEL), which ends its upstream try; counted in `stream_idle_timeouts`.
    pub stream_idle: Option<Duration>,
    pub stream_idle_timeouts: Counter,
    pub keep_alive: Duration,
    pub keep_alive_timeout: Duration,
    /// Set to shut the connection down gracefully (checked at every wake-up): GOAWAY, and the
    /// streams in flight finish.
    pub closing: &'a AtomicBool,
}

/// Serves HTTP/2 on `io` (whose next bytes are the client's preface) with `svc` until the
/// connection ends.
pub async fn serve<IO, F, Fut>(io: HyperIo<IO>, opts: Options<'_>, svc: F)
where
    IO: ConnIo,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = KeptResponse>,
{
    let activity = io.get_ref().activity();
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_header_list_size(opts.max_header_list)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(opts.max_send_buffer)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut keep_alive = KeepAlive {
        pings: conn.ping_pong(),
        reads: activity.reads(),
        activity,
        timer: Box::pin(tokio::time::sleep(opts.keep_alive)),
        pinging: false,
        armed: false,
    };
    let (svc, opts) = (&svc, &opts);
    let mut streams = FuturesUnordered::new();
    let mut shutting = false;
    let wakes = Wakes::default();
    let (conn_waker, streams_waker) = wakes.wakers();
    poll_fn(|cx| {
        if !shutting && opts.closing.load(Ordering::Relaxed) {
            shutting = true;
            conn.graceful_shutdown();
        }
        wakes.register(cx.waker());
        let mut conn_cx = Context::from_waker(&conn_waker);
        let mut streams_cx = Context::from_waker(&streams_waker);
        loop {
            // The streams first: what they send is queued before the connection writes.
            for pass in 0..2 {
                wakes.hold();
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(&mut streams_cx) {}
                // The connection's wake-up, if a stream queued a frame, is the poll below.
                let (_, again) = wakes.release();
                if !again {
                    break;
                }
                // The set of streams wakes itself whenever it has polled each of its streams
                // once (to yield): a second pass finds nothing then. A stream still ready after
                // it waits for the task's next turn.
                if pass == 1 {
                    cx.waker().wake_by_ref();
                }
            }
            match conn.poll_accept(&mut conn_cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    // Boxed: the stream's state (the pipeline's above all) is large, and the set
                    // holds a pointer per stream (its placeholder entry, kept for the
                    // connection's life, no stream's state). Allocated before the future is
                    // built, which lets the compiler build it in place (built first, it was
                    // copied in: 7 KB per stream; not guaranteed, `bench/instructions` shows it).
                    let slot = Box::new_uninit();
                    let s = stream(req, respond, svc);
                    let s = Box::write(
                        slot,
                        match opts.stream_idle {
                            Some(idle) => Either::Left(IdleTimed::new(s, idle, opts.stream_idle_timeouts.clone())),
                            None => Either::Right(s),
                        },
                    );
                    streams.push(Box::into_pin(s));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "HTTP/2 connection failed");
                    return Poll::Ready(());
                }
                // Closed: no stream is left (h2 waits for them), or the connection failed and
                // none can be answered.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {
                    // A PING it queued woke the task: it is written on the next turn.
                    keep_alive.poll(&mut conn_cx, &mut conn, opts);
                    return Poll::Pending;
                }
            }
        }
    })
    .await;
}

/// The wakers the connection hands to h2 (`conn`) and to its set of streams (`streams`). While
/// the streams are polled, a wake-up only marks its flag: a stream that queued a frame wakes the
/// connection, whose poll follows at once anyway, and the set of streams wakes itself to yield
/// after polling each of its streams once. Scheduling the task again for either would cost a
/// whole connection poll for nothing. Any other wake-up (I/O, timers, h2 handing data to a
/// stream, other tasks) wakes the task: a stream woken that way waits for the task's next turn,
/// when more work has usually gathered.
#[derive(Default)]
struct Wakes {
    conn: Arc<Rewake>,
    streams: Arc<Rewake>,
}

impl Wakes {
    fn wakers(&self) -> (std::task::Waker, std::task::Waker) {
        (self.conn.clone().into(), self.streams.clone().into())
    }

    fn register(&self, task: &std::task::Waker) {
        self.conn.task.register(task);
        self.streams.task.register(task);
    }

    /// Wake-ups only mark their flags, until [`Wakes::release`].
    fn hold(&self) {
        for r in [&self.conn, &self.streams] {
            r.woken.store(false, Ordering::SeqCst);
            r.polling.store(true, Ordering::SeqCst);
        }
    }

    /// Wake-ups wake the task again; whether the connection and the streams were woken since
    /// [`Wakes::hold`].
    fn release(&self) -> (bool, bool) {
        (self.conn.end(), self.streams.end())
    }
}

/// One of [`Wakes`].
#[derive(Default)]
struct Rewake {
    task: futures_util::task::AtomicWaker,
    polling: AtomicBool,
    woken: AtomicBool,
}

impl Rewake {
    fn end(&self) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        self.woken.swap(false, Ordering::SeqCst)
    }
}

impl std::task::Wake for Rewake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
            // The poll may have ended between the two steps (another thread's wake-up).
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        self.task.wake();
    }
}

/// Waits for the client's first bytes (without consuming them) and tells whether they can begin
/// the HTTP/2 preface: a listener that serves only HTTP/2 closes on anything else, unanswered.
pub async fn preface_follows<IO: ConnIo>(io: &mut HyperIo<IO>) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; 4];
    match poll_fn(|cx| io.get_mut().poll_peek(cx, &mut ReadBuf::new(&mut first))).await {
        Ok(n) if n > 0 => first[..n] == PREFACE[..n],
        _ => false,
    }
}

/// One stream: the request to the pipeline, raced with the client's RST_STREAM; then the
/// response.
async fn stream<F, Fut>(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, svc: &F)
where
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = KeptResponse>,
{
    let (parts, recv) = req.into_parts();
    // CONNECT: no tunnel (as with hyper's server, which gave it an empty body and refused one
    // announcing a body).
    let connect = parts.method == http::Method::CONNECT;
    let body = match connect {
        false => RequestBody::H2(RecvBody::new(recv, &parts.headers, None)),
        true if RecvBody::new(recv, &parts.headers, None)
            .size_hint()
            .exact()
            .is_none_or(|n| n == 0) =>
        {
            RequestBody::empty()
        }
        true => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    let req = Request::from_parts(parts, body);
    let exchange = svc(req);
    let mut exchange = std::pin::pin!(exchange);
    let resp = poll_fn(|cx| match exchange.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        // The client reset the stream: dropping the exchange ends its upstream try.
        Poll::Pending => respond.poll_reset(cx).map(|_| None),
    })
    .await;
    if let Some(resp) = resp {
        send(resp.into_inner(), respond, connect).await;
    }
}

/// Sends a response: its head, then its body as fast as the client's window allows. `connect`:
/// it answers a CONNECT, and a successful one may not announce a length (RFC 9110 §9.3.6).
async fn send(resp: Response<DownBody>, mut respond: SendResponse<Bytes>, connect: bool) {
    let (mut parts, body) = resp.into_parts();
    strip_connection_fields(&mut parts.headers, Message::Response);
    if !parts.headers.contains_key(header::DATE) {
        parts
            .headers
            .insert(header::DATE, crate::h1_server::codec::date_value());
    }
    let eos = body.is_end_stream();
    let tunnel = connect && parts.status.is_success();
    if tunnel {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else if !eos {
        if let Some(n) = body.size_hint().exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(n));
        }
    }
    let tx = match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "sending an HTTP/2 response head failed");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if eos {
        return;
    }
    let mut pump = Pump::new(body, tx);
    if let Err(PumpError::Body(e)) = poll_fn(|cx| pump.poll_send(cx)).await {
        tracing::debug!(error = %e, "response body failed: resetting the stream");
        pump.stream().send_reset(reset_reason(&e));
    }
}

/// The reason a stream whose response body failed is reset with: the upstream's, when the body
/// came from an upstream HTTP/2 stream that was reset; INTERNAL_ERROR otherwise (as hyper).
fn reset_reason(e: &BoxError) -> Reason {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return r;
        }
        cause = c.source();
    }
    Reason::INTERNAL_ERROR
}

/// The connection's keep-alive: a PING when nothing was read from the client for an interval, and
/// the connection closed if its PONG does not come in time.
struct KeepAlive {
    pings: Option<h2::PingPong>,
    activity: Arc<Activity>,
    /// Reads counted when the timer was last armed.
    reads: u64,
    timer: Pin<Box<Sleep>>,
    /// A PING is out: the timer is its deadline.
    pinging: bool,
    /// The timer was polled since it was last set: it will wake the connection when it elapses
    /// and need not be polled again before (a poll costs more than the check).
    armed: bool,
}

impl KeepAlive {
    /// Sends a PING, or shuts the connection down, when due; either wakes the connection, which
    /// writes it on its next poll.
    fn poll<T, B>(&mut self, cx: &mut Context<'_>, conn: &mut h2::server::Connection<T, B>, opts: &Options<'_>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        B: bytes::Buf,
    {
        loop {
            let Some(pings) = self.pings.as_mut() else {
                return;
            };
            if self.pinging {
                match pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.pinging = false;
                        self.rearm(opts.keep_alive);
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        self.pings = None;
                        return;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.pinging && self.armed && !self.timer.is_elapsed() {
                return;
            }
            // A poll made without coop budget left returns Pending having registered nothing
            // with the timer: only a poll with budget arms it.
            let budget = tokio::task::coop::has_budget_remaining();
            if self.timer.as_mut().poll(cx).is_pending() {
                self.armed = budget;
                return;
            }
            if self.pinging {
                tracing::debug!("HTTP/2 client sent no PONG in time: closing the connection");
                conn.abrupt_shutdown(Reason::NO_ERROR);
                // The GOAWAY goes out, and the connection ends, on the connection's next poll.
                cx.waker().wake_by_ref();
                self.pings = None;
                return;
            }
            if self.activity.reads() != self.reads {
                self.rearm(opts.keep_alive);
                continue;
            }
            let Some(pings) = self.pings.as_mut() else {
                return;
            };
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                self.pings = None;
                return;
            }
            self.pinging = true;
            self.timer.as_mut().reset(Instant::now() + opts.keep_alive_timeout);
            let budget = tokio::task::coop::has_budget_remaining();
            self.armed = self.timer.as_mut().poll(cx).is_pending() && budget;
            return;
        }
    }

    fn rearm(&mut self, interval: Duration) {
        self.reads = self.activity.reads();
        self.timer.as_mut().reset(Instant::now() + interval);
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1_framing::Sniffed;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn options(keep_alive: Duration, closing: &AtomicBool) -> Options<'_> {
        Options {
            max_header_list: 16 << 10,
            max_send_buffer: 1 << 20,
            stream_idle: None,
            stream_idle_timeouts: Counter::default(),
            keep_alive,
            keep_alive_timeout: keep_alive,
            closing,
        }
    }

    /// Serves one connection on 127.0.0.1 with `svc`; the task ends with the connection.
    async fn server<F, Fut>(keep_alive: Duration, svc: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
    where
        F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<DownBody>> + Send,
    {
        // The pipeline hands its responses over in kept blocks.
        let svc = move |req| {
            let f = svc(req);
            async move { KeptResponse::new(f.await) }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let closing = AtomicBool::new(false);
            let io = crate::idle::Rewind::new(Sniffed::new(s).0);
            serve(io, options(keep_alive, &closing), svc).await;
        });
        (addr, task)
    }

    async fn client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
        let (send, conn) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    #[tokio::test]
    async fn responses_get_a_date_and_a_length_and_lose_connection_fields() {
        let (addr, _task) = server(KEEP_ALIVE, |req: Request<RequestBody>| async move {
            // Echoes the request body.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut resp = Response::new(DownBody::full(body));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp.headers_mut()
                .insert("keep-alive", HeaderValue::from_static("timeout=5"));
            resp.headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
            resp
        })
        .await;
        let mut send = client(addr).await;
        let req = Request::post("http://example/echo").body(()).unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"hello"), true).unwrap();
        let resp = resp.await.unwrap();
        let h = resp.headers();
        assert!(httpdate::parse_http_date(h[header::DATE].to_str().unwrap()).is_ok());
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        for gone in ["connection", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} was not removed");
        }
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn a_connect_gets_an_empty_body_and_its_success_no_length() {
        let (addr, _task) = server(KEEP_ALIVE, |req: Request<RequestBody>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty(), "a CONNECT's body reached the routes");
            Response::new(DownBody::full("tunnel refused"))
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let req = Request::connect("example:443").body(()).unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"bytes for a tunnel"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[tokio::test]
    async fn a_client_reset_cancels_the_exchange() {
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let dropped_tx = parking_lot::Mutex::new(Some(dropped_tx));
        struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.take().map(|t| t.send(()));
            }
        }
        let (addr, _task) = server(KEEP_ALIVE, move |_req| {
            let guard = OnDrop(dropped_tx.lock().take());
            async move {
                let _guard = guard;
                std::future::pending::<Response<DownBody>>().await
            }
        })
        .await;
        let mut send = client(addr).await;
        let (_resp, mut tx) = send
            .send_request(Request::get("http://example/").body(()).unwrap(), false)
            .unwrap();
        tx.send_reset(Reason::CANCEL);
        // Fails if the exchange lives on after the client's RST_STREAM.
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("the exchange was not dropped after the reset")
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_that_answers_no_ping_is_closed() {
        let (addr, task) = server(Duration::from_millis(100), |_req| async {
            Response::new(DownBody::empty())
        })
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        // An empty SETTINGS frame; the server's SETTINGS and PINGs are never answered.
        c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut seen = Vec::new();
        let read_all = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                match c.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf
        };
        let bytes = tokio::time::timeout(Duration::from_secs(5), read_all)
            .await
            .expect("the connection was not closed");
        let mut at = 0;
        while at + 9 <= bytes.len() {
            let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
            seen.push(bytes[at + 3]);
            at += 9 + len;
        }
        assert!(seen.contains(&6), "no PING was sent: frame types {seen:?}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_reset_upstream_stream_passes_its_reason_on() {
        let e: BoxError = Box::new(h2::Error::from(Reason::CANCEL));
        assert_eq!(reset_reason(&e), Reason::CANCEL);
        let e: BoxError = Box::new(std::io::Error::other("gone"));
        assert_eq!(reset_reason(&e), Reason::INTERNAL_ERROR);
    }

    #[tokio::test]
    async fn the_date_is_an_http_date() {
        let v = crate::h1_server::codec::date_value();
        assert_eq!(v.len(), 29);
        assert!(httpdate::parse_http_date(v.to_str().unwrap()).is_ok());
    }
}
