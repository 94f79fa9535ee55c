//! Upstream clusters at run time: endpoints (hosts), the load balancer over them, per-worker connection
//! pools, and circuit-breaker counters.

use crate::body::UpBody;
use crate::h2_client::H2Conn;
use crate::hostset::{HostSet, Labels};
use arc_swap::ArcSwap;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use weft_config::{Cluster, Discovery, Endpoint, EndpointAddress, Locality, RoutePriority, UpstreamProtocol};
use weft_core::stats::ClusterStats;
use weft_core::{Error, Reason, Retry};

/// A connection from [`ClusterRt::connect_stream`].
pub enum RawStream {
    Tcp(TcpStream),
    Tls(Box<weft_tls::tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for RawStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    // Passed through: h2's writer (an upstream HTTP/2 connection) gathers a frame's head and its
    // payload into one `writev` only when its I/O says it writes vectored (tokio's default says
    // no, and writes the first buffer alone).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            RawStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            RawStream::Tcp(s) => s.is_write_vectored(),
            RawStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as proxy worker `index` (selects its connection pools).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

fn worker_slot(slots: usize) -> usize {
    // Non-worker threads (admin, tests) share the last slot.
    WORKER.with(|w| w.get()).min(slots - 1)
}

/// One upstream endpoint.
pub struct Host {
    pub address: SocketAddr,
    pub weight: u32,
    pub priority: u32,
    pub locality: weft_config::Locality,
    pub labels: BTreeMap<String, String>,
    pub active_rq: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// Active health-check verdict (true when no checks are configured).
    pub healthy: AtomicBool,
    pub hc: crate::health::HealthState,
    pub outlier: crate::outlier::OutlierState,
    /// Connect from this IP, which need not be local (an `original_source` cluster's host: the
    /// downstream peer's address), with this `SO_MARK` (0: none). None: the kernel chooses.
    pub source: Option<(IpAddr, u32)>,
    /// Which of the cluster's TLS settings this host's connections use
    /// ([`weft_config::Cluster::tls_choice`]): its pools hold connections of that TLS only.
    pub tls_choice: usize,
    pools: Box<[WorkerPool]>,
}

#[derive(Default)]
struct WorkerPool {
    h1_idle: Mutex<Vec<Idle<http1::SendRequest<UpBody>>>>,
    /// Idle connections of weft's own HTTP/1.1 client ([`crate::h1`]).
    raw_idle: Mutex<Vec<Idle<Box<crate::h1::Conn>>>>,
    h2: Mutex<Option<H2Conn>>,
    /// Serialises HTTP/2 connection setup so concurrent first requests share one connection.
    h2_connecting: tokio::sync::Mutex<()>,
}

/// An idle pooled connection, and since when.
struct Idle<C> {
    conn: C,
    since: Coarse,
}

/// A time of `CLOCK_MONOTONIC_COARSE`, the kernel's clock as of its last tick (a few ms behind
/// at most), which the vDSO reads without the TSC. A pool's idle timeouts (seconds) need no
/// better, and a keep-alive request parks its connection and checks one out: two precise clock
/// reads per request (`perf`: the vDSO clock was ~1 % of the proxy's cycles in an HTTP/1.1
/// keep-alive run, ~10 reads per request). std offers no coarse clock.
#[derive(Clone, Copy)]
struct Coarse(Duration);

impl Coarse {
    fn now() -> Coarse {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC_COARSE exists on every
        // Linux since 2.6.32 (should it fail, `ts` stays 0 and connections look fresh: the
        // checkout's probe still drops a closed one).
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        Coarse(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// How long after `earlier` this is (0 if before).
    fn since(self, earlier: Coarse) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether more than `timeout` may have passed since this time, as of `now`: the clock's
    /// resolution (one kernel tick) counts as passed, so a connection is never reused after its
    /// idle timeout (at worst a tick before it), and a zero timeout reuses none.
    fn expired(self, now: Coarse, timeout: Duration) -> bool {
        now.since(self) + coarse_resolution() > timeout
    }
}

/// `CLOCK_MONOTONIC_COARSE`'s resolution (the kernel tick: 1–10 ms), read once.
fn coarse_resolution() -> Duration {
    static RES: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *RES.get_or_init(|| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write to.
        let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
        match ok {
            true => Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
            false => Duration::from_millis(10),
        }
    })
}

/// Parks `conn` at the back of an idle list. The oldest idle connection sits at the front; it is
/// dropped once expired (or `dead`) so that idle connections do not linger forever when traffic
/// falls. `conn` joins if the list has fewer than `max`; otherwise it is dropped (closed).
fn park_idle<C>(idle: &Mutex<Vec<Idle<C>>>, conn: C, timeout: Duration, max: usize, dead: impl Fn(&C) -> bool) {
    let now = Coarse::now();
    let mut idle = idle.lock();
    if idle
        .first()
        .is_some_and(|c| c.since.expired(now, timeout) || dead(&c.conn))
    {
        idle.remove(0);
    }
    if idle.len() < max {
        idle.push(Idle { conn, since: now });
    }
}

/// Where a connection of weft's own HTTP/1.1 client returns when its response has been read.
pub struct RawHome {
    cluster: Arc<ClusterRt>,
    host: Arc<Host>,
    slot: usize,
}

impl RawHome {
    /// Puts `conn` back in its pool (dropping the oldest idle connection once it has expired).
    pub fn put(self, conn: Box<crate::h1::Conn>) {
        let pool = &self.cluster.config.pool;
        let max = pool.max_idle_per_endpoint as usize;
        park_idle(
            &self.host.pools[self.slot].raw_idle,
            conn,
            pool.idle_timeout,
            max,
            |_| false,
        );
        self.cluster.wake_pending();
    }
}

impl Host {
    fn new(address: SocketAddr, e: Option<&Endpoint>, tls_choice: usize, slots: usize) -> Host {
        Host {
            tls_choice,
            address,
            weight: e.map_or(1, |e| e.weight),
            priority: e.map_or(0, |e| e.priority),
            locality: e.map(|e| e.locality.clone()).unwrap_or_default(),
            labels: e.map(|e| e.labels.clone()).unwrap_or_default(),
            active_rq: AtomicU32::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            hc: Default::default(),
            outlier: Default::default(),
            source: None,
            pools: (0..slots).map(|_| WorkerPool::default()).collect(),
        }
    }

    /// Closes one idle HTTP/1.1 connection to this host, of weft's own client (`raw`) or of
    /// hyper's, on any worker: when `max_connections` is reached, idle connections of one client
    /// must not keep the other waiting. Whether one was closed.
    fn evict_idle(&self, raw: bool) -> bool {
        self.pools.iter().any(|p| match raw {
            true => p.raw_idle.lock().pop().is_some(),
            false => p.h1_idle.lock().pop().is_some(),
        })
    }

    fn same_endpoint(&self, e: &Endpoint, tls_choice: usize) -> bool {
        self.weight == e.weight
            && self.priority == e.priority
            && self.locality == e.locality
            && self.labels == e.labels
            && self.tls_choice == tls_choice
    }
}

/// What the request path needs from the running configuration: a cluster by name. The server's
/// shared state implements it; the request path sees nothing else of it.
pub trait ClusterLookup: Send + Sync {
    fn cluster(&self, name: &str) -> Option<Arc<ClusterRt>>;

    /// On-demand discovery: asks the configuration source for the service `host` (a request's
    /// authority without its port) that no route matched. None: nothing to wait for (no source that
    /// discovers on demand, or `host` is known to be missing); otherwise a future that resolves when
    /// the configuration may have changed (true) or the service is known not to exist (false).
    fn discover(&self, _host: &str) -> Option<OnDemand> {
        None
    }
}

/// See [`ClusterLookup::discover`].
pub type OnDemand = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

fn overflow() -> Error {
    Error::internal(Reason::Overflow).context("connection limit reached")
}

/// An original-destination host: the destination, and the source it is connected to from.
type OriginalDstKey = (SocketAddr, Option<(IpAddr, u32)>);

pub struct ClusterRt {
    pub config: Cluster,
    /// The cluster's name, shared (a trace span holds it without a copy).
    name: Arc<str>,
    pub stats: ClusterStats,
    pub hosts: ArcSwap<HostSet>,
    /// Per route priority (default, high): each has its own circuit-breaker thresholds.
    pub active_rq: [AtomicU32; 2],
    pub active_retries: [AtomicU32; 2],
    cx_count: [AtomicU32; 2],
    pending: [AtomicU32; 2],
    conn_released: Notify,
    original_dst: Mutex<HashMap<OriginalDstKey, Arc<Host>>>,
    slots: usize,
    /// Where this proxy runs, for locality-aware routing.
    local: Locality,
    /// Serialises host-set rebuilds (health, ejection, DNS) so none is lost.
    rebuild_lock: Mutex<()>,
    /// TLS origination (the cluster's `tls` block), when set.
    tls: Option<Arc<weft_tls::Connector>>,
    /// Per `tls_matches` entry: its TLS origination (None: plaintext).
    tls_matches: Vec<Option<Arc<weft_tls::Connector>>>,
}

/// Keeps a request counted against the cluster and its host until dropped.
pub struct ActiveRequest {
    cluster: Arc<ClusterRt>,
    host: Arc<Host>,
    priority: RoutePriority,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.active_rq[self.priority.index()].fetch_sub(1, Ordering::Relaxed);
        self.cluster.stats.rq_active.dec();
        self.host.active_rq.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 connection checked out of a pool; `release` returns it.
pub struct PooledH1 {
    pub sender: http1::SendRequest<UpBody>,
    host: Arc<Host>,
    max_idle: usize,
    slot: usize,
    cluster: Arc<ClusterRt>,
}

impl PooledH1 {
    /// Returns the connection for reuse once its response has been read completely.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let idle = &self.host.pools[self.slot].h1_idle;
        let timeout = self.cluster.config.pool.idle_timeout;
        park_idle(idle, self.sender, timeout, self.max_idle, |s| s.is_closed());
        self.cluster.wake_pending();
    }
}

impl ClusterRt {
    pub fn new(
        config: Cluster,
        stats: ClusterStats,
        slots: usize,
        local: Locality,
        previous: Option<&ClusterRt>,
    ) -> ClusterRt {
        // Keep hosts (their warm pools and health) that survive a reload unchanged. A change of TLS
        // settings starts from new hosts: pooled connections were opened with the old ones.
        let previous = previous.filter(|p| p.config.tls == config.tls && p.config.tls_matches == config.tls_matches);
        let mut old: HashMap<SocketAddr, Arc<Host>> = HashMap::new();
        if let Some(p) = previous {
            for h in &p.hosts.load().hosts {
                old.insert(h.address, h.clone());
            }
        }
        let hosts = if matches!(config.discovery, Discovery::StrictDns { .. }) {
            // DNS clusters start with what the previous incarnation had resolved, then refresh.
            previous
                .filter(|p| p.config.endpoints == config.endpoints)
                .map(|p| p.hosts.load().hosts.clone())
                .unwrap_or_default()
        } else {
            config
                .endpoints
                .iter()
                .filter_map(|e| match &e.address {
                    EndpointAddress::Socket(a) => {
                        let choice = config.tls_choice(Some(e));
                        Some(match old.get(a) {
                            Some(h) if h.same_endpoint(e, choice) => h.clone(),
                            _ => Arc::new(Host::new(*a, Some(e), choice, slots)),
                        })
                    }
                    EndpointAddress::Dns { .. } => None,
                })
                .collect()
        };
        // Hosts kept from the previous incarnation keep their verdicts only while the detector that
        // produced them is still configured.
        for h in &hosts {
            if config.health_checks.is_empty() {
                h.healthy.store(true, Ordering::Relaxed);
            }
            if config.outlier_detection.is_none() {
                h.outlier.clear();
            }
        }
        let set = HostSet::new(&config, &local, hosts);
        stats.hosts_eligible.set(set.eligible as i64);
        stats.panic.set(set.panic as i64);
        ClusterRt {
            hosts: ArcSwap::from_pointee(set),
            name: Arc::from(config.name.as_str()),
            config,
            stats,
            active_rq: Default::default(),
            active_retries: Default::default(),
            cx_count: Default::default(),
            pending: Default::default(),
            conn_released: Notify::new(),
            original_dst: Mutex::new(HashMap::new()),
            slots,
            local,
            rebuild_lock: Mutex::new(()),
            tls: None,
            tls_matches: Vec::new(),
        }
    }

    /// Recomputes eligibility and load spread after a health, ejection or membership change.
    pub fn rebuild_hosts(&self) {
        let _serial = self.rebuild_lock.lock();
        let hosts = self.hosts.load().hosts.clone();
        self.replace_hosts(hosts);
    }

    fn replace_hosts(&self, hosts: Vec<Arc<Host>>) {
        let set = HostSet::new(&self.config, &self.local, hosts);
        self.stats.hosts_eligible.set(set.eligible as i64);
        self.stats.panic.set(set.panic as i64);
        self.hosts.store(Arc::new(set));
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The name as a shared string (cloning it copies nothing).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// Picks a host. `hash` feeds ring hash / maglev; `exclude` avoids a host already tried when
    /// others exist; `subset` restricts the pick to hosts carrying those labels.
    pub fn pick(&self, hash: Option<u64>, exclude: Option<&Arc<Host>>, subset: Option<&Labels>) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        match subset {
            Some(want) => set.pick_subset(want, hash, exclude),
            None => set.pick(hash, exclude),
        }
    }

    /// The host for a side call to a service cluster (a rate limit service, a JWKS fetch): a
    /// random healthy host, or any host when none is healthy; None when the cluster has none.
    /// Allocates nothing.
    fn any_host(&self) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        let healthy = || set.hosts.iter().filter(|h| h.healthy.load(Ordering::Relaxed));
        match healthy().count() {
            0 if set.hosts.is_empty() => None,
            0 => Some(set.hosts[fastrand::usize(..set.hosts.len())].clone()),
            n => healthy().nth(fastrand::usize(..n)).cloned(),
        }
    }

    /// The address of [`ClusterRt::any_host`]'s pick, for a side call in plaintext.
    pub fn any_host_address(&self) -> Option<SocketAddr> {
        self.any_host().map(|h| h.address)
    }

    /// [`ClusterRt::any_host`]'s pick for a side call that opens its own connection (a JWKS
    /// fetch), with that host's TLS origination ([`ClusterRt::tls_for`]).
    pub fn any_host_with_tls(&self) -> Option<(SocketAddr, Option<Arc<weft_tls::Connector>>)> {
        let host = self.any_host()?;
        Some((host.address, self.tls_for(&host).cloned()))
    }

    /// The host for an original-destination address, created on first use.
    pub fn original_dst_host(&self, addr: SocketAddr) -> Arc<Host> {
        self.original_dst_host_from(addr, None)
    }

    /// The host for an original-destination address connected to from `source` (`original_source`:
    /// one host, hence one connection pool, per downstream IP and mark), created on first use.
    pub fn original_dst_host_from(&self, addr: SocketAddr, source: Option<(IpAddr, u32)>) -> Arc<Host> {
        let mut map = self.original_dst.lock();
        if map.len() > 10_000 {
            // Bounded: forget hosts with no traffic in flight.
            map.retain(|_, h| h.active_rq.load(Ordering::Relaxed) > 0);
        }
        map.entry((addr, source))
            .or_insert_with(|| {
                let mut h = Host::new(addr, None, 0, self.slots);
                h.source = source;
                Arc::new(h)
            })
            .clone()
    }

    /// Replaces the members (DNS refresh), keeping hosts whose address is unchanged.
    pub fn set_addresses(&self, addrs: &[SocketAddr]) {
        let _serial = self.rebuild_lock.lock();
        let current = self.hosts.load();
        if current.hosts.len() == addrs.len() && addrs.iter().all(|a| current.hosts.iter().any(|h| h.address == *a)) {
            return;
        }
        let template = self.config.endpoints.first();
        let hosts = addrs
            .iter()
            .map(|a| {
                current
                    .hosts
                    .iter()
                    .find(|h| h.address == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Host::new(*a, template, self.config.tls_choice(template), self.slots)))
            })
            .collect();
        drop(current);
        self.replace_hosts(hosts);
    }

    /// Counts a request against the cluster's `max_requests`; `None` means overflow.
    pub fn start_request(self: &Arc<Self>, host: &Arc<Host>, priority: RoutePriority) -> Option<ActiveRequest> {
        let active = &self.active_rq[priority.index()];
        let n = active.fetch_add(1, Ordering::Relaxed);
        if n >= self.config.circuit_breakers.for_priority(priority).max_requests {
            active.fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_overflow.inc();
            return None;
        }
        self.stats.rq_active.inc();
        host.active_rq.fetch_add(1, Ordering::Relaxed);
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        Some(ActiveRequest {
            cluster: self.clone(),
            host: host.clone(),
            priority,
        })
    }

    /// One more retry if it fits the retry budget (or the `max_retries` breaker). The retry counts
    /// as active until the returned guard drops.
    pub fn try_start_retry(self: &Arc<Self>, priority: RoutePriority) -> Option<RetryGuard> {
        let p = priority.index();
        let limit = match &self.config.retry_budget {
            Some(b) => {
                let active = self.active_rq[p].load(Ordering::Relaxed) as f64;
                ((active * b.budget_percent / 100.0) as u32).max(b.min_retry_concurrency)
            }
            None => self.config.circuit_breakers.for_priority(priority).max_retries,
        };
        let n = self.active_retries[p].fetch_add(1, Ordering::Relaxed);
        if n >= limit {
            self.active_retries[p].fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_retry_overflow.inc();
            return None;
        }
        self.stats.rq_retry.inc();
        Some(RetryGuard {
            cluster: self.clone(),
            priority,
        })
    }

    async fn connect_tcp(&self, host: &Host) -> Result<TcpStream, Error> {
        let connect = async {
            match host.source {
                None => TcpStream::connect(host.address).await,
                Some((from, mark)) => connect_from(from, mark, host.address).await,
            }
        };
        let r = tokio::time::timeout(self.config.connect_timeout, connect).await;
        let stream = match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats.cx_connect_fail.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                    .context(format!("connect to {}", host.address))
                    .cause(e));
            }
            Err(_) => {
                self.stats.cx_connect_fail.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                    .context(format!("connect to {}: timeout", host.address)));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sets the TLS origination of this cluster's connections (built from its `tls` block).
    pub fn with_tls(mut self, tls: Option<Arc<weft_tls::Connector>>) -> ClusterRt {
        self.tls = tls;
        self
    }

