//! Responses the proxy makes itself: local replies for errors (plain text, or a trailers-only gRPC
//! error for gRPC callers), replies for requests stopped by a route filter, redirects and direct
//! responses.

use super::headers::{request_host, GRPC_MESSAGE, GRPC_STATUS};
use super::HttpRt;
use crate::body::DownBody;
use crate::flags::{Reason, OVERFLOW_HEADER, REASON_HEADER};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use weft_upstream::body::RequestBody;

/// A response made by the proxy itself. gRPC callers get a trailers-only gRPC error instead, which
/// their client libraries understand.
pub(super) fn local_reply(rt: &HttpRt, reason: Reason, grpc: bool) -> Response<DownBody> {
    let code = match reason {
        Reason::NoRoute => 12,
        Reason::UpstreamTimeout => 4,
        Reason::DownstreamProtocolError => 13,
        Reason::DownstreamDisconnect => 1,
        _ => 14,
    };
    local_reply_as(rt, reason, grpc, reason.status(), code)
}

/// `grpc-status` values 0–16 as static header values.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// A local reply with an explicit HTTP status (plain requests) and gRPC status (gRPC requests).
pub(super) fn local_reply_as(
    rt: &HttpRt,
    reason: Reason,
    grpc: bool,
    status: StatusCode,
    grpc_code: u8,
) -> Response<DownBody> {
    rt.local_replies.inc(reason.code());
    let mut resp = if grpc {
        let code = GRPC_CODES.get(usize::from(grpc_code)).copied().unwrap_or("2");
        let mut r = Response::new(DownBody::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS.clone(), HeaderValue::from_static(code));
        h.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(reason.body().trim_end()));
        r
    } else {
        let mut r = Response::new(DownBody::full(Bytes::from_static(reason.body().as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    resp.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.code()));
    if reason == Reason::Overflow {
        resp.headers_mut()
            .insert(OVERFLOW_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

/// Envoy's `jwt_authn` rejection: 401 (403 for a disallowed audience) with the status text as the
/// body (gRPC: UNAUTHENTICATED / PERMISSION_DENIED) and `www-authenticate`.
pub(super) fn jwt_reply(rt: &HttpRt, r: &weft_jwt::Rejection, grpc: bool) -> Response<DownBody> {
    let status = r.status.http_status();
    let grpc_code = if status == StatusCode::FORBIDDEN { 7 } else { 16 };
    let mut resp = local_reply_as(rt, Reason::JwtAuthn, grpc, status, grpc_code);
    let text = r.status.text();
    if grpc {
        resp.headers_mut()
            .insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(text));
    } else {
        *resp.body_mut() = DownBody::full(Bytes::from_static(text.as_bytes()));
    }
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, r.www_authenticate.clone());
    resp
}

/// The local reply for a request stopped by a rate limit or a fault abort.
pub(super) fn stop_reply(rt: &HttpRt, stop: crate::filters::Stop, grpc: bool) -> (Response<DownBody>, Reason) {
    use crate::filters::{grpc_for_http, http_for_grpc, Stop};
    match stop {
        Stop::RateLimited { retry_after_secs } => {
            let reason = Reason::RateLimited;
            let mut resp = local_reply_as(rt, reason, grpc, reason.status(), grpc_for_http(429));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            (resp, reason)
        }
        Stop::GlobalRateLimited => {
            let reason = Reason::GlobalRateLimited;
            let mut resp = local_reply_as(rt, reason, grpc, reason.status(), grpc_for_http(429));
            resp.headers_mut()
                .insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
            (resp, reason)
        }
        Stop::RateLimitServiceError => {
            let reason = Reason::RateLimitServiceError;
            (local_reply_as(rt, reason, grpc, reason.status(), 14), reason)
        }
        Stop::Abort(status) => {
            let (http, code) = match status {
                weft_config::AbortStatus::Http(s) => (s, grpc_for_http(s)),
                weft_config::AbortStatus::Grpc(g) => (http_for_grpc(g), g),
            };
            let http = StatusCode::from_u16(http).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (
                local_reply_as(rt, Reason::FaultInjected, grpc, http, code),
                Reason::FaultInjected,
            )
        }
    }
}

pub(super) fn redirect(
    req: &Request<RequestBody>,
    r: &weft_config::Redirect,
    matched_prefix: Option<usize>,
) -> Response<DownBody> {
    let host_full = request_host(req);
    // The router's host/port split, so IPv6 literals ("[::1]:8080") are handled the same way.
    let orig_host = crate::router::strip_port(host_full);
    let orig_port = host_full[orig_host.len()..].strip_prefix(':');
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(orig_host);
    let port = match (r.port, &r.scheme, orig_port) {
        (Some(p), _, _) => Some(p.to_string()),
        // Switching scheme drops the old port unless one is given.
        (None, Some(_), _) => None,
        (None, None, p) => p.map(str::to_string),
    };
    let path = req.uri().path();
    let new_path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(prefix)) => format!("{prefix}{}", path.get(matched_prefix.unwrap_or(0)..).unwrap_or("")),
        _ => path.to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&new_path);
    if !r.strip_query {
        if let Some(q) = req.uri().query() {
            location.push('?');
            location.push_str(q);
        }
    }
    let mut resp = Response::new(DownBody::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
