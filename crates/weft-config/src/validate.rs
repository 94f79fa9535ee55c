//! Raw YAML → validated [`Config`]. Every error names the field path, e.g.
//! `clusters[2].lb_policy: unknown value "rr"`. All errors are collected, not just the first.

use crate::duration;
use crate::model::*;
use crate::raw::*;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::errors::{ConfigError, FieldError};

struct Ctx {
    errors: ConfigError,
    /// See [`ValidateOptions::allow_unknown_clusters`].
    allow_unknown_clusters: bool,
    allow_empty_clusters: bool,
    allow_empty_route_configs: bool,
}

/// Knobs for [`validate_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateOptions {
    /// Routes and TCP proxies may name clusters that are not (yet) defined. Dynamic configuration
    /// arrives resource by resource, so a route can precede its cluster; like Envoy, the proxy then
    /// answers 503 with reason `NC` until the cluster exists. Implied by an `xds` section.
    pub allow_unknown_clusters: bool,
    /// Static clusters may have no endpoints. An EDS cluster whose assignment is empty (or has not
    /// arrived within the initial fetch timeout) still exists; requests to it get 503 `UH`.
    pub allow_empty_clusters: bool,
    /// Route configurations may have no virtual host (every request gets 404 `NR`): what a listener
    /// runs with when its RDS resource was removed or did not arrive in time.
    pub allow_empty_route_configs: bool,
}

impl Ctx {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.add(path, message.into());
    }

    /// A [`Typed`] field's value; `None` when absent or (with an error naming `path`) invalid.
    fn typed<T: crate::typed::FromText>(&mut self, path: &str, v: &Option<Typed<T>>) -> Option<T> {
        match v.as_ref()?.get() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn dur(&mut self, path: &str, v: &Option<RawDuration>) -> Option<Duration> {
        self.typed(path, v)
    }

    fn required<'a>(&mut self, path: &str, v: &'a Option<String>) -> Option<&'a str> {
        match v.as_deref() {
            Some(s) if !s.is_empty() => Some(s),
            _ => {
                self.err(path, "is required");
                None
            }
        }
    }

    fn u32_in(&mut self, path: &str, v: Option<u64>, min: u64, max: u64, default: u32) -> u32 {
        match v {
            None => default,
            Some(n) if n >= min && n <= max => n as u32,
            Some(n) => {
                self.err(path, format!("{n} is out of range [{min}, {max}]"));
                default
            }
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            self.err(path, format!("invalid regex: {e}"));
        }
    }

    fn header_name(&mut self, path: &str, name: &str) -> String {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("\"{name}\" is not a valid header name"));
        }
        name.to_ascii_lowercase()
    }

    /// [`Self::header_name`], parsed (a placeholder once an error is recorded: the configuration
    /// is refused then).
    fn header_name_parsed(&mut self, path: &str, name: &str) -> http::HeaderName {
        let name = self.header_name(path, name);
        http::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| http::HeaderName::from_static("x-invalid"))
    }
}

/// Parses YAML text and validates it.
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::single("", e.to_string()))?;
    validate(raw)
}

/// Validates a raw configuration into the runnable model.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    validate_with(raw, ValidateOptions::default())
}

/// [`validate`] with options.
pub fn validate_with(raw: RawConfig, opts: ValidateOptions) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        errors: ConfigError::default(),
        allow_unknown_clusters: opts.allow_unknown_clusters || raw.xds.is_some(),
        allow_empty_clusters: opts.allow_empty_clusters,
        allow_empty_route_configs: opts.allow_empty_route_configs,
    };
    let xds = raw.xds.as_ref().and_then(|x| xds(&mut cx, x));

    let admin = raw.admin.as_ref().and_then(|a| {
        let addr = cx.required("admin.address", &a.address)?;
        let admin = Admin {
            address: socket_addr(&mut cx, "admin.address", addr)?,
            allow_non_loopback: a.allow_non_loopback.unwrap_or(false),
        };
        if let Some(why) = admin.refusal() {
            cx.err("admin.address", why);
        }
        Some(admin)
    });

    let concurrency = match raw.runtime.concurrency {
        None | Some(0) => None,
        Some(n) if n <= 1024 => Some(n as usize),
        Some(n) => {
            cx.err("runtime.concurrency", format!("{n} is out of range [0, 1024]"));
            None
        }
    };
    let runtime = Runtime {
        concurrency,
        drain_timeout: cx
            .dur("runtime.drain_timeout", &raw.runtime.drain_timeout)
            .unwrap_or(Duration::from_secs(15)),
    };

    let mut clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    for (i, c) in raw.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if let Some(cluster) = cluster(&mut cx, &path, c) {
            if !cluster_names.insert(cluster.name.clone()) {
                cx.err(
                    &format!("{path}.name"),
                    format!("duplicate cluster name \"{}\"", cluster.name),
                );
            }
            clusters.push(cluster);
        }
    }

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if let Some(listener) = listener(&mut cx, &path, l, &cluster_names) {
            if !listener_names.insert(listener.name.clone()) {
                cx.err(
                    &format!("{path}.name"),
                    format!("duplicate listener name \"{}\"", listener.name),
                );
            }
            if listener.address.port() != 0 && !addresses.insert(listener.address) {
                cx.err(
                    &format!("{path}.address"),
                    format!("{} is used by another listener", listener.address),
                );
            }
            listeners.push(listener);
        }
    }

    let node = Node {
        id: raw.node.id.clone().unwrap_or_default(),
        cluster: raw.node.cluster.clone().unwrap_or_default(),
        locality: Locality {
            region: raw.node.region.clone().unwrap_or_default(),
            zone: raw.node.zone.clone().unwrap_or_default(),
            sub_zone: raw.node.sub_zone.clone().unwrap_or_default(),
        },
        metadata: raw.node.metadata.clone(),
    };
    for (i, c) in clusters.iter().enumerate() {
        if c.locality_aware && node.locality.region.is_empty() && node.locality.zone.is_empty() {
            cx.err(
                &format!("clusters[{i}].locality_aware"),
                "needs node.region and/or node.zone to know where this proxy runs",
            );
        }
    }

    let dns = raw.dns.as_ref().and_then(|d| dns(&mut cx, d));
    cx.errors.or(Config {
        node,
        admin,
        runtime,
        listeners,
        clusters,
        xds,
        dns,
    })
}

fn xds(cx: &mut Ctx, x: &RawXds) -> Option<Xds> {
    let address = cx.required("xds.address", &x.address).map(str::to_string);
    let mut addresses: Vec<String> = Vec::new();
    for (i, a) in address.iter().chain(x.addresses.iter()).enumerate() {
        let path = if i == 0 && address.is_some() {
            "xds.address".to_string()
        } else {
            format!("xds.addresses[{}]", i - usize::from(address.is_some()))
        };
        match a.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {}
            _ => cx.err(&path, format!("\"{a}\" is not a host:port address")),
        }
        if addresses.contains(a) {
            cx.err(&path, format!("\"{a}\" is listed twice"));
        } else {
            addresses.push(a.clone());
        }
    }
    let mode = match x.mode.as_deref() {
        None | Some("ads_delta") => XdsMode::AdsDelta,
        Some("ads_sotw") => XdsMode::AdsSotw,
        Some("delta") => XdsMode::Delta,
        Some("sotw") => XdsMode::Sotw,
        Some(other) => {
            cx.err(
                "xds.mode",
                format!("unknown value \"{other}\" (ads_delta, ads_sotw, delta, sotw)"),
            );
            XdsMode::AdsDelta
        }
    };
    let initial_fetch_timeout = match cx.dur("xds.initial_fetch_timeout", &x.initial_fetch_timeout) {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let backoff_base = cx
        .dur("xds.backoff_base", &x.backoff_base)
        .unwrap_or(Duration::from_millis(500));
    let backoff_max = cx
        .dur("xds.backoff_max", &x.backoff_max)
        .unwrap_or(Duration::from_secs(30));
    if backoff_base.is_zero() {
        cx.err("xds.backoff_base", "must be greater than 0s");
    }
    if backoff_max < backoff_base {
        cx.err("xds.backoff_max", "must not be less than xds.backoff_base");
    }
    let on_demand_idle = match cx.dur("xds.on_demand_idle", &x.on_demand_idle) {
        None => Some(Duration::from_secs(600)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let tls = x.tls.as_ref().map(|t| {
        match t.mode.as_deref() {
            Some("mesh") => {}
            None => cx.err("xds.tls.mode", "required (mesh)"),
            Some(other) => cx.err("xds.tls.mode", format!("unknown value \"{other}\" (mesh)")),
        }
        for (i, san) in t.subject_alt_names.iter().enumerate() {
            if !san.starts_with("spiffe://") {
                cx.err(
                    &format!("xds.tls.subject_alt_names[{i}]"),
                    format!("\"{san}\" is not a SPIFFE ID (spiffe://…)"),
                );
            }
        }
        XdsTls {
            subject_alt_names: t.subject_alt_names.clone(),
        }
    });
    Some(Xds {
        address: address?,
        addresses,
        mode,
        initial_fetch_timeout,
        backoff_base,
        backoff_max,
        on_demand_idle,
        tls,
    })
}

/// The `dns` block: every name a valid DNS name, every address an IP.
fn dns(cx: &mut Ctx, d: &crate::raw::RawDns) -> Option<crate::model::Dns> {
    let listen = cx
        .required("dns.listen", &d.listen)
        .and_then(|a| socket_addr(cx, "dns.listen", a));
    let upstream = match d.upstream.as_deref() {
        None => None,
        Some(u) => match u.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, 53)),
            Err(_) => socket_addr(cx, "dns.upstream", u),
        },
    };
    let ttl = cx.dur("dns.ttl", &d.ttl).unwrap_or(Duration::from_secs(30));
    if ttl.as_secs() > u32::MAX as u64 {
        cx.err("dns.ttl", "too long");
    }
    let mut hosts = BTreeMap::new();
    for (name, ips) in &d.hosts {
        let path = format!("dns.hosts[{name:?}]");
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        let valid = !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            cx.err(
                &path,
                "not a DNS name (labels of letters, digits, '-' or '_', at most 63 bytes each)",
            );
            continue;
        }
        let mut addrs = Vec::new();
        for ip in ips {
            match ip.parse::<std::net::IpAddr>() {
                Ok(a) => addrs.push(a),
                Err(_) => cx.err(&path, format!("\"{ip}\" is not an IP address")),
            }
        }
        if ips.is_empty() {
            cx.err(&path, "at least one address is required");
        }
        hosts.insert(n, addrs);
    }
    Some(crate::model::Dns {
        listen: listen?,
        upstream,
        hosts,
        ttl,
    })
}

