//! Dubbo's registry formats, as kept in ZooKeeper (parsing only; no ZooKeeper client here, so the
//! fuzz target and the tests need no server).
//!
//! - Interface-level (Dubbo 2 and 3): one node per provider,
//!   `/dubbo/<interface>/providers/<URL-encoded provider URL>`, the URL being
//!   `<protocol>://<ip>:<port>/<interface>?application=..&version=..&group=..&weight=..&side=provider&..`.
//! - Application-level (Dubbo 3): `/services/<application>/<ip>:<port>`, whose data is the JSON of a
//!   Curator `ServiceInstance` (`name`, `id`, `address`, `port`, `payload.metadata`).
//!
//! Both become [`Endpoint`]s; anything malformed is a [`DubboError`] naming what is wrong, and the
//! registry skips that one entry.

use crate::model::{Endpoint, Health, Locality, Protocol};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Why a Dubbo entry was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DubboError {
    /// A `%` not followed by two hex digits, at this byte offset of the node name.
    BadPercent(usize),
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// No `<protocol>://`.
    NoScheme,
    /// The host is not an IP address (endpoints are IP:port only).
    HostNotIp(String),
    MissingPort,
    BadPort(String),
    /// The URL names no interface (empty path).
    NoInterface,
    /// The URL's interface is not the one of the directory it was found in.
    InterfaceMismatch {
        url: String,
        directory: String,
    },
    /// `side` is not `provider` (a consumer URL under `providers/`).
    NotProvider(String),
    /// `enabled=false` or `disabled=true`.
    Disabled,
    BadWeight(String),
    /// A name that cannot be a service name (letters, digits, '-', '.', '_').
    BadName(String),
    /// Application-level instance payload: not JSON of the expected shape.
    Json(String),
    /// Application-level instance: the payload's `name` is not the directory's application.
    AppMismatch {
        payload: String,
        directory: String,
    },
}

impl fmt::Display for DubboError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DubboError::BadPercent(at) => write!(f, "bad percent-encoding at byte {at}"),
            DubboError::NotUtf8 => write!(f, "decoded URL is not UTF-8"),
            DubboError::NoScheme => write!(f, "not a URL: no \"<protocol>://\""),
            DubboError::HostNotIp(h) => write!(f, "host \"{h}\" is not an IP address"),
            DubboError::MissingPort => write!(f, "no port"),
            DubboError::BadPort(p) => write!(f, "port \"{p}\" is not 1..65535"),
            DubboError::NoInterface => write!(f, "no interface in the URL path"),
            DubboError::InterfaceMismatch { url, directory } => {
                write!(f, "URL interface \"{url}\" is not the directory's \"{directory}\"")
            }
            DubboError::NotProvider(s) => write!(f, "side={s}, not provider"),
            DubboError::Disabled => write!(f, "provider disabled (enabled=false or disabled=true)"),
            DubboError::BadWeight(w) => write!(f, "weight \"{w}\" is not an integer 1..={MAX_WEIGHT}"),
            DubboError::BadName(n) => write!(
                f,
                "\"{n}\" is not a valid service name (letters, digits, '-', '.', '_')"
            ),
            DubboError::Json(e) => write!(f, "instance payload: {e}"),
            DubboError::AppMismatch { payload, directory } => {
                write!(
                    f,
                    "instance payload names application \"{payload}\", not the directory's \"{directory}\""
                )
            }
        }
    }
}

impl std::error::Error for DubboError {}

/// Dubbo's default weight is 100; weights above this are refused (Envoy's sum limit is u32).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// A parsed provider URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DubboUrl {
    /// `dubbo`, `tri`, `rest`, `grpc`, ...
    pub protocol: String,
    pub host: IpAddr,
    pub port: u16,
    /// The path without its leading `/`: the interface (`org.apache.dubbo.demo.DemoService`).
    pub path: String,
    pub params: BTreeMap<String, String>,
}

