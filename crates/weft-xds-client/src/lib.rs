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

pub mod convert;
pub mod pgv;
mod state;
mod stream;
pub mod tls;

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
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: [u64; 4],
    pub(crate) rejected: [u64; 4],
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
        });
        let task = handle.spawn(stream::run(inner.clone()));
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
            "address": self.inner.xds.address,
            "mode": self.inner.xds.mode,
            "connected": st.connected,
            "initialized": st.initialized,
            "connects": m.connects,
            "warming": waiting,
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
