//! Dubbo2: a 16-byte header and a hessian2 body.
//!
//! Header (big-endian): magic `0xdabb` | flag (`0x80` request, `0x40` two-way, `0x20` event, low 5
//! bits the serialization id, 2 = hessian2) | status | request id (8 bytes) | body length (4).
//! Request body: dubbo version, service path, service version, method, parameter descriptor, the
//! arguments, then the attachments map. An error response's body is a hessian2 string.

use crate::codec::{Codec, DecodeError, Frame, FrameKind, LocalReply, RequestInfo};
use crate::hessian::{self, HessianError, Reader, Value};
use bytes::{BufMut, Bytes, BytesMut};

pub const HEADER_LEN: usize = 16;
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
const FLAG_REQUEST: u8 = 0x80;
const FLAG_TWO_WAY: u8 = 0x40;
const FLAG_EVENT: u8 = 0x20;
const SERIALIZATION_MASK: u8 = 0x1f;
pub const HESSIAN2: u8 = 2;

/// Dubbo response status codes.
pub mod status {
    pub const OK: u8 = 20;
    pub const CLIENT_TIMEOUT: u8 = 30;
    pub const SERVER_TIMEOUT: u8 = 31;
    pub const BAD_REQUEST: u8 = 40;
    pub const BAD_RESPONSE: u8 = 50;
    pub const SERVICE_NOT_FOUND: u8 = 60;
    pub const SERVICE_ERROR: u8 = 70;
    pub const SERVER_ERROR: u8 = 80;
    pub const CLIENT_ERROR: u8 = 90;
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: u8 = 100;
}

/// The status a local reply carries.
pub fn reply_status(r: LocalReply) -> u8 {
    match r {
        LocalReply::NoRoute => status::SERVICE_NOT_FOUND,
        LocalReply::NoHealthyUpstream => status::SERVICE_NOT_FOUND,
        LocalReply::Timeout => status::SERVER_TIMEOUT,
        LocalReply::Overload | LocalReply::RateLimited => status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
        LocalReply::Unauthorized | LocalReply::Fault => status::SERVICE_ERROR,
        LocalReply::UpstreamFailure => status::SERVER_ERROR,
        LocalReply::BadRequest => status::BAD_REQUEST,
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Dubbo;

fn header(flag: u8, status: u8, id: u64, body_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC);
    h[2] = flag;
    h[3] = status;
    h[4..12].copy_from_slice(&id.to_be_bytes());
    h[12..16].copy_from_slice(&(body_len as u32).to_be_bytes());
    h
}

/// Builds a whole frame.
pub fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    b.put_slice(&header(flag, status, id, body.len()));
    b.put_slice(body);
    b.freeze()
}

/// Counts the parameters in a JVM method descriptor (`Ljava/lang/String;I[J`).
pub fn count_params(desc: &str) -> Option<u32> {
    let b = desc.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        while b.get(i) == Some(&b'[') {
            i += 1;
        }
        match b.get(i)? {
            b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S' | b'V' => i += 1,
            b'L' => {
                i += b[i..].iter().position(|&c| c == b';')? + 1;
            }
            _ => return None,
        }
        n += 1;
    }
    Some(n)
}

