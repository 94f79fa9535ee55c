//! The protocol framework: what the RPC proxy needs from a protocol. A protocol plugs in by
//! implementing [`Codec`]; routing, load balancing, multiplexing, timeouts, metrics and access logs
//! are then the proxy's.

use crate::hessian::{HessianError, StrSpan, Value};
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::fmt;

/// What a frame is, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request that expects a response.
    Request,
    /// A request with no response.
    OneWay,
    Response,
    /// A heartbeat that expects an answer.
    Heartbeat,
    /// The answer to a heartbeat (or another event response).
    HeartbeatResponse,
    /// The peer is going away: send no new requests on this connection.
    GoAway,
    /// Any other event (passed over, not forwarded).
    Event,
}

/// One whole frame, header included, in its own buffer split off the connection's read buffer
/// (no copy).
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    /// The protocol's response status (0 for requests).
    pub status: u16,
    pub data: BytesMut,
}

/// A reply the proxy makes itself, mapped onto each protocol's own status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReply {
    /// No route matched, or the route's cluster does not exist.
    NoRoute,
    /// No healthy host in the cluster.
    NoHealthyUpstream,
    /// The upstream did not answer in time.
    Timeout,
    /// A circuit breaker is open.
    Overload,
    RateLimited,
    Unauthorized,
    /// The upstream connection failed or closed with the request in flight.
    UpstreamFailure,
    /// The request could not be decoded.
    BadRequest,
    /// Fault injection (the route's `fault.abort`).
    Fault,
}

impl LocalReply {
    /// The reason code counted and logged (the same codes as HTTP local replies).
    pub fn reason(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "NR",
            LocalReply::NoHealthyUpstream => "UH",
            LocalReply::Timeout => "UT",
            LocalReply::Overload => "UO",
            LocalReply::RateLimited => "RL",
            LocalReply::Unauthorized => "UAEX",
            LocalReply::UpstreamFailure => "UF",
            LocalReply::BadRequest => "DPE",
            LocalReply::Fault => "FI",
        }
    }
}

/// Why a byte stream is not a valid frame. Each is counted by [`DecodeError::reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame's declared size exceeds the configured limit. `id` lets the reply name it.
    TooLarge { id: u64, len: u64, two_way: bool },
    /// Not this protocol's magic number.
    BadMagic,
    /// A serialization or protocol version the proxy cannot route.
    UnsupportedVersion { id: u64, two_way: bool },
    /// The body does not decode.
    Malformed {
        id: u64,
        two_way: bool,
        error: HessianError,
    },
    /// The frame carries a checksum (Bolt v2's CRC32) that does not match its bytes.
    Checksum { id: u64, two_way: bool },
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "frame_too_large",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::Checksum { .. } => "crc_mismatch",
        }
    }

    /// The request id to answer, when the header got that far and the request wants an answer.
    pub fn reply_to(&self) -> Option<u64> {
        match *self {
            DecodeError::TooLarge { id, two_way: true, .. }
            | DecodeError::UnsupportedVersion { id, two_way: true }
            | DecodeError::Malformed { id, two_way: true, .. }
            | DecodeError::Checksum { id, two_way: true } => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, .. } => write!(f, "frame of {len} bytes exceeds the limit"),
            DecodeError::BadMagic => f.write_str("bad magic number"),
            DecodeError::UnsupportedVersion { .. } => f.write_str("unsupported protocol version or serialization"),
            DecodeError::Malformed { error, .. } => write!(f, "malformed frame: {error}"),
            DecodeError::Checksum { .. } => f.write_str("frame checksum (CRC32) mismatch"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Where a request's routing attributes are in its frame (offsets, nothing copied). Attachments
/// and arguments are decoded only when a rule asks for them.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub protocol_version: StrSpan,
    pub service: StrSpan,
    pub version: StrSpan,
    pub method: StrSpan,
    pub param_types: StrSpan,
    /// Number of arguments (from the parameter descriptor).
    pub arg_count: u32,
    /// Offset of the first argument (relative to the frame start).
    pub args_start: u32,
    /// Offset of the attachments map, if the body has one.
    pub attachments_start: Option<u32>,
}

/// A protocol. Implementations are stateless (one per listener, shared by all connections).
pub trait Codec: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Splits one whole frame off the front of `buf`, or `Ok(None)` when more bytes are needed.
    fn decode(&self, buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError>;

    /// Locates a request's routing attributes.
    fn request_info(&self, frame: &Frame) -> Result<RequestInfo, DecodeError>;

    /// An attachment (header) value, decoded on demand.
    fn attachment<'a>(&self, frame: &'a Frame, info: &RequestInfo, key: &str) -> Option<Value<'a>>;

    /// Argument `index`, decoded on demand (the arguments before it are skipped).
    fn argument<'a>(&self, frame: &'a Frame, info: &RequestInfo, index: u32) -> Option<Value<'a>>;

    /// Rewrites the frame's request id in place (multiplexing).
    fn set_request_id(&self, frame: &mut Frame, id: u64);

    /// A protocol-correct error response to request `id`.
    fn local_reply(&self, id: u64, reply: LocalReply, message: &str) -> Bytes;

    /// The answer to a heartbeat request.
    fn heartbeat_reply(&self, req: &Frame) -> Bytes;

    /// A heartbeat request the proxy sends itself (to keep idle upstream connections checked).
    fn heartbeat(&self, id: u64) -> Bytes;

    /// The message telling a peer to send no new requests on this connection, if the protocol has one.
    fn goaway(&self) -> Option<Bytes>;

    /// The timeout the caller wrote in the request, if the protocol has one (Bolt): weft's
    /// deadline for the request is the smaller of it and the route's.
    fn request_timeout(&self, _frame: &Frame) -> Option<std::time::Duration> {
        None
    }

    /// The status a local reply is counted and logged with (the protocol's own code).
    fn local_status(&self, r: LocalReply) -> u16 {
        match r {
            LocalReply::Timeout => 31,
            _ => 80,
        }
    }

    /// Whether a response status means success (for outlier detection and metrics).
    fn status_ok(&self, status: u16) -> bool;

    /// Maps a response status onto an HTTP-like class for the existing per-cluster counters.
    fn status_class(&self, status: u16) -> u16;

    /// Sets attachments of a request (trace context): an entry with one of these keys and a
    /// string value is replaced, the others are kept as they are; the frame is rebuilt once
    /// (lengths and any checksum fixed). `false` when the frame's shape does not allow it (it is
    /// then unchanged).
    fn set_attachments(&self, frame: &mut Frame, info: &RequestInfo, kvs: &[(&str, &str)]) -> bool;
}

/// Reads a span of a frame as text.
pub fn span<'a>(frame: &'a Frame, s: &StrSpan) -> Option<Cow<'a, str>> {
    s.get(&frame.data)
}
