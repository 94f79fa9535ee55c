//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 downstream, routes each request, forwards
//! it upstream with retries and timeouts, and streams the response back.
//!
//! One request, in order (each step in its own module):
//! - [`pipeline`]: smuggling checks, listener rate limit, virtual host and route, then the route's
//!   action (redirect | direct response | route filters then forward); and the one exit where every
//!   outcome, success or [`weft_core::Error`], becomes a response, stats and a log record.
//! - [`forward`]: the request plan (cluster, subset, hash, original destination), header rewriting,
//!   the body policy (stream or buffer for retries and mirrors), and the attempt loop whose every
//!   try ends in a retry decision.
//! - [`reply`]: the local replies (plain or gRPC), redirects and direct responses.
//! - [`headers`]: header helpers (hop-by-hop, hashing, request ids).
//! - [`log`]: the access-log record and the per-method gRPC counts, written when the response
//!   body ends.

mod forward;
mod headers;
mod log;
mod pipeline;
mod reply;

use crate::access_log::AccessLogger;
use crate::h1_framing::{FramingTracker, Sniffed};
use crate::router::RouteTable;
use crate::server::{ListenerRt, LocalReplyCounters};
use crate::stats::{ListenerStats, Metrics};
use http::header::HeaderValue;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use weft_config::{Codec, HttpConnectionManager};
use weft_upstream::ClusterLookup;

/// How long a connection asked to close gracefully may take to finish its requests.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// When a listener drains, an HTTP/1.1 connection stays open this long for its client's next
/// request, answered with `connection: close` (closing an idle keep-alive connection at once races
/// with a request the client may be sending; Envoy's HCM drain timeout has the same default).
const HTTP1_DRAIN_WINDOW: Duration = Duration::from_secs(5);

pub struct HttpRt {
    pub config: HttpConnectionManager,
    pub listener: String,
    /// Swapped in place when only the route configuration changes (an RDS update), so that open
    /// connections pick up new routes at their next request instead of being drained.
    pub routes: arc_swap::ArcSwap<RouteTable>,
    pub stats: Arc<ListenerStats>,
    pub local_replies: LocalReplyCounters,
    pub access_log: Option<Arc<AccessLogger>>,
    /// Entries for Envoy's gRPC access-log service, when the connection manager has such a log.
    pub grpc_log: Option<Arc<weft_telemetry::als::GrpcLogger>>,
    /// The connection manager's `local_rate_limit`, shared by every worker.
    pub rate_limit: Option<crate::filters::LocalRateLimiter>,
    /// The connection manager's authorization (RBAC), evaluated before anything else but JWT
    /// authentication.
    pub authz: Option<weft_route::authz::Authorizer>,
    /// JWT request authentication (Envoy `jwt_authn`), first of all; its claims feed authorization.
    pub jwt: Option<weft_jwt::JwtAuthn>,
    /// The connection manager's global rate limit service, asked by routes with `rate_limits`.
    pub rls: Option<crate::ratelimit::RateLimitClient>,
    /// Distributed tracing, when the connection manager configures it (`None`: one branch per request).
    pub tracer: Option<Arc<weft_core::trace::Tracer>>,
    /// Istio-standard request metrics (on unless the node's metadata turns them off).
    pub istio: Option<Arc<weft_core::istio::IstioReporter>>,
    /// The process's end of the drain timer: upgraded connections (WebSocket tunnels) then close
    /// with a FIN both ways (see [`crate::tcp::tunnel`]).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Per-method counts of gRPC / Dubbo3 Triple calls, on the RPC proxy's metric families
    /// (`weft_rpc_requests_total{listener, method}`, method `<service>/<method>`); made at the
    /// listener's first gRPC call, so HTTP-only listeners add no series.
    pub grpc_stats: std::sync::OnceLock<Arc<weft_rpc::metrics::ListenerRpcStats>>,
    via: Option<HeaderValue>,
    server: Option<HeaderValue>,
}

/// Distinct gRPC methods with their own metric label per listener; later ones count as `other`
/// (as the RPC listeners' default `max_method_labels`).
pub const GRPC_METHOD_LABELS: u32 = 200;