fn socket_addr(cx: &mut Ctx, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(path, format!("\"{s}\" is not an IP:port address"));
            None
        }
    }
}

fn listener(cx: &mut Ctx, path: &str, l: &RawListener, clusters: &HashSet<String>) -> Option<Listener> {
    let name = cx.required(&format!("{path}.name"), &l.name).map(str::to_string);
    let address = cx
        .required(&format!("{path}.address"), &l.address)
        .and_then(|a| socket_addr(cx, &format!("{path}.address"), a));
    let max_connections = l
        .max_connections
        .map(|n| cx.u32_in(&format!("{path}.max_connections"), Some(n), 1, u32::MAX as u64, 1));
    let per_connection_buffer_limit_bytes = buffer_limit(
        cx,
        &format!("{path}.per_connection_buffer_limit_bytes"),
        l.per_connection_buffer_limit_bytes,
    );
    if l.original_source_mark.is_some_and(|m| m != 0) && l.original_source != Some(true) {
        cx.err(
            &format!("{path}.original_source_mark"),
            "needs original_source: true (it marks the connections made from the peer's IP)",
        );
    }
    let mut chains = Vec::new();
    let shorthand = l.http.is_some() || l.tcp_proxy.is_some() || l.rpc.is_some();
    if shorthand && !l.filter_chains.is_empty() {
        cx.err(
            path,
            "give either filter_chains or an http/tcp_proxy shorthand, not both",
        );
    }
    // `rpc.protocol: auto` takes the listener's http and tcp_proxy shorthands as its other paths.
    let sniffing = l.rpc.as_ref().is_some_and(|r| r.protocol.as_deref() == Some("auto"));
    if let Some(r) = l
        .rpc
        .as_ref()
        .filter(|_| sniffing || (l.http.is_none() && l.tcp_proxy.is_none()))
    {
        let rpc = crate::rpc::validate(
            &format!("{path}.rpc"),
            r,
            clusters,
            cx.allow_unknown_clusters,
            &mut cx.errors,
        );
        let http = (l.http.as_ref().filter(|_| sniffing))
            .and_then(|h| http_manager(cx, &format!("{path}.http"), h, clusters))
            .map(Box::new);
        let fallback = (l.tcp_proxy.as_ref().filter(|_| sniffing))
            .and_then(|t| tcp_proxy(cx, &format!("{path}.tcp_proxy"), t, clusters));
        if let Some(mut rpc) = rpc {
            if let Some(sniff) = rpc.sniff.as_mut() {
                (sniff.http, sniff.fallback) = (http, fallback);
            }
            chains.push(FilterChain {
                name: "default".into(),
                match_: FilterChainMatch::default(),
                filter: NetworkFilter::Rpc(rpc),
            });
        }
    } else if l.rpc.is_some() {
        cx.err(
            &format!("{path}.rpc"),
            "give either rpc or an http/tcp_proxy shorthand, not both",
        );
    } else if shorthand {
        let raw = RawFilterChain {
            name: Some("default".into()),
            match_: None,
            http: None,
            tcp_proxy: None,
            rpc: None,
        };
        if let Some(c) = filter_chain(cx, path, &raw, l.http.as_ref(), l.tcp_proxy.as_ref(), clusters) {
            chains.push(c);
        }
    } else {
        if l.filter_chains.is_empty() {
            cx.err(
                &format!("{path}.filter_chains"),
                "at least one filter chain (or an http/tcp_proxy shorthand) is required",
            );
        }
        for (i, fc) in l.filter_chains.iter().enumerate() {
            let p = format!("{path}.filter_chains[{i}]");
            if let Some(c) = filter_chain(cx, &p, fc, fc.http.as_ref(), fc.tcp_proxy.as_ref(), clusters) {
                chains.push(c);
            }
        }
        let mut seen = HashSet::new();
        for (i, c) in chains.iter().enumerate() {
            let key = format!("{:?}", c.match_);
            if !seen.insert(key) {
                cx.err(
                    &format!("{path}.filter_chains[{i}].match"),
                    "duplicates the match of an earlier filter chain",
                );
            }
        }
    }
    let direction = cx.typed(&format!("{path}.direction"), &l.direction).unwrap_or_default();
    if l.tls
        .as_ref()
        .is_some_and(|t| !t.mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("disable")))
        && chains.iter().any(|c| matches!(c.filter, NetworkFilter::TcpProxy(_)))
    {
        cx.err(
            &format!("{path}.tls"),
            "TLS termination applies to HTTP filter chains; a tcp_proxy chain cannot have it yet",
        );
    }
    Some(Listener {
        name: name?,
        address: address?,
        max_connections,
        per_connection_buffer_limit_bytes,
        filter_chains: chains,
        direction,
        original_destination: l.original_destination.unwrap_or(false),
        transparent: l.transparent.unwrap_or(false),
        original_source: l.original_source.unwrap_or(false),
        original_source_mark: l.original_source_mark.unwrap_or(0),
        bind_to_port: l.bind_to_port.unwrap_or(true),
        tls: l
            .tls
            .as_ref()
            .map(|t| crate::tls::listener_tls(&format!("{path}.tls"), t, &mut cx.errors)),
    })
}

/// `per_connection_buffer_limit_bytes`: at least 8 KiB (the smallest buffer the HTTP codec
/// accepts), at most 1 GiB.
fn buffer_limit(cx: &mut Ctx, path: &str, v: Option<u64>) -> u32 {
    cx.u32_in(path, v, 8 * 1024, 1 << 30, crate::model::DEFAULT_BUFFER_LIMIT)
}

fn filter_chain(
    cx: &mut Ctx,
    path: &str,
    fc: &RawFilterChain,
    http: Option<&RawHttp>,
    tcp: Option<&RawTcpProxy>,
    clusters: &HashSet<String>,
) -> Option<FilterChain> {
    let mut m = FilterChainMatch::default();
    if let Some(rm) = &fc.match_ {
        if let Some(p) = rm.destination_port {
            m.destination_port =
                Some(cx.u32_in(&format!("{path}.match.destination_port"), Some(p), 1, 65535, 1) as u16);
        }
        for (i, s) in rm.source_prefixes.iter().enumerate() {
            if let Some(r) = cidr(cx, &format!("{path}.match.source_prefixes[{i}]"), s) {
                m.source_prefixes.push(r);
            }
        }
    }
    let filter = match (http, tcp, fc.rpc.as_ref()) {
        (None, None, Some(r)) => {
            let rp = format!("{path}.rpc");
            if r.protocol.as_deref() == Some("auto") {
                cx.err(
                    &format!("{rp}.protocol"),
                    "auto is only supported in the listener's rpc shorthand (it needs the listener's http and tcp_proxy)",
                );
                return None;
            }
            let rpc = crate::rpc::validate(&rp, r, clusters, cx.allow_unknown_clusters, &mut cx.errors);
            NetworkFilter::Rpc(rpc?)
        }
        (None, None, None) => {
            cx.err(path, "a filter chain needs http, tcp_proxy or rpc");
            return None;
        }
        (Some(h), None, None) => NetworkFilter::Http(http_manager(cx, &format!("{path}.http"), h, clusters)?),
        (None, Some(t), None) => NetworkFilter::TcpProxy(tcp_proxy(cx, &format!("{path}.tcp_proxy"), t, clusters)?),
        _ => {
            cx.err(path, "a filter chain holds one of http, tcp_proxy and rpc");
            return None;
        }
    };
    Some(FilterChain {
        name: fc.name.clone().unwrap_or_else(|| "default".into()),
        match_: m,
        filter,
    })
}

fn cidr(cx: &mut Ctx, path: &str, s: &str) -> Option<CidrRange> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(address) = addr.parse::<IpAddr>() else {
        cx.err(path, format!("\"{s}\" is not an IP prefix (e.g. 10.0.0.0/8)"));
        return None;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len.map(str::parse::<u8>) {
        None => max,
        Some(Ok(n)) if n <= max => n,
        _ => {
            cx.err(path, format!("\"{s}\" has an invalid prefix length"));
            return None;
        }
    };
    Some(CidrRange { address, prefix_len })
}

