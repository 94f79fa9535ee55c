//! Parsing helpers for command-line values: durations, headers and target URLs.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

/// Parse a human duration such as `10s`, `500ms`, `1.5s`, `2m`, `1m30s`,
/// `250us` or a bare number of seconds (`3`).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_string());
    }
    // A bare number means seconds.
    if let Ok(v) = s.parse::<f64>() {
        return secs_to_duration(v, input);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!("invalid duration {input:?}: expected a number"));
        }
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: bad number {num:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("invalid duration {input:?}: missing unit after {num}")),
            other => return Err(format!("invalid duration {input:?}: unknown unit {other:?}")),
        };
        total += value * mult;
        rest = next;
    }
    secs_to_duration(total, input)
}

fn secs_to_duration(secs: f64, input: &str) -> Result<Duration, String> {
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {input:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One `-H "name: value"` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderArg {
    pub name: HeaderName,
    pub value: HeaderValue,
}

/// Parse `"name: value"` (whitespace around the value is trimmed).
pub fn parse_header(input: &str) -> Result<HeaderArg, String> {
    let (name, value) = input
        .split_once(':')
        .ok_or_else(|| format!("invalid header {input:?}: expected \"name: value\""))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("invalid header {input:?}: empty name"));
    }
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("invalid header value in {input:?}"))?;
    Ok(HeaderArg { name, value })
}

/// Wire protocol used against the target. Serialized (JSON report) with
/// ALPN-style names: `"http/1.1"`, `"h2"`, `"grpc"`, `"tcp"`, `"dubbo"`,
/// `"bolt"`; whether it ran over TLS is in the report's `tls` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 over cleartext TCP or TLS.
    #[serde(rename = "http/1.1")]
    Http1,
    /// HTTP/2: cleartext with prior knowledge (h2c), or over TLS via ALPN.
    #[serde(rename = "h2")]
    Http2,
    /// gRPC unary calls over HTTP/2 (h2c or TLS).
    #[serde(rename = "grpc")]
    Grpc,
    /// Raw TCP echo: write N bytes, read N bytes back.
    #[serde(rename = "tcp")]
    Tcp,
    /// Dubbo2 two-way calls (hessian2), multiplexed by request id.
    #[serde(rename = "dubbo")]
    Dubbo,
    /// SOFARPC Bolt two-way calls (hessian2 `SofaRequest`), multiplexed by request id.
    #[serde(rename = "bolt")]
    Bolt,
}

impl Protocol {
    /// Label for the human-readable report, for cleartext targets.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2 (h2c)",
            Protocol::Grpc => "gRPC (h2c)",
            Protocol::Tcp => "TCP echo",
            Protocol::Dubbo => "Dubbo2",
            Protocol::Bolt => "SOFARPC Bolt",
        }
    }

    /// Dubbo2 or Bolt.
    pub fn is_rpc(self) -> bool {
        matches!(self, Protocol::Dubbo | Protocol::Bolt)
    }

    /// Label for the human-readable report, for TLS targets.
    pub fn tls_label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1 over TLS",
            Protocol::Http2 => "HTTP/2 over TLS",
            Protocol::Grpc => "gRPC over TLS",
            Protocol::Tcp => "TCP echo",
            Protocol::Dubbo => "Dubbo2",
            Protocol::Bolt => "SOFARPC Bolt",
        }
    }
}

/// Bolt framing of a `bolt://` target (`?bolt=v1|v2|v2crc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoltVersion {
    #[default]
    V1,
    V2,
    /// Protocol v2 with a CRC32 after every frame.
    V2Crc,
}

/// What a `dubbo://` or `bolt://` target calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpcTarget {
    pub interface: String,
    pub method: String,
    /// `?version=` (Dubbo: the body's service version and the `version` attachment; Bolt: the
    /// unique name's version).
    pub version: Option<String>,
    /// `?group=` (Dubbo: the `group` attachment; Bolt: the unique name's uniqueId).
    pub group: Option<String>,
    pub bolt: BoltVersion,
}

impl RpcTarget {
    /// SOFARPC's unique service name: `interface[:version[:uniqueId]]` (version `1.0` when only a
    /// group is given).
    pub fn unique_name(&self) -> String {
        let mut s = self.interface.clone();
        if self.version.is_some() || self.group.is_some() {
            s.push(':');
            s.push_str(self.version.as_deref().unwrap_or("1.0"));
        }
        if let Some(g) = &self.group {
            s.push(':');
            s.push_str(g);
        }
        s
    }
}

