//! Route-level traffic governance: fault injection, request mirroring and local rate limiting
//! (Envoy's `envoy.filters.http.fault`, `RouteAction.request_mirror_policies` and
//! `envoy.filters.http.local_ratelimit`).
//!
//! Everything here is compiled when a snapshot is built. A route without any of these features has
//! `RouteEntry::filters == None` and a connection manager without a rate limit has
//! `HttpRt::rate_limit == None`, so the request path pays one pointer test and nothing else.
//!
//! Order on the request path (as in a typical Envoy filter chain `local_ratelimit → fault → router`):
//! listener rate limit → route match → route rate limit → fault delay → fault abort → forward, where
//! forwarding sends the mirrored copies.

use crate::router::HeaderMatchers;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Method, Request, Uri};
use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weft_config::{AbortStatus, ForwardAction, LocalRateLimit};
use weft_core::shard::Counter;
use weft_upstream::body::UpBody;
use weft_upstream::client::{send_detached, shape_request};
use weft_upstream::ClusterLookup;

// ---------------------------------------------------------------------------------------------
// Percentages
// ---------------------------------------------------------------------------------------------

/// A probability in parts per million (Envoy's `FractionalPercent` with denominator MILLION).
#[derive(Clone, Copy, Debug)]
pub struct Chance(u32);

impl Chance {
    const ALL: u32 = 1_000_000;

    pub fn from_percent(percent: f64) -> Chance {
        Chance((percent * 10_000.0).round().clamp(0.0, Self::ALL as f64) as u32)
    }

    /// One draw from the worker's thread-local generator.
    pub fn roll(self) -> bool {
        self.0 >= Self::ALL || (self.0 > 0 && fastrand::u32(0..Self::ALL) < self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Token bucket
// ---------------------------------------------------------------------------------------------

const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Compare-and-swap attempts before a request is refused (only reachable under pathological
/// contention; keeps the loop bounded).
const MAX_CAS_ATTEMPTS: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct BucketConfig {
    max: u64,
    per_fill: u64,
    interval_ms: u64,
}

/// A token bucket in one `AtomicU64`: the low 24 bits hold the tokens, the high 40 bits the time
/// of the next fill in milliseconds since the limiter was built (40 bits of milliseconds last 34
/// years). Taking a token is one compare-and-swap, so the bucket is lock-free and can be shared by
/// every worker thread: the limit is per proxy, not per worker.
///
/// Hand-written rather than `governor`: governor implements GCRA (a continuous rate) rather than
/// Envoy's discrete `tokens_per_fill` every `fill_interval`, and brings its own clock and map
/// dependencies. What is needed here is about forty lines.
///
/// Fills are lazy: they are computed when a request arrives. The fill clock starts when the bucket
/// stops being full (the first token taken from a full bucket schedules the next fill one
/// `fill_interval` later), so a full bucket is indistinguishable from a new one, which makes idle
/// buckets free to evict.
#[derive(Debug)]
struct TokenBucket {
    state: AtomicU64,
}

impl TokenBucket {
    fn full(c: &BucketConfig) -> TokenBucket {
        TokenBucket {
            state: AtomicU64::new(c.max),
        }
    }

    /// The tokens and next fill time after applying the fills due at `now`.
    fn refilled(s: u64, now: u64, c: &BucketConfig) -> (u64, u64) {
        let (tokens, next) = (s & TOKEN_MASK, s >> TOKEN_BITS);
        if tokens < c.max && now >= next {
            let fills = (now - next) / c.interval_ms + 1;
            let tokens = tokens.saturating_add(fills.saturating_mul(c.per_fill)).min(c.max);
            (tokens, next + fills * c.interval_ms)
        } else {
            (tokens, next)
        }
    }

    /// Takes one token, or says how many milliseconds until the next fill.
    fn try_take(&self, now: u64, c: &BucketConfig) -> Result<(), u64> {
        let mut s = self.state.load(Ordering::Acquire);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (tokens, mut next) = Self::refilled(s, now, c);
            if tokens == 0 {
                // `refilled` fills whenever `now >= next`, so the next fill is in the future.
                return Err(next.saturating_sub(now).max(1));
            }
            if tokens == c.max {
                next = now + c.interval_ms;
            }
            let new = (next << TOKEN_BITS) | (tokens - 1);
            match self
                .state
                .compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(current) => s = current,
            }
        }
        Err(1)
    }

    /// Whether the bucket would be full at `now` (then dropping it changes nothing).
    fn is_idle(&self, now: u64, c: &BucketConfig) -> bool {
        Self::refilled(self.state.load(Ordering::Acquire), now, c).0 == c.max
    }

    /// The time of the next fill (the bucket closest to full has the smallest).
    fn next_fill(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> TOKEN_BITS
    }
}

/// Distinct `descriptor_header` values tracked at most (each has its own bucket).
pub const MAX_DESCRIPTORS: usize = 10_000;
const SHARDS: usize = 16;
const PER_SHARD: usize = MAX_DESCRIPTORS / SHARDS;

/// A local rate limit: one shared bucket, or one bucket per value of `descriptor_header` (plus the
/// shared bucket for requests without the header).
pub struct LocalRateLimiter {
    config: BucketConfig,
    base: Instant,
    shared: TokenBucket,
    descriptor: Option<Descriptors>,
    limited: Counter,
}

/// Per-value buckets. Keys are 64-bit SipHash values of the header value under a random per-limiter
/// key, so memory per entry is fixed whatever the header length, a lookup allocates nothing, and
/// nobody can craft two values that share a bucket. The map is split into shards, each behind a
/// mutex held only for one lookup and one compare-and-swap.
struct Descriptors {
    /// The header the values come from (HTTP); `None` when the caller gives them (RPC).
    header: Option<HeaderName>,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, TokenBucket>>]>,
}

impl LocalRateLimiter {
    pub fn new(c: &LocalRateLimit, limited: Counter) -> LocalRateLimiter {
        let header = (c.descriptor_header.as_deref()).and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        LocalRateLimiter::build(c, header.is_some(), header, limited)
    }

