//! What an exchange learned on its way ([`Facts`]) and its access-log record, written when the
//! response body ends (or is abandoned).

use super::headers::{grpc_service_method, is_grpc, protocol_name, request_host, GRPC_STATUS, X_REQUEST_ID};
use crate::access_log::{timestamp, AccessLogger};
use crate::body::StreamEnd;
use crate::cluster::ClusterRt;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weft_telemetry::als::GrpcLogger;
use weft_upstream::body::RequestBody;

/// Facts about the upstream side of one exchange, filled in by the forwarding step and read once,
/// at the exchange's exit. Cheap when nothing logs: a few words and reference counts.
#[derive(Default)]
pub(super) struct Facts {
    /// Whether an access log reads these facts: the optional ones below (cluster, request id,
    /// forwarding header) are only captured then, so a request without a log clones nothing.
    pub logging: bool,
    pub cluster: Option<Arc<ClusterRt>>,
    /// The matched route's cluster when the proxy answered by itself before forwarding (fault
    /// abort, route rate limit), for the Istio metrics' `destination_service*` labels; only
    /// looked up when those metrics are on.
    pub target: Option<Arc<ClusterRt>>,
    pub host: Option<SocketAddr>,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub request_id: Option<HeaderValue>,
    pub xff: Option<HeaderValue>,
    /// The exchange's trace record, when the connection manager traces.
    pub trace: Option<Box<weft_core::trace::TraceExchange>>,
    /// The request's content-length (Istio's request bytes), read only when those metrics are on.
    pub request_bytes: u64,
    /// A HEAD request: its response's bytes count 0 (none are sent), whatever length it states.
    pub head: bool,
    /// The downstream peer's identity (its certificate's SPIFFE ID or first SAN), on TLS.
    pub peer_identity: Option<Arc<str>>,
    /// The authorization decision, when the connection manager has an `authorization` block.
    pub authz: Option<Box<AuthzFacts>>,
}

/// What authorization decided, for the access log.
pub(super) struct AuthzFacts {
    pub allowed: bool,
    pub policy: Option<Arc<str>>,
    /// `rbac_access_denied_matched_policy[<name>]` for a denial.
    pub details: Option<Arc<str>>,
    /// What shadow (dry-run) policies would have decided, and which matched.
    pub shadow: Option<(bool, Option<Arc<str>>)>,
    pub audited: Option<Arc<str>>,
}

/// Per-request facts kept for the access logs (only when one is configured).
pub(super) struct LogRecord {
    /// The file/stdout log.
    logger: Option<Arc<AccessLogger>>,
    /// The gRPC access-log service client.
    grpc: Option<Arc<GrpcLogger>>,
    started_at: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    authority: String,
    protocol: &'static str,
    version: http::Version,
    user_agent: Option<String>,
    peer: SocketAddr,
    listener: String,
    route: String,
    status: u16,
    reason: Option<crate::flags::Reason>,
    facts: Facts,
    /// What an Envoy-style format or the gRPC log needs beyond weft's own record (only then).
    envoy: Option<Box<EnvoyFacts>>,
    /// A gRPC (or Dubbo3 Triple) request's service, method and, once known, `grpc-status`.
    rpc: Option<Box<RpcFacts>>,
}

/// The per-call fields of a gRPC request's log line.
struct RpcFacts {
    service: String,
    method: String,
    /// From the response headers (trailers-only) or the trailers.
    status: Option<HeaderValue>,
}

/// The request and connection facts an Envoy-style format (or the gRPC log) reads that weft's
/// record does not.
struct EnvoyFacts {
    req_headers: Vec<Option<HeaderValue>>,
    resp_headers: Vec<Option<HeaderValue>>,
    scheme: &'static str,
    local: Option<SocketAddr>,
    sni: Option<Arc<str>>,
    bytes_received: u64,
    /// Only for the gRPC log.
    grpc: Option<GrpcFacts>,
}

/// What the gRPC log's `HTTPAccessLogEntry` needs beyond the rest.
#[derive(Default)]
struct GrpcFacts {
    /// `additional_request_headers_to_log`, by slot.
    req_headers: Vec<Option<HeaderValue>>,
    resp_headers: Vec<Option<HeaderValue>>,
    referer: Option<HeaderValue>,
    /// The request's own `x-request-id`, for requests answered before forwarding (those forwarded
    /// log the one sent upstream, which may have been generated).
    request_id: Option<HeaderValue>,
    request_headers_bytes: u64,
    response_headers_bytes: u64,
    /// The client certificate (TLS listeners), as Envoy logs it.
    peer_cert: Option<weft_xds_api::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties>,
    /// From the request's start to the response headers leaving the exchange.
    headers_at: Duration,
}

/// A client certificate's SANs (URIs, then DNS names) and subject, as Envoy logs them.
fn peer_cert(
    p: &weft_tls::PeerIdentity,
) -> weft_xds_api::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties {
    use weft_xds_api::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::{
        subject_alt_name::San, SubjectAltName,
    };
    weft_xds_api::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties {
        subject_alt_name: p
            .uris
            .iter()
            .map(|u| San::Uri(u.clone()))
            .chain(p.dns.iter().map(|d| San::Dns(d.clone())))
            .map(|san| SubjectAltName { san: Some(san) })
            .collect(),
        subject: p.subject.clone(),
        issuer: String::new(),
    }
}

