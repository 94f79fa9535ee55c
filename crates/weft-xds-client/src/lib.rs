//! weft's xDS client: fetches listeners, routes, clusters and endpoints from a control plane over
//! the Envoy v3 API (ADS or per-type streams, state-of-the-world or incremental) and hands complete,
//! validated [`weft_config::Config`] values to an apply callback.
//!
//! The crate does not depend on the proxy: the `weft` binary (or a test) wires the callback to
//! `weft_proxy::Server::apply`, the "initialized" callback to the `/ready` gate, and
//! [`XdsClient`] itself to the admin API.
//!
//! ```ignore
//! use std::sync::Arc;
//! let bootstrap = weft_config::from_file(path)?; // has an `xds:` section
//! let server = weft_proxy::Server::start(bootstrap.clone(), weft_proxy::ServerOptions { config_path: None })?;
//! // Weak references: the server must not be kept alive by its own client.
//! let s = Arc::downgrade(&server);
//! let apply: weft_xds_client::ApplyFn =
//!     Arc::new(move |cfg| s.upgrade().ok_or("stopped".to_string())?.apply(cfg).map_err(|e| e.to_string()));
//! let shared = Arc::downgrade(&server.shared);
//! let on_init: weft_xds_client::InitializedFn = Arc::new(move || {
//!     if let Some(s) = shared.upgrade() { s.set_xds_initialized() } // opens /ready
//! });
//! let client = weft_xds_client::XdsClient::start(bootstrap, apply, on_init, server.control_handle())?;
//! // The `weft` binary also registers `/xds` (`AdminExtension`) and the reload hook
//! // (`client.set_static`): see crates/weft/src/xds.rs.
//! ```
#![forbid(unsafe_code)]

mod access_log_xds;
pub mod convert;
pub mod dubbo_xds;
pub mod generic_xds;
pub mod jwt_xds;
pub mod pgv;
pub mod rbac_xds;
mod state;
mod stream;
pub mod tls;
pub mod tracing_xds;

use state::{State, TYPES};
use std::sync::{Arc, Mutex};
use weft_config::Config;

/// Applies a complete configuration; an error is reported to the control plane as a NACK.
pub type ApplyFn = Arc<dyn Fn(Config) -> Result<(), String> + Send + Sync>;
/// Called once, when the first complete configuration has been applied.
pub type InitializedFn = Arc<dyn Fn() + Send + Sync>;

/// A running xDS client. Dropping it stops it.
pub struct XdsClient {
    pub(crate) inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    summary: tokio::task::JoinHandle<()>,
}

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) apply: ApplyFn,
    pub(crate) on_initialized: InitializedFn,
    pub(crate) xds: weft_config::Xds,
    pub(crate) node: weft_config::Node,
    pub(crate) metrics: Mutex<Counters>,
    /// Wakes the session to update the CDS subscription (on-demand discovery).
    pub(crate) wake: tokio::sync::Notify,
    /// Bumped after every response handled: on-demand waiters look at the route table again.
    pub(crate) changed: tokio::sync::watch::Sender<u64>,
    /// How much a service's clusters were used (see [`XdsClient::set_activity`]).
    pub(crate) activity: Mutex<Option<ActivityFn>>,
    /// The control-plane replica of the current (or last) session.
    pub(crate) current: Mutex<String>,
    /// TLS to the control plane (`xds.tls`); None: plaintext h2c.
    pub(crate) tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
}

/// Requests sent to a service's clusters so far (any number that changes when the service is
/// used); None when the proxy has no such cluster.
pub type ActivityFn = Box<dyn Fn(&str) -> Option<u64> + Send + Sync>;

/// Most services one proxy asks for on demand; more are refused (each is a subscription the
/// control plane keeps, so a client sending random `Host` headers must not grow it forever).
pub const MAX_ON_DEMAND: usize = 4096;
/// How long a service the control plane said it does not have is not asked for again.
pub const ON_DEMAND_MISSING_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// After this long, a service asked for on demand whose route still misses is not waited for.
const ON_DEMAND_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Unsubscribes services asked for on demand whose activity (requests to their clusters) has not
/// changed for `idle`: the control plane then narrows this proxy's configuration again.
async fn forget_idle(inner: std::sync::Weak<Inner>, idle: std::time::Duration) {
    let every = (idle / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
    // name -> (activity last seen, when it last changed)
    let mut seen: std::collections::HashMap<String, (Option<u64>, tokio::time::Instant)> = Default::default();
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let names: Vec<String> = inner.state.lock().unwrap().on_demand.keys().cloned().collect();
        seen.retain(|n, _| names.contains(n));
        let mut forget = Vec::new();
        {
            let activity = inner.activity.lock().unwrap();
            let Some(f) = activity.as_ref() else { continue };
            let now = tokio::time::Instant::now();
            for n in names {
                let a = f(&n);
                match seen.get_mut(&n) {
                    Some((last, since)) if *last == a => {
                        if now.duration_since(*since) >= idle {
                            forget.push(n);
                        }
                    }
                    Some(e) => *e = (a, now),
                    None => {
                        seen.insert(n, (a, now));
                    }
                }
            }
        }
        if !forget.is_empty() {
            let mut st = inner.state.lock().unwrap();
            for n in &forget {
                st.on_demand.remove(n);
                seen.remove(n);
                // Delta: an unsubscribed resource is dropped by the client, not removed by the
                // server.
                st.res.clusters.remove(n);
            }
            if let Err(e) = st.reapply(&inner.apply) {
                tracing::warn!(error = %e, "applying without forgotten on-demand services failed");
            }
            drop(st);
            tracing::info!(services = ?forget, "forgetting services asked for on demand and unused for {idle:?}");
            inner.wake.notify_one();
        }
    }
}

