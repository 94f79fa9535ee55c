//! weft's own HTTP/1.1 client, for what a sidecar does most: a keep-alive request on a pooled
//! connection driven inside the request's own task.
//!
//! hyper's client runs every connection as a task of its own that a request reaches through
//! channels (a dispatch queue, a oneshot for the response, a want/give signal): in a profile of a
//! proxied HTTP/1.1 request that task was ~15,600 instructions of ~46,000 (docs/benchmarks.md).
//! Here the request's task writes the head (and sends a streamed body while it waits) and reads
//! the response head itself, and the response body reads the connection as the downstream side
//! polls it, handing the connection back to its pool when a correctly framed body has ended.
//! Requests that ask for a protocol switch (an upgrade, CONNECT) keep using hyper's client.
//!
//! Written by hand because no maintained crate offers an HTTP/1 client codec without a connection
//! task of its own. Heads are parsed by `httparse` (hyper's parser), and the message framing
//! follows RFC 9112 §6.3 strictly: conflicting or malformed lengths are refused, not guessed.
//!
//! The codec ([`parse_head`], [`Decoder`], [`encode_request`]) does no I/O, so the fuzz target
//! `h1_response` drives it directly.

use crate::body::{BoxError, UpBody};
use crate::cluster::{ConnGuard, RawHome, RawStream};
use crate::kept::bufs;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this many header fields in a response head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// At most this long a chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// At most this long a chunked body's trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// At most this many bytes of chunk-size lines (extensions, mostly) in one body, as hyper's
/// client: a body of one-byte chunks with 4 KiB of extensions each is refused.
const MAX_CHUNK_LINES_TOTAL: usize = 16 * 1024;

/// Why a response could not be read: the upstream broke HTTP/1.1 framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ParseError {}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response's body has ended.
    pub keep_alive: bool,
    /// `Connection` named fields besides `close` and `keep-alive`: they are hop-by-hop too, and
    /// still in `headers` (the fixed hop-by-hop fields are not: see [`parse_head`]).
    pub connection_options: bool,
}

/// Parses the response head at the start of `buf` and splits it off. `Ok(None)`: the head is not
/// complete yet. `head_request`: the request was HEAD (its response has no body whatever its
/// headers say). Header values share the head's bytes; nothing is copied. The fixed hop-by-hop
/// fields (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, `Trailer`, `Proxy-Authenticate`, `Proxy-Authorization`) are read for framing and left
/// out of `headers`: they are this hop's, and a proxy would only remove them again.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ParseError> {
    // Uninitialised slots: zeroing 100 of them would cost more than parsing a typical head.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let mut facts = Facts::default();
    // Filled in place (returning it from the match would copy the whole inline array).
    let mut fields = Fields::new();
    let (len, code, minor) =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => {
                for h in resp.headers.iter() {
                    let name = header_name(h.name.as_bytes())
                        .map_err(|_| ParseError("invalid header name in the response"))?;
                    facts.note(&name, h.value);
                    // A `Connection` that names other fields stays, for the caller to remove them.
                    if is_hop_by_hop(&name) && !(name == header::CONNECTION && facts.options) {
                        continue;
                    }
                    let start = h.value.as_ptr() as usize - base;
                    fields.push((name, start, start + h.value.len()));
                }
                (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError("too many header fields in the response")),
            Err(_) => return Err(ParseError("malformed response head")),
        };
    let status = StatusCode::from_u16(code).map_err(|_| ParseError("invalid status code"))?;
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let head = buf.split_to(len).freeze();
    let mut headers = maps::take(fields.len());
    for (name, start, end) in fields.drain(..) {
        // SAFETY (of the contract: valid header-value bytes): httparse accepted these bytes as a
        // field value, which allows exactly what `HeaderValue` does (HTAB, SP, visible ASCII,
        // obs-text; no other control byte and no DEL).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(start..end)) };
        headers.append(name, value);
    }
    let (framing, mut keep_alive) = facts.framing(status, version, head_request)?;
    if framing == Framing::Chunked && facts.seen_length {
        headers.remove(header::CONTENT_LENGTH);
    }
    keep_alive &= framing != Framing::Close && facts.keep_alive(version);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
        connection_options: facts.options,
    }))
}

/// Moves an emptied read buffer back to the start of its allocation once at least [`REWIND_AFTER`]
/// bytes of it were used (for an allocation of `size` bytes; of one that grew larger, that much
/// more), if nothing else shares the allocation (a head or body cut out of it and still alive):
/// else a no-op, never an allocation. For message boundaries (a connection at rest, a request
/// about to be sent). Without it, each message read into a kept-alive connection's buffer starts
/// where the last one ended, so the reads walk through the whole allocation (new cache lines for
/// the kernel's copy and the parser) until a reservation wraps around; with it they stay within
/// about a kilobyte and a message.
pub fn rewind(buf: &mut BytesMut, size: usize) {
    if buf.is_empty() && buf.capacity() + REWIND_AFTER <= size {
        // `try_reclaim` moves the (empty) contents to the allocation's start when `size` does not
        // fit after the current position but fits in the allocation, and the buffer is the
        // allocation's only user.
        let _ = buf.try_reclaim(size);
    }
}

/// How much of a read buffer is used before [`rewind`] moves it back (the check costs ~60
/// instructions, so not after every message).
const REWIND_AFTER: usize = 1024;

/// A parsed head's fields before their values are cut out of the head's buffer: name, value
/// start and end. On the stack for ordinary heads (no allocation per message).
pub type Fields = smallvec::SmallVec<[(HeaderName, usize, usize); 24]>;

/// Header maps kept for reuse by the worker thread: a response's map, built by [`parse_head`],
/// dies in the downstream server once its head is written, and a new one was allocated (its
/// index and entry tables) and freed again for every response (~500 instructions of an HTTP/1.1
/// keep-alive request, `bench/instructions`). A map given back is cleared (its values, slices
/// of a head buffer, are released at once) and kept if it is small; at most [`maps::KEEP`] per
/// thread.
pub mod maps {
    use crate::kept::{self, Kept};
    use http::HeaderMap;