/// The body's "dubbo version" is free-form in practice (Dubbo 2.x writes "2.0.2", sofa-rpc-node's
/// dubbo-remoting its own "5.3.0", old clients nothing): anything short and version-like is taken.
fn is_supported_version(v: &str) -> bool {
    v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Dubbo {
    fn body_err(frame: &Frame, error: HessianError) -> DecodeError {
        DecodeError::Malformed {
            id: frame.id,
            two_way: frame.kind == FrameKind::Request,
            error,
        }
    }
}

impl Codec for Dubbo {
    fn name(&self) -> &'static str {
        "dubbo"
    }

    fn decode(&self, buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        if buf[..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flag = buf[2];
        let id = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes")) as u64;
        let two_way = flag & FLAG_REQUEST != 0 && flag & FLAG_TWO_WAY != 0;
        let total = HEADER_LEN as u64 + len;
        if total > u64::from(max_frame) {
            return Err(DecodeError::TooLarge {
                id,
                len: total,
                two_way,
            });
        }
        if (buf.len() as u64) < total {
            buf.reserve(total as usize - buf.len());
            return Ok(None);
        }
        let data = buf.split_to(total as usize);
        let body = &data[HEADER_LEN..];
        let event = flag & FLAG_EVENT != 0;
        let kind = if flag & FLAG_REQUEST != 0 {
            if event {
                // Heartbeat: null body (or empty). Readonly: the string "R".
                if body == [0x01, b'R'] {
                    FrameKind::GoAway
                } else if two_way && (body.is_empty() || body == [b'N']) {
                    FrameKind::Heartbeat
                } else {
                    FrameKind::Event
                }
            } else if two_way {
                FrameKind::Request
            } else {
                FrameKind::OneWay
            }
        } else if event {
            FrameKind::HeartbeatResponse
        } else {
            FrameKind::Response
        };
        if matches!(kind, FrameKind::Request | FrameKind::OneWay) && flag & SERIALIZATION_MASK != HESSIAN2 {
            return Err(DecodeError::UnsupportedVersion { id, two_way });
        }
        Ok(Some(Frame {
            kind,
            id,
            status: u16::from(data[3]),
            data,
        }))
    }

    fn request_info(&self, frame: &Frame) -> Result<RequestInfo, DecodeError> {
        let mut r = Reader::at(&frame.data, HEADER_LEN);
        let e = |err| Dubbo::body_err(frame, err);
        let protocol_version = r.read_string_span().map_err(e)?;
        if let Some(v) = protocol_version.get(&frame.data) {
            if !is_supported_version(&v) {
                return Err(DecodeError::UnsupportedVersion {
                    id: frame.id,
                    two_way: frame.kind == FrameKind::Request,
                });
            }
        }
        let service = r.read_string_span().map_err(e)?;
        let version = r.read_string_span().map_err(e)?;
        let method = r.read_string_span().map_err(e)?;
        // Dubbox writes an int between the method and the parameter descriptor: -1 when the
        // descriptor and hessian2 arguments follow (dubbo2.js too, with `isSupportedDubbox`).
        // No string starts with an int's code, so it can only be that.
        if matches!(r.peek().map_err(e)?, 0x80..=0xd7 | b'I') && r.read_int().map_err(e)? != -1 {
            return Err(e(HessianError::BadLength));
        }
        let param_types = r.read_string_span().map_err(e)?;
        let desc = param_types.get(&frame.data).unwrap_or_default();
        let arg_count = count_params(&desc).ok_or_else(|| e(HessianError::BadString))?;
        let args_start = r.pos() as u32;
        for _ in 0..arg_count {
            r.skip().map_err(e)?;
        }
        let attachments_start = if r.at_end() {
            None
        } else {
            let at = r.pos();
            r.skip().map_err(e)?;
            Some(at as u32)
        };
        Ok(RequestInfo {
            protocol_version,
            service,
            version,
            method,
            param_types,
            arg_count,
            args_start,
            attachments_start,
        })
    }

    fn attachment<'a>(&self, frame: &'a Frame, info: &RequestInfo, key: &str) -> Option<Value<'a>> {
        let at = info.attachments_start? as usize;
        // Walked from the arguments, not from the map: a value in the map may be an object whose
        // class definition came with an argument, and the reader must have seen it.
        let mut r = Reader::at(&frame.data, info.args_start as usize);
        for _ in 0..info.arg_count {
            r.skip().ok()?;
        }
        if r.pos() != at {
            return None;
        }
        r.map_value(key)
    }

    fn argument<'a>(&self, frame: &'a Frame, info: &RequestInfo, index: u32) -> Option<Value<'a>> {
        if index >= info.arg_count {
            return None;
        }
        let mut r = Reader::at(&frame.data, info.args_start as usize);
        for _ in 0..index {
            r.skip().ok()?;
        }
        r.read_value().ok()
    }

    fn set_request_id(&self, frame: &mut Frame, id: u64) {
        frame.data[4..12].copy_from_slice(&id.to_be_bytes());
        frame.id = id;
    }

    fn local_reply(&self, id: u64, reply: LocalReply, message: &str) -> Bytes {
        let mut body = Vec::with_capacity(message.len() + 3);
        hessian::write_string(&mut body, message);
        frame(HESSIAN2, reply_status(reply), id, &body)
    }

    fn heartbeat_reply(&self, req: &Frame) -> Bytes {
        let ser = req.data[2] & SERIALIZATION_MASK;
        frame(FLAG_EVENT | ser, status::OK, req.id, b"N")
    }

    fn heartbeat(&self, id: u64) -> Bytes {
        frame(FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2, 0, id, b"N")
    }

    fn goaway(&self) -> Option<Bytes> {
        Some(frame(FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, 0, &[0x01, b'R']))
    }

    fn status_ok(&self, status: u16) -> bool {
        status == u16::from(status::OK)
    }

    fn status_class(&self, status: u16) -> u16 {
        match status as u8 {
            status::OK => 200,
            status::BAD_REQUEST | status::CLIENT_TIMEOUT | status::CLIENT_ERROR => 400,
            status::SERVICE_NOT_FOUND => 404,
            _ => 500,
        }
    }

    fn set_attachments(&self, frame: &mut Frame, info: &RequestInfo, kvs: &[(&str, &str)]) -> bool {
        // Only an untyped map ('H' ... 'Z') that ends the body is rewritten.
        let Some(at) = info.attachments_start.map(|a| a as usize) else {
            return false;
        };
        if frame.data.get(at) != Some(&b'H') || frame.data.last() != Some(&b'Z') {
            return false;
        }
        // Walked from the arguments: a value in the map may use a class defined in an argument.
        let mut r = Reader::at(&frame.data, info.args_start as usize);
        for _ in 0..info.arg_count {
            if r.skip().is_err() {
                return false;
            }
        }
        if r.pos() != at {
            return false;
        }
        let mut r = Reader::at(&frame.data, at + 1);
        // Entries to drop: string-valued ones under a key being set (strings are never the
        // target of a back reference, so dropping them keeps the rest valid).
        let mut drop: Vec<(usize, usize)> = Vec::new();
        loop {
            match r.peek() {
                Ok(b'Z') => break,
                Ok(_) => {}
                Err(_) => return false,
            }
            let start = r.pos();
            let key = match r.read_value() {
                Ok(Value::Str(k)) => Some(k),
                Ok(_) => None,
                Err(_) => return false,
            };
            let string_value = matches!(r.peek(), Ok(0x00..=0x1f | 0x30..=0x33 | b'R' | b'S' | b'N'));
            if r.skip().is_err() {
                return false;
            }
            if string_value && key.is_some_and(|k| kvs.iter().any(|(want, _)| *want == k)) {
                drop.push((start, r.pos()));
            }
        }
        if r.pos() != frame.data.len() - 1 {
            return false;
        }
        let mut extra = Vec::with_capacity(kvs.iter().map(|(k, v)| k.len() + v.len() + 6).sum());
        for (k, v) in kvs {
            hessian::write_string(&mut extra, k);
            hessian::write_string(&mut extra, v);
        }
        let z = frame.data.len() - 1;
        let mut out = BytesMut::with_capacity(frame.data.len() + extra.len());
        let mut from = 0;
        for (a, b) in drop {
            out.put_slice(&frame.data[from..a]);
            from = b;
        }
        out.put_slice(&frame.data[from..z]);
        out.put_slice(&extra);
        out.put_u8(b'Z');
        let body_len = (out.len() - HEADER_LEN) as u32;
        out[12..16].copy_from_slice(&body_len.to_be_bytes());
        frame.data = out;
        true
    }
}

