//! SOFARPC Bolt, protocol versions 1 (protocol code 1) and 2 (code 2), big-endian throughout.
//!
//! ```text
//! v1 request   proto type cmd(2) ver2 id(4) codec timeout(4)     classLen(2) headerLen(2) contentLen(4)   22 bytes
//! v1 response  proto type cmd(2) ver2 id(4) codec status(2)      classLen(2) headerLen(2) contentLen(4)   20 bytes
//! v2 request   proto ver1 type cmd(2) ver2 id(4) codec switch timeout(4) classLen headerLen contentLen    24 bytes
//! v2 response  proto ver1 type cmd(2) ver2 id(4) codec switch status(2)  classLen headerLen contentLen    22 bytes
//! ```
//!
//! then the class name, the header map and the content. `type` is 0 response, 1 request, 2 one-way;
//! `cmd` is 0 heartbeat, 1 request, 2 response. In v2, bit 0 of `switch` means a CRC32 of all the
//! frame's bytes before it follows the content; it is checked on every frame that has one and
//! recomputed when the proxy rewrites the request id.
//!
//! The header map is a sequence of `keyLen(4) key valLen(4) value` (a length of -1 is null). The
//! routing attributes: the service from `sofa_head_target_service` (else `service`, else the
//! content's `targetServiceUniqueName`), written `interface:version[:uniqueId]`; the method from
//! `sofa_head_method_name`, else the hessian2 content's `SofaRequest.methodName`. Headers, and the
//! content's `requestProps` map, are attachments. The content is otherwise skipped, never copied.

use crate::codec::{Codec, DecodeError, Frame, FrameKind, LocalReply, RequestInfo};
use crate::hessian::{self, HessianError, Reader, StrSpan, Value};
use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;

/// Protocol codes (the first byte of every frame).
pub const PROTOCOL_V1: u8 = 1;
pub const PROTOCOL_V2: u8 = 2;

/// Command types.
pub const TYPE_RESPONSE: u8 = 0;
pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_ONEWAY: u8 = 2;

/// Command codes.
pub const CMD_HEARTBEAT: u16 = 0;
pub const CMD_REQUEST: u16 = 1;
pub const CMD_RESPONSE: u16 = 2;

/// The serialization (codec) byte of hessian2 content.
pub const CODEC_HESSIAN2: u8 = 1;
/// Bit 0 of a v2 frame's switch byte: a CRC32 follows the frame.
pub const SWITCH_CRC: u8 = 0x01;

pub const REQUEST_CLASS: &str = "com.alipay.sofa.rpc.core.request.SofaRequest";
pub const RESPONSE_CLASS: &str = "com.alipay.sofa.rpc.core.response.SofaResponse";
pub const ERROR_CLASS: &str = "com.alipay.remoting.rpc.exception.RpcServerException";

/// Bolt's `ResponseStatus` values.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const ERROR: u16 = 0x0001;
    pub const SERVER_EXCEPTION: u16 = 0x0002;
    pub const UNKNOWN: u16 = 0x0003;
    pub const SERVER_THREADPOOL_BUSY: u16 = 0x0004;
    pub const ERROR_COMM: u16 = 0x0005;
    pub const NO_PROCESSOR: u16 = 0x0006;
    pub const TIMEOUT: u16 = 0x0007;
    pub const CLIENT_SEND_ERROR: u16 = 0x0008;
    pub const CODEC_EXCEPTION: u16 = 0x0009;
    pub const CONNECTION_CLOSED: u16 = 0x0010;
    pub const SERVER_SERIAL_EXCEPTION: u16 = 0x0011;
    pub const SERVER_DESERIAL_EXCEPTION: u16 = 0x0012;
}

