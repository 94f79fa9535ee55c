//! Feeds arbitrary bytes to the HTTP/2 frame scanner (the header-block timeout's view of a
//! connection), split at fuzzer-chosen points.
//!
//! Input layout as for `h1_framing`: byte 0 (low 4 bits) = `n` split-size bytes follow (piece
//! sizes, used in turn; `n == 0` means one byte per piece), then the client byte stream. Half the
//! time the stream is prefixed with the HTTP/2 preface so that frame walking is reached.
//!
//! Checks: no panic, and the scanner ends in the same state whether the stream arrives whole or in
//! the chosen pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::h1_framing::H2Scan;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = (first & 0x0f) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, body) = rest.split_at(n);
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&b| b as usize + 1).collect()
    };
    let mut stream = Vec::new();
    if first & 0x10 != 0 {
        stream.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
    stream.extend_from_slice(body);

    let mut whole = H2Scan::default();
    whole.feed(&stream);

    let mut split = H2Scan::default();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let len = sizes[i % sizes.len()].min(stream.len() - pos);
        split.feed(&stream[pos..pos + len]);
        split.feed(&[]);
        pos += len;
        i += 1;
    }
    assert_eq!(whole, split, "state differs between one-piece and split feeding (sizes {sizes:?})");
});