impl HttpRt {
    pub fn new(
        config: &HttpConnectionManager,
        listener: &str,
        stats: Arc<ListenerStats>,
        metrics: &Metrics,
        access_log: Option<Arc<AccessLogger>>,
        jwks: &weft_jwt::JwksCache,
    ) -> HttpRt {
        HttpRt {
            routes: arc_swap::ArcSwap::from_pointee(RouteTable::new(&config.route_config, listener, metrics)),
            config: config.clone(),
            listener: listener.to_string(),
            stats,
            local_replies: LocalReplyCounters::new(metrics, listener),
            access_log,
            grpc_log: None,
            rate_limit: config
                .local_rate_limit
                .as_ref()
                .map(|c| crate::filters::LocalRateLimiter::new(c, metrics.filters.rate_limited(listener, "listener"))),
            authz: config.authorization.as_ref().map(|a| {
                let [allowed, denied, shadow_allowed, shadow_denied] = metrics.filters.rbac(listener);
                weft_route::authz::Authorizer::new(
                    a,
                    Some(weft_route::authz::AuthzCounters {
                        allowed,
                        denied,
                        shadow_allowed,
                        shadow_denied,
                    }),
                )
            }),
            jwt: config.jwt_authn.as_deref().map(|j| weft_jwt::JwtAuthn::new(j, jwks)),
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
            tracer: None,
            istio: None,
            stop: None,
            grpc_stats: std::sync::OnceLock::new(),
        }
    }

    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> HttpRt {
        self.stop = Some(stop);
        self
    }

    pub fn with_istio(mut self, istio: Option<Arc<weft_core::istio::IstioReporter>>) -> HttpRt {
        self.istio = istio;
        self
    }

    pub fn with_grpc_log(mut self, l: Option<Arc<weft_telemetry::als::GrpcLogger>>) -> HttpRt {
        self.grpc_log = l;
        self
    }

    pub fn with_tracer(mut self, tracer: Option<Arc<weft_core::trace::Tracer>>) -> HttpRt {
        self.tracer = tracer;
        self
    }
}

/// One downstream connection's context, shared by its requests.
struct ConnCtx {
    rt: Arc<HttpRt>,
    /// The running configuration's clusters: all the request path sees of the process.
    clusters: Arc<dyn ClusterLookup>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
    original_dst: Option<SocketAddr>,
    /// The accepting listener's `original_source` (Envoy's original_src listener filter).
    original_source: bool,
    /// Its `original_source_mark` (SO_MARK on those connections; 0: none).
    original_source_mark: u32,
    /// The address the client connected to (its original destination when redirected).
    local: Option<SocketAddr>,
    framing: Arc<parking_lot::Mutex<FramingTracker>>,
    /// Requests started and in progress (until their response body ends), for the timeouts.
    exchanges: crate::watchdog::Exchanges,
    /// Set when the listener drains: HTTP/1 responses then carry `connection: close`.
    draining: std::sync::atomic::AtomicBool,
    /// Set for a graceful shutdown: an HTTP/1 connection closes at its next request boundary,
    /// an HTTP/2 one sends GOAWAY.
    closing: std::sync::atomic::AtomicBool,
    /// On a TLS listener (including its plaintext connections when permissive): the peer's
    /// identity and the x-forwarded-client-cert policy. `None` on plaintext listeners.
    tls: Option<Arc<crate::tls::ConnTls>>,
    /// Set when a response upgraded the connection: the tunnel's end, which the connection (and
    /// its place in the listener's open connections, which a drain waits for) outlives.
    upgraded: std::sync::atomic::AtomicBool,
    tunnel: parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// The route timeout's timer, kept between the connection's requests (taken by one request
    /// at a time; concurrent HTTP/2 streams make their own).
    try_timer: parking_lot::Mutex<weft_upstream::client::TryTimer>,
}

pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    _local: SocketAddr,
    rt: Arc<HttpRt>,
    lrt: Arc<ListenerRt>,
    clusters: Arc<dyn ClusterLookup>,
) {
    let original_dst = crate::interception::original_dst(&stream, &lrt.config);
    let codec = rt.config.codec;
    serve_io(stream, peer, original_dst, rt, lrt, clusters, None, codec).await
}