    /// Sets the TLS origination of the hosts that `tls_matches` choose, one per entry (None:
    /// plaintext).
    pub fn with_tls_matches(mut self, tls: Vec<Option<Arc<weft_tls::Connector>>>) -> ClusterRt {
        self.tls_matches = tls;
        self
    }

    /// The TLS origination of `host`'s connections: the cluster's, or its `tls_matches` entry's.
    pub fn tls_for(&self, host: &Host) -> Option<&Arc<weft_tls::Connector>> {
        match host.tls_choice {
            0 => self.tls.as_ref(),
            i => self.tls_matches.get(i - 1).and_then(Option::as_ref),
        }
    }

    /// The TLS handshake on a new connection to `host`.
    async fn tls_connect(
        &self,
        tls: &weft_tls::Connector,
        host: &Host,
        stream: TcpStream,
    ) -> Result<weft_tls::tokio_rustls::client::TlsStream<TcpStream>, Error> {
        match tokio::time::timeout(self.config.connect_timeout, tls.connect(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.stats.cx_connect_fail.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                let reason = weft_tls::FailureReason::of_io(&e);
                Err(Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                    .context(format!("TLS handshake with {} ({})", host.address, reason.as_str()))
                    .cause(e))
            }
            Err(_) => {
                self.stats.cx_connect_fail.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                Err(Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                    .context(format!("TLS handshake with {}: timeout", host.address)))
            }
        }
    }