    /// Maps kept per thread: as many as a busy worker has responses in flight (with 8, maps
    /// were allocated and freed again under 50 keep-alive clients; see `weft_proxy::h1_server`'s
    /// buffers). At most 64 maps of up to 32 fields.
    pub const KEEP: usize = 64;
    /// Larger maps (a rare response with many fields) are freed, not kept.
    const MAX_CAPACITY: usize = 32;

    thread_local! {
        static KEPT: Kept<HeaderMap> = const { Kept::new(Vec::new()) };
    }

    /// An empty map with room for `n` fields: a kept one if the thread has one.
    pub fn take(n: usize) -> HeaderMap {
        match kept::take(&KEPT) {
            Some(mut m) => {
                m.reserve(n);
                m
            }
            None => HeaderMap::with_capacity(n),
        }
    }

    /// Gives a map that is no longer needed back for [`take`].
    pub fn give(mut map: HeaderMap) {
        if map.capacity() > MAX_CAPACITY {
            return;
        }
        map.clear();
        kept::give(&KEPT, map, KEEP);
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use http::header::{HeaderValue, HOST};

        #[test]
        fn a_given_map_comes_back_empty_and_the_pool_is_bounded() {
            let mut m = take(4);
            m.insert(HOST, HeaderValue::from_static("a"));
            let cap = m.capacity();
            give(m);
            let m = take(2);
            assert!(m.is_empty());
            assert_eq!(m.capacity(), cap, "the kept map is reused");
            for _ in 0..KEEP + 4 {
                give(HeaderMap::with_capacity(4));
            }
            assert_eq!(KEPT.with(|k| k.borrow().len()), KEEP);
            // Large maps are not kept.
            KEPT.with(|k| k.borrow_mut().clear());
            give(HeaderMap::with_capacity(200));
            assert_eq!(KEPT.with(|k| k.borrow().len()), 0);
        }
    }
}

/// A header field name from HTTP/1 bytes: [`HeaderName::from_bytes`], with a fast path for the
/// names peers send most, in the two spellings they use (Title-Case from most servers and
/// clients, lower case from the rest). `from_bytes` lower-cases every name into a scratch buffer
/// and then matches it against all the standard names, and copies a non-standard name into a new
/// allocation: ~175 instructions a field, ~1,400 per response head from nginx (`bench/instructions`).
/// Here a name is matched on its length and then byte for byte against at most a few constants.
/// http offers no cheaper constructor, so this is written here; any other spelling falls back to
/// `from_bytes`, which gives the same `HeaderName`.
#[inline]
pub fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    macro_rules! pick {
        ($($($spelling:literal)|+ => $name:expr),* $(,)?) => {
            {
                $(if $(raw == $spelling)||+ {
                    return Ok($name);
                })*
            }
        };
    }
    match raw.len() {
        4 => pick!(b"Host" | b"host" => header::HOST, b"Date" | b"date" => header::DATE,
                   b"ETag" | b"etag" => header::ETAG, b"Vary" | b"vary" => header::VARY),
        6 => pick!(b"Accept" | b"accept" => header::ACCEPT, b"Server" | b"server" => header::SERVER,
                   b"Cookie" | b"cookie" => header::COOKIE, b"Origin" | b"origin" => header::ORIGIN),
        7 => pick!(b"Expires" | b"expires" => header::EXPIRES, b"Referer" | b"referer" => header::REFERER,
                   b"Upgrade" | b"upgrade" => header::UPGRADE),
        8 => pick!(b"Location" | b"location" => header::LOCATION),
        10 => pick!(b"Connection" | b"connection" => header::CONNECTION,
                    b"User-Agent" | b"user-agent" => header::USER_AGENT,
                    b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
                    b"Keep-Alive" | b"keep-alive" => KEEP_ALIVE),
        11 => pick!(b"Traceparent" | b"traceparent" => weft_core::trace::TRACEPARENT),
        12 => pick!(b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
                    b"X-Request-Id" | b"x-request-id" | b"X-Request-ID" => X_REQUEST_ID.clone()),
        13 => pick!(b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
                    b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
                    b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
                    b"Authorization" | b"authorization" => header::AUTHORIZATION),
        14 => pick!(b"Content-Length" | b"content-length" => header::CONTENT_LENGTH),
        15 => pick!(b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
                    b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
                    b"X-Forwarded-For" | b"x-forwarded-for" => X_FORWARDED_FOR.clone()),
        16 => pick!(b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING),
        17 => pick!(b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
                    b"X-Forwarded-Proto" | b"x-forwarded-proto" => X_FORWARDED_PROTO.clone()),
        _ => {}
    }
    HeaderName::from_bytes(raw)
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Fields a proxy reads and writes on every request (the request path's names for them).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The hop-by-hop fields every message may carry (RFC 9110 §7.6.1), those a `Connection`
/// header names aside. Order matters: [`hop_by_hop_index`] gives positions in it.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::UPGRADE,
    KEEP_ALIVE,
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The position of `name` in [`HOP_BY_HOP`]: one match on the name's text (a length switch, then
/// one comparison) rather than eight comparisons, as it runs for every field of every message.
pub fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "upgrade" => 1,
        "keep-alive" => 2,
        "proxy-connection" => 3,
        "transfer-encoding" => 4,
        "trailer" => 5,
        "proxy-authenticate" => 6,
        "proxy-authorization" => 7,
        _ => return None,
    })
}

