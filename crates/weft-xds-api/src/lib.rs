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
    pub const UPSTREAM_TLS_CONTEXT: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
    pub const DOWNSTREAM_TLS_CONTEXT: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
    pub const TLS_INSPECTOR: &str =
        "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
    pub const DUBBO_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy";
    pub const GENERIC_PROXY: &str =
        "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.GenericProxy";

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

/// Where a length-delimited field leads, for [`canonical`].
#[derive(Clone, Copy)]
enum Child {
    Msg(Schema),
    /// A map field: each entry is `{1: key, 2: value}` with values of this schema.
    Map(Schema),
}

/// The messages on the paths from the resource types weft control emits to the protobuf map
/// fields inside them (the only source of nondeterminism in an encoding: prost encodes a map in
/// `HashMap` order, which differs between maps and between processes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Schema {
    Listener,
    ApiListener,
    FilterChain,
    Filter,
    HttpConnectionManager,
    HttpFilter,
    RouteConfiguration,
    VirtualHost,
    Route,
    RouteAction,
    WeightedCluster,
    ClusterWeight,
    Cluster,
    LbSubsetConfig,
    ClusterLoadAssignment,
    LocalityLbEndpoints,
    LbEndpoint,
    Metadata,
    Struct,
    Value,
    ListValue,
    Any,
    /// Anything else: kept byte for byte.
    Opaque,
}

impl Schema {
    fn of_type_url(url: &str) -> Schema {
        match url.rsplit('/').next().unwrap_or("") {
            "envoy.config.listener.v3.Listener" => Schema::Listener,
            "envoy.config.route.v3.RouteConfiguration" => Schema::RouteConfiguration,
            "envoy.config.cluster.v3.Cluster" => Schema::Cluster,
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => Schema::ClusterLoadAssignment,
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
                Schema::HttpConnectionManager
            }
            "google.protobuf.Struct" => Schema::Struct,
            _ => Schema::Opaque,
        }
    }

    fn child(self, field: u64) -> Option<Child> {
        use Child::{Map, Msg};
        use Schema::*;
        Some(match (self, field) {
            (Listener, 3) => Msg(FilterChain),
            (Listener, 6) | (FilterChain, 5) => Msg(Metadata),
            (Listener, 19) => Msg(ApiListener),
            (ApiListener, 1) | (Filter, 4) | (HttpFilter, 4) => Msg(Any),
            (FilterChain, 3) => Msg(Filter),
            (HttpConnectionManager, 4) => Msg(RouteConfiguration),
            (HttpConnectionManager, 5) => Msg(HttpFilter),
            (RouteConfiguration, 2) => Msg(VirtualHost),
            (RouteConfiguration, 16) | (VirtualHost, 15) | (Route, 13) | (ClusterWeight, 10) => Map(Any),
            (VirtualHost, 3) => Msg(Route),
            (VirtualHost, 24) | (Route, 4) | (RouteAction, 4) | (ClusterWeight, 3) => Msg(Metadata),
            (Route, 2) => Msg(RouteAction),
            (RouteAction, 3) => Msg(WeightedCluster),
            (WeightedCluster, 1) => Msg(ClusterWeight),
            (Cluster, 25) | (LocalityLbEndpoints, 9) | (LbEndpoint, 3) => Msg(Metadata),
            (Cluster, 36) | (Metadata, 2) => Map(Any),
            (Cluster, 22) => Msg(LbSubsetConfig),
            (Cluster, 33) => Msg(ClusterLoadAssignment),
            (LbSubsetConfig, 2) | (Value, 5) => Msg(Struct),
            (ClusterLoadAssignment, 2) => Msg(LocalityLbEndpoints),
            (LocalityLbEndpoints, 2) => Msg(LbEndpoint),
            (Metadata, 1) => Map(Struct),
            (Struct, 1) => Map(Value),
            (ListValue, 1) => Msg(Value),
            (Value, 6) => Msg(ListValue),
            _ => return None,
        })
    }
}

/// Reads a protobuf base-128 varint from the front of `b`, advancing it.
pub fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field: its number, wire type, the whole field's bytes and (length-delimited) its payload.
type Field<'a> = (u64, u64, &'a [u8], &'a [u8]);

fn fields(mut b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let start = b;
        let key = varint(&mut b)?;
        let payload: &[u8] = match key & 7 {
            0 => {
                varint(&mut b)?;
                &[]
            }
            1 => {
                b = b.get(8..)?;
                &[]
            }
            5 => {
                b = b.get(4..)?;
                &[]
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (p, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                p
            }
            _ => return None,
        };
        let whole = &start[..start.len() - b.len()];
        out.push((key >> 3, key & 7, whole, payload));
    }
    Some(out)
}

