//! Feeds arbitrary bytes to the HTTP/1 framing tracker, split at fuzzer-chosen points.
//!
//! Input layout: byte 0 (low 4 bits) = `n`, the number of split-size bytes that follow; those `n`
//! bytes give the piece sizes, used cyclically (`n == 0` means one byte per piece). Everything after
//! them is the client byte stream.
//!
//! Checks: no panic, and the verdict sequence is the same whether the stream arrives in one piece
//! or in the chosen pieces (with verdicts drained between reads, as the service does).
#![no_main]

#[path = "pieces.rs"]
mod pieces;

use libfuzzer_sys::fuzz_target;
use weft_proxy::h1_framing::FramingTracker;

fn drain(t: &mut FramingTracker, out: &mut Vec<bool>) {
    while let Some(v) = t.next_verdict() {
        out.push(v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((_, sizes, stream)) = pieces::split(data) else {
        return;
    };

    // One piece.
    let mut whole = FramingTracker::default();
    whole.feed(stream);
    let mut whole_verdicts = Vec::new();
    drain(&mut whole, &mut whole_verdicts);

    // Many pieces, draining after every read (plus an empty read now and then).
    let mut split = FramingTracker::default();
    let mut split_verdicts = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let len = sizes[i % sizes.len()].min(stream.len() - pos);
        split.feed(&stream[pos..pos + len]);
        if i % 7 == 3 {
            split.feed(&[]);
        }
        drain(&mut split, &mut split_verdicts);
        pos += len;
        i += 1;
    }
    drain(&mut split, &mut split_verdicts);

    assert_eq!(
        whole_verdicts, split_verdicts,
        "verdicts differ between one-piece and split feeding (piece sizes {sizes:?})"
    );
});
