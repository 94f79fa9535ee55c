//! weft's data plane.
//!
//! A [`server::Server`] runs one validated [`weft_config::Config`]: it binds the listeners, serves
//! TCP proxy and HTTP (HTTP/1.1, h2c, gRPC, WebSocket) traffic through routes and load-balanced
//! clusters, exposes the admin API, and swaps configuration atomically on reload.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cluster;
pub mod filters;
pub mod flags;
pub mod h1_framing;
pub mod health;
pub mod hostset;
pub mod http;
pub mod idle;
pub mod outlier;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod stats;
pub mod tcp;
pub mod watchdog;

pub use server::{Server, ServerOptions};