/// The status a local reply carries.
pub fn reply_status(r: LocalReply) -> u16 {
    match r {
        LocalReply::NoRoute => status::NO_PROCESSOR,
        LocalReply::NoHealthyUpstream => status::ERROR_COMM,
        LocalReply::Timeout => status::TIMEOUT,
        LocalReply::Overload | LocalReply::RateLimited => status::SERVER_THREADPOOL_BUSY,
        LocalReply::Unauthorized | LocalReply::Fault => status::SERVER_EXCEPTION,
        LocalReply::UpstreamFailure => status::CONNECTION_CLOSED,
        LocalReply::BadRequest => status::CODEC_EXCEPTION,
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Bolt;

/// Where a frame's fields are: everything a frame's first bytes decide.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// 1 for v2 (one more byte, `ver1`, before the type), else 0.
    d: usize,
    response: bool,
    header_len: usize,
    crc: bool,
}

impl Layout {
    /// From a frame's first bytes; `Ok(None)` when more are needed.
    fn read(b: &[u8]) -> Result<Option<Layout>, DecodeError> {
        let Some(&proto) = b.first() else {
            return Ok(None);
        };
        let d = match proto {
            PROTOCOL_V1 => 0,
            PROTOCOL_V2 => 1,
            _ => return Err(DecodeError::BadMagic),
        };
        let Some(&ty) = b.get(1 + d) else {
            return Ok(None);
        };
        if ty > TYPE_ONEWAY {
            return Err(DecodeError::UnsupportedVersion { id: 0, two_way: false });
        }
        let response = ty == TYPE_RESPONSE;
        let header_len = if response { 20 } else { 22 } + 2 * d;
        let crc = d == 1 && b.get(11).is_some_and(|s| s & SWITCH_CRC != 0);
        Ok(Some(Layout {
            d,
            response,
            header_len,
            crc,
        }))
    }

    fn ty(&self, b: &[u8]) -> u8 {
        b[1 + self.d]
    }
    fn cmd(&self, b: &[u8]) -> u16 {
        be16(b, 2 + self.d)
    }
    fn id_at(&self) -> usize {
        5 + self.d
    }
    fn codec(&self, b: &[u8]) -> u8 {
        b[9 + self.d]
    }
    /// The status (responses) or timeout (requests).
    fn status_at(&self) -> usize {
        10 + 2 * self.d
    }
    fn lens_at(&self) -> usize {
        self.status_at() + if self.response { 2 } else { 4 }
    }
    /// Class, header and content lengths.
    fn lens(&self, b: &[u8]) -> (usize, usize, usize) {
        let at = self.lens_at();
        (be16(b, at) as usize, be16(b, at + 2) as usize, be32(b, at + 4) as usize)
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A decoded frame's sections (offsets into the frame).
#[derive(Clone, Copy, Debug)]
struct Sections {
    layout: Layout,
    header: usize,
    content: usize,
    end: usize,
}

fn sections(data: &[u8]) -> Option<Sections> {
    let layout = Layout::read(data).ok()??;
    if data.len() < layout.header_len {
        return None;
    }
    let (cl, hl, ctl) = layout.lens(data);
    let header = layout.header_len + cl;
    let content = header + hl;
    let end = content + ctl;
    (end + if layout.crc { 4 } else { 0 } <= data.len()).then_some(Sections {
        layout,
        header,
        content,
        end,
    })
}

/// Walks a header map: `f(key range, value range)` (a null value is an empty range) until it
/// returns `true`. Errors on a length that does not fit.
fn walk_headers(
    data: &[u8],
    start: usize,
    end: usize,
    mut f: impl FnMut((usize, usize), (usize, usize)) -> bool,
) -> Result<(), HessianError> {
    let mut at = start;
    let field = |at: &mut usize| -> Result<(usize, usize), HessianError> {
        if *at + 4 > end {
            return Err(HessianError::Truncated);
        }
        let n = be32(data, *at) as i32;
        *at += 4;
        if n == -1 {
            return Ok((*at, *at));
        }
        let n = usize::try_from(n).map_err(|_| HessianError::BadLength)?;
        if n > end - *at {
            return Err(HessianError::BadLength);
        }
        let r = (*at, *at + n);
        *at += n;
        Ok(r)
    };
    while at < end {
        let k = field(&mut at)?;
        let v = field(&mut at)?;
        if f(k, v) {
            break;
        }
    }
    Ok(())
}

fn crc_of(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Recomputes the trailing CRC32 of a v2 frame that has one.
fn fix_crc(data: &mut [u8], layout: &Layout) {
    if layout.crc && data.len() >= 4 {
        let n = data.len() - 4;
        let c = crc_of(&data[..n]);
        data[n..].copy_from_slice(&c.to_be_bytes());
    }
}

/// Builds a whole frame. `v2` is `Some((ver1, switch))` for protocol v2; `word` is the timeout of a
/// request or the status of a response.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    v2: Option<(u8, u8)>,
    ty: u8,
    cmd: u16,
    id: u32,
    codec: u8,
    word: u32,
    class: &[u8],
    header: &[u8],
    content: &[u8],
) -> Bytes {
    let crc = v2.is_some_and(|(_, s)| s & SWITCH_CRC != 0);
    let mut b = BytesMut::with_capacity(24 + class.len() + header.len() + content.len() + 4);
    b.put_u8(if v2.is_some() { PROTOCOL_V2 } else { PROTOCOL_V1 });
    if let Some((ver1, _)) = v2 {
        b.put_u8(ver1);
    }
    b.put_u8(ty);
    b.put_u16(cmd);
    b.put_u8(1);
    b.put_u32(id);
    b.put_u8(codec);
    if let Some((_, switch)) = v2 {
        b.put_u8(switch);
    }
    if ty == TYPE_RESPONSE {
        b.put_u16(word as u16);
    } else {
        b.put_u32(word);
    }
    b.put_u16(class.len() as u16);
    b.put_u16(header.len() as u16);
    b.put_u32(content.len() as u32);
    b.put_slice(class);
    b.put_slice(header);
    b.put_slice(content);
    if crc {
        let c = crc_of(&b);
        b.put_u32(c);
    }
    b.freeze()
}

/// Encodes a header map.
pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The content of an error response: an `RpcServerException` with its message (and a null stack
/// trace, which makes hessian readers turn it into an exception), in the Hessian 2.0 draft
/// encoding SOFARPC's hessian 3.x serializers read and write (`O` definition, `o` instance).
fn error_content(message: &str) -> Vec<u8> {
    let mut c = Vec::with_capacity(message.len() + 96);
    c.push(b'O');
    hessian::write_int(&mut c, ERROR_CLASS.len() as i32);
    c.extend_from_slice(ERROR_CLASS.as_bytes());
    hessian::write_int(&mut c, 2);
    hessian::write_string(&mut c, "detailMessage");
    hessian::write_string(&mut c, "stackTrace");
    c.push(b'o');
    hessian::write_int(&mut c, 0);
    // The draft has no 0x30 medium strings: one `S` chunk (messages are short; cut at 4096 chars).
    let message = match message.char_indices().nth(4096) {
        Some((i, _)) => &message[..i],
        None => message,
    };
    c.push(b'S');
    c.extend_from_slice(&(message.encode_utf16().count() as u16).to_be_bytes());
    c.extend_from_slice(message.as_bytes());
    c.push(b'N');
    c
}

/// Splits `interface:version[:uniqueId]` into the interface and version spans.
fn split_service(data: &[u8], (a, b): (usize, usize)) -> (StrSpan, StrSpan) {
    let v = &data[a..b];
    match v.iter().position(|&c| c == b':') {
        None => (StrSpan::Range(a as u32, b as u32), StrSpan::Null),
        Some(i) => {
            let rest = &v[i + 1..];
            let j = rest.iter().position(|&c| c == b':').unwrap_or(rest.len());
            (
                StrSpan::Range(a as u32, (a + i) as u32),
                StrSpan::Range((a + i + 1) as u32, (a + i + 1 + j) as u32),
            )
        }
    }
}

impl Bolt {
    fn header_value<'a>(&self, frame: &'a Frame, s: &Sections, key: &str) -> Option<Value<'a>> {
        let d = &frame.data[..];
        let mut found = None;
        walk_headers(d, s.header, s.content, |(ka, kb), (va, vb)| {
            if &d[ka..kb] == key.as_bytes() {
                found = std::str::from_utf8(&d[va..vb]).ok();
                true
            } else {
                false
            }
        })
        .ok()?;
        found.map(|v| Value::Str(Cow::Borrowed(v)))
    }

    /// A field of the hessian2 content's first object (the `SofaRequest`).
    fn content_reader<'a>(frame: &'a Frame, s: &Sections) -> Option<Reader<'a>> {
        (s.layout.codec(&frame.data) == CODEC_HESSIAN2 && s.end > s.content)
            .then(|| Reader::at(&frame.data[..s.end], s.content))
    }

    fn content_string(frame: &Frame, s: &Sections, field: &str) -> StrSpan {
        let Some(mut r) = Self::content_reader(frame, s) else {
            return StrSpan::Null;
        };
        match r.object_field(field) {
            Ok(true) => r.read_string_span().unwrap_or_default(),
            _ => StrSpan::Null,
        }
    }
}

