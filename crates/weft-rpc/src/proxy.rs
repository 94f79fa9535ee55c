//! The RPC proxy: per-request routing and load balancing, requests multiplexed over a small pool of
//! upstream connections per host (request ids rewritten, responses matched back), per-request
//! timeouts, heartbeats answered locally, graceful close on drain, metrics and access logs.
//!
//! A downstream connection is one task reading frames plus, while it is in use, one writer task
//! draining a channel of finished frames (responses from any upstream connection, local replies).
//! A connection at rest (nothing in flight, nothing read for [`PARK_AFTER`]) is parked: the writer
//! task and the channel are dropped and only the socket's halves stay, so that an idle connection
//! costs little memory (the listener may hold tens of thousands); they are built again for its
//! next request. An upstream connection is a reader task (responses, heartbeats, timeouts) plus a
//! writer task. Frames move between them as `Bytes` split off the read buffer: bodies are never
//! copied.

use crate::bolt::Bolt;
use crate::codec::{Codec, Frame, FrameKind, LocalReply, RequestInfo};
use crate::dubbo::Dubbo;
use crate::metrics::{ListenerRpcStats, MethodStats};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use weft_config::rpc::{RpcProtocol, RpcProxy, RpcRoute};
use weft_config::RoutePriority;
use weft_core::access_log::{timestamp, AccessLogger};
use weft_core::istio::{IstioReporter, ServiceRef, NOT_GRPC};
use weft_core::trace::{RpcSpan, TraceExchange, Tracer};
use weft_route::filters::{Chance, LocalRateLimiter};
use weft_route::ratelimit::{descriptors_with, RateLimitClient, Verdict};
use weft_upstream::cluster::{ActiveRequest, ConnGuard, RawStream};
use weft_upstream::outlier::Outcome;
use weft_upstream::{ClusterLookup, ClusterRt, Host};

/// OpenTelemetry's `rpc.system` of a codec.
fn rpc_system(codec: &str) -> &'static str {
    match codec {
        "dubbo" => "apache_dubbo",
        "bolt" => "sofarpc",
        _ => "other",
    }
}

const READ_CHUNK: usize = 8 * 1024;
const MAX_BATCH: usize = 64;
/// How long a downstream connection rests (nothing in flight, nothing read) before its writer task
/// and response channel are dropped (see the module's documentation).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// An RPC listener's runtime: its configuration, codec, upstream connection pools and stats.
pub struct RpcRt {
    pub config: RpcProxy,
    pub listener: String,
    codec: Arc<dyn Codec>,
    stats: Arc<ListenerRpcStats>,
    access_log: Option<Arc<AccessLogger>>,
    pools: Mutex<HashMap<(SocketAddr, Arc<str>), HostSlots>>,
    /// How often in-flight requests are checked for their deadline.
    sweep: Duration,
    tracer: Option<Arc<Tracer>>,
    /// Per route (same order as `config.routes`): its fault injection and rate limit.
    route_rt: Vec<RouteRt>,
    /// The global rate limit service the routes' `rate_limits` ask.
    rls: Option<Arc<RateLimitClient>>,
    /// Istio-standard request metrics (`istio_requests_total`, …), when the node asks for them.
    istio: Option<Arc<IstioReporter>>,
}

/// A route's governance state.
struct RouteRt {
    abort: Option<Chance>,
    delay: Option<(Duration, Chance)>,
    limiter: Option<LocalRateLimiter>,
    mirror: Option<(String, Chance)>,
}

impl RouteRt {
    fn new(r: &RpcRoute) -> RouteRt {
        let f = r.fault.as_ref();
        RouteRt {
            abort: f.and_then(|f| f.abort_percent).map(Chance::from_percent),
            delay: f
                .and_then(|f| f.delay.as_ref())
                .map(|d| (d.fixed, Chance::from_percent(d.percent))),
            mirror: r
                .mirror
                .as_ref()
                .map(|m| (m.cluster.clone(), Chance::from_percent(m.percent))),
            limiter: r.rate_limit.as_ref().map(|l| {
                LocalRateLimiter::for_values(&l.bucket, l.descriptor_attachment.is_some(), Default::default())
            }),
        }
    }
}

type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<UpConn>>>>;

struct HostSlots {
    slots: Vec<ConnSlot>,
    next: usize,
}

