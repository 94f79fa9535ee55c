//! The Envoy v3 xDS API as weft speaks it.
//!
//! Re-exports the generated protobuf types from `envoy-types` and adds the few helpers both sides of
//! the wire need: resource type URLs, packing and unpacking `Any`, and a stable content hash used as
//! a per-resource version.
#![forbid(unsafe_code)]

pub use envoy_types;
pub use envoy_types::pb;
pub use prost;

use pb::google::protobuf::Any;
use prost::Message;

pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    pub const HCM: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const TCP_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
    pub const LOCAL_RATE_LIMIT: &str =
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    pub const FILE_ACCESS_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

    /// Order in which a control plane should push types so that clients can warm (Envoy's
    /// "make before break": clusters before their endpoints, listeners before their routes).
    pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

    /// Short name for logs and metrics labels.
    pub fn short(url: &str) -> &str {
        match url {
            LISTENER => "lds",
            ROUTE => "rds",
            CLUSTER => "cds",
            ENDPOINT => "eds",
            SECRET => "sds",
            _ => url.rsplit('.').next().unwrap_or(url),
        }
    }
}

/// Wraps a message in an `Any` with the given type URL.
pub fn pack<M: Message>(type_url: &str, msg: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

/// Decodes an `Any`, checking its type URL first so that a mismatch gets a precise error.
pub fn unpack<M: Message + Default>(any: &Any, expected: &str) -> Result<M, String> {
    if any.type_url != expected {
        return Err(format!("expected type {expected}, got {}", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {expected}: {e}"))
}

/// FNV-1a's offset basis: the state [`fnv`] starts from.
pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` into an FNV-1a hash state. Deterministic across processes and restarts, unlike
/// std's `RandomState`, which is what versions need.
pub fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// A resource's version as a number: FNV-1a over its encoding, so a restarted control plane gives
/// unchanged resources the same version.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_INIT;
    fnv(&mut h, bytes);
    h
}

/// [`content_hash`] in its wire form (16 hex digits).
pub fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", content_hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn pack_roundtrip_and_type_check() {
        let c = Cluster {
            name: "reviews".into(),
            ..Default::default()
        };
        let any = pack(type_url::CLUSTER, &c);
        let back: Cluster = unpack(&any, type_url::CLUSTER).unwrap();
        assert_eq!(back.name, "reviews");
        let err = unpack::<Cluster>(&any, type_url::LISTENER).unwrap_err();
        assert!(err.contains("expected type"), "{err}");
    }

    #[test]
    fn content_version_is_stable() {
        assert_eq!(content_version(b"abc"), content_version(b"abc"));
        assert_ne!(content_version(b"abc"), content_version(b"abd"));
    }
}
