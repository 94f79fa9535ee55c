//! weft's own HTTP/1.1 server for downstream connections: what a sidecar does most, a keep-alive
//! exchange, driven in the connection's task with no per-request task, channel or timer.
//!
//! hyper's server parsed each head into its own structures, ran a dispatcher around the service
//! and re-encoded the response through generic buffers; with the framing tracker that watched its
//! reads (for smuggling verdicts hyper does not expose) and the parking wrapper that released its
//! buffers between requests, that was ~11,000 of ~36,000 instructions per proxied request
//! (docs/benchmarks.md). Here the connection's task parses the head once (httparse, as hyper),
//! hands the request to the pipeline, feeds a request body to it as it asks, and writes the
//! response head and body itself, the head and a small body in one write. Between requests the
//! read buffer is released: an idle connection holds the socket and a few words.
//!
//! A request that switches protocols (WebSocket upgrades, CONNECT) hands the connection, with the
//! bytes already read, to hyper's server (`crate::idle::Parking`) for the rest of its life; an
//! HTTP/2 preface (prior knowledge on a listener that accepts both) hands it to weft's HTTP/2
//! server (`crate::h2_server`). Written by hand because no maintained crate offers an HTTP/1 server codec without a
//! dispatcher of its own; the codec ([`codec`]) does no I/O and has a fuzz target (`h1_server`).

pub mod codec;

use crate::idle::{ConnIo, HyperIo};
use bytes::{Buf, Bytes, BytesMut};
use codec::{BodyOut, HeadError, Parsed, ReqFacts};
use http::Request;
use http_body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_upstream::body::{feed, DownBody, Feeder, KeptResponse, RequestBody, UploadState};
use weft_upstream::h1::{Decoder, Framing, Step};
use weft_upstream::kept::{blocks, bufs};
use weft_upstream::splice::Pipe;

/// Bytes read at a time (the buffer grows to the head limit for a larger head).
const READ_SIZE: usize = bufs::READ_SIZE;
/// Body data up to this size is copied behind the head (one write); larger pieces are written
/// from their own buffer (a vectored write).
const COPY_MAX: usize = 16 * 1024;
// A write buffer with a head and a copied body in it is kept for the next exchange.
const _: () = assert!(bufs::MAX_WRITE >= COPY_MAX + COPY_MAX / 2);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static IDLE: AtomicUsize = AtomicUsize::new(0);

static SPLICED: AtomicU64 = AtomicU64::new(0);

/// Response body bytes this process has spliced from upstream sockets to clients' (not copied).
pub fn spliced_bytes() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// Connections this server holds idle with no buffer, in this process (counted with hyper's
/// parked connections: `crate::idle::parked_connections`).
pub fn idle_connections() -> usize {
    IDLE.load(Ordering::Relaxed)
}

/// How the connection's life with this server ended.
pub enum Ending<IO> {
    Closed,
    /// An HTTP/2 preface opened the connection: it goes to weft's HTTP/2 server
    /// (`crate::h2_server`) with the bytes read put back.
    H2 {
        io: HyperIo<IO>,
    },
    /// Hand the connection to hyper's server: the bytes read and not consumed were put back in
    /// the stream. `fresh`: no request was served before.
    Handoff {
        io: HyperIo<IO>,
        fresh: bool,
    },
}

/// What the server needs from its connection manager.
pub struct Options<'a> {
    /// The largest request head accepted (larger: 431).
    pub max_head: usize,
    /// An HTTP/2 preface hands the connection to the HTTP/2 server (the listener accepts both
    /// protocols); otherwise it is a malformed HTTP/1 request.
    pub h2_handoff: bool,
    /// A response body is not polled further while this many bytes wait to be written (the
    /// listener's `per_connection_buffer_limit_bytes`).
    pub write_limit: usize,
    /// Set to end the connection at its next request boundary (a graceful shutdown): checked
    /// whenever the server waits for a head with nothing buffered.
    pub closing: &'a AtomicBool,
}