impl RpcRt {
    pub fn new(config: &RpcProxy, listener: &str, access_log: Option<Arc<AccessLogger>>) -> RpcRt {
        let codec: Arc<dyn Codec> = match config.protocol {
            RpcProtocol::Dubbo => Arc::new(Dubbo),
            RpcProtocol::Bolt => Arc::new(Bolt),
            // A sniffing listener builds one runtime per protocol it found (see `RpcRt::for_protocol`).
            RpcProtocol::Auto => Arc::new(Dubbo),
        };
        let min_timeout = config
            .routes
            .iter()
            .filter_map(|r| r.timeout)
            .chain(std::iter::once(config.timeout))
            .min()
            .unwrap_or(config.timeout);
        RpcRt {
            stats: ListenerRpcStats::new(listener, config.max_method_labels),
            config: config.clone(),
            listener: listener.to_string(),
            codec,
            access_log,
            pools: Mutex::new(HashMap::new()),
            sweep: (min_timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100)),
            tracer: None,
            route_rt: config.routes.iter().map(RouteRt::new).collect(),
            rls: config.rate_limit_service.as_ref().map(|s| {
                let (over, errors) = crate::metrics::global().rate_limit_service(listener);
                Arc::new(RateLimitClient::new(s, over, errors))
            }),
            istio: None,
        }
    }

    /// Reports every call in the Istio-standard request metrics too (`request_protocol` the
    /// codec's name, `response_code` the RPC status's HTTP-like class), so the service graph and
    /// Istio dashboards show RPC traffic.
    pub fn with_istio(mut self, istio: Option<IstioReporter>) -> RpcRt {
        self.istio = istio.map(|i| Arc::new(i.with_protocol(self.codec.name())));
        self
    }

    /// Traces the listener's requests (a server span each, and a client span per forwarded one)
    /// and propagates the context in their attachments.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> RpcRt {
        self.tracer = tracer;
        self
    }

    fn route(&self, frame: &Frame, info: &RequestInfo) -> Option<usize> {
        let c = &*self.codec;
        let i = self.config.routes.iter().position(|r| {
            let m = &r.match_;
            if m.protocol.as_deref().is_some_and(|p| p != c.name()) {
                return false;
            }
            if let Some(want) = &m.interface {
                let ok = info.service.get(&frame.data).is_some_and(|s| s == want.as_str())
                    || c.attachment(frame, info, "interface")
                        .is_some_and(|v| v.matches_text(want));
                if !ok {
                    return false;
                }
            }
            if let Some(want) = &m.method {
                if info.method.get(&frame.data).is_none_or(|s| s != want.as_str()) {
                    return false;
                }
            }
            if let Some(want) = &m.version {
                let ok = match info.version.get(&frame.data) {
                    Some(s) if !s.is_empty() => s == want.as_str(),
                    _ => c
                        .attachment(frame, info, "version")
                        .is_some_and(|v| v.matches_text(want)),
                };
                if !ok {
                    return false;
                }
            }
            if let Some(want) = &m.group {
                if !c.attachment(frame, info, "group").is_some_and(|v| v.matches_text(want)) {
                    return false;
                }
            }
            m.attachments
                .iter()
                .all(|(k, want)| c.attachment(frame, info, k).is_some_and(|v| v.matches_text(want)))
                && m.arguments.iter().all(|a| {
                    c.argument(frame, info, a.index)
                        .is_some_and(|v| v.matches_text(&a.equals))
                })
        })?;
        Some(i)
    }

    /// An upstream connection to `host` of `cluster`: round robin over the host's slots, each
    /// connected on first use and reconnected when it has closed. The open connection of the
    /// slot if it has one (no waiting), or the slot to connect.
    fn conn_now(&self, cluster: &Arc<ClusterRt>, host: &Arc<Host>) -> Result<Arc<UpConn>, ConnSlot> {
        let slot = {
            let mut pools = self.pools.lock();
            let key = (host.address, Arc::<str>::from(cluster.name()));
            let hs = pools.entry(key).or_insert_with(|| HostSlots {
                slots: (0..self.config.connections_per_host)
                    .map(|_| Arc::new(tokio::sync::Mutex::new(None)))
                    .collect(),
                next: 0,
            });
            hs.next = (hs.next + 1) % hs.slots.len();
            hs.slots[hs.next].clone()
        };
        if let Ok(s) = slot.try_lock() {
            if let Some(c) = s.as_ref().filter(|c| c.usable()) {
                return Ok(c.clone());
            }
        }
        Err(slot)
    }

    /// [`conn_now`](Self::conn_now), else [`connect`](Self::connect). For tasks of their own (a
    /// retry, a mirror); a connection's task boxes the connect (see there).
    async fn conn(&self, cluster: &Arc<ClusterRt>, host: &Arc<Host>) -> Result<Arc<UpConn>, weft_core::Error> {
        match self.conn_now(cluster, host) {
            Ok(c) => Ok(c),
            Err(slot) => self.connect(slot, cluster, host).await,
        }
    }

    /// Connects `slot` (another request may have done so meanwhile). Boxed by the caller: the
    /// connect future is large, and a connection task's future is as large as its largest await,
    /// for the whole life of the connection.
    async fn connect(
        &self,
        slot: ConnSlot,
        cluster: &Arc<ClusterRt>,
        host: &Arc<Host>,
    ) -> Result<Arc<UpConn>, weft_core::Error> {
        let mut s = slot.lock().await;
        if let Some(c) = s.as_ref() {
            if c.usable() {
                return Ok(c.clone());
            }
        }
        let (stream, guard) = cluster.connect_stream(host).await?;
        let c = match stream {
            RawStream::Tcp(s) => UpConn::start(s.into_split(), guard, self, cluster.clone(), host.clone()),
            // Mesh mTLS (or the cluster's own `tls`): the halves share the TLS state.
            RawStream::Tls(s) => UpConn::start(tokio::io::split(*s), guard, self, cluster.clone(), host.clone()),
        };
        *s = Some(c.clone());
        Ok(c)
    }

    fn reply(&self, down: &Down, id: u64, r: LocalReply, msg: &str) {
        self.stats.local_reply(r.reason());
        let _ = down.tx.send(self.codec.local_reply(id, r, msg));
    }

    /// Records a call weft answered itself (or dropped, one-way) in the Istio metrics: for the
    /// cluster of the route it matched, or none when no route matched.
    fn istio_local(&self, r: LocalReply, route: Option<&RpcRoute>) {
        let Some(istio) = &self.istio else { return };
        let cluster = route.map_or("", |x| x.cluster.as_str());
        let class = self.codec.status_class(self.codec.local_status(r));
        istio.record(cluster, None, class, r.reason(), false, NOT_GRPC, Duration::ZERO, 0, 0);
    }

    /// Ends a traced request that weft answered itself.
    fn trace_local(&self, trace: Option<Box<TraceExchange>>, r: LocalReply, route: Option<&RpcRoute>) {
        let route = route.map(|x| x.name.as_str());
        if let (Some(t), Some(ex)) = (&self.tracer, trace) {
            t.finish_rpc(ex, false, self.codec.local_status(r), Some(r.reason()), route);
        }
    }
}

/// The downstream side a response goes back to.
#[derive(Clone)]
struct Down {
    tx: mpsc::UnboundedSender<Bytes>,
    inflight: Arc<AtomicU32>,
    peer: SocketAddr,
}

/// A request in flight on an upstream connection.
struct Pending {
    down: Down,
    orig_id: u64,
    deadline: Instant,
    started: Instant,
    stats: MethodStats,
    _active: ActiveRequest,
    log: Option<Box<LogInfo>>,
    trace: Option<Box<TraceExchange>>,
    /// An idempotent route's call: what a retry on another host needs.
    retry: Option<Box<Retry>>,
    /// The request's size on the wire (Istio's `istio_request_bytes`).
    request_bytes: u32,
}