/// Builds a Dubbo2 request (for tests, the demo and benchmarks): `args` are already hessian2-encoded.
#[allow(clippy::too_many_arguments)]
pub fn encode_request(
    id: u64,
    two_way: bool,
    service: &str,
    version: &str,
    method: &str,
    param_types: &str,
    args: &[u8],
    attachments: &[(&str, &str)],
) -> Bytes {
    let mut body = Vec::with_capacity(64 + args.len());
    hessian::write_string(&mut body, "2.0.2");
    hessian::write_string(&mut body, service);
    hessian::write_string(&mut body, version);
    hessian::write_string(&mut body, method);
    hessian::write_string(&mut body, param_types);
    body.extend_from_slice(args);
    body.push(b'H');
    for (k, v) in attachments {
        hessian::write_string(&mut body, k);
        hessian::write_string(&mut body, v);
    }
    body.push(b'Z');
    let flag = FLAG_REQUEST | HESSIAN2 | if two_way { FLAG_TWO_WAY } else { 0 };
    frame(flag, 0, id, &body)
}

/// Builds a Dubbo2 response carrying a value (response flag 1 = RESPONSE_VALUE); `value` is
/// hessian2-encoded.
pub fn encode_response(id: u64, value: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(1 + value.len());
    hessian::write_int(&mut body, 1);
    body.extend_from_slice(value);
    frame(HESSIAN2, status::OK, id, &body)
}

