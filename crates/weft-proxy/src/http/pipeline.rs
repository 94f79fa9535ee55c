//! One exchange from request to response: checks, route match, the route's action, and the single
//! exit where every outcome — a forwarded response, a local reply, or a [`weft_core::Error`] from
//! any step — gets its response headers, stats and access-log record.

use super::forward::forward;
use super::headers::{is_grpc, request_host, smuggling_check, GRPC_STATUS};
use super::log::{Facts, GrpcCall, LogRecord, RequestEnd};
use super::reply::{local_reply, redirect, stop_reply};
use super::{ConnCtx, HttpRt};
use crate::body::{DownBody, KeptResponse, StreamEnd};
use crate::cluster::ActiveRequest;
use crate::filters::Stop;
use crate::flags::Reason;
use crate::router::{RouteEntry, RouteTable, VirtualHostEntry};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use std::time::Instant;
use weft_config::{DirectResponse, RouteAction};
use weft_core::Error;
use weft_upstream::body::RequestBody;

/// A response ready to go back to the client.
pub(super) struct Reply {
    pub resp: KeptResponse,
    /// The reason code for the log when the proxy answered by itself.
    pub reason: Option<Reason>,
    /// Keeps a forwarded request counted against its cluster and host until the body ends.
    pub active: Option<ActiveRequest>,
    /// `Set-Cookie` values of hash cookies generated for the request, added before the response
    /// header mutations (as Envoy's router); empty for local replies.
    pub set_cookies: Vec<HeaderValue>,
}

impl Reply {
    pub(super) fn local(resp: Response<DownBody>, reason: Reason) -> Reply {
        Reply {
            resp: KeptResponse::new(resp),
            set_cookies: Vec::new(),
            reason: Some(reason),
            active: None,
        }
    }
}

/// The route an exchange matched, for response header mutations and per-route stats.
type Matched<'r> = Option<(&'r VirtualHostEntry, &'r RouteEntry)>;