/// A call that may be sent again (its route's methods are idempotent) if its connection closes
/// before the answer.
struct Retry {
    rt: Arc<RpcRt>,
    cluster: Arc<ClusterRt>,
    /// Its route (in `rt.config.routes`): the subset the hosts are picked from.
    route: usize,
    /// The request as last sent (its request id is rewritten for the next connection).
    data: Bytes,
    /// Tries left.
    left: u32,
}

struct LogInfo {
    started_at: SystemTime,
    service: String,
    method: String,
    route: String,
}

struct UpConn {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// The upstream sent its go-away (Dubbo READONLY): no new requests.
    readonly: AtomicBool,
    /// Tells the writer to close the connection (the reader has ended).
    stop: Arc<tokio::sync::Notify>,
}

impl UpConn {
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && !self.readonly.load(Ordering::Relaxed)
    }

    fn start<R, W>(
        (r, w): (R, W),
        guard: ConnGuard,
        rt: &RpcRt,
        cluster: Arc<ClusterRt>,
        host: Arc<Host>,
    ) -> Arc<UpConn>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(UpConn {
            tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            readonly: AtomicBool::new(false),
            stop: Arc::new(tokio::sync::Notify::new()),
        });
        let stop = conn.stop.clone();
        tokio::spawn(async move {
            if let WriterEnd::Closed(mut w) | WriterEnd::Park(mut w, _) = writer(w, rx, Some(stop)).await {
                let _ = w.shutdown().await;
            }
        });
        let ctx = UpCtx {
            codec: rt.codec.clone(),
            stats: rt.stats.clone(),
            access_log: rt.access_log.clone(),
            listener: rt.listener.clone(),
            max_frame: rt.config.max_frame_size,
            sweep: rt.sweep,
            cluster,
            host,
            tracer: rt.tracer.clone(),
            istio: rt.istio.clone(),
        };
        tokio::spawn(up_reader(r, conn.clone(), ctx, guard));
        conn
    }
}

struct UpCtx {
    codec: Arc<dyn Codec>,
    stats: Arc<ListenerRpcStats>,
    access_log: Option<Arc<AccessLogger>>,
    listener: String,
    max_frame: u32,
    sweep: Duration,
    cluster: Arc<ClusterRt>,
    host: Arc<Host>,
    tracer: Option<Arc<Tracer>>,
    istio: Option<Arc<IstioReporter>>,
}

impl UpCtx {
    /// A request's end: `reason` is set when weft answered it itself (no response came);
    /// `response_bytes` is the size of the answer the caller got.
    fn finish(&self, mut p: Pending, status: u16, reason: Option<&'static str>, response_bytes: usize) {
        let elapsed = p.started.elapsed();
        let ok = self.codec.status_ok(status);
        if ok { &p.stats.ok } else { &p.stats.error }.inc();
        p.stats.time.observe(elapsed.as_secs_f64());
        let class = self.codec.status_class(status);
        self.cluster.stats.record(class, elapsed);
        if let Some(istio) = &self.istio {
            let flags = reason.unwrap_or("-");
            let (req, resp) = (u64::from(p.request_bytes), response_bytes as u64);
            let service = (self.cluster.config.service.as_ref()).map(|s| ServiceRef {
                host: &s.host,
                name: &s.name,
                namespace: &s.namespace,
            });
            istio.record(
                self.cluster.name(),
                service,
                class,
                flags,
                false,
                NOT_GRPC,
                elapsed,
                req,
                resp,
            );
        }
        // Release: the response was sent on the channel before; a connection that sees nothing
        // in flight (Acquire) finds it there.
        p.down.inflight.fetch_sub(1, Ordering::Release);
        if let (Some(l), Some(info)) = (&self.access_log, &p.log) {
            l.log(&serde_json::json!({
                "start_time": timestamp(info.started_at),
                "listener": self.listener,
                "protocol": self.codec.name(),
                "downstream_remote_address": p.down.peer.to_string(),
                "rpc_service": info.service,
                "rpc_method": info.method,
                "rpc_route": info.route,
                "rpc_status": status,
                "upstream_cluster": self.cluster.name(),
                "upstream_host": self.host.address.to_string(),
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "reason": reason.unwrap_or("-"),
            }));
        }
        if let (Some(t), Some(mut ex)) = (&self.tracer, p.trace.take()) {
            let answered = reason.is_none();
            if let Some(r) = &mut ex.rpc {
                r.upstream_ok = answered && ok;
            }
            ex.end_client(Some(self.host.address), 1, answered.then_some(status));
            let route = ex.route.take();
            t.finish_rpc(ex, ok, status, reason, route.as_deref());
        }
    }

    fn fail(&self, p: Pending, r: LocalReply, msg: &str) {
        self.stats.local_reply(r.reason());
        let reply = self.codec.local_reply(p.orig_id, r, msg);
        let n = reply.len();
        let _ = p.down.tx.send(reply);
        let status = self.codec.local_status(r);
        self.finish(p, status, Some(r.reason()), n);
    }
}

