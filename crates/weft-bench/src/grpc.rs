//! Minimal gRPC message framing (length-prefixed messages) done by hand.
//!
//! Each message is a 5-byte header — one compression flag byte and a
//! big-endian u32 length — followed by the message bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the gRPC message header.
pub const HEADER_LEN: usize = 5;

/// Encode one uncompressed gRPC message frame.
pub fn encode_frame(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.put_u8(0);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// One decoded gRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Framing error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside a frame header or payload.
    Truncated,
    /// The compression flag byte was neither 0 nor 1.
    BadFlag(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "truncated gRPC frame"),
            FrameError::BadFlag(b) => write!(f, "bad gRPC compression flag {b}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Decode all complete frames in `buf`; trailing partial data is an error.
pub fn decode_frames(mut buf: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        let flag = buf[0];
        if flag > 1 {
            return Err(FrameError::BadFlag(flag));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let rest = &buf[HEADER_LEN..];
        if rest.len() < len {
            return Err(FrameError::Truncated);
        }
        out.push(Frame {
            compressed: flag == 1,
            payload: &rest[..len],
        });
        buf = &rest[len..];
    }
    Ok(out)
}
