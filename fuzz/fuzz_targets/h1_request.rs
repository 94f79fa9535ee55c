//! Encodes arbitrary requests with weft's own HTTP/1.1 client (`weft_upstream::h1::encode_request`)
//! and reads the bytes back with an independent parser (httparse), as the upstream would.
//!
//! Input layout: byte 0: bits 0–1 the method (GET, POST, PUT, HEAD), bit 2 a streamed body
//! (else buffered), bit 3 a `Content-Length` header among the headers (the client's, or a
//! mutation's); then the target (bytes mapped onto URI characters) up to a 0 byte; then header
//! lines `name 0x01 value 0x00` (invalid names or values skipped, as `HeaderMap` cannot hold
//! them); the rest, after a 0x02 byte, is the buffered body.
//!
//! Checks: the head parses; method, target and every header come back as given (in order; the
//! client's `Transfer-Encoding` never, a buffered body's `Content-Length` replaced by its own);
//! framing per RFC 9112 §6: a buffered body is announced by exactly one `Content-Length` equal to
//! its length and is exactly the bytes after the head; a streamed body has either the given
//! `Content-Length` or exactly one `Transfer-Encoding: chunked`, never both, and nothing follows
//! the head.
#![no_main]

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use weft_upstream::h1::{encode_request, BodyKind};

const URI_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/?=&%._~-+!$'()*,;:@";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let method = [Method::GET, Method::POST, Method::PUT, Method::HEAD][usize::from(flags & 3)].clone();
    let streamed = flags & 4 != 0;
    let (target_bytes, rest) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut target = String::from("/");
    target.extend(target_bytes.iter().map(|b| URI_CHARS[usize::from(*b) % URI_CHARS.len()] as char));
    let Ok(uri) = target.parse::<Uri>() else { return };
    let (header_bytes, body) = match rest.iter().position(|b| *b == 2) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in header_bytes.split(|b| *b == 0) {
        let Some(sep) = line.iter().position(|b| *b == 1) else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..sep]), HeaderValue::from_bytes(&line[sep + 1..]))
        else {
            continue;
        };
        if name == CONTENT_LENGTH {
            continue; // only through flag bit 3, with a valid number
        }
        headers.append(name, value);
    }
    if headers.len() > 200 {
        return;
    }
    let given_length = (flags & 8 != 0).then(|| (body.len() as u64).wrapping_add(u64::from(flags >> 4)));
    if let Some(n) = given_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    let body = Bytes::copy_from_slice(body);
    let kind = if streamed {
        BodyKind::Streamed
    } else {
        BodyKind::Buffered((!body.is_empty()).then_some(&body))
    };
    let mut out = Vec::new();
    let chunked = encode_request(&mut out, &method, &uri, &headers, kind);

    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(&out) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("the encoded head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(req.method, Some(method.as_str()));
    assert_eq!(req.path, Some(uri.path_and_query().map_or("/", |pq| pq.as_str())));
    assert_eq!(req.version, Some(1));
    let parsed: Vec<(String, &[u8])> = req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value)).collect();
    let lengths: Vec<&[u8]> = parsed.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| *v).collect();
    let codings: Vec<&[u8]> = parsed.iter().filter(|(n, _)| n == "transfer-encoding").map(|(_, v)| *v).collect();
    // Every other header as given, in order.
    let expected: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(n, _)| **n != TRANSFER_ENCODING && **n != CONTENT_LENGTH)
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().trim_ascii().to_vec()))
        .collect();
    let others: Vec<(String, Vec<u8>)> = parsed
        .iter()
        .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
        .map(|(n, v)| (n.clone(), v.trim_ascii().to_vec()))
        .collect();
    assert_eq!(others, expected);
    let after = &out[len..];
    if streamed {
        assert!(after.is_empty());
        match given_length {
            Some(n) => {
                assert!(!chunked && codings.is_empty());
                assert_eq!(lengths, vec![n.to_string().as_bytes()]);
            }
            None => {
                assert!(chunked && lengths.is_empty());
                assert_eq!(codings, vec![&b"chunked"[..]]);
            }
        }
    } else {
        assert!(!chunked && codings.is_empty());
        assert_eq!(after, &body[..], "the bytes after the head are the body");
        let announced = given_length.is_some() || !body.is_empty() || matches!(method, Method::POST | Method::PUT);
        if announced {
            assert_eq!(lengths, vec![body.len().to_string().as_bytes()]);
        } else {
            assert!(lengths.is_empty());
        }
    }
});