/// One exchange, on any of the servers: counted for the watchdog, then the pipeline. (One async
/// fn, not a counting wrapper around it: each level copies the request into its state twice, and
/// the response out once.)
pub(super) async fn handle(ctx: &ConnCtx, mut req: Request<RequestBody>) -> KeptResponse {
    ctx.exchanges.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Counted until the server drops the response body (or this future is dropped).
    let in_flight = crate::body::InFlight::start(&ctx.exchanges.in_flight);
    let rt = &*ctx.rt;
    // One route table for the whole exchange, even if an update swaps it meanwhile.
    let routes = rt.routes.load_full();
    // The table on-demand discovery found, when `routes` had no route (see `discover`).
    let mut discovered: Option<std::sync::Arc<RouteTable>> = None;
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    // The call's path, for its per-method counts (gRPC only: no copy for other requests).
    let grpc_path = grpc.then(|| req.uri().path().to_string());
    let version = req.version();
    let log = (rt.access_log.is_some() || rt.grpc_log.is_some())
        .then(|| LogRecord::start(rt.access_log.as_ref(), rt.grpc_log.as_ref(), &req, start, ctx));
    let mut facts = Facts {
        logging: log.is_some(),
        trace: rt
            .tracer
            .as_ref()
            .map(|t| t.start(req.method(), req.uri(), req.headers(), ctx.peer)),
        request_bytes: match rt.istio {
            Some(_) => exact_length(req.body()),
            None => 0,
        },
        head: req.method() == http::Method::HEAD,
        ..Facts::default()
    };
    if let (true, Some(t)) = (facts.logging, &ctx.tls) {
        facts.peer_identity = t.principal.clone();
    }
    let mut matched: Matched = None;
    // Checks, route match and the route's action, in one labelled block (not a nested async fn: each
    // nesting level copies the whole inner future once more). Every failure is an `Err`, answered at
    // the exit below.
    let outcome: Result<Reply, Error> = 'outcome: {
        let ambiguous = req.version() != Version::HTTP_2 && ctx.framing.lock().next_verdict().unwrap_or(false);
        if ambiguous || !smuggling_check(&req) {
            // Answered as plain HTTP whatever the content type: the request's framing is in doubt.
            let reason = Reason::DownstreamProtocolError;
            break 'outcome Ok(Reply::local(local_reply(rt, reason, false), reason));
        }
        // JWT authentication first (it may rewrite headers that authorization and routing read).
        let mut jwt_claims: Option<weft_jwt::Claims> = None;
        if let Some(j) = &rt.jwt {
            match Box::pin(j.authenticate(&mut req, &ctx.clusters)).await {
                weft_jwt::Outcome::Pass(c) => jwt_claims = c,
                weft_jwt::Outcome::Reject(r) => {
                    let resp = super::reply::jwt_reply(rt, &r, grpc);
                    break 'outcome Ok(Reply::local(resp, Reason::JwtAuthn));
                }
            }
        }
        if let Some(a) = &rt.authz {
            if let Some(reply) = authorize(ctx, a, &req, jwt_claims.as_deref(), grpc, &mut facts) {
                break 'outcome Ok(reply);
            }
        }
        if let Some(retry_after_secs) = rt.rate_limit.as_ref().and_then(|l| l.check(req.headers())) {
            break 'outcome Ok(stopped(rt, Stop::RateLimited { retry_after_secs }, grpc));
        }
        let mut hit = routes.route(request_host(&req), req.method(), req.uri(), req.headers());
        if hit.is_none() {
            // A service this proxy was not sent (configuration scoping): ask for it and wait.
            discovered = Box::pin(discover(ctx, &req)).await;
            if let Some(t) = &discovered {
                hit = t.route(request_host(&req), req.method(), req.uri(), req.headers());
            }
        }
        let Some((vh, route)) = hit else {
            break 'outcome Err(Error::internal(Reason::NoRoute));
        };
        matched = Some((vh, route));
        match &route.action {
            RouteAction::Forward(action) => {
                // Rate limits and fault injection, only when the route has them (boxed so that routes
                // without them do not carry their state in this future).
                if let Some(fx) = route.filters.as_deref().filter(|fx| fx.checks_before_forward()) {
                    let stop = fx.before_forward(req.headers(), rt.rls.as_ref(), &*ctx.clusters, ctx.peer.ip());
                    if let Some(stop) = Box::pin(stop).await {
                        if rt.istio.is_some() {
                            facts.target = route_target(ctx, action);
                        }
                        break 'outcome Ok(stopped(rt, stop, grpc));
                    }
                }
                forward(
                    ctx,
                    &mut req,
                    discovered.as_ref().unwrap_or(&routes),
                    vh,
                    route,
                    action,
                    grpc,
                    start,
                    &mut facts,
                )
                .await
            }
            RouteAction::Redirect(r) => Ok(Reply::local(
                redirect(&req, r, route.rewrite_prefix_len),
                Reason::DirectResponse,
            )),
            RouteAction::DirectResponse(d) => Ok(Reply::local(direct_response(d), Reason::DirectResponse)),
        }
    };
    let draining = ctx.draining.load(std::sync::atomic::Ordering::Relaxed) && version != Version::HTTP_2;
    exit(
        rt,
        discovered.as_ref().unwrap_or(&routes),
        matched,
        outcome,
        grpc_path.as_deref(),
        start,
        facts,
        log,
        draining,
        in_flight,
    )
}

/// How long a request for an unknown service waits for on-demand discovery before `NR` (404).
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// On-demand discovery after a route miss: asks the configuration source for the host's service
/// and waits, up to [`DISCOVERY_WAIT`], for a route table that routes the request. None when there
/// is no such source, the service does not exist, or the wait ran out.
async fn discover(ctx: &ConnCtx, req: &Request<RequestBody>) -> Option<std::sync::Arc<RouteTable>> {
    let host = request_host(req);
    // The service name is the authority without its port (`[v6]:port` has no service name).
    let name = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    loop {
        let wait = ctx.clusters.discover(name)?;
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        let t = ctx.rt.routes.load_full();
        if t.route(host, req.method(), req.uri(), req.headers()).is_some() {
            return Some(t);
        }
    }
}

