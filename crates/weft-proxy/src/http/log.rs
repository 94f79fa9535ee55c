//! What an exchange learned on its way ([`Facts`]) and its access-log record, written when the
//! response body ends (or is abandoned).

use super::headers::{grpc_service_method, is_grpc, protocol_name, request_host};
use crate::access_log::{timestamp, AccessLogger};
use crate::body::StreamEnd;
use crate::cluster::ClusterRt;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Facts about the upstream side of one exchange, filled in by the forwarding step and read once,
/// at the exchange's exit. Cheap when nothing logs: a few words and reference counts.
#[derive(Default)]
pub(super) struct Facts {
    /// Whether an access log reads these facts: the optional ones below (cluster, request id,
    /// forwarding header) are only captured then, so a request without a log clones nothing.
    pub logging: bool,
    pub cluster: Option<Arc<ClusterRt>>,
    pub host: Option<SocketAddr>,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub request_id: Option<HeaderValue>,
    pub xff: Option<HeaderValue>,
    /// The exchange's trace record, when the connection manager traces.
    pub trace: Option<Box<weft_core::trace::TraceExchange>>,
    /// The request's content-length (Istio's request bytes), read only when those metrics are on.
    pub request_bytes: u64,
    /// The downstream peer's identity (its certificate's SPIFFE ID or first SAN), on TLS.
    pub peer_identity: Option<Arc<str>>,
}

/// Per-request facts kept for the access log (only when one is configured).
pub(super) struct LogRecord {
    logger: Arc<AccessLogger>,
    started_at: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    authority: String,
    protocol: &'static str,
    user_agent: Option<String>,
    peer: SocketAddr,
    listener: String,
    route: String,
    status: u16,
    reason: Option<crate::flags::Reason>,
    facts: Facts,
    /// What an Envoy-style format needs beyond weft's own record (only when one is configured).
    envoy: Option<Box<EnvoyFacts>>,
    /// A gRPC (or Dubbo3 Triple) request's service, method and, once known, `grpc-status`.
    grpc: Option<Box<GrpcFacts>>,
}

/// The per-call fields of a gRPC request's log line.
struct GrpcFacts {
    service: String,
    method: String,
    /// From the response headers (trailers-only) or the trailers.
    status: Option<HeaderValue>,
}

/// The request and connection facts an Envoy-style format reads that weft's record does not.
struct EnvoyFacts {
    req_headers: Vec<Option<HeaderValue>>,
    resp_headers: Vec<Option<HeaderValue>>,
    scheme: &'static str,
    local: Option<SocketAddr>,
    sni: Option<Arc<str>>,
    bytes_received: u64,
}

impl LogRecord {
    /// The request's side of the record, taken before the request is consumed.
    pub(super) fn start(
        logger: &Arc<AccessLogger>,
        req: &Request<Incoming>,
        start: Instant,
        ctx: &super::ConnCtx,
    ) -> Box<LogRecord> {
        let (peer, listener) = (ctx.peer, ctx.rt.listener.as_str());
        let envoy = logger.format().map(|f| {
            let h = req.headers();
            Box::new(EnvoyFacts {
                req_headers: f.req_headers.iter().map(|n| h.get(n).cloned()).collect(),
                resp_headers: Vec::new(),
                scheme: match (req.uri().scheme_str(), &ctx.tls) {
                    (Some("https"), _) => "https",
                    (Some(_), _) => "http",
                    (None, Some(t)) if t.principal.is_some() || t.sni.is_some() => "https",
                    (None, _) => "http",
                },
                local: ctx.local,
                sni: ctx.tls.as_ref().and_then(|t| t.sni.clone()),
                bytes_received: h
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok())
                    .unwrap_or(0),
            })
        });
        let grpc = is_grpc(req.headers())
            .then(|| grpc_service_method(req.uri().path()))
            .flatten()
            .map(|(service, method)| {
                Box::new(GrpcFacts {
                    service: service.to_string(),
                    method: method.to_string(),
                    status: None,
                })
            });
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
            authority: request_host(req).to_string(),
            protocol: protocol_name(req.version()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            peer,
            listener: listener.to_string(),
            route: String::new(),
            status: 0,
            reason: None,
            facts: Facts::default(),
            envoy,
            grpc,
        })
    }

    /// The exchange's outcome, recorded at its exit.
    pub(super) fn outcome(
        &mut self,
        route: Option<&str>,
        status: u16,
        reason: Option<crate::flags::Reason>,
        facts: Facts,
        resp: &http::HeaderMap,
    ) {
        if let Some(r) = route {
            self.route = r.to_string();
        }
        self.status = status;
        self.reason = reason;
        self.facts = facts;
        if let Some(g) = &mut self.grpc {
            g.status = resp.get("grpc-status").cloned();
        }
        if let (Some(e), Some(f)) = (&mut self.envoy, self.logger.format()) {
            e.resp_headers = f.resp_headers.iter().map(|n| resp.get(n).cloned()).collect();
        }
    }
}

fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// Writes the access log line and counts a gRPC call when the response body finishes (or is
/// abandoned).
pub(super) struct RequestEnd {
    pub(super) log: Option<Box<LogRecord>>,
    pub(super) grpc: Option<Box<GrpcCall>>,
}

/// A gRPC / Triple call's per-method counters, and its status once known.
pub(super) struct GrpcCall {
    stats: weft_rpc::metrics::MethodStats,
    start: Instant,
    ok: bool,
}

impl GrpcCall {
    /// For a gRPC request whose path is `/<service>/<method>`: its method's counters, and
    /// whether the response headers (a trailers-only response) already say `grpc-status: 0`.
    pub(super) fn start(
        rt: &super::HttpRt,
        path: &str,
        start: Instant,
        resp: &http::HeaderMap,
    ) -> Option<Box<GrpcCall>> {
        grpc_service_method(path)?;
        let stats = rt
            .grpc_stats
            .get_or_init(|| weft_rpc::metrics::ListenerRpcStats::new(&rt.listener, super::GRPC_METHOD_LABELS));
        Some(Box::new(GrpcCall {
            stats: stats.method(&path[1..]),
            start,
            ok: resp.get("grpc-status").is_some_and(|v| v.as_bytes() == b"0"),
        }))
    }
}

impl StreamEnd for RequestEnd {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        let Some(s) = trailers.get("grpc-status") else {
            return;
        };
        if let Some(g) = self.log.as_mut().and_then(|r| r.grpc.as_mut()) {
            g.status = Some(s.clone());
        }
        if let Some(c) = &mut self.grpc {
            c.ok = s.as_bytes() == b"0";
        }
    }

    fn finish(&mut self, bytes_sent: u64, completed: bool) {
        if let Some(c) = self.grpc.take() {
            // A stream cut before its trailers is an error, whatever its headers said.
            if c.ok && completed {
                c.stats.ok.inc();
            } else {
                c.stats.error.inc();
            }
            c.stats.time.observe(c.start.elapsed().as_secs_f64());
        }
        if let Some(r) = self.log.take() {
            let reason = match r.reason {
                None if !completed => Some(crate::flags::Reason::DownstreamDisconnect),
                reason => reason,
            };
            let f = &r.facts;
            if let Some(e) = &r.envoy {
                r.logger.log_entry(&weft_core::log_format::LogEntry {
                    start_time: r.started_at,
                    duration: r.start.elapsed(),
                    protocol: Some(r.protocol),
                    method: Some(r.method.as_str()),
                    path: Some(&r.path),
                    authority: Some(&r.authority),
                    scheme: Some(e.scheme),
                    req_headers: &e.req_headers,
                    resp_headers: &e.resp_headers,
                    response_code: r.status,
                    reason,
                    attempts: f.attempts,
                    bytes_received: e.bytes_received,
                    bytes_sent,
                    upstream_host: f.host,
                    upstream_cluster: f.cluster.as_ref().map(|c| c.name()),
                    upstream_local: None,
                    downstream_local: e.local,
                    downstream_remote: r.peer,
                    peer_identity: f.peer_identity.as_deref(),
                    requested_server_name: e.sni.as_deref(),
                    route_name: Some(&r.route),
                });
                return;
            }
            let reason = reason.map_or("-", crate::flags::Reason::code);
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
                "upstream_service_time_ms": f.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                "route": r.route,
                "upstream_cluster": f.cluster.as_ref().map(|c| c.name()),
                "upstream_host": f.host.map(|a| a.to_string()),
                "attempts": f.attempts,
                "downstream_remote_address": r.peer.to_string(),
                "x_forwarded_for": text(&f.xff),
                "user_agent": r.user_agent,
                "request_id": text(&f.request_id),
                "downstream_peer_identity": f.peer_identity.as_deref(),
                "rpc_service": r.grpc.as_ref().map(|g| g.service.as_str()),
                "rpc_method": r.grpc.as_ref().map(|g| g.method.as_str()),
                "grpc_status": r.grpc.as_ref().and_then(|g| g.status.as_ref()).and_then(|s| s.to_str().ok()),
            }));
        }
    }
}
