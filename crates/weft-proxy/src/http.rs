//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 downstream, routes each request, forwards
//! it upstream with retries and timeouts, and streams the response back.
//!
//! One request, in order: smuggling checks → virtual host and route → (redirect | direct response |
//! forward) → cluster and host pick → header rewrite → upstream try (with retries) → response header
//! rewrite → streamed body → stats and access log when the body ends.

use crate::access_log::{timestamp, AccessLogger};
use crate::body::{DownBody, StreamEnd, UpBody, Upload, UploadState};
use crate::cluster::{ActiveRequest, ClusterRt, ConnectError, Host};
use crate::flags::{Reason, OVERFLOW_HEADER, REASON_HEADER};
use crate::h1_framing::{FramingTracker, Sniffed};
use crate::outlier::Outcome;
use crate::router::{RouteEntry, RouteTable, VirtualHostEntry};
use crate::server::{ListenerRt, LocalReplyCounters, Shared};
use crate::stats::{ListenerStats, Metrics};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use weft_config::{
    Codec, Discovery, ForwardAction, HashPolicy, HttpConnectionManager, RetryPolicy, RouteAction, UpstreamProtocol,
};

/// Request bodies up to this size are buffered when a retry policy exists, so a retry can resend them.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;
/// Header naming the upstream for `original_dst` clusters in HTTP.
static ORIGINAL_DST_HEADER: HeaderName = HeaderName::from_static("x-weft-original-dst-host");
/// How long a connection asked to close gracefully may take to finish its requests.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub struct HttpRt {
    pub config: HttpConnectionManager,
    pub listener: String,
    /// Swapped in place when only the route configuration changes (an RDS update), so that open
    /// connections pick up new routes at their next request instead of being drained.
    pub routes: arc_swap::ArcSwap<RouteTable>,
    pub stats: Arc<ListenerStats>,
    pub local_replies: LocalReplyCounters,
    pub access_log: Option<Arc<AccessLogger>>,
    /// The connection manager's `local_rate_limit`, shared by every worker.
    pub rate_limit: Option<crate::filters::LocalRateLimiter>,
    /// The connection manager's global rate limit service, asked by routes with `rate_limits`.
    pub rls: Option<crate::ratelimit::RateLimitClient>,
    via: Option<HeaderValue>,
    server: Option<HeaderValue>,
}

impl HttpRt {
    pub fn new(
        config: &HttpConnectionManager,
        listener: &str,
        stats: Arc<ListenerStats>,
        metrics: &Metrics,
        access_log: Option<Arc<AccessLogger>>,
    ) -> HttpRt {
        HttpRt {
            routes: arc_swap::ArcSwap::from_pointee(RouteTable::new(&config.route_config, listener, metrics)),
            config: config.clone(),
            listener: listener.to_string(),
            stats,
            local_replies: LocalReplyCounters::new(metrics, listener),
            access_log,
            rate_limit: config
                .local_rate_limit
                .as_ref()
                .map(|c| crate::filters::LocalRateLimiter::new(c, metrics.filters.rate_limited(listener, "listener"))),
            rls: config.rate_limit_service.as_ref().map(|c| {
                let (over, errors) = metrics.filters.rate_limit_service(listener);
                crate::ratelimit::RateLimitClient::new(c, over, errors)
            }),
            via: config
                .via
                .as_deref()
                .and_then(|v| HeaderValue::from_str(&format!("1.1 {v}")).ok()),
            server: config
                .server_name
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
        }
    }
}

struct ConnCtx {
    rt: Arc<HttpRt>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
    original_dst: Option<SocketAddr>,
    framing: Arc<std::sync::Mutex<FramingTracker>>,
    /// Requests started and in progress (until their response body ends), for the timeouts.
    exchanges: crate::watchdog::Exchanges,
}

pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    _local: SocketAddr,
    rt: Arc<HttpRt>,
    lrt: Arc<ListenerRt>,
    shared: Arc<Shared>,
) {
    let original_dst = crate::tcp::original_dst(&stream);
    let (stream, framing, activity) = Sniffed::new(stream);
    let ctx = Arc::new(ConnCtx {
        framing,
        exchanges: crate::watchdog::Exchanges::default(),
        peer_ip: HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a valid header value"),
        rt: rt.clone(),
        shared,
        peer,
        original_dst,
    });
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let ctx = svc_ctx.clone();
        // Boxed once here: the request state machine is large, and hyper moves it (into a new task
        // per HTTP/2 stream); moving a pointer is cheaper than copying the whole future.
        Box::pin(async move {
            ctx.exchanges.started.fetch_add(1, Ordering::Relaxed);
            // Counted until hyper drops the response body (or this future is dropped).
            let in_flight = crate::body::InFlight::start(&ctx.exchanges.in_flight);
            let resp = handle(&ctx, req).await;
            Ok::<_, Infallible>(resp.map(|b| b.hold(in_flight)))
        })
    });
    let mut drain = lrt.drain_signal();
    let cfg = &rt.config;
    let max_header = (cfg.max_request_headers_kb as usize * 1024).max(8192);
    // Bytes hyper may buffer per connection (HTTP/1 read and write buffers) and per HTTP/2 stream
    // (send buffer); the read buffer must also hold the largest allowed request head.
    let buffer_limit = lrt.config.per_connection_buffer_limit_bytes as usize;
    let limits = crate::watchdog::Limits {
        idle: cfg.idle_timeout,
        request_headers: cfg.request_headers_timeout,
        stream_idle: cfg.stream_idle_timeout,
    };
    let exec = crate::watchdog::StreamExec {
        idle: limits.stream_idle,
        timeouts: rt.stats.rq_idle_timeout.clone(),
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(exec);
    builder
        .http1()
        .max_buf_size(max_header.max(buffer_limit).max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header as u32)
        .max_concurrent_streams(1024)
        .max_send_buf_size(buffer_limit)
        // Fixed generous windows: adaptive (BDP-probing) windows cost a ping round per window update.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .keep_alive_interval(Some(Duration::from_secs(60)));
    let builder = match cfg.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    // Parked (hyper's buffers dropped) whenever an HTTP/1 connection is idle: see `idle`.
    let conn = crate::idle::Parking::new(&builder, cfg.codec, stream, svc, ctx.exchanges.in_flight.clone());
    tokio::pin!(conn);
    let verdict = tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.changed() => None,
        v = crate::watchdog::watch(limits, &activity, &ctx.exchanges) => Some(v),
    };
    use crate::watchdog::Verdict;
    match verdict {
        None => {}
        Some(Verdict::Idle) => {
            rt.stats.cx_idle_timeout.inc();
        }
        Some(Verdict::HeaderTimeout { graceful }) => {
            rt.stats.rq_header_timeout.inc();
            tracing::debug!(peer = %peer, listener = %rt.listener, "request headers timeout: closing the connection");
            if !graceful {
                return;
            }
        }
        Some(Verdict::StreamIdle) => {
            // The client stopped reading (or sending): nothing graceful can reach it.
            rt.stats.rq_idle_timeout.inc();
            tracing::debug!(peer = %peer, listener = %rt.listener, "stream idle timeout: closing the connection");
            return;
        }
    }
    conn.as_mut().graceful_shutdown();
    // Give in-flight requests a bounded time to finish.
    let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
}

/// Per-request facts kept for the access log (only when one is configured).
struct LogRecord {
    logger: Arc<AccessLogger>,
    started_at: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    authority: String,
    protocol: &'static str,
    user_agent: Option<String>,
    request_id: Option<String>,
    xff: Option<String>,
    peer: SocketAddr,
    listener: String,
    route: String,
    cluster: Option<String>,
    upstream_host: Option<SocketAddr>,
    status: u16,
    reason: &'static str,
    attempts: u32,
    upstream_time: Option<Duration>,
}

/// Writes the access log line when the response body finishes (or is abandoned).
struct RequestEnd {
    log: Option<Box<LogRecord>>,
}