fn access_log(cx: &mut Ctx, path: &str, a: &RawAccessLog) -> AccessLog {
    let sink = match a.path.as_deref() {
        None | Some("stdout") | Some("-") => LogSink::Stdout,
        Some("stderr") => LogSink::Stderr,
        Some("") => {
            cx.err(&format!("{path}.path"), "must not be empty");
            LogSink::Stdout
        }
        Some(p) => LogSink::File(p.to_string()),
    };
    let format = crate::log_format::from_raw(a, path).unwrap_or_else(|e| {
        cx.err(&e.path, e.message);
        None
    });
    AccessLog { sink, format }
}

/// A connection manager's or TCP proxy's `access_log` (one entry or a list): at most one
/// file/stdout log and one gRPC log.
fn access_logs(
    cx: &mut Ctx,
    path: &str,
    a: &Option<RawAccessLogs>,
    clusters: &HashSet<String>,
) -> (Option<AccessLog>, Option<crate::grpc_log::GrpcAccessLog>) {
    let (mut file, mut grpc) = (None, None);
    let Some(a) = a else { return (file, grpc) };
    for (i, e) in a.entries.iter().enumerate() {
        let p = if a.list {
            format!("{path}[{i}]")
        } else {
            path.to_string()
        };
        match &e.grpc {
            Some(g) => {
                if e.path.is_some() || e.format.is_some() || e.json_format.is_some() {
                    cx.err(
                        &format!("{p}.grpc"),
                        "a grpc access log takes no path, format or json_format (make them another entry of the list)",
                    );
                }
                if grpc.is_some() {
                    cx.err(&p, "at most one grpc access log per filter");
                }
                let g = crate::grpc_log::validate(
                    &format!("{p}.grpc"),
                    g,
                    clusters,
                    cx.allow_unknown_clusters,
                    &mut cx.errors,
                );
                grpc = grpc.or(g);
            }
            None => {
                if file.is_some() {
                    cx.err(&p, "at most one file/stdout access log per filter");
                }
                let l = access_log(cx, &p, e);
                file.get_or_insert(l);
            }
        }
    }
    (file, grpc)
}

fn tcp_proxy(cx: &mut Ctx, path: &str, t: &RawTcpProxy, clusters: &HashSet<String>) -> Option<TcpProxy> {
    let cluster = cx.required(&format!("{path}.cluster"), &t.cluster)?.to_string();
    if !clusters.contains(&cluster) && !cx.allow_unknown_clusters {
        cx.err(&format!("{path}.cluster"), format!("unknown cluster \"{cluster}\""));
    }
    let (access_log, grpc_access_log) = access_logs(cx, &format!("{path}.access_log"), &t.access_log, clusters);
    Some(TcpProxy {
        stat_prefix: t.stat_prefix.clone().unwrap_or_else(|| cluster.clone()),
        cluster,
        // Absent: one hour, like Envoy's tcp_proxy; "0s" disables it.
        idle_timeout: default_dur(cx, &format!("{path}.idle_timeout"), &t.idle_timeout, 3600),
        access_log,
        grpc_access_log,
        tracing: t.tracing.as_ref().and_then(|tr| {
            crate::tracing::validate(
                &format!("{path}.tracing"),
                tr,
                clusters,
                cx.allow_unknown_clusters,
                &mut cx.errors,
            )
            .map(Box::new)
        }),
        authorization: authorization(cx, &format!("{path}.authorization"), &t.authorization, true),
    })
}

fn authorization(
    cx: &mut Ctx,
    path: &str,
    raw: &Option<crate::authz::RawAuthorization>,
    tcp: bool,
) -> Option<Box<crate::authz::Authorization>> {
    let (a, errs) = crate::authz::validate(path, raw.as_ref()?, tcp);
    cx.errors.extend(errs);
    a.map(Box::new)
}

fn http_manager(cx: &mut Ctx, path: &str, h: &RawHttp, clusters: &HashSet<String>) -> Option<HttpConnectionManager> {
    let codec = cx.typed(&format!("{path}.codec"), &h.codec).unwrap_or(Codec::Auto);
    let Some(rc) = &h.route_config else {
        cx.err(&format!("{path}.route_config"), "is required");
        return None;
    };
    let route_config = route_config(cx, &format!("{path}.route_config"), rc, clusters);
    let rate_limit_service = h
        .rate_limit_service
        .as_ref()
        .and_then(|r| rate_limit_service(cx, &format!("{path}.rate_limit_service"), r, clusters));
    if h.rate_limit_service.is_none() {
        for (v, vh) in rc.virtual_hosts.iter().enumerate() {
            for (r, route) in vh.routes.iter().enumerate() {
                if route.route.as_ref().is_some_and(|a| !a.rate_limits.is_empty()) {
                    cx.err(
                        &format!("{path}.route_config.virtual_hosts[{v}].routes[{r}].route.rate_limits"),
                        "needs the connection manager's rate_limit_service",
                    );
                }
            }
        }
    }
    let via = match &h.via {
        Some(v) if http::HeaderValue::from_str(v).is_err() || v.is_empty() => {
            cx.err(&format!("{path}.via"), "must be a non-empty header value");
            None
        }
        v => v.clone(),
    };
    let (access_log, grpc_access_log) = access_logs(cx, &format!("{path}.access_log"), &h.access_log, clusters);
    Some(HttpConnectionManager {
        stat_prefix: h.stat_prefix.clone().unwrap_or_else(|| "http".into()),
        codec,
        route_config,
        // Absent: one hour, like Envoy; "0s" disables it.
        idle_timeout: default_dur(cx, &format!("{path}.idle_timeout"), &h.idle_timeout, 3600),
        // Safe defaults in every mode (docs/config.md, "Timeouts"); "0s" disables each. They
        // are checked by the connection's own watchdog, so they cost nothing per request.
        request_headers_timeout: default_dur(
            cx,
            &format!("{path}.request_headers_timeout"),
            &h.request_headers_timeout,
            10,
        ),
        stream_idle_timeout: default_dur(cx, &format!("{path}.stream_idle_timeout"), &h.stream_idle_timeout, 60),
        max_request_headers_kb: cx.u32_in(
            &format!("{path}.max_request_headers_kb"),
            h.max_request_headers_kb,
            1,
            8192,
            60,
        ),
        use_remote_address: h.use_remote_address.unwrap_or(true),
        xff_num_trusted_hops: cx.u32_in(
            &format!("{path}.xff_num_trusted_hops"),
            h.xff_num_trusted_hops,
            0,
            64,
            0,
        ),
        generate_request_id: h.generate_request_id.unwrap_or(true),
        via,
        server_name: h.server_name.clone(),
        access_log,
        grpc_access_log,
        local_rate_limit: h
            .local_rate_limit
            .as_ref()
            .map(|r| Box::new(local_rate_limit(cx, &format!("{path}.local_rate_limit"), r))),
        rate_limit_service,
        tracing: h.tracing.as_ref().and_then(|t| {
            crate::tracing::validate(
                &format!("{path}.tracing"),
                t,
                clusters,
                cx.allow_unknown_clusters,
                &mut cx.errors,
            )
            .map(Box::new)
        }),
        authorization: authorization(cx, &format!("{path}.authorization"), &h.authorization, false),
        jwt_authn: h.jwt_authn.as_ref().and_then(|j| {
            let (j, errs) = crate::jwt::validate(&format!("{path}.jwt_authn"), j, clusters, cx.allow_unknown_clusters);
            cx.errors.extend(errs);
            j.map(Box::new)
        }),
    })
}

/// A duration that defaults to `default_secs` when absent; an explicit "0s" disables it.
fn default_dur(cx: &mut Ctx, path: &str, v: &Option<RawDuration>, default_secs: u64) -> Option<Duration> {
    match v {
        None => Some(Duration::from_secs(default_secs)),
        Some(_) => cx.dur(path, v).filter(|d| !d.is_zero()),
    }
}

/// [`rate_limit_service`] for the `rpc` block's validation.
pub(crate) fn rate_limit_service_into(
    path: &str,
    r: &RawRateLimitService,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
    errors: &mut ConfigError,
) -> Option<RateLimitService> {
    let mut cx = Ctx {
        errors: std::mem::take(errors),
        allow_unknown_clusters,
        allow_empty_clusters: false,
        allow_empty_route_configs: false,
    };
    let v = rate_limit_service(&mut cx, path, r, clusters);
    *errors = cx.errors;
    v
}

fn rate_limit_service(
    cx: &mut Ctx,
    path: &str,
    r: &RawRateLimitService,
    clusters: &HashSet<String>,
) -> Option<RateLimitService> {
    let cluster = cx.required(&format!("{path}.cluster"), &r.cluster)?.to_string();
    if !clusters.contains(&cluster) && !cx.allow_unknown_clusters {
        cx.err(&format!("{path}.cluster"), format!("unknown cluster \"{cluster}\""));
    }
    let domain = cx.required(&format!("{path}.domain"), &r.domain)?.to_string();
    // Envoy's default: a slow rate limit service must not add more than this to every request.
    let timeout = cx
        .dur(&format!("{path}.timeout"), &r.timeout)
        .unwrap_or(Duration::from_millis(20));
    if timeout.is_zero() {
        cx.err(&format!("{path}.timeout"), "must be greater than 0");
    }
    Some(RateLimitService {
        cluster,
        domain,
        timeout,
        failure_mode_deny: r.failure_mode_deny.unwrap_or(false),
    })
}