    /// A new connection to `host`: TCP, then TLS if the host's cluster originates it.
    async fn open_stream(&self, host: &Host) -> Result<RawStream, Error> {
        let s = self.connect_tcp(host).await?;
        Ok(match self.tls_for(host) {
            None => RawStream::Tcp(s),
            Some(t) => RawStream::Tls(Box::new(self.tls_connect(t, host, s).await?)),
        })
    }

    /// A new HTTP/1.1 connection to `host` through hyper's client (upgrades, CONNECT).
    async fn connect_h1(&self, host: &Host, guard: ConnGuard) -> Result<http1::SendRequest<UpBody>, Error> {
        self.h1_over(self.open_stream(host).await?, guard).await
    }

    /// A new HTTP/2 connection to `host`.
    async fn connect_h2(&self, host: &Host, guard: ConnGuard) -> Result<H2Conn, Error> {
        let io = self.open_stream(host).await?;
        let settings = crate::h2_client::Settings {
            max_send_buffer: self.config.per_connection_buffer_limit_bytes as usize,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        };
        crate::h2_client::handshake(io, settings, guard).await.map_err(|e| {
            Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                .context("handshake")
                .cause(e)
        })
    }

    /// An HTTP/1.1 connection over `io`; the connection task holds `guard`.
    async fn h1_over<IO>(&self, io: IO, guard: ConnGuard) -> Result<http1::SendRequest<UpBody>, Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Bounds what a response the client reads slowly can pile up here.
        let (sender, conn) = http1::Builder::new()
            .max_buf_size((self.config.per_connection_buffer_limit_bytes as usize).max(8192))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                    .context("handshake")
                    .cause(e)
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            drop(guard);
        });
        Ok(sender)
    }

    /// Opens a connection for a protocol weft frames itself (RPC), counted against
    /// `max_connections`: TLS (the cluster's `tls` block, e.g. mesh mTLS from weft control) when
    /// the cluster originates TLS, else plain TCP.
    pub async fn connect_stream(self: &Arc<Self>, host: &Arc<Host>) -> Result<(RawStream, ConnGuard), Error> {
        let guard = self.reserve_connection(RoutePriority::Default).ok_or_else(overflow)?;
        Ok((self.open_stream(host).await?, guard))
    }

    /// Opens a raw TCP connection for the TCP proxy, counted against `max_connections`.
    pub async fn connect_raw(self: &Arc<Self>, host: &Arc<Host>) -> Result<(TcpStream, ConnGuard), Error> {
        if self.tls_for(host).is_some() {
            return Err(Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
                .context("TLS origination is for HTTP routes; tcp_proxy cannot use a cluster with a tls block"));
        }
        let guard = self.reserve_connection(RoutePriority::Default).ok_or_else(overflow)?;
        let s = self.connect_tcp(host).await?;
        Ok((s, guard))
    }

    /// Counts a new connection against `max_connections` of the priority of the request opening it
    /// (pooled connections are then shared by both priorities).
    fn reserve_connection(self: &Arc<Self>, priority: RoutePriority) -> Option<ConnGuard> {
        let count = &self.cx_count[priority.index()];
        let n = count.fetch_add(1, Ordering::Relaxed);
        if n >= self.config.circuit_breakers.for_priority(priority).max_connections {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.stats.cx_total.inc();
        self.stats.cx_active.inc();
        Some(ConnGuard {
            cluster: Arc::downgrade(self),
            cx_active: self.stats.cx_active.clone(),
            priority,
        })
    }

    /// An HTTP/1.1 connection to `host`: an idle pooled one, or a new one.
    pub async fn checkout_h1(
        self: &Arc<Self>,
        host: &Arc<Host>,
        deadline: Option<Instant>,
        priority: RoutePriority,
    ) -> Result<PooledH1, Error> {
        let slot = worker_slot(self.slots);
        let idle_timeout = self.config.pool.idle_timeout;
        loop {
            loop {
                let idle = host.pools[slot].h1_idle.lock().pop();
                let Some(mut c) = idle else { break };
                if c.conn.is_closed() || c.since.expired(Coarse::now(), idle_timeout) {
                    continue;
                }
                if c.conn.ready().await.is_ok() {
                    return Ok(self.pooled(c.conn, host, slot));
                }
            }
            if let Some(guard) = self.reserve_connection(priority) {
                // Boxed: connecting (TCP, TLS, the HTTP handshake) is the rare case, and its state
                // would otherwise sit inline in every request's future, copied with it.
                let sender = Box::pin(self.connect_h1(host, guard)).await?;
                return Ok(self.pooled(sender, host, slot));
            }
            // An idle connection of the other client to this host gives up its slot.
            if host.evict_idle(true) {
                continue;
            }
            self.wait_for_connection(deadline, priority).await?;
        }
    }

    /// A connection for weft's own HTTP/1.1 client ([`crate::h1`]) to `host`: an idle pooled one
    /// (true: reused), or a new one.
    pub async fn checkout_raw(
        self: &Arc<Self>,
        host: &Arc<Host>,
        deadline: Option<Instant>,
        priority: RoutePriority,
    ) -> Result<(Box<crate::h1::Conn>, bool, RawHome), Error> {
        let slot = worker_slot(self.slots);
        let idle_timeout = self.config.pool.idle_timeout;
        let home = || RawHome {
            cluster: self.clone(),
            host: host.clone(),
            slot,
        };
        loop {
            loop {
                let idle = host.pools[slot].raw_idle.lock().pop();
                let Some(mut c) = idle else { break };
                if !c.since.expired(Coarse::now(), idle_timeout) && c.conn.still_idle() {
                    return Ok((c.conn, true, home()));
                }
            }
            if let Some(guard) = self.reserve_connection(priority) {
                // Boxed, as in `checkout_h1`: the rare case's state stays out of every request's.
                let conn = Box::pin(self.connect_raw_h1(host, guard)).await?;
                return Ok((conn, false, home()));
            }
            // An idle connection of the other client (hyper's, for upgrades) gives up its slot.
            if host.evict_idle(false) {
                continue;
            }
            self.wait_for_connection(deadline, priority).await?;
        }
    }

    /// Closes the idle connections of weft's own HTTP/1.1 client that expired or on which the
    /// upstream has sent something (a close, usually): a hyper connection notices a close in its
    /// own task, these have none, and would otherwise hold a socket until their next checkout.
    pub fn sweep_idle(&self) {
        let idle_timeout = self.config.pool.idle_timeout;
        let now = Coarse::now();
        let mut hosts: Vec<Arc<Host>> = self.hosts.load().hosts.clone();
        hosts.extend(self.original_dst.lock().values().cloned());
        for h in &hosts {
            for pool in h.pools.iter() {
                pool.raw_idle
                    .lock()
                    .retain_mut(|c| !c.since.expired(now, idle_timeout) && c.conn.still_idle());
            }
        }
    }

    async fn connect_raw_h1(&self, host: &Host, guard: ConnGuard) -> Result<Box<crate::h1::Conn>, Error> {
        let s = self.open_stream(host).await?;
        let max_buf = self.config.per_connection_buffer_limit_bytes as usize;
        // Boxed once for its whole life: the request path moves only a pointer.
        Ok(Box::new(crate::h1::Conn::new(s, guard, max_buf)))
    }

    /// Wakes one request waiting for a connection, if any (the common case has none, and then
    /// touching the `Notify`, which takes a lock, is skipped).
    fn wake_pending(&self) {
        if self.pending.iter().any(|p| p.load(Ordering::Relaxed) > 0) {
            self.conn_released.notify_one();
        }
    }

    /// Waits (as a pending request) for a pooled connection to be released.
    async fn wait_for_connection(&self, deadline: Option<Instant>, priority: RoutePriority) -> Result<(), Error> {
        let pending = &self.pending[priority.index()];
        let n = pending.fetch_add(1, Ordering::Relaxed);
        if n >= self.config.circuit_breakers.for_priority(priority).max_pending_requests {
            pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_overflow.inc();
            return Err(overflow());
        }
        // Releases on other workers or hosts also wake us; re-check at least every 50 ms.
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_millis(50));
        let r = tokio::time::timeout(wait, self.conn_released.notified()).await;
        pending.fetch_sub(1, Ordering::Relaxed);
        if r.is_err() && deadline.is_some_and(|d| Instant::now() >= d) {
            self.stats.rq_overflow.inc();
            return Err(overflow());
        }
        Ok(())
    }

    fn pooled(self: &Arc<Self>, sender: http1::SendRequest<UpBody>, host: &Arc<Host>, slot: usize) -> PooledH1 {
        PooledH1 {
            sender,
            host: host.clone(),
            max_idle: self.config.pool.max_idle_per_endpoint as usize,
            slot,
            cluster: self.clone(),
        }
    }

    /// The shared HTTP/2 connection to `host` on this worker, connecting if needed.
    pub async fn checkout_h2(self: &Arc<Self>, host: &Arc<Host>, priority: RoutePriority) -> Result<H2Conn, Error> {
        let slot = worker_slot(self.slots);
        let pool = &host.pools[slot];
        if let Some(s) = Self::live_h2(pool) {
            return Ok(s);
        }
        let _connecting = pool.h2_connecting.lock().await;
        if let Some(s) = Self::live_h2(pool) {
            return Ok(s);
        }
        let guard = self.reserve_connection(priority).ok_or_else(|| {
            self.stats.rq_overflow.inc();
            overflow()
        })?;
        let sender = Box::pin(self.connect_h2(host, guard)).await?;
        *pool.h2.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn live_h2(pool: &WorkerPool) -> Option<H2Conn> {
        let guard = pool.h2.lock();
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The `Host` to send with `auto_host_rewrite`: the DNS name of a `strict_dns` cluster, else the
    /// endpoint's address.
    pub fn authority_for(&self, host: &Host) -> String {
        if let Discovery::StrictDns { .. } = self.config.discovery {
            if let Some(EndpointAddress::Dns { host: name, port }) = self
                .config
                .endpoints
                .iter()
                .map(|e| &e.address)
                .find(|a| matches!(a, EndpointAddress::Dns { .. }))
            {
                return if *port == 80 {
                    name.clone()
                } else {
                    format!("{name}:{port}")
                };
            }
        }
        host.address.to_string()
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.config.protocol
    }

    pub fn connections(&self) -> u32 {
        self.cx_count.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn active_requests(&self) -> u32 {
        self.active_rq.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Holds one slot of the cluster's retry limit while a retry is in progress.
pub struct RetryGuard {
    cluster: Arc<ClusterRt>,
    priority: RoutePriority,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.cluster.active_retries[self.priority.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one slot of the cluster's `max_connections` while a connection lives.
///
/// The connection task holds this guard, and the cluster's hosts hold the connection (its idle
/// `SendRequest` in a pool): a strong reference here would be a cycle that kept a replaced cluster,
/// its removed hosts and their idle upstream connections alive until the upstream closed them.
/// With a weak one, a host that leaves the configuration (EDS update, drained instance, reload) is
/// dropped with its pools and its idle connections close, as Envoy drains a removed host's pools.
pub struct ConnGuard {
    cluster: std::sync::Weak<ClusterRt>,
    cx_active: weft_core::stats::Gauge,
    priority: RoutePriority,
}

#[cfg(test)]
impl ConnGuard {
    /// A guard of no cluster (for a connection made by a test).
    pub(crate) fn detached() -> ConnGuard {
        ConnGuard {
            cluster: std::sync::Weak::new(),
            cx_active: Default::default(),
            priority: Default::default(),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.cx_active.dec();
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.cx_count[self.priority.index()].fetch_sub(1, Ordering::Relaxed);
            cluster.wake_pending();
        }
    }
}

/// A connection to `to` from `from` (any port), which need not be an address of this host:
/// IP_TRANSPARENT, so the proxy needs CAP_NET_ADMIN. The replies find their way back to this
/// socket only with the routing rules `weft init --tproxy` installs (docs/operations.md), or,
/// with a `mark`, rules that route by it (Istio's `ip rule fwmark 1337`).
async fn connect_from(from: IpAddr, mark: u32, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    let r = socket2::SockRef::from(&s);
    let set = if to.is_ipv4() {
        r.set_ip_transparent_v4(true)
    } else {
        r.set_ip_transparent_v6(true)
    };
    set.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("original_source: cannot set IP_TRANSPARENT ({e}); the proxy needs CAP_NET_ADMIN"),
        )
    })?;
    if mark != 0 {
        r.set_mark(mark).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("original_source: cannot set SO_MARK {mark} ({e}); the proxy needs CAP_NET_ADMIN"),
            )
        })?;
    }
    s.bind(SocketAddr::new(from, 0))
        .map_err(|e| std::io::Error::new(e.kind(), format!("original_source: bind to {from}: {e}")))?;
    s.connect(to).await
}