/// The connection's buffers and I/O state.
struct Conn<IO> {
    io: Option<HyperIo<IO>>,
    buf: BytesMut,
    out: Out,
    idle: bool,
    /// The pipe of a response body being spliced (`weft_upstream::splice`), only while it is.
    pipe: Option<Pipe>,
    /// This exchange's body is copied, not spliced (no pipe was left, or the socket held bytes
    /// splice does not take).
    no_splice: bool,
    /// The read buffer grew past what [`bufs`] keeps.
    grown: bool,
}

impl<IO> Drop for Conn<IO> {
    fn drop(&mut self) {
        if self.idle {
            IDLE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Serves HTTP/1 requests on `io` with `svc` until the connection closes or must go to hyper.
pub async fn serve<IO, F, Fut>(io: HyperIo<IO>, opts: Options<'_>, svc: F) -> Ending<IO>
where
    IO: ConnIo,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = KeptResponse>,
{
    let mut c = Conn {
        io: Some(io),
        buf: BytesMut::new(),
        out: Out::default(),
        idle: false,
        pipe: None,
        no_splice: false,
        grown: false,
    };
    let mut served = 0u64;
    loop {
        let head = match poll_fn(|cx| c.poll_head(cx, &opts, served == 0)).await {
            Head::Parsed(Parsed::Request(h)) => h,
            Head::Parsed(Parsed::Switch) => return c.handoff(served == 0),
            Head::End => return Ending::Closed,
            // On a listener that serves only HTTP/1, an HTTP/2 client is closed on.
            Head::Preface if opts.h2_handoff => return Ending::H2 { io: c.rewound() },
            Head::Preface => return Ending::Closed,
            Head::Refused(e) => {
                tracing::debug!(status = e.status.as_u16(), why = e.why, "refused a request head");
                codec::error_reply(&mut c.out.buf, e);
                let _ = poll_fn(|cx| c.poll_close(cx)).await;
                return Ending::Closed;
            }
        };
        served += 1;
        // In its own block: the exchange (the pipeline's state above all) is large, and an idle
        // connection should not carry it. The thread's most recently freed block (warm in the
        // cache), not the allocator's next (`kept::blocks`); built in it (not on the stack and
        // then copied into it: several KiB per request).
        let slot = blocks::Slot::new();
        if !slot.write(exchange(&mut c, head, &svc, opts.write_limit)).await {
            let _ = poll_fn(|cx| c.poll_close(cx)).await;
            return Ending::Closed;
        }
    }
}

/// One exchange: the request to the pipeline, its body fed as the pipeline asks, the response
/// written. Whether the connection may carry another request.
async fn exchange<IO, F, Fut>(c: &mut Conn<IO>, head: codec::RequestHead, svc: &F, write_limit: usize) -> bool
where
    IO: ConnIo,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = KeptResponse>,
{
    let facts = ReqFacts {
        head: head.method == http::Method::HEAD,
        version: head.version,
        keep_alive: head.keep_alive,
    };
    let te_trailers = head.te_trailers;
    c.no_splice = false;
    let (body, mut upload) = match head.framing {
        Framing::Length(n) => {
            let (feeder, body) = feed(http_body::SizeHint::with_exact(n));
            (
                RequestBody::Fed(body),
                Some(Upload::new(feeder, head.framing, head.expect_continue)),
            )
        }
        Framing::Chunked => {
            let (feeder, body) = feed(http_body::SizeHint::default());
            (
                RequestBody::Fed(body),
                Some(Upload::new(feeder, head.framing, head.expect_continue)),
            )
        }
        _ => (RequestBody::empty(), None),
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let mut handler = std::pin::pin!(svc(req));
    // Until the response head: the pipeline runs, the upload is fed as it asks, and a client
    // that goes away cancels the exchange (as hyper's server without half-close support).
    let resp = poll_fn(|cx| loop {
        if let Poll::Ready(r) = handler.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match upload.as_mut() {
            Some(up) if !up.done => {
                if c.pump(cx, up) {
                    continue;
                }
            }
            _ => {
                if c.poll_gone(cx) {
                    return Poll::Ready(None);
                }
            }
        }
        return Poll::Pending;
    })
    .await;
    let Some(mut resp) = resp else {
        return false;
    };
    let mut facts = facts;
    // Not answered with "100 Continue" before its final response: the client may still be
    // waiting to send the body (RFC 9110 §10.1.1), so the rest of it is never read.
    let mut abandoned = false;
    if let Some(up) = upload.as_mut().filter(|u| !u.done) {
        if up.continue_due {
            up.continue_due = false;
            abandoned = true;
            up.fail(UploadState::Aborted);
        } else if up.feeder.is_gone() {
            // The pipeline answered without the body (a local reply): what the client already
            // sent is skipped; a body still to come closes the connection, said in the head.
            c.skip_buffered(up);
            facts.keep_alive &= up.done;
        }
        // (A body whose reader still reads it goes on after the response: below.)
        facts.keep_alive &= !abandoned;
    }
    // The response stays in its block: its head is encoded from there and its body polled there.
    let hint = resp.body().size_hint().exact();
    let small = hint.filter(|n| *n <= COPY_MAX as u64).unwrap_or(0);
    if c.out.buf.capacity() == 0 {
        c.out.buf = bufs::take_write();
    }
    c.out.buf.reserve(512 + small as usize);
    let (framing, keep_alive) = codec::encode_response(&mut c.out.buf, &resp, hint, facts);
    // Its header map goes back to the thread's maps for the next response head.
    weft_upstream::h1::maps::give(std::mem::take(resp.headers_mut()));
    let mut trailers = None;
    let written = poll_fn(|cx| loop {
        let progress = match upload.as_mut() {
            Some(up) if !up.done => c.pump(cx, up),
            _ => false,
        };
        match c.poll_body(cx, resp.body_mut(), framing, te_trailers, &mut trailers, write_limit) {
            Poll::Ready(r) => return Poll::Ready(r),
            Poll::Pending if progress => continue,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    drop(resp);
    // A response may end before its request body (an early answer to an upload): the body keeps
    // going to whoever still reads it, as long as they do.
    if let (Ok(()), false, Some(up)) = (written, abandoned, upload.as_mut().filter(|u| !u.done)) {
        poll_fn(|cx| loop {
            if c.pump(cx, up) {
                if up.done {
                    return Poll::Ready(());
                }
                continue;
            }
            if up.feeder.is_gone() {
                return Poll::Ready(());
            }
            return Poll::Pending;
        })
        .await;
    }
    let upload_done = upload.as_ref().is_none_or(|u| u.done && !u.broken);
    written.is_ok() && keep_alive && upload_done && framing != BodyOut::Close
}

impl<IO: ConnIo> Conn<IO> {
    fn io(&mut self) -> &mut HyperIo<IO> {
        self.io.as_mut().expect("the stream is only taken by a handoff")
    }

    /// Writes what waits in the write buffer.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = self.io.as_mut().expect("the stream is only taken by a handoff");
        self.out.poll_flush(io, cx)
    }

    /// Reads once into the buffer: the number of bytes read (0: the client closed its side).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = bufs::take_read();
        }
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
            self.grown |= self.buf.capacity() > bufs::MAX_READ;
        }
        if self.idle {
            self.idle = false;
            IDLE.fetch_sub(1, Ordering::Relaxed);
        }
        let io = self.io.as_mut().expect("the stream is only taken by a handoff");
        let spare = self.buf.spare_capacity_mut();
        let start = spare.as_ptr();
        let mut rb = ReadBuf::uninit(spare);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // A reader could replace the `ReadBuf` with another buffer; then the bytes did not land in
        // ours (tokio-util's `poll_read_buf` checks the same).
        assert_eq!(rb.filled().as_ptr(), start.cast(), "the reader swapped its buffer");
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity: the `ReadBuf`
        // was built over it, and (checked above) is still that buffer.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n))
    }

    /// Waits for a complete request head, or the connection's end: the client closed (or closed
    /// mid-head), or a graceful shutdown at a request boundary. `first`: nothing was served yet
    /// (an HTTP/2 preface is recognised then).
    fn poll_head(&mut self, cx: &mut Context<'_>, opts: &Options<'_>, first: bool) -> Poll<Head> {
        loop {
            // Empty lines before a request line are ignored (RFC 9112 §2.2): some clients send a
            // CRLF after a body.
            let blank = self.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            if blank > 0 {
                self.buf.advance(blank);
            }
            if !self.buf.is_empty() {
                let n = self.buf.len().min(PREFACE.len());
                // "P", "PR", "PRI": not told apart from a POST or PRI request yet.
                let preface = first && self.buf[..n] == PREFACE[..n];
                if preface && n >= 4 {
                    return Poll::Ready(Head::Preface);
                }
                if !preface {
                    let before = self.buf.len();
                    match codec::parse_request(&mut self.buf) {
                        Ok(Some(_)) if before - self.buf.len() > opts.max_head => {
                            return Poll::Ready(Head::Refused(HeadError {
                                status: http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                why: "request head too large",
                            }))
                        }
                        Ok(Some(p)) => return Poll::Ready(Head::Parsed(p)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Head::Refused(e)),
                    }
                }
                if self.buf.len() >= opts.max_head {
                    return Poll::Ready(Head::Refused(HeadError {
                        status: http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        why: "request head too large",
                    }));
                }
            } else if opts.closing.load(Ordering::Relaxed) {
                return Poll::Ready(Head::End);
            }
            match self.poll_fill(cx) {
                Poll::Pending => {
                    if self.buf.is_empty() {
                        self.rest();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Head::End),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Between requests: gives the buffers up (to the thread's [`bufs`], for the next connection
    /// that reads or writes).
    fn rest(&mut self) {
        if !self.idle {
            // A buffer that grew for a large head may sit in a large allocation whatever its
            // capacity now says (what a head took is split off): not kept.
            match std::mem::take(&mut self.grown) {
                true => self.buf = BytesMut::new(),
                false => bufs::give_read(std::mem::take(&mut self.buf)),
            }
            bufs::give_write(std::mem::take(&mut self.out).buf);
            self.idle = true;
            IDLE.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// While a request without a body waits for its response: whether the client went away.
    /// Bytes it sends meanwhile (a pipelined request) are kept, up to one read buffer.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if self.buf.len() >= READ_SIZE {
            return false;
        }
        matches!(self.poll_fill(cx), Poll::Ready(Ok(0)) | Poll::Ready(Err(_)))
    }

    /// Feeds the upload as far as its consumer wants and the client has sent. `true`: progress
    /// (a piece handed over, or the upload ended).
    fn pump(&mut self, cx: &mut Context<'_>, up: &mut Upload) -> bool {
        loop {
            match up.feeder.poll_want(cx) {
                Poll::Pending => return false,
                // The consumer dropped the body: the rest is never read (the connection closes).
                Poll::Ready(false) => return false,
                Poll::Ready(true) => {}
            }
            if up.continue_due {
                up.continue_due = false;
                self.out.buf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            if !self.out.is_empty() {
                match self.flush(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Err(_)) => return up.fail(UploadState::Aborted),
                    Poll::Ready(Ok(())) => {}
                }
            }
            match up.decoder.decode(&mut self.buf, false) {
                Ok(Step::Data(d)) => {
                    if up.decoder.is_done() {
                        up.done = true;
                        up.feeder.data_end(d);
                    } else {
                        up.feeder.data(d);
                    }
                    return true;
                }
                Ok(Step::Trailers(t)) => {
                    up.done = true;
                    up.feeder.end(Some(t));
                    return true;
                }
                Ok(Step::End) => {
                    up.done = true;
                    up.feeder.end(None);
                    return true;
                }
                Ok(Step::More) => match self.poll_fill(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return up.fail(UploadState::Aborted),
                    Poll::Ready(Ok(_)) => {}
                },
                Err(_) => return up.fail(UploadState::Malformed),
            }
        }
    }

    /// Skips the part of an unread request body the client already sent; `up.done` when that was
    /// all of it.
    fn skip_buffered(&mut self, up: &mut Upload) {
        loop {
            match up.decoder.decode(&mut self.buf, false) {
                Ok(Step::Data(_)) => continue,
                Ok(Step::Trailers(_)) | Ok(Step::End) => {
                    up.done = true;
                    return;
                }
                Ok(Step::More) => return,
                Err(_) => {
                    up.fail(UploadState::Malformed);
                    return;
                }
            }
        }
    }

    /// Writes the response body (the head is already in the write buffer). `Err`: the body
    /// failed or the client went away; the connection must close.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut DownBody,
        framing: BodyOut,
        te_trailers: bool,
        trailers: &mut Option<http::HeaderMap>,
        write_limit: usize,
    ) -> Poll<Result<(), ()>> {
        loop {
            if let BodyOut::Length(_) = framing {
                if let Some(r) = self.poll_splice(cx, body) {
                    ready!(r)?;
                }
            }
            if self.out.big.is_some() || self.out.len() >= write_limit {
                ready!(self.flush(cx)).map_err(|_| ())?;
            }
            let end = if body.is_end_stream() {
                true
            } else {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        ready!(self.flush(cx)).map_err(|_| ())?;
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(())),
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(d) => self.out.push(d, framing),
                            Err(f) => {
                                if let Ok(t) = f.into_trailers() {
                                    *trailers = Some(t);
                                }
                            }
                        }
                        body.is_end_stream()
                    }
                }
            };
            if end {
                if framing == BodyOut::Chunked {
                    if self.out.big.is_some() {
                        ready!(self.flush(cx)).map_err(|_| ())?;
                    }
                    let t = trailers.take().filter(|_| te_trailers);
                    codec::put_last_chunk(&mut self.out.buf, t.as_ref());
                }
                return self.flush(cx).map_err(|_| ());
            }
        }
    }

    /// Moves the rest of a content-length body from the upstream's socket to the client's
    /// through a pipe, when both are plain TCP and the body is long enough
    /// (`weft_upstream::splice`): `Some` while it does (`Ready(Ok)`: the whole body has gone out),
    /// `None` to go on with the body's frames. What was written before (the head, body bytes
    /// read with it) goes out first.
    fn poll_splice(&mut self, cx: &mut Context<'_>, body: &mut DownBody) -> Option<Poll<Result<(), ()>>> {
        if self.pipe.is_none() {
            if self.no_splice || !body.can_splice() {
                return None;
            }
            self.io.as_ref()?.get_ref().get_ref().splice_socket()?;
            match Pipe::take() {
                Ok(p) => self.pipe = Some(p),
                Err(_) => {
                    // (No pipe left: this body is copied.)
                    self.no_splice = true;
                    return None;
                }
            }
        }
        match self.flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Some(Poll::Ready(Err(()))),
            Poll::Pending => return Some(Poll::Pending),
        }
        let sniffed = self
            .io
            .as_ref()
            .expect("the stream is only taken by a handoff")
            .get_ref();
        let sock = sniffed.get_ref().splice_socket().expect("a TCP socket, seen before");
        let pipe = self.pipe.as_mut().expect("taken above");
        let mut moved = 0;
        let r = body.poll_splice(cx, pipe, sock, &mut moved);
        if moved > 0 {
            sniffed.touch();
            SPLICED.fetch_add(moved, Ordering::Relaxed);
        }
        match r {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(r) => {
                self.pipe = None;
                match r {
                    Ok(()) => Some(Poll::Ready(Ok(()))),
                    // Nothing was taken from the upstream: the body goes on as frames.
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        self.no_splice = true;
                        None
                    }
                    Err(_) => Some(Poll::Ready(Err(()))),
                }
            }
        }
    }

    /// Writes what is buffered, then closes the connection (FIN).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush(cx))?;
        Pin::new(self.io()).poll_shutdown(cx)
    }

    /// Hands the connection to hyper's server with the unconsumed bytes put back.
    fn handoff(&mut self, fresh: bool) -> Ending<IO> {
        Ending::Handoff {
            io: self.rewound(),
            fresh,
        }
    }

    /// The stream, with the bytes read and not consumed put back in front.
    fn rewound(&mut self) -> HyperIo<IO> {
        let read = self.buf.split().freeze();
        let mut io = self.io.take().expect("the stream is only taken by a handoff");
        io.get_mut().track_from(&read);
        io.rewind(read);
        io
    }
}

/// A request body being read from the client and fed to the pipeline.
struct Upload {
    feeder: Feeder,
    decoder: Decoder,
    /// `Expect: 100-continue`: "100 Continue" goes out when the body is first wanted.
    continue_due: bool,
    done: bool,
    /// The body failed (malformed, or the client went away).
    broken: bool,
}

impl Upload {
    fn new(feeder: Feeder, framing: Framing, expect_continue: bool) -> Upload {
        Upload {
            feeder,
            decoder: Decoder::new(framing),
            continue_due: expect_continue,
            done: false,
            broken: false,
        }
    }