fn rate_limits(cx: &mut Ctx, path: &str, raw: &[RawRateLimit]) -> Vec<RateLimitPolicy> {
    let mut out = Vec::new();
    for (i, rl) in raw.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if rl.actions.is_empty() {
            cx.err(&format!("{p}.actions"), "needs at least one action");
        }
        let mut actions = Vec::new();
        for (j, a) in rl.actions.iter().enumerate() {
            let ap = format!("{p}.actions[{j}]");
            let set = [
                a.request_headers.is_some(),
                a.remote_address.is_some(),
                a.generic_key.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                cx.err(&ap, "set exactly one of request_headers, remote_address, generic_key");
                continue;
            }
            if let Some(h) = &a.request_headers {
                let (Some(name), Some(key)) = (
                    cx.required(&format!("{ap}.request_headers.header_name"), &h.header_name),
                    cx.required(&format!("{ap}.request_headers.descriptor_key"), &h.descriptor_key),
                ) else {
                    continue;
                };
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    cx.err(&format!("{ap}.request_headers.header_name"), "not a valid header name");
                }
                actions.push(RateLimitAction::RequestHeaders {
                    header_name: name.to_ascii_lowercase(),
                    descriptor_key: key.to_string(),
                });
            } else if a.remote_address.is_some() {
                actions.push(RateLimitAction::RemoteAddress);
            } else if let Some(g) = &a.generic_key {
                let Some(value) = cx.required(&format!("{ap}.generic_key.descriptor_value"), &g.descriptor_value)
                else {
                    continue;
                };
                actions.push(RateLimitAction::GenericKey {
                    descriptor_key: g.descriptor_key.clone().unwrap_or_else(|| "generic_key".into()),
                    descriptor_value: value.to_string(),
                });
            }
        }
        out.push(RateLimitPolicy { actions });
    }
    out
}

fn headers(
    cx: &mut Ctx,
    path: &str,
    req_add: &[RawHeaderValue],
    req_rm: &[String],
    resp_add: &[RawHeaderValue],
    resp_rm: &[String],
) -> HeaderMutations {
    let add = |cx: &mut Ctx, field: &str, list: &[RawHeaderValue]| -> Vec<HeaderValueOption> {
        let mut out = Vec::new();
        for (i, h) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            let Some(name) = cx.required(&format!("{p}.name"), &h.name) else {
                continue;
            };
            let name = cx.header_name(&format!("{p}.name"), name);
            if name.starts_with(':') || name == "host" && field.starts_with("response") {
                cx.err(&format!("{p}.name"), format!("\"{name}\" cannot be set this way"));
            } else if name == "content-length" || name == "transfer-encoding" {
                // A message's framing is the proxy's own: a length that is not the body's would
                // make the next hop read the body as another message (request smuggling).
                cx.err(
                    &format!("{p}.name"),
                    format!("\"{name}\" cannot be set this way: the proxy frames each message itself"),
                );
            }
            let value = h.value.clone().unwrap_or_default();
            if http::HeaderValue::from_str(&value).is_err() {
                cx.err(&format!("{p}.value"), "is not a valid header value");
            }
            let action = cx
                .typed(&format!("{p}.action"), &h.action)
                .unwrap_or(HeaderAppendAction::Append);
            out.push(HeaderValueOption { name, value, action });
        }
        out
    };
    let request_add = add(cx, "request_headers_to_add", req_add);
    let response_add = add(cx, "response_headers_to_add", resp_add);
    let rm = |cx: &mut Ctx, field: &str, list: &[String]| -> Vec<String> {
        list.iter()
            .enumerate()
            .map(|(i, n)| cx.header_name(&format!("{path}.{field}[{i}]"), n))
            .collect()
    };
    HeaderMutations {
        request_add,
        request_remove: rm(cx, "request_headers_to_remove", req_rm),
        response_add,
        response_remove: rm(cx, "response_headers_to_remove", resp_rm),
    }
}

fn route_config(cx: &mut Ctx, path: &str, rc: &RawRouteConfig, clusters: &HashSet<String>) -> RouteConfig {
    let mut vhosts = Vec::new();
    let mut domains_seen = HashSet::new();
    if rc.virtual_hosts.is_empty() && !cx.allow_empty_route_configs {
        cx.err(
            &format!("{path}.virtual_hosts"),
            "at least one virtual host is required",
        );
    }
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let p = format!("{path}.virtual_hosts[{i}]");
        let mut domains = Vec::new();
        if vh.domains.is_empty() {
            cx.err(
                &format!("{p}.domains"),
                "at least one domain is required (\"*\" matches any)",
            );
        }
        for (j, d) in vh.domains.iter().enumerate() {
            let dp = format!("{p}.domains[{j}]");
            let d = d.to_ascii_lowercase();
            if !domains_seen.insert(d.clone()) {
                cx.err(&dp, format!("domain \"{d}\" appears in more than one virtual host"));
            }
            let m = if d == "*" {
                DomainMatch::Any
            } else if let Some(rest) = d.strip_prefix('*') {
                if rest.is_empty() || rest.contains('*') {
                    cx.err(&dp, format!("invalid wildcard domain \"{d}\""));
                }
                DomainMatch::Suffix(rest.to_string())
            } else if let Some(rest) = d.strip_suffix('*') {
                if rest.contains('*') {
                    cx.err(&dp, format!("invalid wildcard domain \"{d}\""));
                }
                DomainMatch::Prefix(rest.to_string())
            } else if d.contains('*') || d.is_empty() {
                cx.err(
                    &dp,
                    format!("invalid domain \"{d}\" (wildcards only at the start or end)"),
                );
                DomainMatch::Any
            } else {
                DomainMatch::Exact(d)
            };
            domains.push(m);
        }
        let retry_policy = vh
            .retry_policy
            .as_ref()
            .map(|r| retry_policy(cx, &format!("{p}.retry_policy"), r));
        let mut routes = Vec::new();
        for (j, r) in vh.routes.iter().enumerate() {
            if let Some(r) = route(cx, &format!("{p}.routes[{j}]"), r, clusters) {
                routes.push(r);
            }
        }
        vhosts.push(VirtualHost {
            name: vh.name.clone().unwrap_or_else(|| format!("vhost{i}")),
            domains,
            routes,
            headers: headers(
                cx,
                &p,
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            ),
            retry_policy,
        });
    }
    RouteConfig {
        name: rc.name.clone().unwrap_or_else(|| "default".into()),
        virtual_hosts: vhosts,
        headers: headers(
            cx,
            path,
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
        ),
    }
}

fn string_rule(
    cx: &mut Ctx,
    path: &str,
    exact: &Option<String>,
    prefix: &Option<String>,
    regex: &Option<String>,
    present: Option<bool>,
) -> StringRule {
    let n = exact.is_some() as u8 + prefix.is_some() as u8 + regex.is_some() as u8 + present.is_some() as u8;
    if n > 1 {
        cx.err(path, "give only one of exact, prefix, regex, present");
    }
    if let Some(e) = exact {
        StringRule::Exact(e.clone())
    } else if let Some(p) = prefix {
        StringRule::Prefix(p.clone())
    } else if let Some(r) = regex {
        cx.regex(&format!("{path}.regex"), r);
        StringRule::Regex(r.clone())
    } else {
        StringRule::Present(present.unwrap_or(true))
    }
}

/// Header matchers as in a route `match` (also used by `fault.headers`).
fn header_matchers(cx: &mut Ctx, path: &str, list: &[RawHeaderMatcher]) -> Vec<HeaderMatcher> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let hp = format!("{path}[{i}]");
        let Some(name) = cx.required(&format!("{hp}.name"), &h.name) else {
            continue;
        };
        let name = cx.header_name(&format!("{hp}.name"), name);
        let rule = string_rule(cx, &hp, &h.exact, &h.prefix, &h.regex, h.present);
        out.push(HeaderMatcher {
            name,
            rule,
            invert: h.invert.unwrap_or(false),
        });
    }
    out
}

/// A percentage, 0–100 (fractions allowed); absent means 100.
fn percent(cx: &mut Ctx, path: &str, v: Option<f64>) -> f64 {
    match v {
        None => 100.0,
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(p) => {
            cx.err(path, format!("{p} is out of range [0, 100]"));
            100.0
        }
    }
}

/// The largest token count a bucket can hold (the bucket packs its state into one atomic word).
pub const MAX_TOKENS: u64 = (1 << 24) - 1;

/// [`local_rate_limit`] for the `rpc` block's validation.
pub(crate) fn local_rate_limit_into(path: &str, r: &RawLocalRateLimit, errors: &mut ConfigError) -> LocalRateLimit {
    let mut cx = Ctx {
        errors: std::mem::take(errors),
        allow_unknown_clusters: false,
        allow_empty_clusters: false,
        allow_empty_route_configs: false,
    };
    let v = local_rate_limit(&mut cx, path, r);
    *errors = cx.errors;
    v
}