/// Runs [`ClusterRt::sweep_idle`] every half `pool.idle_timeout` (1 to 15 s) until the cluster is
/// dropped.
pub async fn sweep_idle(cluster: std::sync::Weak<ClusterRt>) {
    loop {
        let period = match cluster.upgrade() {
            Some(c) => (c.config.pool.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(15)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(c) = cluster.upgrade() else { return };
        c.sweep_idle();
    }
}

/// Re-resolves every `strict_dns` cluster's names forever.
pub async fn refresh_dns(cluster: std::sync::Weak<ClusterRt>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Discovery::StrictDns { refresh } = c.config.discovery else {
            return;
        };
        let mut addrs = Vec::new();
        for e in &c.config.endpoints {
            if let EndpointAddress::Dns { host, port } = &e.address {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(it) => addrs.extend(it),
                    Err(err) => {
                        tracing::warn!(cluster = %c.config.name, %host, %err, "DNS resolution failed")
                    }
                }
            } else if let EndpointAddress::Socket(a) = &e.address {
                addrs.push(*a);
            }
        }
        addrs.sort();
        addrs.dedup();
        // A failed lookup keeps the last good answer rather than emptying the cluster.
        if !addrs.is_empty() {
            c.set_addresses(&addrs);
        }
        drop(c);
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coarse_stamp_expires_no_later_than_its_timeout() {
        let t = Coarse::now();
        // Within the same tick: a zero timeout has expired, a long one has not.
        assert!(t.expired(t, Duration::ZERO));
        assert!(!t.expired(t, Duration::from_secs(60)));
        let res = coarse_resolution();
        assert!(res > Duration::ZERO && res <= Duration::from_millis(10), "{res:?}");
        // A timeout of one tick has expired after one tick at most.
        let later = Coarse(t.0 + res);
        assert!(t.expired(later, res));
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.expired(Coarse::now(), Duration::from_millis(20)));
    }
}