fn put_len_field(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn canon(schema: Schema, b: &[u8]) -> Option<Vec<u8>> {
    if schema == Schema::Opaque {
        return Some(b.to_vec());
    }
    let fs = fields(b)?;
    if schema == Schema::Any {
        let url = fs
            .iter()
            .find(|f| f.0 == 1 && f.1 == 2)
            .map(|f| String::from_utf8_lossy(f.3).into_owned())
            .unwrap_or_default();
        let inner = Schema::of_type_url(&url);
        let mut out = Vec::with_capacity(b.len());
        for (n, wt, whole, payload) in fs {
            if n == 2 && wt == 2 {
                put_len_field(&mut out, 2, &canon(inner, payload)?);
            } else {
                out.extend_from_slice(whole);
            }
        }
        return Some(out);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < fs.len() {
        let (n, wt, whole, payload) = fs[i];
        match (wt, schema.child(n)) {
            (2, Some(Child::Msg(m))) => put_len_field(&mut out, n, &canon(m, payload)?),
            (2, Some(Child::Map(v))) => {
                // The entries of one map are adjacent (prost writes fields in number order): sort them.
                let mut entries = Vec::new();
                while i < fs.len() && fs[i].0 == n && fs[i].1 == 2 {
                    let mut e = Vec::new();
                    for (en, ewt, ewhole, epayload) in fields(fs[i].3)? {
                        if en == 2 && ewt == 2 {
                            put_len_field(&mut e, 2, &canon(v, epayload)?);
                        } else {
                            e.extend_from_slice(ewhole);
                        }
                    }
                    entries.push(e);
                    i += 1;
                }
                entries.sort();
                for e in entries {
                    put_len_field(&mut out, n, &e);
                }
                continue;
            }
            _ => out.extend_from_slice(whole),
        }
        i += 1;
    }
    Some(out)
}

/// The canonical encoding of a resource of type `type_url`: the same bytes for the same content in
/// every process, with the entries of protobuf maps (metadata, `typed_per_filter_config`, typed
/// protocol options, `Struct` fields) sorted, nested `Any`s included. It decodes to the same
/// message. Bytes that do not parse are returned unchanged.
pub fn canonical(type_url: &str, bytes: &[u8]) -> Vec<u8> {
    canon(Schema::of_type_url(type_url), bytes).unwrap_or_else(|| bytes.to_vec())
}

/// Packs `msg` with its canonical encoding (see [`canonical`]), so that its content hash is a
/// version that survives restarts.
pub fn pack_canonical<M: Message>(type_url: &str, msg: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: canonical(type_url, &msg.encode_to_vec()),
    }
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
    fn canonical_encoding_sorts_maps_at_any_depth() {
        use pb::envoy::config::core::v3::Metadata;
        use pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};
        use pb::google::protobuf::{value::Kind, Struct, Value};
        use std::collections::HashMap;
        let build = || {
            let fields: HashMap<String, Value> = (0..12)
                .map(|i| {
                    (
                        format!("k{i}"),
                        Value {
                            kind: Some(Kind::StringValue(format!("v{i}"))),
                        },
                    )
                })
                .collect();
            ClusterLoadAssignment {
                cluster_name: "c".into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        metadata: Some(Metadata {
                            filter_metadata: HashMap::from([
                                ("envoy.lb".to_string(), Struct { fields }),
                                ("other".to_string(), Struct::default()),
                            ]),
                            ..Default::default()
                        }),
                        host_identifier: Some(lb_endpoint::HostIdentifier::EndpointName("e".into())),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        // Maps built separately iterate in different orders (each HashMap has its own seed).
        let encodings: std::collections::HashSet<Vec<u8>> = (0..20).map(|_| build().encode_to_vec()).collect();
        assert!(encodings.len() > 1, "the test needs differing encodings");
        let canon: std::collections::HashSet<Vec<u8>> =
            encodings.iter().map(|e| canonical(type_url::ENDPOINT, e)).collect();
        assert_eq!(canon.len(), 1);
        let c = canon.into_iter().next().unwrap();
        assert_eq!(ClusterLoadAssignment::decode(c.as_slice()).unwrap(), build());
    }

    #[test]
    fn content_version_is_stable() {
        assert_eq!(content_version(b"abc"), content_version(b"abc"));
        assert_ne!(content_version(b"abc"), content_version(b"abd"));
    }
}