/// Envoy's header byte count: names and values.
fn headers_bytes(h: &http::HeaderMap) -> u64 {
    h.iter().map(|(k, v)| (k.as_str().len() + v.len()) as u64).sum()
}

impl LogRecord {
    /// The request's side of the record, taken before the request is consumed.
    pub(super) fn start(
        logger: Option<&Arc<AccessLogger>>,
        grpc: Option<&Arc<GrpcLogger>>,
        req: &Request<RequestBody>,
        start: Instant,
        ctx: &super::ConnCtx,
    ) -> Box<LogRecord> {
        let (peer, listener) = (ctx.peer, ctx.rt.listener.as_str());
        let format = logger.and_then(|l| l.format());
        let envoy = (format.is_some() || grpc.is_some()).then(|| {
            let h = req.headers();
            Box::new(EnvoyFacts {
                req_headers: format
                    .map_or_else(Vec::new, |f| f.req_headers.iter().map(|n| h.get(n).cloned()).collect()),
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
                grpc: grpc.map(|g| GrpcFacts {
                    req_headers: g.request_headers().iter().map(|n| h.get(n).cloned()).collect(),
                    referer: h.get(header::REFERER).cloned(),
                    request_id: h.get(&X_REQUEST_ID).cloned(),
                    request_headers_bytes: headers_bytes(h),
                    peer_cert: ctx.tls.as_ref().and_then(|t| t.peer()).map(peer_cert),
                    ..GrpcFacts::default()
                }),
            })
        });
        let rpc = is_grpc(req.headers())
            .then(|| grpc_service_method(req.uri().path()))
            .flatten()
            .map(|(service, method)| {
                Box::new(RpcFacts {
                    service: service.to_string(),
                    method: method.to_string(),
                    status: None,
                })
            });
        Box::new(LogRecord {
            logger: logger.cloned(),
            grpc: grpc.cloned(),
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
            version: req.version(),
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
            rpc,
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
        if let Some(g) = &mut self.rpc {
            g.status = resp.get(&GRPC_STATUS).cloned();
        }
        if let Some(e) = &mut self.envoy {
            if let Some(f) = self.logger.as_ref().and_then(|l| l.format()) {
                e.resp_headers = f.resp_headers.iter().map(|n| resp.get(n).cloned()).collect();
            }
            if let (Some(g), Some(gf)) = (&self.grpc, &mut e.grpc) {
                gf.resp_headers = g.response_headers().iter().map(|n| resp.get(n).cloned()).collect();
                gf.response_headers_bytes = headers_bytes(resp);
                gf.headers_at = self.start.elapsed();
            }
        }
    }

    /// The exchange as Envoy's `HTTPAccessLogEntry` (what `http_grpc` sends).
    fn grpc_entry(
        &self,
        reason: Option<crate::flags::Reason>,
        bytes_sent: u64,
        duration: Duration,
    ) -> weft_xds_api::pb::envoy::data::accesslog::v3::HttpAccessLogEntry {
        use weft_telemetry::als;
        use weft_xds_api::pb::envoy::config::core::v3::RequestMethod;
        use weft_xds_api::pb::envoy::data::accesslog::v3 as data;
        let (e, g) = match &self.envoy {
            Some(e) => (Some(&**e), e.grpc.as_ref()),
            None => (None, None),
        };
        let f = &self.facts;
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        let map = |names: &[http::HeaderName], values: &[Option<HeaderValue>]| {
            names
                .iter()
                .zip(values)
                .filter_map(|(n, v)| Some((n.as_str().to_string(), text(&Some(v.clone()?)))))
                .collect()
        };
        let grpc = self.grpc.as_ref();
        let method = match self.method {
            Method::GET => RequestMethod::Get,
            Method::HEAD => RequestMethod::Head,
            Method::POST => RequestMethod::Post,
            Method::PUT => RequestMethod::Put,
            Method::DELETE => RequestMethod::Delete,
            Method::CONNECT => RequestMethod::Connect,
            Method::OPTIONS => RequestMethod::Options,
            Method::TRACE => RequestMethod::Trace,
            Method::PATCH => RequestMethod::Patch,
            _ => RequestMethod::MethodUnspecified,
        };
        let headers_at = g.map(|g| g.headers_at);
        let request_id = text(match &f.request_id {
            Some(_) => &f.request_id,
            None => g.map_or(&None, |g| &g.request_id),
        });
        let forwarded = f.upstream_time.is_some();
        data::HttpAccessLogEntry {
            common_properties: Some(data::AccessLogCommon {
                sample_rate: 1.0,
                downstream_remote_address: Some(als::address(self.peer)),
                downstream_direct_remote_address: Some(als::address(self.peer)),
                downstream_local_address: e.and_then(|e| e.local).map(als::address),
                tls_properties: e.and_then(|e| {
                    let sni = e.sni.as_deref();
                    let peer = g.and_then(|g| g.peer_cert.clone());
                    (sni.is_some() || peer.is_some()).then(|| data::TlsProperties {
                        tls_sni_hostname: sni.unwrap_or_default().to_string(),
                        peer_certificate_properties: peer,
                        ..Default::default()
                    })
                }),
                start_time: Some(als::timestamp(self.started_at)),
                time_to_first_upstream_rx_byte: headers_at.filter(|_| forwarded).map(als::duration),
                time_to_last_upstream_rx_byte: forwarded.then(|| als::duration(duration)),
                time_to_first_downstream_tx_byte: headers_at.map(als::duration),
                time_to_last_downstream_tx_byte: Some(als::duration(duration)),
                upstream_remote_address: f.host.map(als::address),
                upstream_cluster: f.cluster.as_ref().map(|c| c.name().to_string()).unwrap_or_default(),
                response_flags: als::response_flags(reason, f.attempts),
                route_name: self.route.clone(),
                duration: Some(als::duration(duration)),
                upstream_request_attempt_count: f.attempts,
                stream_id: request_id.clone(),
                access_log_type: data::AccessLogType::DownstreamEnd as i32,
                ..Default::default()
            }),
            protocol_version: match self.version {
                http::Version::HTTP_10 => data::http_access_log_entry::HttpVersion::Http10,
                http::Version::HTTP_11 => data::http_access_log_entry::HttpVersion::Http11,
                http::Version::HTTP_2 => data::http_access_log_entry::HttpVersion::Http2,
                http::Version::HTTP_3 => data::http_access_log_entry::HttpVersion::Http3,
                _ => data::http_access_log_entry::HttpVersion::ProtocolUnspecified,
            } as i32,
            request: Some(data::HttpRequestProperties {
                request_method: method as i32,
                scheme: e.map(|e| e.scheme).unwrap_or("http").to_string(),
                authority: self.authority.clone(),
                path: self.path.clone(),
                user_agent: self.user_agent.clone().unwrap_or_default(),
                referer: g.map(|g| text(&g.referer)).unwrap_or_default(),
                forwarded_for: text(&f.xff),
                request_id,
                request_headers_bytes: g.map_or(0, |g| g.request_headers_bytes),
                request_body_bytes: e.map_or(0, |e| e.bytes_received),
                request_headers: match (grpc, g) {
                    (Some(l), Some(g)) => map(l.request_headers(), &g.req_headers),
                    _ => Default::default(),
                },
                ..Default::default()
            }),
            response: Some(data::HttpResponseProperties {
                response_code: (self.status != 0).then_some(weft_xds_api::pb::google::protobuf::UInt32Value {
                    value: u32::from(self.status),
                }),
                response_headers_bytes: g.map_or(0, |g| g.response_headers_bytes),
                response_body_bytes: bytes_sent,
                response_headers: match (grpc, g) {
                    (Some(l), Some(g)) => map(l.response_headers(), &g.resp_headers),
                    _ => Default::default(),
                },
                response_code_details: match (reason, f.authz.as_ref().and_then(|a| a.details.as_deref())) {
                    (Some(_), Some(d)) => d.to_string(),
                    (Some(r), None) => r.details().to_string(),
                    (None, _) if self.status != 0 => "via_upstream".to_string(),
                    (None, _) => String::new(),
                },
                ..Default::default()
            }),
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
            ok: resp.get(&GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"0"),
        }))
    }
}