    /// A limiter whose descriptor values come from elsewhere than a header ([`check_value`]):
    /// one bucket per value when `keyed`, else one shared bucket (`c.descriptor_header` unused).
    ///
    /// [`check_value`]: Self::check_value
    pub fn for_values(c: &LocalRateLimit, keyed: bool, limited: Counter) -> LocalRateLimiter {
        LocalRateLimiter::build(c, keyed, None, limited)
    }

    fn build(c: &LocalRateLimit, keyed: bool, header: Option<HeaderName>, limited: Counter) -> LocalRateLimiter {
        let config = BucketConfig {
            max: u64::from(c.max_tokens).min(TOKEN_MASK),
            per_fill: u64::from(c.tokens_per_fill),
            interval_ms: (c.fill_interval.as_millis() as u64).max(1),
        };
        LocalRateLimiter {
            shared: TokenBucket::full(&config),
            descriptor: keyed.then(|| Descriptors {
                header,
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
            config,
            base: Instant::now(),
            limited,
        }
    }

    /// `None` if the request may pass; otherwise the seconds until a token (for `retry-after`).
    pub fn check(&self, headers: &HeaderMap) -> Option<u64> {
        let value = (self.descriptor.as_ref())
            .and_then(|d| d.header.as_ref())
            .and_then(|h| headers.get(h))
            .map(|v| v.as_bytes());
        self.check_value(value)
    }

    /// [`check`](Self::check) with the descriptor's value given (an RPC attachment, say): one
    /// bucket per value when the limiter was built with a descriptor, the shared one for `None`.
    pub fn check_value(&self, value: Option<&[u8]>) -> Option<u64> {
        let now = self.base.elapsed().as_millis() as u64;
        let r = match (&self.descriptor, value) {
            (Some(d), Some(v)) => self.take_keyed(d, d.hasher.hash_one(v), now),
            _ => self.shared.try_take(now, &self.config),
        };
        match r {
            Ok(()) => None,
            Err(ms) => {
                self.limited.inc();
                Some(ms.div_ceil(1000).max(1))
            }
        }
    }

    /// Tokens a request with these headers would find now, without taking one (for `explain`).
    pub fn peek_tokens(&self, headers: &HeaderMap) -> u64 {
        let now = self.base.elapsed().as_millis() as u64;
        let c = &self.config;
        let bucket_tokens = |b: &TokenBucket| TokenBucket::refilled(b.state.load(Ordering::Acquire), now, c).0;
        if let Some(d) = &self.descriptor {
            if let Some(v) = d.header.as_ref().and_then(|h| headers.get(h)) {
                let key = d.hasher.hash_one(v.as_bytes());
                let map = d.shards[(key >> 60) as usize % SHARDS].lock();
                return map.get(&key).map_or(c.max, bucket_tokens);
            }
        }
        bucket_tokens(&self.shared)
    }

    fn take_keyed(&self, d: &Descriptors, key: u64, now: u64) -> Result<(), u64> {
        let c = &self.config;
        let mut map = d.shards[(key >> 60) as usize % SHARDS].lock();
        if let Some(b) = map.get(&key) {
            return b.try_take(now, c);
        }
        if map.len() >= PER_SHARD {
            // Full buckets carry no state: drop them all. If every bucket is in use, drop the one
            // closest to its next fill (that key's limit restarts from a full bucket).
            map.retain(|_, b| !b.is_idle(now, c));
            if map.len() >= PER_SHARD {
                if let Some(k) = map.iter().min_by_key(|(_, b)| b.next_fill()).map(|(k, _)| *k) {
                    map.remove(&k);
                }
            }
        }
        map.entry(key).or_insert_with(|| TokenBucket::full(c)).try_take(now, c)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.descriptor
            .as_ref()
            .map_or(0, |d| d.shards.iter().map(|s| s.lock().len()).sum())
    }
}

// ---------------------------------------------------------------------------------------------
// Per-route filters
// ---------------------------------------------------------------------------------------------

struct FaultRt {
    delay: Option<(Duration, Chance)>,
    abort: Option<(AbortStatus, Chance)>,
    headers: HeaderMatchers,
    aborts: Counter,
    delays: Counter,
}

struct MirrorRt {
    cluster: String,
    chance: Chance,
    requests: Counter,
    errors: Counter,
    skipped: Counter,
}

/// Why a request is answered locally before forwarding.
pub enum Stop {
    RateLimited {
        retry_after_secs: u64,
    },
    /// The global rate limit service said over limit.
    GlobalRateLimited,
    /// The global rate limit service failed and the connection manager fails closed.
    RateLimitServiceError,
    Abort(AbortStatus),
}

/// The compiled per-route governance configuration (only built when the route has some).
pub struct RouteFilters {
    rate_limit: Option<LocalRateLimiter>,
    /// Descriptors for the connection manager's global rate limit service.
    rate_limits: Vec<weft_config::RateLimitPolicy>,
    fault: Option<FaultRt>,
    mirrors: Vec<MirrorRt>,
}

/// Request bodies up to this size (with a known length) are buffered once and shared with shadows.
pub const MIRROR_BODY_LIMIT: u64 = 64 * 1024;
/// Shadow requests on routes without a `timeout` are still bounded by this.
const MIRROR_MAX_TIME: Duration = Duration::from_secs(30);

impl RouteFilters {
    /// The route's local rate limiter, for `explain` (which only peeks at it).
    pub fn local_rate_limiter(&self) -> Option<&LocalRateLimiter> {
        self.rate_limit.as_ref()
    }

    pub fn new(
        f: &ForwardAction,
        listener: &str,
        vhost: &str,
        route: &str,
        metrics: &weft_core::stats::Metrics,
    ) -> RouteFilters {
        let m = &metrics.filters;
        RouteFilters {
            rate_limits: f.rate_limits.clone(),
            rate_limit: f
                .local_rate_limit
                .as_ref()
                .map(|c| LocalRateLimiter::new(c, m.rate_limited(listener, &format!("route:{vhost}/{route}")))),
            fault: f.fault.as_ref().map(|p| FaultRt {
                delay: p.delay.as_ref().map(|d| (d.fixed, Chance::from_percent(d.percent))),
                abort: p.abort.as_ref().map(|a| (a.status, Chance::from_percent(a.percent))),
                headers: HeaderMatchers::new(&p.headers),
                aborts: m.listener(&m.fault_aborts, listener),
                delays: m.listener(&m.fault_delays, listener),
            }),
            mirrors: f
                .request_mirror_policies
                .iter()
                .map(|p| MirrorRt {
                    cluster: p.cluster.clone(),
                    chance: Chance::from_percent(p.percent),
                    requests: m.cluster(&m.mirror_requests, &p.cluster),
                    errors: m.cluster(&m.mirror_errors, &p.cluster),
                    skipped: m.cluster(&m.mirror_skipped, &p.cluster),
                })
                .collect(),
        }
    }

    /// Whether [`Self::before_forward`] has anything to do (a rate limit or a fault).
    pub fn checks_before_forward(&self) -> bool {
        self.rate_limit.is_some() || self.fault.is_some() || !self.rate_limits.is_empty()
    }

    /// Local rate limit, global rate limit, then fault delay, then fault abort. `Some` answers the
    /// request locally.
    pub async fn before_forward(
        &self,
        headers: &HeaderMap,
        rls: Option<&crate::ratelimit::RateLimitClient>,
        clusters: &dyn ClusterLookup,
        peer: std::net::IpAddr,
    ) -> Option<Stop> {
        if let Some(rl) = &self.rate_limit {
            if let Some(retry_after_secs) = rl.check(headers) {
                return Some(Stop::RateLimited { retry_after_secs });
            }
        }
        if let Some(rls) = rls.filter(|_| !self.rate_limits.is_empty()) {
            let descriptors = crate::ratelimit::descriptors(&self.rate_limits, headers, peer);
            if !descriptors.is_empty() {
                match rls.check(clusters, descriptors).await {
                    crate::ratelimit::Verdict::Allow => {}
                    crate::ratelimit::Verdict::OverLimit => return Some(Stop::GlobalRateLimited),
                    crate::ratelimit::Verdict::Error(_) if rls.failure_mode_deny() => {
                        return Some(Stop::RateLimitServiceError)
                    }
                    crate::ratelimit::Verdict::Error(_) => {}
                }
            }
        }
        let f = self.fault.as_ref()?;
        if !f.headers.matches(headers) {
            return None;
        }
        if let Some((d, chance)) = f.delay {
            if chance.roll() {
                f.delays.inc();
                tokio::time::sleep(d).await;
            }
        }
        match f.abort {
            Some((status, chance)) if chance.roll() => {
                f.aborts.inc();
                Some(Stop::Abort(status))
            }
            _ => None,
        }
    }

    /// Which mirror policies this request is sampled into (bit `i` for policy `i`); 0 if none.
    pub fn sample_mirrors(&self) -> u32 {
        let mut mask = 0;
        for (i, m) in self.mirrors.iter().enumerate().take(32) {
            if m.chance.roll() {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Counts the sampled mirrors as skipped (the body could not be shared).
    pub fn skip_mirrors(&self, mask: u32) {
        for (i, m) in self.mirrors.iter().enumerate().take(32) {
            if mask & (1 << i) != 0 {
                m.skipped.inc();
            }
        }
    }

    /// Sends a copy of the request to each sampled mirror cluster, fire and forget: each copy runs
    /// in its own task on this worker, and its outcome is only counted. The shadow's authority is
    /// the request's (after `host_rewrite`) with `-shadow` appended to the host part.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_mirrors(
        &self,
        mask: u32,
        clusters: &dyn ClusterLookup,
        method: &Method,
        uri: &Uri,
        rewritten_path: Option<&str>,
        authority: Option<&str>,
        headers: &HeaderMap,
        body: Option<&Bytes>,
        timeout: Option<Duration>,
    ) {
        let base = authority
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let shadow = shadow_authority(base);
        let valid = !base.is_empty() && shadow.parse::<http::uri::Authority>().is_ok();
        let deadline = Instant::now() + timeout.unwrap_or(MIRROR_MAX_TIME).min(MIRROR_MAX_TIME);
        for (i, m) in self.mirrors.iter().enumerate().take(32) {
            if mask & (1 << i) == 0 {
                continue;
            }
            if !valid {
                m.skipped.inc();
                continue;
            }
            let Some(cluster) = clusters.cluster(&m.cluster) else {
                // Only possible on a connection that outlived a reload removing the cluster.
                m.errors.inc();
                continue;
            };
            let prepared = shape_request(
                cluster.protocol(),
                method.clone(),
                uri.clone(),
                rewritten_path.map(str::to_string),
                Some(&shadow),
                headers.clone(),
            );
            let body = match body {
                Some(b) => UpBody::Full(Some(b.clone())),
                None => UpBody::Empty,
            };
            let request: Request<UpBody> = prepared.into_request(body);
            m.requests.inc();
            let errors = m.errors.clone();
            tokio::spawn(async move {
                match send_detached(cluster, request, deadline).await {
                    Ok(status) if status < 500 => {}
                    _ => {
                        errors.inc();
                    }
                }
            });
        }
    }
}

/// `foo.com` → `foo.com-shadow`, `foo.com:8080` → `foo.com-shadow:8080` (Envoy's shadow host).
pub fn shadow_authority(authority: &str) -> String {
    match authority.rfind(':') {
        Some(i) if i + 1 < authority.len() && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}-shadow{}", &authority[..i], &authority[i..])
        }
        _ => format!("{authority}-shadow"),
    }
}

/// The gRPC status for an HTTP status (gRPC's "HTTP to gRPC status code mapping").
pub fn grpc_for_http(status: u16) -> u8 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The HTTP status for a gRPC status (as Envoy maps gRPC codes for non-gRPC callers).
pub fn http_for_grpc(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32, per_fill: u32, interval: Duration, header: Option<&str>) -> LocalRateLimiter {
        LocalRateLimiter::new(
            &LocalRateLimit {
                max_tokens: max,
                tokens_per_fill: per_fill,
                fill_interval: interval,
                descriptor_header: header.map(str::to_string),
            },
            Counter::default(),
        )
    }

    #[test]
    fn bucket_fills_discretely_from_first_take() {
        let c = BucketConfig {
            max: 3,
            per_fill: 2,
            interval_ms: 1000,
        };
        let b = TokenBucket::full(&c);
        // Idle time before the first take earns nothing: the bucket is full already.
        for _ in 0..3 {
            assert!(b.try_take(5_000, &c).is_ok());
        }
        assert_eq!(b.try_take(5_200, &c), Err(800));
        // One fill at 6000 brings two tokens.
        assert_eq!(b.try_take(5_999, &c), Err(1));
        assert!(b.try_take(6_000, &c).is_ok());
        assert!(b.try_take(6_500, &c).is_ok());
        assert_eq!(b.try_take(6_600, &c), Err(400));
        // Three fills later the bucket is capped at max.
        for _ in 0..3 {
            assert!(b.try_take(9_100, &c).is_ok());
        }
        assert!(b.try_take(9_100, &c).is_err());
        assert!(!b.is_idle(9_100, &c));
        assert!(b.is_idle(12_000, &c));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = limiter(1, 1, Duration::from_millis(2500), None);
        let h = HeaderMap::new();
        assert_eq!(l.check(&h), None);
        assert_eq!(l.check(&h), Some(3));
    }

    #[test]
    fn descriptor_map_is_bounded_and_evicts_idle_buckets() {
        let l = limiter(1, 1, Duration::from_secs(3600), Some("x-user"));
        let mut h = HeaderMap::new();
        for i in 0..(MAX_DESCRIPTORS * 2) {
            h.insert("x-user", i.to_string().parse().unwrap());
            assert_eq!(l.check(&h), None, "a new key starts with a full bucket");
        }
        assert!(l.tracked() <= MAX_DESCRIPTORS, "{}", l.tracked());
        // The shared bucket for requests without the header is separate.
        assert_eq!(l.check(&HeaderMap::new()), None);
        assert!(l.check(&HeaderMap::new()).is_some());
    }

    #[test]
    fn shared_across_threads() {
        let l = std::sync::Arc::new(limiter(1000, 1, Duration::from_secs(3600), None));
        let ok = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (l, ok) = (l.clone(), ok.clone());
                s.spawn(move || {
                    let h = HeaderMap::new();
                    for _ in 0..500 {
                        if l.check(&h).is_none() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn shadow_authorities() {
        assert_eq!(shadow_authority("foo.com"), "foo.com-shadow");
        assert_eq!(shadow_authority("foo.com:8080"), "foo.com-shadow:8080");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_authority("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn chances() {
        assert!(Chance::from_percent(100.0).roll());
        assert!(!Chance::from_percent(0.0).roll());
        let n = (0..100_000).filter(|_| Chance::from_percent(25.0).roll()).count();
        assert!((23_000..27_000).contains(&n), "{n}");
    }
}
