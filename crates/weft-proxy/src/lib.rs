//! weft's data plane.
//!
//! A [`server::Server`] runs one validated [`weft_config::Config`]: it binds the listeners, serves
//! TCP proxy and HTTP (HTTP/1.1, h2c, gRPC, WebSocket) traffic through routes and load-balanced
//! clusters, exposes the admin API, and swaps configuration atomically on reload.

pub mod admin;
pub mod carry;
pub mod dns;
pub mod explain;
pub mod h1_framing;
pub mod h1_server;
pub mod h2_server;
pub mod hot_restart;
pub mod http;
pub mod idle;
pub mod interception;
pub mod rpc;
pub mod server;
pub mod tcp;
pub mod tls;
pub mod watchdog;

// The layers below, under their old paths (`weft_proxy::stats`, `weft_proxy::cluster`, …).
pub use weft_core::{access_log, error, flags, stats};
pub use weft_route::{authz, filters, ratelimit, router};
pub use weft_upstream::{body, client, cluster, health, hostset, outlier};

pub use server::{ApplyError, Server, ServerOptions};