impl StreamEnd for RequestEnd {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        let Some(s) = trailers.get(&GRPC_STATUS) else {
            return;
        };
        if let Some(g) = self.log.as_mut().and_then(|r| r.rpc.as_mut()) {
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
            if let Some(g) = &r.grpc {
                g.log_http(r.grpc_entry(reason, bytes_sent, r.start.elapsed()));
            }
            let Some(logger) = &r.logger else { return };
            let f = &r.facts;
            if let (Some(e), Some(_)) = (&r.envoy, logger.format()) {
                logger.log_entry(&weft_core::log_format::LogEntry {
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
                    details: f.authz.as_ref().and_then(|a| a.details.as_deref()),
                });
                return;
            }
            let reason = reason.map_or("-", crate::flags::Reason::code);
            logger.log(&serde_json::json!({
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
                "rbac": f.authz.as_ref().map(|a| serde_json::json!({
                    "decision": if a.allowed { "allowed" } else { "denied" },
                    "policy": a.policy.as_deref(),
                    "response_code_details": a.details.as_deref(),
                    "shadow": a.shadow.as_ref().map(|(ok, _)| if *ok { "allowed" } else { "denied" }),
                    "shadow_policy": a.shadow.as_ref().and_then(|(_, p)| p.as_deref()),
                    "audit_policy": a.audited.as_deref(),
                })),
                "rpc_service": r.rpc.as_ref().map(|g| g.service.as_str()),
                "rpc_method": r.rpc.as_ref().map(|g| g.method.as_str()),
                "grpc_status": r.rpc.as_ref().and_then(|g| g.status.as_ref()).and_then(|s| s.to_str().ok()),
            }));
        }
    }
}
