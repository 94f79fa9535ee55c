//! The downstream HTTP/1.1 codec: request heads in, response heads out. No I/O, so the fuzz
//! target `h1_server` drives it directly.
//!
//! Request framing follows RFC 9112 §6.3 strictly, as hyper's server did: a `Transfer-Encoding`
//! whose last coding is not `chunked`, `chunked` applied twice, a `Transfer-Encoding` in an
//! HTTP/1.0 request, and several different or non-numeric `Content-Length`s are refused with 400.
//! A request with both `Transfer-Encoding: chunked` and `Content-Length` is read as chunked but
//! handed on with both headers, so that the request pipeline refuses it (400, counted and logged
//! as a downstream protocol error) and the connection closes after the reply.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};
use std::mem::MaybeUninit;
use weft_upstream::h1::{parse_length, put_field, Framing};

/// At most this many header fields in a request head (hyper's server default).
pub const MAX_HEADERS: usize = 100;

/// Why a request head was refused: the status of the reply, and what to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    pub why: &'static str,
}

const fn bad(why: &'static str) -> HeadError {
    HeadError {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// `Empty`, `Length(n)` or `Chunked`: a request without framing headers has no body.
    pub framing: Framing,
    /// The connection may carry another request after this exchange (version default and
    /// `Connection`); an ambiguous head clears it.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// The client accepts trailers in a chunked response (`TE: trailers`).
    pub te_trailers: bool,
}

/// What the fields of a request head say about its framing and connection, noted as they are
/// read.
#[derive(Default)]
struct Facts {
    /// Transfer-Encoding seen: whether its last coding is `chunked`.
    te: Option<bool>,
    chunked_twice: bool,
    length: Option<u64>,
    length_error: bool,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_field: bool,
    expect_continue: bool,
    te_trailers: bool,
}

impl Facts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            for part in value.split(|b| *b == b',') {
                match parse_length(part.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.length_error = true,
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            // A field with no coding at all counts as one that does not end in chunked: refused
            // (never read as "no body", which would frame the body as the next request).
            let mut last = None;
            for coding in value.split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let chunked = coding.eq_ignore_ascii_case(b"chunked");
                self.chunked_twice |= chunked && (last == Some(true) || (last.is_none() && self.te == Some(true)));
                last = Some(chunked);
            }
            self.te = Some(last.unwrap_or(false));
        } else if *name == header::CONNECTION {
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                self.upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if *name == header::UPGRADE {
            self.upgrade_field = true;
        } else if *name == header::EXPECT {
            self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if *name == header::TE {
            self.te_trailers |= value.split(|b| *b == b',').any(|t| {
                t.split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"trailers")
            });
        }
    }
}

/// What [`parse_request`] found at the start of the buffer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing would allocate
pub enum Parsed {
    /// A request head (split off the buffer).
    Request(RequestHead),
    /// A request that asks to switch protocols (an `Upgrade` named in `Connection`, or CONNECT),
    /// left whole in the buffer: hyper's server takes the connection over from there and joins
    /// the two upgraded connections.
    Switch,
}

/// Parses the request head at the start of `buf` and splits it off. `Ok(None)`: not complete
/// yet. Header values share the head's bytes; nothing is copied.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Parsed>, HeadError> {
    // Uninitialised slots: zeroing 100 of them would cost more than parsing a typical head.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let mut facts = Facts::default();
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut slots);
    // Filled in place (returning it from the match would copy the whole inline array).
    let mut fields = weft_upstream::h1::Fields::new();
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => {
            for h in req.headers.iter() {
                let name = weft_upstream::h1::header_name(h.name.as_bytes()).map_err(|_| bad("invalid header name"))?;
                facts.note(&name, h.value);
                let start = h.value.as_ptr() as usize - base;
                fields.push((name, start, start + h.value.len()));
            }
            len
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                why: "too many header fields",
            })
        }
        Err(httparse::Error::Version) => {
            return Err(HeadError {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                why: "unsupported HTTP version",
            })
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| bad("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    if method == Method::CONNECT || (facts.upgrade_field && facts.upgrade_token) {
        return Ok(Some(Parsed::Switch));
    }
    let path = req.path.unwrap_or_default();
    let (path_start, path_len) = (path.as_ptr() as usize - base, path.len());
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_start..path_start + path_len))
        .map_err(|_| bad("invalid request target"))?;
    // Room for the fields the proxy adds (x-forwarded-for, x-forwarded-proto, x-request-id,
    // x-envoy-expected-rq-timeout-ms, ...): growing the map would rehash it.
    let mut headers = weft_upstream::h1::maps::take(fields.len() + 6);
    for (name, start, end) in fields.drain(..) {
        // SAFETY (of the contract: valid header-value bytes): httparse accepted these bytes as a
        // field value, which allows exactly what `HeaderValue` does (HTAB, SP, visible ASCII,
        // obs-text; no other control byte and no DEL).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(start..end)) };
        headers.append(name, value);
    }
    head_from(method, uri, version, headers, &facts).map(|h| Some(Parsed::Request(h)))
}

