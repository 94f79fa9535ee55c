//! What an exchange learned on its way ([`Facts`]) and its access-log record, written when the
//! response body ends (or is abandoned).

use super::headers::{protocol_name, request_host};
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
    reason: &'static str,
    facts: Facts,
}

impl LogRecord {
    /// The request's side of the record, taken before the request is consumed.
    pub(super) fn start(
        logger: &Arc<AccessLogger>,
        req: &Request<Incoming>,
        start: Instant,
        peer: SocketAddr,
        listener: &str,
    ) -> Box<LogRecord> {
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
            reason: "-",
            facts: Facts::default(),
        })
    }

    /// The exchange's outcome, recorded at its exit.
    pub(super) fn outcome(&mut self, route: Option<&str>, status: u16, reason: &'static str, facts: Facts) {
        if let Some(r) = route {
            self.route = r.to_string();
        }
        self.status = status;
        self.reason = reason;
        self.facts = facts;
    }
}

fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// Writes the access log line when the response body finishes (or is abandoned).
pub(super) struct RequestEnd {
    pub(super) log: Option<Box<LogRecord>>,
}

impl StreamEnd for RequestEnd {
    fn finish(&mut self, bytes_sent: u64, completed: bool) {
        if let Some(r) = self.log.take() {
            let reason = if !completed && r.reason == "-" { "DC" } else { r.reason };
            let f = &r.facts;
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
            }));
        }
    }
}
