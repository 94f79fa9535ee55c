//! RPC metrics: per listener and method (the method label bounded per listener), local replies and
//! decode errors by reason, heartbeats. One registry for the process, exposed by the admin server
//! next to the HTTP metrics.

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use weft_core::shard::Counter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub listener: String,
    pub method: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodTimeLabel {
    pub listener: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

fn new_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 21))
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct RpcMetrics {
    registry: Mutex<Registry>,
    requests: Family<MethodLabel, Counter>,
    request_time: HistFamily<MethodTimeLabel>,
    local_replies: Family<ReasonLabel, Counter>,
    decode_errors: Family<ReasonLabel, Counter>,
    heartbeats: Family<ListenerLabel, Counter>,
    parks: Family<ListenerLabel, Counter>,
    rls_over_limit: Family<ListenerLabel, Counter>,
    rls_errors: Family<ListenerLabel, Counter>,
    sniffed: Family<ProtocolLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub listener: String,
    pub protocol: &'static str,
}

/// The process-wide RPC metrics.
pub fn global() -> &'static RpcMetrics {
    static M: OnceLock<RpcMetrics> = OnceLock::new();
    M.get_or_init(RpcMetrics::new)
}

impl RpcMetrics {
    fn new() -> RpcMetrics {
        let m = RpcMetrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            request_time: Family::new_with_constructor(new_hist),
            local_replies: Family::default(),
            decode_errors: Family::default(),
            heartbeats: Family::default(),
            parks: Family::default(),
            rls_over_limit: Family::default(),
            rls_errors: Family::default(),
            sniffed: Family::default(),
        };
        let mut r = Registry::with_prefix("weft_rpc");
        r.register(
            "requests",
            "RPC requests by listener, method and outcome",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "RPC request latency by listener and method",
            m.request_time.clone(),
        );
        r.register(
            "local_replies",
            "RPC replies made by the proxy, by reason",
            m.local_replies.clone(),
        );
        r.register(
            "decode_errors",
            "Connections closed for a bad frame, by reason",
            m.decode_errors.clone(),
        );
        r.register("heartbeats", "Heartbeats answered by the proxy", m.heartbeats.clone());
        r.register(
            "connection_parks",
            "Times a downstream connection at rest gave up its writer task and response channel (made again for its next request)",
            m.parks.clone(),
        );
        r.register(
            "ratelimit_service_over_limit",
            "Calls the global rate limit service said were over the limit",
            m.rls_over_limit.clone(),
        );
        r.register(
            "ratelimit_service_errors",
            "Calls for which the global rate limit service failed or did not answer in time",
            m.rls_errors.clone(),
        );
        r.register(
            "sniffed_connections",
            "Connections of protocol: auto listeners, by the protocol their first bytes showed",
            m.sniffed.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// The (over limit, errors) counters of a listener's rate limit service client.
    pub fn rate_limit_service(&self, listener: &str) -> (Counter, Counter) {
        let l = ListenerLabel {
            listener: listener.to_string(),
        };
        (
            self.rls_over_limit.get_or_create(&l).clone(),
            self.rls_errors.get_or_create(&l).clone(),
        )
    }

    /// Counts a sniffing listener's connection by the protocol found.
    pub fn sniffed(&self, listener: &str, protocol: &'static str) {
        self.sniffed
            .get_or_create(&ProtocolLabel {
                listener: listener.to_string(),
                protocol,
            })
            .inc();
    }

    /// Prometheus text lines, without the trailing `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        if let Some(i) = out.rfind("# EOF") {
            out.truncate(i);
        }
        out
    }
}

/// One method's handles, resolved once.
#[derive(Clone)]
pub struct MethodStats {
    pub ok: Counter,
    pub error: Counter,
    pub time: Histogram,
}

/// A listener's handles, with the bounded method table.
pub struct ListenerRpcStats {
    listener: String,
    max_methods: usize,
    methods: RwLock<HashMap<String, MethodStats>>,
    other: MethodStats,
    pub heartbeats: Counter,
    pub parks: Counter,
}

impl ListenerRpcStats {
    pub fn new(listener: &str, max_methods: u32) -> Arc<ListenerRpcStats> {
        let other = Self::resolve(listener, "other");
        let heartbeats = global()
            .heartbeats
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone();
        let parks = global()
            .parks
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone();
        Arc::new(ListenerRpcStats {
            parks,
            listener: listener.to_string(),
            max_methods: max_methods as usize,
            methods: RwLock::new(HashMap::new()),
            other,
            heartbeats,
        })
    }

    fn resolve(listener: &str, method: &str) -> MethodStats {
        let g = global();
        let label = |outcome| MethodLabel {
            listener: listener.to_string(),
            method: method.to_string(),
            outcome,
        };
        // One statement each: `get_or_create` returns a read guard, and a second call while the
        // first guard lives (same statement) would deadlock on the family's lock.
        let ok = g.requests.get_or_create(&label("ok")).clone();
        let error = g.requests.get_or_create(&label("error")).clone();
        let time = g
            .request_time
            .get_or_create(&MethodTimeLabel {
                listener: listener.to_string(),
                method: method.to_string(),
            })
            .clone();
        MethodStats { ok, error, time }
    }

    /// The handles for `method`: its own while fewer than the limit are known, else `other`.
    pub fn method(&self, method: &str) -> MethodStats {
        if let Some(s) = self.methods.read().get(method) {
            return s.clone();
        }
        let mut w = self.methods.write();
        if let Some(s) = w.get(method) {
            return s.clone();
        }
        if w.len() >= self.max_methods {
            return self.other.clone();
        }
        let s = Self::resolve(&self.listener, method);
        w.insert(method.to_string(), s.clone());
        s
    }

    pub fn local_reply(&self, reason: &'static str) {
        global()
            .local_replies
            .get_or_create(&ReasonLabel {
                listener: self.listener.clone(),
                reason,
            })
            .inc();
    }

    pub fn decode_error(&self, reason: &'static str) {
        global()
            .decode_errors
            .get_or_create(&ReasonLabel {
                listener: self.listener.clone(),
                reason,
            })
            .inc();
    }
}