/// Serves one connection over any byte stream (TCP, or TLS from `crate::tls`). `codec` is the
/// listener's, or the one ALPN chose.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_io<IO: crate::idle::ConnIo>(
    stream: IO,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    rt: Arc<HttpRt>,
    lrt: Arc<ListenerRt>,
    clusters: Arc<dyn ClusterLookup>,
    tls: Option<Arc<crate::tls::ConnTls>>,
    codec: Codec,
) {
    // Only an Envoy-style or gRPC access log reads it: no getsockname per connection otherwise.
    // Authorization reads it too (destination port / IP), and generated hash cookies.
    let local = match rt.access_log.as_ref().and_then(|l| l.format()).is_some()
        || rt.grpc_log.is_some()
        || rt.authz.is_some()
        || rt.routes.load().generates_cookies
    {
        true => original_dst.or_else(|| stream.local_addr()),
        false => original_dst,
    };
    let (stream, framing, activity) = Sniffed::new(stream);
    // weft's own HTTP/1 server frames requests itself; the tracker resumes if hyper's server
    // takes the connection over.
    let stream = match codec {
        Codec::Http2 => stream,
        _ => stream.untracked(),
    };
    let ctx = Arc::new(ConnCtx {
        framing,
        exchanges: crate::watchdog::Exchanges::default(),
        draining: std::sync::atomic::AtomicBool::new(false),
        closing: std::sync::atomic::AtomicBool::new(false),
        peer_ip: HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a valid header value"),
        rt: rt.clone(),
        clusters,
        peer,
        original_dst,
        original_source: lrt.config.original_source,
        original_source_mark: lrt.config.original_source_mark,
        local,
        tls,
        upgraded: std::sync::atomic::AtomicBool::new(false),
        tunnel: parking_lot::Mutex::new(None),
        try_timer: parking_lot::Mutex::new(weft_upstream::client::TryTimer::default()),
    });
    serve_conn(&ctx, stream, activity, peer, rt, lrt, codec).await;
    if ctx.upgraded.load(Ordering::Relaxed) {
        let tunnel = ctx.tunnel.lock().take();
        if let Some(end) = tunnel {
            let _ = end.await;
        }
    }
}

/// Serves a connection with hyper's HTTP/1 server, from a protocol switch on (WebSocket
/// upgrades, CONNECT). `fresh`: no request was served on it before.
async fn serve_hyper<IO: crate::idle::ConnIo>(
    ctx: &Arc<ConnCtx>,
    io: crate::idle::HyperIo<IO>,
    rt: &HttpRt,
    lrt: &ListenerRt,
    fresh: bool,
) {
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ctx = svc_ctx.clone();
        let req = req.map(weft_upstream::body::RequestBody::Hyper);
        // Boxed once here: the request state machine is large, and hyper moves it; moving a
        // pointer is cheaper than copying the whole future. Built in the allocation, not copied
        // into it (allocated before the future is built, as `h2_server` does).
        let fut = Box::write(Box::new_uninit(), async move {
            Ok::<_, Infallible>(pipeline::handle(&ctx, req).await.into_inner())
        });
        Box::into_pin(fut)
    });
    let max_header = (rt.config.max_request_headers_kb as usize * 1024).max(8192);
    // Bytes hyper may buffer per connection (read and write buffers); the read buffer must also
    // hold the largest allowed request head.
    let buffer_limit = lrt.config.per_connection_buffer_limit_bytes as usize;
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(max_header.max(buffer_limit).max(8192))
        .keep_alive(true);
    let builder = builder.http1_only();
    let in_flight = ctx.exchanges.in_flight.clone();
    let _ = crate::idle::Parking::new(&builder, Codec::Http1, io, svc, in_flight, fresh, &ctx.closing).await;
}

