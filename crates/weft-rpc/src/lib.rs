//! RPC as first-class traffic. A protocol plugs in by implementing [`codec::Codec`] (frame
//! decoding without copying bodies, request ids, routing attributes, local replies, heartbeats,
//! go-away); the [`proxy`] then gives it per-request routing on service, method, version, group,
//! attachments and argument values, load balancing over the existing clusters, multiplexed upstream
//! connections, timeouts, metrics and access logs.
//!
//! Protocols: [`dubbo`] (Dubbo2 over hessian2, walked with the [`hessian`] skipper) and [`bolt`]
//! (SOFARPC Bolt v1 and v2). [`sniff`] tells them (and TLS, HTTP/1.x, HTTP/2) apart on one port.
//!
//! Depends on `weft-core` and `weft-upstream`; `weft-proxy` starts RPC listeners with it. Without
//! the default `proxy` feature the crate is the codecs alone (`bytes` and `crc32fast`), which is
//! what `weft bench` (`dubbo://`, `bolt://` targets) links.

pub mod bolt;
pub mod codec;
pub mod dubbo;
pub mod hessian;
#[cfg(feature = "proxy")]
pub mod metrics;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod sniff;

#[cfg(feature = "proxy")]
pub use proxy::{serve_connection, DownstreamIo, DownstreamRead, RpcRt, SplitIo};