/// Whether `name` is one of [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// What a response head's fields say about its framing, noted as the fields are read.
#[derive(Default)]
struct Facts {
    /// Transfer-Encoding seen; whether the last coding of the last one is `chunked`.
    te: Option<bool>,
    seen_length: bool,
    length: Option<u64>,
    /// A Content-Length that is not a number, or several different ones.
    length_error: Option<ParseError>,
    close: bool,
    keep_alive: bool,
    /// `Connection` names other fields.
    options: bool,
}

impl Facts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            self.seen_length = true;
            for part in value.split(|b| *b == b',') {
                match parse_length(part.trim_ascii()) {
                    None => self.length_error = Some(ParseError("invalid content-length in the response")),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.length_error = Some(ParseError("conflicting content-length values in the response"))
                    }
                    Some(n) => self.length = Some(n),
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            self.te = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONNECTION {
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                let close = t.eq_ignore_ascii_case(b"close");
                let keep_alive = t.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.options |= !(close || keep_alive || t.is_empty());
            }
        }
    }

    /// The body's framing, and whether it still allows the connection to be reused. A response
    /// with both `Transfer-Encoding` and `Content-Length` is read as chunked, its `Content-Length`
    /// dropped, and its connection closed afterwards (RFC 9112 §6.3 item 3).
    fn framing(&self, status: StatusCode, version: Version, head_request: bool) -> Result<(Framing, bool), ParseError> {
        let code = status.as_u16();
        if self.te.is_some() && version == Version::HTTP_10 {
            return Err(ParseError("transfer-encoding in an HTTP/1.0 response"));
        }
        if head_request || status.is_informational() || code == 204 || code == 304 {
            return Ok((Framing::Empty, true));
        }
        match self.te {
            Some(true) => return Ok((Framing::Chunked, !self.seen_length)),
            Some(false) => return Ok((Framing::Close, false)),
            None => {}
        }
        if let Some(e) = self.length_error {
            return Err(e);
        }
        Ok(match self.length {
            Some(n) => (Framing::Length(n), true),
            None => (Framing::Close, false),
        })
    }

    /// Whether the `Connection` header (and the version's default) keeps the connection open.
    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        }
    }
}

/// A Content-Length value: 1 to 19 decimal digits (fits a u64), nothing else.
pub fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
}