impl Codec for Bolt {
    fn name(&self) -> &'static str {
        "bolt"
    }

    fn decode(&self, buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError> {
        let Some(layout) = Layout::read(buf)? else {
            return Ok(None);
        };
        if buf.len() < layout.header_len {
            return Ok(None);
        }
        let ty = layout.ty(buf);
        let cmd = layout.cmd(buf);
        let id = u64::from(be32(buf, layout.id_at()));
        let two_way = ty == TYPE_REQUEST;
        let (cl, hl, ctl) = layout.lens(buf);
        let total = (layout.header_len + cl + hl) as u64 + ctl as u64 + if layout.crc { 4 } else { 0 };
        if total > u64::from(max_frame) {
            return Err(DecodeError::TooLarge {
                id,
                len: total,
                two_way,
            });
        }
        let kind = match (cmd, ty) {
            (CMD_HEARTBEAT, TYPE_REQUEST) => FrameKind::Heartbeat,
            (CMD_HEARTBEAT, TYPE_RESPONSE) => FrameKind::HeartbeatResponse,
            (CMD_HEARTBEAT, _) => FrameKind::Event,
            (CMD_REQUEST | CMD_RESPONSE, TYPE_RESPONSE) => FrameKind::Response,
            (CMD_REQUEST | CMD_RESPONSE, TYPE_REQUEST) => FrameKind::Request,
            (CMD_REQUEST | CMD_RESPONSE, _) => FrameKind::OneWay,
            _ => return Err(DecodeError::UnsupportedVersion { id, two_way }),
        };
        let total = total as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let data = buf.split_to(total);
        if layout.crc {
            let n = total - 4;
            if crc_of(&data[..n]) != be32(&data, n) {
                return Err(DecodeError::Checksum { id, two_way });
            }
        }
        let status = if layout.response {
            be16(&data, layout.status_at())
        } else {
            0
        };
        Ok(Some(Frame { kind, id, status, data }))
    }

    fn request_info(&self, frame: &Frame) -> Result<RequestInfo, DecodeError> {
        let two_way = frame.kind == FrameKind::Request;
        let bad = |error| DecodeError::Malformed {
            id: frame.id,
            two_way,
            error,
        };
        let s = sections(&frame.data).ok_or(bad(HessianError::Truncated))?;
        let d = &frame.data[..];
        let (mut target, mut service, mut method) = (None, None, None);
        walk_headers(d, s.header, s.content, |k, v| {
            match &d[k.0..k.1] {
                b"sofa_head_target_service" => target = Some(v),
                b"service" => service = Some(v),
                b"sofa_head_method_name" => method = Some(v),
                _ => {}
            }
            false
        })
        .map_err(bad)?;
        let (service, version) = match target.or(service) {
            Some(r) => split_service(d, r),
            None => match Bolt::content_string(frame, &s, "targetServiceUniqueName") {
                StrSpan::Range(a, b) => split_service(d, (a as usize, b as usize)),
                other => (other, StrSpan::Null),
            },
        };
        let method = match method {
            Some((a, b)) => StrSpan::Range(a as u32, b as u32),
            None => Bolt::content_string(frame, &s, "methodName"),
        };
        Ok(RequestInfo {
            protocol_version: StrSpan::Null,
            service,
            version,
            method,
            param_types: StrSpan::Null,
            arg_count: 0,
            args_start: s.content as u32,
            attachments_start: Some(s.header as u32),
        })
    }

    fn attachment<'a>(&self, frame: &'a Frame, _info: &RequestInfo, key: &str) -> Option<Value<'a>> {
        let s = sections(&frame.data)?;
        if let Some(v) = self.header_value(frame, &s, key) {
            return Some(v);
        }
        // SOFARPC's request properties (hessian2 content).
        let mut r = Bolt::content_reader(frame, &s)?;
        if !r.object_field("requestProps").ok()? || r.peek().ok()? == b'N' {
            return None;
        }
        r.map_value(key)
    }

    fn argument<'a>(&self, frame: &'a Frame, _info: &RequestInfo, index: u32) -> Option<Value<'a>> {
        let s = sections(&frame.data)?;
        let mut r = Bolt::content_reader(frame, &s)?;
        // The SofaRequest object, then the arguments.
        r.skip().ok()?;
        for _ in 0..index {
            r.skip().ok()?;
        }
        r.read_value().ok()
    }

    fn set_request_id(&self, frame: &mut Frame, id: u64) {
        let Ok(Some(layout)) = Layout::read(&frame.data) else {
            return;
        };
        let at = layout.id_at();
        if frame.data.len() < at + 4 {
            return;
        }
        let id = id as u32;
        frame.data[at..at + 4].copy_from_slice(&id.to_be_bytes());
        frame.id = u64::from(id);
        fix_crc(&mut frame.data, &layout);
    }

    fn local_reply(&self, id: u64, reply: LocalReply, message: &str) -> Bytes {
        encode(
            None,
            TYPE_RESPONSE,
            CMD_RESPONSE,
            id as u32,
            CODEC_HESSIAN2,
            u32::from(reply_status(reply)),
            ERROR_CLASS.as_bytes(),
            &[],
            &error_content(message),
        )
    }

    fn heartbeat_reply(&self, req: &Frame) -> Bytes {
        let (v2, codec) = match Layout::read(&req.data) {
            Ok(Some(l)) if req.data.len() >= l.header_len => {
                let v2 = (l.d == 1).then(|| (req.data[1], req.data[11]));
                (v2, l.codec(&req.data))
            }
            _ => (None, CODEC_HESSIAN2),
        };
        encode(
            v2,
            TYPE_RESPONSE,
            CMD_HEARTBEAT,
            req.id as u32,
            codec,
            u32::from(status::SUCCESS),
            &[],
            &[],
            &[],
        )
    }

    fn heartbeat(&self, id: u64) -> Bytes {
        encode(
            None,
            TYPE_REQUEST,
            CMD_HEARTBEAT,
            id as u32,
            CODEC_HESSIAN2,
            1000,
            &[],
            &[],
            &[],
        )
    }

    /// Bolt has no go-away message: a draining listener closes each connection once its in-flight
    /// requests are answered.
    fn goaway(&self) -> Option<Bytes> {
        None
    }

    fn status_ok(&self, s: u16) -> bool {
        s == status::SUCCESS
    }

    fn status_class(&self, s: u16) -> u16 {
        match s {
            status::SUCCESS => 200,
            status::NO_PROCESSOR => 404,
            status::CODEC_EXCEPTION | status::SERVER_DESERIAL_EXCEPTION => 400,
            status::SERVER_THREADPOOL_BUSY | status::ERROR_COMM | status::CONNECTION_CLOSED => 503,
            status::TIMEOUT => 504,
            _ => 500,
        }
    }

    /// The request's timeout field (milliseconds; 0 or less is none).
    fn request_timeout(&self, frame: &Frame) -> Option<std::time::Duration> {
        let l = Layout::read(&frame.data).ok()??;
        if l.response || frame.data.len() < l.header_len {
            return None;
        }
        let ms = be32(&frame.data, l.status_at()) as i32;
        (ms > 0).then(|| std::time::Duration::from_millis(ms as u64))
    }

    fn local_status(&self, r: LocalReply) -> u16 {
        reply_status(r)
    }

    /// Writes into the header map (which weft reads before the SofaRequest's requestProps): the
    /// content is not touched.
    fn set_attachments(&self, frame: &mut Frame, _info: &RequestInfo, kvs: &[(&str, &str)]) -> bool {
        let Some(s) = sections(&frame.data) else {
            return false;
        };
        let d = &frame.data[..];
        let mut header = Vec::with_capacity(s.content - s.header + 128);
        let kept = walk_headers(d, s.header, s.content, |(ka, kb), (va, vb)| {
            if !kvs.iter().any(|(k, _)| k.as_bytes() == &d[ka..kb]) {
                header.extend_from_slice(&d[ka - 4..kb]);
                header.extend_from_slice(&d[va - 4..vb]);
            }
            false
        });
        if kept.is_err() {
            return false;
        }
        header.extend_from_slice(&encode_headers(kvs));
        let Ok(new_hl) = u16::try_from(header.len()) else {
            return false;
        };
        let mut out = BytesMut::with_capacity(frame.data.len() + header.len());
        out.put_slice(&frame.data[..s.header]);
        out.put_slice(&header);
        out.put_slice(&frame.data[s.content..]);
        let at = s.layout.lens_at() + 2;
        out[at..at + 2].copy_from_slice(&new_hl.to_be_bytes());
        fix_crc(&mut out, &s.layout);
        frame.data = out;
        true
    }
}

