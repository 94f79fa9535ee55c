//! Formats one access-log entry with a compiled [`LogFormat`] (Envoy's command operators), straight
//! into the logger's buffer: no allocation per entry.

use crate::flags::Reason;
use http::HeaderValue;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use weft_config::log_format::{FormatKind, HeaderRef, LogFormat, Op};

/// What one exchange (HTTP request or TCP connection) left for its access-log line. Borrowed:
/// built on the stack at the exchange's end.
pub struct LogEntry<'a> {
    pub start_time: SystemTime,
    pub duration: Duration,
    /// `HTTP/1.1`, `HTTP/2`…; `None` on TCP proxy listeners (logged as `-`).
    pub protocol: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub scheme: Option<&'a str>,
    /// Captured values of [`LogFormat::req_headers`], by slot (empty on TCP).
    pub req_headers: &'a [Option<HeaderValue>],
    /// Captured values of [`LogFormat::resp_headers`], by slot.
    pub resp_headers: &'a [Option<HeaderValue>],
    /// 0 when there was no response (TCP, or a connection closed before one).
    pub response_code: u16,
    /// Why the proxy answered by itself or the exchange failed; `None`: it went through.
    pub reason: Option<Reason>,
    pub attempts: u32,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_local: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub peer_identity: Option<&'a str>,
    pub requested_server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// Replaces the reason's `%RESPONSE_CODE_DETAILS%` when set (an authorization denial names its
    /// policy: `rbac_access_denied_matched_policy[<name>]`).
    pub details: Option<&'a str>,
}

/// Envoy's `%RESPONSE_FLAGS%` for an outcome: the reason's short flag, plus `URX` when the
/// failure came after more than one upstream attempt; `-` when nothing went wrong.
pub fn write_flags(out: &mut Vec<u8>, reason: Option<Reason>, attempts: u32) -> bool {
    let Some(flag) = reason.and_then(Reason::envoy_flag) else {
        out.push(b'-');
        return false;
    };
    out.extend_from_slice(flag.as_bytes());
    if attempts > 1 && reason.is_some_and(Reason::is_upstream_failure) {
        out.extend_from_slice(b",URX");
    }
    true
}

/// Envoy's `%RESPONSE_CODE_DETAILS%`.
pub fn details<'a>(e: &LogEntry<'a>) -> Option<&'a str> {
    if let Some(d) = e.details {
        return Some(d);
    }
    match e.reason {
        Some(r) => Some(r.details()),
        None if e.response_code != 0 => Some("via_upstream"),
        None => None,
    }
}

/// Appends one formatted line (newline included) to `out`.
pub fn write(f: &LogFormat, e: &LogEntry<'_>, out: &mut Vec<u8>) {
    match &f.kind {
        FormatKind::Text(ops) => {
            for op in ops {
                if !value(op, e, out, false) {
                    out.push(b'-');
                }
            }
        }
        FormatKind::Json(fields) => {
            out.push(b'{');
            for (i, (k, ops)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, k.as_bytes());
                out.push(b':');
                match ops.as_slice() {
                    [op] if op.is_numeric() => {
                        if !value(op, e, out, false) {
                            out.extend_from_slice(b"null");
                        }
                    }
                    [op] if !matches!(op, Op::Literal(_)) => {
                        let mark = out.len();
                        out.push(b'"');
                        if value(op, e, out, true) {
                            out.push(b'"');
                        } else {
                            out.truncate(mark);
                            out.extend_from_slice(b"null");
                        }
                    }
                    ops => {
                        out.push(b'"');
                        for op in ops {
                            if !value(op, e, out, true) {
                                out.push(b'-');
                            }
                        }
                        out.push(b'"');
                    }
                }
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

/// Writes an operator's value (JSON-escaped when `json`); false, writing nothing, when it has none.
fn value(op: &Op, e: &LogEntry<'_>, out: &mut Vec<u8>, json: bool) -> bool {
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        if json {
            json_escape(out, b)
        } else {
            out.extend_from_slice(b)
        }
    };
    let opt_str = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) if !s.is_empty() => {
            put(out, s.as_bytes());
            true
        }
        _ => false,
    };
    let addr = |out: &mut Vec<u8>, a: Option<SocketAddr>, port: bool| match a {
        Some(a) => {
            if port {
                let _ = write!(out, "{a}");
            } else {
                let _ = write!(out, "{}", a.ip());
            }
            true
        }
        None => false,
    };
    match op {
        Op::Literal(l) => {
            put(out, l.as_bytes());
            true
        }
        Op::StartTime => {
            crate::access_log::write_timestamp(out, e.start_time);
            true
        }
        Op::Req { main, alt, max } => {
            let v = header(*main, e, e.req_headers).or_else(|| alt.and_then(|a| header(a, e, e.req_headers)));
            truncated(out, v, *max, json)
        }
        Op::Resp { main, alt, max } => {
            let v = header(*main, e, e.resp_headers).or_else(|| alt.and_then(|a| header(a, e, e.resp_headers)));
            truncated(out, v, *max, json)
        }
        Op::Protocol => opt_str(out, e.protocol),
        Op::ResponseCode => {
            let _ = write!(out, "{}", e.response_code);
            true
        }
        Op::ResponseFlags => {
            write_flags(out, e.reason, e.attempts);
            true
        }
        Op::ResponseCodeDetails => opt_str(out, details(e)),
        Op::ConnectionTerminationDetails | Op::UpstreamTransportFailureReason => false,
        Op::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
            true
        }
        Op::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
            true
        }
        Op::Duration => {
            let _ = write!(out, "{}", e.duration.as_millis());
            true
        }
        Op::UpstreamHost => addr(out, e.upstream_host, true),
        Op::UpstreamCluster => opt_str(out, e.upstream_cluster),
        Op::UpstreamLocalAddress => addr(out, e.upstream_local, true),
        Op::UpstreamRequestAttemptCount => {
            let _ = write!(out, "{}", e.attempts);
            true
        }
        Op::DownstreamLocalAddress => addr(out, e.downstream_local, true),
        Op::DownstreamLocalAddressWithoutPort => addr(out, e.downstream_local, false),
        Op::DownstreamRemoteAddress => addr(out, Some(e.downstream_remote), true),
        Op::DownstreamRemoteAddressWithoutPort => addr(out, Some(e.downstream_remote), false),
        Op::DownstreamPeerUriSan => opt_str(out, e.peer_identity),
        Op::RequestedServerName => opt_str(out, e.requested_server_name),
        Op::RouteName => opt_str(out, e.route_name),
        Op::Hostname => opt_str(out, hostname()),
    }
}