impl DubboUrl {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(|s| s.as_str())
    }

    /// The interface: the `interface` parameter if given, else the path.
    pub fn interface(&self) -> &str {
        self.param("interface").unwrap_or(&self.path)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding as Java's `URLDecoder` does it (`%XX`, `+` is a space).
pub fn percent_decode(s: &str) -> Result<String, DubboError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let v = b
                    .get(i + 1)
                    .and_then(|h| hex(*h))
                    .zip(b.get(i + 2).and_then(|l| hex(*l)))
                    .ok_or(DubboError::BadPercent(i))?;
                out.push(v.0 << 4 | v.1);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DubboError::NotUtf8)
}

/// Parses a decoded Dubbo URL: `protocol://host:port/path?k=v&k=v`. IPv6 hosts in brackets.
pub fn parse_url(s: &str) -> Result<DubboUrl, DubboError> {
    let (protocol, rest) = s.split_once("://").ok_or(DubboError::NoScheme)?;
    if protocol.is_empty()
        || !protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(DubboError::NoScheme);
    }
    let (authority_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let (authority, path) = match authority_path.split_once('/') {
        Some((a, p)) => (a, p),
        None => (authority_path, ""),
    };
    // user:password@ is allowed by Dubbo's URL; not used for endpoints.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| DubboError::HostNotIp(authority.to_string()))?;
        let port = after.strip_prefix(':').ok_or(DubboError::MissingPort)?;
        (h, port)
    } else {
        authority.rsplit_once(':').ok_or(DubboError::MissingPort)?
    };
    let host: IpAddr = host.parse().map_err(|_| DubboError::HostNotIp(host.to_string()))?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(DubboError::BadPort(port.to_string())),
    };
    let mut params = BTreeMap::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        params.insert(k.to_string(), v.to_string());
    }
    let path = path.trim_end_matches('/').to_string();
    if path.is_empty() && !params.contains_key("interface") {
        return Err(DubboError::NoInterface);
    }
    Ok(DubboUrl {
        protocol: protocol.to_ascii_lowercase(),
        host,
        port,
        path,
        params,
    })
}