/// Builds a Bolt request with the given headers and content (tests, the demo and benchmarks).
pub fn encode_request(
    v2: Option<(u8, u8)>,
    id: u32,
    two_way: bool,
    timeout_ms: u32,
    headers: &[(&str, &str)],
    content: &[u8],
) -> Bytes {
    encode(
        v2,
        if two_way { TYPE_REQUEST } else { TYPE_ONEWAY },
        CMD_REQUEST,
        id,
        CODEC_HESSIAN2,
        timeout_ms,
        REQUEST_CLASS.as_bytes(),
        &encode_headers(headers),
        content,
    )
}

/// Builds a Bolt response (tests).
pub fn encode_response(v2: Option<(u8, u8)>, id: u32, status: u16, content: &[u8]) -> Bytes {
    encode(
        v2,
        TYPE_RESPONSE,
        CMD_RESPONSE,
        id,
        CODEC_HESSIAN2,
        u32::from(status),
        RESPONSE_CLASS.as_bytes(),
        &[],
        content,
    )
}

/// The content of a frame (after class name and headers, before any CRC).
pub fn content(frame: &Frame) -> Option<&[u8]> {
    let s = sections(&frame.data)?;
    Some(&frame.data[s.content..s.end])
}

/// The message of an error response made by [`Bolt::local_reply`] (or any `RpcServerException`
/// whose first field is its message).
pub fn error_message(frame: &Frame) -> Option<String> {
    let s = sections(&frame.data)?;
    let mut r = Reader::at(&frame.data[..s.end], s.content);
    if !r.object_field("detailMessage").ok()? {
        return None;
    }
    r.read_opt_string().ok()?.map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(b: &[u8]) -> Frame {
        let mut buf = BytesMut::from(b);
        let f = Bolt.decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        f
    }

    /// A hessian2 SofaRequest as SOFARPC writes it, then one string argument.
    fn sofa_content(method: &str, service: &str, props: &[(&str, &str)], arg: &str) -> Vec<u8> {
        let mut c = vec![b'C'];
        hessian::write_string(&mut c, REQUEST_CLASS);
        hessian::write_int(&mut c, 4);
        for f in ["targetAppName", "methodName", "targetServiceUniqueName", "requestProps"] {
            hessian::write_string(&mut c, f);
        }
        c.push(0x60);
        c.push(b'N');
        hessian::write_string(&mut c, method);
        hessian::write_string(&mut c, service);
        c.push(b'H');
        for (k, v) in props {
            hessian::write_string(&mut c, k);
            hessian::write_string(&mut c, v);
        }
        c.push(b'Z');
        hessian::write_string(&mut c, arg);
        c
    }

    #[test]
    fn v1_request_routing_from_headers_and_content() {
        let content = sofa_content("echo", "org.example.Greeter:1.0.0", &[("zone", "gz")], "vip");
        let f = encode_request(
            None,
            7,
            true,
            3000,
            &[("service", "org.example.Greeter:1.0.0")],
            &content,
        );
        // Incremental: nothing until the whole frame is there.
        for cut in [0, 1, 10, 21, f.len() - 1] {
            let mut buf = BytesMut::from(&f[..cut]);
            assert!(Bolt.decode(&mut buf, 1 << 20).unwrap().is_none(), "cut {cut}");
        }
        let frame = decode_one(&f);
        assert_eq!((frame.kind, frame.id), (FrameKind::Request, 7));
        let info = Bolt.request_info(&frame).unwrap();
        assert_eq!(info.service.get(&frame.data).unwrap(), "org.example.Greeter");
        assert_eq!(info.version.get(&frame.data).unwrap(), "1.0.0");
        assert_eq!(info.method.get(&frame.data).unwrap(), "echo");
        assert!(Bolt.attachment(&frame, &info, "zone").unwrap().matches_text("gz"));
        assert!(Bolt
            .attachment(&frame, &info, "service")
            .unwrap()
            .matches_text("org.example.Greeter:1.0.0"));
        assert!(Bolt.attachment(&frame, &info, "nope").is_none());
        assert!(Bolt.argument(&frame, &info, 0).unwrap().matches_text("vip"));
        assert!(Bolt.argument(&frame, &info, 1).is_none());
    }

    #[test]
    fn protobuf_style_headers_win() {
        let f = encode_request(
            None,
            1,
            false,
            1000,
            &[
                ("sofa_head_target_service", "com.a.B:2.0:u1"),
                ("sofa_head_method_name", "m"),
                ("service", "ignored:9"),
            ],
            b"opaque",
        );
        let frame = decode_one(&f);
        assert_eq!(frame.kind, FrameKind::OneWay);
        let info = Bolt.request_info(&frame).unwrap();
        assert_eq!(info.service.get(&frame.data).unwrap(), "com.a.B");
        assert_eq!(info.version.get(&frame.data).unwrap(), "2.0");
        assert_eq!(info.method.get(&frame.data).unwrap(), "m");
    }

    #[test]
    fn v2_crc_checked_and_kept_valid() {
        let content = sofa_content("echo", "S:1.0", &[], "x");
        let f = encode_request(Some((2, SWITCH_CRC)), 5, true, 3000, &[("service", "S:1.0")], &content);
        let mut frame = decode_one(&f);
        assert_eq!(frame.id, 5);
        Bolt.set_request_id(&mut frame, 0x1_0000_0009);
        assert_eq!(frame.id, 9, "ids are 32 bits");
        let info = Bolt.request_info(&frame).unwrap();
        assert!(Bolt.set_attachments(&mut frame, &info, &[("traceparent", "00-abc")]));
        // Still a valid frame: the CRC was recomputed after each rewrite.
        let again = decode_one(&frame.data);
        assert_eq!(again.id, 9);
        let info = Bolt.request_info(&again).unwrap();
        assert!(Bolt
            .attachment(&again, &info, "traceparent")
            .unwrap()
            .matches_text("00-abc"));
        assert_eq!(info.method.get(&again.data).unwrap(), "echo");
        // Set again: replaced, not duplicated; the other header kept; CRC still right.
        let mut again = again;
        assert!(Bolt.set_attachments(&mut again, &info, &[("traceparent", "00-def")]));
        let third = decode_one(&again.data);
        let s = sections(&third.data).unwrap();
        let mut keys = Vec::new();
        walk_headers(&third.data, s.header, s.content, |(ka, kb), (va, vb)| {
            keys.push(format!(
                "{}={}",
                String::from_utf8_lossy(&third.data[ka..kb]),
                String::from_utf8_lossy(&third.data[va..vb])
            ));
            false
        })
        .unwrap();
        assert_eq!(keys, ["service=S:1.0", "traceparent=00-def"]);
        // One flipped bit in the content: refused, answered.
        let mut bad = f.to_vec();
        let n = bad.len() - 6;
        bad[n] ^= 0x01;
        let err = Bolt.decode(&mut BytesMut::from(&bad[..]), 1 << 20).unwrap_err();
        assert_eq!(err, DecodeError::Checksum { id: 5, two_way: true });
        assert_eq!((err.reason(), err.reply_to()), ("crc_mismatch", Some(5)));
        // Without the switch bit, no CRC is expected.
        let plain = encode_request(Some((1, 0)), 6, true, 3000, &[], b"");
        assert_eq!(decode_one(&plain).id, 6);
    }

    #[test]
    fn heartbeats_replies_limits() {
        let hb = decode_one(&Bolt.heartbeat(3));
        assert_eq!((hb.kind, hb.id), (FrameKind::Heartbeat, 3));
        let ack = decode_one(&Bolt.heartbeat_reply(&hb));
        assert_eq!((ack.kind, ack.id, ack.status), (FrameKind::HeartbeatResponse, 3, 0));
        // A v2 heartbeat with CRC is answered in kind.
        let hb2 = encode(
            Some((2, SWITCH_CRC)),
            TYPE_REQUEST,
            CMD_HEARTBEAT,
            4,
            1,
            1000,
            &[],
            &[],
            &[],
        );
        let hb2 = decode_one(&hb2);
        let ack2 = Bolt.heartbeat_reply(&hb2);
        assert_eq!((ack2[0], ack2[11]), (PROTOCOL_V2, SWITCH_CRC));
        assert_eq!(decode_one(&ack2).kind, FrameKind::HeartbeatResponse);

        let r = decode_one(&Bolt.local_reply(11, LocalReply::Timeout, "upstream request timeout"));
        assert_eq!((r.kind, r.id, r.status), (FrameKind::Response, 11, status::TIMEOUT));
        assert_eq!(error_message(&r).as_deref(), Some("upstream request timeout"));
        assert_eq!(Bolt.status_class(status::TIMEOUT), 504);

        let big = encode_request(None, 3, true, 1000, &[], &[0u8; 100]);
        let err = Bolt.decode(&mut BytesMut::from(&big[..22]), 64).unwrap_err();
        assert_eq!((err.reason(), err.reply_to()), ("frame_too_large", Some(3)));
        let err = Bolt
            .decode(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]), 64)
            .unwrap_err();
        assert_eq!(err, DecodeError::BadMagic);
        let mut bad_cmd = encode_request(None, 8, true, 1000, &[], b"").to_vec();
        bad_cmd[3] = 9;
        let err = Bolt.decode(&mut BytesMut::from(&bad_cmd[..]), 1 << 20).unwrap_err();
        assert_eq!(err.reply_to(), Some(8));
    }

    #[test]
    fn bad_header_map_is_an_error_not_a_panic() {
        let mut f = encode_request(None, 2, true, 1000, &[("k", "v")], b"").to_vec();
        // The key length claims more than the map holds.
        let at = 22 + REQUEST_CLASS.len();
        f[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        let frame = decode_one(&f);
        assert!(matches!(
            Bolt.request_info(&frame),
            Err(DecodeError::Malformed {
                id: 2,
                two_way: true,
                ..
            })
        ));
        assert!(Bolt.attachment(&frame, &RequestInfo::default(), "k").is_none());
    }
}