impl StreamEnd for RequestEnd {
    fn finish(&mut self, bytes_sent: u64, completed: bool) {
        if let Some(r) = self.log.take() {
            let reason = if !completed && r.reason == "-" { "DC" } else { r.reason };
            r.logger.log(&serde_json::json!({
                "start_time": timestamp(r.started_at),
                "listener": r.listener,
                "method": r.method.as_str(),
                "path": r.path,
                "authority": r.authority,
                "protocol": r.protocol,
                "status": r.status,
                "reason": reason,
                "bytes_sent": bytes_sent,
                "duration_ms": r.start.elapsed().as_secs_f64() * 1000.0,
                "upstream_service_time_ms": r.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                "route": r.route,
                "upstream_cluster": r.cluster,
                "upstream_host": r.upstream_host.map(|a| a.to_string()),
                "attempts": r.attempts,
                "downstream_remote_address": r.peer.to_string(),
                "x_forwarded_for": r.xff,
                "user_agent": r.user_agent,
                "request_id": r.request_id,
            }));
        }
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A response made by the proxy itself. gRPC callers get a trailers-only gRPC error instead, which
/// their client libraries understand.
fn local_reply(rt: &HttpRt, reason: Reason, grpc: bool) -> Response<DownBody> {
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
fn local_reply_as(rt: &HttpRt, reason: Reason, grpc: bool, status: StatusCode, grpc_code: u8) -> Response<DownBody> {
    rt.local_replies.inc(reason.code());
    let mut resp = if grpc {
        let code = GRPC_CODES.get(usize::from(grpc_code)).copied().unwrap_or("2");
        let mut r = Response::new(DownBody::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(reason.body().trim_end()));
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

/// The local reply for a request stopped by a rate limit or a fault abort.
fn stop_reply(rt: &HttpRt, stop: crate::filters::Stop, grpc: bool) -> (Response<DownBody>, Reason) {
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

fn request_host(req: &Request<Incoming>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Rejects request shapes that let a front end and a back end disagree about where a request ends.
fn smuggling_check(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    if req.version() == Version::HTTP_2 {
        // h2 frames its own bodies; these headers are connection-specific and forbidden (RFC 9113 8.2.2).
        return !h.contains_key(header::TRANSFER_ENCODING);
    }
    let te = h.get_all(header::TRANSFER_ENCODING).iter().count();
    let cl: Vec<&HeaderValue> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    if te > 0 && !cl.is_empty() {
        return false;
    }
    if cl.len() > 1 && cl.iter().any(|v| *v != cl[0]) {
        return false;
    }
    true
}

async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<DownBody> {
    let rt = &*ctx.rt;
    // One route table for the whole exchange, even if an update swaps it meanwhile.
    let routes = rt.routes.load_full();
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let mut log = rt.access_log.as_ref().map(|logger| {
        Box::new(LogRecord {
            logger: logger.clone(),
            started_at: SystemTime::now(),
            start,
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            authority: request_host(&req).to_string(),
            protocol: protocol_name(req.version()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            request_id: None,
            xff: None,
            peer: ctx.peer,
            listener: rt.listener.clone(),
            route: String::new(),
            cluster: None,
            upstream_host: None,
            status: 0,
            reason: "-",
            attempts: 0,
            upstream_time: None,
        })
    });

    let ambiguous = req.version() != Version::HTTP_2
        && ctx
            .framing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_verdict()
            .unwrap_or(false);
    let (mut resp, reason, active, route) = if ambiguous || !smuggling_check(&req) {
        (
            local_reply(rt, Reason::DownstreamProtocolError, false),
            Some(Reason::DownstreamProtocolError),
            None,
            None,
        )
    } else if let Some(retry_after_secs) = rt.rate_limit.as_ref().and_then(|l| l.check(req.headers())) {
        let (resp, reason) = stop_reply(rt, crate::filters::Stop::RateLimited { retry_after_secs }, grpc);
        (resp, Some(reason), None, None)
    } else {
        let host = request_host(&req);
        match routes.route(host, req.method(), req.uri(), req.headers()) {
            None => (
                local_reply(rt, Reason::NoRoute, grpc),
                Some(Reason::NoRoute),
                None,
                None,
            ),
            Some((vh, route)) => {
                if let Some(l) = log.as_deref_mut() {
                    l.route = route.name.clone();
                }
                let (mut resp, reason, active) = match &route.action {
                    RouteAction::Forward(f) => {
                        // Rate limit and fault injection, only when the route has them (boxed so
                        // that routes without them do not carry their state in this future).
                        let stop = match route.filters.as_deref() {
                            Some(fx) if fx.checks_before_forward() => {
                                Box::pin(fx.before_forward(req.headers(), rt.rls.as_ref(), &ctx.shared, ctx.peer.ip()))
                                    .await
                            }
                            _ => None,
                        };
                        match stop {
                            Some(stop) => {
                                let (resp, reason) = stop_reply(rt, stop, grpc);
                                (resp, Some(reason), None)
                            }
                            None => forward(ctx, req, &routes, vh, route, f, grpc, start, log.as_deref_mut()).await,
                        }
                    }
                    RouteAction::Redirect(r) => (
                        redirect(&req, r, route.rewrite_prefix_len),
                        Some(Reason::DirectResponse),
                        None,
                    ),
                    RouteAction::DirectResponse(d) => {
                        let mut resp = Response::new(DownBody::full(d.body.clone()));
                        *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
                        if !d.body.is_empty() {
                            resp.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; charset=utf-8"),
                            );
                        }
                        (resp, Some(Reason::DirectResponse), None)
                    }
                };
                // Response header mutations: route, then virtual host, then route config.
                let h = resp.headers_mut();
                route.mutations.response.apply(h);
                vh.mutations.response.apply(h);
                routes.mutations.response.apply(h);
                (resp, reason, active, Some(route))
            }
        }
    };
    if let Some(v) = &rt.via {
        resp.headers_mut().append(header::VIA, v.clone());
    }
    if let Some(s) = &rt.server {
        resp.headers_mut().insert(header::SERVER, s.clone());
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    rt.stats.record(status, elapsed);
    if let Some(r) = route {
        r.stats.record(status, elapsed);
    }
    if active.is_none() && log.is_none() {
        return resp;
    }
    if let Some(l) = log.as_deref_mut() {
        l.status = status;
        l.reason = reason.map_or("-", Reason::code);
    }
    let (parts, body) = resp.into_parts();
    let end: Option<Box<dyn StreamEnd>> = log.map(|l| Box::new(RequestEnd { log: Some(l) }) as Box<dyn StreamEnd>);
    Response::from_parts(parts, body.on_end(active, end))
}

fn redirect(req: &Request<Incoming>, r: &weft_config::Redirect, matched_prefix: Option<usize>) -> Response<DownBody> {
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

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including any named in `Connection`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass of cheap name comparisons (standard header
    // names compare as enum values) avoids nine hash lookups.
    let hop = |k: &HeaderName| {
        k == header::CONNECTION
            || k == header::UPGRADE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
            || k == header::TRANSFER_ENCODING
            || k == header::TRAILER
            || k == header::PROXY_AUTHENTICATE
            || k == header::PROXY_AUTHORIZATION
    };
    if !h.keys().any(hop) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for token in s.split(',') {
                let t = token.trim();
                if t.is_empty() || (keep_upgrade && t.eq_ignore_ascii_case("upgrade")) {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()) {
                    named.push(n);
                }
            }
        }
    }
    for n in named {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::TRAILER);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
                .unwrap_or(false)
        })
}

fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // UUID v4: version nibble 4, variant bits 10.
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut shift = 128;
    for (i, b) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *b = b'-';
        } else {
            shift -= 4;
            *b = HEX[((n >> shift) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

/// `peer_ip` is the client address as text (already formatted once per connection).
fn compute_hash(policies: &[HashPolicy], req: &Request<Incoming>, peer_ip: &[u8]) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let (h, terminal) = match p {
            HashPolicy::Header { name, terminal } => (
                req.headers()
                    .get(name.as_str())
                    .map(|v| weft_lb::hash_key(v.as_bytes())),
                *terminal,
            ),
            HashPolicy::Cookie { name, terminal } => (
                cookie(req.headers(), name).map(|v| weft_lb::hash_key(v.as_bytes())),
                *terminal,
            ),
            HashPolicy::SourceIp { terminal } => (Some(weft_lb::hash_key(peer_ip)), *terminal),
            HashPolicy::QueryParameter { name, terminal } => (
                req.uri()
                    .query()
                    .and_then(|q| crate::router::query_param(q, name))
                    .map(|v| weft_lb::hash_key(v.as_bytes())),
                *terminal,
            ),
        };
        if let Some(h) = h {
            // Combine like Envoy: rotate-left and xor.
            hash = Some(match hash {
                None => h,
                Some(prev) => prev.rotate_left(1) ^ h,
            });
            if terminal {
                break;
            }
        }
    }
    hash
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(val);
                }
            }
        }
    }
    None
}

/// How one upstream try failed.
enum TryError {
    Connect(ConnectError),
    /// The request was sent (at least partly) and the connection failed before a response.
    Reset(hyper::Error),
    /// Failed before anything was sent: always safe to try again.
    NotSent,
    Protocol(hyper::Error),
    Timeout,
}

impl TryError {
    fn detail(&self) -> String {
        match self {
            TryError::Connect(e) => e.to_string(),
            TryError::Reset(e) | TryError::Protocol(e) => e.to_string(),
            TryError::NotSent => "connection closed before the request was sent".into(),
            TryError::Timeout => "timeout".into(),
        }
    }