/// A service name as a `Host` header may carry it: a DNS name.
fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: [u64; 5],
    pub(crate) rejected: [u64; 5],
    pub(crate) connects: u64,
}

impl XdsClient {
    /// Starts the client on `handle` (the proxy's control runtime). `bootstrap` must have an
    /// `xds` section; its listeners and clusters are the static part of every applied config.
    pub fn start(
        bootstrap: Config,
        apply: ApplyFn,
        on_initialized: InitializedFn,
        handle: &tokio::runtime::Handle,
    ) -> Result<XdsClient, String> {
        Self::start_with_tls(bootstrap, apply, on_initialized, handle, None)
    }

    /// [`XdsClient::start`] with TLS to the control plane: `tls` is the client configuration
    /// (certificate, trust, secure naming; ALPN h2 is set here). Required when the bootstrap has
    /// `xds.tls`.
    pub fn start_with_tls(
        bootstrap: Config,
        apply: ApplyFn,
        on_initialized: InitializedFn,
        handle: &tokio::runtime::Handle,
        tls: Option<Arc<weft_tls::rustls::ClientConfig>>,
    ) -> Result<XdsClient, String> {
        if bootstrap.xds.as_ref().is_some_and(|x| x.tls.is_some()) && tls.is_none() {
            return Err("xds.tls: no TLS client configuration (the proxy's mesh identity) was given".into());
        }
        let xds = bootstrap
            .xds
            .clone()
            .ok_or_else(|| "the configuration has no xds section".to_string())?;
        let inner = Arc::new(Inner {
            node: bootstrap.node.clone(),
            state: Mutex::new(State::new(bootstrap)),
            apply,
            on_initialized,
            xds,
            metrics: Mutex::new(Counters::default()),
            wake: tokio::sync::Notify::new(),
            changed: tokio::sync::watch::Sender::new(0),
            activity: Mutex::new(None),
            current: Mutex::new(String::new()),
            tls,
        });
        let task = handle.spawn(stream::run(inner.clone()));
        if let Some(idle) = inner.xds.on_demand_idle {
            handle.spawn(forget_idle(Arc::downgrade(&inner), idle));
        }
        let summary = handle.spawn(stream::summary(Arc::downgrade(&inner), stream::SUMMARY_INTERVAL));
        Ok(XdsClient { inner, task, summary })
    }

    /// Replaces the static part (a reloaded bootstrap file) and re-applies with the dynamic
    /// resources held. The `xds` and `node` sections of the new file are ignored until restart.
    pub fn set_static(&self, mut cfg: Config) -> Result<(), String> {
        let mut st = self.inner.state.lock().unwrap();
        cfg.xds = st.static_cfg.xds.clone();
        cfg.node = st.static_cfg.node.clone();
        let old = std::mem::replace(&mut st.static_cfg, cfg);
        let r = st.reapply(&self.inner.apply);
        if r.is_err() {
            st.static_cfg = old;
        }
        r
    }

    /// On-demand discovery (configuration scoping): subscribes to the cluster `name` by name, in
    /// addition to the wildcard, and returns a future that resolves when a configuration holding
    /// that cluster has been applied (true), or false when the control plane says it has no such
    /// cluster. None when there is
    /// nothing to wait for: not a service name, known to be missing (for
    /// [`ON_DEMAND_MISSING_TTL`]), asked for long ago (its route misses for another reason), or
    /// [`MAX_ON_DEMAND`] names asked for already.
    pub fn discover(&self, name: &str) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> {
        if !valid_service_name(name) {
            return None;
        }
        let mut rx = self.inner.changed.subscribe();
        {
            let mut st = self.inner.state.lock().unwrap();
            if let Some(at) = st.on_demand_missing.get(name) {
                if at.elapsed() < ON_DEMAND_MISSING_TTL {
                    return None;
                }
                st.on_demand_missing.remove(name);
            }
            match st.on_demand.get(name) {
                Some(at) if at.elapsed() > ON_DEMAND_SETTLE => return None,
                Some(_) => {}
                None => {
                    if st.on_demand.len() >= MAX_ON_DEMAND {
                        return None;
                    }
                    tracing::debug!(service = name, "asking the control plane for a service on demand");
                    st.on_demand.insert(name.to_string(), tokio::time::Instant::now());
                    self.inner.wake.notify_one();
                }
            }
        }
        let inner = Arc::downgrade(&self.inner);
        let name = name.to_string();
        Some(Box::pin(async move {
            // Resolves once the cluster is in an applied configuration (its endpoints arrived, so
            // a route to it does not fail with "no cluster"), or is known to be missing.
            loop {
                if rx.changed().await.is_err() {
                    return false;
                }
                let Some(i) = inner.upgrade() else { return false };
                let st = i.state.lock().unwrap();
                if st.on_demand_missing.contains_key(&name) {
                    return false;
                }
                if st
                    .last_applied
                    .as_ref()
                    .is_some_and(|c| c.clusters.iter().any(|c| c.name == name))
                {
                    return true;
                }
            }
        }))
    }