fn header<'e>(r: HeaderRef, e: &'e LogEntry<'_>, slots: &'e [Option<HeaderValue>]) -> Option<&'e [u8]> {
    let s = match r {
        HeaderRef::Method => e.method,
        HeaderRef::Path => e.path,
        HeaderRef::Authority => e.authority,
        HeaderRef::Scheme => e.scheme,
        HeaderRef::Slot(i) => return slots.get(i as usize)?.as_ref().map(HeaderValue::as_bytes),
    };
    s.filter(|s| !s.is_empty()).map(str::as_bytes)
}

fn truncated(out: &mut Vec<u8>, v: Option<&[u8]>, max: Option<u32>, json: bool) -> bool {
    let Some(mut v) = v else { return false };
    if let Some(m) = max {
        v = &v[..v.len().min(m as usize)];
    }
    if json {
        json_escape(out, v);
    } else {
        // A text line stays one line whatever a client sent.
        out.extend(v.iter().map(|&b| if b < 0x20 || b == 0x7f { b' ' } else { b }));
    }
    true
}

fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    json_escape(out, s);
    out.push(b'"');
}

/// JSON string escaping; bytes that are not UTF-8 become U+FFFD.
fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

/// This machine's host name, read once.
fn hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| std::env::var("HOSTNAME").ok())
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(req: &'a [Option<HeaderValue>], resp: &'a [Option<HeaderValue>]) -> LogEntry<'a> {
        LogEntry {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_micros(12_700),
            protocol: Some("HTTP/1.1"),
            method: Some("GET"),
            path: Some("/a?b=1"),
            authority: Some("svc"),
            scheme: Some("http"),
            req_headers: req,
            resp_headers: resp,
            response_code: 503,
            reason: Some(Reason::UpstreamConnectFailure),
            attempts: 2,
            bytes_received: 5,
            bytes_sent: 19,
            upstream_host: Some("127.0.0.1:9".parse().unwrap()),
            upstream_cluster: Some("c"),
            upstream_local: None,
            downstream_local: Some("127.0.0.1:80".parse().unwrap()),
            downstream_remote: "127.0.0.2:5555".parse().unwrap(),
            peer_identity: None,
            requested_server_name: None,
            route_name: Some("r1"),
            details: None,
        }
    }

    #[test]
    fn envoy_default_line() {
        let f = LogFormat::text("").unwrap();
        let req = [
            None,
            Some(HeaderValue::from_static("1.2.3.4")),
            Some(HeaderValue::from_static("curl/8")),
            None,
        ];
        let e = entry(&req, &[None]);
        let mut out = Vec::new();
        write(&f, &e, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2023-11-14T22:13:20.123Z] \"GET /a?b=1 HTTP/1.1\" 503 UF,URX 5 19 12 - \"1.2.3.4\" \"curl/8\" \"-\" \"svc\" \"127.0.0.1:9\"\n"
        );
    }

    #[test]
    fn truncation_fallback_and_json_types() {
        let f = LogFormat::json([
            ("code", "%RESPONSE_CODE%"),
            ("ua", "%REQ(USER-AGENT):3%"),
            ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
            ("mixed", "%REQ(:METHOD)% \"%REQ(x-none)%\""),
            ("none", "%REQ(x-none)%"),
            ("details", "%RESPONSE_CODE_DETAILS%"),
            ("local", "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"),
        ])
        .unwrap();
        let req = [Some(HeaderValue::from_static("curl/8")), None, None];
        let e = entry(&req, &[]);
        let mut out = Vec::new();
        write(&f, &e, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 503, "ua": "cur", "path": "/a?b=1", "mixed": "GET \"-\"",
                "none": null, "details": "upstream_reset_before_response_started{connection_failure}",
                "local": "127.0.0.1"})
        );
    }

    #[test]
    fn no_flags_on_success_and_text_stays_one_line() {
        let f = LogFormat::text("%RESPONSE_FLAGS% %REQ(x-a)% %RESPONSE_CODE_DETAILS%").unwrap();
        let req = [Some(HeaderValue::from_bytes(b"a\tb").unwrap())];
        let mut e = entry(&req, &[]);
        e.reason = None;
        e.response_code = 200;
        let mut out = Vec::new();
        write(&f, &e, &mut out);
        assert_eq!(out, b"- a b via_upstream\n");
    }
}