    fn reason(&self) -> Reason {
        match self {
            TryError::Connect(ConnectError::Overflow) => Reason::Overflow,
            TryError::Connect(_) => Reason::UpstreamConnectFailure,
            TryError::Reset(_) | TryError::NotSent => Reason::UpstreamReset,
            TryError::Protocol(_) => Reason::UpstreamProtocolError,
            TryError::Timeout => Reason::UpstreamTimeout,
        }
    }
}

fn classify(e: hyper::Error) -> TryError {
    if e.is_parse() || e.is_parse_status() {
        TryError::Protocol(e)
    } else {
        TryError::Reset(e)
    }
}

fn retriable_error(p: &RetryPolicy, e: &TryError) -> bool {
    let on = &p.retry_on;
    match e {
        TryError::Connect(ConnectError::Overflow) => false,
        TryError::Connect(_) => on.connect_failure || on.five_xx || on.gateway_error,
        TryError::Reset(_) | TryError::NotSent => on.reset || on.five_xx || on.gateway_error,
        TryError::Protocol(_) => on.five_xx || on.gateway_error,
        TryError::Timeout => on.per_try_timeout || on.five_xx || on.gateway_error,
    }
}

fn retriable_status(p: &RetryPolicy, status: u16, grpc_unavailable: bool) -> bool {
    let on = &p.retry_on;
    (on.five_xx && status >= 500)
        || (on.gateway_error && matches!(status, 502..=504))
        || (on.retriable_status_codes && p.retriable_status_codes.contains(&status))
        || grpc_unavailable && (on.five_xx || on.gateway_error)
}

/// Exponential backoff with full jitter.
fn backoff(p: &RetryPolicy, retry: u32) -> Duration {
    let base = p.backoff_base.as_micros() as u64;
    let cap = p.backoff_max.as_micros() as u64;
    let exp = base.saturating_mul(1u64 << retry.min(20)).min(cap).max(1);
    Duration::from_micros(fastrand::u64(0..=exp))
}

/// The upstream request before its body: cloned per try when retries are possible.
pub(crate) struct Prepared {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Prepared {
    pub(crate) fn into_request(self, body: UpBody) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method;
        *r.uri_mut() = self.uri;
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers;
        r
    }
}

/// Gives a request the shape its cluster's protocol needs. HTTP/1.1: origin-form URI, HTTP/1.1,
/// and `Host` set to the authority. HTTP/2: absolute URI with the authority, no `Host` header.
/// The authority is `authority_override`, else the URI's, else (HTTP/2) the `Host` header.
pub(crate) fn shape_request(
    protocol: UpstreamProtocol,
    method: Method,
    uri: Uri,
    rewritten_path: Option<String>,
    authority_override: Option<&str>,
    headers: HeaderMap,
) -> Prepared {
    let mut prepared = Prepared {
        method,
        uri: Uri::default(),
        version: Version::HTTP_11,
        headers,
    };
    match protocol {
        UpstreamProtocol::Http1 => {
            // Origin-form URI and a Host header, whatever the downstream protocol was.
            let authority = authority_override
                .or_else(|| uri.authority().map(|a| a.as_str()))
                .map(str::to_string);
            prepared.uri = match rewritten_path {
                Some(p) => p.parse().unwrap_or_default(),
                None if uri.authority().is_none() => uri,
                None => uri
                    .path_and_query()
                    .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone())),
            };
            if let Some(a) = authority {
                if let Ok(v) = HeaderValue::from_str(&a) {
                    prepared.headers.insert(header::HOST, v);
                }
            }
        }
        UpstreamProtocol::Http2 => {
            let authority = authority_override
                .map(str::to_string)
                .or_else(|| uri.authority().map(|a| a.as_str().to_string()))
                .or_else(|| {
                    prepared
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "localhost".to_string());
            let pq = rewritten_path.unwrap_or_else(|| uri.path_and_query().map_or("/", |p| p.as_str()).to_string());
            prepared.uri = Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(pq.as_str())
                .build()
                .unwrap_or_default();
            prepared.version = Version::HTTP_2;
            prepared.headers.remove(header::HOST);
        }
    }
    prepared
}