/// `/<interface>/<method>` and the query of an RPC target URL.
fn parse_rpc(url: &str, protocol: Protocol, path: &str, query: Option<&str>) -> Result<RpcTarget, String> {
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some(interface), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "invalid URL {url:?}: expected /<interface>/<method> after the port"
        ));
    };
    if interface.is_empty() || method.is_empty() {
        return Err(format!(
            "invalid URL {url:?}: expected /<interface>/<method> after the port"
        ));
    }
    let mut t = RpcTarget {
        interface: interface.to_string(),
        method: method.to_string(),
        ..RpcTarget::default()
    };
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match (k, protocol) {
            ("version", _) if !v.is_empty() => t.version = Some(v.to_string()),
            ("group", _) if !v.is_empty() => t.group = Some(v.to_string()),
            ("bolt", Protocol::Bolt) => {
                t.bolt = match v {
                    "v1" => BoltVersion::V1,
                    "v2" => BoltVersion::V2,
                    "v2crc" => BoltVersion::V2Crc,
                    _ => return Err(format!("invalid URL {url:?}: bolt= takes v1, v2 or v2crc")),
                }
            }
            _ => {
                return Err(format!(
                    "invalid URL {url:?}: unknown or empty query parameter {k:?} (version=, group={})",
                    if protocol == Protocol::Bolt { ", bolt=" } else { "" }
                ))
            }
        }
    }
    Ok(t)
}

/// A parsed, validated target.
#[derive(Debug, Clone)]
pub struct Target {
    /// For TLS targets without `--grpc-method` this is provisional
    /// (`Http2` with `--h2`, else `Http1`) until ALPN has picked one.
    pub protocol: Protocol,
    /// `https://` (or `grpcs://`): TLS over TCP.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host:port` as written (used for the Host header / :authority).
    pub authority: String,
    /// Path and query sent on the wire (for gRPC: the method path).
    pub path: String,
    /// `dubbo://` and `bolt://` targets: what is called.
    pub rpc: Option<RpcTarget>,
}

impl Target {
    /// URI to put in requests: origin-form for HTTP/1.1, absolute for HTTP/2.
    pub fn request_uri(&self) -> Result<Uri, String> {
        let s = match self.protocol {
            Protocol::Http1 => self.path.clone(),
            _ => format!(
                "{}://{}{}",
                if self.tls { "https" } else { "http" },
                self.authority,
                self.path
            ),
        };
        s.parse::<Uri>().map_err(|e| format!("invalid request URI {s:?}: {e}"))
    }
}

/// Parse the target URL. `h2` forces HTTP/2 for `http://` URLs (and makes
/// `https://` offer only `h2` by ALPN); `grpc_method` (e.g.
/// `/pkg.Service/Method`) selects gRPC mode, over TLS for `https://`.
pub fn parse_target(url: &str, h2: bool, grpc_method: Option<&str>) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| {
            format!("invalid URL {url:?}: missing scheme (http://, https://, h2c://, tcp://, dubbo://, bolt://)")
        })?
        .to_ascii_lowercase();
    let authority = uri
        .authority()
        .ok_or_else(|| format!("invalid URL {url:?}: missing host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("invalid URL {url:?}: missing host"));
    }
    let http = if h2 { Protocol::Http2 } else { Protocol::Http1 };
    let (mut protocol, default_port, tls) = match scheme.as_str() {
        "http" => (http, 80, false),
        "https" => (http, 443, true),
        "h2c" => (Protocol::Http2, 80, false),
        "tcp" => (Protocol::Tcp, 0, false),
        "dubbo" => (Protocol::Dubbo, 20880, false),
        "bolt" => (Protocol::Bolt, 12200, false),
        "grpc" => (Protocol::Grpc, 80, false),
        "grpcs" => (Protocol::Grpc, 443, true),
        "h2" => {
            return Err(format!(
                "unsupported URL scheme \"h2\" in {url:?}: use https:// (with --h2 to offer only h2) or h2c://"
            ))
        }
        other => return Err(format!("unsupported URL scheme {other:?} in {url:?}")),
    };
    let port = match authority.port_u16() {
        Some(p) => p,
        None if default_port != 0 => default_port,
        None => return Err(format!("invalid URL {url:?}: tcp:// targets need a port")),
    };
    let mut path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if path.is_empty() {
        path = "/".to_string();
    }
    let rpc = if protocol.is_rpc() {
        let p = uri.path();
        Some(parse_rpc(url, protocol, p, uri.query())?)
    } else {
        None
    };
    if let Some(method) = grpc_method {
        if protocol == Protocol::Tcp || protocol.is_rpc() {
            return Err(format!("--grpc-method cannot be used with a {scheme}:// target"));
        }
        let trimmed = method.trim();
        let ok = trimmed.starts_with('/')
            && trimmed[1..].split('/').count() == 2
            && trimmed[1..].split('/').all(|p| !p.is_empty());
        if !ok {
            return Err(format!(
                "invalid --grpc-method {method:?}: expected /package.Service/Method"
            ));
        }
        protocol = Protocol::Grpc;
        path = trimmed.to_string();
    } else if protocol == Protocol::Grpc {
        return Err(format!(
            "{scheme}:// targets need --grpc-method /package.Service/Method"
        ));
    }
    if h2 && (protocol == Protocol::Tcp || protocol.is_rpc()) {
        return Err(format!("--h2 cannot be used with a {scheme}:// target"));
    }
    Ok(Target {
        protocol,
        tls,
        host: host.to_string(),
        port,
        authority: authority.as_str().to_string(),
        path,
        rpc,
    })
}