fn head_from(
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    f: &Facts,
) -> Result<RequestHead, HeadError> {
    if f.length_error {
        return Err(bad("invalid or conflicting content-length"));
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => f.keep_alive && !f.close,
        _ => !f.close,
    };
    let framing = match f.te {
        Some(_) if version == Version::HTTP_10 => return Err(bad("transfer-encoding in an HTTP/1.0 request")),
        Some(false) => return Err(bad("transfer-encoding whose last coding is not chunked")),
        Some(true) if f.chunked_twice => return Err(bad("chunked applied twice")),
        Some(true) => {
            // Both framings: read as chunked, refused by the pipeline, never reused.
            if f.length.is_some() {
                keep_alive = false;
            }
            Framing::Chunked
        }
        None => match f.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
    };
    Ok(RequestHead {
        method,
        uri,
        version,
        headers,
        expect_continue: f.expect_continue && version == Version::HTTP_11 && framing != Framing::Empty,
        framing,
        keep_alive,
        te_trailers: f.te_trailers,
    })
}

/// The plain reply to a refused head (the connection closes after it).
pub fn error_reply(out: &mut Vec<u8>, e: HeadError) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(e.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(e.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\ndate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOut {
    /// No body (HEAD, 1xx, 204, 304): whatever the body yields is dropped.
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by closing the connection (an HTTP/1.0 client, length unknown).
    Close,
}

/// What the response head needs to know about its request.
#[derive(Debug, Clone, Copy)]
pub struct ReqFacts {
    pub head: bool,
    pub version: Version,
    pub keep_alive: bool,
}

/// Writes a response head (status line, fields, framing, `connection`, `date`) into `out`.
/// `body_len`: the body's exact length when known. Returns the body's framing and whether the
/// connection stays open after it.
pub fn encode_response<B>(
    out: &mut Vec<u8>,
    resp: &Response<B>,
    body_len: Option<u64>,
    req: ReqFacts,
) -> (BodyOut, bool) {
    let status = resp.status();
    let code = status.as_u16();
    let h = resp.headers();
    let mut keep_alive = req.keep_alive;
    // An HTTP/1.0 client is answered in HTTP/1.0 (as hyper's server did).
    out.extend_from_slice(match req.version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body_status = status.is_informational() || code == 204 || code == 304;
    let mut date = false;
    let mut length_field: Option<&HeaderValue> = None;
    for (name, value) in h {
        if *name == header::CONTENT_LENGTH {
            // Framing is written below, from what the body really is (the field is read only
            // for a response without a body).
            length_field = Some(value);
            continue;
        }
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        if *name == header::CONNECTION {
            if value.as_bytes().eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            }
            continue;
        }
        date |= *name == header::DATE;
        put_field(out, name, value);
    }
    let framing = if req.head || no_body_status {
        // The length of the body it would have had, when the response says (never for 1xx/204).
        if !(status.is_informational() || code == 204) {
            let length_field = length_field.map(|v| {
                std::str::from_utf8(v.as_bytes())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            });
            match (length_field, body_len) {
                (Some(Some(n)), _) => put_length(out, n),
                // A local reply to HEAD: the length of the body a GET would have had.
                (None, Some(n)) if n > 0 => put_length(out, n),
                _ => {}
            }
        }
        BodyOut::Empty
    } else if let Some(n) = body_len {
        put_length(out, n);
        BodyOut::Length(n)
    } else if req.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        BodyOut::Chunked
    } else {
        keep_alive = false;
        BodyOut::Close
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line.
pub fn put_chunk_size(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body, with its trailers.
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` value for now, formatted once per second per thread.
pub(crate) fn with_date(f: impl FnOnce(&[u8])) {
    with_date_cache(|d| f(&d.text))
}

/// The `Date` value for now as a field value (weft's HTTP/2 server), built once per second per
/// thread and shared by that second's responses.
pub(crate) fn date_value() -> HeaderValue {
    with_date_cache(|d| {
        if d.value.is_none() {
            d.value = HeaderValue::from_bytes(&d.text).ok();
        }
        d.value
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    })
}

struct DateCache {
    secs: u64,
    text: [u8; 29],
    value: Option<HeaderValue>,
}

fn with_date_cache<R>(f: impl FnOnce(&mut DateCache) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<DateCache> = const {
            std::cell::RefCell::new(DateCache { secs: 0, text: [0; 29], value: None })
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.secs != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                d.text.copy_from_slice(s.as_bytes());
                d.secs = secs;
                d.value = None;
            }
        }
        f(&mut d)
    })
}

/// Parses a request head from a whole input (the fuzz target and the tests).
pub fn parse_all(input: &[u8]) -> Result<Option<Parsed>, HeadError> {
    let mut buf = BytesMut::from(input);
    parse_request(&mut buf)
}

/// For tests: a response head as bytes.
pub fn response_head<B>(resp: &Response<B>, body_len: Option<u64>, req: ReqFacts) -> (Bytes, BodyOut, bool) {
    let mut out = Vec::new();
    let (f, k) = encode_response(&mut out, resp, body_len, req);
    (out.into(), f, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_all(s.as_bytes()).map(|p| {
            p.map(|p| match p {
                Parsed::Request(h) => h,
                Parsed::Switch => panic!("a switch: {s:?}"),
            })
        })
    }

    fn switches(s: &str) -> bool {
        matches!(parse_all(s.as_bytes()), Ok(Some(Parsed::Switch)))
    }

    #[test]
    fn framing_rules() {
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive, "an ambiguous request closes its connection");
        for refused in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(head(refused).unwrap_err().status, 400, "{refused:?}");
        }
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").unwrap_err().status, 505);
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    /// The input the fuzz target `h1_server` once failed on (fuzz/regressions): a
    /// `Transfer-Encoding` with no coding was read as "no body".
    #[test]
    fn fuzz_regression_empty_transfer_encoding() {
        let input = include_bytes!("../../../../fuzz/regressions/h1_server/empty-transfer-encoding");
        let rest = &input[3..];
        let end = rest.windows(2).position(|w| w == [0xfe, 0xfe]).unwrap();
        assert_eq!(parse_all(&rest[..end]).unwrap_err().status, 400);
    }

    #[test]
    fn connection_and_expect() {
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert!(switches(
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        // An Upgrade not named in Connection is ignored.
        head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(switches("CONNECT a:443 HTTP/1.1\r\n\r\n"));
        let h = head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        let h = head("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue, "nothing to continue without a body");
    }

    #[test]
    fn response_heads() {
        let req = ReqFacts {
            head: false,
            version: Version::HTTP_11,
            keep_alive: true,
        };
        let mut r = Response::new(());
        r.headers_mut().insert(header::DATE, HeaderValue::from_static("x"));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let (b, f, k) = response_head(&r, Some(3), req);
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((f, k), (BodyOut::Length(3), true));
        let (b, f, _) = response_head(&r, None, req);
        assert_eq!(
            &b[..],
            b"HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(f, BodyOut::Chunked);
        let (b, f, _) = response_head(&r, Some(0), ReqFacts { head: true, ..req });
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 99\r\n\r\n");
        assert_eq!(f, BodyOut::Empty);
        let mut bare = Response::new(());
        bare.headers_mut().insert(header::DATE, HeaderValue::from_static("x"));
        let (b, _, _) = response_head(&bare, Some(3), ReqFacts { head: true, ..req });
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 3\r\n\r\n");
        let (b, _, _) = response_head(&bare, Some(0), ReqFacts { head: true, ..req });
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\ndate: x\r\n\r\n");
        *r.status_mut() = StatusCode::NO_CONTENT;
        let (b, f, _) = response_head(&r, Some(0), req);
        assert_eq!(&b[..], b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
        assert_eq!(f, BodyOut::Empty);
        *r.status_mut() = StatusCode::OK;
        let (b, f, k) = response_head(
            &r,
            None,
            ReqFacts {
                version: Version::HTTP_10,
                ..req
            },
        );
        assert_eq!(&b[..], b"HTTP/1.0 200 OK\r\ndate: x\r\nconnection: close\r\n\r\n");
        assert_eq!((f, k), (BodyOut::Close, false));
        let mut out = Vec::new();
        put_chunk_size(&mut out, 0x1a2);
        assert_eq!(out, b"1a2\r\n");
    }
}
