//! The data plane's base layer: what every other layer records into and nothing depends on in turn.
//!
//! - [`flags`]: reason codes for responses the proxy makes itself.
//! - [`error`]: the one error type of the request path: reason, blame and retry safety.
//! - [`stats`]: the Prometheus registry and the per-listener/cluster/route handles.
//! - [`access_log`]: buffered access-log sinks; [`log_format`]: Envoy-style format strings.
//!
//! Layers, each depending only on those before it (enforced by Cargo):
//! `weft-core` → `weft-upstream` (hosts, pools, the upstream client) → `weft-route` (router, route
//! filters, rate limits) → `weft-proxy` (downstream HTTP/1, HTTP/2, TCP, the server, admin).

pub mod access_log;
pub mod error;
pub mod flags;
pub mod hist;
pub mod istio;
pub mod istio_tcp;
pub mod log_format;
pub mod shard;
pub mod stats;
pub mod trace;

pub use error::{Blame, Error, Retry};
pub use flags::Reason;

/// A hash map for lookups on the request path: foldhash (randomly seeded per map, as std's) instead
/// of std's SipHash-1-3, which cost ~150 instructions per lookup of a short key
/// (`bench/instructions`). Its keys are names from the configuration and small label sets.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
