//! weft's own downstream HTTP/1.1 server codec (`weft_proxy::h1_server::codec`): request heads
//! parsed from arbitrary bytes, checked against an independent parse (httparse, read separately),
//! and response heads encoded from arbitrary responses, read back by httparse.
//!
//! Input layout: byte 0: the split point of the request stream (the head must parse the same
//! whether it arrives whole or cut there); byte 1: bits 0–5 the response status offset, bit 6 a
//! HEAD request, bit 7 HTTP/1.0; byte 2: the response body length when known (0xff: unknown);
//! the rest: the request stream, and after a `0xfe 0xfe` pair, response header lines
//! `name 0x01 value` split by 0 bytes.
//!
//! Checks, for a parsed request: httparse finds the same method, target, version and fields
//! (count and values, in order); the framing agrees with the fields (`Length(n)`: every
//! `Content-Length` value is n and there is no `Transfer-Encoding`; `Chunked`: the last coding
//! of the last `Transfer-Encoding` is chunked; `Empty`: no `Transfer-Encoding` and no non-zero
//! `Content-Length`); a refused head is refused whatever the split; the body decoder never
//! panics on what follows. For a response head: httparse reads it whole, its status is the one
//! given, it carries the response's `date` fields or one of its own, at most one framing field (`content-length` equal to the
//! body length, or `transfer-encoding: chunked` only when the length is unknown on HTTP/1.1), and
//! never one for 1xx/204 (nor for HEAD unless the response had its own or the body's length is known and not 0).
#![no_main]

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use weft_proxy::h1_server::codec::{encode_response, parse_request, BodyOut, Parsed, ReqFacts};
use weft_upstream::h1::{Decoder, Framing, Step};

fn check_request(input: &[u8], split: usize) {
    let mut whole = BytesMut::from(input);
    let got = parse_request(&mut whole);
    // Cut: the first part is either not complete yet, or the same answer.
    let cut = split.min(input.len());
    let mut part = BytesMut::from(&input[..cut]);
    match (parse_request(&mut part), &got) {
        (Ok(None), _) => {}
        (Ok(Some(_)), Ok(Some(_))) | (Err(_), Err(_)) => {}
        // A prefix can be refused where the whole input is not only if the whole head was not
        // complete in it (a prefix that ends inside a field value is still "partial").
        (a, b) => panic!("prefix of {cut} bytes: {a:?}, whole: {b:?}"),
    }
    let Ok(Some(Parsed::Request(head))) = got else { return };
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = r.parse(input) else {
        panic!("weft parsed a head httparse does not: {:?}", String::from_utf8_lossy(input));
    };
    assert_eq!(input.len() - len, whole.len(), "the head's length");
    assert_eq!(head.method.as_str(), r.method.unwrap());
    assert_eq!(head.version == Version::HTTP_10, r.version == Some(0));
    assert_eq!(head.headers.len(), r.headers.len());
    let values = |name: &str| -> Vec<&[u8]> {
        r.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
    };
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).unwrap();
        assert!(head.headers.get_all(&name).iter().any(|v| v.as_bytes() == h.value));
    }
    let te = values("transfer-encoding");
    let cl = values("content-length");
    match head.framing {
        Framing::Length(n) => {
            assert!(te.is_empty());
            for v in &cl {
                for part in v.split(|b| *b == b',') {
                    assert_eq!(std::str::from_utf8(part.trim_ascii()).unwrap().parse::<u64>().unwrap(), n);
                }
            }
        }
        Framing::Chunked => {
            let last = te.last().unwrap().rsplit(|b| *b == b',').find(|c| !c.trim_ascii().is_empty()).unwrap();
            assert!(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        Framing::Empty => {
            assert!(te.is_empty());
            for v in &cl {
                assert!(v.split(|b| *b == b',').all(|p| p.trim_ascii().iter().all(|b| *b == b'0')));
            }
        }
        Framing::Close => panic!("a request is never delimited by close"),
    }
    let mut decoder = Decoder::new(head.framing);
    for _ in 0..10_000 {
        match decoder.decode(&mut whole, true) {
            Ok(Step::Data(_)) | Ok(Step::Trailers(_)) => {}
            Ok(Step::End) | Ok(Step::More) | Err(_) => break,
        }
    }
}

fn check_response(flags: u8, len: u8, fields: &[u8]) {
    let status = StatusCode::from_u16(100 + u16::from(flags & 63) * 8).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    for line in fields.split(|b| *b == 0) {
        let Some(sep) = line.iter().position(|b| *b == 1) else { continue };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..sep]), HeaderValue::from_bytes(&line[sep + 1..])) {
            resp.headers_mut().append(n, v);
        }
    }
    if resp.headers().len() > 250 {
        return; // more than the reading parser below has slots for
    }
    let body_len = (len != 0xff).then_some(u64::from(len));
    let req = ReqFacts {
        head: flags & 64 != 0,
        version: if flags & 128 != 0 { Version::HTTP_10 } else { Version::HTTP_11 },
        keep_alive: true,
    };
    let mut out = Vec::new();
    let (framing, _) = encode_response(&mut out, &resp, body_len, req);
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(n)) = r.parse(&out) else {
        panic!("an unreadable response head: {:?}", String::from_utf8_lossy(&out));
    };
    assert_eq!(n, out.len());
    assert_eq!(r.code, Some(status.as_u16()));
    let count = |name: &str| r.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    assert_eq!(count("date"), resp.headers().get_all(http::header::DATE).iter().count().max(1));
    assert!(count("transfer-encoding") <= 1 && count("content-length") <= 1);
    assert!(count("transfer-encoding") + count("content-length") <= 1);
    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT;
    if no_body {
        assert_eq!(count("transfer-encoding") + count("content-length"), 0);
        assert_eq!(framing, BodyOut::Empty);
    }
    match framing {
        BodyOut::Length(l) => {
            assert_eq!(Some(l), body_len);
            let v = r.headers.iter().find(|h| h.name == "content-length").unwrap().value;
            assert_eq!(v, l.to_string().as_bytes());
        }
        BodyOut::Chunked => {
            assert!(body_len.is_none() && req.version == Version::HTTP_11);
            assert_eq!(count("transfer-encoding"), 1);
        }
        BodyOut::Close => assert!(body_len.is_none() && req.version == Version::HTTP_10),
        BodyOut::Empty => {
            assert!(req.head || no_body || status == StatusCode::NOT_MODIFIED);
            assert_eq!(count("transfer-encoding"), 0);
            if count("content-length") == 1 {
                // The response's own, or (HEAD) the length of the body a GET would have had.
                assert!(resp.headers().contains_key(http::header::CONTENT_LENGTH) || (req.head && body_len.is_some_and(|n| n > 0)));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [split, flags, len, rest @ ..] = data else { return };
    let (request, fields) = match rest.windows(2).position(|w| w == [0xfe, 0xfe]) {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    check_request(request, usize::from(*split));
    check_response(*flags, *len, fields);
});