async fn up_reader<R: AsyncRead + Unpin>(mut r: R, conn: Arc<UpConn>, ctx: UpCtx, _guard: ConnGuard) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut sweep = tokio::time::interval(ctx.sweep);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why: &str = 'outer: loop {
        tokio::select! {
            n = r.read_buf(&mut buf) => {
                match n {
                    Ok(0) => break 'outer "upstream closed the connection",
                    Err(_) => break 'outer "upstream connection reset",
                    Ok(n) => { ctx.cluster.stats.rx_bytes.inc_by(n as u64); }
                }
                loop {
                    match ctx.codec.decode(&mut buf, ctx.max_frame) {
                        Ok(None) => break,
                        Err(e) => {
                            ctx.stats.decode_error(e.reason());
                            break 'outer "upstream sent a malformed frame";
                        }
                        Ok(Some(mut f)) => match f.kind {
                            FrameKind::Response => {
                                let p = conn.pending.lock().remove(&f.id);
                                if let Some(p) = p {
                                    let status = f.status;
                                    ctx.codec.set_request_id(&mut f, p.orig_id);
                                    let n = f.data.len();
                                    let _ = p.down.tx.send(f.data.freeze());
                                    let class = ctx.codec.status_class(status);
                                    ctx.cluster.report(&ctx.host, Outcome::Status(class));
                                    ctx.finish(p, status, None, n);
                                }
                            }
                            FrameKind::Heartbeat => {
                                let _ = conn.tx.send(ctx.codec.heartbeat_reply(&f));
                            }
                            FrameKind::GoAway => conn.readonly.store(true, Ordering::Relaxed),
                            _ => {}
                        },
                    }
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(READ_CHUNK);
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<Pending> = {
                    let mut p = conn.pending.lock();
                    if p.is_empty() {
                        Vec::new()
                    } else {
                        let ids: Vec<u64> = p.iter().filter(|(_, v)| v.deadline <= now).map(|(k, _)| *k).collect();
                        ids.iter().filter_map(|id| p.remove(id)).collect()
                    }
                };
                for p in expired {
                    ctx.cluster.stats.rq_timeout.inc();
                    ctx.cluster.report(&ctx.host, Outcome::LocalFailure);
                    ctx.fail(p, LocalReply::Timeout, "upstream request timeout (weft)");
                }
                // Nobody can send on it any more (the listener went away), or the upstream asked
                // for no new requests: close once nothing is in flight.
                let idle = conn.pending.lock().is_empty();
                if idle && (Arc::strong_count(&conn) == 1 || conn.readonly.load(Ordering::Relaxed)) {
                    break 'outer "idle";
                }
            }
        }
    };
    conn.closed.store(true, Ordering::Relaxed);
    conn.stop.notify_one();
    let left: Vec<Pending> = conn.pending.lock().drain().map(|(_, p)| p).collect();
    if !left.is_empty() {
        ctx.cluster.report(&ctx.host, Outcome::LocalFailure);
        let msg = format!("{why} (weft)");
        let ctx = Arc::new(ctx);
        for mut p in left {
            match p.retry.take() {
                Some(r) if Instant::now() < p.deadline => {
                    tokio::spawn(retry_call(ctx.clone(), p, r, msg.clone()));
                }
                _ => ctx.fail(p, LocalReply::UpstreamFailure, &msg),
            }
        }
    }
}

/// Sends an idempotent route's call again, on another host, after its connection closed before
/// the answer; answers it `UpstreamFailure` (as without a retry) when no try is left, the retry
/// budget is spent or no host can take it. The call keeps its place: its caller, deadline,
/// metrics, log and trace.
async fn retry_call(ctx: Arc<UpCtx>, mut p: Pending, mut r: Box<Retry>, why: String) {
    let rt = r.rt.clone();
    let labels = &rt.config.routes[r.route].subset;
    let subset = (!labels.is_empty()).then_some(labels);
    loop {
        let guard = match r.left {
            0 => None,
            _ => r.cluster.try_start_retry(RoutePriority::Default),
        };
        let Some(_guard) = guard else {
            ctx.fail(p, LocalReply::UpstreamFailure, &why);
            return;
        };
        r.left -= 1;
        let Some(host) = r.cluster.pick(None, None, subset) else {
            ctx.fail(p, LocalReply::NoHealthyUpstream, "no healthy upstream (weft)");
            return;
        };
        let Some(active) = r.cluster.start_request(&host, RoutePriority::Default) else {
            ctx.fail(p, LocalReply::Overload, "upstream overloaded (weft)");
            return;
        };
        let conn = match rt.conn(&r.cluster, &host).await {
            Ok(c) => c,
            Err(e) => {
                if e.counts_against_host() {
                    r.cluster.report(&host, Outcome::LocalFailure);
                }
                continue;
            }
        };
        let up_id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let data = with_request_id(&*ctx.codec, &r.data, up_id);
        r.data = data.clone();
        r.cluster.stats.tx_bytes.inc_by(data.len() as u64);
        p._active = active;
        p.retry = Some(r);
        conn.pending.lock().insert(up_id, p);
        if conn.tx.send(data).is_ok() && !conn.closed.load(Ordering::Relaxed) {
            return;
        }
        // Closed under us: try again if its reader has not taken the call already.
        let Some(mut back) = conn.pending.lock().remove(&up_id) else {
            return;
        };
        match back.retry.take() {
            Some(next) => (p, r) = (back, next),
            None => {
                ctx.fail(back, LocalReply::UpstreamFailure, &why);
                return;
            }
        }
    }
}

/// How a writer task ended.
enum WriterEnd<W> {
    /// Every sender is gone and everything sent was written (or the writer was told to stop).
    Closed(W),
    /// It met the park marker (an empty frame) after writing everything sent before it; the
    /// channel may hold frames sent after it.
    Park(W, mpsc::UnboundedReceiver<Bytes>),
    /// Writing failed: the peer is gone.
    Failed,
}

/// Writes the frames sent on `rx`, batched into vectored writes, until `rx` is closed, `stop` is
/// notified or an empty frame (the park marker, sent only by a downstream connection task) comes.
async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    stop: Option<Arc<tokio::sync::Notify>>,
) -> WriterEnd<W> {
    let mut batch: Vec<Bytes> = Vec::with_capacity(8);
    let mut park = false;
    loop {
        let stopped = async {
            match &stop {
                Some(s) => s.notified().await,
                None => std::future::pending().await,
            }
        };
        let b = tokio::select! {
            b = rx.recv() => match b {
                Some(b) => b,
                None => return WriterEnd::Closed(w),
            },
            _ = stopped => return WriterEnd::Closed(w),
        };
        if b.is_empty() {
            return WriterEnd::Park(w, rx);
        }
        batch.push(b);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) if b.is_empty() => {
                    park = true;
                    break;
                }
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        // Flushed: a TLS stream may hold the last record until then (a no-op on TCP).
        if write_all_vectored(&mut w, &mut batch).await.is_err() || w.flush().await.is_err() {
            return WriterEnd::Failed;
        }
        if park {
            return WriterEnd::Park(w, rx);
        }
        batch.clear();
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, bufs: &mut [Bytes]) -> std::io::Result<()> {
    if bufs.len() == 1 {
        return w.write_all(&bufs[0]).await;
    }
    let mut i = 0;
    while i < bufs.len() {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let n = (bufs.len() - i).min(MAX_BATCH);
        for (k, b) in bufs[i..i + n].iter().enumerate() {
            slices[k] = IoSlice::new(b);
        }
        let mut written = w.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < bufs.len() && written >= bufs[i].len() {
            written -= bufs[i].len();
            i += 1;
        }
        if written > 0 {
            let _ = bufs[i].split_to(written);
        }
    }
    Ok(())
}

