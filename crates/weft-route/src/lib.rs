//! The data plane's route layer: compiled route tables (virtual hosts, matchers, header
//! mutations), route filters (fault injection, mirroring, local rate limits) and the client of a
//! global rate limit service.
//!
//! Depends on `weft-core` and `weft-upstream` (mirrors are sent with the upstream client); the
//! downstream connection managers in `weft-proxy` build on it.

pub mod authz;
pub mod filters;
pub mod ratelimit;
pub mod router;
