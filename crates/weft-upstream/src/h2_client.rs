//! weft's HTTP/2 upstream client: the `h2` crate's client driven from the request's own task.
//!
//! Why not hyper's HTTP/2 client (which weft used before): hyper hands every request over a
//! channel to a dispatch task that owns the connection's `SendRequest`, answers through a oneshot,
//! and spawns two more tasks per request (one pipes the request body, one awaits the response) —
//! three task hand-offs per call on the path of every proxied gRPC call. Here the request's task
//! opens the stream itself (h2's `SendRequest` is a shared handle), sends what it has of the body
//! while it waits for the response head, and spawns a task only for a body that is still streaming
//! when the response head arrives (client streaming, bidirectional streaming). One task per
//! connection still drives the socket, as in hyper, and sends keep-alive pings.

use crate::body::{BoxError, InFlight, UpBody};
use crate::h1::hop_by_hop_index;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Settings of an upstream HTTP/2 connection.
pub struct Settings {
    /// What the connection may buffer of request bodies the upstream does not take yet.
    pub max_send_buffer: usize,
    /// Send a PING this often while requests are in flight; no PONG within `keep_alive_timeout`
    /// closes the connection (its requests fail and are retried on a new one if allowed).
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

/// One upstream HTTP/2 connection, as the pool hands it to a request: a handle to open streams.
#[derive(Clone)]
pub struct H2Conn {
    send: SendRequest<Bytes>,
    shared: Arc<ConnShared>,
}

/// What the connection's task and its users share.
struct ConnShared {
    closed: AtomicBool,
    /// Streams in flight (an [`InFlight`] each, held by the request, then by its response body or
    /// its upload still streaming): the task pings only while there are some, as an idle
    /// connection's pings are refused by some servers (gRPC's default policy).
    in_flight: Arc<AtomicU32>,
    /// Held by a request from before its stream is opened until h2 has opened it. When the
    /// upstream's stream limit is reached, h2 queues a new stream ("pending open") until another
    /// ends; holding this keeps that queue to one stream per connection, as hyper's client did:
    /// the requests behind it wait here unsent, so that if the connection goes away meanwhile they
    /// go on another one, and one abandoned while it waits is never sent at all.
    opening: tokio::sync::Mutex<()>,
}

impl H2Conn {
    /// Whether the connection can take no more requests (closed, or told to go away).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    fn mark_closed(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

/// HTTP/2 handshake over `io`; the connection's task (spawned here) holds `guard` until the
/// connection ends.
pub async fn handshake<IO, G>(io: IO, settings: Settings, guard: G) -> Result<H2Conn, h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        // As hyper's client did: streams the server has not yet allowed are queued, not refused.
        .initial_max_send_streams(100)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(settings.max_send_buffer)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let shared = Arc::new(ConnShared {
        closed: AtomicBool::new(false),
        in_flight: Arc::default(),
        opening: tokio::sync::Mutex::new(()),
    });
    let task_shared = shared.clone();
    tokio::spawn(async move {
        drive(conn, &task_shared, &settings).await;
        task_shared.closed.store(true, Ordering::Relaxed);
        drop(guard);
    });
    Ok(H2Conn { send, shared })
}

/// Runs the connection until it ends, pinging it while requests are in flight.
async fn drive<IO>(mut conn: h2::client::Connection<IO, Bytes>, shared: &Arc<ConnShared>, settings: &Settings)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut pings) = conn.ping_pong() else {
        let _ = conn.await;
        return;
    };
    let every = settings.keep_alive_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = tick.tick() => {}
        }
        if shared.in_flight.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let pong = tokio::time::timeout(settings.keep_alive_timeout, pings.ping(h2::Ping::opaque()));
        tokio::select! {
            _ = &mut conn => return,
            r = pong => if !matches!(r, Ok(Ok(_))) {
                tracing::debug!("upstream HTTP/2 connection closed: no PONG in time");
                // Dropping the connection fails its streams.
                return;
            }
        }
    }
}

