//! The input layout the HTTP/1 stream targets share (`h1_framing`, `h1_response`): byte 0's low 4
//! bits are `n`, the number of piece-size bytes that follow (its high bits are the target's own
//! flags); those bytes give the sizes of the pieces the stream is fed in, used in turn (`n == 0`:
//! one byte per piece); everything after them is the stream.

/// Maps a size byte to a piece length: 1..=128 byte by byte, then coarser steps up to ~8 KiB so
/// pieces can also straddle 4 KiB line limits.
pub fn piece_len(b: u8) -> usize {
    if b < 128 {
        b as usize + 1
    } else {
        (b as usize - 127) * 64
    }
}

/// Splits an input into (byte 0, piece sizes, stream); None if it is too short.
pub fn split(data: &[u8]) -> Option<(u8, Vec<usize>, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let n = (first & 0x0f) as usize;
    if rest.len() < n {
        return None;
    }
    let (sizes, stream) = rest.split_at(n);
    let sizes = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&b| piece_len(b)).collect()
    };
    Some((first, sizes, stream))
}
