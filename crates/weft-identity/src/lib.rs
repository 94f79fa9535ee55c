//! Workload identity for weft: what a sidecar (or the SDS agent next to an Envoy) needs to obtain
//! and keep an X.509 SVID from `weft control`'s mesh CA.
//!
//! - [`spiffe`]: SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! - [`token`]: bootstrap tokens minted by `weft control token`, bound to one identity.
//! - [`proto`]: the messages of Istio's CA API (`istio.v1.auth.IstioCertificateService`).
//! - [`csr`]: the private key (generated here, never sent anywhere), the CSR, and the renewal proof.
//! - [`client`]: one `CreateCertificate` call; [`agent`]: the loop that renews at half-life, retries
//!   with backoff, and publishes the current SVID through an `ArcSwap` and a watch channel.
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod csr;
pub mod hex;
pub mod proto;
pub mod spiffe;
pub mod token;

pub use agent::{AgentConfig, IdentityAgent, IdentityMetrics};
pub use client::{Auth, FetchError, Svid};
pub use csr::{KeyType, WorkloadKey};
pub use spiffe::SpiffeId;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