/// Why a try on an HTTP/2 connection failed.
#[derive(Debug)]
pub enum H2Failure {
    /// The connection could take no new stream (closed, or going away); nothing was sent and the
    /// request is intact: it goes on another connection.
    Again,
    /// The stream could not be opened; nothing was sent, the body is still in the request.
    NotOpened(h2::Error),
    /// The stream failed after it was opened; the body is gone.
    Failed(h2::Error),
    /// The client's request body failed (the [`crate::body::Upload`] records how).
    Body(BoxError),
}

/// One request on `conn`: opens a stream, sends the body while waiting for the response head,
/// and leaves a body that is still streaming to a task of its own.
pub async fn round_trip(conn: &H2Conn, request: &mut Request<UpBody>) -> Result<Response<RecvBody>, H2Failure> {
    let opening = match conn.shared.opening.try_lock() {
        Ok(g) => g,
        Err(_) => conn.shared.opening.lock().await,
    };
    let mut send = conn.send.clone();
    if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
        conn.mark_closed();
        return Err(H2Failure::Again);
    }
    let (parts, body) = std::mem::replace(request, Request::new(UpBody::Empty)).into_parts();
    let mut head = Request::from_parts(parts, ());
    strip_connection_fields(head.headers_mut(), Message::Request);
    if let Some(len) = body.size_hint().exact() {
        // As hyper's client: a body's known length is announced unless the message says it.
        if (len != 0 || has_payload_semantics(head.method())) && !head.headers().contains_key(header::CONTENT_LENGTH) {
            head.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let eos = body.is_end_stream();
    let (mut response, tx) = match send.send_request(head, eos) {
        Ok(r) => r,
        Err(e) => {
            if e.is_go_away() || e.is_io() {
                conn.mark_closed();
            }
            *request.body_mut() = body;
            return Err(H2Failure::NotOpened(e));
        }
    };
    let in_flight = InFlight::start(&conn.shared.in_flight);
    // Ready again once this stream is open (at once, unless the upstream's stream limit is
    // reached). An error here (the connection went away first) reaches the response too.
    let _ = poll_fn(|cx| send.poll_ready(cx)).await;
    drop(opening);
    let head = if eos {
        (&mut response).await
    } else {
        let mut pump = Pump::upload(body, tx);
        let mut pumped = false;
        let head = poll_fn(|cx| {
            if !pumped {
                if let Poll::Ready(r) = pump.poll_send(cx) {
                    if let Err(PumpError::Body(e)) = r {
                        // The client's body failed: the upstream stream is reset, and a response
                        // is of no use to the client.
                        pump.stream().send_reset(h2::Reason::CANCEL);
                        return Poll::Ready(Err(e));
                    }
                    pumped = true;
                }
            }
            Pin::new(&mut response).poll(cx).map(Ok)
        })
        .await
        .map_err(H2Failure::Body)?;
        if !pumped && head.is_ok() {
            // The body is still streaming: it goes on beside the response.
            let in_flight = InFlight::start(&conn.shared.in_flight);
            tokio::spawn(async move {
                if let Err(PumpError::Body(_)) = poll_fn(|cx| pump.poll_send(cx)).await {
                    pump.stream().send_reset(h2::Reason::CANCEL);
                }
                drop(in_flight);
            });
        }
        head
    };
    match head {
        Ok(resp) => {
            let (parts, recv) = resp.into_parts();
            let body = RecvBody::new(recv, &parts.headers, Some(in_flight));
            Ok(Response::from_parts(parts, body))
        }
        Err(e) => Err(H2Failure::Failed(e)),
    }
}

/// Methods whose requests have defined payload semantics (RFC 9110 §9.3): their empty body is
/// announced as `content-length: 0`.
fn has_payload_semantics(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT | Method::OPTIONS | Method::TRACE
    )
}

