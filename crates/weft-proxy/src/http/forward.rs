//! Forwarding one request upstream: the plan (cluster, subset, hash, original destination),
//! header rewriting, the body policy, and the attempt loop in which every try ends in a
//! decision: deliver the response, retry ([`RetryAfter`]), or fail with a [`weft_core::Error`].

use super::headers::{
    compute_hash, field, is_upgrade, request_id, strip_hop_by_hop, RequestFields, GRPC_STATUS, GRPC_TIMEOUT,
    ORIGINAL_DST_HEADER, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::log::Facts;
use super::pipeline::Reply;
use super::ConnCtx;
use crate::body::{DownBody, KeptResponse, RespBody, UpBody, Upload, UploadState};
use crate::client::{send_once, shape_request, Prepared, TryOk, TryTimer};
use crate::cluster::{ClusterRt, Host, PooledH1, RetryGuard};
use crate::flags::Reason;
use crate::hostset::Labels;
use crate::outlier::Outcome;
use crate::router::{HeaderOps, RouteEntry, RouteTable, VirtualHostEntry};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_config::{Discovery, ForwardAction, RetryPolicy, UpstreamProtocol};
use weft_core::{Error, Retry};
use weft_upstream::body::RequestBody;

/// Request bodies up to this size are buffered when the retry policy can retry after a body was sent
/// (anything but connect failures), so a retry can resend them.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Where a request goes: decided once, before the first try.
struct Plan {
    cluster: Arc<ClusterRt>,
    hash: Option<u64>,
    /// `Set-Cookie` values of hash cookies generated for this request, for its response.
    set_cookies: Vec<HeaderValue>,
    subset: Option<Labels>,
    /// The original destination, and the source to connect from (`original_source`).
    original_dst: Option<(SocketAddr, Option<(std::net::IpAddr, u32)>)>,
}

impl Plan {
    fn new(
        ctx: &ConnCtx,
        req: &Request<RequestBody>,
        route: &RouteEntry,
        action: &ForwardAction,
    ) -> Result<Plan, Error> {
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
        let cluster = ctx
            .clusters
            .cluster(cluster_name)
            .ok_or_else(|| Error::internal(Reason::NoCluster))?;
        let mut set_cookies = Vec::new();
        let hash = if action.hash_policy.is_empty() {
            None
        } else {
            // As Envoy, where only the consistent-hash balancers ask for the hash: cookies are
            // generated only for clusters that will stick to them.
            let generate = matches!(
                cluster.config.lb_policy,
                weft_config::LbPolicy::RingHash { .. } | weft_config::LbPolicy::Maglev { .. }
            )
            .then_some((ctx.peer, ctx.local));
            compute_hash(
                &action.hash_policy,
                req,
                ctx.peer_ip.as_bytes(),
                generate,
                &mut set_cookies,
            )
        };
        // Subset routing: the tag header's value selects hosts labelled with it; untagged requests go
        // to the default subset when one is configured.
        let subset = cluster.config.subsets.as_ref().and_then(|s| {
            let tagged = s
                .tag_header
                .as_ref()
                .and_then(|h| req.headers().get(h))
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
            let dst = from_header
                .or(ctx.original_dst)
                .ok_or_else(|| Error::internal(Reason::NoHealthyUpstream))?;
            let from_peer = cluster.config.original_source || ctx.original_source;
            Some((dst, from_peer.then(|| (ctx.peer.ip(), ctx.original_source_mark))))
        } else {
            None
        };
        Ok(Plan {
            cluster,
            hash,
            set_cookies,
            subset,
            original_dst,
        })
    }

    /// The host for the next try, avoiding the previous one when others exist.
    fn pick(&self, last: Option<&Arc<Host>>) -> Result<Arc<Host>, Error> {
        match self.original_dst {
            Some((a, source)) => Ok(self.cluster.original_dst_host_from(a, source)),
            None => self
                .cluster
                .pick(self.hash, last, self.subset.as_ref())
                .ok_or_else(|| Error::internal(Reason::NoHealthyUpstream)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    ctx: &ConnCtx,
    req: &mut Request<RequestBody>,
    route_table: &RouteTable,
    vh: &VirtualHostEntry,
    route: &RouteEntry,
    action: &ForwardAction,
    grpc: bool,
    start: Instant,
    facts: &mut Facts,
) -> Result<Reply, Error> {
    let plan = Plan::new(ctx, req, route, action)?;
    if facts.logging || ctx.rt.istio.is_some() {
        facts.cluster = Some(plan.cluster.clone());
    }

    let upgrade = is_upgrade(req) && plan.cluster.protocol() == UpstreamProtocol::Http1;
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    // The request stays where the pipeline holds it; its parts are taken from it as they go
    // upstream (moving a whole request into this future cost a copy of ~270 bytes, twice).
    let body = std::mem::replace(req.body_mut(), RequestBody::empty());
    let levels = (route_table, vh, route);
    let (headers, path, timeout, mirror_mask) = outgoing(ctx, req, levels, action, grpc, upgrade, &plan, facts);
    let policy = route.retry_policy.as_ref();
    let replay_wanted = mirror_mask != 0 || policy.is_some_and(RetryPolicy::replays_body);
    let mut source = BodySource::new(body, replay_wanted).await?;
    if let (Some(fx), true) = (route.filters.as_deref(), mirror_mask != 0) {
        let request = (req.method(), req.uri(), &headers);
        mirror(ctx, fx, mirror_mask, request, path.as_deref(), action, &source);
    }
    let host_rewrite = action.host_rewrite.as_deref();
    let method = std::mem::replace(req.method_mut(), http::Method::GET);
    let (uri, protocol) = (std::mem::take(req.uri_mut()), plan.cluster.protocol());
    let mut prepared = shape_request(protocol, method, uri, path, host_rewrite, headers);
    let attempts = Attempts {
        plan: &plan,
        action,
        policy,
        grpc,
        deadline: timeout.map(|t| start + t),
    };
    // The attempt loop, here rather than in a nested async fn (each nesting level copies the whole
    // inner future once more). Every try ends in a decision: deliver, retry or fail.
    let cluster = &plan.cluster;
    let max_tries = 1 + policy.map_or(0, |p| p.num_retries);
    let mut last_host: Option<Arc<Host>> = None;
    let mut timer = KeptTimer::take(&ctx.try_timer);
    // The retry in progress stays counted against the cluster's retry limit until it completes.
    let mut _retry_guard: Option<RetryGuard> = None;
    loop {
        facts.attempts += 1;
        let attempt = facts.attempts;
        let host = plan.pick(last_host.as_ref())?;
        facts.host = Some(host.address);
        let active = cluster
            .start_request(&host, action.priority)
            .ok_or_else(|| Error::internal(Reason::Overflow))?;
        let is_last = attempt >= max_tries;
        let request = attempts.request(&mut prepared, source.take(), &host, is_last);
        let try_start = Instant::now();
        let try_deadline = attempts.try_deadline(try_start);
        // Like Envoy, the route timeout counts from the end of the client's request.
        let upload = source.upload().zip(timeout);
        let mut outcome = send_once(
            cluster,
            &host,
            request,
            try_deadline,
            &mut timer.0,
            action.priority,
            upload,
        )
        .await;
        if let Err(f) = &mut outcome {
            // A streamed body handed to hyper is gone; one never sent can be put back for a retry.
            // (Taken in place: the response of a try, ~240 bytes, is moved as little as may be.)
            source.put_back(f.unsent.take());
        }
        // The client broke its own request (bad chunked framing, an aborted upload): whatever the
        // upstream did about the truncated request is not its fault. Answer the client, and leave
        // the host's outlier state, error counts and retry budget alone.
        if let Some(e) = source.client_fault() {
            tracing::debug!(cluster = %cluster.name(), host = %host.address, reason = e.reason.code(), "request body failed on the client side");
            return Err(e);
        }
        // The try's duration, read once for the cluster's histogram and the log.
        let took = try_start.elapsed();
        let RetryAfter { guard, wait } = match outcome {
            Ok(ok) => match attempts.on_response(&ok, &host, took, !is_last && source.replayable(), attempt) {
                Some(retry) => retry,
                None => {
                    let (resp, pooled) = ok;
                    facts.upstream_time = Some(took);
                    if let Some(x) = facts.trace.as_deref_mut() {
                        x.end_client(facts.host, attempt, Some(resp.status().as_u16()));
                    }
                    let resp = KeptResponse::new(finish_response(ctx, resp, pooled, down_upgrade, upgrade));
                    // Generated hash cookies ride on the upstream's response only (as Envoy's
                    // router: a local reply picked no endpoint to stick to).
                    let (set_cookies, active) = (plan.set_cookies, Some(active));
                    return Ok(Reply {
                        resp,
                        set_cookies,
                        reason: None,
                        active,
                    });
                }
            },
            Err(f) => attempts.on_error(f.error, &host, !is_last && source.can_resend(), attempt)?,
        };
        drop(active);
        let late = attempts.deadline.is_some_and(|d| Instant::now() + wait >= d);
        _retry_guard = Some(guard);
        if late {
            cluster.stats.rq_timeout.inc();
            return Err(Error::upstream(Reason::UpstreamTimeout, Retry::Unsafe)
                .context("route timeout reached before the next retry"));
        }
        tokio::time::sleep(wait).await;
        last_host = Some(host);
    }
}

/// The connection's route-timeout timer while one request uses it; back in its slot when the
/// request is done with it (unless another request put one back meanwhile).
struct KeptTimer<'a>(TryTimer, &'a parking_lot::Mutex<TryTimer>);

impl<'a> KeptTimer<'a> {
    fn take(slot: &'a parking_lot::Mutex<TryTimer>) -> KeptTimer<'a> {
        KeptTimer(std::mem::take(&mut *slot.lock()), slot)
    }
}

impl Drop for KeptTimer<'_> {
    fn drop(&mut self) {
        if self.0.is_some() {
            let mut slot = self.1.lock();
            if !slot.is_some() {
                *slot = std::mem::take(&mut self.0);
            }
        }
    }
}

/// The request's upstream headers (mutations of the route table, the virtual host and the route,
/// in that order), its rewritten path, its timeout (gRPC's own when allowed), and the mirror
/// policies it was sampled into (never for upgrades).
#[allow(clippy::too_many_arguments)]
fn outgoing(
    ctx: &ConnCtx,
    req: &mut Request<RequestBody>,
    (route_table, vh, route): (&RouteTable, &VirtualHostEntry, &RouteEntry),
    action: &ForwardAction,
    grpc: bool,
    upgrade: bool,
    plan: &Plan,
    facts: &mut Facts,
) -> (HeaderMap, Option<String>, Option<std::time::Duration>, u32) {
    let grpc_timeout = grpc.then(|| req.headers().get(&GRPC_TIMEOUT)).flatten();
    let timeout = action.effective_timeout(grpc_timeout.and_then(|v| parse_grpc_timeout(v.as_bytes())));
    let mutations = [
        &route_table.mutations.request,
        &vh.mutations.request,
        &route.mutations.request,
    ];
    let headers = upstream_headers(ctx, req, upgrade, grpc, mutations, plan, facts);
    let rewritten_path = rewritten_path(action, route, req.uri());
    let mirror_mask = match route.filters.as_deref() {
        Some(fx) if !upgrade => fx.sample_mirrors(),
        _ => 0,
    };
    (headers, rewritten_path, timeout, mirror_mask)
}

/// The request headers as they go upstream: the client's, rewritten (hop-by-hop removed, the
/// proxy's own added, the route's mutations in `mutations` order), with the client certificate
/// forwarded and the trace's client span started; what the log needs of them is noted in `facts`.
fn upstream_headers(
    ctx: &ConnCtx,
    req: &mut Request<RequestBody>,
    upgrade: bool,
    grpc: bool,
    mutations: [&HeaderOps; 3],
    plan: &Plan,
    facts: &mut Facts,
) -> HeaderMap {
    let headers = std::mem::take(req.headers_mut());
    let mut headers = rewrite_request_headers(ctx, headers, req.version(), upgrade, grpc, mutations);
    if let Some(t) = &ctx.tls {
        t.forward_client_cert(&mut headers);
    }
    if let (Some(t), Some(x)) = (&ctx.rt.tracer, facts.trace.as_deref_mut()) {
        x.start_client(t, plan.cluster.shared_name(), &mut headers);
    }
    if facts.logging {
        facts.request_id = headers.get(&X_REQUEST_ID).cloned();
        facts.xff = headers.get(&X_FORWARDED_FOR).cloned();
    }
    headers
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as in gRPC
/// over HTTP/2; anything else is ignored (`None`).
pub(crate) fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The upstream path when the route rewrites its prefix; `None` reuses the original as is.
fn rewritten_path(action: &ForwardAction, route: &RouteEntry, uri: &Uri) -> Option<String> {
    match (&action.prefix_rewrite, route.rewrite_prefix_len) {
        (Some(new_prefix), Some(matched)) => {
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            Some(format!("{new_prefix}{}", pq.get(matched..).unwrap_or("")))
        }
        _ => None,
    }
}

/// Sends the sampled mirrors a copy of the request; a streamed body cannot be shared, so they are
/// counted as skipped.
fn mirror(
    ctx: &ConnCtx,
    fx: &crate::filters::RouteFilters,
    mask: u32,
    (method, uri, headers): (&http::Method, &Uri, &HeaderMap),
    rewritten_path: Option<&str>,
    action: &ForwardAction,
    source: &BodySource,
) {
    match source {
        BodySource::Replayable(b) => fx.spawn_mirrors(
            mask,
            &*ctx.clusters,
            method,
            uri,
            rewritten_path,
            action.host_rewrite.as_deref(),
            headers,
            b.as_ref(),
            action.timeout,
        ),
        BodySource::Stream(..) => fx.skip_mirrors(mask),
    }
}

/// Hop-by-hop removal, forwarding headers, request id, then the header mutations of the route
/// table, virtual host and route (in that order, so the most specific wins).
fn rewrite_request_headers(
    ctx: &ConnCtx,
    mut headers: HeaderMap,
    down_version: Version,
    upgrade: bool,
    grpc: bool,
    mutations: [&HeaderOps; 3],
) -> HeaderMap {
    let rt = &*ctx.rt;
    // Which of the fields below are there: only those are looked up or removed.
    let present = RequestFields::scan(&headers).strip_hop_by_hop(&mut headers, upgrade);
    // No reservation for the fields added below: a map with room takes them as they are, one
    // without doubles once (reserving a guess of 4 had regrown and rehashed every HTTP/2
    // request's map, built by h2 with room for 6, on every gRPC call).
    if present.has(field::EXPECT) {
        headers.remove(header::EXPECT);
    }
    if present.has(field::TE) {
        // `te: trailers` is the one TE value allowed through from HTTP/1 (gRPC needs it).
        let keep = down_version != Version::HTTP_2
            && headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !keep {
            headers.remove(header::TE);
        }
    }
    if grpc {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if rt.config.use_remote_address {
        // Looked up only when the scan found one.
        match present
            .has(field::X_FORWARDED_FOR)
            .then(|| headers.get(&X_FORWARDED_FOR))
            .flatten()
        {
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
    } else if !present.has(field::X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if rt.config.generate_request_id && !present.has(field::X_REQUEST_ID) {
        headers.insert(&X_REQUEST_ID, request_id());
    }
    if let Some(v) = &rt.via {
        headers.append(header::VIA, v.clone());
    }
    if present.has(field::ORIGINAL_DST) {
        headers.remove(&ORIGINAL_DST_HEADER);
    }
    for m in mutations {
        m.apply(&mut headers);
    }
    headers
}

/// The request body, as each try will send it.
enum BodySource {
    /// Empty, or buffered (small, with a known length) so that retries and mirrors can resend it.
    Replayable(Option<Bytes>),
    /// Streamed from the client: sendable once, unless a try hands it back unsent.
    Stream(Option<RequestBody>, Arc<Upload>),
}

impl BodySource {
    /// Buffers the body when retries or mirrors want it replayable and it is small enough.
    async fn new(body: RequestBody, replay_wanted: bool) -> Result<BodySource, Error> {
        if body.is_end_stream() {
            return Ok(BodySource::Replayable(None));
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT.min(crate::filters::MIRROR_BODY_LIMIT));
        if replay_wanted && small {
            return match body.collect().await {
                Ok(c) => Ok(BodySource::Replayable(Some(c.to_bytes()))),
                Err(_) => Err(Error::downstream(Reason::DownstreamProtocolError).context("reading the request body")),
            };
        }
        Ok(BodySource::Stream(Some(body), Arc::new(Upload::default())))
    }

    /// The body for the next try.
    fn take(&mut self) -> UpBody {
        match self {
            BodySource::Replayable(None) => UpBody::Empty,
            BodySource::Replayable(Some(b)) => UpBody::Full(Some(b.clone())),
            BodySource::Stream(s, up) => match s.take() {
                Some(b) => UpBody::Stream(b, up.clone()),
                None => UpBody::Empty, // unreachable: a streamed body is never retried once taken
            },
        }
    }

    /// Puts back a streamed body a failed try never sent.
    fn put_back(&mut self, unsent: Option<UpBody>) {
        if let (Some(UpBody::Stream(b, _)), BodySource::Stream(slot, _)) = (unsent, self) {
            *slot = Some(b);
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, BodySource::Replayable(_))
    }

    /// Whether another try could send the body.
    fn can_resend(&self) -> bool {
        match self {
            BodySource::Replayable(_) => true,
            BodySource::Stream(s, _) => s.is_some(),
        }
    }

    /// The streamed upload's record, when the body is streamed from the client.
    fn upload(&self) -> Option<&Upload> {
        match self {
            BodySource::Stream(_, u) => Some(u),
            BodySource::Replayable(_) => None,
        }
    }

    /// Why the exchange failed on the client's side, if it did: a malformed or aborted upload.
    fn client_fault(&self) -> Option<Error> {
        match self.upload().map(|u| u.state()) {
            Some(UploadState::Malformed) => Some(Error::downstream(Reason::DownstreamProtocolError)),
            Some(UploadState::Aborted) => Some(Error::downstream(Reason::DownstreamDisconnect)),
            _ => None,
        }
    }
}

/// A try that is not the last one: retried after `wait`, counted against the cluster's retry
/// limit by `guard` until it completes.
struct RetryAfter {
    guard: RetryGuard,
    wait: Duration,
}

/// The retry policy and deadlines of one forwarded request's attempts.
struct Attempts<'a> {
    plan: &'a Plan,
    action: &'a ForwardAction,
    policy: Option<&'a RetryPolicy>,
    grpc: bool,
    /// The route timeout's deadline.
    deadline: Option<Instant>,
}

impl Attempts<'_> {
    /// The deadline of a try starting now: the route's, or the per-try timeout's if sooner.
    fn try_deadline(&self, try_start: Instant) -> Option<Instant> {
        let per_try = self.policy.and_then(|p| p.per_try_timeout);
        match (self.deadline, per_try) {
            (Some(d), Some(t)) => Some(d.min(try_start + t)),
            (d, t) => d.or(t.map(|t| try_start + t)),
        }
    }

    /// The request for one try: the last try takes the prepared headers, earlier ones clone them.
    fn request(&self, prepared: &mut Prepared, body: UpBody, host: &Host, is_last: bool) -> Request<UpBody> {
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
        if self.action.auto_host_rewrite {
            let authority = self.plan.cluster.authority_for(host);
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
    }

    /// A response arrived: record it, and retry it if the policy says so and the body can be
    /// resent (`None`: deliver it).
    fn on_response(
        &self,
        ok: &TryOk,
        host: &Arc<Host>,
        took: Duration,
        can_retry: bool,
        attempt: u32,
    ) -> Option<RetryAfter> {
        let cluster = &self.plan.cluster;
        let status = ok.0.status().as_u16();
        cluster.report(host, Outcome::Status(status));
        cluster.stats.record(status, took);
        if status >= 500 {
            host.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let grpc_unavailable = self.grpc && ok.0.headers().get(&GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"14");
        let p = self
            .policy
            .filter(|p| can_retry && retriable_status(p, status, grpc_unavailable))?;
        let guard = cluster.try_start_retry(self.action.priority)?;
        Some(RetryAfter {
            guard,
            wait: backoff(p, attempt - 1),
        })
    }

    /// A try failed: count it against the host (only failures that are the upstream's), and retry if
    /// the policy allows and time remains (else fail with the error).
    fn on_error(&self, e: Error, host: &Arc<Host>, can_retry: bool, attempt: u32) -> Result<RetryAfter, Error> {
        let cluster = &self.plan.cluster;
        host.rq_error.fetch_add(1, Ordering::Relaxed);
        if e.counts_against_host() {
            cluster.report(host, Outcome::LocalFailure);
        }
        if e.reason == Reason::UpstreamTimeout {
            cluster.stats.rq_timeout.inc();
        }
        let total_timed_out = self.deadline.is_some_and(|d| Instant::now() >= d);
        let p = self
            .policy
            .filter(|p| can_retry && !total_timed_out && retriable_error(p, &e));
        let guard = p.and_then(|_| cluster.try_start_retry(self.action.priority));
        tracing::debug!(cluster = %cluster.name(), host = %host.address, attempt, error = %e, retry = guard.is_some(), "upstream try failed");
        match (p, guard) {
            (Some(p), Some(guard)) => Ok(RetryAfter {
                guard,
                wait: backoff(p, attempt - 1),
            }),
            _ if total_timed_out => Err(Error::upstream(Reason::UpstreamTimeout, Retry::Unsafe)),
            _ => Err(e),
        }
    }
}

/// Whether the retry policy covers this failure. Breaker overflow and client faults never retry.
fn retriable_error(p: &RetryPolicy, e: &Error) -> bool {
    let on = &p.retry_on;
    if e.retry == Retry::Unsafe || !e.counts_against_host() {
        return false;
    }
    match e.reason {
        Reason::UpstreamConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
        Reason::UpstreamReset => on.reset || on.five_xx || on.gateway_error,
        Reason::UpstreamProtocolError => on.five_xx || on.gateway_error,
        Reason::UpstreamTimeout => on.per_try_timeout || on.five_xx || on.gateway_error,
        _ => false,
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

/// The response for the client: hop-by-hop headers removed, and for a `101 Switching Protocols`
/// the two upgraded connections joined in a tunnel.
fn finish_response(
    ctx: &ConnCtx,
    mut resp: Response<RespBody>,
    pooled: Option<PooledH1>,
    down_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade: bool,
) -> Response<DownBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // hyper keeps a connection's upgrade in the response's extensions (`hyper::upgrade::on`);
    // only hyper's client handles upgrades (weft's own client never sends one).
    let up_upgrade = (switching && down_upgrade.is_some())
        .then(|| resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let (mut parts, body) = resp.into_parts();
    // weft's own client leaves the fixed hop-by-hop fields out as it parses the head.
    match &body {
        RespBody::Raw(raw) if !raw.connection_options() => {}
        _ => strip_hop_by_hop(&mut parts.headers, upgrade && switching),
    }
    // The upstream's HTTP version is a property of that hop only: an HTTP/1.0 upstream (Python's
    // http.server, old appliances) must not turn the client's HTTP/1.1 keep-alive connection into
    // a close-after-response one. hyper writes the status line from this field and still answers an
    // HTTP/1.0 client as HTTP/1.0 on its own.
    if parts.version == Version::HTTP_10 {
        parts.version = Version::HTTP_11;
    }
    if switching {
        if let (Some(down), Some(up)) = (down_upgrade, up_upgrade) {
            // The upstream connection now belongs to the tunnel, never to the pool.
            drop(pooled);
            // The downstream connection stays open (and counted) until the tunnel ends.
            let (end, ended) = tokio::sync::oneshot::channel::<()>();
            *ctx.tunnel.lock() = Some(ended);
            ctx.upgraded.store(true, std::sync::atomic::Ordering::Relaxed);
            let stop = ctx.rt.stop.clone();
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
                    return;
                };
                crate::tcp::tunnel(TokioIo::new(down), TokioIo::new(up), stop).await;
                drop(end);
            });
            return Response::from_parts(parts, DownBody::empty());
        }
    }
    Response::from_parts(parts, DownBody::upstream(body, pooled))
}

#[cfg(test)]
mod grpc_timeout_tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        assert_eq!(parse_grpc_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad.as_bytes()), None, "{bad}");
        }
    }
}