fn local_rate_limit(cx: &mut Ctx, path: &str, r: &RawLocalRateLimit) -> LocalRateLimit {
    let max_tokens = match r.max_tokens {
        None => {
            cx.err(&format!("{path}.max_tokens"), "is required");
            1
        }
        Some(n) => cx.u32_in(&format!("{path}.max_tokens"), Some(n), 1, MAX_TOKENS, 1),
    };
    let tokens_per_fill = cx.u32_in(&format!("{path}.tokens_per_fill"), r.tokens_per_fill, 1, MAX_TOKENS, 1);
    let fp = format!("{path}.fill_interval");
    let fill_interval = match &r.fill_interval {
        None => {
            cx.err(&fp, "is required");
            Duration::from_secs(1)
        }
        Some(_) => match cx.dur(&fp, &r.fill_interval) {
            // Envoy's lower bound; the upper one keeps the bucket's clock arithmetic far from overflow.
            Some(d) if d >= Duration::from_millis(50) && d <= Duration::from_secs(86_400) => d,
            Some(d) => {
                cx.err(&fp, format!("{} is out of range [50ms, 24h]", duration::format(d)));
                Duration::from_secs(1)
            }
            None => Duration::from_secs(1),
        },
    };
    let descriptor_header = r
        .descriptor_header
        .as_deref()
        .map(|h| cx.header_name(&format!("{path}.descriptor_header"), h));
    LocalRateLimit {
        max_tokens,
        tokens_per_fill,
        fill_interval,
        descriptor_header,
    }
}

fn fault(cx: &mut Ctx, path: &str, f: &RawFault) -> FaultPolicy {
    if f.delay.is_none() && f.abort.is_none() {
        cx.err(path, "give delay, abort or both");
    }
    let delay = f.delay.as_ref().map(|d| {
        let dp = format!("{path}.delay");
        let fixed = match &d.fixed {
            None => {
                cx.err(&format!("{dp}.fixed"), "is required");
                Duration::ZERO
            }
            Some(_) => cx.dur(&format!("{dp}.fixed"), &d.fixed).unwrap_or_default(),
        };
        FaultDelay {
            fixed,
            percent: percent(cx, &format!("{dp}.percent"), d.percent),
        }
    });
    let abort = f.abort.as_ref().map(|a| {
        let ap = format!("{path}.abort");
        let status = match (a.http_status, a.grpc_status) {
            (Some(h), None) => {
                AbortStatus::Http(cx.u32_in(&format!("{ap}.http_status"), Some(h), 200, 599, 503) as u16)
            }
            (None, Some(g)) => AbortStatus::Grpc(cx.u32_in(&format!("{ap}.grpc_status"), Some(g), 0, 16, 14) as u8),
            (Some(_), Some(_)) => {
                cx.err(&ap, "give only one of http_status, grpc_status");
                AbortStatus::Http(503)
            }
            (None, None) => {
                cx.err(&format!("{ap}.http_status"), "is required (or grpc_status)");
                AbortStatus::Http(503)
            }
        };
        FaultAbort {
            status,
            percent: percent(cx, &format!("{ap}.percent"), a.percent),
        }
    });
    FaultPolicy {
        delay,
        abort,
        headers: header_matchers(cx, &format!("{path}.headers"), &f.headers),
    }
}

/// At most this many mirror policies per route.
const MAX_MIRRORS: usize = 16;

fn mirror_policies(
    cx: &mut Ctx,
    path: &str,
    list: &[RawMirrorPolicy],
    clusters: &HashSet<String>,
) -> Vec<MirrorPolicy> {
    if list.len() > MAX_MIRRORS {
        cx.err(path, format!("at most {MAX_MIRRORS} mirror policies per route"));
    }
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate().take(MAX_MIRRORS) {
        let mp = format!("{path}[{i}]");
        let Some(name) = cx.required(&format!("{mp}.cluster"), &m.cluster) else {
            continue;
        };
        if !clusters.contains(name) && !cx.allow_unknown_clusters {
            cx.err(&format!("{mp}.cluster"), format!("unknown cluster \"{name}\""));
        }
        out.push(MirrorPolicy {
            cluster: name.to_string(),
            percent: percent(cx, &format!("{mp}.percent"), m.percent),
        });
    }
    out
}

fn route(cx: &mut Ctx, path: &str, r: &RawRoute, clusters: &HashSet<String>) -> Option<Route> {
    let mp = format!("{path}.match");
    let default_match = RawRouteMatch {
        prefix: Some("/".into()),
        ..Default::default()
    };
    let m = r.match_.as_ref().unwrap_or(&default_match);
    let grpc_service = m.grpc.as_ref().is_some_and(|g| g.service.is_some());
    let n = m.prefix.is_some() as u8 + m.path.is_some() as u8 + m.regex.is_some() as u8 + grpc_service as u8;
    if n > 1 {
        cx.err(&mp, "give only one of prefix, path, regex, grpc.service");
    }
    let mut grpc_headers = Vec::new();
    let grpc_path = m
        .grpc
        .as_ref()
        .and_then(|g| grpc_match(cx, &format!("{mp}.grpc"), g, &mut grpc_headers));
    let path_match = if let Some(p) = grpc_path {
        p
    } else if let Some(p) = &m.path {
        if !p.starts_with('/') {
            cx.err(&format!("{mp}.path"), "must start with /");
        }
        PathMatch::Exact(p.clone())
    } else if let Some(re) = &m.regex {
        cx.regex(&format!("{mp}.regex"), re);
        PathMatch::Regex(re.clone())
    } else {
        let p = m.prefix.clone().unwrap_or_else(|| "/".into());
        if !p.starts_with('/') {
            cx.err(&format!("{mp}.prefix"), "must start with /");
        }
        PathMatch::Prefix(p)
    };
    let mut methods = Vec::new();
    for (i, meth) in m.methods.iter().enumerate() {
        if http::Method::from_bytes(meth.as_bytes()).is_err() {
            cx.err(
                &format!("{mp}.methods[{i}]"),
                format!("\"{meth}\" is not an HTTP method"),
            );
        }
        methods.push(meth.to_ascii_uppercase());
    }
    let mut header_matchers = header_matchers(cx, &format!("{mp}.headers"), &m.headers);
    header_matchers.extend(grpc_headers);
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        let qp = format!("{mp}.query_parameters[{i}]");
        let Some(name) = cx.required(&format!("{qp}.name"), &q.name) else {
            continue;
        };
        let rule = string_rule(cx, &qp, &q.exact, &None, &q.regex, q.present);
        query.push(QueryMatcher {
            name: name.to_string(),
            rule,
        });
    }
    let route_match = RouteMatch {
        path: path_match,
        case_sensitive: m.case_sensitive.unwrap_or(true),
        methods,
        headers: header_matchers,
        query_parameters: query,
    };

    let n = r.route.is_some() as u8 + r.redirect.is_some() as u8 + r.direct_response.is_some() as u8;
    if n != 1 {
        cx.err(path, "a route needs exactly one of route, redirect, direct_response");
        return None;
    }
    let action = if let Some(a) = &r.route {
        RouteAction::Forward(forward(cx, &format!("{path}.route"), a, clusters)?)
    } else if let Some(rd) = &r.redirect {
        let rp = format!("{path}.redirect");
        let status = cx.u32_in(&format!("{rp}.status"), rd.status, 300, 399, 301) as u16;
        if ![301, 302, 303, 307, 308].contains(&status) {
            cx.err(
                &format!("{rp}.status"),
                format!("{status} is not a redirect status (301, 302, 303, 307, 308)"),
            );
        }
        if let Some(s) = &rd.scheme {
            if s != "http" && s != "https" {
                cx.err(&format!("{rp}.scheme"), format!("unknown value \"{s}\" (http, https)"));
            }
        }
        if rd.path.is_some() && rd.prefix_rewrite.is_some() {
            cx.err(&rp, "give only one of path, prefix_rewrite");
        }
        RouteAction::Redirect(Redirect {
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            port: rd
                .port
                .map(|p| cx.u32_in(&format!("{rp}.port"), Some(p), 1, 65535, 80) as u16),
            path: rd.path.clone(),
            prefix_rewrite: rd.prefix_rewrite.clone(),
            status,
            strip_query: rd.strip_query.unwrap_or(false),
        })
    } else {
        let d = r.direct_response.as_ref()?;
        let status = cx.u32_in(&format!("{path}.direct_response.status"), d.status, 200, 599, 200) as u16;
        RouteAction::DirectResponse(DirectResponse {
            status,
            body: d.body.clone().unwrap_or_default(),
        })
    };
    Some(Route {
        name: r.name.clone().unwrap_or_default(),
        match_: route_match,
        action,
        headers: headers(
            cx,
            path,
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        ),
    })
}

/// The Triple request headers that carry a service's version and group.
pub const TRI_SERVICE_VERSION: &str = "tri-service-version";
pub const TRI_SERVICE_GROUP: &str = "tri-service-group";