/// A downstream connection, split into halves for the reading loop and the writer task.
pub trait DownstreamIo: Send + 'static {
    type R: DownstreamRead;
    type W: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::R, Self::W);
}

/// The read half of a downstream connection.
pub trait DownstreamRead: AsyncRead + Unpin + Send + 'static {
    /// Waits until the connection has something to read (data, end of stream or an error)
    /// without reading it, so that an idle connection needs no read buffer. A stream that cannot
    /// tell (TLS: a record may hold no application data) returns at once, and its idle
    /// connections keep their buffer.
    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
}

impl DownstreamRead for tokio::net::tcp::OwnedReadHalf {
    async fn ready(&mut self) -> std::io::Result<()> {
        self.readable().await
    }
}

impl<S: AsyncRead + Send + 'static> DownstreamRead for tokio::io::ReadHalf<S> {}

impl DownstreamIo for TcpStream {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::R, Self::W) {
        self.into_split()
    }
}

/// Any other stream (TLS over TCP): split with `tokio::io::split` (a lock shared by the halves).
pub struct SplitIo<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + 'static> DownstreamIo for SplitIo<S> {
    type R = tokio::io::ReadHalf<S>;
    type W = tokio::io::WriteHalf<S>;
    fn into_halves(self) -> (Self::R, Self::W) {
        tokio::io::split(self.0)
    }
}

/// The write side of a downstream connection: parked (only the write half) while the connection
/// is at rest, or a writer task and the channel it drains while it is in use.
enum Out<W> {
    Parked(W),
    Active {
        down: Down,
        writer: tokio::task::JoinHandle<WriterEnd<W>>,
        /// The park marker was sent: the writer ends once it has written what came before it.
        parking: bool,
    },
    /// Writing failed.
    Gone,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Out<W> {
    /// Where responses and local replies are sent; starts a writer on a parked connection.
    fn down(&mut self, inflight: &Arc<AtomicU32>, peer: SocketAddr) -> Option<&Down> {
        if let Out::Parked(_) = self {
            let Out::Parked(w) = std::mem::replace(self, Out::Gone) else {
                unreachable!("matched above")
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let down = Down {
                tx,
                inflight: inflight.clone(),
                peer,
            };
            let writer = tokio::spawn(writer(w, rx, None));
            *self = Out::Active {
                down,
                writer,
                parking: false,
            };
        }
        match self {
            Out::Active { down, .. } => Some(down),
            _ => None,
        }
    }

    fn send(&mut self, frame: Bytes, inflight: &Arc<AtomicU32>, peer: SocketAddr) {
        if let Some(d) = self.down(inflight, peer) {
            let _ = d.tx.send(frame);
        }
    }

    /// Waits for a parking writer to end (never ends otherwise).
    async fn parked(&mut self) -> Result<WriterEnd<W>, tokio::task::JoinError> {
        match self {
            Out::Active {
                writer, parking: true, ..
            } => writer.await,
            _ => std::future::pending().await,
        }
    }

    /// After the writer ended: parked if nothing was sent after the marker and nothing is in
    /// flight (no response can come, and only this connection's task starts requests); otherwise
    /// a new writer drains the same channel. False if writing had failed.
    fn settle(&mut self, end: WriterEnd<W>, inflight: &AtomicU32, stats: &ListenerRpcStats) -> bool {
        let Out::Active { down, .. } = std::mem::replace(self, Out::Gone) else {
            return false;
        };
        match end {
            WriterEnd::Park(w, rx) if inflight.load(Ordering::Acquire) == 0 && rx.is_empty() => {
                stats.parks.inc();
                *self = Out::Parked(w);
                true
            }
            WriterEnd::Park(w, rx) => {
                *self = Out::Active {
                    down,
                    writer: tokio::spawn(writer(w, rx, None)),
                    parking: false,
                };
                true
            }
            // Every sender was gone though this task held one: cannot happen; closing is safe.
            WriterEnd::Closed(_) | WriterEnd::Failed => false,
        }
    }

    /// At the connection's end: everything sent written (responses of requests still in flight
    /// included, when they come), then the write side shut down.
    async fn close(self) {
        let (mut w, mut rx) = match self {
            Out::Parked(mut w) => {
                let _ = w.shutdown().await;
                return;
            }
            Out::Gone => return,
            Out::Active { down, writer, .. } => {
                drop(down);
                match writer.await {
                    Ok(WriterEnd::Closed(mut w)) => {
                        let _ = w.shutdown().await;
                        return;
                    }
                    Ok(WriterEnd::Park(w, rx)) => (w, rx),
                    _ => return,
                }
            }
        };
        // It had reached a park marker: what was sent after it, then the rest (in this task;
        // boxed, or the writer's future would make every connection task's future larger).
        loop {
            match Box::pin(writer(w, rx, None)).await {
                WriterEnd::Closed(mut last) => {
                    let _ = last.shutdown().await;
                    return;
                }
                WriterEnd::Park(w2, rx2) => (w, rx) = (w2, rx2),
                WriterEnd::Failed => return,
            }
        }
    }
}

/// Serves one downstream connection until it closes, a frame is malformed, or (after a drain
/// signal and the protocol's go-away message) nothing is left in flight. The stream is a TCP
/// connection, or (in [`SplitIo`]) the TLS stream over one when the listener terminates TLS.
pub async fn serve_connection<S: DownstreamIo>(
    stream: S,
    peer: SocketAddr,
    rt: Arc<RpcRt>,
    clusters: &dyn ClusterLookup,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let (mut r, w) = stream.into_halves();
    let inflight = Arc::new(AtomicU32::new(0));
    let mut out = Out::Parked(w);
    // No read buffer while the connection is at rest: one is taken when the socket is readable
    // and dropped again once every frame in it has been handed on (`read_frame_bytes`).
    let mut buf = BytesMut::new();
    let mut draining = *drain.borrow();
    // Made when draining starts (a timer is an allocation every idle connection would hold).
    let mut drain_check = None;
    if draining {
        drain_check = Some(tokio::time::interval(Duration::from_millis(20)));
        if let Some(g) = rt.codec.goaway() {
            out.send(g, &inflight, peer);
        }
    }
    let idle = rt.config.idle_timeout;
    let mut last_read = Instant::now();
    // Since when nothing was read and nothing has been found in flight: parked after PARK_AFTER.
    let mut rest_since = last_read;
    'outer: loop {
        if draining && inflight.load(Ordering::Acquire) == 0 {
            break;
        }
        let park_at = match &out {
            Out::Active { parking: false, .. } => Some(rest_since + PARK_AFTER),
            _ => None,
        };
        let wake = [idle.map(|t| last_read + t), park_at].into_iter().flatten().min();
        let timer = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match drain_check.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = read_frame_bytes(&mut r, &mut buf) => {
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        last_read = Instant::now();
                        rest_since = last_read;
                    }
                }
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                drain_check = Some(tokio::time::interval(Duration::from_millis(20)));
                if let Some(g) = rt.codec.goaway() {
                    out.send(g, &inflight, peer);
                }
                continue;
            }
            _ = tick => continue,
            end = out.parked() => {
                let Ok(end) = end else { break };
                if !out.settle(end, &inflight, &rt.stats) {
                    break;
                }
                continue;
            }
            _ = timer => {
                let now = Instant::now();
                let busy = inflight.load(Ordering::Acquire) > 0;
                if park_at.is_some_and(|t| t <= now) {
                    if busy {
                        rest_since = now;
                    } else if let Out::Active { down, parking, .. } = &mut out {
                        // The park marker: the writer ends after writing what came before it.
                        let _ = down.tx.send(Bytes::new());
                        *parking = true;
                    }
                }
                if idle.is_some_and(|t| last_read + t <= now) {
                    if !busy {
                        break;
                    }
                    last_read = now;
                }
                continue;
            }
        }
        loop {
            let frame = match rt.codec.decode(&mut buf, rt.config.max_frame_size) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    rt.stats.decode_error(e.reason());
                    tracing::debug!(listener = %rt.listener, %peer, error = %e, "closing RPC connection");
                    if let Some(id) = e.reply_to() {
                        if let Some(down) = out.down(&inflight, peer) {
                            rt.reply(down, id, LocalReply::BadRequest, &format!("{e} (weft)"));
                        }
                    }
                    break 'outer;
                }
            };
            let Some(down) = out.down(&inflight, peer) else {
                break 'outer;
            };
            if !handle_frame(&rt, clusters, down, frame).await {
                break 'outer;
            }
        }
        // An idle connection keeps no read buffer: the frames split off it have their own
        // references to its allocation, and the rest (up to READ_CHUNK) would stay resident
        // (about 4 KiB of RSS per idle connection).
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
    out.close().await;
}