/// The client address behind trusted proxies (Envoy's remote address): with `use_remote_address`
/// and no trusted hop it is the peer; otherwise the `x-forwarded-for` entry that many hops from the
/// right.
pub(super) fn remote_ip(ctx: &ConnCtx, headers: &http::HeaderMap) -> std::net::IpAddr {
    let c = &ctx.rt.config;
    let skip = match (c.use_remote_address, c.xff_num_trusted_hops) {
        (true, 0) => return ctx.peer.ip(),
        (true, n) => n - 1,
        (false, n) => n,
    };
    headers
        .get(&super::headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').nth(skip as usize))
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(ctx.peer.ip())
}

/// Authorization: `None` when the request may go on; else the 403 (`RBAC: access denied`).
fn authorize(
    ctx: &ConnCtx,
    a: &weft_route::authz::Authorizer,
    req: &Request<RequestBody>,
    jwt: Option<&serde_json::Map<String, serde_json::Value>>,
    grpc: bool,
    facts: &mut Facts,
) -> Option<Reply> {
    let tls = ctx.tls.as_deref();
    let input = weft_route::authz::AuthzInput {
        http: Some(weft_route::authz::HttpView {
            method: req.method(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            authority: request_host(req),
            headers: req.headers(),
            jwt,
        }),
        principal: tls.and_then(|t| t.principal.as_deref()),
        direct_remote: ctx.peer.ip(),
        remote: match a.uses_remote_ip() {
            true => remote_ip(ctx, req.headers()),
            false => ctx.peer.ip(),
        },
        local: ctx.local.or(ctx.original_dst),
        sni: tls.and_then(|t| t.sni.as_deref()),
    };
    let d = a.check(&input);
    if facts.logging {
        facts.authz = Some(Box::new(super::log::AuthzFacts {
            allowed: d.allowed,
            policy: d.policy.cloned(),
            details: d.details.cloned(),
            shadow: d.shadow.map(|(ok, p)| (ok, p.cloned())),
            audited: d.audited.cloned(),
        }));
    }
    if d.allowed {
        return None;
    }
    // gRPC callers get PERMISSION_DENIED (7), as Envoy's local replies do.
    let resp = super::reply::local_reply_as(&ctx.rt, Reason::Rbac, grpc, StatusCode::FORBIDDEN, 7);
    Some(Reply::local(resp, Reason::Rbac))
}

/// The cluster a matched route would have forwarded to (the heaviest of a weighted route's, the
/// first on a tie), for the Istio labels of a request the proxy answered by itself.
#[cold]
fn route_target(
    ctx: &ConnCtx,
    action: &weft_config::ForwardAction,
) -> Option<std::sync::Arc<crate::cluster::ClusterRt>> {
    let mut best: Option<&weft_config::WeightedCluster> = None;
    for c in &action.clusters {
        if best.is_none_or(|b| c.weight > b.weight) {
            best = Some(c);
        }
    }
    ctx.clusters.cluster(&best?.name)
}

fn stopped(rt: &HttpRt, stop: Stop, grpc: bool) -> Reply {
    let (resp, reason) = stop_reply(rt, stop, grpc);
    Reply::local(resp, reason)
}

fn direct_response(d: &DirectResponse) -> Response<DownBody> {
    let mut resp = Response::new(DownBody::full(d.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    if !d.body.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    resp
}

/// The exchange's one exit: errors become local replies; response header mutations, `via` and
/// `server`; listener and route stats; the access-log record, written when the body ends.
#[allow(clippy::too_many_arguments)]
fn exit(
    rt: &HttpRt,
    routes: &RouteTable,
    matched: Matched,
    outcome: Result<Reply, Error>,
    grpc_path: Option<&str>,
    start: Instant,
    mut facts: Facts,
    log: Option<Box<LogRecord>>,
    draining: bool,
    in_flight: crate::body::InFlight,
) -> KeptResponse {
    let grpc = grpc_path.is_some();
    let Reply {
        mut resp,
        reason,
        active,
        set_cookies,
    } = match outcome {
        Ok(r) => r,
        Err(e) => {
            if e.blame != weft_core::Blame::Internal {
                tracing::debug!(listener = %rt.listener, error = %e, "exchange failed");
            }
            Reply::local(local_reply(rt, e.reason, grpc), e.reason)
        }
    };
    // Generated hash cookies first, then the response header mutations (as Envoy's router, whose
    // finalizeResponseHeaders comes after them: `response_headers_to_remove: [set-cookie]` removes
    // them too).
    for c in set_cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    if let Some((vh, route)) = matched {
        // Response header mutations: route, then virtual host, then route config.
        let h = resp.headers_mut();
        route.mutations.response.apply(h);
        vh.mutations.response.apply(h);
        routes.mutations.response.apply(h);
    }
    if let Some(v) = &rt.via {
        resp.headers_mut().append(header::VIA, v.clone());
    }
    if draining && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // HTTP/1.1 only (`connection` is forbidden in HTTP/2); hyper closes after this response.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(s) = &rt.server {
        resp.headers_mut().insert(header::SERVER, s.clone());
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    rt.stats.record(status, elapsed);
    if let Some((_, route)) = matched {
        route.stats.record(status, elapsed);
    }
    if let Some(istio) = &rt.istio {
        // Looked up only for gRPC requests (the label is unused otherwise).
        let grpc_status = grpc
            .then(|| resp.headers().get(&GRPC_STATUS))
            .flatten()
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u8>().ok())
            .unwrap_or(weft_core::istio::NOT_GRPC);
        let cluster = facts.cluster.as_ref().or(facts.target.as_ref());
        istio.record(
            cluster.map_or("", |c| c.name()),
            cluster
                .and_then(|c| c.config.service.as_ref())
                .map(|s| weft_core::istio::ServiceRef {
                    host: &s.host,
                    name: &s.name,
                    namespace: &s.namespace,
                }),
            status,
            reason.map_or("-", Reason::code),
            grpc,
            grpc_status,
            elapsed,
            facts.request_bytes,
            match facts.head {
                true => 0,
                false => exact_length(resp.body()),
            },
        );
    }
    if let (Some(t), Some(mut x)) = (&rt.tracer, facts.trace.take()) {
        if x.client.as_ref().is_some_and(|c| c.nanos == 0) {
            x.end_client(facts.host, facts.attempts, None);
        }
        t.finish(x, status, reason, matched.map(|(_, r)| r.name.as_str()));
    }
    let grpc_call = grpc_path.and_then(|p| GrpcCall::start(rt, p, start, resp.headers()));
    resp.body_mut().hold(in_flight);
    if active.is_none() && log.is_none() && grpc_call.is_none() {
        return resp;
    }
    let log = log.map(|mut l| {
        l.outcome(
            matched.map(|(_, r)| r.name.as_str()),
            status,
            reason,
            facts,
            resp.headers(),
        );
        l
    });
    let end = (log.is_some() || grpc_call.is_some())
        .then(|| Box::new(RequestEnd { log, grpc: grpc_call }) as Box<dyn StreamEnd>);
    resp.body_mut().on_end(active, end);
    resp
}

/// A message body's length when its framing gives it (a `content-length`, or a body weft holds
/// whole), else 0: what the body's own size hint says, as the server framed or will frame it (no
/// header lookup and parse per request). A response to HEAD counts 0 (`Facts::head`).
fn exact_length(body: &impl http_body::Body) -> u64 {
    body.size_hint().exact().unwrap_or(0)
}
