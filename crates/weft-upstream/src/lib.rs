//! The data plane's upstream layer: clusters and their hosts, load-balanced host sets, outlier
//! detection, active health checks, per-worker connection pools, the bodies that cross the proxy,
//! and the upstream client that sends one try to one host.
//!
//! Depends only on `weft-core` (and configuration); routing and the downstream side build on it.

pub mod body;
pub mod client;
pub mod cluster;
pub mod h1;
pub mod h2_client;
pub mod health;
pub mod hostset;
pub mod kept;
pub mod outlier;
pub mod splice;

pub use cluster::{set_worker_index, ClusterLookup, ClusterRt, Host, OnDemand};