/// Decodes a response body from the bytes read after its head.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// What remains of [`MAX_CHUNK_LINES_TOTAL`] for chunk-size lines beyond their digits.
    line_budget: usize,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder {
            state,
            line_budget: MAX_CHUNK_LINES_TOTAL,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come, when the body has a known length.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`. `eof`: the upstream has closed its side, so
    /// `buf` holds all that will ever come.
    pub fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, ParseError> {
        const TRUNCATED: ParseError = ParseError("the upstream closed the connection before the body ended");
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return if eof { Err(TRUNCATED) } else { Ok(Step::More) };
                    }
                    let take = (buf.len() as u64).min(n);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match self.state {
                        State::Length(_) if take == n => State::Done,
                        State::Length(_) => State::Length(n - take),
                        _ if take == n => State::ChunkDataEnd,
                        _ => State::ChunkData(n - take),
                    };
                    return Ok(Step::Data(data));
                }
                State::Close => {
                    if buf.is_empty() {
                        if eof {
                            self.state = State::Done;
                            return Ok(Step::End);
                        }
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(lf) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(ParseError("chunk-size line too long"));
                        }
                        return if eof { Err(TRUNCATED) } else { Ok(Step::More) };
                    };
                    if lf > MAX_CHUNK_LINE {
                        return Err(ParseError("chunk-size line too long"));
                    }
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err(ParseError("chunk-size line not ended by CRLF"));
                    }
                    let (size, extra) = chunk_size(&buf[..lf - 1])?;
                    // Digits and CRLF are free; what else the lines carry is bounded per body.
                    self.line_budget = self
                        .line_budget
                        .checked_sub(extra)
                        .ok_or(ParseError("too many chunk extensions"))?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ParseError("chunk data not followed by CRLF"));
                        }
                        return if eof { Err(TRUNCATED) } else { Ok(Step::More) };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => return self.trailers(buf, eof),
            }
        }
    }

    /// The trailer section after the last chunk, up to its empty line. Lines must end in CRLF.
    fn trailers(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, ParseError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Step::End);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (end, fields) = match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((end, fields))) => (end, fields),
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_TRAILERS {
                    Err(ParseError("trailer section too long"))
                } else if eof {
                    Err(ParseError("the upstream closed the connection in the trailer section"))
                } else {
                    Ok(Step::More)
                };
            }
            Err(_) => return Err(ParseError("malformed trailer section")),
        };
        // httparse also ends lines at a bare LF; this hop insists on CRLF, as for chunk lines.
        let section = &buf[..end];
        let bare_lf = section
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
        if bare_lf {
            return Err(ParseError("trailer line not ended by CRLF"));
        }
        if end > MAX_TRAILERS {
            return Err(ParseError("trailer section too long"));
        }
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for f in fields.iter() {
            let (Ok(name), Ok(value)) = (header_name(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) else {
                return Err(ParseError("malformed trailer section"));
            };
            if allowed_in_trailers(&name) {
                trailers.append(name, value);
            }
        }
        buf.advance(end);
        self.state = State::Done;
        Ok(if trailers.is_empty() {
            Step::End
        } else {
            Step::Trailers(trailers)
        })
    }
}

/// Framing, routing and connection fields are not allowed in trailers (RFC 9110 §6.5.1): they
/// are dropped, both ways.
fn allowed_in_trailers(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::TRANSFER_ENCODING | header::CONTENT_LENGTH | header::HOST | header::CONNECTION | header::TE
    )
}

/// A chunk-size line without its CRLF: hex digits, then optional extensions (`;name[=value]`,
/// with optional whitespace before the `;`), which are ignored. The size, and how many bytes
/// follow the digits.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), ParseError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ParseError("invalid chunk size"));
    }
    // Leading zeros are allowed; the value must fit a u64.
    let significant = line[..digits].iter().skip_while(|b| **b == b'0').count();
    if significant > 16 {
        return Err(ParseError("chunk size too large"));
    }
    let size = line[..digits].iter().fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(d)
    });
    let rest = &line[digits..];
    // Only SP and HTAB may come before the `;` (BWS); a stray CR or FF is refused, as another hop
    // might read the line differently.
    let ext = &rest[rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count()..];
    let ok = match ext.first() {
        None => rest.is_empty(),
        Some(b';') => ext
            .iter()
            .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80),
        Some(_) => false,
    };
    if !ok {
        return Err(ParseError("invalid chunk-size line"));
    }
    Ok((size, rest.len()))
}

/// Whether a request to an upstream that closed the connection without a byte of response may be
/// sent again on another connection: methods RFC 9110 §9.2.2 calls idempotent.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request body, as far as the head is concerned.
#[derive(Clone, Copy)]
pub enum BodyKind<'a> {
    /// Empty, or buffered whole (sent right after the head).
    Buffered(Option<&'a Bytes>),
    /// Streamed after the head: with its `Content-Length` if the headers carry one, else chunked.
    Streamed,
}

/// Writes a request head (and a buffered body) into `out`: origin-form target, HTTP/1.1, the
/// headers as they are except `Transfer-Encoding` (framing is this hop's own), plus the framing
/// header the body needs: for a buffered body, its own `Content-Length` in place of any in the
/// headers (when the method implies a body, there is one, or the headers had one), so the head
/// can never announce another length than the bytes that follow; `Transfer-Encoding: chunked`
/// for a streamed body of unknown length. Returns whether a streamed body is to be sent chunked.
pub fn encode_request(out: &mut Vec<u8>, method: &Method, uri: &Uri, headers: &HeaderMap, body: BodyKind<'_>) -> bool {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let buffered = matches!(body, BodyKind::Buffered(_));
    // Noted on the way rather than looked up again after.
    let mut has_length = false;
    for (name, value) in headers {
        let length = name == header::CONTENT_LENGTH;
        has_length |= length;
        if name != header::TRANSFER_ENCODING && !(buffered && length) {
            put_field(out, name, value);
        }
    }
    let chunked = match body {
        BodyKind::Buffered(b) => {
            let len = b.map_or(0, Bytes::len);
            let payload_method = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
            if has_length || len > 0 || payload_method {
                let _ = write!(out, "content-length: {len}\r\n");
            }
            false
        }
        BodyKind::Streamed if has_length => false,
        BodyKind::Streamed => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    if let BodyKind::Buffered(Some(b)) = body {
        out.extend_from_slice(b);
    }
    chunked
}

/// Sends a streamed request body after its head, frame by frame as the client sends it
/// (chunk-encoded when its length is unknown, trailers included), while the response is read.
pub struct Pump {
    body: UpBody,
    chunked: bool,
    out: Vec<u8>,
    pos: usize,
    unflushed: bool,
    done: bool,
    /// A frame has been taken from the body: it can no longer be sent again.
    pub(crate) started: bool,
}

/// Why a [`Pump`] stopped.
pub enum PumpError {
    /// The client's body failed (its [`crate::body::Upload`] says how).
    Body,
    /// The upstream connection failed while the body was being written.
    Write(io::Error),
}

impl Pump {
    pub fn new(body: UpBody, chunked: bool) -> Pump {
        Pump {
            body,
            chunked,
            out: Vec::new(),
            pos: 0,
            unflushed: false,
            done: false,
            started: false,
        }
    }

    /// Sends what the body has; `Ready(Ok)` once all of it is written and flushed.
    pub fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            while self.pos < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into()))),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                }
            }
            self.out.clear();
            self.pos = 0;
            if self.done || self.unflushed {
                // TLS may hold written bytes back until flushed; before waiting on the client,
                // everything so far goes out.
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                    Poll::Ready(Ok(())) => self.unflushed = false,
                }
                if self.done {
                    return Poll::Ready(Ok(()));
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => None,
                Poll::Ready(Some(Ok(f))) => Some(f),
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(PumpError::Body)),
            };
            self.started = true;
            match frame {
                None => self.finish(None),
                Some(f) => match f.into_data() {
                    Ok(d) => {
                        if !d.is_empty() {
                            if self.chunked {
                                let _ = write!(self.out, "{:x}\r\n", d.len());
                            }
                            self.out.extend_from_slice(&d);
                            if self.chunked {
                                self.out.extend_from_slice(b"\r\n");
                            }
                        }
                        if self.body.is_end_stream() {
                            self.finish(None);
                        }
                    }
                    Err(f) => self.finish(f.into_trailers().ok().as_ref()),
                },
            }
        }
    }

    /// The body has ended (with `trailers`, which only a chunked body can carry).
    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        self.done = true;
        if !self.chunked {
            return;
        }
        self.out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            if allowed_in_trailers(name) {
                put_field(&mut self.out, name, value);
            }
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

/// One field line, `name: value` CRLF.
pub fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One upstream HTTP/1.1 connection weft drives itself: the stream, what has been read from it
/// but not yet consumed, and the slot it holds in the cluster's `max_connections`.
pub struct Conn {
    io: RawStream,
    pub(crate) buf: BytesMut,
    wbuf: Vec<u8>,
    read_size: usize,
    max_buf: usize,
    _guard: ConnGuard,
}

const FIRST_READ: usize = bufs::READ_SIZE;
/// The most one read takes while a response head is awaited over plain TCP.
const HEAD_READ: usize = 8 * 1024;

impl Conn {
    pub(crate) fn new(io: RawStream, guard: ConnGuard, max_buf: usize) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            read_size: FIRST_READ,
            max_buf: max_buf.max(FIRST_READ),
            _guard: guard,
        }
    }

    /// Reads once into the buffer: the number of bytes read (0: the upstream closed its side).
    /// The read size adapts: it doubles, up to the cluster's per-connection buffer limit, each
    /// time a read fills it.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_fill_max(cx, usize::MAX)
    }

    /// [`Conn::poll_fill`], reading at most `max` bytes.
    fn poll_fill_max(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = bufs::take_read();
        }
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.spare_capacity_mut();
        let room = spare.len().min(max);
        let spare = &mut spare[..room];
        let start = spare.as_ptr();
        let mut rb = ReadBuf::uninit(spare);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // Nothing to read yet (the common case: the request just went out): the buffer
                // goes back to the thread's kept ones instead of waiting here with the exchange.
                // Held while waiting, as many buffers were out as exchanges in flight, and each
                // response was read into one last touched dozens of exchanges before (cold lines
                // and pages for the kernel's copy); given back, the reads go round the few most
                // recently used. HAProxy likewise takes a buffer only when data has arrived.
                if self.buf.is_empty() && self.read_size <= bufs::READ_SIZE {
                    bufs::give_read(std::mem::take(&mut self.buf));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                // A reader could replace the `ReadBuf` with another buffer; then the bytes did not
                // land in ours (tokio-util's `poll_read_buf` checks the same).
                assert_eq!(rb.filled().as_ptr(), start.cast(), "the reader swapped its buffer");
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity: the
                // `ReadBuf` was built over it, and (checked above) is still that buffer.
                unsafe { self.buf.set_len(self.buf.len() + n) };
                if n == room && room < max {
                    self.read_size = (self.read_size * 2).min(self.max_buf);
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    /// An idle connection is fit for another request if the upstream has sent nothing since
    /// (neither bytes, which no request asked for, nor a close).
    pub(crate) fn still_idle(&mut self) -> bool {
        // A byte on the stack is enough to tell: the connection is dropped if anything arrives.
        // (Reading into the connection's buffer could allocate it for an idle connection.)
        let mut probe = [0u8; 1];
        if !self.buf.is_empty() {
            return false;
        }
        match &mut self.io {
            // `try_read` looks at the socket's readiness first (no system call while nothing
            // arrived) and, unlike a poll, registers no waker (which takes the socket's lock).
            RawStream::Tcp(s) => matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            io => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(&mut probe);
                Pin::new(io).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }

    /// Writes the encoded request head; on failure, also whether any of it was written.
    async fn write_request(&mut self) -> Result<(), (io::Error, bool)> {
        use tokio::io::AsyncWriteExt;
        let mut written = 0;
        while written < self.wbuf.len() {
            match self.io.write(&self.wbuf[written..]).await {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written > 0)),
                Ok(n) => written += n,
                Err(e) => return Err((e, written > 0)),
            }
        }
        self.io.flush().await.map_err(|e| (e, true))
    }
}

/// Drives the streamed request body still to send, if any, as far as it goes now. It is dropped
/// once sent whole, or once the upstream stops reading it (then [`Driven::poisoned`]: a response
/// may still come, but the connection is never reused). `Err`: the client's body failed.
fn drive(pump: &mut Option<Box<Pump>>, io: &mut RawStream, cx: &mut Context<'_>) -> Result<Driven, ()> {
    let Some(p) = pump.as_mut() else {
        return Ok(Driven::default());
    };
    let started = p.started;
    let poisoned = match p.poll_send(io, cx) {
        Poll::Pending => {
            return Ok(Driven {
                started,
                poisoned: false,
            })
        }
        Poll::Ready(Ok(())) => false,
        Poll::Ready(Err(PumpError::Body)) => return Err(()),
        // The upstream stopped reading (it may be answering early, as with a 413).
        Poll::Ready(Err(PumpError::Write(_))) => true,
    };
    let started = pump.take().is_some_and(|p| p.started);
    Ok(Driven { started, poisoned })
}

/// What [`drive`] did.
#[derive(Default)]
struct Driven {
    /// Some of the body has been taken from the client (it can no longer be sent again).
    started: bool,
    /// Writing it failed: the connection is out of step.
    poisoned: bool,
}

/// How a round trip on a connection failed.
pub enum RoundTripError {
    /// The request can go on another connection: writing its head failed, or the upstream closed
    /// a reused connection before a byte of the response to an idempotent request whose body was
    /// not yet started.
    Stale(io::Error),
    Io(io::Error),
    Parse(ParseError),
    /// The client's request body failed.
    Body,
}

/// A response head (its `keep_alive` false if writing the request body failed), and the rest of
/// a streamed request body when the upstream answered before it ended (full duplex: the response
/// body's reader keeps sending it).
pub struct Answer {
    pub head: Head,
    pub pump: Option<Box<Pump>>,
}

/// Writes the request and reads the response head (skipping `1xx` interim responses). A
/// streamed body (`body` is [`UpBody::Stream`]) is sent while the response is awaited.
pub async fn round_trip(
    conn: &mut Conn,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &mut UpBody,
    reused: bool,
) -> Result<Answer, RoundTripError> {
    let kind = match &*body {
        UpBody::Empty => BodyKind::Buffered(None),
        UpBody::Full(b) => BodyKind::Buffered(b.as_ref()),
        UpBody::Stream(..) => BodyKind::Streamed,
    };
    // A message boundary: the response is read at the buffer's start if nothing holds the last.
    rewind(&mut conn.buf, FIRST_READ);
    if conn.wbuf.capacity() == 0 {
        conn.wbuf = bufs::take_write();
    }
    let chunked = encode_request(&mut conn.wbuf, method, uri, headers, kind);
    // Closed before a byte of the response on a reused connection: the upstream most likely
    // closed it as idle while the request was on its way, and did not process it.
    let stale = reused && idempotent(method);
    // A head that failed before a byte of it was written can go on another connection whatever
    // the method; one partly written only if the upstream may have closed an idle connection.
    if let Err((e, any_written)) = conn.write_request().await {
        return Err(match !any_written || stale {
            true => RoundTripError::Stale(e),
            false => RoundTripError::Io(e),
        });
    }
    // Not needed again before the next request: back to the thread's buffers (the downstream
    // side takes one for the response head).
    bufs::give_write(std::mem::take(&mut conn.wbuf));
    let mut pump = match kind {
        BodyKind::Streamed => Some(Box::new(Pump::new(std::mem::replace(body, UpBody::Empty), chunked))),
        BodyKind::Buffered(_) => None,
    };
    let head_request = *method == Method::HEAD;
    let mut got_any = false;
    // Some of a streamed body has been taken from the client: this request cannot be sent again.
    let mut taken = false;
    let mut poisoned = false;
    let head = std::future::poll_fn(|cx| loop {
        match drive(&mut pump, &mut conn.io, cx) {
            Ok(d) => {
                taken |= d.started;
                poisoned |= d.poisoned;
            }
            Err(()) => return Poll::Ready(Err(RoundTripError::Body)),
        }
        if !conn.buf.is_empty() {
            got_any = true;
            match parse_head(&mut conn.buf, head_request) {
                Err(e) => return Poll::Ready(Err(RoundTripError::Parse(e))),
                Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Poll::Ready(Err(RoundTripError::Parse(ParseError(
                        "101 Switching Protocols to a request that asked for no upgrade",
                    ))))
                }
                Ok(Some(h)) if h.status.is_informational() => continue,
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) if conn.buf.len() >= conn.max_buf => {
                    return Poll::Ready(Err(RoundTripError::Parse(ParseError("response head too large"))))
                }
                Ok(None) => {}
            }
        }
        let resend = stale && !got_any && !taken;
        // Over plain TCP the head is read in pieces of at most HEAD_READ bytes: a large body
        // stays in the socket, from where it can be spliced to the client (crate::splice)
        // instead of being read in with its head.
        let max = if matches!(conn.io, RawStream::Tcp(_)) {
            HEAD_READ
        } else {
            usize::MAX
        };
        match conn.poll_fill_max(cx, max) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) if resend => {
                return Poll::Ready(Err(RoundTripError::Stale(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response",
                ))))
            }
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(RoundTripError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before a complete response head",
                ))))
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) if resend => return Poll::Ready(Err(RoundTripError::Stale(e))),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(RoundTripError::Io(e))),
        }
    })
    .await;
    match head {
        Ok(mut head) => {
            head.keep_alive &= !poisoned;
            Ok(Answer { head, pump })
        }
        Err(RoundTripError::Stale(e)) => {
            // Hand a body never started back for the next try.
            if let Some(p) = pump {
                *body = p.body;
            }
            Err(RoundTripError::Stale(e))
        }
        Err(e) => Err(e),
    }
}

/// A response body read straight from its connection as the downstream side polls it; the
/// connection returns to its pool once a body framed by length or chunks has ended and nothing
/// more was sent after it.
pub struct RawBody {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    eof: bool,
    home: Option<RawHome>,
    /// The rest of a streamed request body, still being sent (full duplex).
    pump: Option<Box<Pump>>,
    /// See [`Head::connection_options`].
    connection_options: bool,
}

impl RawBody {
    pub(crate) fn new(conn: Box<Conn>, head: &Head, pump: Option<Box<Pump>>, home: RawHome) -> RawBody {
        let mut b = RawBody {
            conn: Some(conn),
            decoder: Decoder::new(head.framing),
            keep_alive: head.keep_alive,
            eof: false,
            home: Some(home),
            pump,
            connection_options: head.connection_options,
        };
        if b.decoder.is_done() {
            b.release();
        }
        b
    }

    /// Whether the response's headers still hold hop-by-hop fields (named by its `Connection`).
    pub fn connection_options(&self) -> bool {
        self.connection_options
    }

    /// Whether the rest of this body can be spliced ([`crate::splice`]) rather than read: a
    /// content-length body with at least [`SPLICE_MIN`](crate::splice::SPLICE_MIN) bytes still to
    /// come, nothing of it waiting in the read buffer, over plain TCP, with no request body still
    /// going up.
    pub fn can_splice(&self) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        matches!(conn.io, RawStream::Tcp(_))
            && crate::splice::enabled()
            && conn.buf.is_empty()
            && self.pump.is_none()
            && matches!(self.decoder.state, State::Length(n) if n >= crate::splice::SPLICE_MIN)
    }

    /// Moves the rest of the body to `to` through `pipe` (after [`RawBody::can_splice`]),
    /// counting in `moved` the bytes handed to `to`. Ready(Ok) once all of it has gone out; the
    /// connection goes back to its pool as soon as the last byte is in the pipe. An error
    /// (either side) leaves the connection closed.
    pub fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &mut crate::splice::Pipe,
        to: &tokio::net::TcpStream,
        moved: &mut u64,
    ) -> Poll<io::Result<()>> {
        loop {
            if pipe.held() > 0 {
                match pipe.poll_drain(to, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) => *moved += n as u64,
                    Poll::Ready(Err(e)) => {
                        self.conn = None;
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            let State::Length(rem) = self.decoder.state else {
                return Poll::Ready(if self.decoder.is_done() {
                    Ok(())
                } else {
                    Err(io::Error::other("not a content-length body"))
                });
            };
            let Some(Conn {
                io: RawStream::Tcp(from),
                ..
            }) = self.conn.as_deref()
            else {
                return Poll::Ready(Err(io::Error::other("no TCP connection to splice from")));
            };
            match pipe.poll_fill(from, rem, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the body",
                    )));
                }
                Poll::Ready(Ok(n)) if n as u64 == rem => {
                    self.decoder.state = State::Done;
                    self.release();
                }
                Poll::Ready(Ok(n)) => self.decoder.state = State::Length(rem - n as u64),
                // Nothing was taken from the connection: the body can go on as frames.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Unsupported => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// The body has ended: the connection goes back to its pool if it can carry another request.
    /// A request body still being sent is finished first, as hyper's connection task did (the
    /// upstream may still be reading it), in a task of its own bounded by [`UPLOAD_AFTER_RESPONSE`].
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let reusable = self.keep_alive && !self.eof;
        let home = self.home.take();
        match self.pump.take() {
            Some(pump) => drop(tokio::spawn(finish_upload(conn, pump, reusable, home))),
            None => park(conn, reusable, home),
        }
    }
}

/// How long a request body may still take to send once its response has ended.
const UPLOAD_AFTER_RESPONSE: std::time::Duration = std::time::Duration::from_secs(60);

async fn finish_upload(mut conn: Box<Conn>, mut pump: Box<Pump>, reusable: bool, home: Option<RawHome>) {
    let send = std::future::poll_fn(|cx| pump.poll_send(&mut conn.io, cx));
    let sent = tokio::time::timeout(UPLOAD_AFTER_RESPONSE, send).await;
    park(conn, reusable && matches!(sent, Ok(Ok(()))), home);
}

/// Returns a connection whose exchange has ended to its pool if it can carry another request:
/// `reusable`, and nothing was sent after the response.
fn park(mut conn: Box<Conn>, reusable: bool, home: Option<RawHome>) {
    if let (true, true, Some(home)) = (reusable, conn.buf.is_empty(), home) {
        // At rest, a connection holds no buffer: the thread's buffers go round the exchanges in
        // flight (see `kept::bufs`). One whose reads grew (large bodies) keeps its own.
        if conn.read_size <= bufs::READ_SIZE {
            bufs::give_read(std::mem::take(&mut conn.buf));
        }
        home.put(conn);
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match drive(&mut this.pump, &mut conn.io, cx) {
                Ok(d) => this.keep_alive &= !d.poisoned,
                Err(()) => {
                    this.conn = None;
                    let e = io::Error::other("the client's request body failed");
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            match this.decoder.decode(&mut conn.buf, this.eof) {
                Err(e) => {
                    // The connection is out of step: never reused.
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Ok(Step::Data(b)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Step::Trailers(t)) => {
                    this.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Step::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => this.eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Between sending a request and its response's first bytes, a connection holds no read
    /// buffer: the one it took went back to the thread's kept buffers when the read found nothing.
    #[tokio::test]
    async fn a_connection_awaiting_its_response_holds_no_read_buffer() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let mut conn = Conn::new(RawStream::Tcp(c), crate::cluster::ConnGuard::detached(), 1 << 20);
        let pending = std::future::poll_fn(|cx| Poll::Ready(conn.poll_fill(cx).is_pending())).await;
        assert!(pending, "nothing was sent yet");
        assert_eq!(
            conn.buf.capacity(),
            0,
            "the buffer went back while nothing was to be read"
        );
        server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx)).await.unwrap();
        assert_eq!(&conn.buf[..n], b"HTTP/1.1 204 No Content\r\n\r\n");
        // A partly read head keeps its buffer while the rest is awaited.
        conn.buf.clear();
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        std::future::poll_fn(|cx| conn.poll_fill(cx)).await.unwrap();
        let pending = std::future::poll_fn(|cx| Poll::Ready(conn.poll_fill(cx).is_pending())).await;
        assert!(pending);
        assert_eq!(&conn.buf[..], b"HTTP/1.1 200 OK\r\n", "bytes read are kept");
    }

    /// An emptied buffer reads at its allocation's start again once what was cut out of it is
    /// gone; while a cut-out part lives, it stays where it is and nothing is allocated.
    #[test]
    fn an_emptied_buffer_rewinds_to_its_start() {
        let mut buf = BytesMut::with_capacity(8192);
        let start = buf.as_ptr();
        // A short message: no move yet.
        buf.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        buf.advance(buf.len());
        rewind(&mut buf, 8192);
        assert_ne!(buf.as_ptr(), start);
        buf = BytesMut::with_capacity(8192);
        let start = buf.as_ptr();
        for round in 0..3 {
            buf.extend_from_slice(&[b'x'; REWIND_AFTER]);
            let head = buf.split_to(buf.len()).freeze();
            // The head is alive: no move (it would need a new allocation).
            rewind(&mut buf, 8192);
            assert_ne!(buf.as_ptr(), start, "round {round}: moved while shared");
            assert_eq!(head.as_ptr(), start);
            drop(head);
            rewind(&mut buf, 8192);
            assert_eq!(buf.as_ptr(), start, "round {round}: not rewound");
            assert_eq!(buf.capacity(), 8192);
        }
        // Unread bytes are never moved or dropped.
        buf.extend_from_slice(b"abc");
        buf.advance(1);
        rewind(&mut buf, 8192);
        assert_eq!(&buf[..], b"bc");
        // An empty buffer with no allocation stays without one.
        let mut none = BytesMut::new();
        rewind(&mut none, 8192);
        assert_eq!(none.capacity(), 0);
    }

    fn head(raw: &str, head_request: bool) -> Result<Option<Head>, ParseError> {
        parse_head(&mut BytesMut::from(raw), head_request)
    }

    fn body(framing: Framing, wire: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ParseError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut pos = 0;
        loop {
            let eof = pos >= wire.len();
            match d.decode(&mut buf, eof)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::Trailers(t) => trailers = Some(t),
                Step::End => return Ok((out, trailers)),
                Step::More => {
                    let n = split.min(wire.len() - pos);
                    buf.extend_from_slice(&wire[pos..pos + n]);
                    pos += n;
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        for bad in ["5, 6", "-5", "+5", "0x5", "5 5", "", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(head(&raw, false).is_err(), "{bad:?}");
        }
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        assert!(head("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).is_err());
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nConnection: Keep-Alive\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: foo, close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", false)
            .unwrap()
            .is_none());
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).is_err());
    }

    #[test]
    fn header_names_match_http_for_every_spelling() {
        let names = [
            "Host",
            "Date",
            "ETag",
            "Vary",
            "Accept",
            "Server",
            "Cookie",
            "Origin",
            "Expires",
            "Referer",
            "Upgrade",
            "Location",
            "Connection",
            "User-Agent",
            "Set-Cookie",
            "Keep-Alive",
            "Traceparent",
            "Content-Type",
            "X-Request-Id",
            "X-Request-ID",
            "Last-Modified",
            "Accept-Ranges",
            "Cache-Control",
            "Authorization",
            "Content-Length",
            "Accept-Encoding",
            "Accept-Language",
            "X-Forwarded-For",
            "Content-Encoding",
            "Transfer-Encoding",
            "X-Forwarded-Proto",
            "X-Custom",
            "Hosts",
            "Hos",
            "content-lengtH",
        ];
        for n in names {
            let mixed: String = n
                .chars()
                .enumerate()
                .map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c })
                .collect();
            for spelling in [n.to_string(), n.to_ascii_lowercase(), n.to_ascii_uppercase(), mixed] {
                let ours = header_name(spelling.as_bytes()).unwrap();
                let theirs = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
                assert_eq!(ours, theirs, "{spelling}");
                assert_eq!(ours.as_str(), n.to_ascii_lowercase(), "{spelling}");
                let mut map = HeaderMap::new();
                map.insert(theirs, HeaderValue::from_static("v"));
                assert!(map.contains_key(&ours), "{spelling}");
            }
        }
        for bad in [&b""[..], b"Ho st", b"Content-Length:", b"X\x01"] {
            assert!(header_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_fields_are_left_out() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                   Transfer-Encoding: chunked\r\nTrailer: x\r\nx-app: 1\r\n\r\n";
        let h = head(raw, false).unwrap().unwrap();
        assert_eq!(
            (h.framing, h.keep_alive, h.connection_options),
            (Framing::Chunked, true, false)
        );
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers);
        assert_eq!(h.headers["x-app"], "1");
        let raw = "HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n";
        let h = head(raw, false).unwrap().unwrap();
        assert_eq!((h.keep_alive, h.connection_options), (false, true));
        assert_eq!(h.headers[header::CONNECTION], "close, x-hop");
        assert!(h.headers.contains_key("x-hop"));
    }

    #[test]
    fn bodies_decode_in_any_split() {
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 7\r\n\r\n";
        for split in [1, 2, 3, 7, 1000] {
            let (b, t) = body(Framing::Chunked, chunked, split).unwrap();
            assert_eq!(b, b"hello world");
            assert_eq!(t.unwrap()["x-checksum"], "7");
            let (b, t) = body(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", split).unwrap();
            assert_eq!((b.as_slice(), t), (&b"abc"[..], None));
            assert_eq!(body(Framing::Length(3), b"abc", split).unwrap().0, b"abc");
            assert_eq!(body(Framing::Close, b"abcdef", split).unwrap().0, b"abcdef");
            assert!(body(Framing::Length(4), b"abc", split).is_err());
            assert!(body(Framing::Chunked, b"5\r\nhel", split).is_err());
        }
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r;x\r\nhello\r\n0\r\n\r\n",
            b"5\x0c;x\r\nhello\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nx: 1\n\n",
            b"3\r\nabc\r\n0\r\n\n",
        ] {
            assert!(
                body(Framing::Chunked, bad, 1000).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_extensions_are_bounded_per_body() {
        let ext = format!(";{}", "e".repeat(1000));
        let mut wire = Vec::new();
        for _ in 0..20 {
            wire.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        assert!(body(Framing::Chunked, &wire, 1000).is_err());
        let small: Vec<u8> = wire.iter().copied().filter(|b| *b != b'e').collect();
        assert_eq!(body(Framing::Chunked, &small, 1000).unwrap().0, b"x".repeat(20));
    }

    #[test]
    fn requests_encode_with_their_length() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("svc"));
        encode_request(
            &mut out,
            &Method::GET,
            &"/a?b".parse().unwrap(),
            &h,
            BodyKind::Buffered(None),
        );
        assert_eq!(out, b"GET /a?b HTTP/1.1\r\nhost: svc\r\n\r\n");
        encode_request(&mut out, &Method::POST, &Uri::default(), &h, BodyKind::Buffered(None));
        assert_eq!(out, b"POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n");
        let hi = Bytes::from_static(b"hi");
        encode_request(
            &mut out,
            &Method::PUT,
            &"/x".parse().unwrap(),
            &h,
            BodyKind::Buffered(Some(&hi)),
        );
        assert_eq!(out, b"PUT /x HTTP/1.1\r\nhost: svc\r\ncontent-length: 2\r\n\r\nhi");
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(encode_request(
            &mut out,
            &Method::POST,
            &"/x".parse().unwrap(),
            &h,
            BodyKind::Streamed
        ));
        assert_eq!(
            out,
            b"POST /x HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        assert!(!encode_request(
            &mut out,
            &Method::POST,
            &"/x".parse().unwrap(),
            &h,
            BodyKind::Streamed
        ));
        assert_eq!(out, b"POST /x HTTP/1.1\r\nhost: svc\r\ncontent-length: 7\r\n\r\n");
        // A buffered body announces its own length, whatever `Content-Length` the headers carry
        // (a header mutation, say): the head never frames other bytes than those that follow.
        encode_request(
            &mut out,
            &Method::POST,
            &"/x".parse().unwrap(),
            &h,
            BodyKind::Buffered(Some(&hi)),
        );
        assert_eq!(out, b"POST /x HTTP/1.1\r\nhost: svc\r\ncontent-length: 2\r\n\r\nhi");
        encode_request(
            &mut out,
            &Method::GET,
            &"/x".parse().unwrap(),
            &h,
            BodyKind::Buffered(None),
        );
        assert_eq!(out, b"GET /x HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n");
    }
}