/// Reads what the caller sent into `buf`. An empty buffer (a connection at rest) is given up and a
/// new READ_CHUNK taken only once the socket is readable, so that an idle connection holds none
/// (also when an earlier call was cancelled after taking it). Cancel-safe: nothing is read until
/// the final `read_buf`, itself cancel-safe.
async fn read_frame_bytes<R: DownstreamRead>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.is_empty() {
        if buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
        r.ready().await?;
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    r.read_buf(buf).await
}

/// Copies a share of a route's calls to its mirror cluster (its own task: the caller never
/// waits for it). The copy gets a request id of the mirror's connection that nothing waits for,
/// so its answer is dropped when it comes; a mirror that is down, overloaded or slow changes
/// nothing for the call.
fn mirror(rt: &Arc<RpcRt>, to: Option<Arc<ClusterRt>>, data: &Bytes) {
    let Some(cluster) = to else { return };
    let (rt, data) = (rt.clone(), data.clone());
    tokio::spawn(async move {
        let Some(host) = cluster.pick(None, None, None) else {
            return;
        };
        let Some(_active) = cluster.start_request(&host, RoutePriority::Default) else {
            return;
        };
        let Ok(conn) = rt.conn(&cluster, &host).await else {
            return;
        };
        let data = with_request_id(&*rt.codec, &data, conn.next_id.fetch_add(1, Ordering::Relaxed));
        cluster.stats.tx_bytes.inc_by(data.len() as u64);
        let _ = conn.tx.send(data);
    });
}

/// A copy of a request already sent (`data`) with request id `id`, for another connection (a
/// retry, a mirror). The frame's kind is not read back: only its id is rewritten.
fn with_request_id(codec: &dyn Codec, data: &Bytes, id: u64) -> Bytes {
    let mut frame = Frame {
        kind: FrameKind::Request,
        id: 0,
        status: 0,
        data: BytesMut::from(&data[..]),
    };
    codec.set_request_id(&mut frame, id);
    frame.data.freeze()
}

/// Sends a request on an upstream connection, after `delay` (fault injection) if given: the
/// delayed send is a task of its own, so the caller's connection goes on with its next frames. A
/// delayed request whose connection closes meanwhile is failed by the connection's reader (it is
/// in its table) or, if the send finds the connection gone, by its timeout.
fn send_upstream(conn: &Arc<UpConn>, data: Bytes, delay: Option<Duration>) -> bool {
    match delay {
        None => conn.tx.send(data).is_ok(),
        Some(d) => {
            let tx = conn.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = tx.send(data);
            });
            true
        }
    }
}

/// Handles one frame; `false` closes the connection.
/// Writes a client span's context (`start_rpc_client`'s pairs) into the request's attachments.
/// Last of all on the frame: the rewrite moves what `info` points at.
fn write_trace_context<K: AsRef<str>>(
    rt: &RpcRt,
    codec: &dyn Codec,
    frame: &mut Frame,
    info: &RequestInfo,
    ctx: &[(K, String)],
) {
    let kvs: Vec<(&str, &str)> = ctx.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
    if !codec.set_attachments(frame, info, &kvs) {
        tracing::debug!(listener = %rt.listener, "cannot write trace context into the request");
    }
}

