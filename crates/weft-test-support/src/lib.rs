//! The test harness shared by weft's integration tests (a dev-dependency only; never a normal
//! dependency of a shipped crate).
//!
//! Everything runs on real sockets on 127.0.0.1 with ephemeral ports:
//!
//! - [`net`]: ports and listeners ([`free_port`], [`free_addr`], [`listener`]).
//! - [`wait`]: polling with a deadline and a message that says what never happened
//!   ([`eventually`], [`eventually_blocking`], [`within`]). Tests wait on an observable signal
//!   (a counter, a log line, a closed socket) instead of sleeping.
//! - [`mod@upstream`]: real hyper upstreams (HTTP/1.1 and h2c) recording what they saw
//!   ([`upstream()`], [`named_upstream`], [`fixed_upstream`], [`slow_upstream`],
//!   [`hanging_upstream`], [`streaming_upstream`]), raw TCP servers ([`tcp_server`],
//!   [`tcp_echo`]), and servers on their own thread and runtime for code that blocks
//!   ([`threaded`]).
//! - [`client`]: hyper clients ([`H1Client`], [`h1_connect`], [`h2_connect`], [`send_once`]) and
//!   raw-socket ones ([`raw`], [`http_close`]).
//! - [`proxy`] (feature `proxy`): `weft proxy` started in-process from YAML ([`start_proxy`]), its
//!   admin endpoint ([`admin`], [`admin_post`]) and counters ([`stat`], [`wait_stat`]).
//! - [`peers`]: finding third-party peers (nginx, Envoy, curl, wrk); under `CI=true` a missing
//!   peer is a failure, never a skip.
//! - [`kube_api`]: a stand-in Kubernetes API server (list/watch, bookmarks, 410 Gone) fed from
//!   recorded JSON fixtures.
//! - [`etcd`]: a throwaway etcd server (Debian's) and `etcdctl`.
//! - [`fs`]: temporary directories and the large-body test pattern.

pub mod client;
pub mod etcd;
pub mod fs;
pub mod kube_api;
pub mod net;
pub mod peers;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod threaded;
pub mod upstream;
pub mod wait;

pub use client::*;
pub use fs::*;
pub use net::*;
#[cfg(feature = "proxy")]
pub use proxy::*;
pub use upstream::*;
pub use wait::*;
