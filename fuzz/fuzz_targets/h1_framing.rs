//! Feeds arbitrary bytes to the HTTP/1 framing tracker, split at fuzzer-chosen points.
//!
//! Input layout: byte 0 (low 4 bits) = `n`, the number of split-size bytes that follow; those `n`
//! bytes give the piece sizes, used cyclically (`n == 0` means one byte per piece). Everything after
//! them is the client byte stream.
//!
//! Checks: no panic, and the verdict sequence is the same whether the stream arrives in one piece
//! or in the chosen pieces (with verdicts drained between reads, as the service does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::h1_framing::FramingTracker;

/// Maps a size byte to a piece length: 1..=128 byte by byte, then coarser steps up to ~8 KiB so
/// pieces can also straddle the tracker's 4 KiB chunk-line limit.
fn piece_len(b: u8) -> usize {
    if b < 128 {
        b as usize + 1
    } else {
        (b as usize - 127) * 64
    }
}

fn drain(t: &mut FramingTracker, out: &mut Vec<bool>) {
    while let Some(v) = t.next_verdict() {
        out.push(v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = (first & 0x0f) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&b| piece_len(b)).collect()
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