/// Which HTTP/2 message [`strip_connection_fields`] cleans.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Request,
    Response,
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2): the connection-specific ones, and `te`
/// (in a request unless it is `trailers`: weft adds that one to a gRPC request). weft's request
/// path has already removed them, except those an upgrade keeps (HTTP/2 has no upgrade: the
/// request goes as a plain one) and what a route's header mutations or a local reply added; h2
/// refuses a message that has any. One pass over the names finds them.
pub fn strip_connection_fields(h: &mut HeaderMap, kind: Message) {
    // Bits of `HOP_BY_HOP`: connection, upgrade, keep-alive, proxy-connection, transfer-encoding.
    const FORBIDDEN: u8 = 0b1_1111;
    let mut found = 0u8;
    let mut te = false;
    for name in h.keys() {
        match hop_by_hop_index(name) {
            Some(i) => found |= 1 << i,
            None => te |= name == header::TE,
        }
    }
    for (bit, name) in crate::h1::HOP_BY_HOP.iter().enumerate() {
        if found & FORBIDDEN & (1 << bit) != 0 {
            h.remove(name);
        }
    }
    if te
        && (kind == Message::Response
            || h.get_all(header::TE)
                .iter()
                .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")))
    {
        h.remove(header::TE);
    }
}

/// Why a [`Pump`] stopped before the body's end.
pub enum PumpError {
    /// The body being sent failed; the stream is left for the caller to reset (with the reason
    /// its side calls for).
    Body(BoxError),
    /// The stream failed or was reset by the peer: nothing more of the body is wanted.
    Stream,
}

/// Sends a body on an HTTP/2 stream, reading it only as fast as the peer's window takes it: a
/// request body upstream (this client, [`Pump::upload`]) or a response body downstream (weft's
/// HTTP/2 server, [`Pump::new`]). A response body is read one piece ahead, held until the stream
/// has room for it: capacity is claimed only for a piece in hand (a claim made before reading can
/// pin the connection's window on a body that sends nothing and stall the connection's other
/// streams, hyper#4003). An upload claims one byte of room before it reads, as weft's client
/// always did: the client's body then stays unread, and the upload counted as in progress (which
/// extends the route timeout), while the upstream takes nothing.
pub struct Pump<B> {
    body: B,
    tx: SendStream<Bytes>,
    held: Option<(Bytes, bool)>,
    /// Wait for room before reading each piece (the upload of a request: the client's body stays
    /// unread, and counted as in progress, until the upstream takes more).
    room_first: bool,
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Pump<B> {
    /// A response body downstream (weft's HTTP/2 server).
    pub fn new(body: B, tx: SendStream<Bytes>) -> Pump<B> {
        Pump {
            body,
            tx,
            held: None,
            room_first: false,
        }
    }

    /// A request body upstream: a piece is read from the client only once the upstream has room.
    pub fn upload(body: B, tx: SendStream<Bytes>) -> Pump<B> {
        Pump {
            body,
            tx,
            held: None,
            room_first: true,
        }
    }

    /// The stream, to reset it after a [`PumpError::Body`].
    pub fn stream(&mut self) -> &mut SendStream<Bytes> {
        &mut self.tx
    }

    /// Waits until the stream has room for at least one byte (capacity claimed before).
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        while self.tx.capacity() == 0 {
            match ready!(self.tx.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Poll::Ready(Err(PumpError::Stream)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Sends until the body's end (`Ok`), or until it or the stream fails.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        let sent = self.poll_pump(cx);
        // Registers for the peer's RST_STREAM while it waits for the body or for room: checked
        // only then (each check takes h2's lock), as a reset stream refuses what is sent on it.
        if sent.is_pending() && self.tx.poll_reset(cx).is_ready() {
            return Poll::Ready(Err(PumpError::Stream));
        }
        sent
    }

    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            if let Some((_, eos)) = self.held {
                ready!(self.poll_room(cx))?;
                let (data, _) = self.held.take().expect("checked above");
                if self.tx.send_data(data, eos).is_err() {
                    return Poll::Ready(Err(PumpError::Stream));
                }
                if eos {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if self.room_first {
                self.tx.reserve_capacity(1);
                ready!(self.poll_room(cx))?;
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Body(e))),
                None => {
                    self.tx.reserve_capacity(0);
                    return Poll::Ready(self.tx.send_data(Bytes::new(), true).map_err(|_| PumpError::Stream));
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    let eos = self.body.is_end_stream();
                    if data.is_empty() {
                        // Needs no room (an empty piece, perhaps the end of the stream).
                        if self.tx.send_data(data, eos).is_err() {
                            return Poll::Ready(Err(PumpError::Stream));
                        }
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A claim of one byte: h2 raises it to what is buffered when the piece is
                    // sent; a whole piece's claim per waiting stream would crowd the window.
                    self.tx.reserve_capacity(1);
                    self.held = Some((data, eos));
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers() {
                self.tx.reserve_capacity(0);
                return Poll::Ready(self.tx.send_trailers(trailers).map_err(|_| PumpError::Stream));
            }
        }
    }
}

/// A body received on an HTTP/2 stream — an upstream's response, or a client's request on weft's
/// HTTP/2 server: data frames (their flow-control window released as they are handed on, so the
/// sender is read only as fast as the receiver takes it) and trailers.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is still to come (h2 itself checks the length).
    remaining: Option<u64>,
    _in_flight: Option<InFlight>,
}

impl RecvBody {
    /// The body of a message with the fields `headers`; `in_flight`: held until the body is
    /// dropped (an upstream stream counted for its connection's keep-alive).
    pub fn new(recv: RecvStream, headers: &HeaderMap, in_flight: Option<InFlight>) -> RecvBody {
        // h2 has checked the field (a malformed one resets the stream) and checks the data's
        // length against it.
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            // A message that ended with its head and gives no length has none (as hyper's body
            // said): `content-length: 0` to an HTTP/1 peer, not chunked framing.
            .or_else(|| recv.is_end_stream().then_some(0));
        RecvBody {
            recv,
            data_done: false,
            remaining,
            _in_flight: in_flight,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = &mut this.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{feed, RequestBody, Upload};
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    /// An h2c server on 127.0.0.1 (the `h2` crate's) whose every stream `answer` handles.
    async fn server<F, Fut>(max_streams: u32, answer: F) -> std::net::SocketAddr
    where
        F: Fn(Request<RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut conn = h2::server::Builder::new()
                        .max_concurrent_streams(max_streams)
                        .handshake::<_, Bytes>(io)
                        .await
                        .unwrap();
                    while let Some(Ok((req, tx))) = conn.accept().await {
                        tokio::spawn(answer.clone()(req, tx));
                    }
                });
            }
        });
        addr
    }

    async fn connect(addr: std::net::SocketAddr) -> H2Conn {
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let settings = Settings {
            max_send_buffer: 1 << 20,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        };
        handshake(io, settings, ()).await.unwrap()
    }

    fn get(body: UpBody) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.uri_mut() = "http://svc/x".parse().unwrap();
        *r.version_mut() = http::Version::HTTP_2;
        r
    }

    /// A peer that completes the HTTP/2 handshake (its SETTINGS) and then never answers anything,
    /// PINGs included: a connection to a host that died without closing it.
    #[tokio::test]
    async fn a_connection_whose_peer_stops_answering_pings_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.unwrap();
            // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
            io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut sink = [0u8; 4096];
            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let settings = Settings {
            max_send_buffer: 1 << 20,
            keep_alive_interval: Duration::from_millis(100),
            keep_alive_timeout: Duration::from_millis(100),
        };
        let conn = handshake(io, settings, ()).await.unwrap();
        // The request is never answered; the unanswered PING ends the connection and the request.
        let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&conn, &mut get(UpBody::Empty))).await;
        match r {
            Ok(Err(H2Failure::Failed(_))) => {}
            Ok(Err(other)) => panic!("failed otherwise: {other:?}"),
            Ok(Ok(resp)) => panic!("answered: {}", resp.status()),
            Err(_) => panic!("still waiting after 5 s"),
        }
        assert!(conn.is_closed(), "the pool no longer hands the connection out");
    }

    #[tokio::test]
    async fn a_response_ending_with_its_head_has_an_exact_empty_length() {
        let addr = server(100, |_req, mut tx| async move {
            let resp = http::Response::builder()
                .status(302)
                .header("location", "/y")
                .body(())
                .unwrap();
            tx.send_response(resp, true).unwrap();
        })
        .await;
        let conn = connect(addr).await;
        let resp = round_trip(&conn, &mut get(UpBody::Empty)).await.expect("a response");
        assert_eq!(resp.status(), 302);
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
        assert!(resp.body().is_end_stream());
        // weft's HTTP/1 server frames a response by this: `content-length: 0`, not chunked.
        assert_eq!(resp.body().size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_complete_response_then_reset_no_error_ends_cleanly_while_the_upload_stops() {
        // The server answers at once, and once the client has read the answer resets the
        // request's upload with NO_ERROR (RFC 9113 §8.1).
        let (reset_tx, reset_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let reset_rx = Arc::new(tokio::sync::Mutex::new(reset_rx));
        let addr = server(100, move |_req, mut tx| {
            let reset_rx = reset_rx.clone();
            async move {
                let resp = http::Response::builder().status(413).body(()).unwrap();
                let mut body = tx.send_response(resp, false).unwrap();
                body.send_data(Bytes::from_static(b"too big"), true).unwrap();
                reset_rx.lock().await.recv().await;
                tx.send_reset(h2::Reason::NO_ERROR);
            }
        })
        .await;
        let conn = connect(addr).await;
        // A client body that never ends.
        let (feeder, fed) = feed(SizeHint::default());
        let up = Arc::new(Upload::default());
        let mut req = get(UpBody::Stream(RequestBody::Fed(fed), up));
        *req.method_mut() = Method::POST;
        let resp = round_trip(&conn, &mut req).await.expect("a response");
        assert_eq!(resp.status(), 413);
        let mut body = resp.into_body();
        let data = body.frame().await.expect("a frame").expect("data");
        assert_eq!(data.into_data().unwrap(), "too big");
        reset_tx.send(()).unwrap();
        // The pump sees the reset and drops the client's body.
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while !feeder.is_gone() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(gone.await.is_ok(), "the upload stopped");
        // The stream is reset by now; the body still ends cleanly (h2 keeps a reset that follows
        // the response's end apart from one that truncates it, which stays an error).
        assert!(
            body.frame().await.is_none(),
            "a reset with NO_ERROR after the whole response is a clean end"
        );
    }

    #[tokio::test]
    async fn streams_beyond_the_upstreams_limit_wait_and_all_complete() {
        let active = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (a, m) = (active.clone(), most.clone());
        let addr = server(1, move |_req, mut tx| {
            let (active, most) = (a.clone(), m.clone());
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                active.fetch_sub(1, Ordering::SeqCst);
                tx.send_response(http::Response::new(()), true).unwrap();
            }
        })
        .await;
        let conn = connect(addr).await;
        // Let the server's SETTINGS (one stream at a time) arrive.
        let first = round_trip(&conn, &mut get(UpBody::Empty)).await.expect("a response");
        assert_eq!(first.status(), 200);
        let calls = (0..4).map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move {
                round_trip(&conn, &mut get(UpBody::Empty))
                    .await
                    .ok()
                    .map(|r| r.status())
            })
        });
        for c in calls {
            let status = tokio::time::timeout(Duration::from_secs(10), c).await.unwrap().unwrap();
            assert_eq!(status, Some(http::StatusCode::OK));
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "the upstream's limit was kept");
    }

    #[test]
    fn connection_fields_are_removed_and_te_kept_only_as_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_connection_fields(&mut h, Message::Request);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["trailer", "x-kept"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_connection_fields(&mut h, Message::Request);
        assert_eq!(h[header::TE], "trailers");
        // A response may not carry `te` at all.
        strip_connection_fields(&mut h, Message::Response);
        assert!(h.is_empty());
    }
}