/// `match.grpc`: only gRPC requests (`content-type: application/grpc*`, as Envoy's
/// `RouteMatch.grpc`), and optionally a service, method, and Dubbo3 Triple version, group and
/// attachments. A gRPC / Triple call is `POST /<service>/<method>`, so the service and method
/// become a path match (returned; None when no service is given), and the rest exact header
/// matchers, added to `headers`. The result is the model a route written with `path` and `headers`
/// (or received over xDS) has.
fn grpc_match(cx: &mut Ctx, path: &str, g: &RawGrpcMatch, headers: &mut Vec<HeaderMatcher>) -> Option<PathMatch> {
    // A path segment: no '/', no query or fragment marker, no whitespace or control characters.
    fn segment(cx: &mut Ctx, path: &str, v: &str) {
        if v.is_empty() {
            cx.err(path, "may not be empty");
        } else if v
            .bytes()
            .any(|b| b == b'/' || b == b'?' || b == b'#' || b <= b' ' || b == 0x7f)
        {
            cx.err(
                path,
                format!("{v:?} may not contain '/', '?', '#', spaces or control characters"),
            );
        }
    }
    fn value(cx: &mut Ctx, path: &str, v: &str) {
        if v.is_empty() {
            cx.err(path, "may not be empty");
        } else if http::HeaderValue::from_str(v).is_err() {
            cx.err(path, format!("{v:?} is not a valid header value"));
        }
    }
    let exact = |name: &str, v: &str| HeaderMatcher {
        name: name.to_string(),
        rule: StringRule::Exact(v.to_string()),
        invert: false,
    };
    headers.push(HeaderMatcher {
        name: "content-type".into(),
        rule: StringRule::Prefix("application/grpc".into()),
        invert: false,
    });
    for (field, header, v) in [
        ("version", TRI_SERVICE_VERSION, &g.version),
        ("group", TRI_SERVICE_GROUP, &g.group),
    ] {
        if let Some(v) = v {
            value(cx, &format!("{path}.{field}"), v);
            headers.push(exact(header, v));
        }
    }
    for (k, v) in &g.attachments {
        let ap = format!("{path}.attachments.{k}");
        let name = cx.header_name(&ap, k);
        if name == TRI_SERVICE_VERSION || name == TRI_SERVICE_GROUP || name == "content-type" {
            cx.err(
                &ap,
                "use grpc.version or grpc.group for this header (content-type is set by grpc)",
            );
        }
        value(cx, &ap, v);
        headers.push(exact(&name, v));
    }
    let Some(service) = &g.service else {
        if g.method.is_some() {
            cx.err(&format!("{path}.method"), "needs grpc.service");
        }
        return None;
    };
    segment(cx, &format!("{path}.service"), service);
    Some(match &g.method {
        None => PathMatch::Prefix(format!("/{service}/")),
        Some(method) => {
            segment(cx, &format!("{path}.method"), method);
            PathMatch::Exact(format!("/{service}/{method}"))
        }
    })
}

fn forward(cx: &mut Ctx, path: &str, a: &RawRouteAction, clusters: &HashSet<String>) -> Option<ForwardAction> {
    let mut targets = Vec::new();
    match (&a.cluster, a.weighted_clusters.is_empty()) {
        (Some(_), false) => {
            cx.err(path, "give only one of cluster, weighted_clusters");
            return None;
        }
        (None, true) => {
            cx.err(&format!("{path}.cluster"), "is required (or weighted_clusters)");
            return None;
        }
        (Some(c), true) => {
            if !clusters.contains(c) && !cx.allow_unknown_clusters {
                cx.err(&format!("{path}.cluster"), format!("unknown cluster \"{c}\""));
            }
            targets.push(WeightedCluster {
                name: c.clone(),
                weight: 1,
            });
        }
        (None, false) => {
            for (i, w) in a.weighted_clusters.iter().enumerate() {
                let wp = format!("{path}.weighted_clusters[{i}]");
                let Some(name) = cx.required(&format!("{wp}.name"), &w.name) else {
                    continue;
                };
                if !clusters.contains(name) && !cx.allow_unknown_clusters {
                    cx.err(&format!("{wp}.name"), format!("unknown cluster \"{name}\""));
                }
                let weight = cx.u32_in(&format!("{wp}.weight"), w.weight, 0, 1_000_000, 1);
                targets.push(WeightedCluster {
                    name: name.to_string(),
                    weight,
                });
            }
            if targets.iter().all(|t| t.weight == 0) {
                cx.err(&format!("{path}.weighted_clusters"), "weights must not all be zero");
            }
        }
    }
    let timeout = match &a.timeout {
        None => Some(Duration::from_secs(15)),
        Some(_) => cx.dur(&format!("{path}.timeout"), &a.timeout).filter(|d| !d.is_zero()),
    };
    let max_grpc_timeout = a
        .max_grpc_timeout
        .as_ref()
        .and_then(|_| cx.dur(&format!("{path}.max_grpc_timeout"), &a.max_grpc_timeout));
    if let Some(p) = &a.prefix_rewrite {
        if !p.starts_with('/') {
            cx.err(&format!("{path}.prefix_rewrite"), "must start with /");
        }
    }
    if let Some(h) = &a.host_rewrite {
        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
            cx.err(&format!("{path}.host_rewrite"), "is not a valid host");
        }
    }
    let mut hash_policy = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        let hp = format!("{path}.hash_policy[{i}]");
        let terminal = h.terminal.unwrap_or(false);
        let n = h.header.is_some() as u8
            + h.cookie.is_some() as u8
            + h.source_ip.unwrap_or(false) as u8
            + h.query_parameter.is_some() as u8;
        if n != 1 {
            cx.err(&hp, "give exactly one of header, cookie, source_ip, query_parameter");
            continue;
        }
        hash_policy.push(if let Some(name) = &h.header {
            HashPolicy::Header {
                name: cx.header_name_parsed(&format!("{hp}.header"), name),
                terminal,
            }
        } else if let Some(c) = &h.cookie {
            let Some((name, generate)) = cookie_policy(cx, &format!("{hp}.cookie"), c) else {
                continue;
            };
            HashPolicy::Cookie {
                name,
                terminal,
                generate,
            }
        } else if let Some(name) = &h.query_parameter {
            HashPolicy::QueryParameter {
                name: name.clone(),
                terminal,
            }
        } else {
            HashPolicy::SourceIp { terminal }
        });
    }
    Some(ForwardAction {
        clusters: targets,
        timeout,
        max_grpc_timeout,
        prefix_rewrite: a.prefix_rewrite.clone(),
        host_rewrite: a.host_rewrite.clone(),
        auto_host_rewrite: a.auto_host_rewrite.unwrap_or(false),
        retry_policy: a
            .retry_policy
            .as_ref()
            .map(|r| retry_policy(cx, &format!("{path}.retry_policy"), r)),
        hash_policy,
        fault: a
            .fault
            .as_ref()
            .map(|f| Box::new(fault(cx, &format!("{path}.fault"), f))),
        request_mirror_policies: mirror_policies(
            cx,
            &format!("{path}.request_mirror_policies"),
            &a.request_mirror_policies,
            clusters,
        ),
        local_rate_limit: a
            .local_rate_limit
            .as_ref()
            .map(|r| Box::new(local_rate_limit(cx, &format!("{path}.local_rate_limit"), r))),
        rate_limits: rate_limits(cx, &format!("{path}.rate_limits"), &a.rate_limits),
        priority: cx.typed(&format!("{path}.priority"), &a.priority).unwrap_or_default(),
    })
}

fn thresholds(cx: &mut Ctx, p: &str, b: &RawCircuitBreakers) -> CircuitBreakers {
    let d = CircuitBreakers::ENVOY_DEFAULTS;
    CircuitBreakers {
        max_connections: cx.u32_in(
            &format!("{p}.max_connections"),
            b.max_connections,
            1,
            u32::MAX as u64,
            d.max_connections,
        ),
        max_pending_requests: cx.u32_in(
            &format!("{p}.max_pending_requests"),
            b.max_pending_requests,
            0,
            u32::MAX as u64,
            d.max_pending_requests,
        ),
        max_requests: cx.u32_in(
            &format!("{p}.max_requests"),
            b.max_requests,
            1,
            u32::MAX as u64,
            d.max_requests,
        ),
        max_retries: cx.u32_in(
            &format!("{p}.max_retries"),
            b.max_retries,
            0,
            u32::MAX as u64,
            d.max_retries,
        ),
        high_priority: None,
    }
}