#[cfg(test)]
mod draft_tests {
    use super::*;

    /// The content sofa-rpc-node 2.10 (sofa-bolt-node, hessian "3.0") writes for
    /// `whoami()` with requestProps {service, lane: blue}: the Hessian 2.0 draft encoding.
    const SOFA_NODE_WHOAMI: &str = "4fbc636f6d2e616c697061792e736f66612e7270632e636f72652e726571756573742e536f666152657175657374950a6d6574686f644e616d650d6d6574686f64417267536967731774617267657453657276696365556e697175654e616d650d7461726765744170704e616d650c7265717565737450726f70736f900677686f616d69567400115b6a6176612e6c616e672e537472696e676e007a196f72672e6578616d706c652e477265657465723a312e302e304e4d0773657276696365196f72672e6578616d706c652e477265657465723a312e302e30046c616e6504626c75657a";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sofa_rpc_node_content() {
        let content = unhex(SOFA_NODE_WHOAMI);
        let f = encode_request(None, 1, true, 1000, &[], &content);
        let mut buf = BytesMut::from(&f[..]);
        let frame = Bolt.decode(&mut buf, 1 << 20).unwrap().unwrap();
        let info = Bolt.request_info(&frame).unwrap();
        assert_eq!(info.method.get(&frame.data).unwrap(), "whoami");
        assert_eq!(info.service.get(&frame.data).unwrap(), "org.example.Greeter");
        assert_eq!(info.version.get(&frame.data).unwrap(), "1.0.0");
        assert!(Bolt.attachment(&frame, &info, "lane").unwrap().matches_text("blue"));
        assert!(Bolt.argument(&frame, &info, 0).is_none(), "no arguments");
    }
}

#[cfg(test)]
mod deep_input_tests {
    use super::*;

    /// Many draft string chunks in a row are walked in a loop, not by recursion.
    #[test]
    fn long_chunk_runs_do_not_recurse() {
        let mut c = vec![b'O', 0x91, b'X', 0x92, 0x01, b'a', 0x0a];
        c.extend_from_slice(b"methodName");
        c.extend_from_slice(&[b'o', 0x90]);
        for _ in 0..200_000 {
            c.extend_from_slice(&[b's', 0x00, 0x00]);
        }
        c.extend_from_slice(&[0x01, b'z', 0x01, b'm']);
        let f = encode_request(None, 1, true, 1000, &[], &c);
        let mut buf = BytesMut::from(&f[..]);
        let frame = Bolt.decode(&mut buf, 1 << 24).unwrap().unwrap();
        let info = Bolt.request_info(&frame).unwrap();
        assert_eq!(info.method.get(&frame.data).unwrap(), "m");
    }
}