/// The message of an error response (its hessian2 string body).
pub fn error_message(frame: &Frame) -> Option<String> {
    Reader::at(&frame.data, HEADER_LEN)
        .read_opt_string()
        .ok()
        .flatten()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    /// The fuzz target's checks on the input that once failed them (fuzz/regressions): an
    /// attachment appended to a map whose earlier entries have keys that are not strings (or
    /// values that do not decode) is still found.
    #[test]
    fn fuzz_regression_attachment_after_class_defined_in_arguments() {
        use crate::codec::{Codec, FrameKind};
        let data: &[u8] =
            include_bytes!("../../../fuzz/regressions/dubbo_decode/crash-e67e24ed505779395f4de99615c9bae11446385f");
        let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
        let mut buf = bytes::BytesMut::from(&data[..cut]);
        let mut fed = false;
        for _ in 0..64 {
            match Dubbo.decode(&mut buf, 1 << 20) {
                Ok(Some(mut f)) => {
                    if matches!(f.kind, FrameKind::Request | FrameKind::OneWay) {
                        if let Ok(info) = Dubbo.request_info(&f) {
                            for k in ["group", "interface", "version", ""] {
                                let _ = Dubbo.attachment(&f, &info, k);
                            }
                            Dubbo.set_request_id(&mut f, 42);
                            if Dubbo.set_attachments(&mut f, &info, &[("k", "v")]) {
                                let mut again = f.data.clone();
                                let g = Dubbo.decode(&mut again, u32::MAX).unwrap().unwrap();
                                let info = Dubbo.request_info(&g).unwrap();
                                assert!(Dubbo.attachment(&g, &info, "k").is_some());
                            }
                        }
                    }
                }
                Ok(None) if !fed => {
                    buf.extend_from_slice(&data[cut..]);
                    fed = true;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    use super::*;

    fn decode_one(b: &[u8]) -> Frame {
        let mut buf = BytesMut::from(b);
        Dubbo.decode(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn request_routing_fields() {
        let mut args = Vec::new();
        hessian::write_string(&mut args, "vip");
        hessian::write_int(&mut args, 42);
        let f = encode_request(
            7,
            true,
            "com.example.Greeter",
            "1.0.0",
            "greet",
            "Ljava/lang/String;I",
            &args,
            &[("group", "g1"), ("interface", "com.example.Greeter")],
        );
        // Incremental: nothing until the whole frame is there.
        let mut buf = BytesMut::from(&f[..20]);
        assert!(Dubbo.decode(&mut buf, 1 << 20).unwrap().is_none());
        let frame = decode_one(&f);
        assert_eq!(frame.kind, FrameKind::Request);
        assert_eq!(frame.id, 7);
        let info = Dubbo.request_info(&frame).unwrap();
        assert_eq!(info.service.get(&frame.data).unwrap(), "com.example.Greeter");
        assert_eq!(info.method.get(&frame.data).unwrap(), "greet");
        assert_eq!(info.version.get(&frame.data).unwrap(), "1.0.0");
        assert_eq!(info.arg_count, 2);
        assert!(Dubbo.argument(&frame, &info, 0,).unwrap().matches_text("vip"));
        assert!(Dubbo.argument(&frame, &info, 1).unwrap().matches_text("42"));
        assert!(Dubbo.argument(&frame, &info, 2).is_none());
        assert!(Dubbo.attachment(&frame, &info, "group").unwrap().matches_text("g1"));
        assert!(Dubbo.attachment(&frame, &info, "nope").is_none());
    }

    /// The request dubbo2.js 2.3.9 writes with `isSupportedDubbox` (its Dubbox mode: an int -1
    /// between the method and the parameter descriptor), byte for byte: echo("vip") on
    /// org.example.Greeter 1.0.0, group HSF.
    #[test]
    fn dubbox_request_from_dubbo2_js() {
        let hex = "dabbc2000000000000000001000000a405322e302e32136f72672e6578616d706c652e477265\
                   6574657205312e302e30046563686f8f124c6a6176612f6c616e672f537472696e673b037669\
                   70480b6170706c69636174696f6e09647562626f322e6a730567726f75700348534609696e74\
                   657266616365136f72672e6578616d706c652e477265657465720470617468136f72672e6578\
                   616d706c652e477265657465720776657273696f6e05312e302e305a";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let frame = decode_one(&bytes);
        assert_eq!(frame.kind, FrameKind::Request);
        let info = Dubbo.request_info(&frame).unwrap();
        assert_eq!(info.service.get(&frame.data).unwrap(), "org.example.Greeter");
        assert_eq!(info.method.get(&frame.data).unwrap(), "echo");
        assert_eq!(info.param_types.get(&frame.data).unwrap(), "Ljava/lang/String;");
        assert_eq!(info.arg_count, 1);
        assert!(Dubbo.argument(&frame, &info, 0).unwrap().matches_text("vip"));
        assert!(Dubbo.attachment(&frame, &info, "group").unwrap().matches_text("HSF"));
        assert!(Dubbo
            .attachment(&frame, &info, "application")
            .unwrap()
            .matches_text("dubbo2.js"));

        // Any other int there (Dubbox's count of arguments in another serialization) is refused.
        let mut other = bytes.clone();
        let at = other.iter().position(|&b| b == 0x8f).unwrap();
        other[at] = 0x92;
        let frame = decode_one(&other);
        assert!(matches!(Dubbo.request_info(&frame), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn id_rewrite_and_attachment_write() {
        let f = encode_request(1, true, "S", "", "m", "", &[], &[("a", "b")]);
        let mut frame = decode_one(&f);
        Dubbo.set_request_id(&mut frame, 99);
        let info = Dubbo.request_info(&frame).unwrap();
        assert!(Dubbo.set_attachments(&mut frame, &info, &[("traceparent", "00-abc")]));
        let again = decode_one(&frame.data);
        assert_eq!(again.id, 99);
        let info = Dubbo.request_info(&again).unwrap();
        assert!(Dubbo
            .attachment(&again, &info, "traceparent")
            .unwrap()
            .matches_text("00-abc"));
        assert!(Dubbo.attachment(&again, &info, "a").unwrap().matches_text("b"));
        // Setting it again replaces the entry (one `traceparent`, the new value), keeps the rest.
        let mut again = again;
        assert!(Dubbo.set_attachments(&mut again, &info, &[("traceparent", "00-def"), ("sw8", "1-x")]));
        let third = decode_one(&again.data);
        let info = Dubbo.request_info(&third).unwrap();
        let mut r = Reader::at(&third.data, info.attachments_start.unwrap() as usize);
        let mut seen = Vec::new();
        r.walk_map(|k, v| {
            seen.push((k.to_string(), v.as_str().unwrap_or_default().to_string()));
            false
        })
        .unwrap();
        let want = [("a", "b"), ("traceparent", "00-def"), ("sw8", "1-x")];
        assert_eq!(seen, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(r.pos(), third.data.len());
    }

    #[test]
    fn events_and_limits() {
        let hb = decode_one(&Dubbo.heartbeat(5));
        assert_eq!(hb.kind, FrameKind::Heartbeat);
        let reply = decode_one(&Dubbo.heartbeat_reply(&hb));
        assert_eq!(
            (reply.kind, reply.id, reply.status),
            (FrameKind::HeartbeatResponse, 5, 20)
        );
        assert_eq!(decode_one(&Dubbo.goaway().unwrap()).kind, FrameKind::GoAway);
        let big = encode_request(3, true, "S", "", "m", "", &[0x20; 100], &[]);
        let mut buf = BytesMut::from(&big[..16]);
        assert_eq!(
            Dubbo.decode(&mut buf, 64).unwrap_err().reply_to(),
            Some(3),
            "too large, answered"
        );
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(Dubbo.decode(&mut buf, 64).unwrap_err(), DecodeError::BadMagic);
        let err = decode_one(&Dubbo.local_reply(9, LocalReply::NoRoute, "no route"));
        assert_eq!((err.id, err.status), (9, 60));
        assert_eq!(error_message(&err).as_deref(), Some("no route"));
    }

    #[test]
    fn descriptors() {
        assert_eq!(count_params(""), Some(0));
        assert_eq!(count_params("Ljava/lang/String;I[J[[Lx;"), Some(4));
        assert_eq!(count_params("Ljava"), None);
        assert_eq!(count_params("Q"), None);
    }
}