/// weft's protocol for a Dubbo protocol: Triple and gRPC are HTTP/2 (gRPC-compatible); REST is
/// HTTP/1.1; `dubbo` is Dubbo2 (sidecars proxy it per call); everything else (`hessian`, ...) is
/// opaque TCP.
pub fn protocol_of(dubbo_protocol: &str) -> Protocol {
    match dubbo_protocol {
        "tri" | "grpc" => Protocol::Grpc,
        "rest" | "http" => Protocol::Http,
        "dubbo" => Protocol::Dubbo,
        _ => Protocol::Tcp,
    }
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Labels a provider URL contributes to its endpoint (subsets select on them).
const LABEL_PARAMS: &[&str] = &["version", "group", "application", "release", "dubbo.tag"];

/// One provider node under `/dubbo/<interface>/providers/`: the endpoint and its weft protocol.
pub fn provider(interface: &str, node_name: &str) -> Result<(Endpoint, Protocol), DubboError> {
    let url = parse_url(&percent_decode(node_name)?)?;
    if url.interface() != interface {
        return Err(DubboError::InterfaceMismatch {
            url: url.interface().to_string(),
            directory: interface.to_string(),
        });
    }
    if !valid_name(interface) {
        return Err(DubboError::BadName(interface.to_string()));
    }
    if let Some(side) = url.param("side") {
        if side != "provider" {
            return Err(DubboError::NotProvider(side.to_string()));
        }
    }
    if url.param("enabled") == Some("false") || url.param("disabled") == Some("true") {
        return Err(DubboError::Disabled);
    }
    let weight = match url.param("weight") {
        None => 100,
        Some(w) => match w.parse::<u32>() {
            Ok(v) if (1..=MAX_WEIGHT).contains(&v) => v,
            _ => return Err(DubboError::BadWeight(w.to_string())),
        },
    };
    let mut labels = BTreeMap::new();
    labels.insert("protocol".to_string(), url.protocol.clone());
    for k in LABEL_PARAMS {
        if let Some(v) = url.param(k).filter(|v| !v.is_empty()) {
            labels.insert(k.to_string(), v.to_string());
        }
    }
    Ok((
        Endpoint {
            address: SocketAddr::new(url.host, url.port),
            weight,
            labels,
            locality: Locality::default(),
            priority: 0,
            health: Health::Healthy,
            sidecar: true,
        },
        protocol_of(&url.protocol),
    ))
}

#[derive(serde::Deserialize)]
struct RawInstance {
    name: String,
    address: String,
    port: Option<u32>,
    #[serde(default)]
    payload: Option<RawPayload>,
}

#[derive(serde::Deserialize)]
struct RawPayload {
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct RawDubboEndpoint {
    port: u32,
    protocol: String,
}

/// One application-level instance, `/services/<app>/<instance>` with its JSON data.
pub fn app_instance(app: &str, data: &[u8]) -> Result<(Endpoint, Protocol), DubboError> {
    if !valid_name(app) {
        return Err(DubboError::BadName(app.to_string()));
    }
    let raw: RawInstance = serde_json::from_slice(data).map_err(|e| DubboError::Json(e.to_string()))?;
    if raw.name != app {
        return Err(DubboError::AppMismatch {
            payload: raw.name,
            directory: app.to_string(),
        });
    }
    let host: IpAddr = raw
        .address
        .parse()
        .map_err(|_| DubboError::HostNotIp(raw.address.clone()))?;
    let port = match raw.port {
        Some(p @ 1..=65535) => p as u16,
        Some(p) => return Err(DubboError::BadPort(p.to_string())),
        None => return Err(DubboError::MissingPort),
    };
    let meta = raw.payload.map(|p| p.metadata).unwrap_or_default();
    let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(|s| s.to_string());
    // `dubbo.endpoints`: a JSON string listing the instance's protocol ports.
    let mut protocol = "dubbo".to_string();
    if let Some(eps) = text("dubbo.endpoints") {
        let list: Vec<RawDubboEndpoint> = serde_json::from_str(&eps)
            .map_err(|e| DubboError::Json(format!("payload.metadata.dubbo.endpoints: {e}")))?;
        if let Some(e) = list.iter().find(|e| e.port == port as u32).or(list.first()) {
            protocol = e.protocol.to_ascii_lowercase();
        }
    }
    let weight = match text("weight") {
        None => 100,
        Some(w) => match w.parse::<u32>() {
            Ok(v) if (1..=MAX_WEIGHT).contains(&v) => v,
            _ => return Err(DubboError::BadWeight(w)),
        },
    };
    let mut labels = BTreeMap::new();
    labels.insert("protocol".to_string(), protocol.clone());
    if let Some(r) = text("dubbo.metadata.revision") {
        labels.insert("revision".to_string(), r);
    }
    for k in ["version", "group", "dubbo.tag"] {
        if let Some(v) = text(k).filter(|v| !v.is_empty()) {
            labels.insert(k.to_string(), v);
        }
    }
    Ok((
        Endpoint {
            address: SocketAddr::new(host, port),
            weight,
            labels,
            locality: Locality::default(),
            priority: 0,
            health: Health::Healthy,
            sidecar: true,
        },
        protocol_of(&protocol),
    ))
}

/// `URLEncoder.encode(url, "UTF-8")` as Dubbo writes provider node names (for tests and tools).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IFACE: &str = "org.apache.dubbo.demo.DemoService";

    #[test]
    fn interface_level_provider() {
        let url = format!("dubbo://192.168.1.7:20880/{IFACE}?anyhost=true&application=demo-provider&side=provider&version=1.0.0&group=g1&weight=50&methods=sayHello,sayHelloAsync&timestamp=1700000000000");
        let (ep, proto) = provider(IFACE, &percent_encode(&url)).unwrap();
        assert_eq!(ep.address, "192.168.1.7:20880".parse().unwrap());
        assert_eq!(ep.weight, 50);
        assert_eq!(proto, Protocol::Dubbo);
        assert_eq!(ep.labels["version"], "1.0.0");
        assert_eq!(ep.labels["group"], "g1");
        assert_eq!(ep.labels["application"], "demo-provider");
        assert_eq!(ep.labels["protocol"], "dubbo");
        let tri = percent_encode(&format!("tri://[::1]:50051/{IFACE}?side=provider"));
        let (ep, proto) = provider(IFACE, &tri).unwrap();
        assert_eq!(ep.address, "[::1]:50051".parse().unwrap());
        assert_eq!((ep.weight, proto), (100, Protocol::Grpc));
    }

    #[test]
    fn bad_provider_urls_say_why() {
        let cases = [
            ("dubbo%3A%2F%2Fhost", DubboError::MissingPort),
            ("%ZZ", DubboError::BadPercent(0)),
            ("no-scheme", DubboError::NoScheme),
            (
                "dubbo%3A%2F%2Fexample.com%3A20880%2Fx",
                DubboError::HostNotIp("example.com".into()),
            ),
            ("dubbo%3A%2F%2F10.0.0.1%3A0%2Fx", DubboError::BadPort("0".into())),
            (
                "dubbo%3A%2F%2F10.0.0.1%3A99999%2Fx",
                DubboError::BadPort("99999".into()),
            ),
            ("dubbo%3A%2F%2F10.0.0.1%3A1", DubboError::NoInterface),
        ];
        for (node, want) in cases {
            assert_eq!(provider("x", node).unwrap_err(), want, "{node}");
        }
        let other = percent_encode("dubbo://10.0.0.1:1/other.Svc");
        assert!(matches!(
            provider("x", &other),
            Err(DubboError::InterfaceMismatch { .. })
        ));
        let consumer = percent_encode("consumer://10.0.0.1:1/x?side=consumer");
        assert_eq!(
            provider("x", &consumer).unwrap_err(),
            DubboError::NotProvider("consumer".into())
        );
        let off = percent_encode("dubbo://10.0.0.1:1/x?enabled=false");
        assert_eq!(provider("x", &off).unwrap_err(), DubboError::Disabled);
        let w = percent_encode("dubbo://10.0.0.1:1/x?weight=0");
        assert_eq!(provider("x", &w).unwrap_err(), DubboError::BadWeight("0".into()));
        let inner = percent_encode("dubbo://10.0.0.1:1/a.B$C");
        assert_eq!(
            provider("a.B$C", &inner).unwrap_err(),
            DubboError::BadName("a.B$C".into())
        );
        assert!(DubboError::BadPercent(3).to_string().contains("byte 3"));
    }

    #[test]
    fn application_level_instance() {
        let data = br#"{"name":"shop","id":"10.0.0.5:50051","address":"10.0.0.5","port":50051,"sslPort":null,
            "payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"10.0.0.5:50051","name":"shop",
            "metadata":{"dubbo.endpoints":"[{\"port\":50051,\"protocol\":\"tri\"}]","dubbo.metadata.revision":"abc123","dubbo.metadata.storage-type":"local","timestamp":"1700000000000"}},
            "registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}"#;
        let (ep, proto) = app_instance("shop", data).unwrap();
        assert_eq!(ep.address, "10.0.0.5:50051".parse().unwrap());
        assert_eq!(proto, Protocol::Grpc);
        assert_eq!(ep.labels["revision"], "abc123");
        assert!(matches!(app_instance("shop", b"{"), Err(DubboError::Json(_))));
        assert!(matches!(
            app_instance("other", data),
            Err(DubboError::AppMismatch { .. })
        ));
        let host = br#"{"name":"shop","address":"shop.local","port":1}"#;
        assert_eq!(
            app_instance("shop", host).unwrap_err(),
            DubboError::HostNotIp("shop.local".into())
        );
    }
}