enum BodySource {
    Replayable(Option<Bytes>),
    Stream(Option<Incoming>, Arc<Upload>),
}

impl BodySource {
    /// The streamed upload's record, when the body is streamed from the client.
    fn upload(&self) -> Option<&Upload> {
        match self {
            BodySource::Stream(_, u) => Some(u),
            BodySource::Replayable(_) => None,
        }
    }

    /// Why the exchange failed on the client's side, if it did: a malformed or aborted upload.
    fn client_fault(&self) -> Option<Reason> {
        match self.upload().map(|u| u.state()) {
            Some(UploadState::Malformed) => Some(Reason::DownstreamProtocolError),
            Some(UploadState::Aborted) => Some(Reason::DownstreamDisconnect),
            _ => None,
        }
    }
}

#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
async fn forward(
    ctx: &ConnCtx,
    req: Request<Incoming>,
    route_table: &RouteTable,
    vh: &VirtualHostEntry,
    route: &RouteEntry,
    action: &ForwardAction,
    grpc: bool,
    start: Instant,
    mut log: Option<&mut LogRecord>,
) -> (Response<DownBody>, Option<Reason>, Option<ActiveRequest>) {
    let rt = &*ctx.rt;
    let deadline = action.timeout.map(|t| start + t);

    // Cluster: one, or a weighted pick.
    let cluster_name = if action.clusters.len() == 1 {
        &action.clusters[0].name
    } else {
        let mut x = fastrand::u32(0..route.total_weight.max(1));
        let mut chosen = &action.clusters[0].name;
        for c in &action.clusters {
            if x < c.weight {
                chosen = &c.name;
                break;
            }
            x -= c.weight;
        }
        chosen
    };
    let snapshot = ctx.shared.snapshot.load();
    let Some(cluster) = snapshot.clusters.get(cluster_name).cloned() else {
        return (local_reply(rt, Reason::NoCluster, grpc), Some(Reason::NoCluster), None);
    };
    drop(snapshot);
    if let Some(l) = log.as_deref_mut() {
        l.cluster = Some(cluster.name().to_string());
    }
    let hash = if action.hash_policy.is_empty() {
        None
    } else {
        compute_hash(&action.hash_policy, &req, ctx.peer_ip.as_bytes())
    };
    // Subset routing: the tag header's value selects hosts labelled with it; untagged requests go to
    // the default subset when one is configured.
    let subset: Option<crate::hostset::Labels> = cluster.config.subsets.as_ref().and_then(|s| {
        let tagged = s
            .tag_header
            .as_ref()
            .and_then(|h| req.headers().get(h.as_str()))
            .and_then(|v| v.to_str().ok());
        match tagged {
            Some(v) => Some([(s.tag_label.clone(), v.to_string())].into_iter().collect()),
            None if !s.default_subset.is_empty() => Some(s.default_subset.clone()),
            None => None,
        }
    });
    let original_dst = if matches!(cluster.config.discovery, Discovery::OriginalDst) {
        let from_header = req
            .headers()
            .get(&ORIGINAL_DST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<SocketAddr>().ok());
        match from_header.or(ctx.original_dst) {
            Some(a) => Some(a),
            None => {
                return (
                    local_reply(rt, Reason::NoHealthyUpstream, grpc),
                    Some(Reason::NoHealthyUpstream),
                    None,
                )
            }
        }
    } else {
        None
    };

    let upgrade = is_upgrade(&req) && cluster.protocol() == UpstreamProtocol::Http1;
    let mut req = req;
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Headers: hop-by-hop, forwarding, ids, mutations.
    let down_version = parts.version;
    let mut headers = std::mem::take(&mut parts.headers);
    // Room for the forwarding headers added below, so the map grows at most once.
    headers.reserve(4);
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::EXPECT);
    if down_version == Version::HTTP_2 {
        // `te: trailers` is the one TE value allowed through (gRPC needs it).
        headers.remove(header::TE);
    } else if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
    if grpc {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if rt.config.use_remote_address {
        match headers.get(&X_FORWARDED_FOR) {
            Some(existing) => {
                let mut v = existing.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(ctx.peer_ip.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    headers.insert(&X_FORWARDED_FOR, v);
                }
            }
            None => {
                headers.insert(&X_FORWARDED_FOR, ctx.peer_ip.clone());
            }
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if rt.config.generate_request_id && !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(&X_REQUEST_ID, request_id());
    }
    if let Some(v) = &rt.via {
        headers.append(header::VIA, v.clone());
    }
    headers.remove(&ORIGINAL_DST_HEADER);
    route_table.mutations.request.apply(&mut headers);
    vh.mutations.request.apply(&mut headers);
    route.mutations.request.apply(&mut headers);
    if let Some(l) = log.as_deref_mut() {
        l.request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        l.xff = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }

    // Path: rewritten only when the route asks for it; otherwise the original is reused as is.
    let rewritten_path = match (&action.prefix_rewrite, route.rewrite_prefix_len) {
        (Some(new_prefix), Some(matched)) => {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            Some(format!("{new_prefix}{}", pq.get(matched..).unwrap_or("")))
        }
        _ => None,
    };
    let policy = route.retry_policy.as_ref();
    // Mirror policies this request was sampled into (never for upgrades).
    let filters = route.filters.as_deref();
    let mirror_mask = match filters {
        Some(fx) if !upgrade => fx.sample_mirrors(),
        _ => 0,
    };
    let body_len = body.size_hint().exact();
    let mut source = if body.is_end_stream() {
        BodySource::Replayable(None)
    } else if (mirror_mask != 0 || policy.is_some_and(|p| p.num_retries > 0))
        && body_len.is_some_and(|n| n <= RETRY_BUFFER_LIMIT.min(crate::filters::MIRROR_BODY_LIMIT))
    {
        match body.collect().await {
            Ok(c) => BodySource::Replayable(Some(c.to_bytes())),
            Err(_) => {
                return (
                    local_reply(rt, Reason::DownstreamProtocolError, grpc),
                    Some(Reason::DownstreamProtocolError),
                    None,
                )
            }
        }
    } else {
        BodySource::Stream(Some(body), Arc::new(Upload::default()))
    };
    if let (Some(fx), true) = (filters, mirror_mask != 0) {
        match &source {
            BodySource::Replayable(b) => fx.spawn_mirrors(
                mirror_mask,
                &ctx.shared,
                &parts.method,
                &parts.uri,
                rewritten_path.as_deref(),
                action.host_rewrite.as_deref(),
                &headers,
                b.as_ref(),
                action.timeout,
            ),
            BodySource::Stream(..) => fx.skip_mirrors(mirror_mask),
        }
    }

    let mut prepared = shape_request(
        cluster.protocol(),
        parts.method,
        parts.uri,
        rewritten_path,
        action.host_rewrite.as_deref(),
        headers,
    );

    let max_tries = 1 + policy.map_or(0, |p| p.num_retries);
    let mut attempt = 0u32;
    let mut last_host: Option<Arc<Host>> = None;
    let mut _retry_guard: Option<crate::cluster::RetryGuard> = None;
    loop {
        attempt += 1;
        if let Some(l) = log.as_deref_mut() {
            l.attempts = attempt;
        }
        let host = match original_dst {
            Some(a) => cluster.original_dst_host(a),
            None => match cluster.pick(hash, last_host.as_ref(), subset.as_ref()) {
                Some(h) => h,
                None => {
                    return (
                        local_reply(rt, Reason::NoHealthyUpstream, grpc),
                        Some(Reason::NoHealthyUpstream),
                        None,
                    )
                }
            },
        };
        if let Some(l) = log.as_deref_mut() {
            l.upstream_host = Some(host.address);
        }
        let Some(active) = cluster.start_request(&host, action.priority) else {
            return (local_reply(rt, Reason::Overflow, grpc), Some(Reason::Overflow), None);
        };
        let is_last = attempt >= max_tries;
        let body = match &mut source {
            BodySource::Replayable(None) => UpBody::Empty,
            BodySource::Replayable(Some(b)) => UpBody::Full(Some(b.clone())),
            BodySource::Stream(s, up) => match s.take() {
                Some(b) => UpBody::Stream(b, up.clone()),
                None => UpBody::Empty, // unreachable: a streamed body is never retried once taken
            },
        };
        let replayable = matches!(source, BodySource::Replayable(_));
        let request = {
            let headers = if is_last {
                std::mem::take(&mut prepared.headers)
            } else {
                prepared.headers.clone()
            };
            let mut r = Request::new(body);
            *r.method_mut() = prepared.method.clone();
            *r.uri_mut() = prepared.uri.clone();
            *r.version_mut() = prepared.version;
            *r.headers_mut() = headers;
            if action.auto_host_rewrite {
                let authority = cluster.authority_for(&host);
                match prepared.version {
                    Version::HTTP_2 => {
                        let mut p = r.uri().clone().into_parts();
                        p.authority = authority.parse().ok();
                        if let Ok(u) = Uri::from_parts(p) {
                            *r.uri_mut() = u;
                        }
                    }
                    _ => {
                        if let Ok(v) = HeaderValue::from_str(&authority) {
                            r.headers_mut().insert(header::HOST, v);
                        }
                    }
                }
            }
            r
        };
        let try_start = Instant::now();
        let per_try = policy.and_then(|p| p.per_try_timeout);
        let try_deadline = match (deadline, per_try) {
            (Some(d), Some(t)) => Some(d.min(try_start + t)),
            (Some(d), None) => Some(d),
            (None, Some(t)) => Some(try_start + t),
            (None, None) => None,
        };
        // Like Envoy, the route timeout counts from the end of the client's request: a slow upload
        // is bounded by the stream idle timeout, not blamed on the upstream as a timeout.
        let upload = source.upload().zip(action.timeout);
        let outcome = send_once(&cluster, &host, request, try_deadline, action.priority, upload).await;
        let outcome = match outcome {
            Err((e, unsent)) => {
                // A streamed body handed to hyper is gone; one never sent can be put back for a retry.
                if let (Some(UpBody::Stream(b, _)), BodySource::Stream(slot, _)) = (unsent, &mut source) {
                    *slot = Some(b);
                }
                Err(e)
            }
            Ok(r) => Ok(r),
        };
        // The client broke its own request (bad chunked framing, an aborted upload): whatever the
        // upstream did about the truncated request is not its fault. Answer the client, and leave
        // the host's outlier state, error counts and retry budget alone.
        if let Some(reason) = source.client_fault() {
            tracing::debug!(cluster = %cluster.name(), host = %host.address, reason = reason.code(), "request body failed on the client side");
            return (local_reply(rt, reason, grpc), Some(reason), None);
        }
        match outcome {
            Ok((resp, pooled)) => {
                let status = resp.status().as_u16();
                let up_elapsed = try_start.elapsed();
                cluster.report(&host, Outcome::Status(status));
                cluster.stats.record(status, up_elapsed);
                if status >= 500 {
                    host.rq_error.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let grpc_unavailable = grpc && resp.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"14");
                let retry =
                    (!is_last && replayable && policy.is_some_and(|p| retriable_status(p, status, grpc_unavailable)))
                        .then(|| cluster.try_start_retry(action.priority))
                        .flatten();
                if let Some(guard) = retry {
                    drop(resp);
                    drop(pooled);
                    drop(active);
                    let p = policy.expect("retry implies a policy");
                    let wait = backoff(p, attempt - 1);
                    let late = deadline.is_some_and(|d| Instant::now() + wait >= d);
                    if !late {
                        tokio::time::sleep(wait).await;
                    }
                    // The retry stays counted against the cluster until its try completes.
                    _retry_guard = Some(guard);
                    if late {
                        cluster.stats.rq_timeout.inc();
                        return (
                            local_reply(rt, Reason::UpstreamTimeout, grpc),
                            Some(Reason::UpstreamTimeout),
                            None,
                        );
                    }
                    last_host = Some(host);
                    continue;
                }
                if let Some(l) = log.as_deref_mut() {
                    l.upstream_time = Some(up_elapsed);
                }
                let resp = finish_response(resp, pooled, down_upgrade, upgrade);
                return (resp, None, Some(active));
            }
            Err(e) => {
                host.rq_error.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !matches!(e, TryError::Connect(ConnectError::Overflow)) {
                    cluster.report(&host, Outcome::LocalFailure);
                }
                if matches!(e, TryError::Timeout) {
                    cluster.stats.rq_timeout.inc();
                }
                let total_timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                let can_resend = match &source {
                    BodySource::Replayable(_) => true,
                    BodySource::Stream(s, _) => s.is_some(),
                };
                let retry =
                    (!is_last && !total_timed_out && can_resend && policy.is_some_and(|p| retriable_error(p, &e)))
                        .then(|| cluster.try_start_retry(action.priority))
                        .flatten();
                tracing::debug!(cluster = %cluster.name(), host = %host.address, attempt, reason = e.reason().code(), detail = %e.detail(), retry = retry.is_some(), "upstream try failed");
                if let Some(guard) = retry {
                    drop(active);
                    let p = policy.expect("retry implies a policy");
                    tokio::time::sleep(backoff(p, attempt - 1)).await;
                    _retry_guard = Some(guard);
                    last_host = Some(host);
                    continue;
                }
                let reason = if total_timed_out {
                    Reason::UpstreamTimeout
                } else {
                    e.reason()
                };
                return (local_reply(rt, reason, grpc), Some(reason), None);
            }
        }
    }
}

type TryOk = (Response<Incoming>, Option<crate::cluster::PooledH1>);

/// One try on one host. On failure, hands back the body if it was never sent.
async fn send_once(
    cluster: &Arc<ClusterRt>,
    host: &Arc<Host>,
    request: Request<UpBody>,
    deadline: Option<Instant>,
    priority: weft_config::RoutePriority,
    upload: Option<(&Upload, Duration)>,
) -> Result<TryOk, (TryError, Option<UpBody>)> {
    let fut = async {
        match cluster.protocol() {
            UpstreamProtocol::Http1 => {
                let mut request = request;
                // A pooled connection may have been closed by the server just now; a request that
                // was never written is safe to put on another connection.
                for _ in 0..3 {
                    let mut pooled = match cluster.checkout_h1(host, deadline, priority).await {
                        Ok(p) => p,
                        Err(e) => {
                            let (_, body) = request.into_parts();
                            return Err((TryError::Connect(e), Some(body)));
                        }
                    };
                    match pooled.sender.try_send_request(request).await {
                        Ok(resp) => return Ok((resp, Some(pooled))),
                        Err(mut e) => match e.take_message() {
                            Some(r) => request = r,
                            None => return Err((classify(e.into_error()), None)),
                        },
                    }
                }
                let (_, body) = request.into_parts();
                Err((TryError::NotSent, Some(body)))
            }
            UpstreamProtocol::Http2 => {
                let mut request = request;
                for _ in 0..3 {
                    let mut sender = match cluster.checkout_h2(host, priority).await {
                        Ok(s) => s,
                        Err(e) => {
                            let (_, body) = request.into_parts();
                            return Err((TryError::Connect(e), Some(body)));
                        }
                    };
                    match sender.try_send_request(request).await {
                        Ok(resp) => return Ok((resp, None)),
                        Err(mut e) => match e.take_message() {
                            Some(r) => request = r,
                            None => return Err((classify(e.into_error()), None)),
                        },
                    }
                }
                let (_, body) = request.into_parts();
                Err((TryError::NotSent, Some(body)))
            }
        }
    };
    let Some(mut d) = deadline else {
        return fut.await;
    };
    tokio::pin!(fut);
    loop {
        match tokio::time::timeout_at(d.into(), fut.as_mut()).await {
            Ok(r) => return r,
            Err(_) => match &upload {
                // The client is still sending: the timer restarts when it could have finished.
                Some((up, t)) if up.state() == UploadState::InProgress => d = Instant::now() + *t,
                _ => return Err((TryError::Timeout, None)),
            },
        }
    }
}

/// Sends one request to a cluster outside any downstream exchange (mirroring): picks a host,
/// counts the request against the cluster's circuit breaker, sends it, and reads the response body
/// to its end so the connection can return to the pool. Everything is bounded by `deadline`.
pub(crate) async fn send_detached(
    cluster: Arc<ClusterRt>,
    request: Request<UpBody>,
    deadline: Instant,
) -> Result<u16, Reason> {
    let host = cluster.pick(None, None, None).ok_or(Reason::NoHealthyUpstream)?;
    // Shadow traffic counts as default priority.
    let priority = weft_config::RoutePriority::Default;
    let active = cluster.start_request(&host, priority).ok_or(Reason::Overflow)?;
    let start = Instant::now();
    let (resp, pooled) = match send_once(&cluster, &host, request, Some(deadline), priority, None).await {
        Ok(r) => r,
        Err((e, _)) => {
            host.rq_error.fetch_add(1, Ordering::Relaxed);
            if matches!(e, TryError::Timeout) {
                cluster.stats.rq_timeout.inc();
            }
            return Err(e.reason());
        }
    };
    let status = resp.status().as_u16();
    cluster.stats.record(status, start.elapsed());
    if status >= 500 {
        host.rq_error.fetch_add(1, Ordering::Relaxed);
    }
    let mut body = resp.into_body();
    let drained = tokio::time::timeout_at(deadline.into(), async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if drained {
        if let Some(p) = pooled {
            p.release();
        }
    }
    drop(active);
    Ok(status)
}

fn finish_response(
    mut resp: Response<Incoming>,
    pooled: Option<crate::cluster::PooledH1>,
    down_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade: bool,
) -> Response<DownBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let up_upgrade = (switching && down_upgrade.is_some()).then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade && switching);
    if switching {
        if let (Some(down), Some(up)) = (down_upgrade, up_upgrade) {
            // The upstream connection now belongs to the tunnel, never to the pool.
            drop(pooled);
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
                    return;
                };
                let mut down = TokioIo::new(down);
                let mut up = TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
            return Response::from_parts(parts, DownBody::empty());
        }
    }
    Response::from_parts(parts, DownBody::upstream(body, pooled))
}