async fn handle_frame(rt: &Arc<RpcRt>, clusters: &dyn ClusterLookup, down: &Down, frame: Frame) -> bool {
    let codec = &*rt.codec;
    match frame.kind {
        FrameKind::Heartbeat => {
            rt.stats.heartbeats.inc();
            let _ = down.tx.send(codec.heartbeat_reply(&frame));
            return true;
        }
        FrameKind::Request | FrameKind::OneWay => {}
        _ => return true,
    }
    let two_way = frame.kind == FrameKind::Request;
    let info = match codec.request_info(&frame) {
        Ok(i) => i,
        Err(e) => {
            rt.stats.decode_error(e.reason());
            if let Some(id) = e.reply_to() {
                rt.reply(down, id, LocalReply::BadRequest, &format!("{e} (weft)"));
            }
            return false;
        }
    };
    let id = frame.id;
    // Traced: every request (a one-way request's spans end when it has been sent upstream).
    let mut trace = match &rt.tracer {
        Some(t) => {
            let get = |k: &str| {
                codec
                    .attachment(&frame, &info, k)
                    .and_then(|v| v.as_str().map(str::to_string))
            };
            Some(t.start_rpc(
                get,
                down.peer,
                RpcSpan {
                    system: rpc_system(codec.name()),
                    service: info.service.get(&frame.data).unwrap_or_default().into_owned(),
                    method: info.method.get(&frame.data).unwrap_or_default().into_owned(),
                    one_way: !two_way,
                    ..RpcSpan::default()
                },
            ))
        }
        _ => None,
    };
    let fail = |r: LocalReply, msg: &str, route: Option<&RpcRoute>, trace: Option<Box<TraceExchange>>| {
        local_reply(rt, down, id, two_way, r, msg, route, trace)
    };
    let Some(ri) = rt.route(&frame, &info) else {
        let svc = info.service.get(&frame.data).unwrap_or_default();
        let m = info.method.get(&frame.data).unwrap_or_default();
        fail(
            LocalReply::NoRoute,
            &format!("no route for {svc}.{m} (weft)"),
            None,
            trace.take(),
        );
        return true;
    };
    let (route, governance) = (&rt.config.routes[ri], &rt.route_rt[ri]);
    let rn = Some(route);
    if route.no_route {
        let svc = info.service.get(&frame.data).unwrap_or_default();
        let m = info.method.get(&frame.data).unwrap_or_default();
        fail(
            LocalReply::NoRoute,
            &format!("no route for {svc}.{m} (weft)"),
            rn,
            trace.take(),
        );
        return true;
    }
    let Some(cluster) = clusters.cluster(&route.cluster) else {
        fail(
            LocalReply::NoRoute,
            &format!("cluster {} not found (weft)", route.cluster),
            rn,
            trace.take(),
        );
        return true;
    };
    // The route's governance, in the order of an HTTP route's filters: fault injection, then its
    // rate limit.
    if governance.abort.is_some_and(Chance::roll) {
        fail(LocalReply::Fault, "fault injected: abort (weft)", rn, trace.take());
        return true;
    }
    if let (Some(limiter), Some(rl)) = (&governance.limiter, &route.rate_limit) {
        let value = (rl.descriptor_attachment.as_deref()).and_then(|k| codec.attachment(&frame, &info, k));
        let key = value.as_ref().and_then(|v| v.as_str()).map(str::as_bytes);
        if limiter.check_value(key).is_some() {
            fail(LocalReply::RateLimited, "rate limited (weft)", rn, trace.take());
            return true;
        }
    }
    let mirror_to = (governance.mirror.as_ref())
        .filter(|(_, c)| c.roll())
        .and_then(|(name, _)| clusters.cluster(name));
    // The global rate limit: the service's answer is awaited in a task of its own, so that the
    // connection goes on with its next frames meanwhile.
    if let (Some(rls), false) = (&rt.rls, route.rate_limits.is_empty()) {
        // A call without an action's attachment sends no descriptor for that entry, as in Envoy.
        let attachment =
            |name: &str| (codec.attachment(&frame, &info, name)).and_then(|v| v.as_str().map(str::to_string));
        let descriptors = descriptors_with(&route.rate_limits, attachment, down.peer.ip());
        if !descriptors.is_empty() {
            let service = RlsCluster(clusters.cluster(rls.cluster()));
            let (rt, rls, down) = (rt.clone(), rls.clone(), down.clone());
            tokio::spawn(async move {
                let verdict = rls.check(&service, descriptors).await;
                let deny = match &verdict {
                    Verdict::OverLimit => Some("rate limited by the rate limit service (weft)"),
                    Verdict::Error(_) if rls.failure_mode_deny() => Some("rate limit service unavailable (weft)"),
                    _ => None,
                };
                match deny {
                    Some(msg) => {
                        let route = Some(&rt.config.routes[ri]);
                        local_reply(&rt, &down, id, two_way, LocalReply::RateLimited, msg, route, trace)
                    }
                    None => {
                        forward(&rt, ri, &down, frame, info, trace, cluster, mirror_to).await;
                    }
                }
            });
            return true;
        }
    }
    forward(rt, ri, down, frame, info, trace, cluster, mirror_to).await
}

/// The rate limit service's cluster, looked up before the call's task started.
struct RlsCluster(Option<Arc<ClusterRt>>);

impl ClusterLookup for RlsCluster {
    fn cluster(&self, _name: &str) -> Option<Arc<ClusterRt>> {
        self.0.clone()
    }
}

/// A call answered by weft itself (`route`: the route it matched, if any): a two-way call gets
/// the reply, a one-way call is only counted.
#[allow(clippy::too_many_arguments)]
fn local_reply(
    rt: &RpcRt,
    down: &Down,
    id: u64,
    two_way: bool,
    r: LocalReply,
    msg: &str,
    route: Option<&RpcRoute>,
    trace: Option<Box<TraceExchange>>,
) {
    if two_way {
        rt.reply(down, id, r, msg);
    } else {
        rt.stats.local_reply(r.reason());
    }
    rt.istio_local(r, route);
    rt.trace_local(trace, r, route);
}