/// RFC 7230 `token`: what a cookie or attribute name may be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie path or attribute value: printable ASCII without `;` (RFC 6265 `path-value`).
fn is_cookie_av(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

/// A cookie hash policy: its name, and how the proxy generates the cookie when `ttl` is set.
fn cookie_policy(cx: &mut Ctx, path: &str, c: &RawCookie) -> Option<(String, Option<Box<CookieGen>>)> {
    let name = cx.required(&format!("{path}.name"), &c.name)?.to_string();
    let Some(ttl) = &c.ttl else {
        // Without a ttl nothing is generated: path and attributes would mean nothing.
        if c.path.is_some() {
            cx.err(
                &format!("{path}.path"),
                "has no effect without ttl (no cookie is generated)",
            );
        }
        if !c.attributes.is_empty() {
            cx.err(
                &format!("{path}.attributes"),
                "have no effect without ttl (no cookie is generated)",
            );
        }
        return Some((name, None));
    };
    if !is_token(&name) {
        cx.err(
            &format!("{path}.name"),
            format!("\"{name}\" is not a valid cookie name (an HTTP token)"),
        );
    }
    let ttl = cx.dur(&format!("{path}.ttl"), &Some(ttl.clone()));
    if let Some(p) = &c.path {
        if p.is_empty() || !is_cookie_av(p) {
            cx.err(&format!("{path}.path"), "must be non-empty printable ASCII without ';'");
        }
    }
    let mut attributes = Vec::with_capacity(c.attributes.len());
    for (i, a) in c.attributes.iter().enumerate() {
        let ap = format!("{path}.attributes[{i}]");
        let Some(n) = cx.required(&format!("{ap}.name"), &a.name) else {
            continue;
        };
        if !is_token(n) {
            cx.err(
                &format!("{ap}.name"),
                format!("\"{n}\" is not a valid attribute name (an HTTP token)"),
            );
        }
        if let Some(v) = &a.value {
            if !is_cookie_av(v) {
                cx.err(&format!("{ap}.value"), "must be printable ASCII without ';'");
            }
        }
        attributes.push(CookieAttribute {
            name: n.to_string(),
            value: a.value.clone().filter(|v| !v.is_empty()),
        });
    }
    Some((
        name,
        ttl.map(|ttl| {
            Box::new(CookieGen {
                ttl,
                path: c.path.clone(),
                attributes,
            })
        }),
    ))
}

fn retry_policy(cx: &mut Ctx, path: &str, r: &RawRetryPolicy) -> RetryPolicy {
    let mut on = RetryOn::default();
    for (i, cond) in r.retry_on.iter().enumerate() {
        for c in cond.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match c {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "per-try-timeout" => on.per_try_timeout = true,
                o => cx.err(
                    &format!("{path}.retry_on[{i}]"),
                    format!("unknown value \"{o}\" (5xx, gateway-error, connect-failure, reset, retriable-status-codes, per-try-timeout)"),
                ),
            }
        }
    }
    let mut codes = Vec::new();
    for (i, c) in r.retriable_status_codes.iter().enumerate() {
        codes.push(cx.u32_in(&format!("{path}.retriable_status_codes[{i}]"), Some(*c), 100, 599, 503) as u16);
    }
    if !codes.is_empty() {
        on.retriable_status_codes = true;
    }
    let (base, max) = match &r.retry_back_off {
        Some(b) => {
            let base = cx
                .dur(&format!("{path}.retry_back_off.base_interval"), &b.base_interval)
                .unwrap_or(Duration::from_millis(25));
            if base.is_zero() {
                cx.err(
                    &format!("{path}.retry_back_off.base_interval"),
                    "must be greater than zero",
                );
            }
            let max = cx
                .dur(&format!("{path}.retry_back_off.max_interval"), &b.max_interval)
                .unwrap_or(base * 10);
            if max < base {
                cx.err(
                    &format!("{path}.retry_back_off.max_interval"),
                    "must not be less than base_interval",
                );
            }
            (base, max)
        }
        None => (Duration::from_millis(25), Duration::from_millis(250)),
    };
    RetryPolicy {
        retry_on: on,
        num_retries: cx.u32_in(&format!("{path}.num_retries"), r.num_retries, 0, 100, 1),
        per_try_timeout: cx
            .dur(&format!("{path}.per_try_timeout"), &r.per_try_timeout)
            .filter(|d| !d.is_zero()),
        retriable_status_codes: codes,
        backoff_base: base,
        backoff_max: max,
    }
}

fn cluster(cx: &mut Ctx, path: &str, c: &RawCluster) -> Option<Cluster> {
    let name = cx.required(&format!("{path}.name"), &c.name)?.to_string();
    let discovery = match cx.typed(&format!("{path}.type"), &c.type_) {
        None | Some(ClusterType::Static) => Discovery::Static,
        Some(ClusterType::StrictDns) => Discovery::StrictDns {
            refresh: cx
                .dur(&format!("{path}.dns_refresh_rate"), &c.dns_refresh_rate)
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
        },
        Some(ClusterType::OriginalDst) => Discovery::OriginalDst,
    };
    let lb_policy = match cx.typed(&format!("{path}.lb_policy"), &c.lb_policy) {
        None | Some(LbKind::RoundRobin) => LbPolicy::RoundRobin,
        Some(LbKind::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: cx.u32_in(
                &format!("{path}.least_request.choice_count"),
                c.least_request.as_ref().and_then(|l| l.choice_count),
                2,
                100,
                2,
            ),
        },
        Some(LbKind::Random) => LbPolicy::Random,
        Some(LbKind::RingHash) => {
            let min = c.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).unwrap_or(1024);
            let max = c
                .ring_hash
                .as_ref()
                .and_then(|r| r.maximum_ring_size)
                .unwrap_or(8 * 1024 * 1024);
            if min == 0 || min > max || max > 8 * 1024 * 1024 {
                cx.err(
                    &format!("{path}.ring_hash"),
                    "need 0 < minimum_ring_size <= maximum_ring_size <= 8388608",
                );
            }
            LbPolicy::RingHash {
                min_ring_size: min,
                max_ring_size: max,
            }
        }
        Some(LbKind::Maglev) => {
            let size = c.maglev.as_ref().and_then(|m| m.table_size).unwrap_or(65537);
            if !is_prime(size) || size > 5_000_011 {
                cx.err(
                    &format!("{path}.maglev.table_size"),
                    format!("{size} must be a prime no larger than 5000011"),
                );
            }
            LbPolicy::Maglev { table_size: size }
        }
    };
    let protocol = cx
        .typed(&format!("{path}.protocol"), &c.protocol)
        .unwrap_or(UpstreamProtocol::Http1);
    let mut endpoints = Vec::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        let ep = format!("{path}.endpoints[{i}]");
        let Some(addr) = cx.required(&format!("{ep}.address"), &e.address) else {
            continue;
        };
        let address = match (&discovery, addr.parse::<SocketAddr>()) {
            (_, Ok(a)) => EndpointAddress::Socket(a),
            (Discovery::StrictDns { .. }, Err(_)) => match addr.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                Some((host, Ok(port))) if !host.is_empty() => EndpointAddress::Dns {
                    host: host.to_string(),
                    port,
                },
                _ => {
                    cx.err(&format!("{ep}.address"), format!("\"{addr}\" is not host:port"));
                    continue;
                }
            },
            (_, Err(_)) => {
                cx.err(
                    &format!("{ep}.address"),
                    format!("\"{addr}\" is not an IP:port address (DNS names need type: strict_dns)"),
                );
                continue;
            }
        };
        endpoints.push(Endpoint {
            address,
            weight: cx.u32_in(&format!("{ep}.weight"), e.weight, 1, 1_000_000, 1),
            priority: cx.u32_in(&format!("{ep}.priority"), e.priority, 0, 127, 0),
            locality: Locality {
                region: e.region.clone().unwrap_or_default(),
                zone: e.zone.clone().unwrap_or_default(),
                sub_zone: e.sub_zone.clone().unwrap_or_default(),
            },
            labels: e.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
            tls_match: e.tls_match.clone(),
            locality_tls_match: e.locality_tls_match.clone(),
        });
    }
    match discovery {
        Discovery::OriginalDst if !endpoints.is_empty() => {
            cx.err(
                &format!("{path}.endpoints"),
                "an original_dst cluster takes no endpoints",
            );
        }
        Discovery::OriginalDst => {}
        _ if c.endpoints.is_empty() && !cx.allow_empty_clusters => {
            cx.err(&format!("{path}.endpoints"), "at least one endpoint is required")
        }
        _ => {}
    }
    let mut cb = CircuitBreakers::default();
    if let Some(b) = &c.circuit_breakers {
        let p = format!("{path}.circuit_breakers");
        cb = thresholds(cx, &p, b);
        if let Some(h) = &b.high_priority {
            if h.high_priority.is_some() {
                cx.err(&format!("{p}.high_priority.high_priority"), "cannot be nested");
            }
            cb.high_priority = Some(Box::new(thresholds(cx, &format!("{p}.high_priority"), h)));
        }
    }
    let retry_budget = c.retry_budget.as_ref().map(|b| {
        let pct = b.budget_percent.unwrap_or(20.0);
        if !(0.0..=100.0).contains(&pct) {
            cx.err(
                &format!("{path}.retry_budget.budget_percent"),
                format!("{pct} is out of range [0, 100]"),
            );
        }
        RetryBudget {
            budget_percent: pct,
            min_retry_concurrency: cx.u32_in(
                &format!("{path}.retry_budget.min_retry_concurrency"),
                b.min_retry_concurrency,
                0,
                u32::MAX as u64,
                3,
            ),
        }
    });
    let mut pool = PoolConfig::default();
    if let Some(p) = &c.pool {
        pool.max_idle_per_endpoint = cx.u32_in(
            &format!("{path}.pool.max_idle_per_endpoint"),
            p.max_idle_per_endpoint,
            0,
            1_000_000,
            pool.max_idle_per_endpoint,
        );
        if let Some(d) = cx.dur(&format!("{path}.pool.idle_timeout"), &p.idle_timeout) {
            pool.idle_timeout = d;
        }
    }
    let original_source = match c.original_source {
        Some(true) if !matches!(discovery, Discovery::OriginalDst) => {
            cx.err(
                &format!("{path}.original_source"),
                "only an original_dst cluster can connect from the downstream's address",
            );
            false
        }
        v => v.unwrap_or(false),
    };
    let dns_host = c
        .endpoints
        .iter()
        .find_map(|e| e.address.as_deref()?.rsplit_once(':').map(|(h, _)| h))
        .filter(|h| h.parse::<IpAddr>().is_err() && !h.starts_with('['));
    Some(Cluster {
        name,
        discovery,
        lb_policy,
        connect_timeout: cx
            .dur(&format!("{path}.connect_timeout"), &c.connect_timeout)
            .unwrap_or(Duration::from_secs(5)),
        per_connection_buffer_limit_bytes: buffer_limit(
            cx,
            &format!("{path}.per_connection_buffer_limit_bytes"),
            c.per_connection_buffer_limit_bytes,
        ),
        protocol,
        endpoints,
        circuit_breakers: cb,
        retry_budget,
        pool,
        outlier_detection: c
            .outlier_detection
            .as_ref()
            .map(|o| outlier_detection(cx, &format!("{path}.outlier_detection"), o)),
        health_checks: c
            .health_checks
            .iter()
            .enumerate()
            .filter_map(|(i, h)| health_check(cx, &format!("{path}.health_checks[{i}]"), h))
            .collect(),
        healthy_panic_threshold: match c.healthy_panic_threshold {
            None => 50.0,
            Some(p) if (0.0..=100.0).contains(&p) => p,
            Some(p) => {
                cx.err(
                    &format!("{path}.healthy_panic_threshold"),
                    format!("{p} is out of range [0, 100]"),
                );
                50.0
            }
        },
        locality_aware: c.locality_aware.unwrap_or(false),
        original_source,
        subsets: c.subsets.as_ref().map(|s| subsets(cx, &format!("{path}.subsets"), s)),
        service: c
            .service
            .as_ref()
            .and_then(|s| cluster_service(cx, &format!("{path}.service"), s)),
        tls: c.tls.as_ref().map(|t| {
            crate::tls::cluster_tls(
                &format!("{path}.tls"),
                t,
                protocol == UpstreamProtocol::Http2,
                dns_host,
                &mut cx.errors,
            )
        }),
        tls_matches: c
            .tls_matches
            .iter()
            .enumerate()
            .map(|(j, m)| crate::model::TlsMatch {
                name: m.name.clone().unwrap_or_default(),
                match_: m.match_.clone(),
                tls: m.tls.as_ref().map(|t| {
                    crate::tls::cluster_tls(
                        &format!("{path}.tls_matches[{j}].tls"),
                        t,
                        protocol == UpstreamProtocol::Http2,
                        dns_host,
                        &mut cx.errors,
                    )
                }),
            })
            .collect(),
    })
}