/// Serves a connection with weft's own HTTP/2 server (`crate::h2_server`).
async fn serve_h2<IO: crate::idle::ConnIo>(
    ctx: &Arc<ConnCtx>,
    io: crate::idle::HyperIo<IO>,
    rt: &HttpRt,
    lrt: &ListenerRt,
    limits: crate::watchdog::Limits,
) {
    let max_header = (rt.config.max_request_headers_kb as usize * 1024).max(8192);
    let opts = crate::h2_server::Options {
        max_header_list: max_header as u32,
        max_send_buffer: lrt.config.per_connection_buffer_limit_bytes as usize,
        stream_idle: limits.stream_idle,
        stream_idle_timeouts: rt.stats.rq_idle_timeout.clone(),
        keep_alive: crate::h2_server::KEEP_ALIVE,
        keep_alive_timeout: crate::h2_server::KEEP_ALIVE_TIMEOUT,
        closing: &ctx.closing,
    };
    crate::h2_server::serve(io, opts, |req| pipeline::handle(ctx, req)).await;
}

async fn serve_conn<IO: crate::idle::ConnIo>(
    ctx: &Arc<ConnCtx>,
    stream: Sniffed<IO>,
    activity: Arc<crate::h1_framing::Activity>,
    peer: SocketAddr,
    rt: Arc<HttpRt>,
    lrt: Arc<ListenerRt>,
    codec: Codec,
) {
    let mut drain = lrt.drain_signal();
    let cfg = &rt.config;
    // weft's own server holds a head to exactly the configured limit (hyper's buffer, below,
    // cannot be smaller than 8 KiB).
    let max_header = cfg.max_request_headers_kb as usize * 1024;
    let limits = crate::watchdog::Limits {
        idle: cfg.idle_timeout,
        request_headers: cfg.request_headers_timeout,
        stream_idle: cfg.stream_idle_timeout,
    };
    // HTTP/1 is served by weft's own server (`h1_server`), which hands the connection to weft's
    // HTTP/2 server on an HTTP/2 preface and to hyper's for protocol switches; hyper's
    // connections are parked (their buffers dropped) whenever idle: see `idle`.
    let conn = async {
        let mut io = crate::idle::Rewind::new(stream);
        if codec == Codec::Http2 {
            if crate::h2_server::preface_follows(&mut io).await {
                // Boxed, as below: only HTTP/2 connections carry the HTTP/2 state.
                Box::pin(serve_h2(ctx, io, &rt, &lrt, limits)).await;
            }
            return;
        }
        let opts = crate::h1_server::Options {
            max_head: max_header,
            write_limit: lrt.config.per_connection_buffer_limit_bytes as usize,
            h2_handoff: codec == Codec::Auto,
            closing: &ctx.closing,
        };
        match crate::h1_server::serve(io, opts, |req| pipeline::handle(ctx, req)).await {
            crate::h1_server::Ending::Closed => {}
            crate::h1_server::Ending::H2 { io } => Box::pin(serve_h2(ctx, io, &rt, &lrt, limits)).await,
            // Boxed: only connections hyper serves carry its state.
            crate::h1_server::Ending::Handoff { io, fresh } => Box::pin(serve_hyper(ctx, io, &rt, &lrt, fresh)).await,
        }
    };
    tokio::pin!(conn);
    let watchers = async {
        tokio::select! {
            _ = drain.changed() => None,
            v = crate::watchdog::watch(limits, &activity, &ctx.exchanges) => Some(v),
        }
    };
    tokio::pin!(watchers);
    let verdict = match crate::watchdog::Watched::new(conn.as_mut(), watchers).await {
        Ok(()) => return,
        Err(v) => v,
    };
    use crate::watchdog::Verdict;
    match verdict {
        None if !activity.is_h2() => {
            // HTTP/1.1: the next response says `connection: close` and hyper closes after it; a
            // connection whose client sends nothing more is closed after the window.
            ctx.draining.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(HTTP1_DRAIN_WINDOW) => {}
            }
        }
        // HTTP/2: graceful GOAWAY (h2 sends the two-step form), streams in flight finish.
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
    ctx.closing.store(true, Ordering::Relaxed);
    // Give in-flight requests a bounded time to finish.
    let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
}