/// The rest of a routed call: host, connection (retried on connect failure), and the send.
#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Arc<RpcRt>,
    ri: usize,
    down: &Down,
    mut frame: Frame,
    info: RequestInfo,
    mut trace: Option<Box<TraceExchange>>,
    cluster: Arc<ClusterRt>,
    mirror_to: Option<Arc<ClusterRt>>,
) -> bool {
    let codec = &*rt.codec;
    let (route, governance) = (&rt.config.routes[ri], &rt.route_rt[ri]);
    let (id, two_way) = (frame.id, frame.kind == FrameKind::Request);
    let rn = Some(route);
    let fail = |r: LocalReply, msg: &str, route: Option<&RpcRoute>, trace: Option<Box<TraceExchange>>| {
        local_reply(rt, down, id, two_way, r, msg, route, trace)
    };
    let delay = governance.delay.filter(|(_, c)| c.roll()).map(|(d, _)| d);
    let subset = (!route.subset.is_empty()).then_some(&route.subset);
    // The client span starts before connecting; its context is written into the frame last (the
    // rewrite moves what `info` points at).
    let trace_ctx = match (&rt.tracer, trace.as_mut()) {
        (Some(t), Some(ex)) => {
            ex.route = Some(route.name.clone());
            Some(ex.start_rpc_client(t, cluster.shared_name()))
        }
        _ => None,
    };
    // A call that cannot be sent (the connection to its host failed) goes to another host, as
    // often as the route's retries allow and the cluster's retry budget lets it: it never reached
    // a provider, so any method may be retried then.
    let mut retries_left = route.retries.map_or(0, |r| r.attempts);
    let mut _retry_guard = None;
    let (host, active, conn) = loop {
        let Some(host) = cluster.pick(None, None, subset) else {
            fail(
                LocalReply::NoHealthyUpstream,
                "no healthy upstream (weft)",
                rn,
                trace.take(),
            );
            return true;
        };
        let Some(active) = cluster.start_request(&host, RoutePriority::Default) else {
            fail(LocalReply::Overload, "upstream overloaded (weft)", rn, trace.take());
            return true;
        };
        let conn = match rt.conn_now(&cluster, &host) {
            Ok(c) => Ok(c),
            Err(slot) => Box::pin(rt.connect(slot, &cluster, &host)).await,
        };
        match conn {
            Ok(c) => break (host, active, c),
            Err(e) => {
                if e.counts_against_host() {
                    cluster.report(&host, Outcome::LocalFailure);
                }
                if retries_left > 0 {
                    if let Some(g) = cluster.try_start_retry(RoutePriority::Default) {
                        retries_left -= 1;
                        _retry_guard = Some(g);
                        continue;
                    }
                }
                if let Some(ex) = trace.as_mut() {
                    ex.end_client(Some(host.address), 1, None);
                }
                fail(LocalReply::UpstreamFailure, &format!("{e} (weft)"), rn, trace.take());
                return true;
            }
        }
    };
    if !two_way {
        if let Some(ctx) = trace_ctx {
            write_trace_context(rt, codec, &mut frame, &info, &ctx);
        }
        cluster.stats.tx_bytes.inc_by(frame.data.len() as u64);
        let data = frame.data.freeze();
        mirror(rt, mirror_to, &data);
        let sent = send_upstream(&conn, data, delay);
        if let (Some(t), Some(mut ex)) = (&rt.tracer, trace.take()) {
            ex.end_client(Some(host.address), 1, None);
            if let Some(r) = &mut ex.rpc {
                r.upstream_ok = sent;
            }
            let reason = (!sent).then(|| LocalReply::UpstreamFailure.reason());
            t.finish_rpc(ex, sent, 0, reason, Some(&route.name));
        }
        return true;
    }
    cluster.stats.tx_bytes.inc_by(frame.data.len() as u64);
    let method = info.method.get(&frame.data).unwrap_or_default();
    let stats = rt.stats.method(&method);
    let log = rt.access_log.as_ref().map(|_| {
        Box::new(LogInfo {
            started_at: SystemTime::now(),
            service: info.service.get(&frame.data).unwrap_or_default().into_owned(),
            method: method.clone().into_owned(),
            route: route.name.clone(),
        })
    });
    let now = Instant::now();
    // A delayed call's timeout starts when it is sent.
    let mut timeout = route.timeout.unwrap_or(rt.config.timeout) + delay.unwrap_or_default();
    if let Some(t) = codec.request_timeout(&frame) {
        timeout = timeout.min(t);
    }
    if let Some(ctx) = trace_ctx {
        write_trace_context(rt, codec, &mut frame, &info, &ctx);
    }
    let up_id = conn.next_id.fetch_add(1, Ordering::Relaxed);
    codec.set_request_id(&mut frame, up_id);
    let data = frame.data.freeze();
    // An idempotent route's call keeps its bytes (a reference, not a copy) for a retry after its
    // connection closed before the answer.
    let retry = match route.retries {
        Some(r) if r.idempotent && retries_left > 0 => Some(Box::new(Retry {
            rt: rt.clone(),
            cluster: cluster.clone(),
            route: ri,
            data: data.clone(),
            left: retries_left,
        })),
        _ => None,
    };
    mirror(rt, mirror_to, &data);
    down.inflight.fetch_add(1, Ordering::Relaxed);
    conn.pending.lock().insert(
        up_id,
        Pending {
            down: down.clone(),
            orig_id: id,
            deadline: now + timeout,
            started: now,
            stats,
            _active: active,
            log,
            trace,
            retry,
            request_bytes: data.len() as u32,
        },
    );
    if !send_upstream(&conn, data, delay) || conn.closed.load(Ordering::Relaxed) {
        // The connection closed under us: its reader may already have failed what it held.
        let p = conn.pending.lock().remove(&up_id);
        if let Some(mut p) = p {
            down.inflight.fetch_sub(1, Ordering::Relaxed);
            rt.reply(
                down,
                id,
                LocalReply::UpstreamFailure,
                "upstream connection closed (weft)",
            );
            rt.istio_local(LocalReply::UpstreamFailure, Some(route));
            rt.trace_local(p.trace.take(), LocalReply::UpstreamFailure, Some(route));
        }
    }
    true
}