    /// Lets the client forget services asked for on demand that are no longer called
    /// (`xds.on_demand_idle`): `f` tells how much a service has been used.
    pub fn set_activity(&self, f: ActivityFn) {
        *self.inner.activity.lock().unwrap() = Some(f);
    }

    /// The services asked for on demand so far.
    pub fn on_demand_names(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().on_demand.keys().cloned().collect()
    }

    /// Whether the first complete configuration has been applied.
    pub fn initialized(&self) -> bool {
        self.inner.state.lock().unwrap().initialized
    }

    pub fn connected(&self) -> bool {
        self.inner.state.lock().unwrap().connected
    }

    /// Last accepted version per type ("lds", "rds", "cds", "eds").
    pub fn version(&self, short: &str) -> Option<String> {
        let st = self.inner.state.lock().unwrap();
        let i = TYPES.iter().position(|t| weft_xds_api::type_url::short(t) == short)?;
        Some(st.types[i].version.clone())
    }

    /// The admin view: connection, per type version / nonce / last NACK / resource names.
    pub fn status_json(&self) -> serde_json::Value {
        let st = self.inner.state.lock().unwrap();
        let m = self.inner.metrics.lock().unwrap();
        let mut types = serde_json::Map::new();
        for (i, t) in TYPES.iter().enumerate() {
            let s = &st.types[i];
            types.insert(
                weft_xds_api::type_url::short(t).to_string(),
                serde_json::json!({
                    "type_url": t,
                    "version": s.version,
                    "nonce": s.nonce,
                    "last_error": s.last_error,
                    "accepted": m.accepted[i],
                    "rejected": m.rejected[i],
                    "last_update": s.last_update.map(httpdate::fmt_http_date),
                    "resources": st.res.names(i),
                }),
            );
        }
        let waiting: Vec<_> = st
            .waiting_since
            .keys()
            .map(|(t, n)| {
                format!(
                    "{} \"{n}\"{}",
                    state::kind(*t),
                    if st.timed_out.contains(&(*t, n.clone())) {
                        " (timed out)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        serde_json::json!({
            "address": *self.inner.current.lock().unwrap(),
            "addresses": self.inner.xds.addresses,
            "mode": self.inner.xds.mode,
            "connected": st.connected,
            "initialized": st.initialized,
            "connects": m.connects,
            "warming": waiting,
            "on_demand": st.on_demand.keys().collect::<Vec<_>>(),
            "on_demand_missing": st.on_demand_missing.keys().collect::<Vec<_>>(),
            "types": types,
        })
    }

    /// Prometheus text: `weft_xds_updates_total{type,result}`, `weft_xds_connected`.
    pub fn prometheus(&self) -> String {
        let connected = self.connected();
        let m = self.inner.metrics.lock().unwrap();
        let mut s = String::from(
            "# HELP weft_xds_updates xDS responses accepted (ACK) or rejected (NACK), per type.\n# TYPE weft_xds_updates counter\n",
        );
        for (i, t) in TYPES.iter().enumerate() {
            let short = weft_xds_api::type_url::short(t);
            s.push_str(&format!(
                "weft_xds_updates_total{{type=\"{short}\",result=\"accepted\"}} {}\n",
                m.accepted[i]
            ));
            s.push_str(&format!(
                "weft_xds_updates_total{{type=\"{short}\",result=\"rejected\"}} {}\n",
                m.rejected[i]
            ));
        }
        s.push_str("# HELP weft_xds_connected Whether the xDS stream to the control plane is up.\n# TYPE weft_xds_connected gauge\n");
        s.push_str(&format!("weft_xds_connected {}\n", u8::from(connected)));
        s.push_str("# HELP weft_xds_connects xDS stream (re)connections.\n# TYPE weft_xds_connects counter\n");
        s.push_str(&format!("weft_xds_connects_total {}\n", m.connects));
        s
    }

    /// Stops the client (the proxy keeps its last applied configuration).
    pub fn stop(&self) {
        self.task.abort();
        self.summary.abort();
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.stop();
    }
}