    fn fail(&mut self, state: UploadState) -> bool {
        self.feeder.fail(state);
        self.done = true;
        self.broken = true;
        true
    }
}

/// What waits to be written: `buf` from `pos`, then a large body piece, then `\r\n` when that
/// piece is a chunk.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    pos: usize,
    big: Option<Bytes>,
    crlf: usize,
}

impl Out {
    fn len(&self) -> usize {
        self.buf.len() - self.pos + self.big.as_ref().map_or(0, Bytes::len) + self.crlf
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a piece of body data, framed. A previous large piece must have been written.
    fn push(&mut self, d: Bytes, framing: BodyOut) {
        if d.is_empty() || framing == BodyOut::Empty {
            return;
        }
        let chunked = framing == BodyOut::Chunked;
        if chunked {
            codec::put_chunk_size(&mut self.buf, d.len());
        }
        if d.len() <= COPY_MAX {
            self.buf.extend_from_slice(&d);
            if chunked {
                self.buf.extend_from_slice(b"\r\n");
            }
        } else {
            self.big = Some(d);
            self.crlf = if chunked { 2 } else { 0 };
        }
    }

    fn poll_flush<T: AsyncWrite + Unpin>(&mut self, io: &mut T, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let rest = &self.buf[self.pos..];
            // One part to write (a head and a small body, the common case; or a large piece
            // alone): a plain write. Linux's `writev` costs ~0.2 µs more per call than `send`
            // for the same kilobyte on a loopback connection, even with one vector.
            let one = match (self.big.as_deref(), self.crlf) {
                (None, 0) => Some(rest),
                (Some(big), 0) if rest.is_empty() => Some(big),
                _ => None,
            };
            let mut n = if let Some(one) = one {
                ready!(Pin::new(&mut *io).poll_write(cx, one))?
            } else {
                let crlf: &[u8] = &b"\r\n"[2 - self.crlf..];
                let bufs = [
                    io::IoSlice::new(rest),
                    io::IoSlice::new(self.big.as_deref().unwrap_or_default()),
                    io::IoSlice::new(crlf),
                ];
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let head = (self.buf.len() - self.pos).min(n);
            self.pos += head;
            n -= head;
            if let Some(b) = self.big.as_mut() {
                let k = b.len().min(n);
                b.advance(k);
                n -= k;
                if b.is_empty() {
                    self.big = None;
                }
            }
            self.crlf -= n.min(self.crlf);
            if self.big.is_none() && self.crlf > 0 {
                // `buf` was written whole before `big`: what is left of the chunk's CRLF goes
                // first in it, so that pieces queued next cannot overtake it.
                self.buf.clear();
                self.pos = 0;
                self.buf.extend_from_slice(&b"\r\n"[2 - self.crlf..]);
                self.crlf = 0;
            }
        }
        self.buf.clear();
        self.pos = 0;
        Pin::new(io).poll_flush(cx)
    }
}

/// What waiting for a request head found.
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing would allocate
enum Head {
    Parsed(Parsed),
    /// An HTTP/2 connection preface, on a fresh connection.
    Preface,
    Refused(HeadError),
    /// The connection ends.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes per write, and `budget` bytes in all before it
    /// stops taking any (`Pending`) until the budget is raised.
    struct Trickle {
        max: usize,
        budget: usize,
        got: Vec<u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max).min(self.budget);
            if n == 0 && !buf.is_empty() {
                return Poll::Pending;
            }
            self.budget -= n;
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A stream that can write vectored and counts how it was written to.
    #[derive(Default)]
    struct Counting {
        plain: usize,
        vectored: usize,
        got: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.plain += 1;
            self.got.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored += 1;
            let mut n = 0;
            for b in bufs {
                self.got.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A head and a small body, one buffer, go out in a plain write (`send`, cheaper than a
    /// one-vector `writev`), and so does a large piece alone; a large piece behind a head in one
    /// vectored write.
    #[test]
    fn one_buffer_is_a_plain_write_and_a_large_piece_a_vectored_one() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut w = Counting::default();
        let mut out = Out::default();
        out.buf
            .extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");
        out.push(Bytes::from_static(b"abc"), BodyOut::Length(3));
        assert!(out.poll_flush(&mut w, &mut cx).is_ready());
        assert_eq!((w.plain, w.vectored), (1, 0));
        out.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        out.push(
            Bytes::from(vec![b'x'; COPY_MAX + 1]),
            BodyOut::Length(COPY_MAX as u64 + 1),
        );
        assert!(out.poll_flush(&mut w, &mut cx).is_ready());
        assert_eq!((w.plain, w.vectored), (1, 1));
        assert_eq!(w.got.len(), 41 + 19 + COPY_MAX + 1);
        // A large piece alone (its head already written) is one part too.
        out.push(
            Bytes::from(vec![b'y'; COPY_MAX + 1]),
            BodyOut::Length(COPY_MAX as u64 + 1),
        );
        assert!(out.poll_flush(&mut w, &mut cx).is_ready());
        assert_eq!((w.plain, w.vectored), (2, 1));
        assert!(w.got.ends_with(&[b'y'; COPY_MAX + 1]));
    }

    /// Chunks queued after a large piece stay behind its CRLF, whatever the writes' sizes (a
    /// client that stops reading right after the piece, before its CRLF, once let the next chunk
    /// overtake it).
    #[test]
    fn chunked_pieces_stay_in_order_across_partial_writes() {
        let big = Bytes::from(vec![b'x'; COPY_MAX + 5]);
        let line = format!("{:x}\r\n", big.len()).len();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for stop in [0, 1, line, line + big.len() - 1, line + big.len(), line + big.len() + 1] {
            let max = 7000;
            let mut w = Trickle {
                max,
                budget: stop,
                got: Vec::new(),
            };
            let mut out = Out::default();
            out.push(big.clone(), BodyOut::Chunked);
            assert!(out.poll_flush(&mut w, &mut cx).is_pending(), "stopped after {stop}");
            // More is queued while the client is not reading, then it reads everything.
            if out.big.is_some() {
                assert!(out.poll_flush(&mut w, &mut cx).is_pending());
            } else {
                out.push(Bytes::from_static(b"abc"), BodyOut::Chunked);
            }
            w.budget = usize::MAX;
            while out.poll_flush(&mut w, &mut cx).is_pending() {}
            if !w.got.ends_with(b"abc\r\n") {
                out.push(Bytes::from_static(b"abc"), BodyOut::Chunked);
            }
            codec::put_last_chunk(&mut out.buf, None);
            while out.poll_flush(&mut w, &mut cx).is_pending() {}
            let mut buf = BytesMut::from(&w.got[..]);
            let mut d = Decoder::new(Framing::Chunked);
            let mut body = Vec::new();
            loop {
                match d
                    .decode(&mut buf, true)
                    .unwrap_or_else(|e| panic!("stopped after {stop}: {e}"))
                {
                    Step::Data(b) => body.extend_from_slice(&b),
                    Step::End => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(body.len(), COPY_MAX + 5 + 3, "stopped after {stop}");
            assert!(buf.is_empty(), "stopped after {stop}");
        }
    }
}
