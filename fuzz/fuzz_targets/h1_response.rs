//! Feeds arbitrary bytes, as an upstream's response, to weft's own HTTP/1.1 client codec
//! (`weft_upstream::h1`): the head parser (1xx responses skipped), then the body decoder, with the
//! bytes arriving in fuzzer-chosen pieces and the connection closing after the last one.
//!
//! Input layout: byte 0: bit 7 = the request was HEAD; low 4 bits = `n`, the number of split-size
//! bytes that follow (`n == 0`: one byte per piece). Everything after them is the response stream.
//!
//! Checks: no panic; no fixed hop-by-hop field is left in the parsed head (a `Connection` naming
//! other fields aside); the decoder never asks for more bytes after the close and never yields an
//! empty data frame; a body framed by Content-Length is exactly that long; and the outcome
//! (status, framing, body, trailers, success) is the same whether the bytes arrive in one piece
//! or in the chosen pieces.
#![no_main]

#[path = "pieces.rs"]
mod pieces;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_upstream::h1::{is_hop_by_hop, parse_head, Decoder, Framing, Step};

#[derive(Debug, PartialEq, Default)]
struct Outcome {
    status: Option<u16>,
    framing: Option<Framing>,
    keep_alive: bool,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    /// After a message that ended: the bytes after it (read or not yet fed).
    rest: Vec<u8>,
    ok: bool,
}

fn run(stream: &[u8], sizes: &[usize], head_request: bool) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut i = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        if pos >= stream.len() {
            return false;
        }
        let len = sizes[i % sizes.len()].min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + len]);
        pos += len;
        i += 1;
        true
    };
    let head = loop {
        match parse_head(&mut buf, head_request) {
            Ok(Some(h)) if h.status.is_informational() && h.status.as_u16() != 101 => continue,
            Ok(Some(h)) => break h,
            Ok(None) => {
                if !feed(&mut buf) {
                    return out;
                }
            }
            Err(_) => return out,
        }
    };
    for k in head.headers.keys() {
        assert!(
            !is_hop_by_hop(k) || (k == http::header::CONNECTION && head.connection_options),
            "hop-by-hop field {k} left in the head"
        );
    }
    out.status = Some(head.status.as_u16());
    out.framing = Some(head.framing);
    out.keep_alive = head.keep_alive;
    let mut d = Decoder::new(head.framing);
    let mut eof = false;
    loop {
        match d.decode(&mut buf, eof) {
            Ok(Step::Data(b)) => {
                assert!(!b.is_empty(), "empty data frame");
                out.body.extend_from_slice(&b);
            }
            Ok(Step::Trailers(t)) => {
                for (k, v) in &t {
                    out.trailers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
                }
            }
            Ok(Step::End) => break,
            Ok(Step::More) => {
                assert!(!eof, "the decoder asked for more after the close");
                if !feed(&mut buf) {
                    eof = true;
                }
            }
            Err(_) => return out,
        }
    }
    if let Framing::Length(n) = head.framing {
        assert_eq!(out.body.len() as u64, n, "a Content-Length body of the wrong length");
    }
    assert!(!(head.keep_alive && head.framing == Framing::Close), "keep-alive with a close-delimited body");
    // Nothing of what follows the message may be eaten: it belongs to the next response.
    out.rest = buf.to_vec();
    out.rest.extend_from_slice(&stream[pos.min(stream.len())..]);
    out.ok = true;
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((first, sizes, stream)) = pieces::split(data) else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let whole = run(stream, &[usize::MAX], head_request);
    let split = run(stream, &sizes, head_request);
    assert_eq!(whole, split, "outcomes differ between one-piece and split feeding (piece sizes {sizes:?})");
});