/// A cluster's `service`: `host` is required; `name` defaults to the host's first label.
fn cluster_service(
    cx: &mut Ctx,
    path: &str,
    s: &crate::raw::RawClusterService,
) -> Option<crate::model::ClusterService> {
    let label_ok = |v: &str| !v.is_empty() && v.len() <= 253 && !v.chars().any(|c| c.is_control() || c == '"');
    let host = match s.host.as_deref() {
        Some(h) if label_ok(h) => h.to_string(),
        Some(h) => {
            cx.err(&format!("{path}.host"), format!("{h:?} is not a service host"));
            return None;
        }
        None => {
            cx.err(&format!("{path}.host"), "is required");
            return None;
        }
    };
    let mut check = |field: &str, v: &Option<String>| match v.as_deref() {
        None => Some(None),
        Some(x) if label_ok(x) => Some(Some(x.to_string())),
        Some(x) => {
            cx.err(&format!("{path}.{field}"), format!("{x:?} is not a valid value"));
            None
        }
    };
    let name = check("name", &s.name)?;
    let namespace = check("namespace", &s.namespace)?;
    Some(crate::model::ClusterService {
        name: name.unwrap_or_else(|| host.split('.').next().unwrap_or(&host).to_string()),
        namespace: namespace.unwrap_or_default(),
        host,
    })
}

fn outlier_detection(cx: &mut Ctx, path: &str, o: &RawOutlierDetection) -> OutlierDetection {
    let u = |cx: &mut Ctx, field: &str, v: Option<u64>, max: u64, default: u32| {
        cx.u32_in(&format!("{path}.{field}"), v, 0, max, default)
    };
    let base = cx
        .dur(&format!("{path}.base_ejection_time"), &o.base_ejection_time)
        .unwrap_or(Duration::from_secs(30));
    let max = cx
        .dur(&format!("{path}.max_ejection_time"), &o.max_ejection_time)
        .unwrap_or(Duration::from_secs(300))
        .max(base);
    let interval = cx
        .dur(&format!("{path}.interval"), &o.interval)
        .unwrap_or(Duration::from_secs(10));
    if interval < Duration::from_millis(10) {
        cx.err(&format!("{path}.interval"), "must be at least 10ms");
    }
    OutlierDetection {
        consecutive_5xx: u(cx, "consecutive_5xx", o.consecutive_5xx, 1_000_000, 5),
        consecutive_gateway_failure: u(
            cx,
            "consecutive_gateway_failure",
            o.consecutive_gateway_failure,
            1_000_000,
            0,
        ),
        consecutive_local_origin_failure: u(
            cx,
            "consecutive_local_origin_failure",
            o.consecutive_local_origin_failure,
            1_000_000,
            5,
        ),
        interval,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: u(cx, "max_ejection_percent", o.max_ejection_percent, 100, 10),
        success_rate_minimum_hosts: u(
            cx,
            "success_rate_minimum_hosts",
            o.success_rate_minimum_hosts,
            1_000_000,
            5,
        ),
        success_rate_request_volume: u(
            cx,
            "success_rate_request_volume",
            o.success_rate_request_volume,
            1_000_000,
            100,
        ),
        success_rate_stdev_factor: u(
            cx,
            "success_rate_stdev_factor",
            o.success_rate_stdev_factor,
            1_000_000,
            1900,
        ),
        failure_percentage_threshold: u(
            cx,
            "failure_percentage_threshold",
            o.failure_percentage_threshold,
            100,
            0,
        ),
        failure_percentage_minimum_hosts: u(
            cx,
            "failure_percentage_minimum_hosts",
            o.failure_percentage_minimum_hosts,
            1_000_000,
            5,
        ),
        failure_percentage_request_volume: u(
            cx,
            "failure_percentage_request_volume",
            o.failure_percentage_request_volume,
            1_000_000,
            50,
        ),
    }
}

fn health_check(cx: &mut Ctx, path: &str, h: &RawHealthCheck) -> Option<HealthCheck> {
    let n = h.http.is_some() as u8 + h.tcp.is_some() as u8 + h.grpc.is_some() as u8;
    if n != 1 {
        cx.err(path, "give exactly one of http, tcp, grpc");
        return None;
    }
    let interval = cx
        .dur(&format!("{path}.interval"), &h.interval)
        .unwrap_or(Duration::from_secs(5));
    if interval < Duration::from_millis(10) {
        cx.err(&format!("{path}.interval"), "must be at least 10ms");
    }
    let timeout = cx
        .dur(&format!("{path}.timeout"), &h.timeout)
        .unwrap_or(Duration::from_secs(1));
    if timeout.is_zero() {
        cx.err(&format!("{path}.timeout"), "must be greater than zero");
    }
    let kind = if let Some(http) = &h.http {
        let p = http.path.clone().unwrap_or_else(|| "/".into());
        if !p.starts_with('/') {
            cx.err(&format!("{path}.http.path"), "must start with /");
        }
        let mut ranges = Vec::new();
        for (i, r) in http.expected_statuses.iter().enumerate() {
            let parsed = match r.split_once('-') {
                Some((a, b)) => a.trim().parse::<u16>().ok().zip(b.trim().parse::<u16>().ok()),
                None => r.trim().parse::<u16>().ok().map(|c| (c, c)),
            };
            match parsed {
                Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => ranges.push((a, b)),
                _ => cx.err(
                    &format!("{path}.http.expected_statuses[{i}]"),
                    format!("\"{r}\" is not a status or range like 200-299"),
                ),
            }
        }
        if ranges.is_empty() {
            ranges.push((200, 200));
        }
        HealthCheckKind::Http {
            path: p,
            host: http.host.clone(),
            expected_statuses: ranges,
        }
    } else if h.tcp.is_some() {
        HealthCheckKind::Tcp
    } else {
        let g = h.grpc.as_ref()?;
        HealthCheckKind::Grpc {
            service_name: g.service_name.clone().unwrap_or_default(),
            authority: g.authority.clone(),
        }
    };
    Some(HealthCheck {
        interval,
        interval_jitter: cx
            .dur(&format!("{path}.interval_jitter"), &h.interval_jitter)
            .unwrap_or(Duration::ZERO),
        timeout,
        healthy_threshold: cx.u32_in(&format!("{path}.healthy_threshold"), h.healthy_threshold, 1, 1000, 1),
        unhealthy_threshold: cx.u32_in(
            &format!("{path}.unhealthy_threshold"),
            h.unhealthy_threshold,
            1,
            1000,
            3,
        ),
        kind,
    })
}

fn subsets(cx: &mut Ctx, path: &str, s: &RawSubsets) -> Subsets {
    let fallback_policy = cx
        .typed(&format!("{path}.fallback_policy"), &s.fallback_policy)
        .unwrap_or(SubsetFallback::AnyEndpoint);
    if fallback_policy == SubsetFallback::DefaultSubset && s.default_subset.is_empty() {
        cx.err(
            &format!("{path}.default_subset"),
            "is required with fallback_policy: default_subset",
        );
    }
    let tag_header = s
        .tag_header
        .as_ref()
        .map(|h| cx.header_name_parsed(&format!("{path}.tag_header"), h));
    Subsets {
        fallback_policy,
        default_subset: s.default_subset.clone(),
        tag_header,
        tag_label: s.tag_label.clone().unwrap_or_else(|| "tag".into()),
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
